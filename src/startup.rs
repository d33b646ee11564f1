//! Builds the hub and its HTTP server; reports the port it really bound (tests
//! bind port 0).

use crate::actors::TenantRegistry;
use crate::catalog::Catalog;
use crate::config::{self, Settings};
use crate::hub::Hub;
use crate::notify::Notifier;
use crate::projector::Projector;
use crate::providers::Upstream;
use crate::routes;
use crate::store::{self, Store};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use domain::InstanceId;
use std::net::TcpListener;
use std::sync::Arc;
use tokio::sync::Notify;

/// Seconds in-flight requests get to finish on shutdown.
pub const SHUTDOWN_GRACE_SECS: u64 = 30;

/// Two rustls crypto providers are compiled in with this dependency set; TLS
/// builders panic unless one is chosen before first use.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the hub core (store, actors, catalog). Must run inside an actix System.
pub async fn build_hub(settings: &Settings) -> anyhow::Result<Arc<Hub>> {
    install_crypto_provider();
    let store: Arc<dyn Store> =
        store::open(settings.database_url.as_deref(), &settings.data_dir).await?;
    let secrets = Arc::new(config::master_key(settings)?);
    let (operator_token, _) = config::operator_token(settings)?;
    let wake = Arc::new(Notify::new());
    let instance_id = InstanceId::new_random();
    let hub = Hub {
        tenants: TenantRegistry::new(
            store.clone(),
            instance_id,
            settings.limits.clone(),
            settings.actor_threads,
            wake.clone(),
        ),
        catalog: Catalog::new(store.clone(), secrets.clone()),
        upstream: Upstream::new(&settings.limits)?,
        router: crate::routing::Router::default(),
        projector: Projector::new(store.clone(), wake),
        secrets,
        instance_id,
        limits: settings.limits.clone(),
        mode: settings.mode,
        operator_token,
        aigne: crate::aigne::AigneState::new(&settings.aigne, &settings.limits)?,
        store,
        clock: Default::default(),
    };
    let imported = hub.import_price_table().await?;
    if imported > 0 {
        tracing::info!(
            imported,
            "the old price table was moved into the price book"
        );
    }
    hub.catalog.refresh().await?;
    Ok(Arc::new(hub))
}

pub struct Application {
    port: u16,
    server: Server,
    hub: Arc<Hub>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Checked before anything starts: a URL without a secret is an error.
        settings.notify.target()?;
        let hub = build_hub(&settings).await?;
        let notifier = Notifier::new(hub.store.clone(), &settings.notify)?;
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::from(hub.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
        })
        .workers(settings.http_workers)
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .listen(listener)?
        .run();
        let mut background = vec![
            actix_web::rt::spawn(hub.projector.clone().run(
                settings.limits.projector_poll_ms,
                settings.limits.projector_batch_delay_ms,
            )),
            actix_web::rt::spawn(hub.clone().run_maintenance()),
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
        if let Err(e) = self.hub.store.remove_instance(self.hub.instance_id).await {
            tracing::warn!(error = %e, "could not withdraw this process from the live set");
        }
        self.hub.tenants.shutdown();
        result
    }
}
