//! One given/when/then test per rule of the tenant aggregate.

use super::*;
use crate::ids::{InstanceId, KeyId, ModelId, ProjectId, RequestId, TenantId};
use crate::money::{Credits, Rate};
use crate::pricing::{
    Capability, ChargeTerms, Ingress, MarginSource, ModelPrice, OutputCapAdvice, Rates, Usage,
};
use crate::roles::{Permission, Role};
use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

type TenantTest = TestFramework<Tenant>;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap()
}
fn tenant_id() -> TenantId {
    TenantId(Uuid::from_u128(1))
}
fn key_id() -> KeyId {
    KeyId(Uuid::from_u128(2))
}
fn request(n: u128) -> RequestId {
    RequestId(Uuid::from_u128(100 + n))
}
fn instance(n: u128) -> InstanceId {
    InstanceId(Uuid::from_u128(1000 + n))
}
fn model() -> ModelId {
    ModelId::parse("openai/gpt-4o-mini").unwrap()
}
fn credits(s: &str) -> Credits {
    Credits::parse(s).unwrap()
}
/// 1 credit per million input tokens, 2 per million output tokens, 100 output tokens max.
fn price() -> ModelPrice {
    ModelPrice {
        rates: Rates::flat(
            Rate::parse_per_million("1").unwrap(),
            Rate::parse_per_million("2").unwrap(),
        ),
        max_output_tokens: 100,
    }
}

/// The hold a chat reservation at [`price`] places, worked out by hand: the
/// prompt's bytes and 64 bytes of framing at 1 credit per million tokens
/// (1_000_000 pico-credits a token), and the output cap (100 unless the request
/// names one) at 2 per million.
fn expected_hold(prompt_bytes: u64, max_tokens: Option<u32>) -> Credits {
    let output_tokens = u64::from(max_tokens.unwrap_or(100));
    Credits::from_pico(i128::from(
        (prompt_bytes + 64) * 1_000_000 + output_tokens * 2_000_000,
    ))
}

/// The advice a refused chat reservation at [`price`] carries.
fn advice(output_tokens_that_fit: u64) -> Option<OutputCapAdvice> {
    Some(OutputCapAdvice {
        output_tokens_that_fit,
        default_max_tokens: 100,
    })
}

fn created() -> TenantEvent {
    TenantEvent::TenantCreated {
        tenant_id: tenant_id(),
        name: "acme".into(),
        at: at(0),
    }
}
fn granted(amount: &str, key: &str) -> TenantEvent {
    TenantEvent::CreditsGranted {
        amount_pico: credits(amount),
        idempotency_key: key.into(),
        reason: "top-up".into(),
        expires_at: None,
        payment: None,
        at: at(1),
    }
}
fn key_issued() -> TenantEvent {
    TenantEvent::ApiKeyIssued {
        key_id: key_id(),
        name: "app".into(),
        role: Role::Member,
        key_hash: KeyHash::of_secret("secret"),
        at: at(1),
    }
}
fn reserve_cmd(
    n: u128,
    prompt_bytes: u64,
    max_tokens: Option<u32>,
    instance_n: u128,
) -> TenantCommand {
    TenantCommand::ReserveCredits {
        request_id: request(n),
        key_id: key_id(),
        model: model(),
        capability: Capability::Chat,
        ingress: Ingress::Openai,
        app: Some("my-app".into()),
        end_user: None,
        price: price(),
        price_version: 3,
        prompt_bytes,
        max_tokens,
        images: 0,
        instance_id: instance(instance_n),
        expires_at: at(600),
        enforce_credit: true,
        at: at(2),
    }
}
/// The event `reserve_cmd(n, prompt_bytes, max_tokens, 0)` produces.
fn reserved(n: u128, prompt_bytes: u64, max_tokens: Option<u32>) -> TenantEvent {
    let p = price();
    TenantEvent::CreditsReserved {
        request_id: request(n),
        key_id: key_id(),
        model: model(),
        capability: Capability::Chat,
        ingress: Ingress::Openai,
        app: Some("my-app".into()),
        price_version: 3,
        rates: p.rates,
        hold_pico: expected_hold(prompt_bytes, max_tokens),
        prompt_bytes,
        max_output_tokens: max_tokens.unwrap_or(p.max_output_tokens),
        images_requested: 0,
        instance_id: instance(0),
        expires_at: at(600),
        project: None,
        end_user: None,
        scopes_checked: vec!["tenant.credit".into()],
        at: at(2),
    }
}

#[test]
fn create_tenant_with_initial_credits_grants_them() {
    TenantTest::with(())
        .given_no_previous_events()
        .when(TenantCommand::CreateTenant {
            tenant_id: tenant_id(),
            name: "acme".into(),
            initial_credits: credits("5"),
            at: at(0),
        })
        .then_expect_events(vec![
            created(),
            TenantEvent::CreditsGranted {
                amount_pico: credits("5"),
                idempotency_key: "initial-credits".into(),
                reason: "initial credits".into(),
                expires_at: None,
                payment: None,
                at: at(0),
            },
        ]);
}

#[test]
fn create_tenant_twice_is_refused() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::CreateTenant {
            tenant_id: tenant_id(),
            name: "acme".into(),
            initial_credits: Credits::ZERO,
            at: at(0),
        })
        .then_expect_error(TenantError::TenantAlreadyExists);
}

#[test]
fn commands_on_a_missing_tenant_are_refused() {
    TenantTest::with(())
        .given_no_previous_events()
        .when(TenantCommand::GrantCredits {
            amount: credits("1"),
            idempotency_key: "g".into(),
            reason: "r".into(),
            expires_at: None,
            at: at(0),
        })
        .then_expect_error(TenantError::TenantNotFound);
}

#[test]
fn empty_tenant_name_is_refused() {
    TenantTest::with(())
        .given_no_previous_events()
        .when(TenantCommand::CreateTenant {
            tenant_id: tenant_id(),
            name: "".into(),
            initial_credits: Credits::ZERO,
            at: at(0),
        })
        .then_expect_error(TenantError::InvalidLabel {
            field: "name",
            max_chars: 200,
        });
}

#[test]
fn issue_key_stores_only_its_hash() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::IssueApiKey {
            key_id: key_id(),
            name: "app".into(),
            role: Role::Member,
            key_hash: KeyHash::of_secret("secret"),
            scopes: Default::default(),
            project: None,
            at: at(1),
        })
        .then_expect_events(vec![key_issued()]);
}

#[test]
fn revoke_key_twice_is_a_no_op() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            TenantEvent::ApiKeyRevoked {
                key_id: key_id(),
                at: at(2),
            },
        ])
        .when(TenantCommand::RevokeApiKey {
            key_id: key_id(),
            at: at(3),
        })
        .then_expect_events(vec![]);
}

#[test]
fn revoke_unknown_key_is_refused() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::RevokeApiKey {
            key_id: key_id(),
            at: at(3),
        })
        .then_expect_error(TenantError::UnknownKey(key_id()));
}

#[test]
fn revoked_key_no_longer_authorizes() {
    let mut tenant = Tenant::default();
    for e in [created(), key_issued()] {
        tenant.apply_event(e);
    }
    let hash = KeyHash::of_secret("secret");
    assert_eq!(
        tenant.authorize(key_id(), &hash, Permission::CallModels, at(10)),
        Ok(Role::Member)
    );
    assert_eq!(
        tenant.authorize(key_id(), &hash, Permission::ReadBilling, at(10)),
        Err(TenantError::PermissionDenied { role: "member" })
    );
    assert_eq!(
        tenant.authorize(
            key_id(),
            &KeyHash::of_secret("wrong"),
            Permission::CallModels,
            at(10)
        ),
        Err(TenantError::Unauthenticated)
    );
    tenant.apply_event(TenantEvent::ApiKeyRevoked {
        key_id: key_id(),
        at: at(2),
    });
    assert_eq!(
        tenant.authorize(key_id(), &hash, Permission::CallModels, at(10)),
        Err(TenantError::KeyRevoked)
    );
    assert_eq!(
        tenant.authorize(
            key_id(),
            &KeyHash::of_secret("wrong"),
            Permission::CallModels,
            at(10)
        ),
        Err(TenantError::Unauthenticated),
        "a revoked key's id with a wrong secret is just unknown"
    );
}

#[test]
fn grant_adds_credit() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::GrantCredits {
            amount: credits("10"),
            idempotency_key: "g1".into(),
            reason: "top-up".into(),
            expires_at: None,
            at: at(1),
        })
        .then_expect_events(vec![granted("10", "g1")]);
}

#[test]
fn repeated_grant_with_same_body_is_a_no_op() {
    TenantTest::with(())
        .given(vec![created(), granted("10", "g1")])
        .when(TenantCommand::GrantCredits {
            amount: credits("10"),
            idempotency_key: "g1".into(),
            reason: "top-up".into(),
            expires_at: None,
            at: at(9),
        })
        .then_expect_events(vec![]);
}

#[test]
fn repeated_grant_with_different_body_is_refused() {
    TenantTest::with(())
        .given(vec![created(), granted("10", "g1")])
        .when(TenantCommand::GrantCredits {
            amount: credits("11"),
            idempotency_key: "g1".into(),
            reason: "top-up".into(),
            expires_at: None,
            at: at(9),
        })
        .then_expect_error(TenantError::IdempotencyKeyReused("g1".into()));
}

#[test]
fn reserve_places_a_hold_of_prompt_bytes_and_output_cap() {
    TenantTest::with(())
        .given(vec![created(), key_issued(), granted("1", "g1")])
        .when(reserve_cmd(1, 36, Some(50), 0))
        .then_expect_events(vec![reserved(1, 36, Some(50))]);
}

#[test]
fn reserve_without_enough_credit_is_refused() {
    // Hold = (36 + 64) bytes * 1 pico-credit/byte*1e6 + 100 tokens * 2e6 = 300_000_000 pico.
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("0.000299999999", "g1"),
        ])
        .when(reserve_cmd(1, 36, None, 0))
        .then_expect_error(TenantError::InsufficientCredits {
            available: "0.000299999999".into(),
            required: "0.0003".into(),
            advice: advice(99),
        });
}

#[test]
fn a_refused_chat_names_the_output_cap_that_fits_and_other_requests_do_not() {
    // 0.00025 credit: the prompt's 100 bytes take 0.0001, leaving 75 output tokens.
    let history = vec![created(), key_issued(), granted("0.00025", "g1")];
    TenantTest::with(())
        .given(history.clone())
        .when(reserve_cmd(1, 36, Some(100), 0))
        .then_expect_error(TenantError::InsufficientCredits {
            available: "0.00025".into(),
            required: "0.0003".into(),
            advice: advice(75),
        });
    let mut embeddings = reserve_cmd(1, 200, Some(0), 0);
    if let TenantCommand::ReserveCredits { capability, .. } = &mut embeddings {
        *capability = Capability::Embeddings;
    }
    TenantTest::with(())
        .given(history)
        .when(embeddings)
        .then_expect_error(TenantError::InsufficientCredits {
            available: "0.00025".into(),
            required: "0.000264".into(),
            advice: None,
        });
}

#[test]
fn enterprise_mode_places_the_hold_without_enough_credit() {
    // Same shortfall as above; costs are tracked, nothing is refused.
    let mut command = reserve_cmd(1, 36, None, 0);
    if let TenantCommand::ReserveCredits { enforce_credit, .. } = &mut command {
        *enforce_credit = false;
    }
    let history = vec![created(), key_issued(), granted("0.000299999999", "g1")];
    // The wallet was not checked, and the event says so.
    let mut expected = reserved(1, 36, None);
    if let TenantEvent::CreditsReserved { scopes_checked, .. } = &mut expected {
        scopes_checked.clear();
    }
    TenantTest::with(())
        .given(history.clone())
        .when(command)
        .then_expect_events(vec![expected.clone()]);
    let tenant = state_after([history, vec![expected]].concat());
    assert_eq!(
        tenant.balance().available,
        Credits::parse_positive("0.000299999999").unwrap()
            - Credits::parse_positive("0.0003").unwrap()
    );
}

#[test]
fn reserve_counts_other_open_holds() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("0.0005", "g1"),
            reserved(1, 36, None),
        ])
        .when(reserve_cmd(2, 36, None, 0))
        .then_expect_error(TenantError::InsufficientCredits {
            available: "0.0002".into(),
            required: "0.0003".into(),
            advice: advice(50),
        });
}

#[test]
fn reserve_same_request_twice_is_refused() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
        ])
        .when(reserve_cmd(1, 36, None, 0))
        .then_expect_error(TenantError::HoldAlreadyExists(request(1)));
}

fn attempt() -> Attempt {
    Attempt {
        number: 1,
        provider: "openai".into(),
        credential_id: "cred-1".into(),
        model: model(),
        price_version: 3,
        rates: price().rates,
        terms: terms(),
    }
}

/// The provider's cost: half the price, i.e. a 100% margin.
fn terms() -> ChargeTerms {
    ChargeTerms {
        cost_rates: Rates::flat(
            Rate::parse_per_million("0.5").unwrap(),
            Rate::parse_per_million("1").unwrap(),
        ),
        margin_bps: Some(10_000),
        margin_source: MarginSource::Default,
    }
}

fn attempted_ok(n: u128, input: u64, output: u64) -> TenantEvent {
    let p = price();
    TenantEvent::UpstreamAttempted {
        request_id: request(n),
        attempt: 1,
        provider: "openai".into(),
        credential_id: "cred-1".into(),
        model: model(),
        outcome: AttemptOutcome::Succeeded,
        usage: Some(Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }),
        cost_pico: p.rates.input.cost_of(input) + p.rates.output.cost_of(output),
        latency_ms: 12,
        at: at(3),
    }
}

fn settle_cmd(n: u128, input: u64, output: u64) -> TenantCommand {
    TenantCommand::SettleUsage {
        request_id: request(n),
        attempt: attempt(),
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
        upstream_latency_ms: 12,
        at: at(3),
    }
}

fn settled(n: u128, input: u64, output: u64, hold: Credits) -> TenantEvent {
    let p = price();
    let cost = p.rates.input.cost_of(input) + p.rates.output.cost_of(output);
    TenantEvent::UsageSettled {
        request_id: request(n),
        key_id: key_id(),
        provider: "openai".into(),
        model: model(),
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
        price_version: 3,
        rates: p.rates,
        terms: terms(),
        cost_pico: cost,
        // Half the price, counted at the cost rates (never by halving the cost).
        provider_cost_pico: terms().cost_rates.input.cost_of(input)
            + terms().cost_rates.output.cost_of(output),
        hold_pico: hold,
        overshoot_pico: (cost - hold).max(Credits::ZERO),
        upstream_latency_ms: 12,
        at: at(3),
    }
}

#[test]
fn settle_charges_actual_usage_and_releases_the_rest() {
    let hold = expected_hold(36, None);
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
        ])
        .when(settle_cmd(1, 9, 20))
        .then_expect_events(vec![attempted_ok(1, 9, 20), settled(1, 9, 20, hold)]);
    let mut tenant = Tenant::default();
    for e in [
        created(),
        key_issued(),
        granted("1", "g1"),
        reserved(1, 36, None),
        settled(1, 9, 20, hold),
    ] {
        tenant.apply_event(e);
    }
    let b = tenant.balance();
    assert_eq!(b.spent.pico(), 9 * 1_000_000 + 20 * 2_000_000);
    assert_eq!(b.held, Credits::ZERO);
    assert_eq!(b.available, credits("1") - b.spent);
}

#[test]
fn settle_beyond_the_hold_charges_actual_and_records_overshoot() {
    let hold = expected_hold(36, Some(10));
    let result = TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, Some(10)),
        ])
        .when(settle_cmd(1, 9, 500))
        .inspect_result()
        .unwrap();
    match &result[..] {
        [TenantEvent::UpstreamAttempted { .. }, TenantEvent::UsageSettled {
            cost_pico,
            overshoot_pico,
            hold_pico,
            ..
        }] => {
            assert_eq!(*hold_pico, hold);
            assert_eq!(cost_pico.pico(), 9 * 1_000_000 + 500 * 2_000_000);
            assert_eq!(*overshoot_pico, *cost_pico - hold);
            assert!(overshoot_pico.pico() > 0);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

#[test]
fn settle_without_a_hold_is_refused_so_nothing_is_charged_twice() {
    let hold = expected_hold(36, None);
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
            settled(1, 9, 20, hold),
        ])
        .when(settle_cmd(1, 9, 20))
        .then_expect_error(TenantError::UnknownHold(request(1)));
}

#[test]
fn failed_request_costs_nothing() {
    let hold = expected_hold(36, None);
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
        ])
        .when(TenantCommand::ReleaseHold {
            request_id: request(1),
            reason: "upstream returned 503".into(),
            at: at(3),
        })
        .then_expect_events(vec![TenantEvent::HoldReleased {
            request_id: request(1),
            hold_pico: hold,
            reason: "upstream returned 503".into(),
            at: at(3),
        }]);
}

#[test]
fn holds_of_dead_processes_and_expired_holds_are_released() {
    let hold = expected_hold(36, None);
    let mut expired = reserved(3, 36, None);
    if let TenantEvent::CreditsReserved {
        expires_at,
        request_id,
        ..
    } = &mut expired
    {
        *expires_at = at(5);
        *request_id = request(3);
    }
    let mut other_instance = reserved(2, 36, None);
    if let TenantEvent::CreditsReserved { instance_id, .. } = &mut other_instance {
        *instance_id = instance(7);
    }
    let result = TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
            other_instance,
            expired,
        ])
        .when(TenantCommand::ReleaseAbandonedHolds {
            live_instances: vec![instance(0)],
            at: at(10),
        })
        .inspect_result()
        .unwrap();
    let released: Vec<_> = result
        .iter()
        .map(|e| match e {
            TenantEvent::HoldReleased {
                request_id,
                hold_pico,
                reason,
                ..
            } => {
                assert_eq!(*hold_pico, hold);
                (*request_id, reason.split(':').next().unwrap().to_string())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        released,
        vec![
            (request(2), "abandoned".to_string()),
            (request(3), "expired".to_string())
        ]
    );
}

#[test]
fn ledger_identity_holds_after_every_event() {
    let hold = expected_hold(36, None);
    let events = vec![
        created(),
        key_issued(),
        granted("1", "g1"),
        reserved(1, 36, None),
        reserved(2, 36, None),
        settled(1, 9, 20, hold),
        TenantEvent::HoldReleased {
            request_id: request(2),
            hold_pico: hold,
            reason: "x".into(),
            at: at(4),
        },
    ];
    let mut tenant = Tenant::default();
    for e in events {
        tenant.apply_event(e);
        let b = tenant.balance();
        assert_eq!(b.granted - b.spent - b.held - b.available, Credits::ZERO);
        assert!(b.held >= Credits::ZERO);
    }
    assert!(tenant.holds.is_empty());
}

#[test]
fn settle_by_a_fallback_model_charges_that_models_rates() {
    let hold = expected_hold(36, None);
    let fallback = ModelId::parse("other/model-b").unwrap();
    let dearer = Rates::flat(
        Rate::parse_per_million("3").unwrap(),
        Rate::parse_per_million("4").unwrap(),
    );
    let attempt = Attempt {
        number: 3,
        provider: "other".into(),
        credential_id: "c9".into(),
        model: fallback.clone(),
        price_version: 7,
        rates: dearer,
        terms: ChargeTerms::sold_directly(dearer),
    };
    let result = TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
        ])
        .when(TenantCommand::SettleUsage {
            request_id: request(1),
            attempt,
            usage: Usage {
                input_tokens: 9,
                output_tokens: 20,
                ..Usage::default()
            },
            upstream_latency_ms: 5,
            at: at(3),
        })
        .inspect_result()
        .unwrap();
    match &result[..] {
        [TenantEvent::UpstreamAttempted {
            attempt: 3,
            provider,
            outcome: AttemptOutcome::Succeeded,
            ..
        }, TenantEvent::UsageSettled {
            model,
            rates,
            price_version,
            cost_pico,
            hold_pico,
            ..
        }] => {
            assert_eq!(provider, "other");
            assert_eq!(model, &fallback);
            assert_eq!((*rates, *price_version), (dearer, 7));
            assert_eq!(cost_pico.pico(), 9 * 3_000_000 + 20 * 4_000_000);
            assert_eq!(*hold_pico, hold);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

#[test]
fn failed_attempt_is_recorded_at_zero_cost() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
        ])
        .when(TenantCommand::RecordFailedAttempt {
            request_id: request(1),
            attempt: attempt(),
            status: Some(503),
            reason: "overloaded".into(),
            latency_ms: 4,
            at: at(3),
        })
        .then_expect_events(vec![TenantEvent::UpstreamAttempted {
            request_id: request(1),
            attempt: 1,
            provider: "openai".into(),
            credential_id: "cred-1".into(),
            model: model(),
            outcome: AttemptOutcome::Failed {
                status: Some(503),
                reason: "overloaded".into(),
            },
            usage: None,
            cost_pico: Credits::ZERO,
            latency_ms: 4,
            at: at(3),
        }]);
}

#[test]
fn failed_attempt_without_an_open_hold_is_refused() {
    TenantTest::with(())
        .given(vec![created(), key_issued(), granted("1", "g1")])
        .when(TenantCommand::RecordFailedAttempt {
            request_id: request(1),
            attempt: attempt(),
            status: None,
            reason: "connect".into(),
            latency_ms: 4,
            at: at(3),
        })
        .then_expect_error(TenantError::UnknownHold(request(1)));
}

// ---------------------------------------------------------------------------
// Credit lifecycle: expiring lots, burn order, expiry, payments and refunds.
// ---------------------------------------------------------------------------

/// A grant of `amount` at `at(1)` that expires at `at(expires)`.
fn granted_expiring(amount: &str, key: &str, expires: i64) -> TenantEvent {
    TenantEvent::CreditsGranted {
        amount_pico: credits(amount),
        idempotency_key: key.into(),
        reason: "promo".into(),
        expires_at: Some(at(expires)),
        payment: None,
        at: at(1),
    }
}

fn grant_cmd(amount: &str, key: &str, expires_at: Option<i64>, now: i64) -> TenantCommand {
    TenantCommand::GrantCredits {
        amount: credits(amount),
        idempotency_key: key.into(),
        reason: "promo".into(),
        expires_at: expires_at.map(at),
        at: at(now),
    }
}

fn expired_event(key: &str, amount: &str, when: i64) -> TenantEvent {
    TenantEvent::CreditsExpired {
        grant_id: key.into(),
        amount_pico: credits(amount),
        at: at(when),
    }
}

/// A settlement charging exactly `amount` credits (output tokens at 2 per million).
fn spent(n: u128, amount: &str) -> TenantEvent {
    let output = (credits(amount).pico() / 2_000_000) as u64;
    assert_eq!(
        Credits::from_pico(output as i128 * 2_000_000),
        credits(amount)
    );
    settled(n, 0, output, expected_hold(36, None))
}

fn paid(event_id: &str, payment_id: &str, amount: &str) -> TenantEvent {
    TenantEvent::CreditsGranted {
        amount_pico: credits(amount),
        idempotency_key: format!("payment:{event_id}"),
        reason: format!("payment {payment_id}"),
        expires_at: None,
        payment: Some(PaymentRef {
            payment_event_id: event_id.into(),
            payment_id: payment_id.into(),
        }),
        at: at(1),
    }
}

fn pay_cmd(event_id: &str, payment_id: Option<&str>, amount: &str) -> TenantCommand {
    TenantCommand::RecordPayment {
        payment_event_id: event_id.into(),
        payment_id: payment_id.map(Into::into),
        amount: credits(amount),
        at: at(1),
    }
}

fn refund_cmd(event_id: &str, payment_id: &str, amount: &str) -> TenantCommand {
    TenantCommand::RefundPayment {
        payment_event_id: event_id.into(),
        payment_id: payment_id.into(),
        amount: credits(amount),
        at: at(5),
    }
}

fn revoked(event_id: &str, payment_id: &str, requested: &str, amount: &str) -> TenantEvent {
    TenantEvent::CreditsRevoked {
        payment_event_id: event_id.into(),
        payment_id: payment_id.into(),
        requested_pico: credits(requested),
        amount_pico: credits(amount),
        at: at(5),
    }
}

fn state_after(events: Vec<TenantEvent>) -> Tenant {
    let mut tenant = Tenant::default();
    for e in events {
        tenant.apply_event(e);
    }
    tenant
}

fn assert_ledger_identity(b: &Balance) {
    assert_eq!(
        b.granted - b.spent - b.expired - b.revoked - b.closed_out - b.held,
        b.available,
        "{b:?}"
    );
}

#[test]
fn grant_with_expiry_records_it() {
    TenantTest::with(())
        .given(vec![created()])
        .when(grant_cmd("2", "promo-1", Some(100), 1))
        .then_expect_events(vec![granted_expiring("2", "promo-1", 100)]);
}

#[test]
fn grant_expiring_at_or_before_its_own_time_is_refused() {
    TenantTest::with(())
        .given(vec![created()])
        .when(grant_cmd("2", "promo-1", Some(1), 1))
        .then_expect_error(TenantError::ExpiryNotInFuture);
}

#[test]
fn repeated_grant_with_another_expiry_is_refused_and_a_late_retry_is_a_no_op() {
    TenantTest::with(())
        .given(vec![created(), granted_expiring("2", "promo-1", 100)])
        .when(grant_cmd("2", "promo-1", Some(200), 9))
        .then_expect_error(TenantError::IdempotencyKeyReused("promo-1".into()));
    // Retried after the expiry has passed: still the same grant, not an error.
    TenantTest::with(())
        .given(vec![created(), granted_expiring("2", "promo-1", 100)])
        .when(grant_cmd("2", "promo-1", Some(100), 500))
        .then_expect_events(vec![]);
}

#[test]
fn operator_grants_may_not_use_the_payment_key_prefix() {
    TenantTest::with(())
        .given(vec![created()])
        .when(grant_cmd("1", "payment:evt_1", None, 1))
        .then_expect_error(TenantError::ReservedIdempotencyKey("payment:evt_1".into()));
}

#[test]
fn spending_burns_the_earliest_expiry_first_and_lots_without_expiry_last() {
    // Lots: A never expires, B expires at 1000, C at 500. Spending 1.5 burns all
    // of C, then half of B; A is untouched. So at 2000 only B's half expires.
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "A"),
            granted_expiring("1", "B", 1000),
            granted_expiring("1", "C", 500),
            reserved(1, 36, None),
            spent(1, "1.5"),
        ])
        .when(TenantCommand::ExpireCredits { at: at(2000) })
        .then_expect_events(vec![expired_event("B", "0.5", 2000)]);
}

#[test]
fn among_lots_expiring_together_the_older_burns_first() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted_expiring("1", "older", 100),
            granted_expiring("1", "newer", 100),
            reserved(1, 36, None),
            spent(1, "0.25"),
        ])
        .when(TenantCommand::ExpireCredits { at: at(100) })
        .then_expect_events(vec![
            expired_event("older", "0.75", 100),
            expired_event("newer", "1", 100),
        ]);
}

#[test]
fn expiry_emits_what_is_left_of_each_due_lot_with_the_commands_clock() {
    let given = || {
        vec![
            created(),
            granted("1", "forever"),
            granted_expiring("2", "promo", 100),
        ]
    };
    TenantTest::with(())
        .given(given())
        .when(TenantCommand::ExpireCredits { at: at(99) })
        .then_expect_events(vec![]);
    TenantTest::with(())
        .given(given())
        .when(TenantCommand::ExpireCredits { at: at(100) })
        .then_expect_events(vec![expired_event("promo", "2", 100)]);
    // Once expired, nothing is left to expire.
    TenantTest::with(())
        .given([given(), vec![expired_event("promo", "2", 100)]].concat())
        .when(TenantCommand::ExpireCredits { at: at(300) })
        .then_expect_events(vec![]);
    let tenant = state_after([given(), vec![expired_event("promo", "2", 100)]].concat());
    let b = tenant.balance();
    assert_eq!(
        (b.granted, b.expired, b.available),
        (credits("3"), credits("2"), credits("1"))
    );
    assert_ledger_identity(&b);
}

#[test]
fn a_partly_spent_lot_expires_only_what_is_left() {
    let history = vec![
        created(),
        key_issued(),
        granted_expiring("1", "promo", 100),
        reserved(1, 36, None),
        spent(1, "0.25"),
    ];
    TenantTest::with(())
        .given(history.clone())
        .when(TenantCommand::ExpireCredits { at: at(150) })
        .then_expect_events(vec![expired_event("promo", "0.75", 150)]);
    let tenant = state_after([history, vec![expired_event("promo", "0.75", 150)]].concat());
    let b = tenant.balance();
    assert_eq!(b.spent, credits("0.25"));
    assert_eq!(b.expired, credits("0.75"));
    assert_eq!(b.available, Credits::ZERO);
    assert!(b.expiring.is_empty());
    assert_ledger_identity(&b);
}

#[test]
fn a_reservation_expires_due_lots_first_and_never_rests_on_them() {
    // The lot expired at 2, the reservation comes at 2: the expiry pass has not run.
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted_expiring("1", "promo", 2),
        ])
        .when(reserve_cmd(1, 36, None, 0))
        .then_expect_error(TenantError::InsufficientCredits {
            available: "0".into(),
            required: "0.0003".into(),
            advice: advice(0),
        });
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "forever"),
            granted_expiring("1", "promo", 2),
        ])
        .when(reserve_cmd(1, 36, None, 0))
        .then_expect_events(vec![expired_event("promo", "1", 2), reserved(1, 36, None)]);
}

#[test]
fn expiring_soon_is_what_is_left_of_lots_expiring_by_the_reading_time() {
    let tenant = state_after(vec![
        created(),
        key_issued(),
        granted("5", "forever"),
        granted_expiring("1", "soon", 100),
        granted_expiring("2", "later", 10_000),
        reserved(1, 36, None),
        spent(1, "0.5"),
    ]);
    let b = tenant.balance();
    assert_eq!(b.expiring_by(at(50)), Credits::ZERO);
    assert_eq!(b.expiring_by(at(100)), credits("0.5"));
    assert_eq!(b.expiring_by(at(10_000)), credits("2.5"));
    assert_ledger_identity(&b);
}

#[test]
fn a_debt_is_paid_by_the_next_grant_before_its_lot_can_expire() {
    // Spending beyond every lot (an overshoot) leaves a debt of 0.5.
    let history = vec![
        created(),
        key_issued(),
        granted("1", "g1"),
        reserved(1, 36, None),
        spent(1, "1.5"),
        granted_expiring("2", "promo", 100),
    ];
    TenantTest::with(())
        .given(history.clone())
        .when(TenantCommand::ExpireCredits { at: at(100) })
        .then_expect_events(vec![expired_event("promo", "1.5", 100)]);
    let tenant = state_after([history, vec![expired_event("promo", "1.5", 100)]].concat());
    assert_eq!(tenant.balance().available, Credits::ZERO);
    assert_ledger_identity(&tenant.balance());
}

#[test]
fn a_payment_grants_its_amount() {
    TenantTest::with(())
        .given(vec![created()])
        .when(pay_cmd("evt_1", Some("pay_1"), "10"))
        .then_expect_events(vec![paid("evt_1", "pay_1", "10")]);
    // Without a payment id, the event id names the payment.
    TenantTest::with(())
        .given(vec![created()])
        .when(pay_cmd("evt_1", None, "10"))
        .then_expect_events(vec![paid("evt_1", "evt_1", "10")]);
}

#[test]
fn a_duplicate_payment_event_grants_nothing() {
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(pay_cmd("evt_1", Some("pay_1"), "10"))
        .then_expect_events(vec![]);
    // However late: other events in between change nothing.
    TenantTest::with(())
        .given(vec![
            created(),
            paid("evt_1", "pay_1", "10"),
            granted("1", "g1"),
            revoked("evt_2", "pay_1", "10", "10"),
        ])
        .when(pay_cmd("evt_1", Some("pay_1"), "10"))
        .then_expect_events(vec![]);
    // The same payment told by another event is credited once too (the other
    // event id is only noted).
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(pay_cmd("evt_9", Some("pay_1"), "10"))
        .then_expect_events(vec![noted("evt_9", "pay_1", "10")]);
}

fn noted(event_id: &str, payment_id: &str, amount: &str) -> TenantEvent {
    TenantEvent::PaymentEventNoted {
        payment_event_id: event_id.into(),
        payment_id: payment_id.into(),
        amount_pico: credits(amount),
        at: at(1),
    }
}

#[test]
fn a_payment_event_id_answered_as_a_duplicate_is_remembered() {
    let history = vec![
        created(),
        paid("evt_1", "pay_1", "10"),
        noted("evt_9", "pay_1", "10"),
    ];
    // Another body under the noted id is refused, however it differs.
    TenantTest::with(())
        .given(history.clone())
        .when(pay_cmd("evt_9", Some("pay_2"), "500"))
        .then_expect_error(TenantError::PaymentEventReused("evt_9".into()));
    TenantTest::with(())
        .given(history.clone())
        .when(refund_cmd("evt_9", "pay_1", "10"))
        .then_expect_error(TenantError::PaymentEventReused("evt_9".into()));
    // The same body again is a duplicate that writes nothing more.
    TenantTest::with(())
        .given(history)
        .when(pay_cmd("evt_9", Some("pay_1"), "10"))
        .then_expect_events(vec![]);
}

#[test]
fn a_payment_event_id_with_a_different_body_is_refused() {
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(pay_cmd("evt_1", Some("pay_1"), "11"))
        .then_expect_error(TenantError::PaymentEventReused("evt_1".into()));
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(pay_cmd("evt_1", Some("pay_2"), "10"))
        .then_expect_error(TenantError::PaymentEventReused("evt_1".into()));
    // A refund may not reuse a payment's event id either.
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(refund_cmd("evt_1", "pay_1", "10"))
        .then_expect_error(TenantError::PaymentEventReused("evt_1".into()));
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(pay_cmd("evt_9", Some("pay_1"), "3"))
        .then_expect_error(TenantError::PaymentAmountMismatch("pay_1".into()));
}

#[test]
fn a_refund_revokes_its_amount() {
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(refund_cmd("evt_2", "pay_1", "4"))
        .then_expect_events(vec![revoked("evt_2", "pay_1", "4", "4")]);
    let tenant = state_after(vec![
        created(),
        paid("evt_1", "pay_1", "10"),
        revoked("evt_2", "pay_1", "4", "4"),
    ]);
    let b = tenant.balance();
    assert_eq!((b.revoked, b.available), (credits("4"), credits("6")));
    assert_ledger_identity(&b);
}

#[test]
fn refunds_revoke_at_most_what_is_left_of_the_payment() {
    TenantTest::with(())
        .given(vec![
            created(),
            paid("evt_1", "pay_1", "10"),
            revoked("evt_2", "pay_1", "4", "4"),
        ])
        .when(refund_cmd("evt_3", "pay_1", "10"))
        .then_expect_events(vec![revoked("evt_3", "pay_1", "10", "6")]);
}

#[test]
fn a_duplicate_refund_revokes_nothing_and_an_unknown_payment_is_refused() {
    TenantTest::with(())
        .given(vec![
            created(),
            paid("evt_1", "pay_1", "10"),
            revoked("evt_2", "pay_1", "4", "4"),
        ])
        .when(refund_cmd("evt_2", "pay_1", "4"))
        .then_expect_events(vec![]);
    TenantTest::with(())
        .given(vec![created(), paid("evt_1", "pay_1", "10")])
        .when(refund_cmd("evt_2", "pay_other", "4"))
        .then_expect_error(TenantError::UnknownPayment("pay_other".into()));
}

#[test]
fn a_refund_beyond_the_balance_makes_it_negative_and_reserving_then_fails() {
    let history = vec![
        created(),
        key_issued(),
        paid("evt_1", "pay_1", "1"),
        reserved(1, 36, None),
        spent(1, "0.8"),
    ];
    TenantTest::with(())
        .given(history.clone())
        .when(refund_cmd("evt_2", "pay_1", "1"))
        .then_expect_events(vec![revoked("evt_2", "pay_1", "1", "1")]);
    let after = [history, vec![revoked("evt_2", "pay_1", "1", "1")]].concat();
    let b = state_after(after.clone()).balance();
    assert_eq!(b.available, -credits("0.8"));
    assert_ledger_identity(&b);
    TenantTest::with(())
        .given(after)
        .when(reserve_cmd(2, 36, None, 0))
        .then_expect_error(TenantError::InsufficientCredits {
            available: "0".into(),
            required: "0.0003".into(),
            advice: advice(0),
        });
}

#[test]
fn a_revocation_takes_credit_without_expiry_first() {
    // A refund must not be paid with promotional credit that would expire anyway.
    TenantTest::with(())
        .given(vec![
            created(),
            granted_expiring("1", "promo", 100),
            paid("evt_1", "pay_1", "1"),
            revoked("evt_2", "pay_1", "1", "1"),
        ])
        .when(TenantCommand::ExpireCredits { at: at(100) })
        .then_expect_events(vec![expired_event("promo", "1", 100)]);
    // Past the credit without expiry, it burns expiring lots in the spending order.
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted_expiring("1", "promo", 100),
            paid("evt_1", "pay_1", "1"),
            reserved(1, 36, None),
            spent(1, "0.5"),
            revoked("evt_2", "pay_1", "1", "1"),
        ])
        .when(TenantCommand::ExpireCredits { at: at(100) })
        .then_expect_events(vec![expired_event("promo", "0.5", 100)]);
}

// Low-balance notifications.

fn threshold_set(threshold: Option<&str>) -> TenantEvent {
    TenantEvent::LowBalanceThresholdSet {
        threshold_pico: threshold.map(credits),
        at: at(1),
    }
}

fn threshold_cmd(threshold: Option<&str>) -> TenantCommand {
    TenantCommand::SetLowBalanceThreshold {
        threshold: threshold.map(credits),
        at: at(1),
    }
}

fn crossed(threshold: &str, available: Credits, when: i64) -> TenantEvent {
    TenantEvent::LowBalanceCrossed {
        threshold_pico: credits(threshold),
        available_pico: available,
        at: at(when),
    }
}

/// The hold `reserve_cmd(_, 36, None, _)` places: 0.0003.
fn hold() -> Credits {
    expected_hold(36, None)
}

#[test]
fn setting_the_threshold_records_it_and_repeating_it_is_a_no_op() {
    TenantTest::with(())
        .given(vec![created(), granted("1", "g1")])
        .when(threshold_cmd(Some("0.5")))
        .then_expect_events(vec![threshold_set(Some("0.5"))]);
    TenantTest::with(())
        .given(vec![
            created(),
            granted("1", "g1"),
            threshold_set(Some("0.5")),
        ])
        .when(threshold_cmd(Some("0.5")))
        .then_expect_events(vec![]);
    TenantTest::with(())
        .given(vec![
            created(),
            granted("1", "g1"),
            threshold_set(Some("0.5")),
        ])
        .when(threshold_cmd(None))
        .then_expect_events(vec![threshold_set(None)]);
    let tenant = state_after(vec![created(), threshold_set(Some("0.5"))]);
    assert_eq!(tenant.low_balance_threshold, Some(credits("0.5")));
}

#[test]
fn a_settlement_that_takes_available_below_the_threshold_is_followed_by_a_crossing() {
    // 1 granted, 0.0003 held; the settlement costs 0.12 (60 000 output tokens).
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            threshold_set(Some("0.9")),
            reserved(1, 36, None),
        ])
        .when(settle_cmd(1, 0, 60_000))
        .then_expect_events(vec![
            attempted_ok(1, 0, 60_000),
            settled(1, 0, 60_000, hold()),
            crossed("0.9", credits("0.88"), 3),
        ]);
}

#[test]
fn a_reservation_crosses_too_since_holds_reduce_available() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            threshold_set(Some("1")),
        ])
        .when(reserve_cmd(1, 36, None, 0))
        .then_expect_events(vec![
            reserved(1, 36, None),
            crossed("1", credits("1") - hold(), 2),
        ]);
}

#[test]
fn no_second_crossing_while_still_below() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            threshold_set(Some("1")),
            reserved(1, 36, None),
            crossed("1", credits("1") - hold(), 2),
        ])
        .when(reserve_cmd(2, 36, None, 0))
        .then_expect_events(vec![reserved(2, 36, None)]);
}

#[test]
fn a_grant_back_above_the_threshold_re_arms_it() {
    let below = vec![
        created(),
        key_issued(),
        granted("1", "g1"),
        threshold_set(Some("1")),
        reserved(1, 36, None),
        crossed("1", credits("1") - hold(), 2),
    ];
    // The grant itself crosses nothing (it goes up).
    TenantTest::with(())
        .given(below.clone())
        .when(grant_cmd("0.0005", "g2", None, 1))
        .then_expect_events(vec![TenantEvent::CreditsGranted {
            amount_pico: credits("0.0005"),
            idempotency_key: "g2".into(),
            reason: "promo".into(),
            expires_at: None,
            payment: None,
            at: at(1),
        }]);
    // Available is 1.0002 now: the next hold crosses again.
    let mut rearmed = below;
    rearmed.push(TenantEvent::CreditsGranted {
        amount_pico: credits("0.0005"),
        idempotency_key: "g2".into(),
        reason: "promo".into(),
        expires_at: None,
        payment: None,
        at: at(1),
    });
    TenantTest::with(())
        .given(rearmed)
        .when(reserve_cmd(2, 36, None, 0))
        .then_expect_events(vec![
            reserved(2, 36, None),
            crossed("1", credits("1.0005") - hold() - hold(), 2),
        ]);
}

#[test]
fn without_a_threshold_nothing_is_notified() {
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            reserved(1, 36, None),
        ])
        .when(settle_cmd(1, 0, 60_000))
        .then_expect_events(vec![
            attempted_ok(1, 0, 60_000),
            settled(1, 0, 60_000, hold()),
        ]);
    // Nor once it is removed.
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            threshold_set(Some("0.9")),
            threshold_set(None),
            reserved(1, 36, None),
        ])
        .when(settle_cmd(1, 0, 60_000))
        .then_expect_events(vec![
            attempted_ok(1, 0, 60_000),
            settled(1, 0, 60_000, hold()),
        ]);
}

#[test]
fn a_threshold_set_below_available_is_crossed_later_and_one_set_above_is_not_a_crossing() {
    TenantTest::with(())
        .given(vec![created(), key_issued(), granted("1", "g1")])
        .when(threshold_cmd(Some("0.5")))
        .then_expect_events(vec![threshold_set(Some("0.5"))]);
    // 0.6 spent: 1 − 0.6 = 0.4 < 0.5.
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            threshold_set(Some("0.5")),
            reserved(1, 36, None),
        ])
        .when(settle_cmd(1, 0, 300_000))
        .then_expect_events(vec![
            attempted_ok(1, 0, 300_000),
            settled(1, 0, 300_000, hold()),
            crossed("0.5", credits("0.4"), 3),
        ]);
    // Setting a threshold above what is available moves no credit: no crossing
    // (and none until available has been back at or above it).
    TenantTest::with(())
        .given(vec![created(), key_issued(), granted("1", "g1")])
        .when(threshold_cmd(Some("2")))
        .then_expect_events(vec![threshold_set(Some("2"))]);
    TenantTest::with(())
        .given(vec![
            created(),
            key_issued(),
            granted("1", "g1"),
            threshold_set(Some("2")),
        ])
        .when(reserve_cmd(1, 36, None, 0))
        .then_expect_events(vec![reserved(1, 36, None)]);
}

#[test]
fn snapshots_from_before_thresholds_load_without_one() {
    let tenant = state_after(vec![created(), granted("1", "g1")]);
    let mut json = serde_json::to_value(&tenant).unwrap();
    json.as_object_mut()
        .unwrap()
        .remove("low_balance_threshold");
    let loaded: Tenant = serde_json::from_value(json).unwrap();
    assert_eq!(loaded, tenant);
    assert_eq!(loaded.low_balance_threshold, None);
}

mod ledger_properties {
    //! Whatever the order of grants, holds, settlements, releases, expiries,
    //! payments and refunds, the ledger neither creates nor destroys credit.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        Grant { units: u32, expires_in: Option<i64> },
        Reserve { max_tokens: u32 },
        Settle { pick: usize, output: u64 },
        Release { pick: usize },
        Expire,
        Pay { units: u32 },
        Redeliver { pick: usize },
        Refund { pick: usize, units: u32 },
        Wait { secs: i64 },
        Threshold { units: Option<u32> },
    }

    /// One unit: 0.0001 credit, a few holds' worth.
    fn units(n: u32) -> Credits {
        Credits::from_pico(n as i128 * 100_000_000)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..60, proptest::option::of(0i64..40))
                .prop_map(|(units, expires_in)| Op::Grant { units, expires_in }),
            (1u32..1000).prop_map(|max_tokens| Op::Reserve { max_tokens }),
            (any::<usize>(), 0u64..3000).prop_map(|(pick, output)| Op::Settle { pick, output }),
            any::<usize>().prop_map(|pick| Op::Release { pick }),
            Just(Op::Expire),
            (1u32..60).prop_map(|units| Op::Pay { units }),
            any::<usize>().prop_map(|pick| Op::Redeliver { pick }),
            (any::<usize>(), 1u32..80).prop_map(|(pick, units)| Op::Refund { pick, units }),
            (1i64..20).prop_map(|secs| Op::Wait { secs }),
            proptest::option::of(0u32..80).prop_map(|units| Op::Threshold { units }),
        ]
    }

    /// Totals recomputed from the events alone, independently of the aggregate.
    #[derive(Default)]
    struct Sums {
        granted: Credits,
        spent: Credits,
        expired: Credits,
        revoked: Credits,
        grant_amounts: BTreeMap<String, Credits>,
        expired_per_grant: BTreeMap<String, Credits>,
    }

    impl Sums {
        fn add(&mut self, event: &TenantEvent) {
            match event {
                TenantEvent::CreditsGranted {
                    amount_pico,
                    idempotency_key,
                    ..
                } => {
                    self.granted = self.granted + *amount_pico;
                    self.grant_amounts
                        .insert(idempotency_key.clone(), *amount_pico);
                }
                TenantEvent::UsageSettled { cost_pico, .. } => self.spent = self.spent + *cost_pico,
                TenantEvent::CreditsExpired {
                    grant_id,
                    amount_pico,
                    ..
                } => {
                    self.expired = self.expired + *amount_pico;
                    assert!(
                        self.expired_per_grant
                            .insert(grant_id.clone(), *amount_pico)
                            .is_none(),
                        "a lot expires once"
                    );
                    assert!(*amount_pico > Credits::ZERO);
                    assert!(*amount_pico <= self.grant_amounts[grant_id]);
                }
                TenantEvent::CreditsRevoked { amount_pico, .. } => {
                    self.revoked = self.revoked + *amount_pico
                }
                _ => {}
            }
        }
    }

    fn check(tenant: &Tenant, sums: &Sums) {
        let b = tenant.balance();
        assert_ledger_identity(&b);
        assert_eq!(b.granted, sums.granted);
        assert_eq!(b.spent, sums.spent);
        assert_eq!(b.expired, sums.expired);
        assert_eq!(b.revoked, sums.revoked);
        let held = tenant
            .holds
            .values()
            .fold(Credits::ZERO, |sum, h| sum + h.amount);
        assert_eq!(b.held, held);
        assert!(b.held >= Credits::ZERO);
        // Expiring lots never hold more than the credit left, and only what is left.
        assert!(tenant.lots.total() <= tenant.position().max(Credits::ZERO));
        let lots: Vec<_> = tenant.lots.iter().collect();
        assert!(lots.iter().all(|l| l.remaining > Credits::ZERO));
        assert!(lots.windows(2).all(|w| w[0].expires_at <= w[1].expires_at));
        for lot in lots {
            assert!(lot.remaining <= tenant.grants[&lot.grant_id].amount);
        }
        for payment in tenant.payments.values() {
            assert!(payment.revoked <= payment.amount);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_ledger_never_creates_or_destroys_credit(ops in proptest::collection::vec(op(), 1..80)) {
            let mut tenant = Tenant::default();
            let mut sums = Sums::default();
            let mut log = Vec::new();
            let mut deliveries: Vec<TenantCommand> = Vec::new();
            let mut now = 1;
            let mut next = 0u128;
            let run = |tenant: &mut Tenant, sums: &mut Sums, log: &mut Vec<TenantEvent>, command: TenantCommand| -> Result<(), TenantError> {
                let before = tenant.available();
                // Closing sends no low-balance notice.
                let threshold = tenant
                    .low_balance_threshold
                    .filter(|_| !matches!(command, TenantCommand::CloseTenant { .. }));
                let events = tenant.decide(command)?;
                let crossings = events
                    .iter()
                    .filter(|e| matches!(e, TenantEvent::LowBalanceCrossed { .. }))
                    .count();
                for event in events {
                    sums.add(&event);
                    log.push(event.clone());
                    let available = tenant.available();
                    // A hold is accepted only when the credit it holds is available,
                    // after the lots it made expire first.
                    if let TenantEvent::CreditsReserved { hold_pico, .. } = &event {
                        assert!(available >= *hold_pico, "hold {hold_pico:?} with only {available:?} available");
                    }
                    let delta = aggregate::available_delta(&event);
                    tenant.apply_event(event);
                    // The crossing is decided from these deltas: they must agree.
                    assert_eq!(tenant.available(), available + delta);
                    check(tenant, sums);
                }
                // One crossing exactly when the command went from >= to < threshold.
                let crossed = threshold
                    .is_some_and(|t| before >= t && tenant.available() < t);
                assert_eq!(crossings, usize::from(crossed));
                Ok(())
            };
            for e in [created(), key_issued()] {
                tenant.apply_event(e);
            }
            for op in ops {
                now += 1;
                next += 1;
                // The only refusals these commands can meet: a grant expiring at
                // its own time, and a hold larger than the credit available.
                let expiry_not_in_future = matches!(op, Op::Grant { expires_in: Some(0), .. });
                let is_reserve = matches!(op, Op::Reserve { .. });
                let command = match op {
                    Op::Grant { units: n, expires_in } => TenantCommand::GrantCredits {
                        amount: units(n),
                        idempotency_key: format!("g{next}"),
                        reason: "r".into(),
                        expires_at: expires_in.map(|d| at(now + d)),
                        at: at(now),
                    },
                    Op::Reserve { max_tokens } => {
                        let mut command = reserve_cmd(next, 36, Some(max_tokens), 0);
                        if let TenantCommand::ReserveCredits { at: when, .. } = &mut command {
                            *when = at(now);
                        }
                        command
                    }
                    Op::Settle { pick, output } => {
                        let Some(request_id) = tenant.holds.keys().nth(pick % tenant.holds.len().max(1)).copied() else { continue };
                        TenantCommand::SettleUsage {
                            request_id,
                            attempt: attempt(),
                            usage: Usage { input_tokens: 10, output_tokens: output, ..Usage::default() },
                            upstream_latency_ms: 1,
                            at: at(now),
                        }
                    }
                    Op::Release { pick } => {
                        let Some(request_id) = tenant.holds.keys().nth(pick % tenant.holds.len().max(1)).copied() else { continue };
                        TenantCommand::ReleaseHold { request_id, reason: "x".into(), at: at(now) }
                    }
                    Op::Expire => TenantCommand::ExpireCredits { at: at(now) },
                    Op::Pay { units: n } => {
                        let command = TenantCommand::RecordPayment {
                            payment_event_id: format!("evt{next}"),
                            payment_id: Some(format!("pay{next}")),
                            amount: units(n),
                            at: at(now),
                        };
                        deliveries.push(command.clone());
                        command
                    }
                    Op::Redeliver { pick } => {
                        let Some(command) = deliveries.get(pick % deliveries.len().max(1)).cloned() else { continue };
                        // A redelivery, however late, changes nothing.
                        prop_assert_eq!(tenant.decide(command), Ok(vec![]));
                        continue;
                    }
                    Op::Refund { pick, units: n } => {
                        let Some(payment_id) = tenant.payments.keys().nth(pick % tenant.payments.len().max(1)).cloned() else { continue };
                        let command = TenantCommand::RefundPayment {
                            payment_event_id: format!("evt{next}"),
                            payment_id,
                            amount: units(n),
                            at: at(now),
                        };
                        deliveries.push(command.clone());
                        command
                    }
                    Op::Wait { secs } => {
                        now += secs;
                        continue;
                    }
                    Op::Threshold { units: n } => TenantCommand::SetLowBalanceThreshold {
                        threshold: n.map(units),
                        at: at(now),
                    },
                };
                match run(&mut tenant, &mut sums, &mut log, command) {
                    Ok(()) => prop_assert!(!expiry_not_in_future, "a grant expiring at once is refused"),
                    Err(TenantError::ExpiryNotInFuture) if expiry_not_in_future => {}
                    Err(TenantError::InsufficientCredits { available, required, .. }) if is_reserve => {
                        let available = Credits::parse(&available).unwrap();
                        let required = Credits::parse(&required).unwrap();
                        prop_assert!(available < required, "refused {required:?} with {available:?} available");
                    }
                    Err(e) => prop_assert!(false, "unexpected refusal: {e}"),
                }
            }
            // Replaying the log rebuilds the same state, and so does a snapshot.
            let mut replayed = Tenant::default();
            for e in [created(), key_issued()].into_iter().chain(log) {
                replayed.apply_event(e);
            }
            prop_assert_eq!(&replayed, &tenant);
            let snapshot: Tenant = serde_json::from_str(&serde_json::to_string(&tenant).unwrap()).unwrap();
            prop_assert_eq!(&snapshot, &tenant);
            // In the end every expiring lot expires: what is left is credit without expiry.
            prop_assert_eq!(
                run(&mut tenant, &mut sums, &mut Vec::new(), TenantCommand::ExpireCredits { at: at(now + 1000) }),
                Ok(())
            );
            prop_assert!(tenant.lots.is_empty());
            // Closing, once every hold is released, leaves nothing available and
            // keeps the identity; what it took is what was left.
            let open: Vec<_> = tenant.holds.keys().copied().collect();
            for request_id in open {
                let release = TenantCommand::ReleaseHold { request_id, reason: "x".into(), at: at(now + 1000) };
                prop_assert_eq!(run(&mut tenant, &mut sums, &mut Vec::new(), release), Ok(()));
            }
            let left = tenant.available();
            let close = TenantCommand::CloseTenant { reason: "end".into(), remaining: RemainingCredit::Refunded, at: at(now + 1001) };
            prop_assert_eq!(run(&mut tenant, &mut sums, &mut Vec::new(), close), Ok(()));
            let b = tenant.balance();
            assert_ledger_identity(&b);
            prop_assert_eq!(b.closed_out, left.max(Credits::ZERO));
            prop_assert_eq!(b.available, left.min(Credits::ZERO));
        }
    }
}

mod suspension {
    //! Suspending, resuming and closing a tenant.

    use super::*;

    fn suspended(reason: &str) -> TenantEvent {
        TenantEvent::TenantSuspended {
            reason: reason.into(),
            at: at(3),
        }
    }
    fn suspend_cmd(reason: &str) -> TenantCommand {
        TenantCommand::SuspendTenant {
            reason: reason.into(),
            at: at(3),
        }
    }
    fn close_cmd(remaining: RemainingCredit) -> TenantCommand {
        TenantCommand::CloseTenant {
            reason: "contract ended".into(),
            remaining,
            at: at(5),
        }
    }
    fn closed_out(remaining: RemainingCredit, amount: &str) -> TenantEvent {
        TenantEvent::CreditsClosedOut {
            disposition: remaining,
            amount_pico: credits(amount),
            at: at(5),
        }
    }
    fn closed() -> TenantEvent {
        TenantEvent::TenantClosed {
            reason: "contract ended".into(),
            at: at(5),
        }
    }
    fn funded() -> Vec<TenantEvent> {
        vec![created(), key_issued(), granted("1", "g1")]
    }
    fn with(
        mut history: Vec<TenantEvent>,
        more: impl IntoIterator<Item = TenantEvent>,
    ) -> Vec<TenantEvent> {
        history.extend(more);
        history
    }
    fn state(history: Vec<TenantEvent>) -> Tenant {
        let mut tenant = Tenant::default();
        for e in history {
            tenant.apply_event(e);
        }
        tenant
    }
    fn issue(role: Role, n: u128) -> TenantEvent {
        TenantEvent::ApiKeyIssued {
            key_id: KeyId(Uuid::from_u128(50 + n)),
            name: role.as_str().into(),
            role,
            key_hash: KeyHash::of_secret(&format!("secret{n}")),
            at: at(1),
        }
    }
    fn authorize(tenant: &Tenant, n: u128, permission: Permission) -> Result<Role, TenantError> {
        tenant.authorize(
            KeyId(Uuid::from_u128(50 + n)),
            &KeyHash::of_secret(&format!("secret{n}")),
            permission,
            at(10),
        )
    }

    #[test]
    fn suspend_records_the_reason() {
        TenantTest::with(())
            .given(funded())
            .when(suspend_cmd("unpaid invoice"))
            .then_expect_events(vec![suspended("unpaid invoice")]);
    }

    #[test]
    fn suspending_a_suspended_tenant_is_a_no_op() {
        TenantTest::with(())
            .given(with(funded(), [suspended("unpaid invoice")]))
            .when(suspend_cmd("another reason"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_suspension_needs_a_reason_of_bounded_length() {
        for reason in [String::new(), "x".repeat(STATUS_REASON_MAX_CHARS + 1)] {
            TenantTest::with(())
                .given(funded())
                .when(suspend_cmd(&reason))
                .then_expect_error(TenantError::InvalidLabel {
                    field: "reason",
                    max_chars: STATUS_REASON_MAX_CHARS,
                });
        }
        TenantTest::with(())
            .given(funded())
            .when(suspend_cmd(&"x".repeat(STATUS_REASON_MAX_CHARS)))
            .then_expect_events(vec![suspended(&"x".repeat(STATUS_REASON_MAX_CHARS))]);
    }

    #[test]
    fn resume_admits_again_and_resuming_an_active_tenant_is_a_no_op() {
        TenantTest::with(())
            .given(with(funded(), [suspended("r")]))
            .when(TenantCommand::ResumeTenant { at: at(4) })
            .then_expect_events(vec![TenantEvent::TenantResumed { at: at(4) }]);
        TenantTest::with(())
            .given(funded())
            .when(TenantCommand::ResumeTenant { at: at(4) })
            .then_expect_events(vec![]);
        TenantTest::with(())
            .given(with(
                funded(),
                [suspended("r"), TenantEvent::TenantResumed { at: at(4) }],
            ))
            .when(reserve_cmd(1, 36, None, 0))
            .then_expect_events(vec![reserved(1, 36, None)]);
    }

    #[test]
    fn a_suspended_tenants_model_request_is_refused_before_any_hold() {
        TenantTest::with(())
            .given(with(funded(), [suspended("unpaid invoice")]))
            .when(reserve_cmd(1, 36, None, 0))
            .then_expect_error(TenantError::TenantSuspended {
                reason: "unpaid invoice".into(),
            });
    }

    #[test]
    fn a_suspended_tenants_open_hold_still_settles_and_releases() {
        let hold = expected_hold(36, None);
        TenantTest::with(())
            .given(with(funded(), [reserved(1, 36, None), suspended("r")]))
            .when(settle_cmd(1, 9, 20))
            .then_expect_events(vec![attempted_ok(1, 9, 20), settled(1, 9, 20, hold)]);
        TenantTest::with(())
            .given(with(funded(), [reserved(1, 36, None), suspended("r")]))
            .when(TenantCommand::ReleaseHold {
                request_id: request(1),
                reason: "x".into(),
                at: at(4),
            })
            .then_expect_events(vec![TenantEvent::HoldReleased {
                request_id: request(1),
                hold_pico: hold,
                reason: "x".into(),
                at: at(4),
            }]);
    }

    #[test]
    fn a_suspended_tenant_can_still_be_credited_and_given_keys() {
        TenantTest::with(())
            .given(with(funded(), [suspended("r")]))
            .when(grant_cmd("2", "g2", None, 4))
            .then_expect_events(vec![TenantEvent::CreditsGranted {
                amount_pico: credits("2"),
                idempotency_key: "g2".into(),
                reason: "promo".into(),
                expires_at: None,
                payment: None,
                at: at(4),
            }]);
        let tenant = state(with(funded(), [suspended("r")]));
        assert!(tenant
            .decide(TenantCommand::IssueApiKey {
                key_id: KeyId(Uuid::from_u128(9)),
                name: "fixer".into(),
                role: Role::Admin,
                key_hash: KeyHash::of_secret("s9"),
                scopes: Scopes::default(),
                project: None,
                at: at(4),
            })
            .is_ok());
    }

    #[test]
    fn close_forfeits_what_is_left_and_closes() {
        TenantTest::with(())
            .given(funded())
            .when(close_cmd(RemainingCredit::Forfeited))
            .then_expect_events(vec![closed_out(RemainingCredit::Forfeited, "1"), closed()]);
    }

    #[test]
    fn close_refunds_what_is_left_after_spending_and_leaves_nothing_available() {
        let hold = expected_hold(36, None);
        let history = with(funded(), [reserved(1, 36, None), settled(1, 9, 20, hold)]);
        let left = state(history.clone()).available();
        let events = state(history.clone())
            .decide(close_cmd(RemainingCredit::Refunded))
            .unwrap();
        assert_eq!(
            events,
            vec![
                TenantEvent::CreditsClosedOut {
                    disposition: RemainingCredit::Refunded,
                    amount_pico: left,
                    at: at(5),
                },
                closed()
            ]
        );
        let after = state(with(history, events));
        let b = after.balance();
        assert_eq!(b.available, Credits::ZERO);
        assert_eq!(b.closed_out, left);
        assert_ledger_identity(&b);
        assert!(after.lots.is_empty());
    }

    #[test]
    fn close_expires_the_lots_due_first_and_closes_out_the_rest() {
        TenantTest::with(())
            .given(vec![
                created(),
                granted("1", "g1"),
                granted_expiring("2", "promo", 4),
            ])
            .when(close_cmd(RemainingCredit::Forfeited))
            .then_expect_events(vec![
                expired_event("promo", "2", 5),
                closed_out(RemainingCredit::Forfeited, "1"),
                closed(),
            ]);
    }

    #[test]
    fn close_of_a_tenant_in_debt_takes_nothing_and_leaves_the_debt() {
        let history = vec![
            created(),
            granted("1", "g1"),
            reserved(1, 36, None),
            spent(1, "1.5"),
        ];
        let events = state(history.clone())
            .decide(close_cmd(RemainingCredit::Forfeited))
            .unwrap();
        assert_eq!(
            events,
            vec![closed_out(RemainingCredit::Forfeited, "0"), closed()]
        );
        let after = state(with(history, events));
        assert_eq!(after.available(), -credits("0.5"));
    }

    #[test]
    fn close_with_open_holds_is_refused() {
        TenantTest::with(())
            .given(with(funded(), [reserved(1, 36, None), suspended("r")]))
            .when(close_cmd(RemainingCredit::Forfeited))
            .then_expect_error(TenantError::HoldsOpen { count: 1 });
    }

    #[test]
    fn close_sends_no_low_balance_notice() {
        TenantTest::with(())
            .given(with(
                funded(),
                [TenantEvent::LowBalanceThresholdSet {
                    threshold_pico: Some(credits("0.5")),
                    at: at(2),
                }],
            ))
            .when(close_cmd(RemainingCredit::Forfeited))
            .then_expect_events(vec![closed_out(RemainingCredit::Forfeited, "1"), closed()]);
    }

    #[test]
    fn a_closed_tenant_cannot_be_changed_or_reopened() {
        let history = with(
            funded(),
            [closed_out(RemainingCredit::Forfeited, "1"), closed()],
        );
        let refused = [
            suspend_cmd("r"),
            TenantCommand::ResumeTenant { at: at(6) },
            close_cmd(RemainingCredit::Refunded),
            grant_cmd("1", "g2", None, 6),
            TenantCommand::IssueApiKey {
                key_id: KeyId(Uuid::from_u128(9)),
                name: "k".into(),
                role: Role::Admin,
                key_hash: KeyHash::of_secret("s9"),
                scopes: Scopes::default(),
                project: None,
                at: at(6),
            },
            pay_cmd("evt1", None, "1"),
            TenantCommand::SetLowBalanceThreshold {
                threshold: Some(credits("1")),
                at: at(6),
            },
        ];
        for command in refused {
            TenantTest::with(())
                .given(history.clone())
                .when(command)
                .then_expect_error(TenantError::AlreadyClosed);
        }
        TenantTest::with(())
            .given(history.clone())
            .when(reserve_cmd(1, 36, None, 0))
            .then_expect_error(TenantError::TenantClosed);
        // Revoking a key of a closed tenant is still allowed: it only takes away.
        TenantTest::with(())
            .given(history)
            .when(TenantCommand::RevokeApiKey {
                key_id: key_id(),
                at: at(6),
            })
            .then_expect_events(vec![TenantEvent::ApiKeyRevoked {
                key_id: key_id(),
                at: at(6),
            }]);
    }

    #[test]
    fn a_suspended_tenants_keys_still_authorize_reads_and_calls() {
        let tenant = state(with(funded(), [issue(Role::Member, 1), suspended("r")]));
        // The refusal of a call is the hold's, so that it names the reason.
        assert_eq!(
            authorize(&tenant, 1, Permission::CallModels),
            Ok(Role::Member)
        );
    }

    #[test]
    fn a_closed_tenant_serves_only_its_auditors_reads() {
        let tenant = state(with(
            funded(),
            [
                issue(Role::Member, 1),
                issue(Role::Admin, 2),
                issue(Role::Billing, 3),
                issue(Role::Auditor, 4),
                closed_out(RemainingCredit::Forfeited, "1"),
                closed(),
            ],
        ));
        for (n, permission) in [
            (1, Permission::CallModels),
            (2, Permission::CallModels),
            (2, Permission::ReadBilling),
            (3, Permission::ReadBilling),
            (4, Permission::CallModels),
        ] {
            assert_eq!(
                authorize(&tenant, n, permission),
                Err(TenantError::TenantClosed),
                "key {n} {permission:?}"
            );
        }
        assert_eq!(
            authorize(&tenant, 4, Permission::ReadBilling),
            Ok(Role::Auditor)
        );
        assert_eq!(
            authorize(&tenant, 4, Permission::ReadAudit),
            Ok(Role::Auditor)
        );
        // A wrong secret learns nothing about the tenant's state.
        assert_eq!(
            tenant.authorize(
                KeyId(Uuid::from_u128(54)),
                &KeyHash::of_secret("wrong"),
                Permission::ReadBilling,
                at(10)
            ),
            Err(TenantError::Unauthenticated)
        );
    }

    #[test]
    fn status_survives_a_snapshot_and_old_snapshots_load_active() {
        let tenant = state(with(funded(), [suspended("r")]));
        let snapshot: Tenant =
            serde_json::from_str(&serde_json::to_string(&tenant).unwrap()).unwrap();
        assert_eq!(
            snapshot.status,
            TenantStatus::Suspended { reason: "r".into() }
        );
        let mut old = serde_json::to_value(state(funded())).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("status");
        fields.remove("closed_out");
        let loaded: Tenant = serde_json::from_value(old).unwrap();
        assert_eq!(loaded.status, TenantStatus::Active);
        assert_eq!(loaded.closed_out, Credits::ZERO);
    }

    #[test]
    fn the_new_events_are_version_1_0() {
        use cqrs_es::DomainEvent;
        for event in [
            suspended("r"),
            TenantEvent::TenantResumed { at: at(4) },
            closed_out(RemainingCredit::Refunded, "1"),
            closed(),
        ] {
            assert_eq!(event.event_version(), "1.0", "{}", event.event_type());
        }
    }
}

// ---- Key scopes: decided with the wallet hold -------------------------------

fn scopes_set(scopes: Scopes) -> TenantEvent {
    TenantEvent::ApiKeyScopesSet {
        key_id: key_id(),
        scopes,
        at: at(1),
    }
}

/// `reserve_cmd(n, 36, None, 0)` at `when`: holds `expected_hold(36, None)`.
fn reserve_at(n: u128, when: DateTime<Utc>) -> TenantCommand {
    let mut command = reserve_cmd(n, 36, None, 0);
    if let TenantCommand::ReserveCredits { at, .. } = &mut command {
        *at = when;
    }
    command
}

/// Decides and applies `command`, as the tenant actor does.
fn run(tenant: &mut Tenant, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
    let events = tenant.decide(command)?;
    for e in events.clone() {
        tenant.apply_event(e);
    }
    Ok(events)
}

fn scoped_tenant(scopes: Scopes) -> Tenant {
    state_after(vec![
        created(),
        granted("10", "g"),
        key_issued(),
        scopes_set(scopes),
    ])
}

fn budget_of(holds: i128, period: BudgetPeriod) -> Budget {
    Budget {
        amount: Credits::from_pico(expected_hold(36, None).pico() * holds),
        period,
        timezone: None,
    }
}

#[test]
fn a_key_is_issued_with_its_scopes_in_one_decision() {
    let scopes = Scopes {
        rpm: Some(5),
        ..Scopes::default()
    };
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::IssueApiKey {
            key_id: key_id(),
            name: "app".into(),
            role: Role::Member,
            key_hash: KeyHash::of_secret("secret"),
            scopes: scopes.clone(),
            project: None,
            at: at(1),
        })
        .then_expect_events(vec![key_issued(), scopes_set(scopes)]);
}

#[test]
fn scopes_are_validated_and_an_unchanged_scope_writes_nothing() {
    let scopes = Scopes {
        max_concurrent: Some(2),
        ..Scopes::default()
    };
    let mut tenant = scoped_tenant(scopes.clone());
    let same = TenantCommand::SetKeyScopes {
        key_id: key_id(),
        patch: ScopesPatch::replacing_with(scopes),
        at: at(5),
    };
    assert_eq!(run(&mut tenant, same), Ok(vec![]));
    let bad = TenantCommand::SetKeyScopes {
        key_id: key_id(),
        patch: ScopesPatch::replacing_with(Scopes {
            tpm: Some(0),
            ..Scopes::default()
        }),
        at: at(5),
    };
    assert_eq!(
        run(&mut tenant, bad),
        Err(TenantError::InvalidScopes(ScopeError::ZeroLimit("tpm")))
    );
    let unknown = TenantCommand::SetKeyScopes {
        key_id: KeyId(Uuid::from_u128(99)),
        patch: ScopesPatch::replacing_with(Scopes::default()),
        at: at(5),
    };
    assert!(matches!(
        run(&mut tenant, unknown),
        Err(TenantError::UnknownKey(_))
    ));
}

#[test]
fn a_key_budget_admits_exactly_the_holds_it_covers() {
    let mut tenant = scoped_tenant(Scopes {
        budget: Some(budget_of(3, BudgetPeriod::Total)),
        ..Scopes::default()
    });
    for n in 1..=3 {
        run(&mut tenant, reserve_at(n, at(10))).unwrap();
    }
    let refused = run(&mut tenant, reserve_at(4, at(10)));
    assert!(
        matches!(
            refused,
            Err(TenantError::KeyBudgetExhausted {
                period: "total",
                ..
            })
        ),
        "{refused:?}"
    );
    // A released hold frees its room; a settled one keeps what it cost.
    let release = TenantCommand::ReleaseHold {
        request_id: request(1),
        reason: "upstream failed".into(),
        at: at(11),
    };
    run(&mut tenant, release).unwrap();
    run(&mut tenant, reserve_at(4, at(12))).unwrap();
    run(&mut tenant, settle_cmd(2, 10, 10)).unwrap();
    let refused = run(&mut tenant, reserve_at(5, at(13)));
    let expected_remaining = expected_hold(36, None) - credits("0.00003");
    assert!(
        matches!(&refused, Err(TenantError::KeyBudgetExhausted { remaining, .. }) if *remaining == expected_remaining.to_decimal_string()),
        "{refused:?}"
    );
    // The wallet still has plenty: the key's scope refused, not the tenant's credit.
    assert!(tenant.available() > expected_hold(36, None));
}

#[test]
fn a_month_budget_starts_from_zero_at_the_month_boundary() {
    let mut tenant = scoped_tenant(Scopes {
        budget: Some(budget_of(1, BudgetPeriod::Month)),
        ..Scopes::default()
    });
    let end_of_january = "2026-01-31T23:59:00Z".parse().unwrap();
    run(&mut tenant, reserve_at(1, end_of_january)).unwrap();
    let settle = match settle_cmd(1, 1_000_000, 100) {
        TenantCommand::SettleUsage {
            request_id,
            attempt,
            usage,
            upstream_latency_ms,
            ..
        } => TenantCommand::SettleUsage {
            request_id,
            attempt,
            usage,
            upstream_latency_ms,
            at: end_of_january,
        },
        other => other,
    };
    run(&mut tenant, settle).unwrap();
    let still_january = "2026-01-31T23:59:30Z".parse().unwrap();
    assert!(matches!(
        run(&mut tenant, reserve_at(2, still_january)),
        Err(TenantError::KeyBudgetExhausted {
            period: "month",
            ..
        })
    ));
    let february = "2026-02-01T00:00:00Z".parse().unwrap();
    run(&mut tenant, reserve_at(2, february)).unwrap();
}

#[test]
fn a_model_outside_the_keys_scope_is_refused_before_any_hold() {
    let mut tenant = scoped_tenant(Scopes {
        models: Some(vec!["anthropic/*".into()]),
        ..Scopes::default()
    });
    let before = tenant.balance();
    let refused = run(&mut tenant, reserve_at(1, at(10)));
    assert!(
        matches!(&refused, Err(TenantError::ModelNotAllowed { model, .. }) if model == "openai/gpt-4o-mini"),
        "{refused:?}"
    );
    assert_eq!(tenant.balance(), before);
}

#[test]
fn concurrency_is_the_keys_open_holds() {
    let mut tenant = scoped_tenant(Scopes {
        max_concurrent: Some(2),
        ..Scopes::default()
    });
    run(&mut tenant, reserve_at(1, at(10))).unwrap();
    run(&mut tenant, reserve_at(2, at(10))).unwrap();
    assert!(matches!(
        run(&mut tenant, reserve_at(3, at(10))),
        Err(TenantError::RateLimited {
            limit: "max_concurrent",
            value: 2,
            ..
        })
    ));
    run(&mut tenant, settle_cmd(1, 10, 10)).unwrap();
    run(&mut tenant, reserve_at(3, at(10))).unwrap();
}

#[test]
fn rpm_counts_the_calendar_minute_and_says_when_to_retry() {
    let mut tenant = scoped_tenant(Scopes {
        rpm: Some(2),
        ..Scopes::default()
    });
    // at(0) is a minute boundary.
    run(&mut tenant, reserve_at(1, at(60))).unwrap();
    run(&mut tenant, reserve_at(2, at(70))).unwrap();
    assert_eq!(
        run(&mut tenant, reserve_at(3, at(75))),
        Err(TenantError::RateLimited {
            scope: "API key",
            limit: "rpm",
            value: 2,
            retry_after_secs: 45,
        })
    );
    run(&mut tenant, reserve_at(3, at(120))).unwrap();
}

#[test]
fn tpm_refuses_once_the_minutes_settled_tokens_reach_it() {
    let mut tenant = scoped_tenant(Scopes {
        tpm: Some(20),
        ..Scopes::default()
    });
    run(&mut tenant, reserve_at(1, at(0))).unwrap();
    run(&mut tenant, settle_cmd(1, 10, 10)).unwrap(); // at(3): 20 tokens
    assert!(matches!(
        run(&mut tenant, reserve_at(2, at(30))),
        Err(TenantError::RateLimited { limit: "tpm", .. })
    ));
    run(&mut tenant, reserve_at(2, at(60))).unwrap();
}

#[test]
fn an_expired_key_is_refused_everywhere() {
    let hash = KeyHash::of_secret("secret");
    let mut tenant = scoped_tenant(Scopes {
        expires_at: Some(at(100)),
        ..Scopes::default()
    });
    assert!(tenant
        .authorize(key_id(), &hash, Permission::CallModels, at(99))
        .is_ok());
    assert!(matches!(
        tenant.authorize(key_id(), &hash, Permission::CallModels, at(100)),
        Err(TenantError::KeyExpired(_))
    ));
    assert!(matches!(
        run(&mut tenant, reserve_at(1, at(100))),
        Err(TenantError::KeyExpired(_))
    ));
    // Lifting the expiry lets the key back in.
    let lifted = TenantCommand::SetKeyScopes {
        key_id: key_id(),
        patch: ScopesPatch::replacing_with(Scopes::default()),
        at: at(101),
    };
    run(&mut tenant, lifted).unwrap();
    run(&mut tenant, reserve_at(1, at(102))).unwrap();
}

#[test]
fn changes_to_different_scope_fields_both_stay() {
    let mut tenant = scoped_tenant(Scopes::default());
    let rpm = TenantCommand::SetKeyScopes {
        key_id: key_id(),
        patch: ScopesPatch {
            rpm: Some(Some(10)),
            ..ScopesPatch::default()
        },
        at: at(5),
    };
    let models = TenantCommand::SetKeyScopes {
        key_id: key_id(),
        patch: ScopesPatch {
            models: Some(Some(vec!["openai/*".into()])),
            ..ScopesPatch::default()
        },
        at: at(5),
    };
    run(&mut tenant, rpm).unwrap();
    run(&mut tenant, models).unwrap();
    let scopes = &tenant.keys[&key_id()].scopes;
    assert_eq!(scopes.rpm, Some(10));
    assert_eq!(scopes.models, Some(vec!["openai/*".to_string()]));
    let lift_rpm = TenantCommand::SetKeyScopes {
        key_id: key_id(),
        patch: ScopesPatch {
            rpm: Some(None),
            ..ScopesPatch::default()
        },
        at: at(6),
    };
    run(&mut tenant, lift_rpm).unwrap();
    let scopes = &tenant.keys[&key_id()].scopes;
    assert_eq!(scopes.rpm, None);
    assert_eq!(scopes.models, Some(vec!["openai/*".to_string()]));
}

// ---- Projects: their scopes bind every key in them -------------------------

fn project_id() -> ProjectId {
    ProjectId(Uuid::from_u128(7))
}

fn second_key() -> KeyId {
    KeyId(Uuid::from_u128(3))
}

/// Reserves for `key` what `reserve_at` reserves for the default key.
fn reserve_for(key: KeyId, n: u128, when: DateTime<Utc>) -> TenantCommand {
    let mut command = reserve_at(n, when);
    if let TenantCommand::ReserveCredits { key_id, .. } = &mut command {
        *key_id = key;
    }
    command
}

/// Two keys of one project whose budget covers `holds` holds.
fn project_tenant(holds: i128) -> Tenant {
    let mut tenant = state_after(vec![created(), granted("10", "g"), key_issued()]);
    let create = TenantCommand::CreateProject {
        project_id: project_id(),
        name: "team".into(),
        scopes: Scopes {
            budget: Some(budget_of(holds, BudgetPeriod::Total)),
            ..Scopes::default()
        },
        at: at(1),
    };
    run(&mut tenant, create).unwrap();
    let second = TenantCommand::IssueApiKey {
        key_id: second_key(),
        name: "second".into(),
        role: Role::Member,
        key_hash: KeyHash::of_secret("second"),
        scopes: Scopes::default(),
        project: Some(project_id()),
        at: at(1),
    };
    assert_eq!(
        run(&mut tenant, second).unwrap().len(),
        2,
        "issued, then in the project"
    );
    let first_joins = TenantCommand::SetKeyProject {
        key_id: key_id(),
        project_id: Some(project_id()),
        at: at(1),
    };
    run(&mut tenant, first_joins).unwrap();
    tenant
}

#[test]
fn a_project_budget_is_shared_by_its_keys() {
    let mut tenant = project_tenant(3);
    run(&mut tenant, reserve_for(key_id(), 1, at(10))).unwrap();
    run(&mut tenant, reserve_for(second_key(), 2, at(10))).unwrap();
    run(&mut tenant, reserve_for(key_id(), 3, at(10))).unwrap();
    let refused = run(&mut tenant, reserve_for(second_key(), 4, at(10)));
    assert!(
        matches!(
            refused,
            Err(TenantError::ProjectBudgetExhausted {
                period: "total",
                ..
            })
        ),
        "{refused:?}"
    );
    // Out of the project, the key is bound by its own scopes only.
    let leaves = TenantCommand::SetKeyProject {
        key_id: second_key(),
        project_id: None,
        at: at(11),
    };
    run(&mut tenant, leaves).unwrap();
    run(&mut tenant, reserve_for(second_key(), 4, at(12))).unwrap();
}

#[test]
fn a_project_with_live_keys_cannot_be_deleted_and_a_deleted_one_takes_none() {
    let mut tenant = project_tenant(3);
    let delete = TenantCommand::DeleteProject {
        project_id: project_id(),
        at: at(5),
    };
    assert_eq!(
        run(&mut tenant, delete.clone()),
        Err(TenantError::ProjectHasKeys { count: 2 })
    );
    for key in [key_id(), second_key()] {
        let leaves = TenantCommand::SetKeyProject {
            key_id: key,
            project_id: None,
            at: at(5),
        };
        run(&mut tenant, leaves).unwrap();
    }
    run(&mut tenant, delete).unwrap();
    let joins = TenantCommand::SetKeyProject {
        key_id: key_id(),
        project_id: Some(project_id()),
        at: at(6),
    };
    assert_eq!(
        run(&mut tenant, joins),
        Err(TenantError::UnknownProject(project_id()))
    );
}

#[test]
fn a_project_model_scope_refuses_naming_the_project() {
    let mut tenant = project_tenant(100);
    let narrow = TenantCommand::SetProjectScopes {
        project_id: project_id(),
        patch: ScopesPatch {
            models: Some(Some(vec!["anthropic/*".into()])),
            ..ScopesPatch::default()
        },
        at: at(5),
    };
    run(&mut tenant, narrow).unwrap();
    assert!(matches!(
        run(&mut tenant, reserve_for(key_id(), 1, at(10))),
        Err(TenantError::ModelNotAllowed {
            scope: "project",
            ..
        })
    ));
}

#[test]
fn a_reservation_names_its_project_end_user_and_every_limit_checked() {
    let mut tenant = project_tenant(3);
    let mut command = reserve_for(key_id(), 1, at(10));
    if let TenantCommand::ReserveCredits { end_user, .. } = &mut command {
        *end_user = Some("user-42@example.com".into());
    }
    let events = run(&mut tenant, command).unwrap();
    let Some(TenantEvent::CreditsReserved {
        project,
        end_user,
        scopes_checked,
        ..
    }) = events.last()
    else {
        panic!("no reservation: {events:?}");
    };
    assert_eq!(*project, Some(project_id()));
    assert_eq!(end_user.as_deref(), Some("user-42@example.com"));
    assert_eq!(scopes_checked, &["project.budget", "tenant.credit"]);
}

#[test]
fn a_hold_counts_against_the_project_it_was_placed_in_even_if_its_key_moves() {
    let mut tenant = project_tenant(3);
    run(&mut tenant, reserve_for(key_id(), 1, at(10))).unwrap();
    let leaves = TenantCommand::SetKeyProject {
        key_id: key_id(),
        project_id: None,
        at: at(11),
    };
    run(&mut tenant, leaves).unwrap();
    // Still held against the project: two more fit its budget of three, not three.
    run(&mut tenant, reserve_for(second_key(), 2, at(12))).unwrap();
    run(&mut tenant, reserve_for(second_key(), 3, at(12))).unwrap();
    assert!(matches!(
        run(&mut tenant, reserve_for(second_key(), 4, at(12))),
        Err(TenantError::ProjectBudgetExhausted { .. })
    ));
    // Settled, it is spent in the project's period: the project's spend is exact.
    let mut settle = settle_cmd(1, 10, 10);
    if let TenantCommand::SettleUsage { at: when, .. } = &mut settle {
        *when = at(13);
    }
    let charged = run(&mut tenant, settle).unwrap();
    let Some(TenantEvent::UsageSettled { cost_pico, .. }) = charged.last() else {
        panic!("not settled: {charged:?}");
    };
    let project = &tenant.projects[&project_id()];
    let budget = project.scopes.budget.as_ref().unwrap();
    assert_eq!(project.usage.spent_in_period(budget, at(14)), *cost_pico);
    assert_eq!(
        tenant.keys[&key_id()].usage.spent_in_period(budget, at(14)),
        Credits::ZERO,
        "the key has no budget of its own to count in"
    );
}

#[test]
fn an_end_user_longer_than_its_bound_is_refused() {
    let mut tenant = project_tenant(3);
    let mut command = reserve_for(key_id(), 1, at(10));
    if let TenantCommand::ReserveCredits { end_user, .. } = &mut command {
        *end_user = Some("u".repeat(crate::tenant::END_USER_MAX_CHARS + 1));
    }
    assert_eq!(
        run(&mut tenant, command),
        Err(TenantError::InvalidLabel {
            field: "end_user",
            max_chars: crate::tenant::END_USER_MAX_CHARS
        })
    );
}
