//! Key scopes (models, budget per calendar period, rpm, tpm, max_concurrent,
//! expires_at), decided in the tenant's actor with the wallet hold: exact under
//! concurrency, across processes, and across period boundaries on the hub's
//! clock; refused with their own codes, at no cost.

use crate::helpers::*;
use crate::on_both_stores;
use aigne_hub::startup::Application;
use chrono::{Datelike, TimeDelta, TimeZone, Timelike, Utc};
use reqwest::Method;
use serde_json::{json, Value};

/// Input is free and the mock reports exactly `max_tokens` output tokens, so
/// each request costs exactly its hold: 100 tokens at 1 credit/Mtok = 0.0001.
const EXACT_HOLD: (&str, &str, &str, Option<u32>) = ("exact-hold", "0", "1", Some(100));
const ONE_HOLD: &str = "0.0001";

fn exact_body() -> Value {
    let mut body = chat_body("exact-hold", false);
    body["max_tokens"] = json!(100);
    body
}

/// Issues a member key of `tenant` with `scopes`; answers (key id, key, body).
async fn scoped_key(app: &TestApp, tenant: &str, scopes: Value) -> (String, String, Value) {
    let mut body = json!({"name": "scoped", "role": "member"});
    body.as_object_mut()
        .unwrap()
        .extend(scopes.as_object().unwrap().clone());
    let issued = app
        .admin_json(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(body),
        )
        .await;
    let text = |f: &str| issued[f].as_str().unwrap().to_string();
    (text("key_id"), text("key"), issued)
}

async fn show(app: &TestApp, tenant: &str, key_id: &str) -> Value {
    app.admin_json(
        Method::GET,
        &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
        None,
    )
    .await
}

async fn patch(app: &TestApp, tenant: &str, key_id: &str, body: Value) -> reqwest::Response {
    app.admin(
        Method::PATCH,
        &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
        Some(body),
    )
    .await
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

async fn a_key_budget_admits_exactly_the_holds_it_covers(kind: StoreKind) {
    const REQUESTS: usize = 64;
    const AFFORDABLE: usize = 20;
    let app = spawn_app(kind).await;
    app.setup_provider(&[EXACT_HOLD]).await;
    // The tenant could pay for far more: only the key's budget limits.
    let tenant = app.create_tenant("10").await;
    let (key_id, key, issued) = scoped_key(
        &app,
        &tenant,
        json!({"budget": {"amount": "0.002", "period": "total"}}),
    )
    .await;
    assert_eq!(issued["budget"]["remaining"], "0.002", "{issued}");

    let body = exact_body();
    let calls = (0..REQUESTS).map(|_| app.chat(&key, &body));
    let answers = futures_util::future::join_all(calls).await;
    let mut codes = Vec::new();
    for answer in answers {
        codes.push(error_code(answer).await);
    }
    let admitted = codes.iter().filter(|(s, _)| *s == 200).count();
    let refused = codes
        .iter()
        .filter(|c| **c == (402, "key_budget_exhausted".to_string()))
        .count();
    assert_eq!(
        (admitted, refused),
        (AFFORDABLE, REQUESTS - AFFORDABLE),
        "{codes:?}"
    );

    let view = show(&app, &tenant, &key_id).await;
    assert_eq!(view["budget"]["spent"], "0.002", "{view}");
    assert_eq!(view["budget"]["held"], "0", "{view}");
    assert_eq!(view["budget"]["remaining"], "0", "{view}");
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], "0.002");
    assert_eq!(balance["available"], "9.998");
    replay_equals_live(&app).await;
}
on_both_stores!(
    a_key_budget_admits_exactly_the_holds_it_covers,
    a_key_budget_admits_exactly_the_holds_it_covers
);

async fn a_month_budget_resets_at_the_boundary_and_a_total_one_never(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[EXACT_HOLD]).await;
    let tenant = app.create_tenant("10").await;
    let one = json!({"amount": ONE_HOLD, "period": "month"});
    let (monthly_id, monthly, _) = scoped_key(&app, &tenant, json!({"budget": one})).await;
    let total = json!({"amount": ONE_HOLD, "period": "total"});
    let (_, for_life, _) = scoped_key(&app, &tenant, json!({"budget": total})).await;
    for key in [&monthly, &for_life] {
        assert_eq!(app.chat(key, &exact_body()).await.status(), 200);
        let (status, code) = error_code(app.chat(key, &exact_body()).await).await;
        assert_eq!((status, code.as_str()), (402, "key_budget_exhausted"));
    }

    // The hub's clock moves to the first minute of next month (UTC).
    let now = app.hub.now();
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let next_month = Utc.with_ymd_and_hms(year, month, 1, 0, 1, 0).unwrap();
    app.hub.clock().advance(next_month - now);

    assert_eq!(app.chat(&monthly, &exact_body()).await.status(), 200);
    let (status, code) = error_code(app.chat(&for_life, &exact_body()).await).await;
    assert_eq!((status, code.as_str()), (402, "key_budget_exhausted"));
    let view = show(&app, &tenant, &monthly_id).await;
    assert_eq!(view["budget"]["spent"], ONE_HOLD, "{view}");
    assert_eq!(
        view["budget"]["period_start"],
        Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .unwrap()
            .to_rfc3339(),
        "{view}"
    );
    replay_equals_live(&app).await;
}
on_both_stores!(
    a_month_budget_resets_at_the_boundary_and_a_total_one_never,
    a_month_budget_resets_at_the_boundary_and_a_total_one_never
);

async fn rpm_refuses_with_retry_after_until_the_next_minute(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[EXACT_HOLD]).await;
    let tenant = app.create_tenant("10").await;
    let (key_id, key, _) = scoped_key(&app, &tenant, json!({"rpm": 3})).await;
    // Start at the top of a minute, so the three calls share it.
    let now = app.hub.now();
    let next_minute = now + TimeDelta::seconds(60 - i64::from(now.second()));
    app.hub.clock().advance(next_minute - now);
    for _ in 0..3 {
        assert_eq!(app.chat(&key, &exact_body()).await.status(), 200);
    }
    let refused = app.chat(&key, &exact_body()).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let balance_before = app.balance(&tenant).await;
    let (status, code) = error_code(refused).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    let view = show(&app, &tenant, &key_id).await;
    assert_eq!(view["rpm"], json!({"limit": 3, "used": 3}), "{view}");

    app.hub.clock().advance(TimeDelta::seconds(60));
    assert_eq!(app.chat(&key, &exact_body()).await.status(), 200);
    // The refusal cost nothing.
    let balance_after = app.balance(&tenant).await;
    assert_eq!(
        credits_of(&balance_after["spent"]) - credits_of(&balance_before["spent"]),
        credits_of(&json!(ONE_HOLD))
    );
}
on_both_stores!(
    rpm_refuses_with_retry_after_until_the_next_minute,
    rpm_refuses_with_retry_after_until_the_next_minute
);

async fn max_concurrent_holds_under_64_parallel_streams(kind: StoreKind) {
    const STREAMS: usize = 64;
    const MAX: usize = 4;
    let app = spawn_app(kind).await;
    app.setup_provider(&[("slow-stream", "1", "2", Some(1000))])
        .await;
    let tenant = app.create_tenant("100").await;
    let (key_id, key, _) = scoped_key(&app, &tenant, json!({"max_concurrent": MAX})).await;
    let body = chat_body("slow-stream", true);
    let calls = (0..STREAMS).map(|_| async {
        let response = app.chat(&key, &body).await;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        // Read the whole stream: the hold stays open until it ends.
        let text = response.text().await.unwrap();
        (status, retry_after.is_some(), text)
    });
    let answers = futures_util::future::join_all(calls).await;
    let streamed = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let limited = answers
        .iter()
        .filter(|(s, retry, text)| *s == 429 && *retry && text.contains("max_concurrent"))
        .count();
    assert_eq!((streamed, limited), (MAX, STREAMS - MAX));
    let view = show(&app, &tenant, &key_id).await;
    assert_eq!(view["in_flight"], 0, "{view}");
    assert_eq!(app.wait_until_nothing_held(&tenant).await["held"], "0");
}
on_both_stores!(
    max_concurrent_holds_under_64_parallel_streams,
    max_concurrent_holds_under_64_parallel_streams
);

async fn a_model_outside_the_scope_is_403_at_no_cost(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[EXACT_HOLD, ("gpt-mock", "1", "2", None)])
        .await;
    let tenant = app.create_tenant("10").await;
    let (_, key, _) = scoped_key(&app, &tenant, json!({"models": ["mock/exact-*"]})).await;
    assert_eq!(app.chat(&key, &exact_body()).await.status(), 200);
    let before = app.balance(&tenant).await;
    let (status, code) = error_code(app.chat(&key, &chat_body("gpt-mock", false)).await).await;
    assert_eq!((status, code.as_str()), (403, "model_not_allowed"));
    let after = app.balance(&tenant).await;
    assert_eq!(before, after);
}
on_both_stores!(
    a_model_outside_the_scope_is_403_at_no_cost,
    a_model_outside_the_scope_is_403_at_no_cost
);

async fn an_expired_key_is_401_key_expired_until_its_expiry_moves(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[EXACT_HOLD]).await;
    let tenant = app.create_tenant("10").await;
    let expiry = (app.hub.now() + TimeDelta::hours(1)).to_rfc3339();
    let (key_id, key, _) = scoped_key(&app, &tenant, json!({"expires_at": expiry})).await;
    assert_eq!(app.chat(&key, &exact_body()).await.status(), 200);
    app.hub.clock().advance(TimeDelta::hours(2));
    for response in [
        app.chat(&key, &exact_body()).await,
        app.get(&key, "/v1/models").await,
    ] {
        let (status, code) = error_code(response).await;
        assert_eq!((status, code.as_str()), (401, "key_expired"));
    }
    assert_eq!(show(&app, &tenant, &key_id).await["expired"], true);
    // `null` lifts the expiry.
    let lifted = patch(&app, &tenant, &key_id, json!({"expires_at": null})).await;
    assert_eq!(lifted.status(), 200);
    assert_eq!(app.chat(&key, &exact_body()).await.status(), 200);
}
on_both_stores!(
    an_expired_key_is_401_key_expired_until_its_expiry_moves,
    an_expired_key_is_401_key_expired_until_its_expiry_moves
);

async fn patches_change_only_what_they_name_and_bad_ones_are_400(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("10").await;
    let (key_id, _, _) = scoped_key(&app, &tenant, json!({"rpm": 10})).await;
    let changed = patch(&app, &tenant, &key_id, json!({"tpm": 5000})).await;
    assert_eq!(changed.status(), 200);
    let view: Value = changed.json().await.unwrap();
    assert_eq!(view["rpm"]["limit"], 10, "{view}");
    assert_eq!(view["tpm"]["limit"], 5000, "{view}");
    for bad in [
        json!({}),
        json!({"rpm": 0}),
        json!({"rpm": "fast"}),
        json!({"colour": "red"}),
        json!({"budget": {"amount": "5", "period": "fortnight"}}),
        json!({"budget": {"amount": "5", "period": "day", "timezone": "Mars/Olympus"}}),
        json!({"models": ["gpt-4o"]}),
    ] {
        let (status, code) = error_code(patch(&app, &tenant, &key_id, bad.clone()).await).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{bad}");
    }
    // Another tenant's key id is unknown here.
    let other = app.create_tenant("1").await;
    let (other_key, _, _) = scoped_key(&app, &other, json!({})).await;
    let (status, _) = error_code(patch(&app, &tenant, &other_key, json!({"rpm": 1})).await).await;
    assert_eq!(status, 404);
    assert_eq!(
        app.admin(
            Method::GET,
            &format!("/admin/v1/tenants/{tenant}/keys/{other_key}"),
            None
        )
        .await
        .status(),
        404
    );
    // The change is an event naming who made it.
    let events = tenant_events(&app, &tenant).await;
    let set = events
        .iter()
        .filter(|e| matches!(e.event, domain::tenant::TenantEvent::ApiKeyScopesSet { .. }))
        .count();
    assert_eq!(set, 2, "issued with rpm, then tpm added");
    replay_equals_live(&app).await;
}
on_both_stores!(
    patches_change_only_what_they_name_and_bad_ones_are_400,
    patches_change_only_what_they_name_and_bad_ones_are_400
);

/// Two processes on one PostgreSQL database: the key's budget is decided in
/// the tenant's one stream, so it holds exactly as within one process.
#[actix_web::test]
async fn a_key_budget_holds_across_two_hubs_on_one_database() {
    const REQUESTS: usize = 64;
    const AFFORDABLE: usize = 20;
    let first = spawn_app(StoreKind::Postgres).await;
    first.setup_provider(&[EXACT_HOLD]).await;
    let tenant = first.create_tenant("10").await;
    let (_, key, _) = scoped_key(
        &first,
        &tenant,
        json!({"budget": {"amount": "0.002", "period": "day", "timezone": "Asia/Shanghai"}}),
    )
    .await;
    let second = Application::build(first.settings.clone())
        .await
        .expect("second hub starts");
    let second_address = format!("http://127.0.0.1:{}", second.port());
    let second_handle = second.server_handle();
    let second_hub = second.hub();
    actix_web::rt::spawn(second.run_until_stopped());

    let body = exact_body();
    let calls = (0..REQUESTS).map(|i| {
        let address = if i % 2 == 0 {
            first.address.clone()
        } else {
            second_address.clone()
        };
        let (client, key, body) = (first.client.clone(), key.clone(), body.clone());
        async move {
            client
                .post(format!("{address}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses: Vec<u16> = futures_util::future::join_all(calls).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(
        (admitted, refused),
        (AFFORDABLE, REQUESTS - AFFORDABLE),
        "{statuses:?}"
    );
    assert_eq!(first.balance(&tenant).await["spent"], "0.002");
    second_handle.stop(false).await;
    second_hub.shutdown_tenants();
}
