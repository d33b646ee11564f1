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
    let tenant = app.create_tenant("1").await;
    let key = app.issue_key(&tenant, "member").await;
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
