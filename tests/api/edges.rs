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
    let tenant = app.create_tenant("1").await;
    let key = app.issue_key(&tenant, "member").await;
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
