//! Projects: keys grouped under shared scopes, decided with each key's own.

use crate::helpers::*;
use crate::on_both_stores;
use reqwest::Method;
use serde_json::{json, Value};

async fn a_project_budget_binds_all_its_keys_together(kind: StoreKind) {
    let app = spawn_app(kind).await;
    // Each request costs exactly its hold, 0.0001 (see key_scopes.rs).
    app.setup_provider(&[("exact-hold", "0", "1", Some(100))])
        .await;
    let tenant = app.create_tenant("10").await;
    let owner = app.issue_key(&tenant, "owner").await;
    let (status, project) = send_as(
        &app,
        Method::POST,
        &owner,
        "/v1/projects",
        Some(json!({"name": "team", "budget": {"amount": "0.0003", "period": "total"}})),
    )
    .await;
    assert_eq!(status, 201, "{project}");
    let project_id = project["project_id"].as_str().unwrap().to_string();
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let body = json!({"name": name, "role": "member", "project_id": project_id});
        let (status, key) = send_as(&app, Method::POST, &owner, "/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "{key}");
        assert_eq!(key["project_id"], json!(project_id));
        keys.push(key["key"].as_str().unwrap().to_string());
    }
    let mut body = chat_body("exact-hold", false);
    body["max_tokens"] = json!(100);
    let mut statuses = Vec::new();
    for key in [&keys[0], &keys[1], &keys[0], &keys[1]] {
        let response = app.chat(key, &body).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        statuses.push((
            status,
            answer["error"]["code"].as_str().unwrap_or("").to_string(),
        ));
    }
    assert_eq!(
        statuses,
        vec![
            (200, String::new()),
            (200, String::new()),
            (200, String::new()),
            (402, "project_budget_exhausted".to_string())
        ]
    );
    let path = format!("/v1/projects/{project_id}");
    let (status, shown) = send_as(&app, Method::GET, &owner, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["budget"]["spent"], "0.0003", "{shown}");
    assert_eq!(shown["keys"], 2);
    // A project with live keys is not deleted.
    let (status, _) = send_as(&app, Method::DELETE, &owner, &path, None).await;
    assert_eq!(status, 409);
    let (status, listed) = send_as(&app, Method::GET, &owner, "/v1/projects", None).await;
    assert_eq!((status, listed["data"].as_array().unwrap().len()), (200, 1));
    // Raising the budget admits again.
    let raise = json!({"budget": {"amount": "1", "period": "total"}});
    let (status, _) = send_as(&app, Method::PATCH, &owner, &path, Some(raise)).await;
    assert_eq!(status, 200);
    assert_eq!(app.chat(&keys[1], &body).await.status(), 200);
    replay_equals_live(&app).await;
}
on_both_stores!(
    a_project_budget_binds_all_its_keys_together,
    a_project_budget_binds_all_its_keys_together
);
