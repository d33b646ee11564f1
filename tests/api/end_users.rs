//! End users and projects in usage: who a request was for (the
//! `x-aigne-hub-end-user` header, OpenAI's `user`, Anthropic's
//! `metadata.user_id`) and the project of its key are recorded with its hold,
//! explained, and grouped by; usage by each adds up to the ledger.

use crate::billing::{mock_answer_cost, GPT_MOCK};
use crate::helpers::*;
use crate::on_both_stores;
use domain::Credits;
use reqwest::Method;
use serde_json::{json, Value};

/// The rows of `GET /v1/billing/usage?group_by=<group>` once `requests` are in.
async fn usage_by(app: &TestApp, key: &str, group: &str, requests: u64) -> Vec<Value> {
    let path = format!("/v1/billing/usage?group_by={group}");
    let what = format!("usage by {group} shows {requests} requests");
    wait_for(WAIT_DEADLINE, &what, || async {
        app.projections_caught_up().await;
        let body = app.get_json(key, &path).await;
        let rows = body["data"].as_array().cloned().unwrap_or_default();
        let seen: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        (seen == requests).then_some(rows)
    })
    .await
}

fn amount_of(rows: &[Value], group: &str, value: Value) -> Credits {
    rows.iter()
        .filter(|r| r[group] == value)
        .map(|r| Credits::parse(r["amount"].as_str().unwrap()).unwrap())
        .fold(Credits::ZERO, |a, b| a + b)
}

async fn chat_for(
    app: &TestApp,
    key: &str,
    header: Option<&str>,
    user: Option<&str>,
) -> reqwest::Response {
    let mut body = chat_body("gpt-mock", false);
    if let Some(user) = user {
        body["user"] = json!(user);
    }
    let mut request = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(key)
        .json(&body);
    if let Some(header) = header {
        request = request.header("x-aigne-hub-end-user", header);
    }
    request.send().await.unwrap()
}

async fn usage_by_end_user_and_project_equals_the_ledger(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let tenant = app.create_tenant("10").await;
    let owner = app.issue_key(&tenant, "owner").await;
    let (status, project) = send_as(
        &app,
        Method::POST,
        &owner,
        "/v1/projects",
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(status, 201, "{project}");
    let project_id = project["project_id"].as_str().unwrap().to_string();
    let body = json!({"name": "in-team", "role": "member", "project_id": project_id});
    let (status, key) = send_as(&app, Method::POST, &owner, "/v1/keys", Some(body)).await;
    assert_eq!(status, 201, "{key}");
    let team_key = key["key"].as_str().unwrap().to_string();

    // alice by header (it wins over the body), bob by OpenAI's `user`, one unnamed.
    let calls = [
        (&team_key, Some("alice"), Some("ignored")),
        (&team_key, None, Some("bob")),
        (&owner, Some("alice"), None),
        (&owner, None, None),
    ];
    let mut request_ids = Vec::new();
    for (key, header, user) in calls {
        let response = chat_for(&app, key, header, user).await;
        assert_eq!(response.status(), 200);
        request_ids.push(request_id(&response));
    }
    let cost = mock_answer_cost();
    let by_user = usage_by(&app, &owner, "end_user", 4).await;
    assert_eq!(amount_of(&by_user, "end_user", json!("alice")), cost + cost);
    assert_eq!(amount_of(&by_user, "end_user", json!("bob")), cost);
    assert_eq!(amount_of(&by_user, "end_user", Value::Null), cost);
    let by_project = usage_by(&app, &owner, "project", 4).await;
    assert_eq!(
        amount_of(&by_project, "project", json!(project_id)),
        cost + cost
    );
    assert_eq!(amount_of(&by_project, "project", Value::Null), cost + cost);
    // Together they add up to what the ledger spent.
    let spent = credits_of(&app.balance(&tenant).await["spent"]);
    let total = by_user
        .iter()
        .map(|r| Credits::parse(r["amount"].as_str().unwrap()).unwrap())
        .fold(Credits::ZERO, |a, b| a + b);
    assert_eq!(total, spent);

    // Explain names the end user, the project and the limits checked.
    let explained = app
        .get_json(&owner, &format!("/v1/billing/requests/{}", request_ids[0]))
        .await;
    assert_eq!(explained["end_user"], "alice", "{explained}");
    assert_eq!(explained["project_id"], json!(project_id));
    assert_eq!(explained["scopes_checked"], json!(["tenant.credit"]));
    let explained = app
        .get_json(&owner, &format!("/v1/billing/requests/{}", request_ids[3]))
        .await;
    assert_eq!(explained["end_user"], Value::Null);
    assert_eq!(explained["project_id"], Value::Null);
    replay_equals_live(&app).await;
}
on_both_stores!(
    usage_by_end_user_and_project_equals_the_ledger,
    usage_by_end_user_and_project_equals_the_ledger
);

async fn a_bad_end_user_is_refused_before_any_hold(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("10", "member").await;
    let too_long = "u".repeat(257);
    let cases = [
        (Some(too_long.as_str()), None, "x-aigne-hub-end-user"),
        (None, Some(too_long.as_str()), "`user`"),
        (None, Some(key.as_str()), "looks like an AIGNE Hub key"),
    ];
    for (header, user, says) in cases {
        let response = chat_for(&app, &key, header, user).await;
        assert_eq!(response.status(), 400);
        let answer: Value = response.json().await.unwrap();
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(
            !message.contains(&key),
            "the key is never echoed: {message}"
        );
    }
    let mut body = chat_body("gpt-mock", false);
    body["user"] = json!(42);
    assert_eq!(app.chat(&key, &body).await.status(), 400);
    // Exactly the bound is fine.
    let response = chat_for(&app, &key, Some(&"u".repeat(256)), None).await;
    assert_eq!(response.status(), 200);
    let spent = credits_of(&app.balance(&tenant).await["spent"]);
    assert_eq!(
        spent,
        mock_answer_cost(),
        "only the good request was charged"
    );
}
on_both_stores!(
    a_bad_end_user_is_refused_before_any_hold,
    a_bad_end_user_is_refused_before_any_hold
);

async fn anthropic_metadata_user_id_names_the_end_user(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (_tenant, key) = app.tenant_with_key("10", "admin").await;
    let body = json!({
        "model": "mock/gpt-mock",
        "max_tokens": 50,
        "metadata": {"user_id": "carol"},
        "messages": [{"role": "user", "content": "hi"}],
    });
    let response = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let explained = app
        .get_json(&key, &format!("/v1/billing/requests/{id}"))
        .await;
    assert_eq!(explained["end_user"], "carol", "{explained}");
}
on_both_stores!(
    anthropic_metadata_user_id_names_the_end_user,
    anthropic_metadata_user_id_names_the_end_user
);
