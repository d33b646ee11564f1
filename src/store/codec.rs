//! Between domain events and the rows cqrs-es repositories store.

use super::hash_chain::{link, RawEvent, GENESIS_HASH};
use super::{LogPosition, StoreError};
use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use domain::tenant::{Tenant, TenantEvent};
use domain::{ChangedBy, InstanceId, RequestId, TenantId};
use serde::{Deserialize, Serialize};

/// Stored beside every event (cqrs-es's `metadata` column).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub recorded_at: DateTime<Utc>,
    pub tenant_id: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    pub instance_id: InstanceId,
    /// Who made the change. Absent on events written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ChangedBy>,
    /// The hash chain (see `crate::audit`): the tenant's previous event's hash,
    /// and this event's. Absent on events written before the chain existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// An event as read back from the global log.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub log_position: LogPosition,
    pub tenant_id: TenantId,
    pub sequence: usize,
    pub event: TenantEvent,
    pub metadata: EventMetadata,
}

pub(crate) fn serialize(
    tenant_id: TenantId,
    sequence: usize,
    event: &TenantEvent,
    metadata: &EventMetadata,
) -> Result<SerializedEvent, StoreError> {
    let encode = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    Ok(SerializedEvent::new(
        tenant_id.to_string(),
        sequence,
        Tenant::TYPE.to_string(),
        event.event_type(),
        event.event_version(),
        serde_json::to_value(event).map_err(encode)?,
        serde_json::to_value(metadata).map_err(encode)?,
    ))
}

/// The stored form of an event, as the audit chain sees it.
pub(crate) fn raw(event: SerializedEvent) -> RawEvent {
    RawEvent {
        tenant_id: event.aggregate_id,
        sequence: event.sequence,
        event_type: event.event_type,
        event_version: event.event_version,
        payload: event.payload,
        metadata: event.metadata,
    }
}

/// The inverse of [`raw`]: an event as stored, decoded (upcasters applied).
pub fn decode_raw(event: RawEvent) -> Result<(TenantEvent, EventMetadata), StoreError> {
    deserialize(SerializedEvent::new(
        event.tenant_id,
        event.sequence,
        Tenant::TYPE.to_string(),
        event.event_type,
        event.event_version,
        event.payload,
        event.metadata,
    ))
}

/// Links new events into their tenant's hash chain, continuing from `head` (the
/// hash of the tenant's last event). Fills each metadata's `prev_hash` and `hash`
/// and returns the new head.
pub fn chain(
    tenant_id: TenantId,
    first_sequence: usize,
    head: Option<String>,
    events: &mut [(TenantEvent, EventMetadata)],
) -> Result<Option<String>, StoreError> {
    let mut head = head;
    for (i, (event, metadata)) in events.iter_mut().enumerate() {
        metadata.prev_hash = None;
        metadata.hash = None;
        let mut stored = raw(serialize(tenant_id, first_sequence + i, event, metadata)?);
        let hash = link(head.as_deref(), &mut stored);
        metadata.prev_hash = Some(head.take().unwrap_or_else(|| GENESIS_HASH.to_string()));
        metadata.hash = Some(hash.clone());
        head = Some(hash);
    }
    Ok(head)
}

/// Upcasters for older event shapes, applied on every read (live and replay alike).
fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    domain::tenant::upcasters()
}

pub(crate) fn deserialize(
    event: SerializedEvent,
) -> Result<(TenantEvent, EventMetadata), StoreError> {
    let event = upcasters().iter().fold(event, |e, u| {
        if u.can_upcast(&e.event_type, &e.event_version) {
            u.upcast(e)
        } else {
            e
        }
    });
    let sequence = event.sequence;
    let payload: TenantEvent = serde_json::from_value(event.payload).map_err(|e| {
        StoreError::Corrupt(format!("event {} #{sequence}: {e}", event.aggregate_id))
    })?;
    let metadata: EventMetadata = serde_json::from_value(event.metadata).map_err(|e| {
        StoreError::Corrupt(format!(
            "metadata of {} #{sequence}: {e}",
            event.aggregate_id
        ))
    })?;
    Ok((payload, metadata))
}

/// Folds loaded events onto a state, checking that sequences follow each other.
/// Returns the state, its version, the events folded and the last one's chain hash.
pub(crate) fn fold(
    mut state: Tenant,
    mut version: usize,
    events: Vec<SerializedEvent>,
) -> Result<(Tenant, usize, usize, Option<String>), StoreError> {
    let count = events.len();
    let head = events
        .last()
        .and_then(|e| e.metadata.get("hash"))
        .and_then(|h| h.as_str())
        .map(str::to_string);
    for serialized in events {
        if serialized.sequence != version + 1 {
            return Err(StoreError::Corrupt(format!(
                "tenant {} has event #{} after #{version}",
                serialized.aggregate_id, serialized.sequence
            )));
        }
        version = serialized.sequence;
        let (event, _) = deserialize(serialized)?;
        state.apply_event(event);
    }
    Ok((state, version, count, head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Events stored before `actor` existed keep their shape and so their hash:
    /// they decode with no actor, and an event with none is stored without the key.
    #[test]
    fn metadata_from_before_the_actor_reads_and_writes_unchanged() {
        let old = json!({
            "recorded_at": "2026-11-26T00:00:00Z",
            "tenant_id": TenantId::new_random().to_string(),
            "instance_id": InstanceId::new_random().to_string(),
        });
        let metadata: EventMetadata = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(metadata.actor, None);
        assert_eq!(serde_json::to_value(&metadata).unwrap(), old);

        let with_actor = EventMetadata {
            actor: Some(ChangedBy::Hub),
            ..metadata
        };
        let stored = serde_json::to_value(&with_actor).unwrap();
        assert_eq!(stored["actor"], json!({"kind": "hub"}));
    }
}
