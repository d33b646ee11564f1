//! Every process sees every change: what the CLI or another hub process writes
//! is known to a serving process at once for a refusal (which is never made
//! from a stale view), and within moments for everything else.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::mock_openai::MOCK_API_KEY;
use crate::on_both_stores;
use crate::process::HubEnv;
use aigne_hub::startup::Application;
use domain::tenant::TenantEvent;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest any test here waits for another process's change to show.
const CHANGE_VISIBLE: Duration = Duration::from_millis(1_000);

/// The CLI, on the same data dir and database as `app`.
fn cli_env(app: &TestApp) -> HubEnv {
    let dir = app.settings.data_dir.parent().unwrap();
    HubEnv::sharing(dir, app.settings.database_url.clone())
}

/// Runs one CLI command to success.
fn cli(env: &HubEnv, args: &[&str], stdin: Option<&str>) {
    env.run_ok(args, stdin);
}

async fn a_grant_from_the_cli_is_spendable_at_once(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("0", "member").await;
    let body = chat_body("gpt-mock", false);
    assert_eq!(app.chat(&key, &body).await.status(), 402);

    let grant = [
        "credits",
        "grant",
        "--tenant",
        &tenant,
        "--amount",
        "1",
        "--idempotency-key",
        "cli-1",
        "--reason",
        "top-up",
    ];
    cli(&cli_env(&app), &grant, None);

    // The very next request: the refusal is checked against the store first.
    let response = app.chat(&key, &body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}
on_both_stores!(
    a_grant_from_the_cli_is_spendable_at_once,
    a_grant_from_the_cli_is_spendable_at_once
);

async fn a_model_added_from_the_cli_is_served_within_a_second(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let (_, key) = app.tenant_with_key("1", "member").await;
    let body = chat_body("gpt-mock", false);
    assert_eq!(app.chat(&key, &body).await.status(), 404);

    let env = cli_env(&app);
    let add = [
        "provider",
        "add",
        "--name",
        "mock",
        "--kind",
        "openai",
        "--base-url",
        &app.mock.base_url,
    ];
    cli(&env, &add, Some(&format!("{MOCK_API_KEY}\n")));
    let price = [
        "price",
        "set",
        "mock/gpt-mock",
        "--input",
        "1",
        "--output",
        "2",
    ];
    cli(&env, &price, None);

    wait_until(
        CHANGE_VISIBLE,
        "the model added from the CLI is served",
        || async { app.chat(&key, &body).await.status() == 200 },
    )
    .await;
}
on_both_stores!(
    a_model_added_from_the_cli_is_served_within_a_second,
    a_model_added_from_the_cli_is_served_within_a_second
);

/// A second hub process on `first`'s database (same master key, from the data dir).
async fn second_hub(first: &TestApp) -> (String, actix_web::dev::ServerHandle) {
    let second = Application::build(first.settings.clone())
        .await
        .expect("second hub starts");
    let address = format!("http://127.0.0.1:{}", second.port());
    let handle = second.server_handle();
    actix_web::rt::spawn(second.run_until_stopped());
    (address, handle)
}

async fn get_balance(app: &TestApp, address: &str, key: &str) -> (u16, Value) {
    let response = app
        .client
        .get(format!("{address}/v1/billing/balance"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn chat_at(app: &TestApp, address: &str, key: &str) -> u16 {
    app.client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body("gpt-mock", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[actix_web::test]
async fn a_key_revoked_on_one_hub_is_refused_on_the_other_within_a_second() {
    let first = spawn_app(StoreKind::Postgres).await;
    let (second, second_handle) = second_hub(&first).await;
    let tenant = first.create_tenant("1").await;
    let issued = first
        .admin_json(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "books", "role": "billing"})),
        )
        .await;
    let (key_id, key) = (
        issued["key_id"].as_str().unwrap(),
        issued["key"].as_str().unwrap(),
    );
    // The second process has the tenant in memory, key and all.
    assert_eq!(get_balance(&first, &second, key).await.0, 200);

    first
        .admin_json(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
            None,
        )
        .await;
    wait_until(
        CHANGE_VISIBLE,
        "the revoked key is refused on the other hub",
        || async { get_balance(&first, &second, key).await.0 == 401 },
    )
    .await;
    second_handle.stop(false).await;
}

#[actix_web::test]
async fn a_grant_on_one_hub_is_spendable_on_the_other_at_once() {
    let first = spawn_app(StoreKind::Postgres).await;
    first.setup_provider(&[GPT_MOCK]).await;
    let (second, second_handle) = second_hub(&first).await;
    let (tenant, member) = first.tenant_with_key("0", "member").await;
    let books = first.issue_key(&tenant, "billing").await;
    assert_eq!(chat_at(&first, &second, &member).await, 402);

    first
        .admin_json(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{tenant}/credits"),
            Some(json!({"amount": "1", "idempotency_key": "g-1", "reason": "top-up"})),
        )
        .await;
    assert_eq!(chat_at(&first, &second, &member).await, 200);

    // The first process learns of the second one's spending at once as well.
    wait_until(
        CHANGE_VISIBLE,
        "both hubs show the same balance",
        || async {
            let (on_first, on_second) = (
                get_balance(&first, &first.address, &books).await,
                get_balance(&first, &second, &books).await,
            );
            on_first.0 == 200 && on_first == on_second && on_first.1["spent"] != "0"
        },
    )
    .await;
    second_handle.stop(false).await;
}

/// A TCP proxy in front of PostgreSQL that, once armed, passes the next append
/// of a hold (`CreditsReserved`) to the database and then cuts that connection
/// without passing the answer back: the hold is committed, and the hub cannot
/// know it, as when the database goes down during the commit.
struct CuttingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
}

/// How long the proxy lets the database finish a statement it will not answer.
const CUT_AFTER_MS: u64 = 300;

impl CuttingProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let armed_for_task = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(Self::pipe(client, server, armed_for_task.clone()));
            }
        });
        Self { port, armed }
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        armed: Arc<AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const MARKER: &[u8] = b"CreditsReserved";
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut cut_at: Option<tokio::time::Instant> = None;
        loop {
            let cut = async {
                match cut_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = client_read.read(&mut up) => {
                    let Ok(n @ 1..) = n else { return };
                    let chunk = &up[..n];
                    if cut_at.is_none()
                        && chunk.windows(MARKER.len()).any(|w| w == MARKER)
                        && armed.swap(false, Ordering::SeqCst)
                    {
                        cut_at = Some(tokio::time::Instant::now() + Duration::from_millis(CUT_AFTER_MS));
                    }
                    if server_write.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                n = server_read.read(&mut down), if cut_at.is_none() => {
                    let Ok(n @ 1..) = n else { return };
                    if client_write.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                // Both sides dropped: the hub sees its connection end mid-commit.
                _ = cut => return,
            }
        }
    }
}

#[actix_web::test]
async fn a_hold_committed_as_the_ledger_fails_is_released_after_reconnecting() {
    let guard = fresh_pg_database().await;
    let database = guard.url().unwrap();
    let upstream = "127.0.0.1:5432".to_string();
    assert!(database.contains(&upstream), "{database}");
    let proxy = CuttingProxy::start(upstream.clone()).await;
    let through_proxy = format!("127.0.0.1:{}", proxy.port);
    let app = spawn_app_with(StoreKind::Postgres, |settings| {
        // In clear text, so that the proxy can tell a hold's append.
        let url = database.replace(&upstream, &through_proxy);
        settings.database_url = Some(format!("{url}?sslmode=disable"));
    })
    .await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    proxy.armed.store(true, Ordering::SeqCst);
    let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    assert!(!proxy.armed.load(Ordering::SeqCst), "the hold was cut");

    // The hold was committed all the same; the hub finds it and releases it,
    // long before its time to live.
    let tenant_id: domain::TenantId = tenant.parse().unwrap();
    let reserved = |e: &TenantEvent| matches!(e, TenantEvent::CreditsReserved { .. });
    let released = |e: &TenantEvent| matches!(e, TenantEvent::HoldReleased { .. });
    let events = app.store().tenant_events(tenant_id, 0).await.unwrap();
    assert_eq!(events.iter().filter(|e| reserved(&e.event)).count(), 1);
    wait_until(Duration::from_secs(5), "the hold is released", || async {
        let events = app.store().tenant_events(tenant_id, 0).await.unwrap();
        events.iter().any(|e| released(&e.event))
    })
    .await;
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(balance["available"], "1", "{balance}");
}

#[actix_web::test]
async fn a_change_made_while_the_listener_reconnects_is_seen() {
    use sqlx::Connection;
    let first = spawn_app(StoreKind::Postgres).await;
    let (second, second_handle) = second_hub(&first).await;
    let tenant = first.create_tenant("1").await;
    let issued = first
        .admin_json(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "books", "role": "billing"})),
        )
        .await;
    let (key_id, key) = (
        issued["key_id"].as_str().unwrap(),
        issued["key"].as_str().unwrap(),
    );
    assert_eq!(get_balance(&first, &second, key).await.0, 200);

    // Every hub's listening connection is cut; the revocation may land before
    // they listen again.
    let url = first.settings.database_url.clone().unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(cut.len() >= 2, "both hubs listen: {cut:?}");
    first
        .admin_json(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/{tenant}/keys/{key_id}"),
            None,
        )
        .await;
    wait_until(
        CHANGE_VISIBLE,
        "the revoked key is refused on the other hub",
        || async { get_balance(&first, &second, key).await.0 == 401 },
    )
    .await;
    second_handle.stop(false).await;
}
