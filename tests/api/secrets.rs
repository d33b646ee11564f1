//! Secrets never reach the database in plaintext, a log line, an event or a
//! response: provider keys are sealed with AES-SIV, hub keys stored as hashes.

use crate::helpers::{database_url_for, StoreKind};
use crate::mock_openai::{MockUpstream, MOCK_API_KEY};
use crate::process::HubEnv;
use reqwest::Method;
use serde_json::json;

/// Every table's rows as text (PostgreSQL), or the database files' bytes (SQLite).
async fn database_dump(kind: StoreKind, env: &HubEnv) -> String {
    match kind {
        StoreKind::Sqlite => {
            let mut dump = String::new();
            for entry in std::fs::read_dir(&env.data_dir).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("aigne-hub.sqlite")
                {
                    dump.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
                }
            }
            assert!(dump.len() > 4096, "the SQLite files were read");
            dump
        }
        StoreKind::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(env.database_url.as_deref().unwrap())
                .await
                .unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(
                tables.contains(&"events".to_string()) && tables.contains(&"providers".to_string())
            );
            let mut dump = String::new();
            for table in tables {
                let rows: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT string_agg(t::text, E'\\n') FROM {table} t"
                ))
                .fetch_one(&mut conn)
                .await
                .unwrap();
                dump.push_str(&rows.unwrap_or_default());
            }
            dump
        }
    }
}

async fn secrets_never_leave_in_plaintext(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = database_url_for(kind).await;
    let env = HubEnv::new(temp.path(), database_url);
    let mock = MockUpstream::start();
    let mut hub = env.start().await;
    let (tenant, key) = hub
        .setup(&env, &mock.base_url, &["gpt-mock", "fail-503"], "10")
        .await;
    let rejected_key = "sk-rejected-by-upstream-4d2c8e";
    hub.admin(&env, Method::POST, "/admin/v1/providers", json!({"name": "bad", "kind": "openai", "base_url": mock.base_url, "api_key": rejected_key})).await;
    hub.admin(
        &env,
        Method::PUT,
        "/admin/v1/prices/bad/gpt-mock",
        json!({"input_per_mtok": "1", "output_per_mtok": "1"}),
    )
    .await;

    let client = reqwest::Client::new();
    let mut responses = String::new();
    for (model, stream) in [
        ("mock/gpt-mock", false),
        ("mock/gpt-mock", true),
        ("mock/fail-503", false),
        ("bad/gpt-mock", false),
        ("bad/gpt-mock", true),
    ] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
        let response = client
            .post(format!("{}/v1/chat/completions", hub.address))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        responses.push_str(&format!("{:?}", response.headers()));
        responses.push_str(&response.text().await.unwrap());
    }
    responses.push_str(
        &hub.admin(&env, Method::GET, "/admin/v1/providers", json!(null))
            .await
            .to_string(),
    );
    assert!(
        responses.contains("provider_credential_rejected"),
        "the rejected-key path ran: {responses}"
    );
    hub.terminate();

    let hub_key_secret = key.splitn(4, '_').nth(3).unwrap();
    let master_key = std::fs::read_to_string(env.data_dir.join("master.key")).unwrap();
    let secrets = [
        MOCK_API_KEY,
        rejected_key,
        hub_key_secret,
        master_key.trim(),
        env.operator_token.as_str(),
    ];
    let log = std::fs::read_to_string(&env.log_path).unwrap();
    assert!(log.contains("aigne-hub listening"), "the log was captured");
    let dump = database_dump(kind, &env).await;
    assert!(dump.contains(&tenant), "the dump holds the tenant's events");
    for secret in secrets {
        assert!(!log.contains(secret), "a secret reached the log");
        assert!(
            !dump.contains(secret),
            "a secret reached the database in plaintext"
        );
        assert!(!responses.contains(secret), "a secret reached a response");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.data_dir.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the master key file is private");
    }
}
crate::on_both_stores!(
    secrets_never_leave_in_plaintext,
    secrets_never_leave_in_plaintext
);
