//! Other writers' changes, as the store reports them to the hub (see
//! [`super::CatalogStore::watch`]): how every process sees every change.
//!
//! PostgreSQL pushes them: triggers (migrations/postgres/0003) notify at commit,
//! whoever wrote (hub processes and the CLI), and one connection per process
//! listens. SQLite has no notifications: the newest events are polled instead.

use super::StoreError;
use domain::{InstanceId, TenantId};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::SqlitePool;
use std::time::Duration;
use tokio::sync::mpsc;

/// Notified on every change to providers, credentials or the price book.
pub(crate) const CATALOG_CHANNEL: &str = "aigne_hub_catalog";
/// Notified on every append to a tenant stream: "<tenant> <sequence> <instance>".
pub(crate) const TENANT_CHANNEL: &str = "aigne_hub_tenant";
/// Wait before listening again after the listener's connection failed (the
/// database is down or restarting; retrying faster only adds load).
pub(crate) const LISTEN_RETRY_MS: u64 = 500;

/// A change some writer committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A tenant's stream reached `sequence`, written by `instance_id` (`None`
    /// when the store cannot tell).
    Tenant {
        tenant_id: TenantId,
        sequence: usize,
        instance_id: Option<InstanceId>,
    },
    /// Providers, credentials or prices changed.
    Catalog,
    /// Changes may have been missed (the listener was reconnected): reload
    /// everything.
    Missed,
}

/// Parses a [`TENANT_CHANNEL`] payload; `None` if it is not one.
fn parse_tenant_payload(payload: &str) -> Option<Change> {
    let mut parts = payload.split(' ');
    let tenant_id = parts.next()?.parse().ok()?;
    let sequence = parts.next()?.parse().ok()?;
    let instance_id = parts.next().and_then(|i| i.parse().ok());
    Some(Change::Tenant {
        tenant_id,
        sequence,
        instance_id,
    })
}

/// Listens on both channels and forwards what arrives to `changes`, until
/// `changes` is closed. A lost connection is reopened and reported as
/// [`Change::Missed`] once listening again.
///
/// On a thread of its own with its own runtime: the listener's connection is
/// then driven by a runtime that lives as long as it does (a sqlx connection
/// belongs to the runtime that opened it, and closing one needs that runtime).
pub(super) fn listen_pg(options: PgConnectOptions, changes: mpsc::Sender<Change>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the change listener; other processes' changes are seen only before a refusal and every catalog_refresh_ms");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("change-listener".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = listen_pg_until_closed(options, &changes) => {}
                    _ = changes.closed() => {}
                }
            })
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the change listener thread");
    }
}

async fn listen_pg_until_closed(options: PgConnectOptions, changes: &mpsc::Sender<Change>) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([CATALOG_CHANNEL, TENANT_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listener.await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other processes' changes; retrying");
                tokio::time::sleep(Duration::from_millis(LISTEN_RETRY_MS)).await;
                continue;
            }
        };
        // Whatever changed before this connection listened is unknown (at
        // start: since the hub loaded its catalog). Cheap when nothing did.
        if changes.send(Change::Missed).await.is_err() {
            return;
        }
        loop {
            let change = match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == CATALOG_CHANNEL => Some(Change::Catalog),
                Ok(Some(n)) => parse_tenant_payload(n.payload()),
                // Reconnected (and listening again) after losing the connection.
                Ok(None) => Some(Change::Missed),
                Err(e) => {
                    tracing::warn!(error = %e, "the change listener's connection failed; reconnecting");
                    break;
                }
            };
            if let Some(change) = change {
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Every `poll_ms`, forwards each tenant stream appended to since the last poll
/// (with its newest sequence) to `changes`, until `changes` is closed. SQLite
/// has one writer at a time, so rowid order is commit order and nothing can
/// appear behind a rowid already read.
pub(super) async fn poll_sqlite(pool: SqlitePool, changes: mpsc::Sender<Change>, poll_ms: u64) {
    let mut after: Option<i64> = None;
    loop {
        match poll_sqlite_once(&pool, after).await {
            Ok((position, appended)) => {
                after = Some(position);
                for change in appended {
                    if changes.send(change).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "polling for other processes' changes failed"),
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
}

/// The newest rowid and, after `after` (`None`: only the newest rowid), the
/// tenant streams appended to with their newest sequence.
async fn poll_sqlite_once(
    pool: &SqlitePool,
    after: Option<i64>,
) -> Result<(i64, Vec<Change>), StoreError> {
    let Some(after) = after else {
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(rowid) FROM events")
            .fetch_one(pool)
            .await?;
        return Ok((newest.unwrap_or(0), Vec::new()));
    };
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id, MAX(sequence), MAX(rowid) FROM events
          WHERE rowid > $1 AND aggregate_type = 'Tenant'
          GROUP BY aggregate_id",
    )
    .bind(after)
    .fetch_all(pool)
    .await?;
    let mut position = after;
    let mut appended = Vec::with_capacity(rows.len());
    for (tenant_id, sequence, rowid) in rows {
        position = position.max(rowid);
        if let Ok(tenant_id) = tenant_id.parse() {
            appended.push(Change::Tenant {
                tenant_id,
                sequence: sequence as usize,
                instance_id: None,
            });
        }
    }
    Ok((position, appended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_payload_names_the_tenant_sequence_and_writer() {
        let tenant_id = TenantId::new_random();
        let instance_id = InstanceId::new_random();
        let payload = format!("{tenant_id} 42 {instance_id}");
        assert_eq!(
            parse_tenant_payload(&payload),
            Some(Change::Tenant {
                tenant_id,
                sequence: 42,
                instance_id: Some(instance_id)
            })
        );
        assert_eq!(
            parse_tenant_payload(&format!("{tenant_id} 7 ")),
            Some(Change::Tenant {
                tenant_id,
                sequence: 7,
                instance_id: None
            })
        );
        assert_eq!(parse_tenant_payload("garbage"), None);
    }
}
