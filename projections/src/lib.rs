//! Read models derived only from events.
//!
//! A projection is a fold: rows keyed by string, changed by events, never by
//! anything else. Because of that any projection can be dropped and rebuilt from
//! the log, and `aigne-hub replay` proves a rebuilt one equals the live one by
//! comparing [`content_hash`]es. This crate holds the folds and the replay
//! routine; reading the log and storing rows is the server's job.

pub mod analytics;
pub mod balances;
pub mod invoices;
pub mod replay;

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

pub trait Projection {
    /// Stable name, also the row namespace in storage.
    const NAME: &'static str;
    type Row: Serialize + DeserializeOwned + Default + Clone;

    /// The rows an event changes.
    fn row_keys(event: &LoggedEvent<'_>) -> Vec<String>;
    /// Changes one row. Must depend on nothing but the row and the event.
    fn apply(key: &str, row: &mut Self::Row, event: &LoggedEvent<'_>);
}

/// Folds events into rows that are already loaded; rows not in `rows` start from
/// `Default`.
pub fn fold<'a, P: Projection>(
    rows: &mut BTreeMap<String, P::Row>,
    events: impl IntoIterator<Item = LoggedEvent<'a>>,
) {
    for event in events {
        for key in P::row_keys(&event) {
            let row = rows.entry(key.clone()).or_default();
            P::apply(&key, row, &event);
        }
    }
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
