//! `aigne-hub replay`: rebuild every projection from the event log alone into fresh
//! tables and prove it equals the live one.

use crate::projector::{catch_up_analytics, catch_up_invoices, catch_up_projection, logged};
use crate::store::{LogPosition, Store, StoreError, StoredEvent, LOG_PAGE_MAX_EVENTS};
use projections::analytics;
use projections::balances::Balances;
use projections::invoices;
use projections::replay::{compare, Comparison, Rebuild};
use projections::Projection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct ProjectionReplay {
    #[serde(flatten)]
    pub comparison: Comparison,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: u64,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub store: &'static str,
    /// The same log read and decoded with nothing folded, in the same run: the
    /// yardstick for each projection's `events_per_second`.
    pub raw_read: RawRead,
    pub projections: Vec<ProjectionReplay>,
    pub all_identical: bool,
    /// Every tenant's hash chain verified (`aigne-hub audit verify`): figures a
    /// rebuild reproduces can still rest on an altered event that no projection
    /// reads, which only the chain shows.
    pub chains_intact: bool,
    /// The tenants whose chain is broken, with the first broken sequence.
    pub broken_chains: Vec<crate::audit::ChainReport>,
}

#[derive(Debug, Serialize)]
pub struct RawRead {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: u64,
}

/// Reads and decodes the whole log once, folding nothing.
async fn raw_read(store: &dyn Store) -> Result<RawRead, StoreError> {
    let started = Instant::now();
    let mut after = LogPosition::default();
    let mut events = 0u64;
    loop {
        let page = store.read_log(after, None, LOG_PAGE_MAX_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = last.log_position;
        events += page.len() as u64;
        progress("read", events);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RawRead {
        events,
        seconds,
        events_per_second: per_second(events, seconds),
    })
}

/// Events per second, whole (a rate, so the one place a float is fine).
fn per_second(events: u64, seconds: f64) -> u64 {
    if seconds > 0.0 {
        (events as f64 / seconds) as u64
    } else {
        events
    }
}

/// A progress line on a terminal (stderr), overwritten in place; nothing when
/// stderr is a file or a pipe, so scripts get clean output.
fn progress(what: &str, events: u64) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let end = if what == "done" { "\n" } else { "" };
        let _ = write!(err, "\r{what}: {events} events{end}");
        let _ = err.flush();
    }
}

/// [`replay_all_with_invoices`] with the default cut of billing periods (a hub
/// started with default settings).
pub async fn replay_all(store: &dyn Store) -> Result<ReplayReport, StoreError> {
    replay_all_with_invoices(store, &crate::config::Limits::default().invoice_settings()).await
}

/// Rebuilds every projection and compares each with the live one; the invoices
/// are cut with `invoice_settings`, the cut the live hub uses
/// (`Limits::invoice_settings`).
pub async fn replay_all_with_invoices(
    store: &dyn Store,
    invoice_settings: &invoices::Settings,
) -> Result<ReplayReport, StoreError> {
    let raw_read = raw_read(store).await?;
    let balances = replay_projection::<Balances>(store).await?;
    let analytics = replay_analytics(store).await?;
    let invoices = replay_invoices(store, invoice_settings).await?;
    let all_identical = balances.comparison.identical
        && analytics.comparison.identical
        && invoices.comparison.identical;
    let broken_chains: Vec<_> = crate::audit::verify_store(store, None)
        .await?
        .into_iter()
        .filter(|report| report.first_break.is_some())
        .collect();
    progress("done", raw_read.events);
    Ok(ReplayReport {
        store: store.kind(),
        raw_read,
        // Balances first, then analytics: callers index them by position.
        projections: vec![balances, analytics, invoices],
        all_identical,
        chains_intact: broken_chains.is_empty(),
        broken_chains,
    })
}

/// What the rebuild loop needs of a projection's in-memory rebuild.
trait Rebuilding {
    fn apply(&mut self, page: &[StoredEvent]);
    fn events_applied(&self) -> u64;
    fn encoded_rows(&self) -> BTreeMap<String, String>;
}

impl<P: Projection> Rebuilding for Rebuild<P> {
    fn apply(&mut self, page: &[StoredEvent]) {
        self.apply_page(page.iter().map(logged));
    }
    fn events_applied(&self) -> u64 {
        self.events_applied
    }
    fn encoded_rows(&self) -> BTreeMap<String, String> {
        Rebuild::encoded_rows(self)
    }
}

impl Rebuilding for analytics::Rebuild {
    fn apply(&mut self, page: &[StoredEvent]) {
        self.apply_page(page.iter().map(logged));
    }
    fn events_applied(&self) -> u64 {
        self.events_applied
    }
    fn encoded_rows(&self) -> BTreeMap<String, String> {
        analytics::Rebuild::encoded_rows(self)
    }
}

impl Rebuilding for invoices::Rebuild {
    fn apply(&mut self, page: &[StoredEvent]) {
        self.apply_page(page.iter().map(logged));
    }
    fn events_applied(&self) -> u64 {
        self.events_applied
    }
    fn encoded_rows(&self) -> BTreeMap<String, String> {
        invoices::Rebuild::encoded_rows(self)
    }
}

/// Rebuilds projection `name` from the log alone into `<name>@replay`, exactly
/// up to the live one's checkpoint (the caller has just caught the live one up,
/// so writes arriving meanwhile cannot skew the verdict), and compares the two.
async fn rebuild_and_compare(
    store: &dyn Store,
    name: &str,
    mut rebuild: impl Rebuilding,
) -> Result<ProjectionReplay, StoreError> {
    let until = store.projection_checkpoint(name).await?;
    let fresh = format!("{name}@replay");
    store.clear_projection(&fresh).await?;

    let started = Instant::now();
    let mut after = LogPosition::default();
    loop {
        let page = store
            .read_log(after, Some(until), LOG_PAGE_MAX_EVENTS)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.log_position;
        rebuild.apply(&page);
        progress(name, rebuild.events_applied());
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows: Vec<(String, String)> = rebuild.encoded_rows().into_iter().collect();
    store
        .commit_projection(&fresh, LogPosition::default(), until, &rows)
        .await?;
    finish(name, store, &fresh, rebuild.events_applied(), seconds).await
}

async fn replay_projection<P: Projection>(
    store: &dyn Store,
) -> Result<ProjectionReplay, StoreError> {
    catch_up_projection::<P>(store, P::NAME).await?;
    rebuild_and_compare(store, P::NAME, Rebuild::<P>::default()).await
}

/// Like [`replay_projection`], for the usage analytics projection and its own fold.
async fn replay_analytics(store: &dyn Store) -> Result<ProjectionReplay, StoreError> {
    catch_up_analytics(store).await?;
    rebuild_and_compare(store, analytics::NAME, analytics::Rebuild::default()).await
}

/// Like [`replay_analytics`], for the invoices projection cut with `settings`
/// (reported under its stored name, which carries the settings).
pub async fn replay_invoices(
    store: &dyn Store,
    settings: &invoices::Settings,
) -> Result<ProjectionReplay, StoreError> {
    catch_up_invoices(store, settings).await?;
    let name = settings.projection_name();
    rebuild_and_compare(store, &name, invoices::Rebuild::new(*settings)).await
}

async fn finish(
    name: &str,
    store: &dyn Store,
    fresh: &str,
    events: u64,
    seconds: f64,
) -> Result<ProjectionReplay, StoreError> {
    let live: BTreeMap<String, String> = store.projection_rows(name).await?.into_iter().collect();
    let replayed: BTreeMap<String, String> =
        store.projection_rows(fresh).await?.into_iter().collect();
    Ok(ProjectionReplay {
        comparison: compare(name, &live, &replayed),
        events,
        seconds,
        events_per_second: per_second(events, seconds),
    })
}
