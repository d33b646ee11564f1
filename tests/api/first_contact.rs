//! What a newcomer meets first: every 401 says what is wrong, models are found
//! by the names apps hard-code, and a wrong path says what it got.

use crate::helpers::{spawn_app, StoreKind, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// Sends GET `path` with `authorization` (none when `None`); returns the status
/// and the error message.
async fn get_with(app: &TestApp, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = app.client.get(format!("{}{path}", app.address));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn every_401_says_why(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let revoked = app.issue_key(&tenant, "member").await;
    let revoked_id = revoked.split('_').nth(2).unwrap().to_string();
    app.admin_json(
        Method::DELETE,
        &format!("/admin/v1/tenants/{tenant}/keys/{revoked_id}"),
        None,
    )
    .await;
    let unknown = format!(
        "aih_{}_{}_s3cr3tvalue",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let operator = format!("Bearer {}", app.operator_token);
    let cases = [
        ("/v1/models", None, "no Authorization header"),
        (
            "/v1/models",
            Some("Basic dXNlcjpwYXNz".to_string()),
            "not a Bearer token",
        ),
        (
            "/v1/models",
            Some("Bearer sk-123".to_string()),
            "not a hub API key",
        ),
        (
            "/v1/models",
            Some(format!("Bearer {unknown}")),
            "unknown API key",
        ),
        (
            "/v1/models",
            Some(format!("Bearer {revoked}")),
            "was revoked",
        ),
        (
            "/v1/models",
            Some(operator),
            "operator token only opens /admin",
        ),
        (
            "/admin/v1/prices",
            Some(format!("Bearer {key}")),
            "tenant API key does not open /admin",
        ),
        ("/admin/v1/prices", None, "no Authorization header"),
    ];
    for (path, authorization, says) in cases {
        let (status, body) = get_with(&app, path, authorization.as_deref()).await;
        assert_eq!(status, 401, "{path} {authorization:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{path} {authorization:?}: {message}"
        );
        // No part of a presented secret is echoed back.
        assert!(
            !message.contains(&key)
                && !message.contains("s3cr3tvalue")
                && !message.contains("dXNl")
        );
    }
    // The key that works still works.
    let (status, _) = get_with(&app, "/v1/models", Some(&format!("Bearer {key}"))).await;
    assert_eq!(status, 200);
}
crate::on_both_stores!(every_401_says_why, every_401_says_why);

async fn chat_status(app: &TestApp, key: &str, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let response = app.chat(key, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn a_bare_model_name_is_served_through_its_alias(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    let (_, key) = app.tenant_with_key("1", "member").await;

    // Before the alias: 404, pointing at the configured id.
    let (status, body) = chat_status(&app, &key, "gpt-mock").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("did you mean mock/gpt-mock"), "{message}");

    let set = app
        .admin_json(
            Method::PUT,
            "/admin/v1/aliases/gpt-mock",
            Some(json!({"model": "mock/gpt-mock"})),
        )
        .await;
    assert_eq!(set, json!({"alias": "gpt-mock", "model": "mock/gpt-mock"}));
    let (status, body) = chat_status(&app, &key, "gpt-mock").await;
    assert_eq!(status, 200, "{body}");

    // Listed beside the model it stands for, at the same price.
    let (_, models) = get_with(&app, "/v1/models", Some(&format!("Bearer {key}"))).await;
    let entry = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {models}"))
    };
    let alias = entry("gpt-mock");
    assert_eq!(alias["alias_for"], "mock/gpt-mock");
    assert_eq!(alias["pricing"], entry("mock/gpt-mock")["pricing"]);

    // An alias must name a priced model and be a bare name.
    let refused = app
        .admin(
            Method::PUT,
            "/admin/v1/aliases/other",
            Some(json!({"model": "mock/unpriced"})),
        )
        .await;
    assert_eq!(refused.status(), 400);

    let removed = app
        .admin(Method::DELETE, "/admin/v1/aliases/gpt-mock", None)
        .await;
    assert_eq!(removed.status(), 200);
    let (status, _) = chat_status(&app, &key, "gpt-mock").await;
    assert_eq!(status, 404);
    let again = app
        .admin(Method::DELETE, "/admin/v1/aliases/gpt-mock", None)
        .await;
    assert_eq!(again.status(), 404);
}
crate::on_both_stores!(
    a_bare_model_name_is_served_through_its_alias,
    a_bare_model_name_is_served_through_its_alias
);

async fn a_model_is_retrieved_as_openai_answers_it(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    let tenant = app.create_tenant("1").await;
    let key = format!("Bearer {}", app.issue_key(&tenant, "member").await);

    let (status, body) = get_with(&app, "/v1/models/mock/gpt-mock", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "mock/gpt-mock");
    assert_eq!(body["object"], "model");
    assert_eq!(body["owned_by"], "mock");
    assert!(body["created"].is_i64(), "{body}");

    let (status, body) = get_with(&app, "/v1/models/mock/gpt-mok", Some(&key)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did you mean mock/gpt-mock"));

    let (status, _) = get_with(&app, "/v1/models/mock/gpt-mock", None).await;
    assert_eq!(status, 401, "a model is retrieved with a key, as listed");
}
crate::on_both_stores!(
    a_model_is_retrieved_as_openai_answers_it,
    a_model_is_retrieved_as_openai_answers_it
);

async fn an_unknown_path_names_itself_and_a_missing_v1(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let response = app
        .client
        .post(format!("{}/chat/completions", app.address))
        .json(&json!({"model": "x", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("POST /chat/completions") && message.contains("/v1/chat/completions"),
        "{message}"
    );
    let (status, body) = get_with(&app, "/v2/nothing", None).await;
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("GET /v2/nothing"), "{message}");
    assert!(!message.contains("/v1"), "{message}");
}
crate::on_both_stores!(
    an_unknown_path_names_itself_and_a_missing_v1,
    an_unknown_path_names_itself_and_a_missing_v1
);
