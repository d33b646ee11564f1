//! What the tenant actor and its registry answer when they give no reply.
//!
//! The HTTP status of each is decided at the edge (`crate::error`); here each
//! failure keeps its cause, so a caller can tell a refusal from a busy tenant
//! from a store that failed, and the log can show the whole chain. A variant
//! that only wraps a lower error is `transparent`, so a printed chain does not
//! repeat it.

use super::tenant::TENANT_BUSY;
use crate::store::StoreError;
use domain::tenant::TenantError;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ActorError {
    /// A rule of the tenant refused the operation (unknown key, short credit, ...).
    #[error(transparent)]
    Refused(#[from] TenantError),
    /// An operator's operation (no key) named a tenant that does not exist.
    #[error("tenant not found")]
    TenantNotFound,
    /// The tenant's queue is full, or the call waited past its timeout.
    #[error("{TENANT_BUSY}")]
    Busy,
    /// The process runs as many tenant actors as it may.
    #[error("too many active tenants in this process")]
    TooManyTenants,
    /// The actor stopped before it answered.
    #[error("tenant actor stopped")]
    Stopped,
    /// The actor stopped twice between lookup and send.
    #[error("tenant actor unavailable")]
    Unreachable,
    /// Loading or committing failed, so the operation's outcome is lost; the
    /// failure is shared by every operation of the batch (and already logged).
    #[error("the ledger is unavailable")]
    LedgerUnavailable(#[source] Arc<StoreError>),
    /// A refusal could not be checked against the store's newest events.
    #[error("the refusal could not be checked against the store")]
    RefusalUnverified(#[source] Arc<StoreError>),
    /// The store refused the write itself: another writer won every retry.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ActorError {
    /// Whether this refuses the caller (401, 402, 403, 404): such an answer is
    /// only given from a view known to be current.
    pub(crate) fn is_refusal(&self) -> bool {
        match self {
            ActorError::TenantNotFound => true,
            ActorError::Refused(e) => matches!(
                e,
                TenantError::TenantNotFound
                    | TenantError::Unauthenticated
                    | TenantError::KeyRevoked
                    | TenantError::PermissionDenied { .. }
                    | TenantError::BeyondOwnPower { .. }
                    | TenantError::InsufficientCredits { .. }
                    | TenantError::UnknownKey(_)
                    | TenantError::KeyExpired(_)
                    | TenantError::ModelNotAllowed { .. }
                    | TenantError::KeyBudgetExhausted { .. }
                    | TenantError::ProjectBudgetExhausted { .. }
                    | TenantError::UnknownProject(_)
                    | TenantError::RateLimited { .. }
                    // A resume or reopening by another process may be newer.
                    | TenantError::TenantSuspended { .. }
                    | TenantError::TenantClosed
            ),
            _ => false,
        }
    }

    /// Whether the tenant refused because the operation clashes with its state
    /// (a 409 at the HTTP edge): a name, key or idempotency key already used, a
    /// hold or payment that is not there, a closed tenant changed, a tenant
    /// closed with holds open.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(
            self,
            ActorError::Refused(
                TenantError::TenantAlreadyExists
                    | TenantError::KeyAlreadyExists(_)
                    | TenantError::IdempotencyKeyReused(_)
                    | TenantError::HoldAlreadyExists(_)
                    | TenantError::UnknownHold(_)
                    | TenantError::PaymentEventReused(_)
                    | TenantError::PaymentAmountMismatch(_)
                    | TenantError::UnknownPayment(_)
                    | TenantError::AlreadyClosed
                    | TenantError::HoldsOpen { .. }
            )
        )
    }

    /// Whether the tenant refused because the key's role lacks the permission.
    pub(crate) fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            ActorError::Refused(TenantError::PermissionDenied { .. })
        )
    }
}
