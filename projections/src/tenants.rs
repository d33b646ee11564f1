//! The operator's tenant directory: who the tenants are, when they were
//! created, their status and how many keys they have ([`Tenants`]), and each
//! tenant's keys ([`TenantKeys`]).
//!
//! Two projections rather than one, because the directory list reads every
//! tenant's row: a tenant with thousands of keys must not make that read
//! heavier. Neither keeps money: the available balance is the balances
//! projection's, and a tenant's plan and margin live in the price book, read
//! when asked. Both rows change only on the few events that concern them
//! (creation, keys, status), never on a model request's.

use crate::{LoggedEvent, Projection};
use chrono::{DateTime, Utc};
use domain::tenant::TenantEvent;
use domain::{KeyId, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A tenant's standing, as the directory shows and filters it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Active,
    /// Model requests refused until resumed.
    Suspended,
    /// For good.
    Closed,
}

impl TenantStatus {
    /// Every status, in the order error messages list them.
    pub const ALL: [TenantStatus; 3] = [
        TenantStatus::Active,
        TenantStatus::Suspended,
        TenantStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Closed => "closed",
        }
    }

    /// The status named `raw` (as [`TenantStatus::as_str`] spells it).
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// The status a tenant has after `event`; `None` when the event leaves it as
/// it was. The one place that knows which events change a tenant's status.
pub fn status_after(event: &TenantEvent) -> Option<TenantStatus> {
    match event {
        TenantEvent::TenantCreated { .. } | TenantEvent::TenantResumed { .. } => {
            Some(TenantStatus::Active)
        }
        TenantEvent::TenantSuspended { .. } => Some(TenantStatus::Suspended),
        TenantEvent::TenantClosed { .. } => Some(TenantStatus::Closed),
        // Listed one by one, so that a new event makes this match decide.
        TenantEvent::ApiKeyIssued { .. }
        | TenantEvent::ApiKeyRevoked { .. }
        | TenantEvent::ApiKeyScopesSet { .. }
        | TenantEvent::KeyProjectSet { .. }
        | TenantEvent::ProjectCreated { .. }
        | TenantEvent::ProjectScopesSet { .. }
        | TenantEvent::ProjectDeleted { .. }
        | TenantEvent::CreditsGranted { .. }
        | TenantEvent::CreditsExpired { .. }
        | TenantEvent::CreditsRevoked { .. }
        | TenantEvent::CreditsReserved { .. }
        | TenantEvent::UsageSettled { .. }
        | TenantEvent::UpstreamAttempted { .. }
        | TenantEvent::HoldReleased { .. }
        | TenantEvent::LowBalanceThresholdSet { .. }
        | TenantEvent::LowBalanceCrossed { .. }
        | TenantEvent::PaymentEventNoted { .. }
        | TenantEvent::CreditsClosedOut { .. } => None,
    }
}

/// Whether `event` changes a directory row: creation, keys, status.
fn concerns_directory(event: &TenantEvent) -> bool {
    matches!(
        event,
        TenantEvent::TenantCreated { .. }
            | TenantEvent::ApiKeyIssued { .. }
            | TenantEvent::ApiKeyRevoked { .. }
    ) || status_after(event).is_some()
}

/// One row per tenant, keyed by its id.
pub struct Tenants;

impl Tenants {
    /// Stored name of the projection.
    pub const NAME: &'static str = "tenants";
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRow {
    pub tenant_id: String,
    pub name: String,
    /// The `at` of `TenantCreated`: the hub's business clock when it was created.
    pub created_at: DateTime<Utc>,
    pub status: TenantStatus,
    pub keys_active: u64,
    pub keys_revoked: u64,
}

impl Projection for Tenants {
    type Row = TenantRow;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
        if concerns_directory(event.event) {
            vec![event.tenant_id.to_string()]
        } else {
            Vec::new()
        }
    }

    fn fold<'a>(
        &self,
        rows: &mut BTreeMap<String, TenantRow>,
        events: impl IntoIterator<Item = LoggedEvent<'a>>,
    ) {
        for event in events {
            // Only the rows of events that concern the directory were loaded.
            if !concerns_directory(event.event) {
                continue;
            }
            let key = event.tenant_id.to_string();
            let row = rows.entry(key.clone()).or_default();
            row.tenant_id = key;
            apply(row, event.event);
        }
    }
}

fn apply(row: &mut TenantRow, event: &TenantEvent) {
    match event {
        TenantEvent::TenantCreated { name, at, .. } => {
            row.name = name.clone();
            row.created_at = *at;
        }
        TenantEvent::ApiKeyIssued { .. } => row.keys_active += 1,
        TenantEvent::ApiKeyRevoked { .. } => {
            // Saturating: a fold attempt that lost a checkpoint race may see an
            // event twice; its result is discarded, it must not panic.
            row.keys_active = row.keys_active.saturating_sub(1);
            row.keys_revoked += 1;
        }
        _ => {}
    }
    if let Some(status) = status_after(event) {
        row.status = status;
    }
}

/// One row per tenant, keyed by its id: its keys in the order they were issued.
pub struct TenantKeys;

impl TenantKeys {
    /// Stored name of the projection.
    pub const NAME: &'static str = "tenant_keys";
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantKeysRow {
    /// Oldest first: a key issued later is appended, so positions never move.
    pub keys: Vec<KeyEntry>,
}

/// A key as the operator lists it: never its secret nor the secret's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub key_id: KeyId,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn concerns_keys(event: &TenantEvent) -> bool {
    matches!(
        event,
        TenantEvent::ApiKeyIssued { .. } | TenantEvent::ApiKeyRevoked { .. }
    )
}

impl Projection for TenantKeys {
    type Row = TenantKeysRow;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
        if concerns_keys(event.event) {
            vec![event.tenant_id.to_string()]
        } else {
            Vec::new()
        }
    }

    fn fold<'a>(
        &self,
        rows: &mut BTreeMap<String, TenantKeysRow>,
        events: impl IntoIterator<Item = LoggedEvent<'a>>,
    ) {
        for event in events {
            match event.event {
                TenantEvent::ApiKeyIssued {
                    key_id,
                    name,
                    role,
                    at,
                    ..
                } => {
                    let row = rows.entry(event.tenant_id.to_string()).or_default();
                    row.keys.push(KeyEntry {
                        key_id: *key_id,
                        name: name.clone(),
                        role: *role,
                        created_at: *at,
                        revoked_at: None,
                    });
                }
                TenantEvent::ApiKeyRevoked { key_id, at } => {
                    let row = rows.entry(event.tenant_id.to_string()).or_default();
                    // The aggregate revokes a key once; the first revocation stands.
                    if let Some(key) = row
                        .keys
                        .iter_mut()
                        .find(|k| k.key_id == *key_id && k.revoked_at.is_none())
                    {
                        key.revoked_at = Some(*at);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::tenant::KeyHash;
    use domain::{Credits, RequestId, TenantId};

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_767_225_600 + s, 0).unwrap()
    }

    fn fold<P: Projection>(
        projection: &P,
        tenant: TenantId,
        events: &[TenantEvent],
    ) -> BTreeMap<String, P::Row> {
        let mut rows = BTreeMap::new();
        projection.fold(
            &mut rows,
            events.iter().enumerate().map(|(i, event)| LoggedEvent {
                tenant_id: tenant,
                sequence: i + 1,
                event,
                recorded_at: t(0),
            }),
        );
        rows
    }

    fn issued(key_id: KeyId, at: i64) -> TenantEvent {
        TenantEvent::ApiKeyIssued {
            key_id,
            name: "app".into(),
            role: Role::Member,
            key_hash: KeyHash::of_secret("secret"),
            at: t(at),
        }
    }

    fn created(tenant: TenantId) -> TenantEvent {
        TenantEvent::TenantCreated {
            tenant_id: tenant,
            name: "acme".into(),
            at: t(1),
        }
    }

    #[test]
    fn a_tenant_row_counts_active_and_revoked_keys() {
        let tenant = TenantId::new_random();
        let (a, b) = (KeyId::new_random(), KeyId::new_random());
        let rows = fold(
            &Tenants,
            tenant,
            &[
                created(tenant),
                issued(a, 2),
                issued(b, 3),
                TenantEvent::ApiKeyRevoked {
                    key_id: a,
                    at: t(4),
                },
            ],
        );
        let row = &rows[&tenant.to_string()];
        assert_eq!(row.name, "acme");
        assert_eq!(row.created_at, t(1));
        assert_eq!(row.status, TenantStatus::Active);
        assert_eq!((row.keys_active, row.keys_revoked), (1, 1));
    }

    #[test]
    fn model_requests_touch_no_directory_row() {
        let tenant = TenantId::new_random();
        let released = TenantEvent::HoldReleased {
            request_id: RequestId::new_random(),
            hold_pico: Credits::from_pico(5),
            reason: "x".into(),
            at: t(2),
        };
        let event = LoggedEvent {
            tenant_id: tenant,
            sequence: 2,
            event: &released,
            recorded_at: t(2),
        };
        assert!(Tenants.row_keys(&event).is_empty());
        assert!(TenantKeys.row_keys(&event).is_empty());
        // Its row was not loaded, so the fold must not make one.
        assert!(fold(&Tenants, tenant, std::slice::from_ref(&released)).is_empty());
        assert!(fold(&TenantKeys, tenant, &[released]).is_empty());
    }

    #[test]
    fn keys_are_listed_in_issue_order_with_their_revocation_and_no_hash() {
        let tenant = TenantId::new_random();
        let (a, b) = (KeyId::new_random(), KeyId::new_random());
        let rows = fold(
            &TenantKeys,
            tenant,
            &[
                created(tenant),
                issued(a, 2),
                issued(b, 3),
                TenantEvent::ApiKeyRevoked {
                    key_id: b,
                    at: t(4),
                },
            ],
        );
        let row = &rows[&tenant.to_string()];
        let ids: Vec<KeyId> = row.keys.iter().map(|k| k.key_id).collect();
        assert_eq!(ids, vec![a, b]);
        assert_eq!(row.keys[0].revoked_at, None);
        assert_eq!(row.keys[1].revoked_at, Some(t(4)));
        let text = serde_json::to_string(row).unwrap();
        assert!(
            !text.contains(KeyHash::of_secret("secret").as_str()),
            "{text}"
        );
    }

    #[test]
    fn statuses_parse_from_their_names_only() {
        for status in TenantStatus::ALL {
            assert_eq!(TenantStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        assert_eq!(TenantStatus::parse("Active"), None);
        assert_eq!(TenantStatus::parse("gone"), None);
    }
}
