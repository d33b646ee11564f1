//! Keeps the live projections up to date from the event log.
//!
//! Woken after local commits (batched: it waits a moment after a wake-up so one
//! pass covers many commits) and on a timer (for other processes' commits), it
//! reads the log after its checkpoint, folds the events into the affected rows
//! and writes rows and checkpoint in one transaction. Several processes may run
//! it at once: the checkpoint moves by compare-and-set, so a page is applied once.
//! It keeps every projection of `projections::registry`, through its
//! `Registered` interface.

use crate::store::{
    EventLog, LogPosition, ProjectionCommit, ProjectionRows, Store, StoreError, StoredEvent,
    LOG_PAGE_MAX_EVENTS,
};
use projections::{LoggedEvent, Registered};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

pub(crate) fn logged(e: &StoredEvent) -> LoggedEvent<'_> {
    LoggedEvent {
        tenant_id: e.tenant_id,
        sequence: e.sequence,
        event: &e.event,
        recorded_at: e.metadata.recorded_at,
    }
}

#[derive(Clone)]
pub struct Projector {
    store: Arc<dyn Store>,
    pub(crate) wake: Arc<Notify>,
    /// The projections' common checkpoint as this process last committed or
    /// read it: the next pass starts there without reading the checkpoints
    /// (if another process moved them, its commit fails and it reads them).
    checkpoint: Arc<Mutex<Option<LogPosition>>>,
    /// The projections it keeps (`projections::registry`, cut with the hub's
    /// settings: `Limits::projection_settings`).
    projections: Arc<[Box<dyn Registered>]>,
}

impl Projector {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        wake: Arc<Notify>,
        projections: Vec<Box<dyn Registered>>,
    ) -> Self {
        Self {
            store,
            wake,
            checkpoint: Arc::new(Mutex::new(None)),
            projections: projections.into(),
        }
    }

    /// The projections it keeps, in registry order: what replay rebuilds.
    pub(crate) fn projections(&self) -> &[Box<dyn Registered>] {
        &self.projections
    }

    /// Applies every committed event not yet applied to each projection (each
    /// under its own checkpoint, folded from one log read and committed in one
    /// transaction: see `catch_up_together`). Returns how many events the
    /// projection that was furthest behind applied.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        let known = *self.checkpoint.lock().expect("checkpoint lock");
        let result = catch_up_together(self.store.as_ref(), &self.projections, known).await;
        let (applied, checkpoint) = match result {
            Ok((applied, checkpoint)) => (Ok(applied), checkpoint),
            Err(e) => (Err(e), None),
        };
        *self.checkpoint.lock().expect("checkpoint lock") = checkpoint;
        applied
    }

    /// Runs until the process ends.
    pub(crate) async fn run(self, poll_ms: u64, batch_delay_ms: u64) {
        loop {
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "projection catch-up failed; retrying");
            }
            let poll = Duration::from_millis(poll_ms);
            if tokio::time::timeout(poll, self.wake.notified())
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(batch_delay_ms)).await;
            }
        }
    }
}

/// Decodes `loaded` (the stored rows of the page's keys), folds `page` onto
/// them and returns, encoded, only the rows whose stored text changes (rows not
/// stored yet included), so that a pass writes what it changed and no more.
fn fold_page(
    projection: &dyn Registered,
    loaded: Vec<(String, String)>,
    page: &[LoggedEvent<'_>],
) -> Result<Vec<(String, String)>, StoreError> {
    let started = std::time::Instant::now();
    let stored: BTreeMap<String, String> = loaded.into_iter().collect();
    let mut rows = projection
        .decode_rows(&stored)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let decoded = std::time::Instant::now();
    rows.fold(page);
    let folded = std::time::Instant::now();
    let changed: Vec<(String, String)> = rows
        .encode()
        .into_iter()
        .filter(|(key, text)| stored.get(key) != Some(text))
        .collect();
    let stats = &STATS;
    stats.add(&stats.decode_ns, decoded - started);
    stats.add(&stats.fold_ns, folded - decoded);
    stats.add(&stats.encode_ns, folded.elapsed());
    stats.rows_touched.fetch_add(rows.len() as u64, Relaxed);
    Ok(changed)
}

/// The sorted, distinct keys of the rows `page` touches in `projection`.
fn page_keys(projection: &dyn Registered, page: &[LoggedEvent<'_>]) -> Vec<String> {
    let mut keys: Vec<String> = page.iter().flat_map(|e| projection.row_keys(e)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Brings `projections` up to the end of the log together: one log read per
/// page, folded into each projection, and one transaction that moves every
/// checkpoint with the rows that changed. Projections whose checkpoints differ
/// (one added later, or another process's pass in between) are first brought
/// to the furthest one separately. `known`: where every checkpoint was last
/// seen, if known (then they are not read unless a commit fails). Returns how
/// many events the projection that was furthest behind applied, and the common
/// checkpoint reached.
///
/// Rows are read after the checkpoint, so when another process advances a
/// checkpoint in between, this attempt may fold a page onto rows that already
/// hold it; the compare-and-set commit then fails and the page is redone from the
/// new checkpoint. Folds must therefore never panic on such a doomed attempt.
async fn catch_up_together<S: EventLog + ProjectionRows + ?Sized>(
    store: &S,
    projections: &[Box<dyn Registered>],
    mut known: Option<LogPosition>,
) -> Result<(u64, Option<LogPosition>), StoreError> {
    let mut applied = 0;
    let mut behind = 0;
    loop {
        let started = std::time::Instant::now();
        let mut from = Vec::with_capacity(projections.len());
        let hint = known.take();
        for p in projections {
            from.push(match hint {
                Some(hint) => hint,
                None => store.projection_checkpoint(p.name()).await?,
            });
        }
        let Some(newest) = from.iter().max().copied() else {
            return Ok((0, None));
        };
        if from.iter().any(|f| *f != newest) {
            for (p, f) in projections.iter().zip(&from) {
                if *f < newest {
                    behind = behind.max(catch_up_one(store, p.as_ref(), Some(newest)).await?);
                }
            }
            continue;
        }
        let checkpoints_read = std::time::Instant::now();
        let page = store.read_log(newest, None, LOG_PAGE_MAX_EVENTS).await?;
        let log_read = std::time::Instant::now();
        let Some(last) = page.last() else {
            return Ok((applied + behind, Some(newest)));
        };
        let to: LogPosition = last.log_position;
        let events: Vec<LoggedEvent<'_>> = page.iter().map(logged).collect();
        let mut changed = Vec::with_capacity(projections.len());
        let mut load = Duration::ZERO;
        for p in projections {
            let keys = page_keys(p.as_ref(), &events);
            let loading = std::time::Instant::now();
            let loaded = if keys.is_empty() {
                Vec::new()
            } else {
                store.projection_rows_by_keys(p.name(), &keys).await?
            };
            load += loading.elapsed();
            STATS.rows_loaded.fetch_add(loaded.len() as u64, Relaxed);
            changed.push(fold_page(p.as_ref(), loaded, &events)?);
        }
        let commits: Vec<ProjectionCommit<'_>> = projections
            .iter()
            .zip(&changed)
            .map(|(p, rows)| ProjectionCommit {
                projection: p.name(),
                from: newest,
                to,
                rows,
            })
            .collect();
        let committing = std::time::Instant::now();
        let committed = store.commit_projections(&commits).await?;
        let stats = &STATS;
        stats.add(&stats.checkpoint_ns, checkpoints_read - started);
        stats.add(&stats.read_log_ns, log_read - checkpoints_read);
        stats.add(&stats.load_ns, load);
        stats.add(&stats.commit_ns, committing.elapsed());
        stats.add(&stats.pass_ns, started.elapsed());
        stats.passes.fetch_add(1, Relaxed);
        stats.events.fetch_add(page.len() as u64, Relaxed);
        for rows in &changed {
            stats.rows_written.fetch_add(rows.len() as u64, Relaxed);
            let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
            stats.bytes_written.fetch_add(bytes as u64, Relaxed);
        }
        stats.maybe_report();
        if !committed {
            stats.lost_races.fetch_add(1, Relaxed);
            continue;
        }
        applied += page.len() as u64;
        known = Some(to);
        if page.len() < LOG_PAGE_MAX_EVENTS as usize {
            // The end of the log as of the read: done. Events committed since
            // are the next pass's (after the batch delay), rather than chasing
            // the log's tail with one small pass after another under load.
            return Ok((applied + behind, known));
        }
    }
}

/// Brings one projection up to the end of the log, or to `until`. Returns how
/// many events it applied.
async fn catch_up_one<S: EventLog + ProjectionRows + ?Sized>(
    store: &S,
    projection: &dyn Registered,
    until: Option<LogPosition>,
) -> Result<u64, StoreError> {
    let name = projection.name();
    let mut applied = 0;
    loop {
        let from = store.projection_checkpoint(name).await?;
        let page = store.read_log(from, until, LOG_PAGE_MAX_EVENTS).await?;
        let Some(last) = page.last() else {
            return Ok(applied);
        };
        let to: LogPosition = last.log_position;
        let events: Vec<LoggedEvent<'_>> = page.iter().map(logged).collect();
        let keys = page_keys(projection, &events);
        let loaded = if keys.is_empty() {
            Vec::new()
        } else {
            store.projection_rows_by_keys(name, &keys).await?
        };
        let changed = fold_page(projection, loaded, &events)?;
        if store.commit_projection(name, from, to, &changed).await? {
            applied += page.len() as u64;
            if page.len() < LOG_PAGE_MAX_EVENTS as usize {
                // The end of the log as of the read (see `catch_up_together`).
                return Ok(applied);
            }
        }
    }
}

/// Brings one projection up to the end of the log (replay catches the live
/// one up before it rebuilds it).
pub(crate) async fn catch_up_projection<S: EventLog + ProjectionRows + ?Sized>(
    store: &S,
    projection: &dyn Registered,
) -> Result<u64, StoreError> {
    catch_up_one(store, projection, None).await
}

/// What the projector did, summed since the last report (debug log of
/// `aigne_hub::projector`, at most every [`STATS_REPORT_EVERY`]).
struct Stats {
    passes: AtomicU64,
    events: AtomicU64,
    lost_races: AtomicU64,
    rows_loaded: AtomicU64,
    rows_touched: AtomicU64,
    rows_written: AtomicU64,
    bytes_written: AtomicU64,
    pass_ns: AtomicU64,
    checkpoint_ns: AtomicU64,
    read_log_ns: AtomicU64,
    load_ns: AtomicU64,
    decode_ns: AtomicU64,
    fold_ns: AtomicU64,
    encode_ns: AtomicU64,
    commit_ns: AtomicU64,
    last_report_ms: AtomicU64,
}

const STATS_REPORT_EVERY: Duration = Duration::from_secs(5);

static STATS: Stats = Stats {
    passes: AtomicU64::new(0),
    events: AtomicU64::new(0),
    lost_races: AtomicU64::new(0),
    rows_loaded: AtomicU64::new(0),
    rows_touched: AtomicU64::new(0),
    rows_written: AtomicU64::new(0),
    bytes_written: AtomicU64::new(0),
    pass_ns: AtomicU64::new(0),
    checkpoint_ns: AtomicU64::new(0),
    read_log_ns: AtomicU64::new(0),
    load_ns: AtomicU64::new(0),
    decode_ns: AtomicU64::new(0),
    fold_ns: AtomicU64::new(0),
    encode_ns: AtomicU64::new(0),
    commit_ns: AtomicU64::new(0),
    last_report_ms: AtomicU64::new(0),
};

impl Stats {
    fn add(&self, counter: &AtomicU64, d: Duration) {
        counter.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    fn maybe_report(&self) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
        let now_ms = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64;
        let last = self.last_report_ms.load(Relaxed);
        if now_ms < last + STATS_REPORT_EVERY.as_millis() as u64
            || self
                .last_report_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let take = |c: &AtomicU64| c.swap(0, Relaxed);
        let passes = take(&self.passes).max(1);
        let us = |c: &AtomicU64| take(c) / passes / 1_000;
        tracing::debug!(
            passes,
            events_per_pass = take(&self.events) / passes,
            lost_races = take(&self.lost_races),
            rows_loaded_per_pass = take(&self.rows_loaded) / passes,
            rows_touched_per_pass = take(&self.rows_touched) / passes,
            rows_written_per_pass = take(&self.rows_written) / passes,
            bytes_written_per_pass = take(&self.bytes_written) / passes,
            pass_us = us(&self.pass_ns),
            checkpoints_us = us(&self.checkpoint_ns),
            read_log_us = us(&self.read_log_ns),
            load_us = us(&self.load_ns),
            decode_us = us(&self.decode_ns),
            fold_us = us(&self.fold_ns),
            encode_us = us(&self.encode_ns),
            commit_us = us(&self.commit_ns),
            "projector passes (averages per pass)"
        );
    }
}
