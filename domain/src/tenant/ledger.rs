//! Credit lots: what is left of each grant that expires, and the order in which
//! spending burns lots. The aggregate and the balances projection both fold events
//! through [`ExpiringLots::apply`], so live state and every projection agree.
//!
//! The rules (docs/billing.md, "Credit lifecycle"):
//! - every grant is a lot; spending (a settlement) burns lots earliest expiry
//!   first, lots without expiry last, the older lot first among equals;
//! - what is left of a lot at its expiry expires (`CreditsExpired`);
//! - closing a tenant takes all that is left (`CreditsClosedOut`), every lot;
//! - a revocation (a refunded payment) takes credit without expiry first, then
//!   expiring lots in the spending order;
//! - spending or a revocation beyond every lot makes the position negative (a
//!   debt); the next grant pays the debt before anything is left in its lot.
//!
//! Only lots with an expiry are kept one by one. Credit without expiry burns last
//! and never expires, so nothing tells one such lot from another, and their total
//! is `max(position, 0) − Σ remaining of expiring lots`, where
//! `position = granted − spent − expired − revoked − closed_out` (held credit is still in its
//! lots: holds burn nothing, the settlement does). That stays exact because a
//! debt exists only once every lot is empty, and a grant pays the debt first.
//! State from before lots existed (snapshots, projection rows) therefore needs no
//! conversion: it had no expiring lot.

use crate::money::Credits;
use crate::tenant::events::TenantEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What is left of one grant that expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringLot {
    /// The grant's idempotency key.
    pub grant_id: String,
    pub expires_at: DateTime<Utc>,
    /// Always greater than zero: empty lots are dropped.
    pub remaining: Credits,
}

/// The lots that expire and still hold credit, in burn order: earliest expiry
/// first, the older grant first among equal expiries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExpiringLots(Vec<ExpiringLot>);

impl ExpiringLots {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ExpiringLot> {
        self.0.iter()
    }

    /// Credit left in expiring lots.
    pub fn total(&self) -> Credits {
        self.0
            .iter()
            .fold(Credits::ZERO, |sum, lot| sum + lot.remaining)
    }

    /// When the next lot expires, if any holds credit.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.0.first().map(|lot| lot.expires_at)
    }

    /// Lots whose expiry is at or before `at`: due to expire.
    pub fn due(&self, at: DateTime<Utc>) -> impl Iterator<Item = &ExpiringLot> {
        self.0.iter().take_while(move |lot| lot.expires_at <= at)
    }

    /// Credit left in lots expiring at or before `until` (lots already due included).
    pub fn expiring_by(&self, until: DateTime<Utc>) -> Credits {
        self.due(until)
            .fold(Credits::ZERO, |sum, lot| sum + lot.remaining)
    }

    /// Folds one event into the lots. `position` is `granted − spent − expired −
    /// revoked − closed_out` before the event. Never panics: a projection attempt that is later
    /// discarded may fold an event twice.
    pub fn apply(&mut self, event: &TenantEvent, position: Credits) {
        match event {
            TenantEvent::CreditsGranted {
                amount_pico,
                idempotency_key,
                expires_at: Some(expires_at),
                ..
            } => {
                let debt = (-position).max(Credits::ZERO);
                let remaining = *amount_pico - (*amount_pico).min(debt);
                if remaining > Credits::ZERO {
                    let at = self.0.partition_point(|lot| lot.expires_at <= *expires_at);
                    self.0.insert(
                        at,
                        ExpiringLot {
                            grant_id: idempotency_key.clone(),
                            expires_at: *expires_at,
                            remaining,
                        },
                    );
                }
            }
            TenantEvent::UsageSettled { cost_pico, .. } => self.burn(*cost_pico),
            // The whole position when the tenant closed: every lot is emptied.
            TenantEvent::CreditsClosedOut { amount_pico, .. } => self.burn(*amount_pico),
            TenantEvent::CreditsExpired {
                grant_id,
                amount_pico,
                ..
            } => {
                if let Some(lot) = self.0.iter_mut().find(|lot| &lot.grant_id == grant_id) {
                    lot.remaining = lot.remaining - lot.remaining.min(*amount_pico);
                }
                self.0.retain(|lot| lot.remaining > Credits::ZERO);
            }
            TenantEvent::CreditsRevoked { amount_pico, .. } => {
                let without_expiry =
                    (position.max(Credits::ZERO) - self.total()).max(Credits::ZERO);
                self.burn(*amount_pico - (*amount_pico).min(without_expiry));
            }
            _ => {}
        }
    }

    /// Takes `amount` from the lots in burn order; what they cannot cover comes out
    /// of credit without expiry, or becomes debt.
    fn burn(&mut self, mut amount: Credits) {
        for lot in self.0.iter_mut() {
            if amount <= Credits::ZERO {
                break;
            }
            let take = amount.min(lot.remaining);
            lot.remaining = lot.remaining - take;
            amount = amount - take;
        }
        self.0.retain(|lot| lot.remaining > Credits::ZERO);
    }
}
