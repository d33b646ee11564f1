//! What can be asked of a tenant. Commands carry their own timestamps and ids so
//! that deciding them is deterministic (tests and replays need no clock).

use crate::ids::{InstanceId, KeyId, ModelId, ProjectId, RequestId, TenantId};
use crate::money::Credits;
use crate::pricing::{Capability, ChargeTerms, Ingress, ModelPrice, Rates, Usage};
use crate::roles::Role;
use crate::tenant::events::{KeyHash, RemainingCredit};
use crate::tenant::scopes::{Scopes, ScopesPatch};
use chrono::{DateTime, Utc};

/// One try of one upstream for a request: which candidate, which credential.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// 1 for the first try of a request, counting every retry and fallback.
    pub number: u32,
    pub provider: String,
    pub credential_id: String,
    pub model: ModelId,
    pub price_version: i64,
    /// Sell rates: what the tenant is charged.
    pub rates: Rates,
    pub terms: ChargeTerms,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TenantCommand {
    CreateTenant {
        tenant_id: TenantId,
        name: String,
        initial_credits: Credits,
        at: DateTime<Utc>,
    },
    IssueApiKey {
        key_id: KeyId,
        name: String,
        role: Role,
        key_hash: KeyHash,
        /// Recorded as `ApiKeyScopesSet` in the same decision unless all empty.
        scopes: Scopes,
        /// Recorded as `KeyProjectSet` in the same decision.
        project: Option<ProjectId>,
        at: DateTime<Utc>,
    },
    /// Moves a key into a project (`None`: out of any).
    SetKeyProject {
        key_id: KeyId,
        project_id: Option<ProjectId>,
        at: DateTime<Utc>,
    },
    CreateProject {
        project_id: ProjectId,
        name: String,
        scopes: Scopes,
        at: DateTime<Utc>,
    },
    SetProjectScopes {
        project_id: ProjectId,
        patch: ScopesPatch,
        at: DateTime<Utc>,
    },
    /// Deletes a project with no live keys in it.
    DeleteProject {
        project_id: ProjectId,
        at: DateTime<Utc>,
    },
    /// Changes some of a key's scopes; the others stay as they are.
    SetKeyScopes {
        key_id: KeyId,
        patch: ScopesPatch,
        at: DateTime<Utc>,
    },
    RevokeApiKey {
        key_id: KeyId,
        at: DateTime<Utc>,
    },
    GrantCredits {
        amount: Credits,
        idempotency_key: String,
        reason: String,
        /// What is left of the grant at this time expires; `None`: never. Must be
        /// later than `at`.
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// Expire what is left of every lot whose expiry is at or before `at`.
    ExpireCredits {
        at: DateTime<Utc>,
    },
    /// A payment succeeded (webhook `payment.succeeded`): grant its amount, once per
    /// webhook event id and once per payment, forever.
    RecordPayment {
        payment_event_id: String,
        /// Defaults to `payment_event_id`.
        payment_id: Option<String>,
        amount: Credits,
        at: DateTime<Utc>,
    },
    /// A payment was refunded (webhook `payment.refunded`): revoke that much credit,
    /// at most what of the payment was not revoked yet, even if the balance goes
    /// negative.
    RefundPayment {
        payment_event_id: String,
        payment_id: String,
        amount: Credits,
        at: DateTime<Utc>,
    },
    /// Place a hold for one model request before calling the upstream.
    ReserveCredits {
        request_id: RequestId,
        key_id: KeyId,
        model: ModelId,
        capability: Capability,
        ingress: Ingress,
        /// The calling app (`x-aigne-hub-client-did`), if it said.
        app: Option<String>,
        /// Who the request is for, if the caller said (at most
        /// [`END_USER_MAX_CHARS`](crate::tenant::END_USER_MAX_CHARS)).
        end_user: Option<String>,
        price: ModelPrice,
        price_version: i64,
        prompt_bytes: u64,
        max_tokens: Option<u32>,
        /// Images the request asks for (image models), 0 otherwise.
        images: u32,
        instance_id: InstanceId,
        expires_at: DateTime<Utc>,
        /// `false` in the `enterprise` deployment mode: the hold is recorded (costs
        /// are tracked the same way) but never refused for want of credit.
        enforce_credit: bool,
        at: DateTime<Utc>,
    },
    /// Charge what the upstream reported and release the rest of the hold.
    /// The attempt `attempt` answered: charge its usage at its own model's rates
    /// (a fallback may differ from the model the hold was placed for).
    SettleUsage {
        request_id: RequestId,
        attempt: Attempt,
        usage: Usage,
        upstream_latency_ms: u64,
        at: DateTime<Utc>,
    },
    /// An upstream attempt failed; the request may go on with another one.
    RecordFailedAttempt {
        request_id: RequestId,
        attempt: Attempt,
        status: Option<u16>,
        reason: String,
        latency_ms: u64,
        at: DateTime<Utc>,
    },
    /// The request failed or was abandoned: it costs nothing.
    ReleaseHold {
        request_id: RequestId,
        reason: String,
        at: DateTime<Utc>,
    },
    /// Release every hold placed by a hub process that is no longer alive, or whose
    /// time to live has passed.
    ReleaseAbandonedHolds {
        live_instances: Vec<InstanceId>,
        at: DateTime<Utc>,
    },
    /// Notify when the available credit falls below `threshold` (`None`: never).
    SetLowBalanceThreshold {
        threshold: Option<Credits>,
        at: DateTime<Utc>,
    },
    /// Stop admitting model requests; open holds still settle. Suspending a
    /// suspended tenant changes nothing (the first reason stays).
    SuspendTenant {
        reason: String,
        at: DateTime<Utc>,
    },
    /// Admit model requests again. Resuming an active tenant changes nothing.
    ResumeTenant {
        at: DateTime<Utc>,
    },
    /// Close the tenant for good: refused while holds are open; the credit left
    /// is forfeited or refunded, by an event of its own.
    CloseTenant {
        reason: String,
        remaining: RemainingCredit,
        at: DateTime<Utc>,
    },
}

impl TenantCommand {
    /// The command's own clock.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            TenantCommand::CreateTenant { at, .. }
            | TenantCommand::IssueApiKey { at, .. }
            | TenantCommand::RevokeApiKey { at, .. }
            | TenantCommand::SetKeyScopes { at, .. }
            | TenantCommand::SetKeyProject { at, .. }
            | TenantCommand::CreateProject { at, .. }
            | TenantCommand::SetProjectScopes { at, .. }
            | TenantCommand::DeleteProject { at, .. }
            | TenantCommand::GrantCredits { at, .. }
            | TenantCommand::ExpireCredits { at }
            | TenantCommand::RecordPayment { at, .. }
            | TenantCommand::RefundPayment { at, .. }
            | TenantCommand::ReserveCredits { at, .. }
            | TenantCommand::SettleUsage { at, .. }
            | TenantCommand::RecordFailedAttempt { at, .. }
            | TenantCommand::ReleaseHold { at, .. }
            | TenantCommand::ReleaseAbandonedHolds { at, .. }
            | TenantCommand::SetLowBalanceThreshold { at, .. }
            | TenantCommand::SuspendTenant { at, .. }
            | TenantCommand::ResumeTenant { at }
            | TenantCommand::CloseTenant { at, .. } => *at,
        }
    }
}
