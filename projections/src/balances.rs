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
                row.open_holds -= 1;
                row.requests_settled += 1;
            }
            TenantEvent::HoldReleased { hold_pico, .. } => {
                row.held = row.held - *hold_pico;
                row.open_holds -= 1;
                row.requests_released += 1;
            }
            TenantEvent::ApiKeyIssued { .. }
            | TenantEvent::ApiKeyRevoked { .. }
            | TenantEvent::UpstreamAttempted { .. } => {}
        }
        row.available = row.granted - row.spent - row.held;
    }
}
