//! The production store: PostgreSQL through postgres-es. Several hub processes may
//! share one database; optimistic concurrency on each tenant's stream keeps them
//! honest.

use super::codec::{self, EventMetadata, StoredEvent};
use super::common_sql::{impl_store, INSERT_CREDENTIAL};
use super::{
    CredentialRow, LoadedTenant, LogPosition, PriceRow, ProjectionCommit, ProviderRow, Store,
    StoreError, DB_ACQUIRE_TIMEOUT_MS, SNAPSHOT_SCHEMA_VERSION,
};
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use domain::tenant::{Tenant, TenantEvent};
use domain::{InstanceId, TenantId};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::time::Duration;

/// Connections per hub process; PostgreSQL's default limit is 100 for all of them.
pub const PG_MAX_CONNECTIONS: u32 = 16;

pub struct PgStore {
    pool: PgPool,
    repo: PostgresEventRepository,
}

impl PgStore {
    /// Appends a tenant's serialized events (`append`): one multi-row `INSERT`,
    /// atomic on its own, instead of postgres-es's `BEGIN`, one `INSERT` per
    /// event and `COMMIT` — the same rows (the table fills `position` in row
    /// order and one `txid` for all), in one round trip. A taken sequence number
    /// is a unique violation: `Conflict`, as with postgres-es.
    async fn persist_tenant_events(&self, events: &[SerializedEvent]) -> Result<(), StoreError> {
        /// Columns bound per event.
        const COLUMNS: usize = 7;
        if events.is_empty() {
            return Ok(());
        }
        let values: Vec<String> = (0..events.len())
            .map(|i| {
                let n = i * COLUMNS;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
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
        let sql = format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES {}",
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
        match query.execute(&self.pool).await {
            Ok(_) => Ok(()),
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

    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(PG_MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_millis(DB_ACQUIRE_TIMEOUT_MS))
            // sqlx pings every connection it hands out by default: one more round
            // trip on each query of the request path. A connection that did break
            // fails its query, and sqlx then drops it from the pool.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let repo = PostgresEventRepository::new(pool.clone());
        Ok(Self { pool, repo })
    }
}

impl_store!(PgStore, "postgres");

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
