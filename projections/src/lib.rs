//! Read models derived only from events.
//!
//! A projection is a fold: rows keyed by string, changed by events, never by
//! anything else. Because of that any projection can be dropped and rebuilt from
//! the log, and `aigne-hub replay` proves a rebuilt one equals the live one by
//! comparing [`content_hash`]es. This crate holds the folds, the list of
//! projections the hub keeps ([`registry`]) and the replay routine; reading the
//! log and storing rows is the server's job.
//!
//! Adding a projection is a module here with a [`Projection`] impl and one line
//! in [`registry`]: the projector, replay and their content hashes take their
//! list from there.

pub mod analytics;
pub mod balances;
pub mod invoices;
pub mod registry;
pub mod replay;
pub mod tenants;

pub use registry::{registry, ProjectionSettings, Registered};

use chrono::{DateTime, Utc};
use domain::tenant::TenantEvent;
use domain::TenantId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One event as projections see it.
#[derive(Clone, Copy, Debug)]
pub struct LoggedEvent<'a> {
    pub tenant_id: TenantId,
    pub sequence: usize,
    pub event: &'a TenantEvent,
    pub recorded_at: DateTime<Utc>,
}

/// A read model: rows of type `Row` keyed by string, folded from events.
pub trait Projection: Send + Sync + 'static {
    type Row: Serialize + DeserializeOwned + Default;

    /// Stored name: the row namespace and the checkpoint's key. Settings that
    /// change the rows are part of it, so another cut builds another projection
    /// from the start of the log.
    fn name(&self) -> &str;
    /// The rows an event reads or changes; they depend on the event (and the
    /// projection's settings) alone, so a page's rows can be loaded before it is
    /// folded.
    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String>;
    /// Folds events into rows already loaded (missing rows start from
    /// `Default`). Depends on nothing but the rows and the events, and never
    /// panics on an event it cannot place: a fold attempt that lost a
    /// checkpoint race may see an event twice (its result is discarded).
    fn fold<'a>(
        &self,
        rows: &mut BTreeMap<String, Self::Row>,
        events: impl IntoIterator<Item = LoggedEvent<'a>>,
    );
}

/// Rows as stored: canonical JSON text per key.
pub fn encode_rows<P: Projection>(rows: &BTreeMap<String, P::Row>) -> BTreeMap<String, String> {
    rows.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::to_string(v).expect("projection rows always serialize"),
            )
        })
        .collect()
}

/// SHA-256 over every `(key, payload)` in key order: equal hashes mean equal
/// projections, row for row and byte for byte.
pub fn content_hash(rows: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, payload) in rows {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((payload.len() as u64).to_be_bytes());
        hasher.update(payload.as_bytes());
    }
    hex::encode(hasher.finalize())
}
