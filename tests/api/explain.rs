//! "Explain this charge": `GET /v1/billing/requests/{id}` and the operator's
//! `GET /admin/v1/tenants/{tenant}/requests/{id}`.

use crate::billing::{mock_answer_cost, GPT_MOCK};
use crate::helpers::*;
use crate::mock_openai::{CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::Credits;
use reqwest::Method;
use serde_json::{json, Value};

async fn explain_with_key(app: &TestApp, key: &str, request_id: &str) -> reqwest::Response {
    app.get(key, &format!("/v1/billing/requests/{request_id}"))
        .await
}

async fn explain_ok(app: &TestApp, key: &str, request_id: &str) -> Value {
    let response = explain_with_key(app, key, request_id).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn assert_not_found(response: reqwest::Response) {
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

/// The invariant every explanation keeps: its arithmetic adds up to its cost.
fn assert_arithmetic_adds_up(body: &Value) {
    let sum = body["arithmetic"]
        .as_array()
        .unwrap()
        .iter()
        .fold(Credits::ZERO, |sum, line| sum + credits_of(&line["amount"]));
    assert_eq!(sum, credits_of(&body["cost"]), "{body}");
}

fn request_id_of(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

async fn a_settled_chat_is_explained(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let before = app.balance(&tenant).await;

    let response = app.chat(&member, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = request_id_of(&response);
    let after = app.balance(&tenant).await;

    let body = explain_ok(&app, &billing, &request_id).await;
    assert_eq!(body["request_id"], request_id.as_str());
    assert_eq!(body["status"], "settled");
    assert_eq!(body["model"], "mock/gpt-mock");
    assert_eq!(body["charged_model"], "mock/gpt-mock");
    assert_eq!(body["provider"], "mock");
    assert_eq!(body["capability"], "chat");
    assert_eq!(body["ingress"], "openai");
    assert!(body["price_version"].is_i64());
    assert!(body.get("released_reason").is_none());
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": PROMPT_TOKENS - CACHED_TOKENS,
            "cache_read_tokens": CACHED_TOKENS,
            "cache_write_tokens": 0,
            "output_tokens": COMPLETION_TOKENS,
            "reasoning_tokens": 0,
            "images": 0,
            "estimated": false,
        })
    );
    assert_eq!(
        body["rates"],
        json!({
            "input_per_mtok": "1",
            "cache_read_per_mtok": "1",
            "cache_write_per_mtok": "1",
            "output_per_mtok": "2",
            "per_image": "0",
        })
    );
    let lines: Vec<(String, u64, String, String)> = body["arithmetic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["quantity"].as_u64().unwrap(),
                l["rate_per_mtok"].as_str().unwrap().to_string(),
                l["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let line = |k: &str, q: u64, r: &str, a: &str| (k.to_string(), q, r.to_string(), a.to_string());
    assert_eq!(
        lines,
        vec![
            line("input", 8, "1", "0.000008"),
            line("cache_read", 4, "1", "0.000004"),
            line("cache_write", 0, "1", "0"),
            line("output", 30, "2", "0.00006"),
        ]
    );
    assert_arithmetic_adds_up(&body);
    let cost = mock_answer_cost();
    assert_eq!(body["cost"], cost.to_decimal_string());
    assert_eq!(
        credits_of(&after["spent"]) - credits_of(&before["spent"]),
        cost,
        "the explained cost is the balance change"
    );
    assert_eq!(body["overshoot"], "0");
    let hold = credits_of(&body["hold"]["amount"]);
    assert!(hold >= cost, "{body}");
    let attempts = body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{body}");
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["provider"], "mock");
    assert_eq!(attempts[0]["outcome"], "succeeded");
    assert_eq!(attempts[0]["cost"], cost.to_decimal_string());
    assert!(attempts[0]["credential_id"].is_string());
    assert_eq!(attempts[0]["usage"], body["usage"]);

    // The other reading roles and the operator see the same explanation.
    for role in ["admin", "auditor"] {
        let key = app.issue_key(&tenant, role).await;
        assert_eq!(explain_ok(&app, &key, &request_id).await, body, "{role}");
    }
    let operator = app
        .admin_json(
            Method::GET,
            &format!("/admin/v1/tenants/{tenant}/requests/{request_id}"),
            None,
        )
        .await;
    assert_eq!(operator, body);
}
on_both_stores!(a_settled_chat_is_explained, a_settled_chat_is_explained);

async fn a_fallback_lists_every_attempt_and_charges_the_final_rates(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_fallback_to_backup().await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;

    let response = app.chat(&member, &chat_body("fail-503", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = request_id_of(&response);

    let body = explain_ok(&app, &billing, &request_id).await;
    assert_eq!(body["status"], "settled");
    assert_eq!(body["model"], "mock/fail-503", "the model asked for");
    assert_eq!(body["charged_model"], "backup/gpt-mock");
    assert_eq!(body["provider"], "backup");
    let attempts = body["attempts"].as_array().unwrap();
    let recorded = tenant_events(&app, &tenant)
        .await
        .iter()
        .filter(|e| matches!(e.event, TenantEvent::UpstreamAttempted { .. }))
        .count();
    assert_eq!(attempts.len(), recorded, "{body}");
    assert!(attempts.len() >= 2, "{body}");
    let (failed, last) = attempts.split_at(attempts.len() - 1);
    for (i, attempt) in failed.iter().enumerate() {
        assert_eq!(attempt["number"], i as u64 + 1);
        assert_eq!(attempt["provider"], "mock");
        assert_eq!(attempt["model"], "mock/fail-503");
        assert_eq!(attempt["outcome"], "failed");
        assert_eq!(attempt["status"], 503);
        assert_eq!(attempt["cost"], "0", "failed attempts cost nothing");
        assert!(attempt["usage"].is_null());
        assert!(attempt["reason"].is_string());
    }
    assert_eq!(last[0]["provider"], "backup");
    assert_eq!(last[0]["outcome"], "succeeded");
    assert!(last[0].get("status").is_none());

    // The backup's rates, not the first candidate's.
    assert_eq!(body["rates"]["input_per_mtok"], "3");
    assert_eq!(body["rates"]["cache_read_per_mtok"], "3");
    assert_eq!(body["rates"]["output_per_mtok"], "4");
    let expected =
        Credits::from_pico((PROMPT_TOKENS * 3_000_000 + COMPLETION_TOKENS * 4_000_000) as i128);
    assert_eq!(body["cost"], expected.to_decimal_string());
    assert_eq!(last[0]["cost"], body["cost"]);
    assert_arithmetic_adds_up(&body);
    // The hold covered the dearest candidate.
    assert_eq!(body["hold"]["rates"]["input_per_mtok"], "3");
    assert_eq!(
        app.balance(&tenant).await["spent"],
        expected.to_decimal_string()
    );
}
on_both_stores!(
    a_fallback_lists_every_attempt_and_charges_the_final_rates,
    a_fallback_lists_every_attempt_and_charges_the_final_rates
);

async fn a_released_request_shows_its_reason_and_costs_nothing(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("fail-400", "1", "2", Some(1000))])
        .await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let auditor = app.issue_key(&tenant, "auditor").await;

    let response = app.chat(&member, &chat_body("fail-400", false)).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    // An error answer after admission carries its x-request-id: the release's.
    let request_id = tenant_events(&app, &tenant)
        .await
        .iter()
        .find_map(|e| match &e.event {
            TenantEvent::HoldReleased { request_id, .. } => Some(request_id.to_string()),
            _ => None,
        })
        .expect("the hold was released");
    assert_eq!(request_id_of(&response), request_id);

    let body = explain_ok(&app, &auditor, &request_id).await;
    assert_eq!(body["status"], "released");
    assert!(
        body["released_reason"]
            .as_str()
            .unwrap()
            .starts_with("upstream failed"),
        "{body}"
    );
    assert_eq!(body["cost"], "0");
    assert_eq!(body["overshoot"], "0");
    assert_eq!(body["arithmetic"], json!([]));
    assert!(body["usage"].is_null() && body["rates"].is_null());
    assert_arithmetic_adds_up(&body);
    assert!(credits_of(&body["hold"]["amount"]) > Credits::ZERO);
    let attempts = body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a 400 is not retried: {body}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["status"], 400);
    assert_eq!(attempts[0]["cost"], "0");
    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(
    a_released_request_shows_its_reason_and_costs_nothing,
    a_released_request_shows_its_reason_and_costs_nothing
);

async fn other_tenants_unknown_and_malformed_ids_are_not_found(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let response = app.chat(&member, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = request_id_of(&response);

    // A member key may call models but not read billing: 403, whatever the id.
    let response = explain_with_key(&app, &member, &request_id).await;
    assert_eq!(response.status(), 403);

    // Another tenant's admin: 404, exactly as for an id that never existed.
    let (other, other_admin) = app.tenant_with_key("1", "admin").await;
    assert_not_found(explain_with_key(&app, &other_admin, &request_id).await).await;
    let operator_other = app
        .admin(
            Method::GET,
            &format!("/admin/v1/tenants/{other}/requests/{request_id}"),
            None,
        )
        .await;
    assert_not_found(operator_other).await;

    let admin = app.issue_key(&tenant, "admin").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_not_found(explain_with_key(&app, &admin, &unknown).await).await;
    for garbage in ["not-a-uuid", "123", "%20"] {
        assert_not_found(explain_with_key(&app, &admin, garbage).await).await;
        let operator = app
            .admin(
                Method::GET,
                &format!("/admin/v1/tenants/{tenant}/requests/{garbage}"),
                None,
            )
            .await;
        assert_not_found(operator).await;
    }
    // A malformed or unknown tenant on the operator path is 404 too.
    for tenant_path in ["nope".to_string(), uuid::Uuid::new_v4().to_string()] {
        let response = app
            .admin(
                Method::GET,
                &format!("/admin/v1/tenants/{tenant_path}/requests/{request_id}"),
                None,
            )
            .await;
        assert_not_found(response).await;
    }
    // Without a key: 401; the admin key of the tenant still reads it.
    let response = app
        .client
        .get(format!("{}/v1/billing/requests/{request_id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        explain_ok(&app, &admin, &request_id).await["status"],
        "settled"
    );
}
on_both_stores!(
    other_tenants_unknown_and_malformed_ids_are_not_found,
    other_tenants_unknown_and_malformed_ids_are_not_found
);

/// The explanation is found by reading the stream from its newest event back, a
/// page at a time: a request far behind newer events is still found whole, and
/// an unknown id reads back to the stream's start and is not found.
async fn an_old_request_is_found_behind_many_newer_events(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, admin) = app.tenant_with_key("1", "admin").await;
    let response = app.chat(&admin, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = request_id_of(&response);
    let expected = explain_ok(&app, &admin, &request_id).await;

    // More than two pages of newer events, appended straight to the store.
    let tenant_id: domain::TenantId = tenant.parse().unwrap();
    let store = app.store();
    let last = store
        .raw_tenant_events(tenant_id, 0, 100_000)
        .await
        .unwrap()
        .last()
        .unwrap()
        .sequence;
    let meta = plain_metadata(tenant_id);
    let newer: Vec<_> = (1..=2_500)
        .map(|i| (pico_grant(last + i), meta.clone()))
        .collect();
    store
        .append(
            tenant_id,
            last + 1,
            &newer,
            aigne_hub::store::Durability::Durable,
        )
        .await
        .unwrap();

    assert_eq!(explain_ok(&app, &admin, &request_id).await, expected);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_not_found(explain_with_key(&app, &admin, &unknown).await).await;
}
on_both_stores!(
    an_old_request_is_found_behind_many_newer_events,
    an_old_request_is_found_behind_many_newer_events
);
