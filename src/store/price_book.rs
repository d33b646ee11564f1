//! How price book events are stored: in the same `events` table as tenants'
//! (aggregate type `PriceBook`, one stream), so both stores keep them with the
//! same optimistic concurrency and the projector's log read (tenants only) never
//! sees them. Metadata is the wall time of the write and who made it.

use super::StoreError;
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::DomainEvent;
use domain::price_book::{PriceBookEvent, PRICE_BOOK_ID};
use domain::ChangedBy;

pub(crate) fn serialize(
    sequence: usize,
    event: &PriceBookEvent,
    recorded_at: DateTime<Utc>,
    actor: &ChangedBy,
) -> Result<SerializedEvent, StoreError> {
    let payload = serde_json::to_value(event)
        .map_err(|e| StoreError::Corrupt(format!("price book event: {e}")))?;
    Ok(SerializedEvent::new(
        PRICE_BOOK_ID.to_string(),
        sequence,
        "PriceBook".to_string(),
        event.event_type(),
        event.event_version(),
        payload,
        serde_json::json!({ "recorded_at": recorded_at, "actor": actor }),
    ))
}

/// A price book event as stored, with who made it.
#[derive(Clone, Debug)]
pub struct StoredPriceBookEvent {
    pub sequence: usize,
    pub event: PriceBookEvent,
    /// Absent on events written before it was recorded.
    pub actor: Option<ChangedBy>,
}

pub(crate) fn deserialize(event: SerializedEvent) -> Result<StoredPriceBookEvent, StoreError> {
    let sequence = event.sequence;
    let corrupt =
        |e: serde_json::Error| StoreError::Corrupt(format!("price book event {sequence}: {e}"));
    let decoded = serde_json::from_value(event.payload).map_err(corrupt)?;
    let actor = match event.metadata.get("actor") {
        Some(actor) => Some(serde_json::from_value(actor.clone()).map_err(corrupt)?),
        None => None,
    };
    Ok(StoredPriceBookEvent {
        sequence,
        event: decoded,
        actor,
    })
}
