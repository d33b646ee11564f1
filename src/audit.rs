//! Tamper evidence: each tenant's events form a hash chain.
//!
//! Every event's metadata records `prev_hash` (the hash of the tenant's previous
//! event; 64 zeros for the first) and `hash`, a SHA-256 over a canonical encoding
//! of the event as stored: tenant, sequence, type, version, payload and metadata
//! (without `hash` itself, with `prev_hash`). Changing, removing or reordering a
//! stored event breaks the chain at that sequence, and anyone holding an export can
//! check it without a database (`aigne-hub audit verify --export FILE`).
//!
//! The chain itself (hashing and linking events) is the store's, which links each
//! event as it appends it (`crate::store::hash_chain`); this module checks stored
//! chains and exports.
//!
//! Hashes cover the stored JSON, not the domain types: an upcaster that reads an
//! old shape differently never changes a hash, and fields a reader ignores are
//! still covered. The encoding is written down in docs/billing.md ("Audit").

use crate::config::Limits;
pub use crate::store::{verify_chain, ChainBreak, ChainReport, RawEvent, GENESIS_HASH};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Events read per page when verifying from the store (bounds memory per read).
pub(crate) const VERIFY_PAGE_EVENTS: usize = 10_000;
/// Most events one `GET /v1/audit/events` page returns.
pub(crate) const EXPORT_PAGE_EVENTS_MAX: usize = 1_000;

/// Checks the chain of one tenant, or of every tenant, as stored.
pub async fn verify_store(
    store: &dyn crate::store::EventLog,
    tenant: Option<domain::TenantId>,
) -> Result<Vec<ChainReport>, crate::store::StoreError> {
    let tenants = match tenant {
        Some(t) => vec![t],
        None => store.tenant_ids().await?,
    };
    let mut reports = Vec::with_capacity(tenants.len());
    for tenant_id in tenants {
        let mut events = Vec::new();
        loop {
            let page = store
                .raw_tenant_events(tenant_id, events.len(), VERIFY_PAGE_EVENTS)
                .await?;
            let done = page.len() < VERIFY_PAGE_EVENTS;
            events.extend(page);
            if done {
                break;
            }
        }
        reports.push(verify_chain(&tenant_id.to_string(), &events));
    }
    Ok(reports)
}

/// An export as `GET /v1/audit/events` pages it: `{"tenant_id", "data": [...]}`.
/// A file of several pages concatenated (or one JSON array of events) is read too.
#[derive(Debug, Deserialize)]
struct ExportPage {
    tenant_id: String,
    data: Vec<RawEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the export is not JSON pages of events: {0}")]
    Format(String),
    #[error("the export holds no events")]
    Empty,
    #[error("the export mixes tenants {0} and {1}")]
    MixedTenants(String, String),
    #[error("event {sequence} cannot be read: {reason}")]
    Unreadable { sequence: usize, reason: String },
}

/// What an offline check of an export found.
#[derive(Debug, Serialize)]
pub struct ExportCheck {
    pub chain: ChainReport,
    /// The tenant's figures recomputed from the exported events alone (only when
    /// the chain is intact).
    pub balance: Option<Value>,
    /// The tenant's invoices recomputed from the exported events alone, as
    /// `GET /v1/billing/invoices` shows them at the time of the last event
    /// (cut with the hub's invoice settings, `limits`; only when the chain is
    /// intact).
    pub invoices: Option<Value>,
}

/// Verifies an exported file without a database: the chain, then the balance
/// recomputed by folding the events through the same domain code the hub runs,
/// with the hub's settings (`limits`: invoice periods, the expiring-soon window).
pub fn verify_export(text: &str, limits: &Limits) -> Result<ExportCheck, ExportError> {
    let mut events: Vec<RawEvent> = Vec::new();
    let mut tenant: Option<String> = None;
    for item in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let item = item.map_err(|e| ExportError::Format(e.to_string()))?;
        let (page_tenant, page) = match item {
            Value::Array(_) => {
                let page: Vec<RawEvent> =
                    serde_json::from_value(item).map_err(|e| ExportError::Format(e.to_string()))?;
                (page.first().map(|e| e.tenant_id.clone()), page)
            }
            _ => {
                let page: ExportPage =
                    serde_json::from_value(item).map_err(|e| ExportError::Format(e.to_string()))?;
                (Some(page.tenant_id), page.data)
            }
        };
        if let Some(t) = page_tenant {
            match &tenant {
                Some(known) if *known != t => {
                    return Err(ExportError::MixedTenants(known.clone(), t))
                }
                _ => tenant = Some(t),
            }
        }
        events.extend(page);
    }
    let tenant = tenant.ok_or(ExportError::Empty)?;
    let chain = verify_chain(&tenant, &events);
    if chain.first_break.is_some() {
        return Ok(ExportCheck {
            chain,
            balance: None,
            invoices: None,
        });
    }
    let mut state = domain::tenant::Tenant::default();
    let mut decoded_events = Vec::with_capacity(events.len());
    for event in &events {
        let (decoded, metadata) =
            crate::store::decode_raw(event.clone()).map_err(|e| ExportError::Unreadable {
                sequence: event.sequence,
                reason: e.to_string(),
            })?;
        state.apply_event(decoded.clone());
        decoded_events.push((event.sequence, decoded, metadata.recorded_at));
    }
    let tenant_id: domain::TenantId = tenant.parse().map_err(|_| ExportError::Unreadable {
        sequence: 0,
        reason: format!("tenant id {tenant:?}"),
    })?;
    // `expiring_soon` and invoice states are relative to a reading time: the
    // business time of the last event, so the figures are the same whenever the
    // export is checked.
    let as_of = decoded_events
        .last()
        .map(|(_, event, _)| event.at())
        .unwrap_or_else(|| state_clock(&events));
    let balance = crate::billing::balance_body(
        tenant_id,
        &state.balance(),
        as_of,
        limits.expiring_soon_window_secs,
    );
    let logged =
        decoded_events
            .iter()
            .map(|(sequence, event, recorded_at)| projections::LoggedEvent {
                tenant_id,
                sequence: *sequence,
                event,
                recorded_at: *recorded_at,
            });
    let mut rows = std::collections::BTreeMap::new();
    projections::invoices::fold(&limits.invoice_settings(), &mut rows, logged);
    let mut invoices: Vec<projections::invoices::InvoiceView> = rows
        .values()
        .filter_map(|row| projections::invoices::view(tenant_id, row, as_of))
        .collect();
    invoices.sort_by(|a, b| b.period_start.cmp(&a.period_start));
    Ok(ExportCheck {
        chain,
        balance: Some(balance),
        invoices: Some(serde_json::to_value(invoices).unwrap_or(Value::Null)),
    })
}

/// The `recorded_at` of the last event (the export's "as of" time).
fn state_clock(events: &[RawEvent]) -> chrono::DateTime<chrono::Utc> {
    events
        .last()
        .and_then(|e| e.metadata.get("recorded_at"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}
