//! `aigne-hub replay`: rebuild every projection from the event log alone into fresh
//! tables and prove it equals the live one.

use crate::projector::{catch_up_projection, logged};
use crate::store::{LogPosition, Store, StoreError, LOG_PAGE_MAX_EVENTS};
use projections::replay::{compare, Comparison, Rebuild};
use projections::{LoggedEvent, Registered};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct ProjectionReplay {
    #[serde(flatten)]
    pub comparison: Comparison,
    pub events: u64,
    pub(crate) seconds: f64,
    pub(crate) events_per_second: u64,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub(crate) store: &'static str,
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
    pub(crate) seconds: f64,
    pub(crate) events_per_second: u64,
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

/// [`replay`] of the registry cut with default settings (a hub started with
/// default settings).
pub async fn replay_all(store: &dyn Store) -> Result<ReplayReport, StoreError> {
    let settings = crate::config::Limits::default().projection_settings();
    replay(store, &projections::registry(&settings)).await
}

/// Rebuilds every projection in `projections` (the live projector's list,
/// `Projector::projections`) and compares each with the live one, in that
/// order: callers index the report by position.
pub(crate) async fn replay(
    store: &dyn Store,
    projections: &[Box<dyn Registered>],
) -> Result<ReplayReport, StoreError> {
    let raw_read = raw_read(store).await?;
    let mut replays = Vec::with_capacity(projections.len());
    for projection in projections {
        catch_up_projection(store, projection.as_ref()).await?;
        replays.push(rebuild_and_compare(store, projection.as_ref()).await?);
    }
    let all_identical = replays.iter().all(|r| r.comparison.identical);
    let broken_chains: Vec<_> = crate::audit::verify_store(store, None)
        .await?
        .into_iter()
        .filter(|report| report.first_break.is_some())
        .collect();
    progress("done", raw_read.events);
    Ok(ReplayReport {
        store: store.kind(),
        raw_read,
        projections: replays,
        all_identical,
        chains_intact: broken_chains.is_empty(),
        broken_chains,
    })
}

/// Rebuilds `projection` from the log alone into `<name>@replay`, exactly up
/// to the live one's checkpoint (the caller has just caught the live one up, so
/// writes arriving meanwhile cannot skew the verdict), and compares the two.
async fn rebuild_and_compare(
    store: &dyn Store,
    projection: &dyn Registered,
) -> Result<ProjectionReplay, StoreError> {
    let name = projection.name();
    let until = store.projection_checkpoint(name).await?;
    let fresh = format!("{name}@replay");
    store.clear_projection(&fresh).await?;

    let started = Instant::now();
    let mut rebuild = Rebuild::new(projection);
    let mut after = LogPosition::default();
    loop {
        let page = store
            .read_log(after, Some(until), LOG_PAGE_MAX_EVENTS)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.log_position;
        let events: Vec<LoggedEvent<'_>> = page.iter().map(logged).collect();
        rebuild.apply_page(&events);
        progress(name, rebuild.events_applied);
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows: Vec<(String, String)> = rebuild.encoded_rows().into_iter().collect();
    store
        .commit_projection(&fresh, LogPosition::default(), until, &rows)
        .await?;
    finish(name, store, &fresh, rebuild.events_applied, seconds).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projector::Projector;
    use crate::store::{Durability, EventMetadata};
    use chrono::Utc;
    use domain::tenant::TenantEvent;
    use domain::{Credits, InstanceId, TenantId};
    use std::sync::Arc;

    /// A projection the registry does not hold: events per tenant.
    struct EventCount;

    impl projections::Projection for EventCount {
        type Row = u64;

        fn name(&self) -> &str {
            "event_count"
        }

        fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
            vec![event.tenant_id.to_string()]
        }

        fn fold<'a>(
            &self,
            rows: &mut BTreeMap<String, u64>,
            events: impl IntoIterator<Item = LoggedEvent<'a>>,
        ) {
            for event in events {
                *rows.entry(event.tenant_id.to_string()).or_default() += 1;
            }
        }
    }

    async fn append_two_events(store: &dyn Store, tenant_id: TenantId) {
        let metadata = EventMetadata {
            recorded_at: Utc::now(),
            tenant_id,
            request_id: None,
            instance_id: InstanceId::new_random(),
            actor: None,
            prev_hash: None,
            hash: None,
        };
        let events = [
            TenantEvent::TenantCreated {
                tenant_id,
                name: "t".into(),
                at: Utc::now(),
            },
            TenantEvent::CreditsGranted {
                amount_pico: Credits::from_pico(5),
                idempotency_key: "k".into(),
                reason: "r".into(),
                expires_at: None,
                payment: None,
                at: Utc::now(),
            },
        ];
        let batch: Vec<_> = events.into_iter().map(|e| (e, metadata.clone())).collect();
        store
            .append(tenant_id, 1, &batch, Durability::Durable)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_projection_added_to_the_list_is_kept_live_and_rebuilt_by_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(None, dir.path()).await.unwrap();
        let tenant_id = TenantId::new_random();
        append_two_events(store.as_ref(), tenant_id).await;
        let mut list =
            projections::registry(&crate::config::Limits::default().projection_settings());
        list.push(Box::new(EventCount));
        let projector = Projector::new(store.clone(), Arc::new(tokio::sync::Notify::new()), list);

        assert_eq!(projector.catch_up().await.unwrap(), 2);
        assert_eq!(
            store.projection_rows("event_count").await.unwrap(),
            vec![(tenant_id.to_string(), "2".to_string())]
        );

        let report = replay(store.as_ref(), projector.projections())
            .await
            .unwrap();
        let replayed: Vec<&str> = report
            .projections
            .iter()
            .map(|p| p.comparison.projection.as_str())
            .collect();
        let kept: Vec<&str> = projector.projections().iter().map(|p| p.name()).collect();
        assert_eq!(replayed, kept);
        assert!(report.all_identical, "{report:?}");
        for p in &report.projections {
            let live: BTreeMap<String, String> = store
                .projection_rows(&p.comparison.projection)
                .await
                .unwrap()
                .into_iter()
                .collect();
            assert_eq!(p.comparison.live_hash, projections::content_hash(&live));
            assert_eq!(p.comparison.replayed_hash, p.comparison.live_hash);
            assert_eq!(p.events, 2, "{p:?}");
        }
    }
}
