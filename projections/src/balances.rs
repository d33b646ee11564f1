//! Balances per tenant: granted, spent, held, available, open holds.

use crate::{LoggedEvent, Projection};
use domain::tenant::TenantEvent;
use domain::Credits;
use serde::{Deserialize, Serialize};

pub struct Balances;

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
}

impl Projection for Balances {
    const NAME: &'static str = "balances";
    type Row = BalanceRow;

    fn row_keys(event: &LoggedEvent<'_>) -> Vec<String> {
        vec![event.tenant_id.to_string()]
    }

    fn apply(key: &str, row: &mut BalanceRow, event: &LoggedEvent<'_>) {
        row.tenant_id = key.to_string();
        row.last_sequence = event.sequence as u64;
        match event.event {
            TenantEvent::TenantCreated { name, .. } => row.name = name.clone(),
            TenantEvent::CreditsGranted { amount_pico, .. } => {
                row.granted = row.granted + *amount_pico
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
            | TenantEvent::UpstreamAttempted { .. } => {}
        }
        row.available = row.granted - row.spent - row.held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fold, LoggedEvent};
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
        fold::<Balances>(
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
}
