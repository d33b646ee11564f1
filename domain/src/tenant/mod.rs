//! The tenant aggregate: the single source of truth for one tenant's keys and credit.
//!
//! Every change is a command decided against the tenant's current state
//! ([`aggregate::Tenant::decide`]) into immutable events; state changes only by
//! applying events, so replaying the stream reproduces it exactly.

pub mod aggregate;
pub mod commands;
pub mod events;
pub mod ledger;
pub mod scopes;
pub mod upcast;

#[cfg(test)]
mod tests;

pub use aggregate::{
    Balance, GrantRecord, Hold, KeyRecord, PaymentEventKind, PaymentEventRecord, PaymentRecord,
    ProjectRecord, Tenant, TenantError, TenantStatus, END_USER_MAX_CHARS, PAYMENT_KEY_PREFIX,
    STATUS_REASON_MAX_CHARS,
};
pub use commands::{Attempt, TenantCommand};
pub use events::{
    AttemptOutcome, KeyHash, PaymentRef, RemainingCredit, TenantEvent, CREDITS_GRANTED_VERSION,
    CREDITS_RESERVED_VERSION, EVENT_VERSION,
};
pub use ledger::{ExpiringLot, ExpiringLots};
pub use scopes::{Budget, BudgetPeriod, ScopeError, ScopeUsage, Scopes, ScopesPatch};
pub use upcast::upcasters;
