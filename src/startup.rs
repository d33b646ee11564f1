//! Builds the hub and its HTTP server; reports the port it really bound (tests
//! bind port 0).

use crate::auth::random_secret;
use crate::config::{self, Settings};
use crate::crypto::SecretBox;
use crate::hub::Hub;
use crate::notify::Notifier;
use crate::projector::Projector;
use crate::routes;
use crate::store::{self, Store};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;

/// Seconds in-flight requests get to finish on shutdown.
pub(crate) const SHUTDOWN_GRACE_SECS: u64 = 30;

/// Two rustls crypto providers are compiled in with this dependency set; TLS
/// builders panic unless one is chosen before first use.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the hub core (store, actors, catalog). Must run inside an actix System.
pub(crate) async fn build_hub(settings: &Settings) -> anyhow::Result<Arc<Hub>> {
    install_crypto_provider();
    let store: Arc<dyn Store> =
        store::open(settings.database_url.as_deref(), &settings.data_dir).await?;
    let secrets = Arc::new(master_key(settings)?);
    let (operator_token, _) = operator_token(settings)?;
    let hub = Hub::new(settings, store, secrets, operator_token)?;
    let imported = hub
        .price_book(domain::ChangedBy::Hub)
        .import_price_table()
        .await
        .map_err(crate::error::HubError::from)?;
    if imported > 0 {
        tracing::info!(
            imported,
            "the old price table was moved into the price book"
        );
    }
    hub.catalog().refresh().await?;
    Ok(Arc::new(hub))
}

pub struct Application {
    port: u16,
    server: Server,
    hub: Arc<Hub>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Dropping it stops the live projector's thread.
    _projector: ProjectorThread,
}

/// The live projector, on a thread of its own at the lowest CPU priority, with
/// its own database connections.
///
/// Why: a pass is a burst of CPU (read the log, decode, fold, encode, write)
/// every `projector_batch_delay_ms`. Run beside the request path, it took a core
/// for several milliseconds at a time and every request then waited behind it:
/// the bursts made most of the request path's p99 (docs/benchmarks.md). At nice
/// 19 the scheduler hands the core back to the request path whenever it needs
/// it; the projector still gets the idle time, and projections are read models
/// that may lag. Its own connections, opened on its own runtime, keep the
/// request path's I/O from ever waiting on this thread (a sqlx connection is
/// driven by the runtime that opened it).
struct ProjectorThread {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ProjectorThread {
    fn start(settings: &Settings, wake: Arc<Notify>) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (database_url, data_dir) = (settings.database_url.clone(), settings.data_dir.clone());
        let (poll_ms, batch_delay_ms) = (
            settings.limits.projector_poll_ms,
            settings.limits.projector_batch_delay_ms,
        );
        let projection_settings = settings.limits.projection_settings();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("projector".into())
            .spawn(move || {
                lower_this_threads_priority();
                runtime.block_on(async move {
                    let store = match store::open(database_url.as_deref(), &data_dir).await {
                        Ok(store) => store,
                        Err(e) => {
                            tracing::error!(error = %e, "the projector cannot open the store; projections will not follow the log");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = Projector::new(store, wake, projections::registry(&projection_settings)).run(poll_ms, batch_delay_ms) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self { _stop: stop })
    }
}

/// Sets the calling thread's nice value to 19 (Linux: nice is per thread).
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    /// The lowest priority `setpriority` accepts.
    const NICE_LOWEST: libc::c_int = 19;
    // SAFETY: setpriority takes three integers by value and touches no memory of
    // ours, so no pointer or lifetime can be wrong; `0` names the calling thread,
    // which exists for the whole call. A failure is only a return value.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE_LOWEST) };
    if done != 0 {
        tracing::warn!(
            "could not lower the projector thread's priority; it runs at normal priority"
        );
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Checked before anything starts: a URL without a secret is an error.
        settings.notify.target()?;
        let aigne = web::Data::new(crate::ingress::aigne::AigneState::new(
            &settings.aigne,
            &settings.limits,
        )?);
        let hub = build_hub(&settings).await?;
        let notifier = Notifier::new(hub.store().clone(), &settings.notify)?;
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {}: {e}; choose another address with --listen or AIGNE_HUB_LISTEN (e.g. --listen 127.0.0.1:9090)",
                    settings.listen
                )
            })?;
        let port = listener.local_addr()?.port();
        let data = web::Data::from(hub.clone());
        let operator_token =
            web::Data::new(crate::auth::OperatorToken(hub.operator_token().to_string()));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(operator_token.clone())
                .app_data(aigne.clone())
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
                .wrap(actix_web::middleware::from_fn(routes::request_id_header))
        })
        .workers(settings.http_workers)
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .listen(listener)?
        .run();
        let projector = ProjectorThread::start(&settings, hub.projector().wake.clone())?;
        let mut background = vec![
            actix_web::rt::spawn(hub.clone().run_maintenance()),
            actix_web::rt::spawn(hub.clone().run_freshness()),
        ];
        // Low-balance notifications: only when a receiver is configured.
        if let Some(notifier) = notifier {
            background.push(actix_web::rt::spawn(notifier.run()));
        }
        Ok(Self {
            port,
            server,
            hub,
            background,
            _projector: projector,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until a stop signal (SIGINT/SIGTERM) or `ServerHandle::stop`, then
    /// lets in-flight requests finish and withdraws this process from the live set.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        for task in &self.background {
            task.abort();
        }
        // A pooled connection opened by an HTTP worker is driven by that worker's
        // runtime, gone by now: its query fails and sqlx drops it, so another
        // attempt gets another connection (opened here once the dead ones are
        // gone). More attempts than a pool has connections.
        const WITHDRAW_ATTEMPTS: usize = 20;
        for attempt in 1..=WITHDRAW_ATTEMPTS {
            match self
                .hub
                .live_set()
                .remove_instance(self.hub.instance_id())
                .await
            {
                Ok(()) => break,
                Err(e) if attempt == WITHDRAW_ATTEMPTS => {
                    tracing::warn!(error = %e, "could not withdraw this process from the live set")
                }
                Err(_) => {}
            }
        }
        self.hub.shutdown_tenants();
        result
    }
}

/// Reads a secret from `file_name` in the data dir, creating it with `generate` on
/// first start. Returns the secret and whether it was just created.
fn file_secret(
    data_dir: &Path,
    file_name: &str,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<(String, PathBuf, bool)> {
    config::create_private_dir(data_dir)?;
    let path = data_dir.join(file_name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            config::make_file_private(&path)?;
            Ok((text.trim().to_string(), path, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = generate();
            config::write_private_file(&path, &value)?;
            Ok((value, path, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The embedded store's file in the data dir.
pub(crate) const SQLITE_FILE_NAME: &str = "aigne-hub.sqlite";
const OPERATOR_TOKEN_FILE_NAME: &str = "operator_token";
const MASTER_KEY_FILE_NAME: &str = "master.key";

/// For every command but `serve`, which alone creates a store: fails, naming the
/// path looked in, unless the store and its master key already exist. The
/// operator token is not needed by commands; when it is neither set nor on
/// disk, a throwaway one is used so that nothing is written.
pub(crate) fn require_existing_store(settings: &mut Settings) -> anyhow::Result<()> {
    const HINT: &str = "start `aigne-hub serve` once to create a store, or point --data-dir \
        (AIGNE_HUB_DATA_DIR) or --database-url (DATABASE_URL) at the server's store";
    if let Some(path) = sqlite_path(settings) {
        let path = std::path::absolute(&path).unwrap_or(path);
        anyhow::ensure!(path.is_file(), "no hub store at {}: {HINT}", path.display());
    }
    if settings.master_key.is_none() {
        let path = settings.data_dir.join(MASTER_KEY_FILE_NAME);
        let path = std::path::absolute(&path).unwrap_or(path);
        anyhow::ensure!(
            path.is_file(),
            "no master key at {} and AIGNE_HUB_MASTER_KEY is unset: {HINT}",
            path.display()
        );
    }
    if settings.operator_token.is_none()
        && !settings.data_dir.join(OPERATOR_TOKEN_FILE_NAME).is_file()
    {
        settings.operator_token = Some(random_secret());
    }
    Ok(())
}

/// The SQLite file the settings name, if the store is SQLite.
fn sqlite_path(settings: &Settings) -> Option<PathBuf> {
    match settings.database_url.as_deref() {
        None => Some(settings.data_dir.join(SQLITE_FILE_NAME)),
        Some(url) => {
            let rest = url.strip_prefix("sqlite:")?;
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let path = rest.split('?').next().unwrap_or_default();
            (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
        }
    }
}

/// Where the operator token came from, for the startup banner.
pub(crate) enum TokenSource {
    Env,
    File { path: PathBuf, created: bool },
}

pub(crate) fn operator_token(settings: &Settings) -> anyhow::Result<(String, TokenSource)> {
    if let Some(token) = &settings.operator_token {
        return Ok((token.clone(), TokenSource::Env));
    }
    let (token, path, created) = file_secret(&settings.data_dir, OPERATOR_TOKEN_FILE_NAME, || {
        format!("aho_{}", random_secret())
    })?;
    Ok((token, TokenSource::File { path, created }))
}

pub(crate) fn master_key(settings: &Settings) -> anyhow::Result<SecretBox> {
    let text = match &settings.master_key {
        Some(text) => text.clone(),
        None => {
            file_secret(&settings.data_dir, MASTER_KEY_FILE_NAME, || {
                hex::encode(SecretBox::generate_master_key())
            })?
            .0
        }
    };
    let key = SecretBox::parse_master_key(&text)
        .map_err(|e| anyhow::anyhow!("AIGNE_HUB_MASTER_KEY: {e}"))?;
    Ok(SecretBox::new(&key)?)
}
