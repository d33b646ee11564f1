//! Bad input and failing upstreams: clear JSON errors with the right status, and
//! no credit lost or charged.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use reqwest::Method;
use serde_json::{json, Value};

async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["type"].is_string() && body["error"]["code"].is_string(),
        "{body}"
    );
    body
}

async fn bad_keys_get_401(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let url = format!("{}/v1/chat/completions", app.address);
    let body = chat_body("gpt-mock", false);
    error_of(app.client.post(&url).json(&body).send().await.unwrap(), 401).await;
    error_of(app.chat("sk-not-ours", &body).await, 401).await;
    let wrong_secret = format!("{}x", &key[..key.len() - 1]);
    error_of(app.chat(&wrong_secret, &body).await, 401).await;
    // A well-formed key of a tenant that does not exist.
    let ghost = key.replacen(
        &tenant.replace('-', ""),
        &uuid::Uuid::new_v4().simple().to_string(),
        1,
    );
    error_of(app.chat(&ghost, &body).await, 401).await;
    // An unknown model does not reveal anything to a bad key.
    error_of(
        app.chat("sk-not-ours", &chat_body("nope", false)).await,
        401,
    )
    .await;

    let key_id = app
        .admin_json(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "tmp", "role": "member"})),
        )
        .await;
    let (key_id, revocable) = (
        key_id["key_id"].as_str().unwrap().to_string(),
        key_id["key"].as_str().unwrap().to_string(),
    );
    assert_eq!(app.chat(&revocable, &body).await.status(), 200);
    app.admin_json(
        Method::DELETE,
        &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
        None,
    )
    .await;
    let revoked = error_of(app.chat(&revocable, &body).await, 401).await;
    assert_eq!(revoked["error"]["code"], "invalid_api_key");
    assert_eq!(
        app.chat(&key, &body).await.status(),
        200,
        "other keys keep working"
    );
}
on_both_stores!(bad_keys_get_401, bad_keys_get_401);

async fn bad_requests_get_clear_errors(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let url = format!("{}/v1/chat/completions", app.address);
    let raw = |body: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let e = error_of(raw("{not json").await.unwrap(), 400).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{e}"
    );
    let e = error_of(raw("").await.unwrap(), 400).await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("empty"),
        "{e}"
    );
    let e = error_of(
        app.chat(&key, &json!({"model": "mock/gpt-mock"})).await,
        400,
    )
    .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("messages"),
        "{e}"
    );
    let e = error_of(app.chat(&key, &json!({"model": "mock/gpt-mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"})).await, 400).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{e}"
    );
    let e = error_of(
        app.chat(&key, &chat_body("unknown-model", false)).await,
        404,
    )
    .await;
    assert_eq!(e["error"]["code"], "model_not_found");

    let huge = json!({"model": "mock/gpt-mock", "messages": [{"role": "user", "content": "x".repeat(300 * 1024)}]});
    let e = error_of(app.chat(&key, &huge).await, 413).await;
    assert_eq!(e["error"]["code"], "payload_too_large");

    error_of(
        app.client
            .get(format!("{}/v1/nothing-here", app.address))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    error_of(
        app.client.get(&url).bearer_auth(&key).send().await.unwrap(),
        405,
    )
    .await;

    // Nothing was charged or left held by any of these.
    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(bad_requests_get_clear_errors, bad_requests_get_clear_errors);

async fn operator_api_validates_input(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let no_token = app
        .client
        .post(format!("{}/admin/v1/tenants", app.address))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    error_of(no_token, 401).await;
    let wrong = app
        .client
        .post(format!("{}/admin/v1/tenants", app.address))
        .bearer_auth("nope")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    error_of(wrong, 401).await;
    error_of(
        app.admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"nome": "x"})),
        )
        .await,
        400,
    )
    .await;
    error_of(
        app.admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": "x", "initial_credits": "-1"})),
        )
        .await,
        400,
    )
    .await;
    let tenant = app.create_tenant("0").await;
    let e = error_of(
        app.admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "k", "role": "root"})),
        )
        .await,
        400,
    )
    .await;
    assert!(e["error"]["message"].as_str().unwrap().contains("role"));
    let e = error_of(
        app.admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/credits"),
            Some(json!({"amount": "0.0000000000001", "idempotency_key": "k", "reason": "r"})),
        )
        .await,
        400,
    )
    .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decimal places"),
        "{e}"
    );
    error_of(
        app.admin(
            Method::GET,
            &format!("/admin/v1/tenants/{}/balance", uuid::Uuid::new_v4()),
            None,
        )
        .await,
        404,
    )
    .await;
    error_of(
        app.admin(Method::GET, "/admin/v1/tenants/not-a-uuid/balance", None)
            .await,
        404,
    )
    .await;
    let e = error_of(
        app.admin(
            Method::PUT,
            "/admin/v1/prices/mock/m",
            Some(json!({"input_per_mtok": "0.0000001", "output_per_mtok": "1"})),
        )
        .await,
        400,
    )
    .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input_per_mtok"),
        "{e}"
    );
    error_of(
        app.admin(
            Method::PUT,
            "/admin/v1/prices/no-provider-part",
            Some(json!({"input_per_mtok": "1", "output_per_mtok": "1"})),
        )
        .await,
        400,
    )
    .await;
    let provider = json!({"name": "p", "kind": "martian", "base_url": "http://127.0.0.1:1/v1", "api_key": "k"});
    error_of(
        app.admin(Method::POST, "/admin/v1/providers", Some(provider))
            .await,
        400,
    )
    .await;
    let provider = json!({"name": "p", "kind": "openai", "base_url": "not a url", "api_key": "k"});
    error_of(
        app.admin(Method::POST, "/admin/v1/providers", Some(provider))
            .await,
        400,
    )
    .await;
    let provider =
        json!({"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "k"});
    assert_eq!(
        app.admin(Method::POST, "/admin/v1/providers", Some(provider.clone()))
            .await
            .status(),
        201
    );
    error_of(
        app.admin(Method::POST, "/admin/v1/providers", Some(provider))
            .await,
        409,
    )
    .await;
}
on_both_stores!(operator_api_validates_input, operator_api_validates_input);

async fn insufficient_credit_gets_402(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (_, key) = app.tenant_with_key("0", "member").await;
    let e = error_of(app.chat(&key, &chat_body("gpt-mock", false)).await, 402).await;
    assert_eq!(e["error"]["code"], "insufficient_credits");
    assert!(
        app.mock.requests().is_empty(),
        "the upstream is never called without credit"
    );
}
on_both_stores!(insufficient_credit_gets_402, insufficient_credit_gets_402);

async fn upstream_failures_cost_nothing(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[
        GPT_MOCK,
        ("fail-503", "1", "2", None),
        ("fail-400", "1", "2", None),
        ("hang", "1", "2", None),
    ])
    .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let e = error_of(app.chat(&key, &chat_body("fail-503", false)).await, 502).await;
    assert_eq!(e["error"]["code"], "upstream_error");
    let e = error_of(app.chat(&key, &chat_body("fail-503", true)).await, 502).await;
    assert_eq!(e["error"]["code"], "upstream_error");
    let e = error_of(app.chat(&key, &chat_body("fail-400", false)).await, 400).await;
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upstream answered 400 (invalid_request_error)")
            && !message.contains("temperature"),
        "the hub's words with the provider's status and code, not its text: {e}"
    );
    let e = error_of(app.chat(&key, &chat_body("hang", false)).await, 504).await;
    assert_eq!(e["error"]["code"], "upstream_timeout");

    // A provider whose key the upstream rejects: 502, without the key.
    app.add_provider(json!({"name": "badkey", "kind": "openai", "base_url": app.mock.base_url, "api_key": "sk-wrong-key-0000"}))
    .await;
    app.set_price(
        "badkey/gpt-mock",
        json!({"input_per_mtok": "1", "output_per_mtok": "1"}),
    )
    .await;
    let e = error_of(
        app.chat(
            &key,
            &chat_body("gpt-mock", false).tap_model("badkey/gpt-mock"),
        )
        .await,
        502,
    )
    .await;
    assert_eq!(e["error"]["code"], "provider_credential_rejected");
    assert!(!e.to_string().contains("sk-wrong-key-0000") && !e.to_string().contains("sk-wro"));

    let balance = app.balance(&tenant).await;
    assert_eq!(
        (
            balance["spent"].as_str(),
            balance["held"].as_str(),
            balance["available"].as_str()
        ),
        (Some("0"), Some("0"), Some("1"))
    );
    let events = tenant_events(&app, &tenant).await;
    let released: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::HoldReleased { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 5, "{released:?}");
    assert!(
        released.iter().all(|r| r.starts_with("upstream failed")),
        "{released:?}"
    );
}
on_both_stores!(
    upstream_failures_cost_nothing,
    upstream_failures_cost_nothing
);

trait TapModel {
    fn tap_model(self, model: &str) -> Self;
}
impl TapModel for Value {
    fn tap_model(mut self, model: &str) -> Self {
        self["model"] = json!(model);
        self
    }
}

fn settled_usages(
    events: &[aigne_hub::store::StoredEvent],
) -> Vec<(domain::Usage, domain::Credits)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::UsageSettled {
                usage,
                overshoot_pico,
                ..
            } => Some((*usage, *overshoot_pico)),
            _ => None,
        })
        .collect()
}

async fn client_leaving_mid_stream_is_billed_for_what_was_generated(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK, ("slow-stream", "1", "2", None)])
        .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let mut response = app.chat(&key, &chat_body("slow-stream", true)).await;
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while received < 3 {
        response
            .chunk()
            .await
            .unwrap()
            .expect("some chunks before leaving");
        received += 1;
    }
    drop(response);
    // The hub notices on its next write, stops reading the upstream, and settles.
    let balance = app.wait_until_nothing_held(&tenant).await;
    assert_eq!(balance["held"], "0");
    let usages = settled_usages(&tenant_events(&app, &tenant).await);
    assert_eq!(usages.len(), 1);
    let (usage, _) = usages[0];
    assert!(
        usage.estimated,
        "no upstream usage arrived: the charge is an estimate, flagged"
    );
    assert!(
        usage.output_tokens > 0 && usage.output_tokens < 200,
        "only part of the 200-chunk answer: {usage:?}"
    );
    assert_ne!(balance["spent"], "0");
}
on_both_stores!(
    client_leaving_mid_stream_is_billed_for_what_was_generated,
    client_leaving_mid_stream_is_billed_for_what_was_generated
);

async fn upstream_dying_mid_stream_ends_with_an_error_event(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("die-mid-stream", "1", "2", None)])
        .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let text = app
        .chat(&key, &chat_body("die-mid-stream", true))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("Hel"), "{text}");
    assert!(
        !text.contains("[DONE]"),
        "a broken stream must not look complete: {text}"
    );
    let last: Value = serde_json::from_str(
        text.trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    let usages = settled_usages(&tenant_events(&app, &tenant).await);
    assert_eq!(usages.len(), 1, "text reached the client, so it is billed");
    assert!(usages[0].0.estimated);
}
on_both_stores!(
    upstream_dying_mid_stream_ends_with_an_error_event,
    upstream_dying_mid_stream_ends_with_an_error_event
);

async fn missing_or_excess_usage_is_recorded_honestly(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("no-usage", "1", "2", None), ("overshoot", "1", "2", None)])
        .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    assert_eq!(
        app.chat(&key, &chat_body("no-usage", false)).await.status(),
        200
    );
    let mut body = chat_body("overshoot", false);
    body["max_tokens"] = json!(10);
    assert_eq!(app.chat(&key, &body).await.status(), 200);
    let usages = settled_usages(&tenant_events(&app, &tenant).await);
    assert_eq!(usages.len(), 2);
    assert!(
        usages[0].0.estimated && usages[0].0.output_tokens == 3,
        "\"Hello there\" is 11 bytes: 3 tokens estimated: {:?}",
        usages[0]
    );
    assert_eq!(
        usages[1].0.output_tokens, 5_000,
        "the upstream ignored max_tokens: actual usage is charged"
    );
    assert!(
        usages[1].1.pico() > 0,
        "and the overshoot past the hold is recorded"
    );
}
on_both_stores!(
    missing_or_excess_usage_is_recorded_honestly,
    missing_or_excess_usage_is_recorded_honestly
);
