//! How price book events are stored: in the same `events` table as tenants'
//! (aggregate type `PriceBook`, one stream), so both stores keep them with the
//! same optimistic concurrency and the projector's log read (tenants only) never
//! sees them. Metadata is only the wall time of the write.

use super::StoreError;
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::DomainEvent;
use domain::price_book::{PriceBookEvent, PRICE_BOOK_ID};

pub(crate) fn serialize(
    sequence: usize,
    event: &PriceBookEvent,
    recorded_at: DateTime<Utc>,
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
        serde_json::json!({ "recorded_at": recorded_at }),
    ))
}

pub(crate) fn deserialize(event: SerializedEvent) -> Result<(usize, PriceBookEvent), StoreError> {
    let sequence = event.sequence;
    let decoded = serde_json::from_value(event.payload)
        .map_err(|e| StoreError::Corrupt(format!("price book event {sequence}: {e}")))?;
    Ok((sequence, decoded))
}
