//! The production store: PostgreSQL through postgres-es. Several hub processes may
//! share one database; optimistic concurrency on each tenant's stream keeps them
//! honest.

use super::codec::{self, EventMetadata, StoredEvent};
use super::common_sql::{impl_store, INSERT_CREDENTIAL};
use super::pg_local::LocalConnections;
use super::{
    CredentialRow, Durability, LoadedTenant, LogPosition, PriceRow, ProjectionCommit, ProviderRow,
    Store, StoreError, DB_ACQUIRE_TIMEOUT_MS, SNAPSHOT_SCHEMA_VERSION,
};
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use domain::tenant::{Tenant, TenantEvent};
use domain::{InstanceId, TenantId};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use std::str::FromStr;
use std::time::Duration;

/// Connections per hub process; PostgreSQL's default limit is 100 for all of them.
pub(crate) const PG_MAX_CONNECTIONS: u32 = 16;
/// Connections per hub process for appends that do not wait for the disk
/// ([`Durability::HoldsOnly`]), on top of [`PG_MAX_CONNECTIONS`].
pub(crate) const PG_HOLDS_MAX_CONNECTIONS: u32 = 8;
/// Connections per hub process that appends keep per thread (see `pg_local`), for
/// each durability; past these, appends use the pools above.
pub(crate) const PG_APPEND_LOCAL_CONNECTIONS_MAX: usize = 8;

pub struct PgStore {
    pool: PgPool,
    /// Sessions with `synchronous_commit = off`: their commits return without
    /// waiting for the WAL flush (see [`Durability`]).
    holds_pool: PgPool,
    /// The appends' own connections, one set per durability (see `pg_local`).
    append_durable: LocalConnections,
    append_holds: LocalConnections,
    repo: PostgresEventRepository,
    /// For the change listener's own connection (see `changes`).
    listen_options: PgConnectOptions,
}

impl PgStore {
    /// Appends a tenant's serialized events (`append`): one `INSERT`, atomic on
    /// its own, instead of postgres-es's `BEGIN`, one `INSERT` per event and
    /// `COMMIT` — the same rows (the table fills `position` in row order and one
    /// `txid` for all), in one round trip. A taken sequence number is a unique
    /// violation: `Conflict`, as with postgres-es. So is a missing predecessor:
    /// the rows are inserted only if the tenant's event before the first one
    /// exists, which the same statement checks.
    async fn persist_tenant_events(
        &self,
        events: &[SerializedEvent],
        durability: Durability,
    ) -> Result<(), StoreError> {
        /// Columns bound per event.
        const COLUMNS: usize = 7;
        let Some(first) = events.first() else {
            return Ok(());
        };
        debug_assert!(
            events
                .iter()
                .enumerate()
                .all(|(i, e)| e.aggregate_id == first.aggregate_id
                    && e.sequence == first.sequence + i)
        );
        let values: Vec<String> = (0..events.len())
            .map(|i| {
                let n = i * COLUMNS;
                format!(
                    "(${}, ${}, ${}::bigint, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6,
                    n + 7
                )
            })
            .collect();
        // $1, $2, $3: the first row's aggregate type, id and sequence.
        let sql = format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT * FROM (VALUES {}) AS appended
              WHERE $3::bigint = 1
                 OR EXISTS (SELECT 1 FROM events
                             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3::bigint - 1)",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for event in events {
            query = query
                .bind(<Tenant as cqrs_es::Aggregate>::TYPE)
                .bind(event.aggregate_id.as_str())
                .bind(event.sequence as i64)
                .bind(&event.event_type)
                .bind(&event.event_version)
                .bind(&event.payload)
                .bind(&event.metadata);
        }
        let (local, pool) = match durability {
            Durability::Durable => (&self.append_durable, &self.pool),
            Durability::HoldsOnly => (&self.append_holds, &self.holds_pool),
        };
        let result = match local.lease().await {
            Some(mut lease) => {
                let result = query.execute(lease.conn()).await;
                lease.finish(&result);
                result
            }
            None => query.execute(pool).await,
        };
        match result {
            Ok(done) if done.rows_affected() == events.len() as u64 => Ok(()),
            Ok(done) => {
                // The statement inserts every row or none.
                debug_assert_eq!(done.rows_affected(), 0);
                tracing::warn!(
                    aggregate_id = %first.aggregate_id,
                    sequence = first.sequence,
                    "append refused: the event before it is missing (lost in a database crash?); reloading the tenant"
                );
                Err(StoreError::Conflict)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Prepares a projection commit (see `commit_projection`).
    async fn relax_projection_durability(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        // Projections are rebuilt from events, and the checkpoint moves in the same
        // transaction as the rows, so a projection commit lost in a crash is simply
        // redone. Not waiting for its WAL flush keeps it off the disk's critical
        // path, which the request path's own commits (holds, settlements) need.
        sqlx::query("SET LOCAL synchronous_commit TO OFF")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        let pool_options = |max_connections| {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_millis(DB_ACQUIRE_TIMEOUT_MS))
                // sqlx pings every connection it hands out by default: one more
                // round trip on each query of the request path. A connection that
                // did break fails its query, and sqlx then drops it from the pool.
                .test_before_acquire(false)
        };
        let pool = pool_options(PG_MAX_CONNECTIONS)
            .connect_with(options.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let holds_options = options.clone().options([("synchronous_commit", "off")]);
        let holds_pool =
            pool_options(PG_HOLDS_MAX_CONNECTIONS).connect_lazy_with(holds_options.clone());
        let repo = PostgresEventRepository::new(pool.clone());
        Ok(Self {
            listen_options: options.clone(),
            pool,
            holds_pool,
            append_durable: LocalConnections::new(options, PG_APPEND_LOCAL_CONNECTIONS_MAX),
            append_holds: LocalConnections::new(holds_options, PG_APPEND_LOCAL_CONNECTIONS_MAX),
            repo,
        })
    }
}

impl_store!(PgStore, "postgres");

impl PgStore {
    /// Other writers' changes arrive by `NOTIFY` (`poll_ms` is not needed), on
    /// a thread of its own that stops once `changes` is closed.
    async fn watch_changes(&self, changes: tokio::sync::mpsc::Sender<super::Change>, poll_ms: u64) {
        let _ = poll_ms;
        super::changes::listen_pg(self.listen_options.clone(), changes)
    }
}

/// The log read behind `read_log` (public so a test can check its plan: it must
/// walk `events_log_order_by_type` whatever the table's statistics say).
pub const READ_LOG_SQL: &str =
    "SELECT txid, position, aggregate_id, sequence, event_type, event_version, payload, metadata
   FROM events
  WHERE aggregate_type = 'Tenant'
    AND (txid, position) > ($1, $2)
    AND (txid, position) <= ($3, $4)
    AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
  ORDER BY txid, position
  LIMIT $5";

impl PgStore {
    async fn read_log_in_order(
        &self,
        after: LogPosition,
        until: Option<LogPosition>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // `position` comes from a sequence at insert time, so a reader that simply
        // followed it could step past a transaction that is still open and later
        // commits a smaller position, skipping its events forever. Rows whose
        // transaction id is below the oldest transaction still running are final,
        // and no new row can ever appear below that line: read only those, in
        // (txid, position) order.
        let until = until.unwrap_or(LogPosition {
            txid: i64::MAX,
            position: i64::MAX,
        });
        let rows = sqlx::query(READ_LOG_SQL)
            .bind(after.txid)
            .bind(after.position)
            .bind(until.txid)
            .bind(until.position)
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
                let serialized = SerializedEvent::new(
                    aggregate_id,
                    sequence as usize,
                    "Tenant".to_string(),
                    r.get("event_type"),
                    r.get("event_version"),
                    r.get("payload"),
                    r.get("metadata"),
                );
                let (event, metadata) = codec::deserialize(serialized)?;
                Ok(StoredEvent {
                    log_position: LogPosition {
                        txid: r.get("txid"),
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
