//! Connections for the request path's appends: kept per thread, outside sqlx's pool.
//!
//! Why not the pool, for this one statement:
//! - sqlx 0.8 hands every connection back to its pool through a spawned task that
//!   first pings the server: one more round trip, and one more wake-up of a
//!   PostgreSQL backend, per query.
//! - A connection's socket stays registered with the runtime that opened it. actix
//!   runs one runtime per thread, so a tenant actor that uses a connection opened
//!   on another thread gets each reply through that thread: two more thread
//!   switches per round trip.
//!
//! An append is the only database work on the request path, twice per request, and
//! both costs showed in profiles (docs/benchmarks.md). So each thread keeps the
//! idle connections it opened itself and takes them back without a ping.
//!
//! A connection goes back only after its statement completed, successfully or with
//! an error from the database (the session is then ready for the next statement).
//! One whose statement was abandoned half-way (its future dropped) or that failed
//! on I/O is closed. The number open is bounded; past the bound, callers use the
//! shared pool instead.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::DB_ACQUIRE_TIMEOUT_MS;

/// Idle connections one thread keeps per [`LocalConnections`].
const IDLE_PER_THREAD_MAX: usize = 4;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's idle connections, by the [`LocalConnections`] they belong to.
    static IDLE: RefCell<HashMap<u64, Vec<PgConnection>>> = RefCell::new(HashMap::new());
}

pub(crate) struct LocalConnections {
    /// Key of this set's connections in every thread's [`IDLE`].
    id: u64,
    options: PgConnectOptions,
    /// Connections of this set alive, idle or leased, on every thread.
    open: Arc<AtomicUsize>,
    open_max: usize,
}

impl LocalConnections {
    pub(crate) fn new(options: PgConnectOptions, open_max: usize) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            options,
            open: Arc::default(),
            open_max,
        }
    }

    /// A connection of this thread, opened now if none is idle. `None` when
    /// `open_max` are open already or a new one cannot be opened: the caller uses
    /// the pool, which waits for a connection or reports the error.
    pub(crate) async fn lease(&self) -> Option<Lease> {
        let idle = IDLE.with(|idle| idle.borrow_mut().get_mut(&self.id).and_then(Vec::pop));
        if let Some(conn) = idle {
            return Some(self.leased(Some(conn)));
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.open_max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Counted as open from here: dropped on any way out below, also when this
        // future is dropped while connecting, it counts itself down again.
        let mut lease = self.leased(None);
        // Bounded like the pool's acquire: an unreachable server must not hold the
        // tenant's actor for the operating system's connect timeout.
        let connect = PgConnection::connect_with(&self.options);
        match tokio::time::timeout(Duration::from_millis(DB_ACQUIRE_TIMEOUT_MS), connect).await {
            Ok(Ok(conn)) => {
                lease.conn = Some(conn);
                Some(lease)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "opening an append connection failed; using the pool");
                None
            }
            Err(_) => {
                tracing::debug!("opening an append connection timed out; using the pool");
                None
            }
        }
    }

    fn leased(&self, conn: Option<PgConnection>) -> Lease {
        Lease {
            conn,
            id: self.id,
            open: self.open.clone(),
            kept: false,
        }
    }
}

/// A connection in use. Dropped without [`Lease::finish`], it is closed.
pub(crate) struct Lease {
    conn: Option<PgConnection>,
    id: u64,
    open: Arc<AtomicUsize>,
    /// Back among the idle ones: still open.
    kept: bool,
}

impl Lease {
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until it ends")
    }

    /// Ends the lease after a statement completed with `outcome`: the connection
    /// goes back to this thread's idle ones, unless the failure may have left it
    /// unusable (then it is closed).
    pub(crate) fn finish<T>(mut self, outcome: &Result<T, sqlx::Error>) {
        if !matches!(outcome, Ok(_) | Err(sqlx::Error::Database(_))) {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        self.kept = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let mine = idle.entry(self.id).or_default();
            if mine.len() < IDLE_PER_THREAD_MAX {
                mine.push(conn);
                true
            } else {
                false
            }
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.kept {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
