//! Upcasters: turn events stored in an older shape into the current one on read.
//!
//! Stored events are never rewritten. When a variant's shape changes, its
//! `event_version` goes up, and an upcaster registered here converts the older
//! payload; live loading, projections and replay all read through this list, so
//! they agree. Every upcaster comes with a test that replays the old shape.
//!
//! Payloads are serde's external tagging of [`TenantEvent`](super::TenantEvent):
//! `{"CreditsGranted": {"amount_pico": "…", …}}`.

use crate::pricing::{ChargeTerms, Rates};
use crate::tenant::events::{
    CREDITS_GRANTED_VERSION, CREDITS_RESERVED_VERSION, USAGE_SETTLED_VERSION,
};
use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::Value;

/// All upcasters, oldest first.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![
        Box::new(SemanticVersionEventUpcaster::new(
            "CreditsGranted",
            CREDITS_GRANTED_VERSION,
            Box::new(credits_granted_1_to_2),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            "UsageSettled",
            USAGE_SETTLED_VERSION,
            Box::new(usage_settled_1_to_2),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            "CreditsReserved",
            CREDITS_RESERVED_VERSION,
            Box::new(credits_reserved_1_to_2),
        )),
    ]
}

/// `CreditsReserved` 1.0 → 2.0: no end user was recorded and no limit was named
/// as checked; the project is left out (`null`), so applying the event takes
/// the key's, exactly as 1.0 did.
fn credits_reserved_1_to_2(mut payload: Value) -> Value {
    if let Some(Value::Object(fields)) = payload.get_mut("CreditsReserved") {
        fields.entry("project").or_insert(Value::Null);
        fields.entry("end_user").or_insert(Value::Null);
        fields
            .entry("scopes_checked")
            .or_insert(Value::Array(Vec::new()));
    }
    payload
}

/// `UsageSettled` 1.0 → 2.0: before the price book, a model had one price, sold
/// directly; its cost to the operator is taken to be that price (margin unknown,
/// so none), and the provider cost of the charge is the charge.
fn usage_settled_1_to_2(mut payload: Value) -> Value {
    if let Some(Value::Object(fields)) = payload.get_mut("UsageSettled") {
        let rates = fields
            .get("rates")
            .cloned()
            .and_then(|r| serde_json::from_value::<Rates>(r).ok());
        if let Some(rates) = rates {
            let terms =
                serde_json::to_value(ChargeTerms::sold_directly(rates)).expect("terms serialize");
            fields.entry("terms").or_insert(terms);
        }
        if let Some(cost) = fields.get("cost_pico").cloned() {
            fields.entry("provider_cost_pico").or_insert(cost);
        }
    }
    payload
}

/// `CreditsGranted` 1.0 → 2.0: grants before 2.0 never expire (`expires_at: null`)
/// and none came from a payment (`payment` absent).
fn credits_granted_1_to_2(mut payload: Value) -> Value {
    if let Some(Value::Object(fields)) = payload.get_mut("CreditsGranted") {
        fields.entry("expires_at").or_insert(Value::Null);
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Credits;
    use crate::tenant::{Tenant, TenantEvent};
    use chrono::{TimeZone, Utc};
    use cqrs_es::persist::{SemanticVersion, SerializedEvent};
    use cqrs_es::DomainEvent;
    use serde_json::json;

    /// A `CreditsGranted` exactly as version 1.0 wrote it.
    fn stored_v1() -> SerializedEvent {
        SerializedEvent::new(
            "00000000-0000-0000-0000-000000000001".into(),
            2,
            "Tenant".into(),
            "CreditsGranted".into(),
            "1.0".into(),
            json!({"CreditsGranted": {
                "amount_pico": "2500000000000",
                "idempotency_key": "inv-1",
                "reason": "top-up",
                "at": "2026-01-01T00:00:00Z"
            }}),
            json!({}),
        )
    }

    /// What the store does on every read (`src/store/codec.rs`).
    fn read(event: SerializedEvent) -> SerializedEvent {
        upcasters().iter().fold(event, |e, u| {
            if u.can_upcast(&e.event_type, &e.event_version) {
                u.upcast(e)
            } else {
                e
            }
        })
    }

    #[test]
    fn credits_granted_1_0_replays_as_a_grant_that_never_expires() {
        let upcast = read(stored_v1());
        // The upcaster writes the version as "2.0.0": the same version as "2.0".
        assert_eq!(
            upcast.event_version.parse::<SemanticVersion>(),
            CREDITS_GRANTED_VERSION.parse::<SemanticVersion>()
        );
        // The payload now has the 2.0 shape: an explicit "never expires".
        assert_eq!(upcast.payload["CreditsGranted"]["expires_at"], Value::Null);
        assert!(upcast.payload["CreditsGranted"]
            .as_object()
            .unwrap()
            .contains_key("expires_at"));
        let event: TenantEvent = serde_json::from_value(upcast.payload).unwrap();
        let expected = TenantEvent::CreditsGranted {
            amount_pico: Credits::parse("2.5").unwrap(),
            idempotency_key: "inv-1".into(),
            reason: "top-up".into(),
            expires_at: None,
            payment: None,
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        };
        assert_eq!(event, expected);
        assert_eq!(event.event_version(), CREDITS_GRANTED_VERSION);

        // Replayed, it is a lot without expiry: nothing of it ever expires.
        let mut tenant = Tenant::default();
        tenant.apply_event(event);
        assert_eq!(tenant.balance().available, Credits::parse("2.5").unwrap());
        assert!(tenant.lots.is_empty());
        assert_eq!(tenant.grants["inv-1"].expires_at, None);
    }

    /// A `UsageSettled` exactly as version 1.0 wrote it.
    fn settled_v1() -> SerializedEvent {
        SerializedEvent::new(
            "00000000-0000-0000-0000-000000000001".into(),
            5,
            "Tenant".into(),
            "UsageSettled".into(),
            "1.0".into(),
            json!({"UsageSettled": {
                "request_id": "00000000-0000-0000-0000-0000000000aa",
                "key_id": "00000000-0000-0000-0000-0000000000bb",
                "provider": "openai",
                "model": "openai/gpt-4o-mini",
                "usage": {"input_tokens": 10, "cache_read_tokens": 0, "cache_write_tokens": 0,
                          "output_tokens": 20, "reasoning_tokens": 0, "estimated": false},
                "price_version": 3,
                "rates": {"input_pico_per_token": "1000000", "output_pico_per_token": "2000000",
                          "cache_read_pico_per_token": "1000000", "cache_write_pico_per_token": "1000000"},
                "cost_pico": "50000000",
                "hold_pico": "90000000",
                "overshoot_pico": "0",
                "upstream_latency_ms": 12,
                "at": "2026-01-01T00:00:00Z"
            }}),
            json!({}),
        )
    }

    #[test]
    fn usage_settled_1_0_replays_as_sold_directly_at_a_cost_equal_to_its_price() {
        let upcast = read(settled_v1());
        assert_eq!(
            upcast.event_version.parse::<SemanticVersion>(),
            USAGE_SETTLED_VERSION.parse::<SemanticVersion>()
        );
        let event: TenantEvent = serde_json::from_value(upcast.payload).unwrap();
        let TenantEvent::UsageSettled {
            rates,
            terms,
            cost_pico,
            provider_cost_pico,
            price_version,
            ..
        } = &event
        else {
            panic!("not a settlement: {event:?}");
        };
        assert_eq!(*price_version, 3);
        assert_eq!(*terms, ChargeTerms::sold_directly(*rates));
        assert_eq!(*cost_pico, Credits::from_pico(50_000_000));
        assert_eq!(provider_cost_pico, cost_pico);
        assert_eq!(event.event_version(), USAGE_SETTLED_VERSION);
        // The charge itself is unchanged by the upcast: replayed balances agree.
        assert_eq!(
            crate::tenant::aggregate::available_delta(&event),
            Credits::from_pico(90_000_000 - 50_000_000)
        );
    }

    /// A `CreditsReserved` exactly as version 1.0 wrote it.
    fn reserved_v1() -> SerializedEvent {
        SerializedEvent::new(
            "00000000-0000-0000-0000-000000000001".into(),
            4,
            "Tenant".into(),
            "CreditsReserved".into(),
            "1.0".into(),
            json!({"CreditsReserved": {
                "request_id": "00000000-0000-0000-0000-0000000000aa",
                "key_id": "00000000-0000-0000-0000-0000000000bb",
                "model": "openai/gpt-4o-mini",
                "capability": "chat",
                "ingress": "openai",
                "app": null,
                "price_version": 3,
                "rates": {"input_pico_per_token": "1000000", "output_pico_per_token": "2000000",
                          "cache_read_pico_per_token": "1000000", "cache_write_pico_per_token": "1000000"},
                "hold_pico": "90000000",
                "prompt_bytes": 36,
                "max_output_tokens": 40,
                "images_requested": 0,
                "instance_id": "00000000-0000-0000-0000-0000000000cc",
                "expires_at": "2026-01-01T00:10:00Z",
                "at": "2026-01-01T00:00:00Z"
            }}),
            json!({}),
        )
    }

    #[test]
    fn credits_reserved_1_0_replays_with_no_end_user_and_nothing_named_as_checked() {
        let upcast = read(reserved_v1());
        assert_eq!(
            upcast.event_version.parse::<SemanticVersion>(),
            CREDITS_RESERVED_VERSION.parse::<SemanticVersion>()
        );
        let fields = &upcast.payload["CreditsReserved"];
        assert_eq!(fields["end_user"], Value::Null);
        assert_eq!(fields["project"], Value::Null);
        assert_eq!(fields["scopes_checked"], json!([]));
        let event: TenantEvent = serde_json::from_value(upcast.payload).unwrap();
        let TenantEvent::CreditsReserved {
            end_user,
            project,
            scopes_checked,
            hold_pico,
            ..
        } = &event
        else {
            panic!("not a reservation: {event:?}");
        };
        assert_eq!((end_user, project), (&None, &None));
        assert!(scopes_checked.is_empty());
        assert_eq!(*hold_pico, Credits::from_pico(90_000_000));
        assert_eq!(event.event_version(), CREDITS_RESERVED_VERSION);
    }

    #[test]
    fn current_events_and_other_types_are_left_alone() {
        let current = TenantEvent::CreditsGranted {
            amount_pico: Credits::from_pico(1),
            idempotency_key: "k".into(),
            reason: "r".into(),
            expires_at: Some(Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()),
            payment: None,
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        };
        let stored = SerializedEvent::new(
            "t".into(),
            1,
            "Tenant".into(),
            current.event_type(),
            current.event_version(),
            serde_json::to_value(&current).unwrap(),
            json!({}),
        );
        let read_back = read(stored.clone());
        assert_eq!(read_back, stored);
        assert_eq!(
            serde_json::from_value::<TenantEvent>(read_back.payload).unwrap(),
            current
        );

        let mut other = stored_v1();
        other.event_type = "ApiKeyRevoked".into();
        assert_eq!(read(other.clone()), other);
    }

    #[test]
    fn a_snapshot_from_before_lots_and_payments_still_loads() {
        // The tenant state as snapshots stored it before this version.
        let old = json!({
            "tenant_id": "00000000-0000-0000-0000-000000000001",
            "name": "acme",
            "keys": {},
            "granted": "5000000000000",
            "spent": "1000000000000",
            "held": "0",
            "holds": {},
            "grants": {"g1": {"amount": "5000000000000", "reason": "top-up", "at": "2026-01-01T00:00:00Z"}}
        });
        let tenant: Tenant = serde_json::from_value(old).unwrap();
        let balance = tenant.balance();
        assert_eq!(balance.available, Credits::parse("4").unwrap());
        assert_eq!(balance.expired, Credits::ZERO);
        assert_eq!(balance.revoked, Credits::ZERO);
        assert!(tenant.lots.is_empty() && tenant.payments.is_empty());
        assert_eq!(tenant.grants["g1"].expires_at, None);
    }
}
