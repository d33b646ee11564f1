//! What happened to a tenant. Events are a stored, public schema: never change a
//! variant's shape in place; raise its version and add an upcaster (`upcast.rs`).

use crate::ids::{InstanceId, KeyId, ModelId, ProjectId, RequestId, TenantId};
use crate::money::Credits;
use crate::pricing::{Capability, ChargeTerms, Ingress, Rates, Usage};
use crate::roles::Role;
use crate::tenant::scopes::Scopes;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version written with every event whose shape never changed.
pub const EVENT_VERSION: &str = "1.0";
/// Version of `CreditsGranted`. 2.0 added `expires_at` and `payment`; 1.0 events
/// are upcast on read (see `upcast.rs`).
pub const CREDITS_GRANTED_VERSION: &str = "2.0";
/// `UsageSettled` 2.0 added `terms` (cost rates, margin) and `provider_cost_pico`;
/// 1.0 events are upcast as sold directly at a cost equal to the price.
pub const USAGE_SETTLED_VERSION: &str = "2.0";
/// `CreditsReserved` 2.0 added `project`, `end_user` and `scopes_checked`; 1.0
/// events are upcast with none of them (no end user, nothing named as checked,
/// and the project left to the key's, as 1.0 decided it).
pub const CREDITS_RESERVED_VERSION: &str = "2.0";

/// The payment webhook event a grant came from (`payment.succeeded`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRef {
    /// The webhook event's `id`: a permanent idempotency key.
    pub payment_event_id: String,
    /// The payment's id (the event's `payment_id`, or its `id` when it had none);
    /// refunds name it.
    pub payment_id: String,
}

/// SHA-256 of a hub API key's secret, hex encoded. The secret itself is never stored;
/// keys are 256-bit random, so a fast hash is enough (no password stretching needed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHash(String);

impl KeyHash {
    pub fn of_secret(secret: &str) -> Self {
        Self(hex::encode(Sha256::digest(secret.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How an upstream attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum AttemptOutcome {
    Succeeded,
    Failed { status: Option<u16>, reason: String },
}

/// What became of a closed tenant's credit: kept by the operator, or paid back
/// to the customer outside the hub. Either way it leaves the balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemainingCredit {
    Forfeited,
    Refunded,
}

impl RemainingCredit {
    pub fn as_str(self) -> &'static str {
        match self {
            RemainingCredit::Forfeited => "forfeited",
            RemainingCredit::Refunded => "refunded",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    TenantCreated {
        tenant_id: TenantId,
        name: String,
        at: DateTime<Utc>,
    },
    ApiKeyIssued {
        key_id: KeyId,
        name: String,
        role: Role,
        key_hash: KeyHash,
        at: DateTime<Utc>,
    },
    /// A key's scopes, whole: what it may call, spend and how fast (see
    /// `scopes.rs`). Follows `ApiKeyIssued` when a key is issued with scopes.
    ApiKeyScopesSet {
        key_id: KeyId,
        scopes: Scopes,
        at: DateTime<Utc>,
    },
    /// A key moved into a project (`None`: out of any).
    KeyProjectSet {
        key_id: KeyId,
        project_id: Option<ProjectId>,
        at: DateTime<Utc>,
    },
    ProjectCreated {
        project_id: ProjectId,
        name: String,
        scopes: Scopes,
        at: DateTime<Utc>,
    },
    /// A project's scopes, whole.
    ProjectScopesSet {
        project_id: ProjectId,
        scopes: Scopes,
        at: DateTime<Utc>,
    },
    ProjectDeleted {
        project_id: ProjectId,
        at: DateTime<Utc>,
    },
    ApiKeyRevoked {
        key_id: KeyId,
        at: DateTime<Utc>,
    },
    /// Version 2.0 (see [`CREDITS_GRANTED_VERSION`]). The grant is a lot of credit;
    /// what is left of it at `expires_at` expires.
    CreditsGranted {
        amount_pico: Credits,
        idempotency_key: String,
        reason: String,
        /// `None`: never expires. Always written (`null`); 1.0 events are upcast.
        expires_at: Option<DateTime<Utc>>,
        /// Set when a payment webhook granted this credit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment: Option<PaymentRef>,
        at: DateTime<Utc>,
    },
    /// What was left of a lot at its expiry. `at` is the clock of the command that
    /// noticed (at or after the lot's expiry); replay never reads a clock.
    CreditsExpired {
        /// The expired grant's idempotency key.
        grant_id: String,
        amount_pico: Credits,
        at: DateTime<Utc>,
    },
    /// Credit taken back because a payment was refunded. May exceed what is
    /// available: the balance then goes negative.
    CreditsRevoked {
        /// The refund's webhook event `id`: a permanent idempotency key.
        payment_event_id: String,
        /// The payment refunded.
        payment_id: String,
        /// What the refund asked for.
        requested_pico: Credits,
        /// What was revoked: the request, capped at what of the payment was not
        /// revoked yet.
        amount_pico: Credits,
        at: DateTime<Utc>,
    },
    CreditsReserved {
        request_id: RequestId,
        key_id: KeyId,
        model: ModelId,
        capability: Capability,
        ingress: Ingress,
        app: Option<String>,
        price_version: i64,
        rates: Rates,
        hold_pico: Credits,
        prompt_bytes: u64,
        max_output_tokens: u32,
        #[serde(default)]
        images_requested: u32,
        instance_id: InstanceId,
        expires_at: DateTime<Utc>,
        /// Version 2.0: the key's project when the hold was placed; its budget
        /// was checked and the request counts against it.
        #[serde(default)]
        project: Option<ProjectId>,
        /// Version 2.0: who the request was for, as the caller named them
        /// (OpenAI's `user`, or the `x-aigne-hub-end-user` header).
        #[serde(default)]
        end_user: Option<String>,
        /// Version 2.0: every limit the hold was checked against, as
        /// `<scope>.<limit>` (`key.budget`, `project.rpm`, `tenant.credit`), in
        /// the order they were checked.
        #[serde(default)]
        scopes_checked: Vec<String>,
        at: DateTime<Utc>,
    },
    UsageSettled {
        request_id: RequestId,
        key_id: KeyId,
        provider: String,
        model: ModelId,
        usage: Usage,
        price_version: i64,
        /// Sell rates: `cost_pico` is the usage at these.
        rates: Rates,
        /// Version 2.0: the provider's cost rates and the margin (see
        /// [`USAGE_SETTLED_VERSION`]).
        terms: ChargeTerms,
        cost_pico: Credits,
        /// The usage at the provider's cost rates: what the request cost the operator.
        provider_cost_pico: Credits,
        hold_pico: Credits,
        /// How far the charge exceeded the hold (the upstream ignored `max_tokens`).
        overshoot_pico: Credits,
        upstream_latency_ms: u64,
        at: DateTime<Utc>,
    },
    /// One try of an upstream. Grouped by `request_id`; the charge of a request is
    /// its `UsageSettled`, never the sum of its attempts.
    UpstreamAttempted {
        request_id: RequestId,
        attempt: u32,
        provider: String,
        credential_id: String,
        model: ModelId,
        outcome: AttemptOutcome,
        usage: Option<Usage>,
        /// What this attempt is charged: the settlement's cost when it succeeded,
        /// zero when it failed.
        cost_pico: Credits,
        latency_ms: u64,
        at: DateTime<Utc>,
    },
    HoldReleased {
        request_id: RequestId,
        hold_pico: Credits,
        reason: String,
        at: DateTime<Utc>,
    },
    /// The low-balance threshold (`None`: no notification).
    LowBalanceThresholdSet {
        threshold_pico: Option<Credits>,
        at: DateTime<Utc>,
    },
    /// The events of one command moved `available` from at or above the threshold
    /// to below it. Appended after them by the same command (its clock); the
    /// low-balance webhook delivers it (docs/billing.md, "Low-balance
    /// notifications").
    LowBalanceCrossed {
        threshold_pico: Credits,
        available_pico: Credits,
        at: DateTime<Utc>,
    },
    /// A `payment.succeeded` webhook event that credited nothing, because its
    /// payment was already credited under another event id. Kept so that its id
    /// stays bound to this body: a webhook event id is a permanent idempotency key
    /// whatever the answer was, and another body under it is refused.
    PaymentEventNoted {
        payment_event_id: String,
        payment_id: String,
        amount_pico: Credits,
        at: DateTime<Utc>,
    },
    /// New model requests are refused from now on; open holds still settle.
    TenantSuspended {
        reason: String,
        at: DateTime<Utc>,
    },
    TenantResumed {
        at: DateTime<Utc>,
    },
    /// The credit left when the tenant closed (`available`, after the lots due
    /// expired), taken out of the balance: `available` is zero after it. Zero
    /// when nothing was left (a debt stays as it was).
    CreditsClosedOut {
        disposition: RemainingCredit,
        amount_pico: Credits,
        at: DateTime<Utc>,
    },
    /// For good: follows its `CreditsClosedOut`. Only reads by the operator and
    /// auditor keys are served after it.
    TenantClosed {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl TenantEvent {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            TenantEvent::TenantCreated { at, .. }
            | TenantEvent::ApiKeyIssued { at, .. }
            | TenantEvent::ApiKeyRevoked { at, .. }
            | TenantEvent::ApiKeyScopesSet { at, .. }
            | TenantEvent::KeyProjectSet { at, .. }
            | TenantEvent::ProjectCreated { at, .. }
            | TenantEvent::ProjectScopesSet { at, .. }
            | TenantEvent::ProjectDeleted { at, .. }
            | TenantEvent::CreditsGranted { at, .. }
            | TenantEvent::CreditsExpired { at, .. }
            | TenantEvent::CreditsRevoked { at, .. }
            | TenantEvent::CreditsReserved { at, .. }
            | TenantEvent::UsageSettled { at, .. }
            | TenantEvent::UpstreamAttempted { at, .. }
            | TenantEvent::HoldReleased { at, .. }
            | TenantEvent::LowBalanceThresholdSet { at, .. }
            | TenantEvent::LowBalanceCrossed { at, .. }
            | TenantEvent::PaymentEventNoted { at, .. }
            | TenantEvent::TenantSuspended { at, .. }
            | TenantEvent::TenantResumed { at }
            | TenantEvent::CreditsClosedOut { at, .. }
            | TenantEvent::TenantClosed { at, .. } => *at,
        }
    }

    /// The model request an event belongs to, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            TenantEvent::CreditsReserved { request_id, .. }
            | TenantEvent::UsageSettled { request_id, .. }
            | TenantEvent::UpstreamAttempted { request_id, .. }
            | TenantEvent::HoldReleased { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            TenantEvent::TenantCreated { .. } => "TenantCreated",
            TenantEvent::ApiKeyIssued { .. } => "ApiKeyIssued",
            TenantEvent::ApiKeyRevoked { .. } => "ApiKeyRevoked",
            TenantEvent::ApiKeyScopesSet { .. } => "ApiKeyScopesSet",
            TenantEvent::KeyProjectSet { .. } => "KeyProjectSet",
            TenantEvent::ProjectCreated { .. } => "ProjectCreated",
            TenantEvent::ProjectScopesSet { .. } => "ProjectScopesSet",
            TenantEvent::ProjectDeleted { .. } => "ProjectDeleted",
            TenantEvent::CreditsGranted { .. } => "CreditsGranted",
            TenantEvent::CreditsExpired { .. } => "CreditsExpired",
            TenantEvent::CreditsRevoked { .. } => "CreditsRevoked",
            TenantEvent::CreditsReserved { .. } => "CreditsReserved",
            TenantEvent::UsageSettled { .. } => "UsageSettled",
            TenantEvent::UpstreamAttempted { .. } => "UpstreamAttempted",
            TenantEvent::HoldReleased { .. } => "HoldReleased",
            TenantEvent::LowBalanceThresholdSet { .. } => "LowBalanceThresholdSet",
            TenantEvent::LowBalanceCrossed { .. } => "LowBalanceCrossed",
            TenantEvent::PaymentEventNoted { .. } => "PaymentEventNoted",
            TenantEvent::TenantSuspended { .. } => "TenantSuspended",
            TenantEvent::TenantResumed { .. } => "TenantResumed",
            TenantEvent::CreditsClosedOut { .. } => "CreditsClosedOut",
            TenantEvent::TenantClosed { .. } => "TenantClosed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            TenantEvent::CreditsGranted { .. } => CREDITS_GRANTED_VERSION,
            TenantEvent::UsageSettled { .. } => USAGE_SETTLED_VERSION,
            TenantEvent::CreditsReserved { .. } => CREDITS_RESERVED_VERSION,
            _ => EVENT_VERSION,
        }
        .to_string()
    }
}
