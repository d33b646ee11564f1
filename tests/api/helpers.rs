//! Spawns the hub on a random port against a fresh database (a new PostgreSQL
//! database per test, or a new SQLite file), with a mock upstream beside it.

use crate::mock_openai::{MockUpstream, MOCK_API_KEY};
use actix_web::{web, App, HttpServer};
use aigne_hub::config::{Limits, Settings};
use aigne_hub::startup::Application;
use aigne_hub::store::{EventMetadata, Store};
use chrono::Utc;
use domain::tenant::TenantEvent;
use domain::{Credits, InstanceId, TenantId, Usage};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database for `kind` Postgres; no URL (the embedded
/// SQLite file in the data dir) for Sqlite. The database goes when the guard does.
pub async fn database_url_for(kind: StoreKind) -> TestDatabase {
    match kind {
        StoreKind::Sqlite => TestDatabase { name: None },
        StoreKind::Postgres => fresh_pg_database().await,
    }
}

/// Unchained metadata for events appended straight to a store (store-level tests).
pub fn plain_metadata(tenant_id: TenantId) -> EventMetadata {
    EventMetadata {
        recorded_at: Utc::now(),
        tenant_id,
        request_id: None,
        instance_id: InstanceId::new_random(),
        actor: None,
        prev_hash: None,
        hash: None,
    }
}

pub fn tenant_created(tenant_id: TenantId) -> TenantEvent {
    TenantEvent::TenantCreated {
        tenant_id,
        name: "t".into(),
        at: Utc::now(),
    }
}

/// A grant of one pico-credit under idempotency key `g{n}`.
pub fn pico_grant(n: usize) -> TenantEvent {
    TenantEvent::CreditsGranted {
        amount_pico: Credits::from_pico(1),
        idempotency_key: format!("g{n}"),
        reason: "r".into(),
        expires_at: None,
        payment: None,
        at: Utc::now(),
    }
}

/// The server PostgreSQL tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("AIGNE_HUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh, uniquely named database; fails the test if PostgreSQL is
/// unreachable (tests never skip silently).
pub async fn fresh_pg_database() -> TestDatabase {
    let mut conn = pg_admin_connection().await;
    let name = format!("aigne_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    TestDatabase { name: Some(name) }
}

async fn pg_admin_connection() -> sqlx::PgConnection {
    use sqlx::Connection;
    let admin = pg_admin_url();
    sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required for the test suite and is unreachable at {admin}: {e}")
        })
}

/// The database one test created (none for SQLite, whose file lives in the
/// test's temporary directory). Dropping the guard drops the database, so a run
/// leaves none behind.
pub struct TestDatabase {
    name: Option<String>,
}

impl TestDatabase {
    /// The database's URL; `None` for SQLite.
    pub fn url(&self) -> Option<String> {
        let name = self.name.as_ref()?;
        let admin = pg_admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
        Some(format!("{base}/{name}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        // The guard usually goes inside the test's runtime, which cannot block
        // on a future; a thread of its own with its own runtime can. FORCE ends
        // the sessions a stopped hub (or a killed hub process) may leave open.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = pg_admin_connection().await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("dropping {name}: {e}"))
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the thread dropping the database panicked".into()));
        if let Err(e) = dropped {
            // A second panic while the test already fails would abort the run.
            if std::thread::panicking() {
                eprintln!("{e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

pub fn test_limits() -> Limits {
    Limits {
        upstream_first_byte_timeout_ms: 1_500,
        upstream_idle_timeout_ms: 1_500,
        upstream_total_timeout_ms: 5_000,
        instance_heartbeat_ms: 200,
        instance_stale_after_ms: 1_000,
        hold_sweep_interval_ms: 200,
        projector_poll_ms: 100,
        max_request_body_bytes: 256 * 1024,
        retry_base_delay_ms: 20,
        ..Limits::default()
    }
}

pub struct TestApp {
    pub address: String,
    pub operator_token: String,
    pub client: reqwest::Client,
    pub mock: MockUpstream,
    pub settings: Settings,
    pub store_kind: StoreKind,
    pub app_handle: actix_web::dev::ServerHandle,
    pub hub: Arc<aigne_hub::hub::Hub>,
    _temp: Arc<tempfile::TempDir>,
    /// Dropped after the server stops (fields drop after `Drop::drop`); shared
    /// with the app a restart starts.
    _database: Arc<TestDatabase>,
}

pub async fn spawn_app(kind: StoreKind) -> TestApp {
    spawn_app_with(kind, |_| {}).await
}

/// Like [`spawn_app`], with settings changed by `edit` first (webhook secrets,
/// shorter clocks).
pub async fn spawn_app_with(kind: StoreKind, edit: impl FnOnce(&mut Settings)) -> TestApp {
    let temp = Arc::new(tempfile::tempdir().unwrap());
    let database = Arc::new(database_url_for(kind).await);
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: temp.path().join("data"),
        database_url: database.url(),
        operator_token: Some(format!("op-{}", uuid::Uuid::new_v4())),
        master_key: None,
        actor_threads: 2,
        http_workers: 2,
        limits: test_limits(),
        aigne: Default::default(),
        mode: Default::default(),
        notify: Default::default(),
    };
    edit(&mut settings);
    start(settings, kind, MockUpstream::start(), temp, database).await
}

async fn start(
    settings: Settings,
    kind: StoreKind,
    mock: MockUpstream,
    temp: Arc<tempfile::TempDir>,
    database: Arc<TestDatabase>,
) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("hub starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let app_handle = app.server_handle();
    let hub = app.hub();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        operator_token: settings.operator_token.clone().unwrap(),
        // The hub closes a connection idle for 5 s (actix's keep-alive); a
        // request sent on it at that moment fails with IncompleteMessage, as a
        // balance read after a slow step once did. Idle connections are dropped
        // here well before that.
        client: reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build()
            .unwrap(),
        mock,
        settings,
        store_kind: kind,
        app_handle,
        hub,
        _temp: temp,
        _database: database,
    }
}

impl Drop for TestApp {
    /// Stops the server and the actor threads, so that nothing keeps the test's
    /// database connections open after the test.
    fn drop(&mut self) {
        // The stop command is sent at once; nothing to wait for here.
        drop(self.app_handle.stop(false));
        self.hub.shutdown_tenants();
    }
}

impl TestApp {
    /// Stops the server gracefully and starts a new one on the same store.
    pub async fn restart(self) -> TestApp {
        self.app_handle.stop(true).await;
        start(
            self.settings.clone(),
            self.store_kind,
            self.mock.clone(),
            self._temp.clone(),
            self._database.clone(),
        )
        .await
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.hub.store().clone()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(&self.operator_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let expected = documented_status(&method, path);
        let response = self.admin(method, path, body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, expected, "{path}: {body}");
        body
    }

    /// Adds a provider (the admin API's provider body).
    pub async fn add_provider(&self, provider: Value) -> Value {
        self.admin_json(reqwest::Method::POST, "/admin/v1/providers", Some(provider))
            .await
    }

    /// Sets the price of `model` (`provider/name`; the admin API's price body).
    pub async fn set_price(&self, model: &str, price: Value) -> Value {
        let path = format!("/admin/v1/prices/{model}");
        self.admin_json(reqwest::Method::PUT, &path, Some(price))
            .await
    }

    /// Adds the mock as provider `mock` and prices `mock/<model>` for each model.
    pub async fn setup_provider(&self, models: &[(&str, &str, &str, Option<u32>)]) {
        self.add_provider(json!({"name": "mock", "kind": "openai", "base_url": self.mock.base_url, "api_key": MOCK_API_KEY}))
            .await;
        for (model, input, output, max_output) in models {
            let mut body = json!({"input_per_mtok": input, "output_per_mtok": output});
            if let Some(m) = max_output {
                body["max_output_tokens"] = json!(m);
            }
            self.set_price(&format!("mock/{model}"), body).await;
        }
    }

    /// The mock as provider `mock` and again as `backup`: `mock/fail-503`
    /// (1 and 2 credits per Mtok) always fails and falls back to
    /// `backup/gpt-mock` (3 and 4), which answers.
    pub async fn setup_fallback_to_backup(&self) {
        self.setup_provider(&[]).await;
        self.add_provider(json!({"name": "backup", "kind": "openai", "base_url": self.mock.base_url, "api_key": MOCK_API_KEY}))
            .await;
        self.set_price(
            "backup/gpt-mock",
            json!({"input_per_mtok": "3", "output_per_mtok": "4"}),
        )
        .await;
        self.set_price(
            "mock/fail-503",
            json!({"input_per_mtok": "1", "output_per_mtok": "2", "fallbacks": ["backup/gpt-mock"]}),
        )
        .await;
    }

    pub async fn create_tenant(&self, initial_credits: &str) -> String {
        let body = self
            .admin_json(
                reqwest::Method::POST,
                "/admin/v1/tenants",
                Some(json!({"name": "acme", "initial_credits": initial_credits})),
            )
            .await;
        body["tenant_id"].as_str().unwrap().to_string()
    }

    pub async fn issue_key(&self, tenant_id: &str, role: &str) -> String {
        let body = self
            .admin_json(
                reqwest::Method::POST,
                &format!("/admin/v1/tenants/{tenant_id}/keys"),
                Some(json!({"name": "app", "role": role})),
            )
            .await;
        body["key"].as_str().unwrap().to_string()
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.address))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A tenant with `credits` and one key of `role` for it: `(tenant, key)`.
    pub async fn tenant_with_key(&self, credits: &str, role: &str) -> (String, String) {
        let tenant = self.create_tenant(credits).await;
        let key = self.issue_key(&tenant, role).await;
        (tenant, key)
    }

    /// `GET path` with `key`.
    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with `key`, asking for CSV.
    pub async fn get_csv(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(key)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with `key`, which must answer 200 with JSON.
    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        let response = self.get(key, path).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// `POST path` with `key` and a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Waits until the tenant holds nothing (its requests settled or released)
    /// and returns that balance.
    pub async fn wait_until_nothing_held(&self, tenant_id: &str) -> Value {
        wait_for(WAIT_DEADLINE, "the holds settled or released", || async {
            let balance = self.balance(tenant_id).await;
            (balance["held"] == "0").then_some(balance)
        })
        .await
    }

    pub async fn balance(&self, tenant_id: &str) -> Value {
        self.admin_json(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant_id}/balance"),
            None,
        )
        .await
    }

    /// Brings every projection up to the events committed before this call.
    ///
    /// On PostgreSQL the projector reads an event only once every transaction
    /// older than its own has ended (the log-order rule), so an event committed
    /// just now can stay invisible while, say, the live projector's own commit
    /// is open. Wait for the transactions that began before now, then catch up.
    /// The wait is server-wide, not this database's only: the store's reader
    /// takes its horizon from the server's snapshot (transaction ids are
    /// shared by every database), so another test's open transaction holds
    /// back this test's events too, and a narrower wait would return early.
    pub async fn projections_caught_up(&self) {
        if let Some(url) = &self.settings.database_url {
            log_readable_up_to_now(url).await;
        }
        self.hub.projector().catch_up().await.unwrap();
    }
}

/// The status docs/api.md gives a successful operator call: 201 for the POSTs
/// that create (a tenant, a key, a provider, a credential), 200 for the rest.
fn documented_status(method: &reqwest::Method, path: &str) -> reqwest::StatusCode {
    let without_query = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = without_query
        .trim_start_matches("/admin/v1/")
        .split('/')
        .collect();
    let creates = *method == reqwest::Method::POST
        && matches!(
            segments.as_slice(),
            ["tenants"] | ["tenants", _, "keys"] | ["providers"] | ["providers", _, "credentials"]
        );
    if creates {
        reqwest::StatusCode::CREATED
    } else {
        reqwest::StatusCode::OK
    }
}

/// A chat request body to the mock.
pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": format!("mock/{model}"), "messages": [{"role": "user", "content": "Say hello"}], "stream": stream})
}

/// How long a test waits for background work (a settlement, a projection, a
/// sweep) before failing: far more than the work takes on a loaded machine.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// How often a wait looks again.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// Looks at `probe` every few ms until it gives a value, for at most `within`;
/// `None` if it never did (for a caller that fails in its own words).
pub async fn poll_for<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Waits until `probe` gives a value and returns it; fails the test naming
/// `what` once `within` has passed without one.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_for(within, probe)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {within:?}"))
}

/// Waits until `condition` holds; fails the test naming `what` once `within`
/// has passed.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let probe = || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    };
    wait_for(within, what, probe).await
}

/// A free port on 127.0.0.1 (for a hub process started with `--listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves a mock upstream's routes on a fresh port of 127.0.0.1 (one worker,
/// no signal handling, on the test's runtime); returns the port.
pub fn serve_mock(routes: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    actix_web::rt::spawn(server);
    port
}

/// An amount the hub answered (a decimal string of credits) as [`Credits`].
pub fn credits_of(value: &Value) -> Credits {
    Credits::parse(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a string: {value}")),
    )
    .unwrap()
}

/// The balance shows nothing spent and nothing held.
pub fn assert_charged_nothing(balance: &Value) {
    assert_eq!(
        (balance["spent"].as_str(), balance["held"].as_str()),
        (Some("0"), Some("0")),
        "{balance}"
    );
}

/// Every event of the tenant, in order.
pub async fn tenant_events(app: &TestApp, tenant: &str) -> Vec<aigne_hub::store::StoredEvent> {
    app.store()
        .tenant_events(tenant.parse().unwrap(), 0)
        .await
        .unwrap()
}

/// The usage and cost of each settlement of the tenant, in order.
pub async fn settlements(app: &TestApp, tenant: &str) -> Vec<(Usage, Credits)> {
    tenant_events(app, tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::UsageSettled {
                usage, cost_pico, ..
            } => Some((usage, cost_pico)),
            _ => None,
        })
        .collect()
}

/// An SSE body as (event name, data) pairs; every frame is named and its data's
/// `type` is its name, as in Anthropic's streams.
pub fn anthropic_events(text: &str) -> Vec<(String, Value)> {
    assert!(text.ends_with("\n\n"), "{text}");
    text.trim_end()
        .split("\n\n")
        .map(|frame| {
            let (event, data) = frame.split_once('\n').expect("two lines per frame");
            let name = event.strip_prefix("event: ").expect("an event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "{frame}");
            (name.to_string(), data)
        })
        .collect()
}

/// The names of [`anthropic_events`]' events.
pub fn event_names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// The `x-request-id` header the hub sets on every answer.
pub fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap()
        .to_string()
}

/// Runs a test body once per store.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[actix_web::test]
            async fn sqlite() {
                ($body)($crate::helpers::StoreKind::Sqlite).await
            }
            #[actix_web::test]
            async fn postgres() {
                ($body)($crate::helpers::StoreKind::Postgres).await
            }
        }
    };
}

/// Waits until PostgreSQL's log reader sees every transaction committed before
/// this call. It reads below the oldest transaction still running on the whole
/// server (`pg_snapshot_xmin`), and other tests' databases share that server,
/// so one of their open transactions can hide this test's events for a while.
pub async fn log_readable_up_to_now(database_url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let now: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let conn = tokio::sync::Mutex::new(conn);
    let what = format!("the transactions older than {now} ended");
    wait_until(WAIT_DEADLINE, &what, || async {
        let oldest_running: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *conn.lock().await)
                .await
                .unwrap();
        oldest_running > now
    })
    .await;
}

/// Replays the whole store into fresh projections: every one equals the live
/// one and every tenant's hash chain is intact.
pub async fn replay_equals_live(app: &TestApp) {
    app.projections_caught_up().await;
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");
    assert!(report.chains_intact, "{report:?}");
}

/// A call with `key` as its bearer: the status and the JSON body (null when
/// the body is not JSON).
pub async fn send_as(
    app: &TestApp,
    method: reqwest::Method,
    key: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
