//! The operator's tenant directory: `GET /admin/v1/tenants` (search, status,
//! newest first, cursor pages), `GET /admin/v1/tenants/{id}` and
//! `GET /admin/v1/tenants/{id}/keys`.

use crate::helpers::{chat_body, spawn_app, StoreKind, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;

async fn create_named(app: &TestApp, name: &str) -> String {
    let body = app
        .admin_json(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": name, "initial_credits": "1"})),
        )
        .await;
    body["tenant_id"].as_str().unwrap().to_string()
}

async fn list(app: &TestApp, query: &str) -> Value {
    app.admin_json(Method::GET, &format!("/admin/v1/tenants?{query}"), None)
        .await
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap().to_string())
        .collect()
}

/// Follows `next_cursor` from `cursor` to the end, `limit` per page.
async fn pages_from(app: &TestApp, mut cursor: Option<String>, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let query = match &cursor {
            Some(c) => format!("limit={limit}&cursor={c}"),
            None => format!("limit={limit}"),
        };
        let page = list(app, &query).await;
        let got = ids(&page);
        assert!(got.len() <= limit, "{page}");
        seen.extend(got);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return seen,
        }
    }
}

/// A cursor of the key list's shape, for a key of no tenant.
fn key_cursor(key_id: domain::KeyId) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key_id.to_string())
}

async fn error_of(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.admin(Method::GET, path, None).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn pages_list_every_tenant_once_newest_first(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let mut created = Vec::new();
    for i in 0..30 {
        created.push(create_named(&app, &format!("tenant {i}")).await);
    }
    app.projections_caught_up().await;
    let seen = pages_from(&app, None, 7).await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let first = list(&app, "limit=7").await;
    let row = &first["data"][0];
    assert_eq!(row["tenant_id"], created[29]);
    assert_eq!(row["name"], "tenant 29");
    assert_eq!(row["status"], "active");
    assert_eq!(row["plan"], Value::Null);
    assert_eq!(row["available"], "1");
    assert!(
        row["created_at"].as_str().unwrap().ends_with("+00:00"),
        "{row}"
    );
    let everything = list(&app, "").await;
    assert_eq!(ids(&everything).len(), 30, "the default page holds 50");
    assert_eq!(everything["next_cursor"], Value::Null);
}
crate::on_both_stores!(
    pages_list_every_tenant_once_newest_first,
    pages_list_every_tenant_once_newest_first
);

async fn tenants_created_while_paging_neither_repeat_nor_skip_older_ones(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let mut older = Vec::new();
    for i in 0..12 {
        older.push(create_named(&app, &format!("old {i}")).await);
    }
    app.projections_caught_up().await;
    let first = list(&app, "limit=5").await;
    let mut seen = ids(&first);
    for i in 0..4 {
        create_named(&app, &format!("new {i}")).await;
    }
    app.projections_caught_up().await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    seen.extend(pages_from(&app, Some(cursor), 5).await);
    let older_newest_first: Vec<String> = older.iter().rev().cloned().collect();
    assert_eq!(seen, older_newest_first);
    // The new ones head a fresh listing.
    assert_eq!(ids(&list(&app, "").await).len(), 16);
}
crate::on_both_stores!(
    tenants_created_while_paging_neither_repeat_nor_skip_older_ones,
    tenants_created_while_paging_neither_repeat_nor_skip_older_ones
);

async fn search_matches_names_in_any_case_and_id_prefixes(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let alpha = create_named(&app, "Alpha Widgets").await;
    let beta = create_named(&app, "beta widgets").await;
    let gamma = create_named(&app, "Gamma").await;
    app.projections_caught_up().await;
    assert_eq!(
        ids(&list(&app, "query=WIDGETS").await),
        vec![beta.clone(), alpha.clone()]
    );
    assert_eq!(
        ids(&list(&app, "query=pha%20wid").await),
        vec![alpha.clone()]
    );
    let by_id = ids(&list(&app, &format!("query={}", &gamma[..13])).await);
    assert_eq!(by_id, vec![gamma.clone()]);
    // An id matches from its start only.
    let inside = ids(&list(&app, &format!("query={}", &gamma[9..23])).await);
    assert!(!inside.contains(&gamma), "{inside:?}");
    assert!(ids(&list(&app, "query=nobody").await).is_empty());
    // Search and pages together.
    let page = list(&app, "query=widgets&limit=1").await;
    assert_eq!(ids(&page), vec![beta]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = list(&app, &format!("query=widgets&limit=1&cursor={cursor}")).await;
    assert_eq!(ids(&next), vec![alpha]);
    assert_eq!(next["next_cursor"], Value::Null);
}
crate::on_both_stores!(
    search_matches_names_in_any_case_and_id_prefixes,
    search_matches_names_in_any_case_and_id_prefixes
);

async fn status_filter_accepts_status_names_only(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let a = create_named(&app, "a").await;
    let b = create_named(&app, "b").await;
    app.projections_caught_up().await;
    assert_eq!(
        ids(&list(&app, "status=active").await),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(
        ids(&list(&app, "status=").await),
        vec![b.clone(), a.clone()]
    );

    // Suspending, resuming and closing move a tenant between the lists.
    let post = |path: String, body: Value| {
        let app = &app;
        async move {
            app.admin_json(reqwest::Method::POST, &path, Some(body))
                .await
        }
    };
    post(
        format!("/admin/v1/tenants/{a}/suspend"),
        json!({"reason": "unpaid"}),
    )
    .await;
    post(
        format!("/admin/v1/tenants/{b}/close"),
        json!({"reason": "gone", "remaining": "forfeit"}),
    )
    .await;
    app.projections_caught_up().await;
    assert_eq!(ids(&list(&app, "status=suspended").await), vec![a.clone()]);
    assert_eq!(ids(&list(&app, "status=closed").await), vec![b.clone()]);
    assert!(ids(&list(&app, "status=active").await).is_empty());
    let shown = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{a}"),
            None,
        )
        .await;
    assert_eq!(shown["status"], "suspended", "{shown}");
    post(format!("/admin/v1/tenants/{a}/resume"), json!({})).await;
    app.projections_caught_up().await;
    assert_eq!(ids(&list(&app, "status=active").await), vec![a.clone()]);

    let (status, body) = error_of(&app, "/admin/v1/tenants?status=bogus").await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("status") && message.contains("active"),
        "{body}"
    );
}
crate::on_both_stores!(
    status_filter_accepts_status_names_only,
    status_filter_accepts_status_names_only
);

async fn bad_cursors_limits_and_parameters_are_400(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = create_named(&app, "a").await;
    app.projections_caught_up().await;
    let keys = format!("/admin/v1/tenants/{tenant}/keys");
    let cases = [
        ("/admin/v1/tenants?cursor=garbage".to_string(), "cursor"),
        ("/admin/v1/tenants?limit=0".to_string(), "limit"),
        ("/admin/v1/tenants?limit=201".to_string(), "limit"),
        ("/admin/v1/tenants?limit=ten".to_string(), "limit"),
        ("/admin/v1/tenants?sort=name".to_string(), "sort"),
        (
            format!("/admin/v1/tenants?query={}", "x".repeat(201)),
            "query",
        ),
        (format!("{keys}?cursor=garbage"), "cursor"),
        (format!("{keys}?limit=500"), "limit"),
        // A well-formed key id that is not one of this tenant's keys.
        (
            format!("{keys}?cursor={}", key_cursor(domain::KeyId::new_random())),
            "cursor",
        ),
    ];
    for (path, word) in cases {
        let (status, body) = error_of(&app, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(word), "{path}: {body}");
    }
    assert_eq!(ids(&list(&app, "limit=200").await), vec![tenant]);
}
crate::on_both_stores!(
    bad_cursors_limits_and_parameters_are_400,
    bad_cursors_limits_and_parameters_are_400
);

async fn show_gives_the_balance_plan_margin_and_key_counts(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    app.admin_json(
        Method::POST,
        &format!("/admin/v1/tenants/{tenant}/credits"),
        Some(json!({"amount": "2", "idempotency_key": "g1", "reason": "top-up"})),
    )
    .await;
    let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let balance = app.wait_until_nothing_held(&tenant).await;
    app.admin_json(
        Method::PUT,
        "/admin/v1/plans/pro/margin",
        Some(json!({"margin_bps": 2500})),
    )
    .await;
    app.admin_json(
        Method::PUT,
        &format!("/admin/v1/tenants/{tenant}/plan"),
        Some(json!({"plan": "pro"})),
    )
    .await;
    app.projections_caught_up().await;

    let shown = app
        .admin_json(Method::GET, &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(shown["tenant_id"], tenant);
    assert_eq!(shown["name"], "acme");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["plan"], "pro");
    assert_eq!(
        shown["margin"],
        json!({"margin_bps": 2500, "source": "plan"})
    );
    assert_eq!(shown["balance"], balance);
    assert_ne!(shown["balance"]["spent"], "0", "{shown}");
    assert_eq!(shown["keys"], json!({"active": 1, "revoked": 0}));
    assert!(shown.get("projects").is_none(), "{shown}");
    let listed = list(&app, "").await;
    assert_eq!(listed["data"][0]["plan"], "pro");
    assert_eq!(listed["data"][0]["available"], balance["available"]);

    // A tenant margin wins over its plan's.
    app.admin_json(
        Method::PUT,
        &format!("/admin/v1/tenants/{tenant}/margin"),
        Some(json!({"margin_bps": 100})),
    )
    .await;
    let shown = app
        .admin_json(Method::GET, &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(
        shown["margin"],
        json!({"margin_bps": 100, "source": "tenant"})
    );
}
crate::on_both_stores!(
    show_gives_the_balance_plan_margin_and_key_counts,
    show_gives_the_balance_plan_margin_and_key_counts
);

async fn keys_are_counted_and_listed_without_secrets(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = create_named(&app, "keys").await;
    let mut issued = Vec::new();
    for role in ["admin", "member", "billing"] {
        let body = app
            .admin_json(
                Method::POST,
                &format!("/admin/v1/tenants/{tenant}/keys"),
                Some(json!({"name": format!("{role} key"), "role": role})),
            )
            .await;
        issued.push((
            body["key_id"].as_str().unwrap().to_string(),
            body["key"].as_str().unwrap().to_string(),
        ));
    }
    let revoked = &issued[1].0;
    app.admin_json(
        Method::DELETE,
        &format!("/admin/v1/tenants/{tenant}/keys/{revoked}"),
        None,
    )
    .await;
    app.projections_caught_up().await;

    let shown = app
        .admin_json(Method::GET, &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(shown["keys"], json!({"active": 2, "revoked": 1}));

    let path = format!("/admin/v1/tenants/{tenant}/keys");
    let response = app.admin(Method::GET, &path, None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for (_, key) in &issued {
        // aih_<tenant>_<key>_<secret>: the secret is base64url, so it may hold `_`.
        let secret = key.splitn(4, '_').nth(3).unwrap();
        assert!(!text.contains(secret), "a key's secret is listed: {text}");
    }
    assert!(!text.contains("hash"), "{text}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    let listed_ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = issued.iter().rev().map(|(id, _)| id.as_str()).collect();
    assert_eq!(listed_ids, newest_first);
    let member = &listed["data"][1];
    assert_eq!(member["name"], "member key");
    assert_eq!(member["role"], "member");
    assert!(member["revoked_at"].is_string(), "{member}");
    assert!(listed["data"][0]["revoked_at"].is_null(), "{listed}");
    assert!(listed["data"][0]["created_at"].is_string(), "{listed}");
    assert_eq!(listed["next_cursor"], Value::Null);

    // Pages of two.
    let first = app
        .admin_json(Method::GET, &format!("{path}?limit=2"), None)
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .admin_json(
            Method::GET,
            &format!("{path}?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(second["data"][0]["key_id"], issued[0].0.as_str());
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
}
crate::on_both_stores!(
    keys_are_counted_and_listed_without_secrets,
    keys_are_counted_and_listed_without_secrets
);

async fn unknown_tenants_are_404_and_tenant_keys_are_401(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let (tenant, key) = app.tenant_with_key("1", "admin").await;
    app.projections_caught_up().await;
    let unknown = domain::TenantId::new_random();
    for path in [
        format!("/admin/v1/tenants/{unknown}"),
        format!("/admin/v1/tenants/{unknown}/keys"),
        "/admin/v1/tenants/not-an-id".to_string(),
        "/admin/v1/tenants/not-an-id/keys".to_string(),
    ] {
        let (status, body) = error_of(&app, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for path in [
        "/admin/v1/tenants".to_string(),
        format!("/admin/v1/tenants/{tenant}"),
        format!("/admin/v1/tenants/{tenant}/keys"),
    ] {
        let response = app.get(&key, &path).await;
        assert_eq!(response.status(), 401, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(app.get("not-a-token", &path).await.status(), 401, "{path}");
    }
}
crate::on_both_stores!(
    unknown_tenants_are_404_and_tenant_keys_are_401,
    unknown_tenants_are_404_and_tenant_keys_are_401
);

async fn a_rebuilt_directory_equals_the_live_one(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let (tenant, _) = app.tenant_with_key("1", "member").await;
    let key_id = app
        .admin_json(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "gone", "role": "auditor"})),
        )
        .await["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.admin_json(
        Method::DELETE,
        &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
        None,
    )
    .await;
    create_named(&app, "other").await;
    app.projections_caught_up().await;
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");
    let rebuilt: BTreeSet<&str> = report
        .projections
        .iter()
        .filter(|p| p.comparison.live_rows > 0 && p.comparison.identical)
        .map(|p| p.comparison.projection.as_str())
        .collect();
    for name in [
        projections::tenants::Tenants::NAME,
        projections::tenants::TenantKeys::NAME,
    ] {
        assert!(rebuilt.contains(name), "{name} not rebuilt: {report:?}");
    }
    let tenants = report
        .projections
        .iter()
        .find(|p| p.comparison.projection == projections::tenants::Tenants::NAME)
        .unwrap();
    assert_eq!(tenants.comparison.live_rows, 2);
}
crate::on_both_stores!(
    a_rebuilt_directory_equals_the_live_one,
    a_rebuilt_directory_equals_the_live_one
);
