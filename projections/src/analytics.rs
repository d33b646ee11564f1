//! Usage analytics: requests, tokens, images, cost and upstream latency per tenant
//! and UTC hour, broken down by key, project, end user, app, provider, model and
//! capability.
//!
//! # Rows
//!
//! - `<tenant>/<YYYY-MM-DDTHH>` (an [`AnalyticsRow`] with `usage`): one row per
//!   tenant and UTC hour, holding one [`UsageEntry`] per
//!   `(key_id, project, end_user, app, provider, model, capability)` seen in
//!   that hour, sorted by those dimensions. Keeping the dimensions inside the hour row (rather than one
//!   row per dimension tuple) lets a reader name every row of a time range by its
//!   exact key (the store has no prefix scan), and keeps an hour's row small:
//!   one entry per distinct tuple. (A tenant that names many end users per
//!   hour makes that hour's row as long as its distinct end users.)
//! - `<tenant>/pending` (an [`AnalyticsRow`] with `pending`): the requests of
//!   the tenant that are in flight, each with the dimensions only its
//!   `CreditsReserved` knows (key, app, capability, requested model) and the
//!   provider and model of its latest `UpstreamAttempted`. An entry is removed
//!   when its request settles or its hold is released, so the row stays as small
//!   as the tenant's open holds.
//!
//! # Why a join, and why the finishing hour
//!
//! A settlement names its request by id and a release carries nothing else, so
//! the dimensions of a finished request come from its reservation: this fold
//! reads the `pending` row while it writes the hour row. That is a fold over
//! two rows at once: [`fold`] here does it, and the server's catch-up and replay
//! call it through [`Analytics`] (rows loaded by [`row_keys`], which depends on
//! the events alone).
//!
//! A request is counted in the hour in which it **finished** (its `UsageSettled`
//! or `HoldReleased` `at`): that is when it was charged, so the amount of a
//! period equals what the ledger spent in it, and the hour row's key is known
//! from the finishing event itself. `requests = successes + failures`; requests
//! in flight are not counted yet.
//!
//! Everything is integers (`amount` is pico-credits as a decimal string) and
//! every map is a `BTreeMap` or a sorted `Vec`, so a live catch-up and a replay
//! produce the same bytes.

use crate::LoggedEvent;
use chrono::{DateTime, Timelike, Utc};
use domain::tenant::TenantEvent;
use domain::{Credits, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stable name of the projection, also its checkpoint and row namespace.
/// The projection's name carries its row layout's version: a new layout is a new
/// projection, rebuilt from the log, never old rows read in a new shape.
/// (v2: `provider_cost`; v3: `project` and `end_user`.)
pub const NAME: &str = "analytics_v3";

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; a
/// last bucket counts everything slower. Never change them in place: rows
/// written with other bounds would no longer add up.
pub const LATENCY_BUCKET_BOUNDS_MS: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000,
];

/// Buckets of the histogram: one per bound plus the overflow.
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKET_BOUNDS_MS.len() + 1;

/// A row: hour rows fill `usage`, the pending row fills `pending`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalyticsRow {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<UsageEntry>,
    /// Request id → what its reservation (and latest attempt) said.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending: BTreeMap<String, PendingRequest>,
}

/// What is known of a request in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    pub app: Option<String>,
    pub capability: String,
    /// The model asked for; replaced by the latest attempt's.
    pub model: String,
    /// The latest attempt's provider; empty before any attempt.
    pub provider: String,
}

/// The dimensions of an entry, in sort order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dimensions {
    pub key_id: String,
    /// The key's project when the request was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Who the request was for, as the caller named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    pub app: Option<String>,
    pub provider: String,
    pub model: String,
    pub capability: String,
}

/// Counters of one dimension tuple in one hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    #[serde(flatten)]
    pub dims: Dimensions,
    #[serde(flatten)]
    pub counters: Counters,
}

/// Additive counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub successes: u64,
    /// Requests whose hold was released (no charge).
    pub failures: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub images: u64,
    /// Sum of settled costs, pico-credits.
    pub amount: Credits,
    /// What those requests cost the operator (usage at the price book's cost
    /// rates), pico-credits. `amount − provider_cost` is the margin.
    pub provider_cost: Credits,
    /// Upstream latency of settled requests, counts per [`LATENCY_BUCKET_BOUNDS_MS`]
    /// bucket (the last one: slower than every bound).
    pub latency_buckets: Vec<u64>,
    /// Slowest settled request, ms (what the overflow bucket reports).
    pub latency_max_ms: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: 0,
            successes: 0,
            failures: 0,
            input_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            images: 0,
            amount: Credits::ZERO,
            provider_cost: Credits::ZERO,
            latency_buckets: vec![0; LATENCY_BUCKETS],
            latency_max_ms: 0,
        }
    }
}

impl Counters {
    /// Adds `other` into `self` (read-time grouping).
    pub fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.failures += other.failures;
        self.input_tokens += other.input_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.images += other.images;
        self.amount = self.amount + other.amount;
        self.provider_cost = self.provider_cost + other.provider_cost;
        for (i, n) in other.latency_buckets.iter().enumerate() {
            if let Some(mine) = self.latency_buckets.get_mut(i) {
                *mine += n;
            }
        }
        self.latency_max_ms = self.latency_max_ms.max(other.latency_max_ms);
    }

    fn record_latency(&mut self, ms: u64) {
        let bucket = LATENCY_BUCKET_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BUCKET_BOUNDS_MS.len());
        if self.latency_buckets.len() < LATENCY_BUCKETS {
            self.latency_buckets.resize(LATENCY_BUCKETS, 0);
        }
        self.latency_buckets[bucket] += 1;
        self.latency_max_ms = self.latency_max_ms.max(ms);
    }

    /// The `percent`th percentile of the latency, in ms: the upper bound of the
    /// bucket holding the request of rank ⌈n × percent / 100⌉ (the slowest
    /// request's latency when that is the overflow bucket, or when it is lower
    /// than the bound). `None` without settled requests.
    pub fn latency_percentile_ms(&self, percent: u64) -> Option<u64> {
        let n: u64 = self.latency_buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = (n * percent).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, count) in self.latency_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(match LATENCY_BUCKET_BOUNDS_MS.get(i) {
                    Some(bound) => (*bound).min(self.latency_max_ms),
                    None => self.latency_max_ms,
                });
            }
        }
        Some(self.latency_max_ms)
    }
}

/// The key of the pending row of `tenant`.
pub fn pending_key(tenant: TenantId) -> String {
    format!("{tenant}/pending")
}

/// The key of the hour row of `tenant` holding `at`.
pub fn hour_key(tenant: TenantId, at: DateTime<Utc>) -> String {
    format!("{tenant}/{}", at.format("%Y-%m-%dT%H"))
}

/// The start of the UTC hour an hour key names, if it is one.
pub fn hour_of_key(key: &str) -> Option<DateTime<Utc>> {
    let (_, hour) = key.rsplit_once('/')?;
    let naive =
        chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00"), "%Y-%m-%dT%H:%M").ok()?;
    Some(naive.and_utc())
}

/// The start of the UTC hour holding `at`.
pub fn hour_start(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(at)
}

/// The rows an event reads or writes; they depend on the event alone.
pub fn row_keys(event: &LoggedEvent<'_>) -> Vec<String> {
    match event.event {
        TenantEvent::CreditsReserved { .. } | TenantEvent::UpstreamAttempted { .. } => {
            vec![pending_key(event.tenant_id)]
        }
        TenantEvent::UsageSettled { at, .. } | TenantEvent::HoldReleased { at, .. } => {
            vec![pending_key(event.tenant_id), hour_key(event.tenant_id, *at)]
        }
        _ => vec![],
    }
}

fn entry(row: &mut AnalyticsRow, dims: Dimensions) -> &mut Counters {
    let i = match row.usage.binary_search_by(|e| e.dims.cmp(&dims)) {
        Ok(i) => i,
        Err(i) => {
            row.usage.insert(
                i,
                UsageEntry {
                    dims,
                    counters: Counters::default(),
                },
            );
            i
        }
    };
    &mut row.usage[i].counters
}

fn capability_name(capability: &domain::pricing::Capability) -> String {
    serde_json::to_value(capability)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Folds events into rows already loaded (missing rows start empty). Must not
/// panic on events it cannot place (a fold attempt that lost a checkpoint race
/// may see an event twice; its result is discarded).
pub fn fold<'a>(
    rows: &mut BTreeMap<String, AnalyticsRow>,
    events: impl IntoIterator<Item = LoggedEvent<'a>>,
) {
    for event in events {
        let tenant = event.tenant_id;
        match event.event {
            TenantEvent::CreditsReserved {
                request_id,
                key_id,
                model,
                capability,
                app,
                project,
                end_user,
                ..
            } => {
                rows.entry(pending_key(tenant)).or_default().pending.insert(
                    request_id.to_string(),
                    PendingRequest {
                        key_id: key_id.to_string(),
                        project: project.map(|p| p.to_string()),
                        end_user: end_user.clone(),
                        app: app.clone(),
                        capability: capability_name(capability),
                        model: model.to_string(),
                        provider: String::new(),
                    },
                );
            }
            TenantEvent::UpstreamAttempted {
                request_id,
                provider,
                model,
                ..
            } => {
                let pending = rows.entry(pending_key(tenant)).or_default();
                if let Some(p) = pending.pending.get_mut(&request_id.to_string()) {
                    p.provider = provider.clone();
                    p.model = model.to_string();
                }
            }
            TenantEvent::UsageSettled {
                request_id,
                key_id,
                provider,
                model,
                usage,
                cost_pico,
                provider_cost_pico,
                upstream_latency_ms,
                at,
                ..
            } => {
                let p = rows
                    .entry(pending_key(tenant))
                    .or_default()
                    .pending
                    .remove(&request_id.to_string())
                    .unwrap_or_default();
                let dims = Dimensions {
                    key_id: key_id.to_string(),
                    project: p.project,
                    end_user: p.end_user,
                    app: p.app,
                    provider: provider.clone(),
                    model: model.to_string(),
                    capability: p.capability,
                };
                let c = entry(rows.entry(hour_key(tenant, *at)).or_default(), dims);
                c.requests += 1;
                c.successes += 1;
                c.input_tokens += usage.input_tokens;
                c.cache_read_tokens += usage.cache_read_tokens;
                c.cache_write_tokens += usage.cache_write_tokens;
                c.output_tokens += usage.output_tokens;
                c.reasoning_tokens += usage.reasoning_tokens;
                c.images += usage.images;
                c.amount = c.amount + *cost_pico;
                c.provider_cost = c.provider_cost + *provider_cost_pico;
                c.record_latency(*upstream_latency_ms);
            }
            TenantEvent::HoldReleased { request_id, at, .. } => {
                let Some(p) = rows
                    .entry(pending_key(tenant))
                    .or_default()
                    .pending
                    .remove(&request_id.to_string())
                else {
                    // Only a doomed attempt sees a release it cannot place.
                    continue;
                };
                let dims = Dimensions {
                    key_id: p.key_id,
                    project: p.project,
                    end_user: p.end_user,
                    app: p.app,
                    provider: p.provider,
                    model: p.model,
                    capability: p.capability,
                };
                let c = entry(rows.entry(hour_key(tenant, *at)).or_default(), dims);
                c.requests += 1;
                c.failures += 1;
            }
            _ => {}
        }
    }
}

/// The projection, as the registry lists it.
pub struct Analytics;

impl crate::Projection for Analytics {
    type Row = AnalyticsRow;

    fn name(&self) -> &str {
        NAME
    }

    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
        row_keys(event)
    }

    fn fold<'a>(
        &self,
        rows: &mut BTreeMap<String, AnalyticsRow>,
        events: impl IntoIterator<Item = LoggedEvent<'a>>,
    ) {
        fold(rows, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::pricing::{Capability, Ingress, Rates, Usage};
    use domain::tenant::AttemptOutcome;
    use domain::{InstanceId, KeyId, ModelId, RequestId};

    fn t(s: i64) -> DateTime<Utc> {
        // 2026-01-01T00:00:00Z + s
        Utc.timestamp_opt(1_767_225_600 + s, 0).unwrap()
    }

    fn reserved(
        request: RequestId,
        key: KeyId,
        model: &str,
        app: Option<&str>,
        at: i64,
    ) -> TenantEvent {
        TenantEvent::CreditsReserved {
            request_id: request,
            key_id: key,
            model: ModelId::parse(model).unwrap(),
            capability: Capability::Chat,
            ingress: Ingress::Openai,
            app: app.map(str::to_string),
            price_version: 1,
            rates: Rates::default(),
            hold_pico: Credits::from_pico(100),
            prompt_bytes: 10,
            max_output_tokens: 10,
            images_requested: 0,
            instance_id: InstanceId::new_random(),
            expires_at: t(at + 600),
            project: None,
            end_user: None,
            scopes_checked: Vec::new(),
            at: t(at),
        }
    }

    fn settled(
        request: RequestId,
        key: KeyId,
        model: &str,
        cost: i128,
        latency: u64,
        at: i64,
    ) -> TenantEvent {
        TenantEvent::UsageSettled {
            request_id: request,
            key_id: key,
            provider: "mock".into(),
            model: ModelId::parse(model).unwrap(),
            usage: Usage {
                input_tokens: 8,
                cache_read_tokens: 4,
                cache_write_tokens: 1,
                output_tokens: 30,
                reasoning_tokens: 5,
                estimated: false,
                images: 0,
            },
            price_version: 1,
            rates: Rates::default(),
            terms: domain::ChargeTerms::sold_directly(Rates::default()),
            cost_pico: Credits::from_pico(cost),
            provider_cost_pico: Credits::from_pico(cost),
            hold_pico: Credits::from_pico(100),
            overshoot_pico: Credits::ZERO,
            upstream_latency_ms: latency,
            at: t(at),
        }
    }

    fn fold_all(tenant: TenantId, events: &[TenantEvent]) -> BTreeMap<String, AnalyticsRow> {
        let mut rows = BTreeMap::new();
        fold(&mut rows, logged(tenant, events));
        rows
    }

    fn logged(tenant: TenantId, events: &[TenantEvent]) -> Vec<LoggedEvent<'_>> {
        events
            .iter()
            .enumerate()
            .map(|(i, event)| LoggedEvent {
                tenant_id: tenant,
                sequence: i + 1,
                event,
                recorded_at: event.at(),
            })
            .collect()
    }

    fn scenario() -> (TenantId, KeyId, Vec<TenantEvent>) {
        let tenant = TenantId::new_random();
        let key = KeyId::new_random();
        let (a, b, c) = (
            RequestId::new_random(),
            RequestId::new_random(),
            RequestId::new_random(),
        );
        let events = vec![
            reserved(a, key, "mock/one", Some("web"), 10),
            reserved(b, key, "mock/one", Some("web"), 20),
            reserved(c, key, "mock/two", None, 3_590),
            TenantEvent::UpstreamAttempted {
                request_id: c,
                attempt: 1,
                provider: "mock".into(),
                credential_id: "cred".into(),
                model: ModelId::parse("mock/two").unwrap(),
                outcome: AttemptOutcome::Failed {
                    status: Some(503),
                    reason: "overloaded".into(),
                },
                usage: None,
                cost_pico: Credits::ZERO,
                latency_ms: 7,
                at: t(3_591),
            },
            settled(a, key, "mock/one", 72, 40, 11),
            settled(b, key, "mock/one", 80, 700, 21),
            // Finishes in the next hour: counted there.
            TenantEvent::HoldReleased {
                request_id: c,
                hold_pico: Credits::from_pico(100),
                reason: "upstream failed".into(),
                at: t(3_601),
            },
        ];
        (tenant, key, events)
    }

    #[test]
    fn requests_are_counted_in_the_hour_they_finish_with_their_reservation_dimensions() {
        let (tenant, key, events) = scenario();
        let rows = fold_all(tenant, &events);
        assert_eq!(
            rows.keys().cloned().collect::<Vec<_>>(),
            vec![
                format!("{tenant}/2026-01-01T00"),
                format!("{tenant}/2026-01-01T01"),
                format!("{tenant}/pending"),
            ]
        );
        assert!(
            rows[&pending_key(tenant)].pending.is_empty(),
            "settled requests leave the pending row"
        );
        let first = &rows[&format!("{tenant}/2026-01-01T00")].usage;
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0].dims,
            Dimensions {
                key_id: key.to_string(),
                project: None,
                end_user: None,
                app: Some("web".into()),
                provider: "mock".into(),
                model: "mock/one".into(),
                capability: "chat".into(),
            }
        );
        let c = &first[0].counters;
        assert_eq!((c.requests, c.successes, c.failures), (2, 2, 0));
        assert_eq!(
            (
                c.input_tokens,
                c.cache_read_tokens,
                c.cache_write_tokens,
                c.output_tokens,
                c.reasoning_tokens,
                c.images
            ),
            (16, 8, 2, 60, 10, 0)
        );
        assert_eq!(c.amount, Credits::from_pico(152));
        assert_eq!(c.latency_buckets[0], 1, "40 ms ≤ 50");
        assert_eq!(c.latency_buckets[4], 1, "700 ms ≤ 1000");
        assert_eq!(c.latency_percentile_ms(50), Some(50));
        assert_eq!(
            c.latency_percentile_ms(95),
            Some(700),
            "capped by the slowest request"
        );
        let second = &rows[&format!("{tenant}/2026-01-01T01")].usage;
        assert_eq!(second.len(), 1);
        assert_eq!(
            second[0].dims.provider, "mock",
            "the failed request's last attempt"
        );
        assert_eq!(second[0].dims.model, "mock/two");
        assert_eq!(second[0].dims.app, None);
        let c = &second[0].counters;
        assert_eq!((c.requests, c.successes, c.failures), (1, 0, 1));
        assert_eq!(c.amount, Credits::ZERO);
        assert_eq!(c.latency_percentile_ms(50), None);
    }

    #[test]
    fn folding_page_by_page_equals_folding_at_once_and_encodes_stably() {
        let (tenant, _, events) = scenario();
        let all = crate::encode_rows::<Analytics>(&fold_all(tenant, &events));
        for split in 0..=events.len() {
            let mut rebuild = crate::replay::Rebuild::new(&Analytics);
            let logged = logged(tenant, &events);
            rebuild.apply_page(&logged[..split]);
            rebuild.apply_page(&logged[split..]);
            assert_eq!(rebuild.encoded_rows(), all, "split at {split}");
            assert_eq!(rebuild.events_applied, events.len() as u64);
        }
        // Rows round-trip through their stored JSON unchanged.
        for (key, text) in &all {
            let row: AnalyticsRow = serde_json::from_str(text).unwrap();
            assert_eq!(&serde_json::to_string(&row).unwrap(), text, "{key}");
        }
        // Row keys name every row the fold touches.
        let keys: std::collections::BTreeSet<String> =
            logged(tenant, &events).iter().flat_map(row_keys).collect();
        assert_eq!(keys, all.keys().cloned().collect());
        assert_eq!(
            hour_of_key(&format!("{tenant}/2026-01-01T01")),
            Some(t(3_600))
        );
    }

    #[test]
    fn a_settlement_or_release_without_its_reservation_does_not_panic() {
        let tenant = TenantId::new_random();
        let key = KeyId::new_random();
        let r = RequestId::new_random();
        let rows = fold_all(
            tenant,
            &[
                settled(r, key, "mock/one", 5, 6_000_000, 0),
                TenantEvent::HoldReleased {
                    request_id: RequestId::new_random(),
                    hold_pico: Credits::from_pico(1),
                    reason: "x".into(),
                    at: t(0),
                },
            ],
        );
        let c = &rows[&format!("{tenant}/2026-01-01T00")].usage[0].counters;
        assert_eq!(c.requests, 1);
        assert_eq!(
            c.latency_percentile_ms(50),
            Some(6_000_000),
            "overflow reports the max"
        );
    }
}
