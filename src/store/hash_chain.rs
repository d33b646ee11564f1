//! The hash chain primitive: each tenant's events form a hash chain.
//!
//! Every event's metadata records `prev_hash` (the hash of the tenant's previous
//! event; 64 zeros for the first) and `hash`, a SHA-256 over a canonical encoding
//! of the event as stored: tenant, sequence, type, version, payload and metadata
//! (without `hash` itself, with `prev_hash`). Changing, removing or reordering a
//! stored event breaks the chain at that sequence.
//!
//! It lives in the store because the store links each event as it appends it;
//! checking stored chains and exports is `crate::audit`'s.
//!
//! Hashes cover the stored JSON, not the domain types: an upcaster that reads an
//! old shape differently never changes a hash, and fields a reader ignores are
//! still covered. The encoding is written down in docs/billing.md ("Audit").

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The `prev_hash` of a tenant's first chained event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Prefix of every hashed message: names the scheme, so a later one cannot be confused with it.
const CHAIN_SCHEME: &str = "aigne-hub/event-chain/v1";

/// One stored event, exactly as kept in the log (and as exported).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    pub(crate) tenant_id: String,
    pub sequence: usize,
    pub event_type: String,
    pub(crate) event_version: String,
    pub(crate) payload: Value,
    pub(crate) metadata: Value,
}

impl RawEvent {
    pub(crate) fn hash(&self) -> Option<&str> {
        self.metadata.get("hash").and_then(Value::as_str)
    }

    pub(crate) fn prev_hash(&self) -> Option<&str> {
        self.metadata.get("prev_hash").and_then(Value::as_str)
    }

    /// The hash this event should carry, computed from its contents.
    pub(crate) fn computed_hash(&self) -> String {
        let mut metadata = self.metadata.clone();
        if let Value::Object(map) = &mut metadata {
            map.remove("hash");
        }
        let mut message = String::with_capacity(512);
        message.push_str(CHAIN_SCHEME);
        for part in [
            self.prev_hash().unwrap_or(""),
            &self.tenant_id,
            &self.sequence.to_string(),
            &self.event_type,
            &self.event_version,
        ] {
            message.push('\n');
            message.push_str(part);
        }
        message.push('\n');
        canonical_json(&self.payload, &mut message);
        message.push('\n');
        canonical_json(&metadata, &mut message);
        hex::encode(Sha256::digest(message.as_bytes()))
    }
}

/// JSON with object keys in byte order and no whitespace; strings and numbers as
/// serde_json writes them. (Not serde_json's own output: with its
/// `preserve_order` feature, which any crate in the build may switch on, maps
/// keep insertion order.)
pub(crate) fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", Value::String(key.clone()));
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// Why a chain is broken, at the first sequence where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainBreak {
    /// A sequence is missing or out of order (an event was removed or moved).
    Sequence { expected: usize, found: usize },
    /// `prev_hash` does not name the previous event (one before it was changed,
    /// removed or reordered).
    PrevHash { sequence: usize },
    /// The event's contents do not match its hash (it was changed).
    Hash { sequence: usize },
    /// An event without a hash after chained ones (its hash was stripped).
    Unchained { sequence: usize },
}

impl ChainBreak {
    pub fn sequence(&self) -> usize {
        match self {
            ChainBreak::Sequence { expected, .. } => *expected,
            ChainBreak::PrevHash { sequence }
            | ChainBreak::Hash { sequence }
            | ChainBreak::Unchained { sequence } => *sequence,
        }
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Sequence { expected, found } => write!(
                f,
                "sequence {expected} expected, {found} found (an event was removed or moved)"
            ),
            ChainBreak::PrevHash { sequence } => write!(
                f,
                "event {sequence}: prev_hash does not match the previous event"
            ),
            ChainBreak::Hash { sequence } => {
                write!(f, "event {sequence}: contents do not match its hash")
            }
            ChainBreak::Unchained { sequence } => {
                write!(f, "event {sequence}: no hash after chained events")
            }
        }
    }
}

/// The outcome of checking one tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub tenant_id: String,
    pub events: usize,
    /// Leading events written before the chain existed (no hash): not covered.
    pub unchained_prefix: usize,
    /// The last event's hash, when the chain is intact.
    pub head: Option<String>,
    pub first_break: Option<ChainBreak>,
}

/// Checks a tenant's events, in the order given, from sequence 1.
pub fn verify_chain(tenant_id: &str, events: &[RawEvent]) -> ChainReport {
    let mut report = ChainReport {
        tenant_id: tenant_id.to_string(),
        events: events.len(),
        unchained_prefix: 0,
        head: None,
        first_break: None,
    };
    let mut previous: Option<String> = None;
    for (index, event) in events.iter().enumerate() {
        let expected = index + 1;
        let broken = if event.sequence != expected || event.tenant_id != tenant_id {
            Some(ChainBreak::Sequence {
                expected,
                found: event.sequence,
            })
        } else {
            match (event.hash(), &previous) {
                // Written before chaining: allowed only before the first chained event.
                (None, None) => {
                    report.unchained_prefix += 1;
                    None
                }
                (None, Some(_)) => Some(ChainBreak::Unchained { sequence: expected }),
                (Some(hash), _) => {
                    let linked_to = previous.as_deref().unwrap_or(GENESIS_HASH);
                    if event.prev_hash() != Some(linked_to) {
                        Some(ChainBreak::PrevHash { sequence: expected })
                    } else if event.computed_hash() != hash {
                        Some(ChainBreak::Hash { sequence: expected })
                    } else {
                        previous = Some(hash.to_string());
                        None
                    }
                }
            }
        };
        if broken.is_some() {
            report.first_break = broken;
            return report;
        }
    }
    report.head = previous;
    report
}

/// Sets `prev_hash` and `hash` in freshly serialized metadata, continuing the chain
/// from `head` (the hash of the tenant's last event, `None` before the first
/// chained one). Returns the new head.
pub(crate) fn link(head: Option<&str>, event: &mut RawEvent) -> String {
    let prev = head.unwrap_or(GENESIS_HASH).to_string();
    if let Value::Object(map) = &mut event.metadata {
        map.remove("hash");
        map.insert("prev_hash".into(), Value::String(prev));
    }
    let hash = event.computed_hash();
    if let Value::Object(map) = &mut event.metadata {
        map.insert("hash".into(), Value::String(hash.clone()));
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: usize) -> Vec<RawEvent> {
        let mut head: Option<String> = None;
        (1..=n)
            .map(|sequence| {
                let mut event = RawEvent {
                    tenant_id: "t1".into(),
                    sequence,
                    event_type: "CreditsGranted".into(),
                    event_version: "1".into(),
                    payload: json!({"CreditsGranted": {"amount_pico": sequence.to_string(), "reason": "r"}}),
                    metadata: json!({"recorded_at": "2026-11-26T00:00:00Z", "tenant_id": "t1"}),
                };
                head = Some(link(head.as_deref(), &mut event));
                event
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let events = chain(5);
        let report = verify_chain("t1", &events);
        assert_eq!(report.first_break, None);
        assert_eq!(report.head.as_deref(), events[4].hash());
        assert_eq!(events[0].prev_hash(), Some(GENESIS_HASH));
    }

    #[test]
    fn a_changed_payload_breaks_at_its_sequence() {
        let mut events = chain(5);
        events[2].payload["CreditsGranted"]["amount_pico"] = json!("999");
        let report = verify_chain("t1", &events);
        assert_eq!(report.first_break, Some(ChainBreak::Hash { sequence: 3 }));
    }

    #[test]
    fn a_removed_event_breaks_at_the_missing_sequence() {
        let mut events = chain(5);
        events.remove(3);
        let report = verify_chain("t1", &events);
        assert_eq!(
            report.first_break,
            Some(ChainBreak::Sequence {
                expected: 4,
                found: 5
            })
        );
    }

    #[test]
    fn reordered_events_break_at_the_first_moved() {
        let mut events = chain(5);
        // Swap the contents of 2 and 4, keeping the sequence numbers in place.
        let (a, b) = (events[1].clone(), events[3].clone());
        events[1] = RawEvent { sequence: 2, ..b };
        events[3] = RawEvent { sequence: 4, ..a };
        let report = verify_chain("t1", &events);
        assert_eq!(
            report.first_break,
            Some(ChainBreak::PrevHash { sequence: 2 })
        );
    }

    #[test]
    fn key_order_does_not_change_the_hash() {
        let event = &chain(1)[0];
        let reordered: Value =
            serde_json::from_str(r#"{"tenant_id":"t1","recorded_at":"2026-11-26T00:00:00Z"}"#)
                .unwrap();
        let mut copy = event.clone();
        copy.metadata = reordered;
        copy.metadata["prev_hash"] = json!(GENESIS_HASH);
        assert_eq!(copy.computed_hash(), event.hash().unwrap());
    }

    #[test]
    fn canonical_json_sorts_keys_and_escapes_strings() {
        let mut out = String::new();
        canonical_json(
            &json!({"b": [1, "x\"y"], "a": {"d": null, "c": true}}),
            &mut out,
        );
        assert_eq!(out, r#"{"a":{"c":true,"d":null},"b":[1,"x\"y"]}"#);
    }
}
