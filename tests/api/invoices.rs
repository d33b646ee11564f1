//! Invoices (`GET /v1/billing/invoices[/{id}]`): the `invoices` projection read
//! through the API, against the ledger; late usage written straight into the log.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::mock_openai::{CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::on_both_stores;
use aigne_hub::store::{chain, Durability, EventMetadata};
use chrono::{DateTime, TimeDelta, Utc};
use domain::pricing::{Capability, Ingress, Rates, Usage};
use domain::tenant::TenantEvent;
use domain::{Credits, InstanceId, KeyId, ModelId, Rate, RequestId, TenantId};
use projections::invoices::{self, round_half_even, Settings};
use serde_json::Value;

/// A model whose charges are not whole micro-credits: 1.2345 credits per million
/// prompt tokens, 2.5 per million output tokens.
const ODD_MOCK: (&str, &str, &str, Option<u32>) = ("odd-mock", "1.2345", "2.5", Some(1000));

fn pico(amount: &Value) -> i128 {
    Credits::parse(amount.as_str().unwrap()).unwrap().pico()
}

/// Waits until the current draft has `lines` lines (on PostgreSQL the log is
/// readable once every older transaction in the cluster has ended).
async fn draft_with(app: &TestApp, key: &str, lines: usize) -> Value {
    let what = format!("the draft shows {lines} lines");
    wait_for(WAIT_DEADLINE, &what, || async {
        app.projections_caught_up().await;
        let body = app.get_json(key, "/v1/billing/invoices").await;
        (body["data"][0]["lines"].as_array().map(Vec::len) == Some(lines)).then_some(body)
    })
    .await
}

/// `(model, kind, quantity, exact pico)` of each line the mock answers make.
fn expected_lines(gpt_calls: u64) -> Vec<(&'static str, &'static str, u64, i128)> {
    let input = PROMPT_TOKENS - CACHED_TOKENS;
    vec![
        (
            "mock/gpt-mock",
            "input",
            input * gpt_calls,
            (input * gpt_calls) as i128 * 1_000_000,
        ),
        (
            "mock/gpt-mock",
            "cache_read",
            CACHED_TOKENS * gpt_calls,
            (CACHED_TOKENS * gpt_calls) as i128 * 1_000_000,
        ),
        (
            "mock/gpt-mock",
            "output",
            COMPLETION_TOKENS * gpt_calls,
            (COMPLETION_TOKENS * gpt_calls) as i128 * 2_000_000,
        ),
        ("mock/odd-mock", "input", input, input as i128 * 1_234_500),
        (
            "mock/odd-mock",
            "cache_read",
            CACHED_TOKENS,
            CACHED_TOKENS as i128 * 1_234_500,
        ),
        (
            "mock/odd-mock",
            "output",
            COMPLETION_TOKENS,
            COMPLETION_TOKENS as i128 * 2_500_000,
        ),
    ]
}

async fn the_draft_shows_the_calls_rounded_per_line(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK, ODD_MOCK]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let auditor = app.issue_key(&tenant, "auditor").await;
    let admin = app.issue_key(&tenant, "admin").await;
    for model in ["gpt-mock", "gpt-mock", "odd-mock"] {
        let r = app.chat(&member, &chat_body(model, false)).await;
        assert_eq!(r.status(), 200);
    }

    let body = draft_with(&app, &billing, 6).await;
    let invoices = body["data"].as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{body}");
    let invoice = &invoices[0];
    let start = Settings::default().period_start(app.hub.now());
    let id = format!("inv_{tenant}_{}", start.format("%Y%m%d"));
    assert_eq!(invoice["id"], id.as_str());
    assert_eq!(invoice["status"], "draft");
    assert_eq!(
        invoice["period_start"],
        format!("{}T00:00:00+00:00", start.format("%Y-%m-%d")).as_str()
    );
    let lines = invoice["lines"].as_array().unwrap();
    let got: Vec<(String, String, u64, i128)> = lines
        .iter()
        .map(|l| {
            (
                l["model"].as_str().unwrap().to_string(),
                l["kind"].as_str().unwrap().to_string(),
                l["quantity"].as_u64().unwrap(),
                pico(&l["exact_amount"]),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64, i128)> = expected_lines(2)
        .into_iter()
        .map(|(m, k, q, a)| (m.to_string(), k.to_string(), q, a))
        .collect();
    assert_eq!(got, expected);
    assert!(lines.iter().all(|l| l.get("adjustment_for").is_none()));
    assert_eq!(lines[0]["unit_price"], "1");
    assert_eq!(lines[3]["unit_price"], "1.2345");
    assert_eq!(lines[3]["description"], "mock/odd-mock chat input tokens");
    // 8 × 1.2345 = 9.876 micro-credits → 10; 4 × 1.2345 = 4.938 → 5.
    assert_eq!(lines[3]["amount"], "0.00001");
    assert_eq!(lines[4]["amount"], "0.000005");
    // Each line rounded half-even, the total the sum of the rounded lines.
    let mut total = 0;
    for l in lines {
        let rounded = round_half_even(Credits::from_pico(pico(&l["exact_amount"])));
        assert_eq!(pico(&l["amount"]), rounded.pico(), "{l}");
        total += rounded.pico();
    }
    assert_eq!(pico(&invoice["total"]), total);
    // The exact lines add up to what the ledger spent.
    let spent = app.balance(&tenant).await["spent"].clone();
    let exact: i128 = lines.iter().map(|l| pico(&l["exact_amount"])).sum();
    assert_eq!(exact, pico(&spent));
    assert_eq!(invoice["credits_applied"][0]["kind"], "grant");
    assert_eq!(invoice["credits_applied"][0]["amount"], "1");

    // By id, for every reading role and the operator: the same invoice.
    for key in [&billing, &auditor, &admin] {
        let one = app
            .get_json(key, &format!("/v1/billing/invoices/{id}"))
            .await;
        assert_eq!(one, *invoice);
    }
    let operator = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant}/invoices/{id}"),
            None,
        )
        .await;
    assert_eq!(operator, *invoice);
    let operator_list = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant}/invoices"),
            None,
        )
        .await;
    assert_eq!(operator_list, body);

    // CSV: a header, the lines, the total.
    let response = app
        .get_csv(&billing, &format!("/v1/billing/invoices/{id}"))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = response.text().await.unwrap();
    let rows: Vec<&str> = text.split("\r\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(rows.len(), 1 + 6 + 1, "{text}");
    assert_eq!(
        rows[0],
        "description,model,capability,kind,quantity,unit_price,amount,adjustment_for"
    );
    assert_eq!(
        rows[4],
        "mock/odd-mock chat input tokens,mock/odd-mock,chat,input,8,1.2345,0.00001,"
    );
    assert_eq!(
        rows[7],
        format!("total,,,,,,{},", invoice["total"].as_str().unwrap())
    );

    // Members cannot read invoices; another tenant cannot read this one.
    assert_eq!(app.get(&member, "/v1/billing/invoices").await.status(), 403);
    assert_eq!(
        app.get(&member, &format!("/v1/billing/invoices/{id}"))
            .await
            .status(),
        403
    );
    let (other, other_admin) = app.tenant_with_key("1", "admin").await;
    assert_eq!(
        app.get(&other_admin, &format!("/v1/billing/invoices/{id}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&other_admin, "/v1/billing/invoices/inv_nonsense")
            .await
            .status(),
        404
    );
    let mine = app.get_json(&other_admin, "/v1/billing/invoices").await;
    assert!(mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["id"] != id.as_str()));
    let foreign = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{other}/invoices/{id}"),
            None,
        )
        .await;
    assert_eq!(foreign.status(), 404);

    // Replay rebuilds the invoices projection byte for byte.
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");
    let replayed = &report.projections[2];
    assert!(replayed.comparison.projection.starts_with("invoices"));
    assert!(replayed.comparison.live_rows >= 2, "{replayed:?}");
    assert_eq!(
        replayed.comparison.live_hash,
        replayed.comparison.replayed_hash
    );
}
on_both_stores!(
    the_draft_shows_the_calls_rounded_per_line,
    the_draft_shows_the_calls_rounded_per_line
);

fn meta(tenant: TenantId, at: DateTime<Utc>) -> EventMetadata {
    EventMetadata {
        recorded_at: at,
        tenant_id: tenant,
        request_id: None,
        instance_id: InstanceId::new_random(),
        actor: None,
        prev_hash: None,
        hash: None,
    }
}

fn rates() -> Rates {
    Rates::flat(
        Rate::from_pico_per_token(1_000_000),
        Rate::from_pico_per_token(2_000_000),
    )
}

fn reserved(request: RequestId, key: KeyId, at: DateTime<Utc>) -> TenantEvent {
    TenantEvent::CreditsReserved {
        request_id: request,
        key_id: key,
        model: ModelId::parse("mock/gpt-mock").unwrap(),
        capability: Capability::Chat,
        ingress: Ingress::Openai,
        app: None,
        price_version: 1,
        rates: rates(),
        hold_pico: Credits::from_pico(100_000_000),
        prompt_bytes: 10,
        max_output_tokens: 10,
        images_requested: 0,
        instance_id: InstanceId::new_random(),
        expires_at: at + TimeDelta::minutes(15),
        project: None,
        end_user: None,
        scopes_checked: Vec::new(),
        at,
    }
}

fn settled(request: RequestId, key: KeyId, output: u64, at: DateTime<Utc>) -> TenantEvent {
    let usage = Usage {
        input_tokens: 5,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: output,
        reasoning_tokens: 0,
        estimated: false,
        images: 0,
    };
    TenantEvent::UsageSettled {
        request_id: request,
        key_id: key,
        provider: "mock".into(),
        model: ModelId::parse("mock/gpt-mock").unwrap(),
        usage,
        price_version: 1,
        rates: rates(),
        terms: domain::ChargeTerms::sold_directly(rates()),
        cost_pico: rates().cost_of(&usage),
        provider_cost_pico: rates().cost_of(&usage),
        hold_pico: Credits::from_pico(100_000_000),
        overshoot_pico: Credits::ZERO,
        upstream_latency_ms: 5,
        at,
    }
}

async fn operator_get(app: &TestApp, path: &str) -> Value {
    app.projections_caught_up().await;
    app.admin_json(reqwest::Method::GET, path, None).await
}

async fn late_usage_is_an_adjustment_in_the_current_draft(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let store = app.store();
    let tenant = TenantId::new_random();
    let key = KeyId::new_random();
    let now = app.hub.now();
    let old = now - TimeDelta::days(70);
    let settings = Settings::default();
    let old_start = settings.period_start(old);
    let old_id = invoices::invoice_id(tenant, old_start);
    let current_id = invoices::invoice_id(tenant, settings.period_start(now));
    let (on_time, late) = (RequestId::new_random(), RequestId::new_random());
    let mut events: Vec<(TenantEvent, EventMetadata)> = [
        TenantEvent::TenantCreated {
            tenant_id: tenant,
            name: "late".into(),
            at: old,
        },
        TenantEvent::CreditsGranted {
            amount_pico: Credits::from_whole_credits(1),
            idempotency_key: "initial".into(),
            reason: "initial".into(),
            expires_at: None,
            payment: None,
            at: old,
        },
        reserved(on_time, key, old + TimeDelta::seconds(1)),
        settled(on_time, key, 10, old + TimeDelta::seconds(2)),
        reserved(late, key, old + TimeDelta::seconds(3)),
        // Settles now, long after its period's end + grace. (Written in one
        // batch with its reservation so that no hold sweep releases it first.)
        settled(late, key, 20, now),
    ]
    .into_iter()
    .map(|e| {
        let at = e.at();
        (e, meta(tenant, at))
    })
    .collect();
    chain(tenant, 1, None, &mut events).unwrap();
    store
        .append(tenant, 1, &events, Durability::Durable)
        .await
        .unwrap();

    // What the old period's invoice was before the late settlement.
    let logged: Vec<projections::LoggedEvent<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, (event, m))| projections::LoggedEvent {
            tenant_id: tenant,
            sequence: i + 1,
            event,
            recorded_at: m.recorded_at,
        })
        .collect();
    let mut rows = std::collections::BTreeMap::new();
    invoices::fold(&settings, &mut rows, logged[..5].to_vec());
    let before = serde_json::to_value(
        invoices::view(tenant, &rows[&invoices::period_key(tenant, old_start)], now).unwrap(),
    )
    .unwrap();
    assert_eq!(before["status"], "finalized", "{before}");
    assert_eq!(before["lines"].as_array().unwrap().len(), 2, "{before}");
    assert_eq!(before["total"], "0.000025", "5 × 1 + 10 × 2 micro-credits");

    let (after, draft) = wait_for(WAIT_DEADLINE, "the current draft is listed", || async {
        let after = operator_get(
            &app,
            &format!("/admin/v1/tenants/{tenant}/invoices/{old_id}"),
        )
        .await;
        let list = operator_get(&app, &format!("/admin/v1/tenants/{tenant}/invoices")).await;
        let draft = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == current_id.as_str())
            .cloned();
        draft.map(|draft| (after, draft))
    })
    .await;
    assert_eq!(after, before, "the finalized invoice is unchanged");
    assert_eq!(draft["status"], "draft", "{draft}");
    let lines = draft["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{draft}");
    for line in lines {
        assert_eq!(line["adjustment_for"], old_id.as_str(), "{line}");
        assert!(line["description"].as_str().unwrap().contains("late usage"));
    }
    assert_eq!(lines[0]["kind"], "input");
    assert_eq!(lines[0]["quantity"], 5);
    assert_eq!(lines[1]["kind"], "output");
    assert_eq!(lines[1]["quantity"], 20);
    assert_eq!(draft["total"], "0.000045");
    let listed = operator_get(&app, &format!("/admin/v1/tenants/{tenant}/invoices")).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![current_id.as_str(), old_id.as_str()],
        "newest first"
    );

    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");
}
on_both_stores!(
    late_usage_is_an_adjustment_in_the_current_draft,
    late_usage_is_an_adjustment_in_the_current_draft
);
