//! The embedded default store: one SQLite file through sqlite-es, so that
//! `cargo run` works on a fresh machine with nothing installed.

use super::codec::{self, EventMetadata, StoredEvent};
use super::common_sql::{impl_store, INSERT_CREDENTIAL};
use super::{
    CredentialRow, Durability, LoadedTenant, LogPosition, PriceRow, ProjectionCommit, ProviderRow,
    Store, StoreError, DB_ACQUIRE_TIMEOUT_MS, SNAPSHOT_SCHEMA_VERSION,
};
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use domain::tenant::{Tenant, TenantEvent};
use domain::{InstanceId, TenantId};
use sqlite_es::SqliteEventRepository;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// SQLite writes one transaction at a time; a few connections serve the readers.
pub(crate) const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// How long a writer waits for SQLite's lock before failing.
pub(crate) const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

pub(crate) struct SqliteStore {
    pool: SqlitePool,
    repo: SqliteEventRepository,
}

impl SqliteStore {
    /// Appends a tenant's serialized events in one transaction (`append`).
    /// Every commit waits for the disk here (`synchronous = FULL`), whatever the
    /// `durability`: one writer at a time leaves nothing to gain.
    async fn persist_tenant_events(
        &self,
        events: &[SerializedEvent],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let _ = durability;
        let Some(first) = events.first() else {
            return Ok(());
        };
        // A predecessor never disappears from a file synced on every commit, so
        // checking before the transaction is enough: this only catches a writer
        // whose view is ahead of the log, as PostgreSQL's append does.
        if first.sequence > 1 {
            let predecessor: Option<i64> = sqlx::query_scalar(
                "SELECT sequence FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
            )
            .bind(<Tenant as cqrs_es::Aggregate>::TYPE)
            .bind(first.aggregate_id.as_str())
            .bind(first.sequence as i64 - 1)
            .fetch_optional(&self.pool)
            .await?;
            if predecessor.is_none() {
                return Err(StoreError::Conflict);
            }
        }
        self.repo.persist::<Tenant>(events, None).await?;
        Ok(())
    }

    /// Prepares a projection commit (see `commit_projection`).
    async fn relax_projection_durability(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        // SQLite's durability is set per connection; projections commit like the rest.
        let _ = tx;
        Ok(())
    }

    /// Opens (or creates) the store in the data dir. The dir is private (0700)
    /// and the database file 0600 before SQLite opens it: SQLite gives its `-wal`
    /// and `-shm` files the database file's mode. Files from an older version
    /// are tightened the same way.
    pub(crate) async fn open_file(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::config::create_private_dir(dir)?;
        }
        Self::create_private_file(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = std::path::PathBuf::from(side);
            if side.exists() {
                crate::config::make_file_private(&side)?;
            }
        }
        Self::connect_options(SqliteConnectOptions::new().filename(path)).await
    }

    /// Creates the database file empty with mode 0600 if it does not exist, and
    /// makes it 0600 if it does. An existing file is never opened here: closing
    /// any descriptor of a database file drops every POSIX lock this process
    /// holds on it, so opening one while another store of this process (the
    /// projector's) has it open would break SQLite's locking.
    fn create_private_file(path: &Path) -> anyhow::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                crate::config::make_file_private(path)
            }
            Err(e) => Err(anyhow::anyhow!("cannot create {}: {e}", path.display())),
        }
    }

    pub(crate) async fn connect_url(url: &str) -> anyhow::Result<Self> {
        Self::connect_options(SqliteConnectOptions::from_str(url)?).await
    }

    async fn connect_options(options: SqliteConnectOptions) -> anyhow::Result<Self> {
        // WAL lets readers run beside the writer; FULL sync makes a committed
        // transaction survive power loss, not only a killed process.
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS));
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_millis(DB_ACQUIRE_TIMEOUT_MS))
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the SQLite store: {e}"))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let repo = SqliteEventRepository::new(pool.clone());
        Ok(Self { pool, repo })
    }
}

impl_store!(SqliteStore, "sqlite");

impl SqliteStore {
    async fn read_log_in_order(
        &self,
        after: LogPosition,
        until: Option<LogPosition>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // One writer at a time: rowid order is commit order, nothing can appear behind
        // a position already read.
        let until = until.map(|u| u.position).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT rowid AS position, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events
              WHERE aggregate_type = 'Tenant' AND rowid > $1 AND rowid <= $2
              ORDER BY rowid
              LIMIT $3",
        )
        .bind(after.position)
        .bind(until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let sequence: i64 = r.get("sequence");
                let aggregate_id: String = r.get("aggregate_id");
                let tenant_id: TenantId = aggregate_id
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("tenant id {aggregate_id:?}")))?;
                let payload: String = r.get("payload");
                let metadata: String = r.get("metadata");
                let parse = |s: &str| {
                    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
                };
                let serialized = SerializedEvent::new(
                    aggregate_id,
                    sequence as usize,
                    "Tenant".to_string(),
                    r.get("event_type"),
                    r.get("event_version"),
                    parse(&payload)?,
                    parse(&metadata)?,
                );
                let (event, metadata) = codec::deserialize(serialized)?;
                Ok(StoredEvent {
                    log_position: LogPosition {
                        txid: 0,
                        position: r.get("position"),
                    },
                    tenant_id,
                    sequence: sequence as usize,
                    event,
                    metadata,
                })
            })
            .collect()
    }
}

impl SqliteStore {
    /// SQLite cannot notify: other processes' appends are polled every `poll_ms`.
    async fn watch_changes(&self, changes: tokio::sync::mpsc::Sender<super::Change>, poll_ms: u64) {
        super::changes::poll_sqlite(self.pool.clone(), changes, poll_ms).await
    }
}
