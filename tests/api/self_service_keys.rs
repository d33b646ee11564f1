//! A tenant manages its own keys (`/v1/keys`) with an owner or admin key,
//! never giving or taking more power than the caller's own.

use crate::helpers::*;
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::ChangedBy;
use reqwest::Method;
use serde_json::{json, Value};

/// A key issued by the operator, with `scopes`.
async fn operator_key(app: &TestApp, tenant: &str, role: &str, scopes: Value) -> (String, String) {
    let mut body = json!({"name": role, "role": role});
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
    (text("key_id"), text("key"))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn a_tenant_manages_its_keys_within_its_own_power(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("10").await;
    let (owner_id, owner) = operator_key(&app, &tenant, "owner", json!({})).await;
    let admin_scopes = json!({"models": ["openai/*"], "rpm": 10,
        "budget": {"amount": "5", "period": "month"}});
    let (admin_id, admin) = operator_key(&app, &tenant, "admin", admin_scopes).await;

    // Within the admin's power: a member key with narrower scopes.
    let member_body = json!({"name": "app", "role": "member", "models": ["openai/gpt-*"],
        "rpm": 5, "budget": {"amount": "1", "period": "month"}});
    let (status, member) = send_as(&app, Method::POST, &admin, "/v1/keys", Some(member_body)).await;
    assert_eq!(status, 201, "{member}");
    let member_id = member["key_id"].as_str().unwrap().to_string();
    let member_key = member["key"].as_str().unwrap().to_string();
    assert_eq!(member["rpm"]["limit"], 5);

    // Beyond it: each refused with 403 naming why, and nothing written.
    for (body, words) in [
        (
            json!({"name": "x", "role": "owner", "models": ["openai/*"], "rpm": 1,
            "budget": {"amount": "1", "period": "month"}}),
            "role owner",
        ),
        (
            json!({"name": "x", "role": "member", "rpm": 5,
            "budget": {"amount": "1", "period": "month"}}),
            "models",
        ),
        (
            json!({"name": "x", "role": "member", "models": ["openai/*"], "rpm": 50,
            "budget": {"amount": "1", "period": "month"}}),
            "rpm",
        ),
        (
            json!({"name": "x", "role": "member", "models": ["openai/*"], "rpm": 5,
            "budget": {"amount": "1", "period": "day"}}),
            "budget",
        ),
    ] {
        let (status, refused) =
            send_as(&app, Method::POST, &admin, "/v1/keys", Some(body.clone())).await;
        assert_eq!(
            (status, code(&refused)),
            (403, "permission_denied"),
            "{body}: {refused}"
        );
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains(words),
            "{refused}"
        );
    }
    // An admin may not widen a key past its own scopes, nor touch an owner's.
    let path = format!("/v1/keys/{member_id}");
    let (status, _) = send_as(&app, Method::PATCH, &admin, &path, Some(json!({"rpm": 11}))).await;
    assert_eq!(status, 403);
    let (status, changed) =
        send_as(&app, Method::PATCH, &admin, &path, Some(json!({"rpm": 2}))).await;
    assert_eq!(
        (status, &changed["rpm"]["limit"]),
        (200, &json!(2)),
        "{changed}"
    );
    let owner_path = format!("/v1/keys/{owner_id}");
    for method in [Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"rpm": 1}));
        let (status, _) = send_as(&app, method, &admin, &owner_path, body).await;
        assert_eq!(status, 403);
    }
    // The owner may do anything in the tenant, including to the admin's key.
    let admin_path = format!("/v1/keys/{admin_id}");
    let (status, _) = send_as(
        &app,
        Method::PATCH,
        &owner,
        &admin_path,
        Some(json!({"rpm": null})),
    )
    .await;
    assert_eq!(status, 200);

    // Members manage nothing; the tenant's keys are shown without secrets.
    let (status, refused) = send_as(&app, Method::GET, &member_key, "/v1/keys", None).await;
    assert_eq!((status, code(&refused)), (403, "permission_denied"));
    let (status, shown) = send_as(&app, Method::GET, &admin, &path, None).await;
    assert_eq!(status, 200);
    assert!(shown.get("key").is_none());
    app.projections_caught_up().await;
    let (status, listed) = send_as(&app, Method::GET, &owner, "/v1/keys", None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["data"].as_array().unwrap().len(), 3, "{listed}");
    assert!(!listed.to_string().contains(&member_key));

    // Revoked by the admin: refused from then on.
    let (status, _) = send_as(&app, Method::DELETE, &admin, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(app.get(&member_key, "/v1/models").await.status(), 401);

    // Each change names the key that made it.
    let by_admin = ChangedBy::Key {
        key_id: admin_id.parse().unwrap(),
    };
    let events = tenant_events(&app, &tenant).await;
    let member_events: Vec<_> = events
        .iter()
        .filter(|e| match &e.event {
            TenantEvent::ApiKeyIssued { key_id, .. }
            | TenantEvent::ApiKeyScopesSet { key_id, .. }
            | TenantEvent::ApiKeyRevoked { key_id, .. } => key_id.to_string() == member_id,
            _ => false,
        })
        .collect();
    assert_eq!(member_events.len(), 4, "issued, scoped, narrowed, revoked");
    assert!(member_events
        .iter()
        .all(|e| e.metadata.actor.as_ref() == Some(&by_admin)));
}
on_both_stores!(
    a_tenant_manages_its_keys_within_its_own_power,
    a_tenant_manages_its_keys_within_its_own_power
);

async fn another_tenants_keys_are_404(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let a = app.create_tenant("1").await;
    let b = app.create_tenant("1").await;
    let (_, a_owner) = operator_key(&app, &a, "owner", json!({})).await;
    let (b_key_id, b_member) = operator_key(&app, &b, "member", json!({})).await;
    let path = format!("/v1/keys/{b_key_id}");
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"rpm": 1}));
        let (status, answer) = send_as(&app, method.clone(), &a_owner, &path, body).await;
        assert_eq!((status, code(&answer)), (404, "not_found"), "{method}");
    }
    // B's key still works: nothing happened to it.
    assert_eq!(app.get(&b_member, "/v1/models").await.status(), 200);
}
on_both_stores!(another_tenants_keys_are_404, another_tenants_keys_are_404);
