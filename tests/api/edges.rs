//! Rough edges a tenant or a local user could catch on: file permissions of the
//! data dir, store failures shown as database internals, prices for providers
//! that do not exist.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::on_both_stores;
use reqwest::Method;
use serde_json::{json, Value};

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
async fn the_data_dir_and_its_files_are_private(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (_, key) = app.tenant_with_key("1", "member").await;
    assert_eq!(
        app.chat(&key, &chat_body("gpt-mock", false)).await.status(),
        200
    );

    let dir = &app.settings.data_dir;
    assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
        names.push(path.file_name().unwrap().to_string_lossy().to_string());
    }
    assert!(names.contains(&"master.key".to_string()), "{names:?}");
    if kind == StoreKind::Sqlite {
        for file in [
            "aigne-hub.sqlite",
            "aigne-hub.sqlite-wal",
            "aigne-hub.sqlite-shm",
        ] {
            assert!(names.contains(&file.to_string()), "{file}: {names:?}");
        }
    }
}
#[cfg(unix)]
on_both_stores!(
    the_data_dir_and_its_files_are_private,
    the_data_dir_and_its_files_are_private
);

/// Takes the events table away under the running hub, as a broken database would.
async fn break_the_event_log(app: &TestApp) {
    use sqlx::Connection;
    let sql = "ALTER TABLE events RENAME TO events_gone";
    match &app.settings.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        None => {
            let path = app.settings.data_dir.join("aigne-hub.sqlite");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

async fn a_store_failure_says_the_ledger_is_unavailable(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("1").await;
    break_the_event_log(&app).await;

    let response = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/credits"),
            Some(json!({"amount": "1", "idempotency_key": "k1", "reason": "r"})),
        )
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(
        body["error"]["message"],
        "service temporarily unavailable: the ledger is unavailable, retry",
        "no database internals: {body}"
    );
}
on_both_stores!(
    a_store_failure_says_the_ledger_is_unavailable,
    a_store_failure_says_the_ledger_is_unavailable
);

async fn a_price_for_an_unknown_provider_is_refused(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let response = app
        .admin(
            Method::PUT,
            "/admin/v1/prices/nosuch/gpt-x",
            Some(json!({"input_per_mtok": "1", "output_per_mtok": "2"})),
        )
        .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider \"nosuch\" does not exist"),
        "{body}"
    );
    let prices = app.admin_json(Method::GET, "/admin/v1/prices", None).await;
    let models: Vec<&Value> = prices["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["model"])
        .collect();
    assert_eq!(models, [&json!("mock/gpt-mock")], "{prices}");
}
on_both_stores!(
    a_price_for_an_unknown_provider_is_refused,
    a_price_for_an_unknown_provider_is_refused
);

/// A provider nobody answers for: every call to it fails to connect (a 502).
async fn add_dead_provider(app: &TestApp) {
    app.add_provider(json!({"name": "dead", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-dead-0000000000"}))
    .await;
    for model in ["chat-x", "embed-x"] {
        app.set_price(
            &format!("dead/{model}"),
            json!({"input_per_mtok": "1", "output_per_mtok": "1", "max_output_tokens": 100}),
        )
        .await;
    }
}

async fn every_answer_after_admission_carries_an_explainable_request_id(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[
        GPT_MOCK,
        ("fail-400", "1", "2", Some(1000)),
        ("conf-status-429", "1", "2", Some(1000)),
    ])
    .await;
    add_dead_provider(&app).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let auditor = app.issue_key(&tenant, "auditor").await;
    let post = |path: &'static str, body: Value| {
        app.client
            .post(format!("{}{path}", app.address))
            .bearer_auth(&member)
            .json(&body)
            .send()
    };
    let answers = [
        (post("/v1/chat/completions", chat_body("fail-400", false)).await.unwrap(), 400),
        (post("/v1/chat/completions", chat_body("conf-status-429", false)).await.unwrap(), 429),
        (post("/v1/chat/completions", json!({"model": "dead/chat-x", "messages": [{"role": "user", "content": "hi"}]})).await.unwrap(), 502),
        (post("/v1/embeddings", json!({"model": "dead/embed-x", "input": "hi"})).await.unwrap(), 502),
        (post("/v1/messages", json!({"model": "dead/chat-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})).await.unwrap(), 502),
    ];
    for (response, status) in answers {
        assert_eq!(response.status(), status);
        let request_id = response
            .headers()
            .get("x-request-id")
            .unwrap_or_else(|| panic!("a {status} without x-request-id"))
            .to_str()
            .unwrap()
            .to_string();
        let explained = app
            .get(&auditor, &format!("/v1/billing/requests/{request_id}"))
            .await;
        assert_eq!(explained.status(), 200, "{status}");
        let body: Value = explained.json().await.unwrap();
        assert_eq!(body["status"], "released", "{body}");
    }
    // Refused before admission (no hold, nothing to explain): no id.
    let response = post("/v1/chat/completions", chat_body("unknown", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().get("x-request-id").is_none());
}
on_both_stores!(
    every_answer_after_admission_carries_an_explainable_request_id,
    every_answer_after_admission_carries_an_explainable_request_id
);

/// The echoing upstream's key.
const ECHOED_KEY: &str = "sk-edge-7Hq2xZ9pL4mN8vB1";

/// An OpenAI-shaped upstream whose every error echoes its key back: in part,
/// upper-cased and base64-encoded (as careless providers and proxies do).
fn start_echoing_upstream(status: u16) -> String {
    use actix_web::{web, HttpResponse};
    use base64::Engine;
    let port = serve_mock(move |routes| {
        routes.default_service(web::to(move || async move {
            let encoded = base64::engine::general_purpose::STANDARD.encode(ECHOED_KEY);
            let message = format!(
                "Incorrect API key provided: {}****. Key {} rejected; raw {encoded}",
                &ECHOED_KEY[..12],
                ECHOED_KEY.to_uppercase()
            );
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(json!({"error": {"message": message, "type": "invalid_request_error", "code": "bad_key_format"}}))
        }));
    });
    format!("http://127.0.0.1:{port}/v1")
}

fn echoed_forms() -> Vec<String> {
    use base64::Engine;
    vec![
        ECHOED_KEY[..12].to_string(),
        ECHOED_KEY.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(ECHOED_KEY),
        "Incorrect API key".to_string(),
    ]
}

async fn an_upstream_error_reaches_tenants_only_in_the_hubs_words(kind: StoreKind) {
    let app = spawn_app(kind).await;
    for (name, status) in [("echo400", 400), ("echo503", 503)] {
        app.add_provider(json!({"name": name, "kind": "openai", "base_url": start_echoing_upstream(status), "api_key": ECHOED_KEY}))
        .await;
        app.set_price(
            &format!("{name}/m"),
            json!({"input_per_mtok": "1", "output_per_mtok": "1", "max_output_tokens": 100}),
        )
        .await;
    }
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let auditor = app.issue_key(&tenant, "auditor").await;

    let mut seen = String::new();
    for (model, status, stream) in [
        ("echo400/m", 400, false),
        ("echo503/m", 502, false),
        ("echo503/m", 502, true),
    ] {
        let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let response = app.chat(&member, &body).await;
        assert_eq!(response.status(), status, "{model}");
        let text = response.text().await.unwrap();
        let status_word = if status == 400 { "400" } else { "503" };
        assert!(
            text.contains(&format!("upstream answered {status_word} (bad_key_format)")),
            "the hub's words, the upstream's status and code: {text}"
        );
        seen.push_str(&text);
    }
    let events = app
        .get(&auditor, "/v1/audit/events?limit=1000")
        .await
        .text()
        .await
        .unwrap();
    assert!(events.contains("UpstreamAttempted"), "{events}");
    seen.push_str(&events);
    for form in echoed_forms() {
        assert!(!seen.contains(&form), "{form:?} reached the tenant: {seen}");
    }
}
on_both_stores!(
    an_upstream_error_reaches_tenants_only_in_the_hubs_words,
    an_upstream_error_reaches_tenants_only_in_the_hubs_words
);
