//! The global log as projections read it: with many writers committing at once,
//! a reader catching up by position sees every event exactly once, each tenant's
//! in sequence order. (A position handed out at insert time is not commit order;
//! a naive reader would step past a transaction still in flight and skip it.)

use crate::helpers::{
    database_url_for, fresh_pg_database, pg_admin_url, pico_grant, plain_metadata, tenant_created,
    StoreKind, TestDatabase,
};
use aigne_hub::store::{Durability, LogPosition, Store, StoreError};
use domain::TenantId;
use sqlx::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const WRITERS: usize = 8;
const BATCHES_PER_WRITER: usize = 150;

async fn concurrent_writers_never_make_a_reader_skip(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let database = database_url_for(kind).await;
    let url = database.url();
    let store: Arc<dyn Store> = aigne_hub::store::open(url.as_deref(), temp.path())
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut expected = 0;
    for w in 0..WRITERS {
        let store = store.clone();
        let tenant = TenantId::new_random();
        expected += 1
            + (0..BATCHES_PER_WRITER)
                .map(|b| 1 + (b + w) % 3)
                .sum::<usize>();
        writers.push(tokio::spawn(async move {
            let meta = plain_metadata(tenant);
            let created = tenant_created(tenant);
            store
                .append(tenant, 1, &[(created, meta.clone())], Durability::Durable)
                .await
                .unwrap();
            let mut next = 2;
            for b in 0..BATCHES_PER_WRITER {
                let events: Vec<_> = (0..1 + (b + w) % 3)
                    .map(|i| (pico_grant(next + i), meta.clone()))
                    .collect();
                store
                    .append(tenant, next, &events, Durability::Durable)
                    .await
                    .unwrap();
                next += events.len();
            }
        }));
    }
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut after = LogPosition::default();
            let mut seen: HashMap<TenantId, Vec<usize>> = HashMap::new();
            let mut read = 0;
            // Events become readable once every older transaction in the cluster has
            // ended (other tests' too), so keep reading until all arrived or time runs out.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while read < expected && std::time::Instant::now() < deadline {
                let page = store.read_log(after, None, 50).await.unwrap();
                for e in &page {
                    assert!(e.log_position > after, "log positions only move forward");
                    after = e.log_position;
                    seen.entry(e.tenant_id).or_default().push(e.sequence);
                    read += 1;
                }
                if page.is_empty() {
                    // A reader polling the log while it is written is what this
                    // test is about: it backs off briefly on an empty page.
                    tokio::time::sleep(std::time::Duration::from_millis(
                        if done.load(Ordering::SeqCst) { 20 } else { 1 },
                    ))
                    .await;
                }
            }
            // Nothing more may arrive after everything was read (a check that
            // nothing happens, so it can only wait a while).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(
                store.read_log(after, None, 50).await.unwrap().is_empty(),
                "no event read twice or late"
            );
            seen
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), WRITERS);
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(total, expected, "every committed event read exactly once");
    for sequences in seen.values() {
        assert_eq!(
            *sequences,
            (1..=sequences.len()).collect::<Vec<_>>(),
            "each tenant's events in order, none skipped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_make_a_reader_skip_postgres() {
    concurrent_writers_never_make_a_reader_skip(StoreKind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_make_a_reader_skip_sqlite() {
    concurrent_writers_never_make_a_reader_skip(StoreKind::Sqlite).await
}

/// The projector reads the log after every batch of commits, so its query must stay
/// cheap as the log grows — also on a table PostgreSQL has never analyzed
/// (autovacuum off, or a burst of inserts since the last ANALYZE). With only
/// `(txid, position)` indexed, such a table got a plan that ANDed in every
/// `'Tenant'` entry of the primary key: a cost that grew with the log.
#[tokio::test]
async fn log_read_walks_its_own_index_without_statistics() {
    let (database, store, _temp) = fresh_pg_store().await;
    let url = database.url().unwrap();
    for _ in 0..4 {
        let tenant = TenantId::new_random();
        let meta = plain_metadata(tenant);
        let events: Vec<_> = (1..=1_000).map(|n| (pico_grant(n), meta.clone())).collect();
        store
            .append(tenant, 1, &events, Durability::Durable)
            .await
            .unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (FORMAT TEXT) {}",
        aigne_hub::store::PG_READ_LOG_SQL
    ))
    .bind(0i64)
    .bind(0i64)
    .bind(i64::MAX)
    .bind(i64::MAX)
    .bind(50i64)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("events_log_order_by_type") && !plan.contains("events_pkey"),
        "unexpected plan for the log read:\n{plan}"
    );
}

/// A store on a fresh PostgreSQL database: the database, the store, and the
/// data dir (kept for as long as the store is used).
async fn fresh_pg_store() -> (TestDatabase, Arc<dyn Store>, tempfile::TempDir) {
    let database = fresh_pg_database().await;
    let temp = tempfile::tempdir().unwrap();
    let store = aigne_hub::store::open(database.url().as_deref(), temp.path())
        .await
        .unwrap();
    (database, store, temp)
}

/// The backend pids of the sessions on `database` whose last statement was an append.
async fn append_sessions(admin: &mut sqlx::PgConnection, database: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = $1 AND backend_type = 'client backend' AND query LIKE 'INSERT INTO events %'
          ORDER BY pid",
    )
    .bind(database)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// Appends on PostgreSQL keep their connections per thread, outside sqlx's pool
/// (`store::pg_local`): a thread that appends again and again reuses the same
/// session for each durability, also after the database refused a statement, and
/// opens no new one.
#[tokio::test]
async fn appends_reuse_their_connections() {
    let (test_database, store, _temp) = fresh_pg_store().await;
    let url = test_database.url().unwrap();
    let database = url.rsplit('/').next().unwrap().to_string();
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    let tenant = TenantId::new_random();
    let meta = plain_metadata(tenant);
    store
        .append(
            tenant,
            1,
            &[(tenant_created(tenant), meta.clone())],
            Durability::Durable,
        )
        .await
        .unwrap();
    store
        .append(
            tenant,
            2,
            &[(pico_grant(2), meta.clone())],
            Durability::HoldsOnly,
        )
        .await
        .unwrap();
    let after_first = append_sessions(&mut admin, &database).await;
    assert_eq!(
        after_first.len(),
        2,
        "one session per durability stays open"
    );
    for n in 3..=40 {
        let durability = if n % 2 == 0 {
            Durability::HoldsOnly
        } else {
            Durability::Durable
        };
        store
            .append(tenant, n, &[(pico_grant(n), meta.clone())], durability)
            .await
            .unwrap();
        // A taken sequence: the database refuses the statement, the session stays usable.
        let taken = store
            .append(tenant, n, &[(pico_grant(n), meta.clone())], durability)
            .await;
        assert!(matches!(taken, Err(StoreError::Conflict)), "{taken:?}");
    }
    assert_eq!(
        append_sessions(&mut admin, &database).await,
        after_first,
        "the same sessions served every append"
    );
    let stored = store.tenant_events(tenant, 0).await.unwrap();
    assert_eq!(stored.len(), 40);
}
