//! Balances per tenant: granted, spent, expired, revoked, closed out, held,
//! available, open holds, and the lots that expire.
//!
//! Fields added after the first version are skipped while they are empty, so a
//! row of a tenant that never had an expiring grant or a refund serializes byte
//! for byte as before, and rows written by the older fold still compare equal to
//! a replay.

use crate::{LoggedEvent, Projection};
use chrono::{DateTime, Utc};
use domain::tenant::{ExpiringLots, TenantEvent};
use domain::Credits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One row per tenant, keyed by its id.
pub struct Balances;

impl Balances {
    /// Stored name of the projection.
    pub const NAME: &'static str = "balances";
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceRow {
    pub tenant_id: String,
    pub name: String,
    pub granted: Credits,
    pub spent: Credits,
    pub held: Credits,
    pub available: Credits,
    pub open_holds: u64,
    pub requests_settled: u64,
    pub requests_released: u64,
    pub last_sequence: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired: Credits,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revoked: Credits,
    /// Taken out when the tenant closed (forfeited or refunded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub closed_out: Credits,
    /// What is left of each grant that expires, earliest expiry first. Figures that
    /// depend on the reading time (credit expiring within a window) are computed
    /// from these when read, never stored, so a replay always equals the live row.
    #[serde(default, skip_serializing_if = "ExpiringLots::is_empty")]
    pub lots: ExpiringLots,
}

fn is_zero(c: &Credits) -> bool {
    *c == Credits::ZERO
}

impl BalanceRow {
    /// `granted − spent − expired − revoked − closed_out`: credit left, held or
    /// not.
    pub fn position(&self) -> Credits {
        self.granted - self.spent - self.expired - self.revoked - self.closed_out
    }

    /// When the tenant's next lot expires: the expiry pass looks for rows where
    /// this has passed.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.lots.next_expiry()
    }

    /// Credit of lots expiring at or before `until`.
    pub fn expiring_by(&self, until: DateTime<Utc>) -> Credits {
        self.lots.expiring_by(until)
    }
}

impl Projection for Balances {
    type Row = BalanceRow;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
        vec![event.tenant_id.to_string()]
    }

    fn fold<'a>(
        &self,
        rows: &mut BTreeMap<String, BalanceRow>,
        events: impl IntoIterator<Item = LoggedEvent<'a>>,
    ) {
        for event in events {
            let key = event.tenant_id.to_string();
            let row = rows.entry(key.clone()).or_default();
            apply(&key, row, &event);
        }
    }
}

/// Changes a tenant's row by one of its events.
fn apply(key: &str, row: &mut BalanceRow, event: &LoggedEvent<'_>) {
    row.tenant_id = key.to_string();
    row.last_sequence = event.sequence as u64;
    // The same lot rules as the aggregate's (domain::tenant::ledger).
    let position = row.position();
    row.lots.apply(event.event, position);
    match event.event {
        TenantEvent::TenantCreated { name, .. } => row.name = name.clone(),
        TenantEvent::CreditsGranted { amount_pico, .. } => row.granted = row.granted + *amount_pico,
        TenantEvent::CreditsExpired { amount_pico, .. } => row.expired = row.expired + *amount_pico,
        TenantEvent::CreditsRevoked { amount_pico, .. } => row.revoked = row.revoked + *amount_pico,
        TenantEvent::CreditsClosedOut { amount_pico, .. } => {
            row.closed_out = row.closed_out + *amount_pico
        }
        TenantEvent::CreditsReserved { hold_pico, .. } => {
            row.held = row.held + *hold_pico;
            row.open_holds += 1;
        }
        TenantEvent::UsageSettled {
            hold_pico,
            cost_pico,
            ..
        } => {
            row.held = row.held - *hold_pico;
            row.spent = row.spent + *cost_pico;
            // Saturating: a fold attempt that lost a checkpoint race may see an
            // event twice in memory; its result is discarded, it must not panic.
            row.open_holds = row.open_holds.saturating_sub(1);
            row.requests_settled += 1;
        }
        TenantEvent::HoldReleased { hold_pico, .. } => {
            row.held = row.held - *hold_pico;
            row.open_holds = row.open_holds.saturating_sub(1);
            row.requests_released += 1;
        }
        TenantEvent::ApiKeyIssued { .. }
        | TenantEvent::ApiKeyRevoked { .. }
        | TenantEvent::ApiKeyScopesSet { .. }
        | TenantEvent::KeyProjectSet { .. }
        | TenantEvent::ProjectCreated { .. }
        | TenantEvent::ProjectScopesSet { .. }
        | TenantEvent::ProjectDeleted { .. }
        | TenantEvent::UpstreamAttempted { .. }
        | TenantEvent::LowBalanceThresholdSet { .. }
        | TenantEvent::LowBalanceCrossed { .. }
        | TenantEvent::PaymentEventNoted { .. }
        | TenantEvent::TenantSuspended { .. }
        | TenantEvent::TenantResumed { .. }
        | TenantEvent::TenantClosed { .. } => {}
    }
    row.available = row.position() - row.held;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoggedEvent, Projection};
    use chrono::Utc;
    use domain::{RequestId, TenantId};
    use std::collections::BTreeMap;

    #[test]
    fn a_release_without_its_reservation_does_not_panic() {
        // What a fold attempt that lost a checkpoint race can see; it is discarded.
        let tenant = TenantId::new_random();
        let event = TenantEvent::HoldReleased {
            request_id: RequestId::new_random(),
            hold_pico: Credits::from_pico(5),
            reason: "x".into(),
            at: Utc::now(),
        };
        let mut rows: BTreeMap<String, BalanceRow> = BTreeMap::new();
        Balances.fold(
            &mut rows,
            [LoggedEvent {
                tenant_id: tenant,
                sequence: 1,
                event: &event,
                recorded_at: Utc::now(),
            }],
        );
        assert_eq!(rows[&tenant.to_string()].open_holds, 0);
    }

    fn fold_all(tenant: TenantId, events: &[TenantEvent]) -> BalanceRow {
        let mut rows: BTreeMap<String, BalanceRow> = BTreeMap::new();
        Balances.fold(
            &mut rows,
            events.iter().enumerate().map(|(i, event)| LoggedEvent {
                tenant_id: tenant,
                sequence: i + 1,
                event,
                recorded_at: Utc::now(),
            }),
        );
        rows.remove(&tenant.to_string()).unwrap()
    }

    #[test]
    fn a_row_without_expiry_or_refund_keeps_its_former_shape() {
        let tenant = TenantId::new_random();
        let row = fold_all(
            tenant,
            &[TenantEvent::CreditsGranted {
                amount_pico: Credits::from_pico(5),
                idempotency_key: "k".into(),
                reason: "r".into(),
                expires_at: None,
                payment: None,
                at: Utc::now(),
            }],
        );
        // Byte for byte what the fold wrote before lots, expiry and refunds existed.
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            format!(
                r#"{{"tenant_id":"{tenant}","name":"","granted":"5","spent":"0","held":"0","available":"5","open_holds":0,"requests_settled":0,"requests_released":0,"last_sequence":1}}"#
            )
        );
        // And a row written before these fields existed still reads.
        let old = r#"{"tenant_id":"t","name":"n","granted":"5","spent":"0","held":"0","available":"5","open_holds":0,"requests_settled":0,"requests_released":0,"last_sequence":1}"#;
        let read: BalanceRow = serde_json::from_str(old).unwrap();
        assert_eq!(read.expired, Credits::ZERO);
        assert!(read.lots.is_empty());
    }

    #[test]
    fn the_row_follows_the_aggregate_through_expiry_and_refunds() {
        use chrono::TimeZone;
        use domain::tenant::{PaymentRef, Tenant, TenantCommand};
        let t = |s: i64| Utc.timestamp_opt(1_767_225_600 + s, 0).unwrap();
        let tenant_id = TenantId::new_random();
        let mut tenant = Tenant::default();
        let mut events = Vec::new();
        let credits = |s: &str| Credits::parse(s).unwrap();
        let commands = vec![
            TenantCommand::CreateTenant {
                tenant_id,
                name: "acme".into(),
                initial_credits: credits("1"),
                at: t(0),
            },
            TenantCommand::GrantCredits {
                amount: credits("2"),
                idempotency_key: "promo".into(),
                reason: "promo".into(),
                expires_at: Some(t(100)),
                at: t(1),
            },
            TenantCommand::RecordPayment {
                payment_event_id: "evt_1".into(),
                payment_id: Some("pay_1".into()),
                amount: credits("3"),
                at: t(2),
            },
            TenantCommand::RefundPayment {
                payment_event_id: "evt_2".into(),
                payment_id: "pay_1".into(),
                amount: credits("5"),
                at: t(3),
            },
            TenantCommand::ExpireCredits { at: t(100) },
        ];
        for command in commands {
            for event in tenant.decide(command).unwrap() {
                tenant.apply_event(event.clone());
                events.push(event);
            }
        }
        assert!(events.iter().any(|e| matches!(
            e,
            TenantEvent::CreditsGranted {
                payment: Some(PaymentRef { .. }),
                ..
            }
        )));
        let row = fold_all(tenant_id, &events);
        let b = tenant.balance();
        assert_eq!(
            (
                row.granted,
                row.spent,
                row.expired,
                row.revoked,
                row.held,
                row.available
            ),
            (
                b.granted,
                b.spent,
                b.expired,
                b.revoked,
                b.held,
                b.available
            )
        );
        assert_eq!(row.lots, tenant.lots);
        assert_eq!(row.expired, credits("2"));
        assert_eq!(row.revoked, credits("3"));
        assert_eq!(row.available, credits("1"));
    }

    #[test]
    fn the_row_follows_the_aggregate_through_suspension_and_closing() {
        use chrono::TimeZone;
        use domain::tenant::{RemainingCredit, Tenant, TenantCommand};
        let t = |s: i64| Utc.timestamp_opt(1_767_225_600 + s, 0).unwrap();
        let tenant_id = TenantId::new_random();
        let credits = |s: &str| Credits::parse(s).unwrap();
        let commands = vec![
            TenantCommand::CreateTenant {
                tenant_id,
                name: "acme".into(),
                initial_credits: credits("1"),
                at: t(0),
            },
            TenantCommand::GrantCredits {
                amount: credits("2"),
                idempotency_key: "promo".into(),
                reason: "promo".into(),
                expires_at: Some(t(100)),
                at: t(1),
            },
            TenantCommand::SuspendTenant {
                reason: "unpaid".into(),
                at: t(2),
            },
            TenantCommand::ResumeTenant { at: t(3) },
            TenantCommand::CloseTenant {
                reason: "ended".into(),
                remaining: RemainingCredit::Forfeited,
                at: t(4),
            },
        ];
        let mut tenant = Tenant::default();
        let mut events = Vec::new();
        for command in commands {
            for event in tenant.decide(command).unwrap() {
                tenant.apply_event(event.clone());
                events.push(event);
            }
        }
        let row = fold_all(tenant_id, &events);
        let b = tenant.balance();
        assert_eq!(
            (row.granted, row.closed_out, row.held, row.available),
            (b.granted, b.closed_out, b.held, b.available)
        );
        assert_eq!(row.closed_out, credits("3"));
        assert_eq!(row.available, Credits::ZERO);
        assert!(row.lots.is_empty(), "closing empties every lot");
        assert_eq!(row.lots, tenant.lots);
    }
}
