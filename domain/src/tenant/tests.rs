//! One given/when/then test per rule of the tenant aggregate.

use super::*;
use crate::ids::{InstanceId, KeyId, ModelId, RequestId, TenantId};
use crate::money::{Credits, Rate};
use crate::pricing::{Capability, Ingress, ModelPrice, Rates, Usage};
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
        price: price(),
        price_version: 3,
        prompt_bytes,
        max_tokens,
        images: 0,
        instance_id: instance(instance_n),
        expires_at: at(600),
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
        hold_pico: p.hold_for(prompt_bytes, max_tokens, 0),
        prompt_bytes,
        max_output_tokens: max_tokens.unwrap_or(p.max_output_tokens),
        images_requested: 0,
        instance_id: instance(0),
        expires_at: at(600),
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
        tenant.authorize(key_id(), &hash, Permission::CallModels),
        Ok(Role::Member)
    );
    assert_eq!(
        tenant.authorize(key_id(), &hash, Permission::ReadBilling),
        Err(TenantError::PermissionDenied { role: "member" })
    );
    assert_eq!(
        tenant.authorize(
            key_id(),
            &KeyHash::of_secret("wrong"),
            Permission::CallModels
        ),
        Err(TenantError::Unauthenticated)
    );
    tenant.apply_event(TenantEvent::ApiKeyRevoked {
        key_id: key_id(),
        at: at(2),
    });
    assert_eq!(
        tenant.authorize(key_id(), &hash, Permission::CallModels),
        Err(TenantError::Unauthenticated)
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
        });
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
        cost_pico: cost,
        hold_pico: hold,
        overshoot_pico: (cost - hold).max(Credits::ZERO),
        upstream_latency_ms: 12,
        at: at(3),
    }
}

#[test]
fn settle_charges_actual_usage_and_releases_the_rest() {
    let hold = price().hold_for(36, None, 0);
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
    let hold = price().hold_for(36, Some(10), 0);
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
    let hold = price().hold_for(36, None, 0);
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
    let hold = price().hold_for(36, None, 0);
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
    let hold = price().hold_for(36, None, 0);
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
    let hold = price().hold_for(36, None, 0);
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
    let hold = price().hold_for(36, None, 0);
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
