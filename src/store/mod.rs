//! Storage behind one interface: PostgreSQL for production and scale-out, an
//! embedded SQLite file for `cargo run` on a fresh machine.
//!
//! Events go through cqrs-es's `PersistedEventRepository` (postgres-es and
//! sqlite-es), which gives optimistic concurrency on `(aggregate, sequence)`;
//! on PostgreSQL a tenant's events are appended with one multi-row `INSERT` of
//! our own (same table, same rows, same conflict), one round trip per commit.
//! We do not use cqrs-es's aggregate or snapshot stores: in 0.5.0 they apply each
//! event twice. The tenant actor keeps its aggregate in memory instead and this
//! module adds what the repositories lack: our own snapshots, a global log position
//! that is safe to catch up on, and the tables of operator configuration and
//! projections.

mod changes;
mod codec;
mod common_sql;
mod hash_chain;
mod pg_local;
mod postgres;
mod price_book;
mod sqlite;

pub(crate) use changes::Change;
pub use codec::{chain, decode_raw, EventMetadata, StoredEvent};
pub use hash_chain::{verify_chain, ChainBreak, ChainReport, RawEvent, GENESIS_HASH};
pub use postgres::{PgStore, READ_LOG_SQL as PG_READ_LOG_SQL};
pub use price_book::StoredPriceBookEvent;
pub(crate) use sqlite::SqliteStore;

use async_trait::async_trait;
use domain::tenant::{Tenant, TenantEvent};
use domain::{InstanceId, TenantId};
use std::path::Path;
use std::sync::Arc;

/// Largest number of events read from the log in one query (bounds memory).
pub(crate) const LOG_PAGE_MAX_EVENTS: i64 = 5_000;
/// A snapshot is written after this many new events of a tenant, so that loading a
/// cold tenant reads at most this many events after the snapshot.
pub const SNAPSHOT_EVERY_EVENTS: usize = 1_000;
/// Bumped whenever `Tenant`'s serialized shape changes; older snapshots are ignored
/// (the tenant is then rebuilt from its events). 2: a hold names its project.
pub(crate) const SNAPSHOT_SCHEMA_VERSION: i64 = 2;
/// Longest wait for a database connection before a request fails with 503.
pub(crate) const DB_ACQUIRE_TIMEOUT_MS: u64 = 5_000;

/// How long [`EventLog::append`] waits before it returns: until its events are on
/// disk, or only until every reader can see them.
///
/// Why holds may skip the wait: a hold only ever reduces what a tenant may spend,
/// and nothing a client receives rests on a hold alone. Its request ends in a
/// settlement or a release, appended `Durable` before the client gets its answer,
/// and PostgreSQL flushes its write-ahead log in order, so that flush also makes
/// the hold durable. Until then a hold is committed and visible to every process
/// (it survives the hub being killed), and PostgreSQL's WAL writer flushes it
/// within 3 × `wal_writer_delay` (600 ms by default). Only a crash of the
/// database itself (or of the machine) in that window can lose it; and then
/// everything committed after it is gone too, so the log stays a gap-free
/// prefix: the append after such a loss finds its predecessor missing and
/// fails with `Conflict` (see [`EventLog::append`]), the tenant's actor reloads, and
/// the request whose hold was lost fails without an answer and without a charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Returns once the events survive a crash of the database or the machine.
    Durable,
    /// Returns once the events are committed and visible; flushed to disk shortly
    /// after, or by the next `Durable` append. Only for batches of holds.
    HoldsOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the same tenant first (optimistic concurrency).
    #[error("concurrent write to the same tenant")]
    Conflict,
    #[error("a provider named {0:?} already exists")]
    DuplicateName(String),
    /// The database driver failed: a lost connection, a full pool, a refused
    /// statement. Kept as the driver's error so a caller can inspect it; sqlx
    /// prints no connection URL or password in it.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// The event store failed other than by a lost optimistic lock (which is
    /// `Conflict`).
    #[error("database error: {0}")]
    Persistence(#[source] cqrs_es::persist::PersistenceError),
    #[error("stored data could not be decoded: {0}")]
    Corrupt(String),
}

impl From<cqrs_es::persist::PersistenceError> for StoreError {
    fn from(e: cqrs_es::persist::PersistenceError) -> Self {
        match e {
            cqrs_es::persist::PersistenceError::OptimisticLockError => StoreError::Conflict,
            other => StoreError::Persistence(other),
        }
    }
}

/// A point in the global event log. Ordered: `(txid, position)`. On SQLite `txid` is
/// always 0 and `position` is the rowid.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct LogPosition {
    pub(crate) txid: i64,
    pub(crate) position: i64,
}

/// A tenant as loaded from the store: its state and the sequence of its last event.
pub struct LoadedTenant {
    pub state: Tenant,
    pub version: usize,
    pub events_since_snapshot: usize,
    /// The hash of the tenant's last event (`None` before the first chained one).
    pub chain_head: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ProviderRow {
    pub(crate) provider_id: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) base_url: String,
    pub(crate) region: Option<String>,
    pub(crate) created_at: String,
}

#[derive(Clone, Debug)]
pub struct CredentialRow {
    pub(crate) credential_id: String,
    pub(crate) provider_id: String,
    /// Share of requests in weighted rotation.
    pub(crate) weight: i64,
    /// The sealed credential (JSON inside AES-SIV; see `crypto`).
    pub(crate) secret_ciphertext: String,
    /// Set when the upstream rejected it (401/403); it is then skipped.
    pub(crate) disabled_reason: Option<String>,
    pub(crate) created_at: String,
}

#[derive(Clone, Debug)]
pub struct PriceRow {
    pub model: String,
    pub input_pico_per_token: String,
    pub output_pico_per_token: String,
    /// `None`: cache reads/writes cost the input rate.
    pub cache_read_pico_per_token: Option<String>,
    pub cache_write_pico_per_token: Option<String>,
    /// `None`: images are not priced (not an image model).
    pub image_pico_per_image: Option<String>,
    /// JSON array of fallback model ids, tried in order.
    pub fallbacks: Option<String>,
    pub max_output_tokens: i64,
    pub version: i64,
    pub updated_at: String,
}

/// One projection's part of [`ProjectionRows::commit_projections`]: move its checkpoint
/// from `from` to `to` and upsert `rows` (key, payload).
#[derive(Clone, Copy, Debug)]
pub struct ProjectionCommit<'a> {
    pub(crate) projection: &'a str,
    pub(crate) from: LogPosition,
    pub(crate) to: LogPosition,
    pub(crate) rows: &'a [(String, String)],
}

/// The tenants' event streams and the price book's: what is appended, read in
/// log order, and snapshotted.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Loads a tenant from its latest snapshot plus the events after it.
    async fn load_tenant(&self, tenant_id: TenantId) -> Result<LoadedTenant, StoreError>;
    /// Appends events numbered from `first_sequence` in one transaction; `Conflict` if
    /// any of those sequence numbers is taken, or if the event before
    /// `first_sequence` is missing (the writer's view is ahead of the log: see
    /// [`Durability`]). Nothing is written on an error.
    async fn append(
        &self,
        tenant_id: TenantId,
        first_sequence: usize,
        events: &[(TenantEvent, EventMetadata)],
        durability: Durability,
    ) -> Result<(), StoreError>;
    /// The price book's events with their sequence numbers, oldest first.
    async fn price_book_events(&self) -> Result<Vec<StoredPriceBookEvent>, StoreError>;
    /// Appends price book events numbered from `first_sequence`; `Conflict` if
    /// another writer took one of those numbers first.
    async fn append_price_book(
        &self,
        first_sequence: usize,
        events: &[domain::price_book::PriceBookEvent],
        recorded_at: chrono::DateTime<chrono::Utc>,
        actor: &domain::ChangedBy,
    ) -> Result<(), StoreError>;
    /// Up to `limit` of a tenant's events after `after_sequence` exactly as stored
    /// (payload and metadata JSON), in sequence order: what the audit chain covers.
    async fn raw_tenant_events(
        &self,
        tenant_id: TenantId,
        after_sequence: usize,
        limit: usize,
    ) -> Result<Vec<RawEvent>, StoreError>;
    /// Up to `limit` of a tenant's events before `before_sequence` (from its
    /// newest, when `None`), newest first: for finding recent events without
    /// reading a long stream from its start. (Their `log_position` is left zero.)
    async fn tenant_events_backward(
        &self,
        tenant_id: TenantId,
        before_sequence: Option<usize>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// The sequence of a tenant's newest event (0: none): what a refusal is
    /// checked against, so that it is never made from a stale view.
    async fn tenant_head(&self, tenant_id: TenantId) -> Result<usize, StoreError>;
    /// Every tenant with at least one event.
    async fn tenant_ids(&self) -> Result<Vec<TenantId>, StoreError>;
    /// One tenant's events after `after_sequence`, in sequence order. (Their
    /// `log_position` is not read and left zero.)
    async fn tenant_events(
        &self,
        tenant_id: TenantId,
        after_sequence: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    async fn save_snapshot(
        &self,
        tenant_id: TenantId,
        version: usize,
        state: &Tenant,
    ) -> Result<(), StoreError>;
    /// Events after `after` in log order, never past an event whose transaction could
    /// still be in flight, and not past `until`.
    async fn read_log(
        &self,
        after: LogPosition,
        until: Option<LogPosition>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError>;
}

/// Operator configuration: providers, their credentials, the old price table,
/// and the version that tells readers it changed.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Inserts a provider with its first credential, atomically.
    async fn insert_provider(
        &self,
        row: &ProviderRow,
        credential: &CredentialRow,
    ) -> Result<(), StoreError>;
    async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError>;
    async fn insert_credential(&self, credential: &CredentialRow) -> Result<(), StoreError>;
    async fn list_credentials(&self) -> Result<Vec<CredentialRow>, StoreError>;
    /// Disables (`Some(reason)`) or re-enables (`None`) a credential; false if unknown.
    async fn set_credential_disabled(
        &self,
        credential_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Sets a model's price; returns the new price version.
    async fn upsert_price(&self, row: &PriceRow) -> Result<i64, StoreError>;
    async fn list_prices(&self) -> Result<Vec<PriceRow>, StoreError>;
    /// Counts every change to providers, credentials and the price book, by
    /// whichever writer (kept by triggers).
    async fn catalog_version(&self) -> Result<i64, StoreError>;
    /// Sends other writers' changes to `changes` until it is closed: pushed by
    /// the database on PostgreSQL (from a thread of its own; returns at once),
    /// polled every `poll_ms` on SQLite (returns when `changes` is closed). See
    /// `changes`.
    async fn watch(&self, changes: tokio::sync::mpsc::Sender<Change>, poll_ms: u64);
}

/// Projection rows and their checkpoints, namespaced by projection name.
#[async_trait]
pub trait ProjectionRows: Send + Sync {
    async fn projection_rows(&self, projection: &str) -> Result<Vec<(String, String)>, StoreError>;
    async fn projection_rows_by_keys(
        &self,
        projection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError>;
    async fn projection_checkpoint(&self, projection: &str) -> Result<LogPosition, StoreError>;
    /// Writes rows and moves the checkpoint from `from` to `to` atomically. Returns
    /// false (and writes nothing) if the checkpoint was no longer `from`: another
    /// process advanced it.
    async fn commit_projection(
        &self,
        projection: &str,
        from: LogPosition,
        to: LogPosition,
        rows: &[(String, String)],
    ) -> Result<bool, StoreError>;
    /// [`ProjectionRows::commit_projection`] for several projections in one transaction:
    /// every checkpoint moves, with its rows, or nothing is written (false).
    async fn commit_projections(
        &self,
        commits: &[ProjectionCommit<'_>],
    ) -> Result<bool, StoreError>;
    async fn clear_projection(&self, projection: &str) -> Result<(), StoreError>;
}

/// The hub processes that are alive, by heartbeat.
#[async_trait]
pub trait LiveSet: Send + Sync {
    async fn heartbeat(&self, instance_id: InstanceId, now_ms: i64) -> Result<(), StoreError>;
    async fn live_instances(&self, seen_since_ms: i64) -> Result<Vec<InstanceId>, StoreError>;
    async fn remove_instance(&self, instance_id: InstanceId) -> Result<(), StoreError>;
}

/// Every role, behind one handle (`Arc<dyn Store>`); a caller that needs only
/// some of them takes those (`&dyn EventLog`, or a bound on the roles).
pub trait Store: EventLog + CatalogStore + ProjectionRows + LiveSet {
    fn kind(&self) -> &'static str;
}

/// Opens the store named by `database_url`, or the embedded SQLite file in
/// `data_dir` when there is none, and applies migrations.
pub async fn open(database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PgStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Arc::new(SqliteStore::connect_url(url).await?))
        }
        Some(_) => {
            anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite:")
        }
        None => {
            std::fs::create_dir_all(data_dir)?;
            Ok(Arc::new(
                SqliteStore::open_file(&data_dir.join("aigne-hub.sqlite")).await?,
            ))
        }
    }
}
