//! Keeps the live projections up to date from the event log.
//!
//! Woken after local commits (batched: it waits a moment after a wake-up so one
//! pass covers many commits) and on a timer (for other processes' commits), it reads the log after its checkpoint, folds the events into the affected rows
//! and writes rows and checkpoint in one transaction. Several processes may run
//! it at once: the checkpoint moves by compare-and-set, so a page is applied once.

use crate::store::{LogPosition, Store, StoreError, StoredEvent, LOG_PAGE_MAX_EVENTS};
use projections::analytics;
use projections::balances::Balances;
use projections::invoices;
use projections::{encode_rows, fold, LoggedEvent, Projection};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

pub fn logged(e: &StoredEvent) -> LoggedEvent<'_> {
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
    pub wake: Arc<Notify>,
}

impl Projector {
    pub fn new(store: Arc<dyn Store>, wake: Arc<Notify>) -> Self {
        Self { store, wake }
    }

    /// Applies every committed event not yet applied to each projection (balances,
    /// usage analytics, then invoices, each under its own checkpoint). Returns how
    /// many events the projection that was furthest behind applied.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        let balances = catch_up_projection::<Balances>(self.store.as_ref(), Balances::NAME).await?;
        let analytics = catch_up_analytics(self.store.as_ref()).await?;
        let invoices = catch_up_invoices(self.store.as_ref(), &invoice_settings()).await?;
        Ok(balances.max(analytics).max(invoices))
    }

    /// Runs until the process ends.
    pub async fn run(self, poll_ms: u64, batch_delay_ms: u64) {
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

/// Brings one projection, stored under `name`, up to the end of the log:
/// `fold_page` folds a page onto the rows it touches (read by `row_keys`) and
/// returns them encoded.
///
/// Rows are read after the checkpoint, so when another process advances the
/// checkpoint in between, this attempt may fold a page onto rows that already
/// hold it; the compare-and-set commit then fails and the page is redone from the
/// new checkpoint. Folds must therefore never panic on such a doomed attempt.
async fn catch_up_rows<R: serde::de::DeserializeOwned>(
    store: &dyn Store,
    name: &str,
    row_keys: impl Fn(&LoggedEvent<'_>) -> Vec<String>,
    fold_page: impl Fn(&mut BTreeMap<String, R>, &[StoredEvent]) -> BTreeMap<String, String>,
) -> Result<u64, StoreError> {
    let mut applied = 0;
    loop {
        let from = store.projection_checkpoint(name).await?;
        let page = store.read_log(from, None, LOG_PAGE_MAX_EVENTS).await?;
        let Some(last) = page.last() else {
            return Ok(applied);
        };
        let to: LogPosition = last.log_position;
        let mut keys: Vec<String> = page.iter().flat_map(|e| row_keys(&logged(e))).collect();
        keys.sort();
        keys.dedup();
        let mut rows: BTreeMap<String, R> = BTreeMap::new();
        for (key, payload) in store.projection_rows_by_keys(name, &keys).await? {
            let row = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("{name} row {key}: {e}")))?;
            rows.insert(key, row);
        }
        let encoded: Vec<(String, String)> = fold_page(&mut rows, &page).into_iter().collect();
        if store.commit_projection(name, from, to, &encoded).await? {
            applied += page.len() as u64;
        }
    }
}

/// Brings projection `P`, stored under `name`, up to the end of the log.
pub async fn catch_up_projection<P: Projection>(
    store: &dyn Store,
    name: &str,
) -> Result<u64, StoreError> {
    catch_up_rows(store, name, P::row_keys, |rows, page| {
        fold::<P>(rows, page.iter().map(logged));
        encode_rows::<P>(rows)
    })
    .await
}

/// Brings the usage analytics projection (`projections::analytics`) up to the end
/// of the log; its own fold joins a request's settlement to its reservation
/// across two rows.
pub async fn catch_up_analytics(store: &dyn Store) -> Result<u64, StoreError> {
    catch_up_rows(store, analytics::NAME, analytics::row_keys, |rows, page| {
        analytics::fold(rows, page.iter().map(logged));
        analytics::encode_rows(rows)
    })
    .await
}

/// How this process cuts billing periods: `Limits::invoice_anchor_day` and
/// `Limits::invoice_grace_secs` as read from the environment
/// (`AIGNE_HUB_INVOICE_ANCHOR_DAY`, `AIGNE_HUB_INVOICE_GRACE_HOURS`) at first use.
/// The projector, replay and the invoice routes all use this one value, so what
/// is stored and what is read are cut the same way; the settings are part of the
/// projection's stored name (`projections::invoices`), so other settings build
/// another projection from the start of the log.
pub fn invoice_settings() -> invoices::Settings {
    static SETTINGS: OnceLock<invoices::Settings> = OnceLock::new();
    *SETTINGS.get_or_init(|| {
        let limits = crate::config::Settings::from_env_defaults().limits;
        invoices::Settings::new(limits.invoice_anchor_day, limits.invoice_grace_secs)
    })
}

/// Brings the invoices projection (`projections::invoices`, cut with `settings`)
/// up to the end of the log; its fold joins a settlement to its reservation's
/// `at` across rows.
pub async fn catch_up_invoices(
    store: &dyn Store,
    settings: &invoices::Settings,
) -> Result<u64, StoreError> {
    let name = settings.projection_name();
    catch_up_rows(
        store,
        &name,
        |e| invoices::row_keys(settings, e),
        |rows, page| {
            invoices::fold(settings, rows, page.iter().map(logged));
            invoices::encode_rows(rows)
        },
    )
    .await
}
