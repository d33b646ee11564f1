//! Tenant state and the rules that decide commands against it.

use crate::ids::{InstanceId, KeyId, ModelId, ProjectId, RequestId, TenantId};
use crate::money::Credits;
use crate::pricing::{Capability, OutputCapAdvice};
use crate::roles::{Permission, Role};
use crate::tenant::commands::TenantCommand;
use crate::tenant::events::{AttemptOutcome, KeyHash, PaymentRef, RemainingCredit, TenantEvent};
use crate::tenant::ledger::ExpiringLots;
use crate::tenant::scopes::{self, ScopeError, ScopeUsage, Scopes};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest tenant or key name accepted.
pub const NAME_MAX_CHARS: usize = 200;
/// Live projects a tenant may have (each is listed whole by `GET /v1/projects`).
pub const PROJECTS_MAX: usize = 1_000;
/// Longest idempotency key or reason accepted.
pub const LABEL_MAX_CHARS: usize = 200;
/// Longest end user name a request may carry: room for an email address or a
/// UUID with a prefix, not for a document.
pub const END_USER_MAX_CHARS: usize = 256;
/// Idempotency keys of grants made by payment webhooks start with this; operators'
/// grants may not use it, so the two never collide in the log.
pub const PAYMENT_KEY_PREFIX: &str = "payment:";
/// Longest reason for suspending or closing a tenant: a sentence or two for
/// whoever reads the tenant's 403s and its log, not a document.
pub const STATUS_REASON_MAX_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("tenant not found")]
    TenantNotFound,
    #[error("tenant already exists")]
    TenantAlreadyExists,
    #[error("{field} must be 1 to {max_chars} characters")]
    InvalidLabel {
        field: &'static str,
        max_chars: usize,
    },
    /// No such key, or its secret does not match.
    #[error("unknown API key")]
    Unauthenticated,
    /// The key exists and its secret matches, but it was revoked.
    #[error("this API key was revoked")]
    KeyRevoked,
    #[error("this API key's role ({role}) may not do that")]
    PermissionDenied { role: &'static str },
    #[error("project {0} not found")]
    UnknownProject(ProjectId),
    #[error("project {0} already exists")]
    ProjectAlreadyExists(ProjectId),
    #[error("a tenant has at most {PROJECTS_MAX} projects: delete one first")]
    TooManyProjects,
    #[error("the project still has {count} live key(s): move or revoke them first")]
    ProjectHasKeys { count: usize },
    /// A key may not give or take more power than its own.
    #[error("a key may not {what}")]
    BeyondOwnPower { what: String },
    #[error("API key {0} not found")]
    UnknownKey(KeyId),
    #[error("API key {0} already exists")]
    KeyAlreadyExists(KeyId),
    #[error("idempotency key {0:?} was already used with a different amount or reason")]
    IdempotencyKeyReused(String),
    #[error("insufficient credits: {available} available, {required} required for this request")]
    InsufficientCredits {
        available: String,
        required: String,
        /// For a chat request: the smaller output cap that would fit.
        advice: Option<OutputCapAdvice>,
    },
    #[error("request {0} already holds credit")]
    HoldAlreadyExists(RequestId),
    #[error("request {0} has no open hold")]
    UnknownHold(RequestId),
    #[error("expires_at must be later than the time of the grant")]
    ExpiryNotInFuture,
    #[error("idempotency key {0:?} is reserved: keys starting with \"payment:\" belong to payment webhooks")]
    ReservedIdempotencyKey(String),
    #[error("payment event {0:?} was already received with a different body")]
    PaymentEventReused(String),
    #[error("payment {0:?} was already credited with a different amount")]
    PaymentAmountMismatch(String),
    #[error("payment {0:?} was never credited to this tenant; a refund must follow its payment")]
    UnknownPayment(String),
    #[error("{0}")]
    InvalidScopes(#[from] ScopeError),
    /// The key's `expires_at` has passed. Said only to whoever holds the secret.
    #[error("this API key expired at {0}")]
    KeyExpired(String),
    #[error("this {scope} may not call {model}: its scope allows {allowed}")]
    ModelNotAllowed {
        /// "API key" or "project".
        scope: &'static str,
        model: String,
        allowed: String,
    },
    #[error("this API key's {period} budget is exhausted: {remaining} of {amount} left, {required} required for this request")]
    KeyBudgetExhausted {
        period: &'static str,
        amount: String,
        remaining: String,
        required: String,
    },
    #[error("this project's {period} budget is exhausted: {remaining} of {amount} left, {required} required for this request")]
    ProjectBudgetExhausted {
        period: &'static str,
        amount: String,
        remaining: String,
        required: String,
    },
    /// A rate or concurrency scope of the key or its project: try again after
    /// `retry_after_secs`.
    #[error("this {scope}'s {limit} limit of {value} is reached; retry in {retry_after_secs} s")]
    RateLimited {
        /// "API key" or "project".
        scope: &'static str,
        limit: &'static str,
        value: u64,
        retry_after_secs: u64,
    },
    /// A model request of a suspended tenant: refused before any hold.
    #[error("this tenant is suspended: {reason}")]
    TenantSuspended { reason: String },
    /// Anything but a read by an auditor key (or the operator) on a closed tenant.
    #[error("this tenant is closed")]
    TenantClosed,
    /// An operator's change to a closed tenant: nothing reopens or changes it.
    #[error("the tenant is closed: it cannot be suspended, resumed, closed again, credited or given keys")]
    AlreadyClosed,
    #[error("the tenant has {count} open hold(s): suspend it, and close it once they have settled or expired")]
    HoldsOpen { count: usize },
}

/// Whether a tenant admits model requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TenantStatus {
    #[default]
    Active,
    /// Model requests are refused; everything else works.
    Suspended { reason: String },
    /// For good: only reads by the operator and auditor keys.
    Closed { reason: String },
}

impl TenantStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended { .. } => "suspended",
            TenantStatus::Closed { .. } => "closed",
        }
    }

    /// Why the tenant was suspended or closed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            TenantStatus::Active => None,
            TenantStatus::Suspended { reason } | TenantStatus::Closed { reason } => Some(reason),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub role: Role,
    pub key_hash: KeyHash,
    pub revoked: bool,
    /// Keys and snapshots from before scopes have none: no limit, as then.
    #[serde(default)]
    pub scopes: Scopes,
    #[serde(default)]
    pub usage: ScopeUsage,
    /// The project whose scopes also bind this key's requests.
    #[serde(default)]
    pub project: Option<ProjectId>,
}

/// A project: keys grouped under scopes of their own, checked with each key's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub name: String,
    pub scopes: Scopes,
    pub usage: ScopeUsage,
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub amount: Credits,
    pub reason: String,
    /// `None`: never expires (and every grant from before grants could expire).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// What a payment webhook event said, kept forever under its id so that a
/// redelivery is recognised however late it comes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEventRecord {
    pub kind: PaymentEventKind,
    pub payment_id: String,
    /// The amount the event named (for a refund: what it asked for).
    pub amount: Credits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentEventKind {
    Succeeded,
    Refunded,
}

/// A payment credited to the tenant, by payment id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub amount: Credits,
    /// Revoked so far by refunds; never more than `amount`.
    pub revoked: Credits,
    pub payment_event_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub key_id: KeyId,
    /// The project whose budget the hold counts against (the key's when placed).
    #[serde(default)]
    pub project: Option<ProjectId>,
    pub model: ModelId,
    pub amount: Credits,
    pub rates: crate::pricing::Rates,
    pub price_version: i64,
    pub instance_id: InstanceId,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A tenant's credit position:
/// `available = granted − spent − expired − revoked − closed_out − held`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub granted: Credits,
    pub spent: Credits,
    #[serde(default)]
    pub expired: Credits,
    #[serde(default)]
    pub revoked: Credits,
    pub held: Credits,
    pub available: Credits,
    /// Credit taken out when the tenant closed (forfeited or refunded).
    #[serde(default)]
    pub closed_out: Credits,
    /// The lots that will expire. Which of them expire "soon" depends on when the
    /// balance is read, so readers compute it then ([`Balance::expiring_by`]).
    #[serde(default)]
    pub expiring: ExpiringLots,
}

impl Balance {
    /// Credit of lots that expire at or before `until` and are not expired yet.
    pub fn expiring_by(&self, until: DateTime<Utc>) -> Credits {
        self.expiring.expiring_by(until)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub tenant_id: Option<TenantId>,
    pub name: String,
    pub keys: BTreeMap<KeyId, KeyRecord>,
    pub granted: Credits,
    pub spent: Credits,
    pub held: Credits,
    pub holds: BTreeMap<RequestId, Hold>,
    /// Every grant by idempotency key: a key is permanent, so a retried grant is
    /// recognised however late it arrives. (Payments are kept apart, below.)
    pub grants: BTreeMap<String, GrantRecord>,
    // Added with expiring grants and payments. Snapshots written before have none of
    // these fields; their defaults are exactly right for them (no lot could expire,
    // nothing was revoked, no payment was received), so they still load.
    #[serde(default)]
    pub expired: Credits,
    #[serde(default)]
    pub revoked: Credits,
    /// Lots that expire and still hold credit (see `ledger.rs`).
    #[serde(default)]
    pub lots: ExpiringLots,
    /// Payments credited, by payment id.
    #[serde(default)]
    pub payments: BTreeMap<String, PaymentRecord>,
    /// Every payment webhook event received, by event id: permanent idempotency.
    #[serde(default)]
    pub payment_events: BTreeMap<String, PaymentEventRecord>,
    /// `LowBalanceCrossed` is appended when a command takes `available` from at or
    /// above this to below it. `None` (and every snapshot from before): never.
    #[serde(default)]
    pub low_balance_threshold: Option<Credits>,
    /// Projects by id (snapshots from before projects have none).
    #[serde(default)]
    pub projects: BTreeMap<ProjectId, ProjectRecord>,
    // Added with suspension and closing; snapshots from before were active and
    // never closed, which is what the defaults say.
    #[serde(default)]
    pub status: TenantStatus,
    /// Credit taken out by `CreditsClosedOut`.
    #[serde(default)]
    pub closed_out: Credits,
}

fn check_label(field: &'static str, value: &str, max_chars: usize) -> Result<(), TenantError> {
    let n = value.chars().count();
    if n == 0 || n > max_chars || value.chars().any(char::is_control) {
        return Err(TenantError::InvalidLabel { field, max_chars });
    }
    Ok(())
}

impl Tenant {
    pub fn exists(&self) -> bool {
        self.tenant_id.is_some()
    }

    pub fn balance(&self) -> Balance {
        Balance {
            granted: self.granted,
            spent: self.spent,
            expired: self.expired,
            revoked: self.revoked,
            held: self.held,
            available: self.available(),
            closed_out: self.closed_out,
            expiring: self.lots.clone(),
        }
    }

    /// Credit not spent, expired, revoked or closed out, held or not. Negative: a
    /// debt.
    pub fn position(&self) -> Credits {
        self.granted - self.spent - self.expired - self.revoked - self.closed_out
    }

    pub fn available(&self) -> Credits {
        self.position() - self.held
    }

    /// One `CreditsExpired` per lot due at `at`, for what is left of it.
    fn expiry_events(&self, at: DateTime<Utc>) -> Vec<TenantEvent> {
        self.lots
            .due(at)
            .map(|lot| TenantEvent::CreditsExpired {
                grant_id: lot.grant_id.clone(),
                amount_pico: lot.remaining,
                at,
            })
            .collect()
    }

    /// Whether the key `by` may make `command` (a change to a key): its role may
    /// manage the key's role, and the scopes it gives are within its own. The
    /// operator is not a key and may make any.
    pub fn may_manage_key(&self, by: KeyId, command: &TenantCommand) -> Result<(), TenantError> {
        let Some(actor) = self.keys.get(&by) else {
            return Err(TenantError::Unauthenticated);
        };
        let refuse = |what: String| Err(TenantError::BeyondOwnPower { what });
        let (target_role, scopes) = match command {
            TenantCommand::IssueApiKey { role, scopes, .. } => (*role, scopes.clone()),
            TenantCommand::SetKeyScopes { key_id, patch, .. } => {
                let key = self
                    .keys
                    .get(key_id)
                    .ok_or(TenantError::UnknownKey(*key_id))?;
                (key.role, patch.clone().applied_to(&key.scopes))
            }
            TenantCommand::RevokeApiKey { key_id, .. }
            | TenantCommand::SetKeyProject { key_id, .. } => {
                let key = self
                    .keys
                    .get(key_id)
                    .ok_or(TenantError::UnknownKey(*key_id))?;
                (key.role, Scopes::default())
            }
            _ => return Ok(()),
        };
        if !actor.role.may_manage(target_role) {
            return refuse(format!(
                "manage a key of role {} with role {}",
                target_role.as_str(),
                actor.role.as_str()
            ));
        }
        if matches!(
            command,
            TenantCommand::RevokeApiKey { .. } | TenantCommand::SetKeyProject { .. }
        ) {
            return Ok(());
        }
        match scopes.beyond(&actor.scopes) {
            Some(field) => refuse(format!("give a key more than its own {field} scope allows")),
            None => Ok(()),
        }
    }

    /// What `key_id`'s open requests hold, and how many there are.
    pub fn key_holds(&self, key_id: KeyId) -> (Credits, u32) {
        self.holds
            .values()
            .filter(|h| h.key_id == key_id)
            .fold((Credits::ZERO, 0), |(sum, n), h| (sum + h.amount, n + 1))
    }

    /// Refuses a hold of `hold` for `key_id`'s request at `at` that its key's
    /// scopes, or its project's, do not allow.
    /// Checks the key's scopes, then its project's; on success, the limits
    /// checked as `<scope>.<limit>` (what explain names), and the project.
    fn check_key_scopes(
        &self,
        key_id: KeyId,
        model: &ModelId,
        hold: Credits,
        at: DateTime<Utc>,
    ) -> Result<(Vec<String>, Option<ProjectId>), TenantError> {
        let Some(key) = self.keys.get(&key_id) else {
            return Ok((Vec::new(), None));
        };
        // Most keys have no scopes and no project: nothing to count for them.
        if key.project.is_none() && key.scopes == Scopes::default() {
            return Ok((Vec::new(), None));
        }
        if let Some(expiry) = key
            .scopes
            .expires_at
            .filter(|_| key.scopes.is_expired_at(at))
        {
            return Err(TenantError::KeyExpired(expiry.to_rfc3339()));
        }
        let (held, in_flight) = self.key_holds(key_id);
        let key_scope = Scope {
            name: "API key",
            scopes: &key.scopes,
            usage: &key.usage,
            held,
            in_flight,
        };
        key_scope.check(model, hold, at, |period, amount, remaining, required| {
            TenantError::KeyBudgetExhausted {
                period,
                amount,
                remaining,
                required,
            }
        })?;
        let mut checked: Vec<String> = key.scopes.limits().map(|l| format!("key.{l}")).collect();
        let Some((project_id, project)) = key
            .project
            .and_then(|id| self.projects.get(&id).map(|p| (id, p)))
        else {
            return Ok((checked, None));
        };
        let (held, in_flight) = self.project_holds(project_id);
        let project_scope = Scope {
            name: "project",
            scopes: &project.scopes,
            usage: &project.usage,
            held,
            in_flight,
        };
        project_scope.check(model, hold, at, |period, amount, remaining, required| {
            TenantError::ProjectBudgetExhausted {
                period,
                amount,
                remaining,
                required,
            }
        })?;
        checked.extend(project.scopes.limits().map(|l| format!("project.{l}")));
        Ok((checked, Some(project_id)))
    }

    /// A project that exists and is not deleted.
    pub fn live_project(&self, project_id: ProjectId) -> Result<&ProjectRecord, TenantError> {
        self.projects
            .get(&project_id)
            .filter(|p| !p.deleted)
            .ok_or(TenantError::UnknownProject(project_id))
    }

    /// What the requests of `project_id`'s keys hold, and how many there are.
    pub fn project_holds(&self, project_id: ProjectId) -> (Credits, u32) {
        self.holds
            .values()
            .filter(|h| h.project == Some(project_id))
            .fold((Credits::ZERO, 0), |(sum, n), h| (sum + h.amount, n + 1))
    }

    /// Finds the live key with this hash and checks that its role allows `permission`.
    pub fn authorize(
        &self,
        key_id: KeyId,
        key_hash: &KeyHash,
        permission: Permission,
        at: DateTime<Utc>,
    ) -> Result<Role, TenantError> {
        let key = self
            .keys
            .get(&key_id)
            .filter(|k| &k.key_hash == key_hash)
            .ok_or(TenantError::Unauthenticated)?;
        // Said only to whoever holds the secret: anyone else learns nothing.
        if key.revoked {
            return Err(TenantError::KeyRevoked);
        }
        if let Some(expiry) = key
            .scopes
            .expires_at
            .filter(|_| key.scopes.is_expired_at(at))
        {
            return Err(TenantError::KeyExpired(expiry.to_rfc3339()));
        }
        // A closed tenant keeps its books open to its auditors, and to nobody else.
        let audit_read = key.role == Role::Auditor
            && matches!(permission, Permission::ReadBilling | Permission::ReadAudit);
        if matches!(self.status, TenantStatus::Closed { .. }) && !audit_read {
            return Err(TenantError::TenantClosed);
        }
        if !key.role.allows(permission) {
            return Err(TenantError::PermissionDenied {
                role: key.role.as_str(),
            });
        }
        Ok(key.role)
    }

    /// Decides a command: the events it produces, or why it is refused. Pure: the
    /// state is not changed here (see [`Tenant::apply_event`]).
    ///
    /// When the command's events take `available` from at or above the low-balance
    /// threshold to below it, `LowBalanceCrossed` follows them (with the command's
    /// clock): one per crossing; it re-arms once `available` is back at or above.
    pub fn decide(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        let at = command.at();
        // Closing takes the balance to zero on purpose: no low-balance notice.
        let closing = matches!(command, TenantCommand::CloseTenant { .. });
        let mut events = self.decide_command(command)?;
        if let Some(threshold) = self.low_balance_threshold.filter(|_| !closing) {
            let before = self.available();
            let after = events
                .iter()
                .fold(before, |available, e| available + available_delta(e));
            if before >= threshold && after < threshold {
                events.push(TenantEvent::LowBalanceCrossed {
                    threshold_pico: threshold,
                    available_pico: after,
                    at,
                });
            }
        }
        Ok(events)
    }

    fn decide_command(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        if !self.exists() && !matches!(command, TenantCommand::CreateTenant { .. }) {
            return Err(TenantError::TenantNotFound);
        }
        self.admits(&command)?;
        match command {
            TenantCommand::CreateTenant {
                tenant_id,
                name,
                initial_credits,
                at,
            } => {
                if self.exists() {
                    return Err(TenantError::TenantAlreadyExists);
                }
                check_label("name", &name, NAME_MAX_CHARS)?;
                let mut events = vec![TenantEvent::TenantCreated {
                    tenant_id,
                    name,
                    at,
                }];
                if initial_credits > Credits::ZERO {
                    events.push(TenantEvent::CreditsGranted {
                        amount_pico: initial_credits,
                        idempotency_key: "initial-credits".to_string(),
                        reason: "initial credits".to_string(),
                        expires_at: None,
                        payment: None,
                        at,
                    });
                }
                Ok(events)
            }
            TenantCommand::IssueApiKey {
                key_id,
                name,
                role,
                key_hash,
                scopes,
                project,
                at,
            } => {
                check_label("name", &name, NAME_MAX_CHARS)?;
                if self.keys.contains_key(&key_id) {
                    return Err(TenantError::KeyAlreadyExists(key_id));
                }
                scopes.validate()?;
                if let Some(project_id) = project {
                    self.live_project(project_id)?;
                }
                let mut events = vec![TenantEvent::ApiKeyIssued {
                    key_id,
                    name,
                    role,
                    key_hash,
                    at,
                }];
                if scopes != Scopes::default() {
                    events.push(TenantEvent::ApiKeyScopesSet { key_id, scopes, at });
                }
                if let Some(project_id) = project {
                    events.push(TenantEvent::KeyProjectSet {
                        key_id,
                        project_id: Some(project_id),
                        at,
                    });
                }
                Ok(events)
            }
            TenantCommand::SetKeyProject {
                key_id,
                project_id,
                at,
            } => {
                let key = self
                    .keys
                    .get(&key_id)
                    .ok_or(TenantError::UnknownKey(key_id))?;
                if let Some(project_id) = project_id {
                    self.live_project(project_id)?;
                }
                if key.project == project_id {
                    return Ok(vec![]);
                }
                Ok(vec![TenantEvent::KeyProjectSet {
                    key_id,
                    project_id,
                    at,
                }])
            }
            TenantCommand::CreateProject {
                project_id,
                name,
                scopes,
                at,
            } => {
                check_label("name", &name, NAME_MAX_CHARS)?;
                if self.projects.contains_key(&project_id) {
                    return Err(TenantError::ProjectAlreadyExists(project_id));
                }
                if self.projects.values().filter(|p| !p.deleted).count() >= PROJECTS_MAX {
                    return Err(TenantError::TooManyProjects);
                }
                scopes.validate()?;
                Ok(vec![TenantEvent::ProjectCreated {
                    project_id,
                    name,
                    scopes,
                    at,
                }])
            }
            TenantCommand::SetProjectScopes {
                project_id,
                patch,
                at,
            } => {
                let project = self.live_project(project_id)?;
                let scopes = patch.applied_to(&project.scopes);
                scopes.validate()?;
                if project.scopes == scopes {
                    return Ok(vec![]);
                }
                Ok(vec![TenantEvent::ProjectScopesSet {
                    project_id,
                    scopes,
                    at,
                }])
            }
            TenantCommand::DeleteProject { project_id, at } => {
                self.live_project(project_id)?;
                let count = self
                    .keys
                    .values()
                    .filter(|k| !k.revoked && k.project == Some(project_id))
                    .count();
                if count > 0 {
                    return Err(TenantError::ProjectHasKeys { count });
                }
                Ok(vec![TenantEvent::ProjectDeleted { project_id, at }])
            }
            TenantCommand::SetKeyScopes { key_id, patch, at } => {
                let key = self
                    .keys
                    .get(&key_id)
                    .ok_or(TenantError::UnknownKey(key_id))?;
                let scopes = patch.applied_to(&key.scopes);
                scopes.validate()?;
                if key.scopes == scopes {
                    return Ok(vec![]);
                }
                Ok(vec![TenantEvent::ApiKeyScopesSet { key_id, scopes, at }])
            }
            TenantCommand::RevokeApiKey { key_id, at } => match self.keys.get(&key_id) {
                None => Err(TenantError::UnknownKey(key_id)),
                Some(key) if key.revoked => Ok(vec![]),
                Some(_) => Ok(vec![TenantEvent::ApiKeyRevoked { key_id, at }]),
            },
            TenantCommand::GrantCredits {
                amount,
                idempotency_key,
                reason,
                expires_at,
                at,
            } => {
                check_label("idempotency_key", &idempotency_key, LABEL_MAX_CHARS)?;
                check_label("reason", &reason, LABEL_MAX_CHARS)?;
                // A repeat is judged before the expiry: retrying a grant whose expiry
                // has passed meanwhile is still the same grant.
                if let Some(previous) = self.grants.get(&idempotency_key) {
                    if previous.amount == amount
                        && previous.reason == reason
                        && previous.expires_at == expires_at
                    {
                        return Ok(vec![]);
                    }
                    return Err(TenantError::IdempotencyKeyReused(idempotency_key));
                }
                if idempotency_key.starts_with(PAYMENT_KEY_PREFIX) {
                    return Err(TenantError::ReservedIdempotencyKey(idempotency_key));
                }
                if expires_at.is_some_and(|expires_at| expires_at <= at) {
                    return Err(TenantError::ExpiryNotInFuture);
                }
                Ok(vec![TenantEvent::CreditsGranted {
                    amount_pico: amount,
                    idempotency_key,
                    reason,
                    expires_at,
                    payment: None,
                    at,
                }])
            }
            TenantCommand::ExpireCredits { at } => Ok(self.expiry_events(at)),
            TenantCommand::RecordPayment {
                payment_event_id,
                payment_id,
                amount,
                at,
            } => {
                check_label("id", &payment_event_id, LABEL_MAX_CHARS)?;
                let payment_id = payment_id.unwrap_or_else(|| payment_event_id.clone());
                check_label("payment_id", &payment_id, LABEL_MAX_CHARS)?;
                if let Some(previous) = self.payment_events.get(&payment_event_id) {
                    if previous.kind == PaymentEventKind::Succeeded
                        && previous.payment_id == payment_id
                        && previous.amount == amount
                    {
                        return Ok(vec![]);
                    }
                    return Err(TenantError::PaymentEventReused(payment_event_id));
                }
                // The same payment told by another event: credited once, and this
                // event id remembered with its body.
                if let Some(payment) = self.payments.get(&payment_id) {
                    if payment.amount == amount {
                        return Ok(vec![TenantEvent::PaymentEventNoted {
                            payment_event_id,
                            payment_id,
                            amount_pico: amount,
                            at,
                        }]);
                    }
                    return Err(TenantError::PaymentAmountMismatch(payment_id));
                }
                Ok(vec![TenantEvent::CreditsGranted {
                    amount_pico: amount,
                    idempotency_key: format!("{PAYMENT_KEY_PREFIX}{payment_event_id}"),
                    reason: format!("payment {payment_id}"),
                    expires_at: None,
                    payment: Some(PaymentRef {
                        payment_event_id,
                        payment_id,
                    }),
                    at,
                }])
            }
            TenantCommand::RefundPayment {
                payment_event_id,
                payment_id,
                amount,
                at,
            } => {
                check_label("id", &payment_event_id, LABEL_MAX_CHARS)?;
                check_label("payment_id", &payment_id, LABEL_MAX_CHARS)?;
                if let Some(previous) = self.payment_events.get(&payment_event_id) {
                    if previous.kind == PaymentEventKind::Refunded
                        && previous.payment_id == payment_id
                        && previous.amount == amount
                    {
                        return Ok(vec![]);
                    }
                    return Err(TenantError::PaymentEventReused(payment_event_id));
                }
                let payment = self
                    .payments
                    .get(&payment_id)
                    .ok_or_else(|| TenantError::UnknownPayment(payment_id.clone()))?;
                let revocable = (payment.amount - payment.revoked).max(Credits::ZERO);
                Ok(vec![TenantEvent::CreditsRevoked {
                    payment_event_id,
                    payment_id,
                    requested_pico: amount,
                    amount_pico: amount.min(revocable),
                    at,
                }])
            }
            TenantCommand::ReserveCredits {
                request_id,
                key_id,
                model,
                capability,
                ingress,
                app,
                end_user,
                price,
                price_version,
                prompt_bytes,
                max_tokens,
                images,
                instance_id,
                expires_at,
                enforce_credit,
                at,
            } => {
                if self.holds.contains_key(&request_id) {
                    return Err(TenantError::HoldAlreadyExists(request_id));
                }
                if let Some(end_user) = &end_user {
                    check_label("end_user", end_user, END_USER_MAX_CHARS)?;
                }
                let hold = price.hold_for(prompt_bytes, max_tokens, images);
                // Lots past their expiry expire now, whether or not the expiry pass
                // got to them yet: a hold never rests on expired credit.
                let mut events = self.expiry_events(at);
                let due = events.iter().fold(Credits::ZERO, |sum, e| match e {
                    TenantEvent::CreditsExpired { amount_pico, .. } => sum + *amount_pico,
                    _ => sum,
                });
                let (mut scopes_checked, project) =
                    self.check_key_scopes(key_id, &model, hold, at)?;
                let available = self.available() - due;
                if enforce_credit && available < hold {
                    let available = available.max(Credits::ZERO);
                    let advice = (capability == Capability::Chat).then(|| OutputCapAdvice {
                        output_tokens_that_fit: price.output_tokens_within(
                            available,
                            prompt_bytes,
                            images,
                        ),
                        default_max_tokens: price.max_output_tokens,
                    });
                    return Err(TenantError::InsufficientCredits {
                        available: available.to_decimal_string(),
                        required: hold.to_decimal_string(),
                        advice,
                    });
                }
                if enforce_credit {
                    scopes_checked.push("tenant.credit".to_string());
                }
                events.push(TenantEvent::CreditsReserved {
                    request_id,
                    key_id,
                    model,
                    capability,
                    ingress,
                    app,
                    price_version,
                    rates: price.rates,
                    hold_pico: hold,
                    prompt_bytes,
                    max_output_tokens: max_tokens.unwrap_or(price.max_output_tokens),
                    images_requested: images,
                    instance_id,
                    expires_at,
                    project,
                    end_user,
                    scopes_checked,
                    at,
                });
                Ok(events)
            }
            TenantCommand::SettleUsage {
                request_id,
                attempt,
                usage,
                upstream_latency_ms,
                at,
            } => {
                let hold = self
                    .holds
                    .get(&request_id)
                    .ok_or(TenantError::UnknownHold(request_id))?;
                let cost = attempt.rates.cost_of(&usage);
                let overshoot = (cost - hold.amount).max(Credits::ZERO);
                Ok(vec![
                    TenantEvent::UpstreamAttempted {
                        request_id,
                        attempt: attempt.number,
                        provider: attempt.provider.clone(),
                        credential_id: attempt.credential_id,
                        model: attempt.model.clone(),
                        outcome: AttemptOutcome::Succeeded,
                        usage: Some(usage),
                        cost_pico: cost,
                        latency_ms: upstream_latency_ms,
                        at,
                    },
                    TenantEvent::UsageSettled {
                        request_id,
                        key_id: hold.key_id,
                        provider: attempt.provider,
                        model: attempt.model,
                        usage,
                        price_version: attempt.price_version,
                        rates: attempt.rates,
                        terms: attempt.terms,
                        cost_pico: cost,
                        provider_cost_pico: attempt.terms.cost_rates.cost_of(&usage),
                        hold_pico: hold.amount,
                        overshoot_pico: overshoot,
                        upstream_latency_ms,
                        at,
                    },
                ])
            }
            TenantCommand::RecordFailedAttempt {
                request_id,
                attempt,
                status,
                reason,
                latency_ms,
                at,
            } => {
                if !self.holds.contains_key(&request_id) {
                    return Err(TenantError::UnknownHold(request_id));
                }
                Ok(vec![TenantEvent::UpstreamAttempted {
                    request_id,
                    attempt: attempt.number,
                    provider: attempt.provider,
                    credential_id: attempt.credential_id,
                    model: attempt.model,
                    outcome: AttemptOutcome::Failed { status, reason },
                    usage: None,
                    cost_pico: Credits::ZERO,
                    latency_ms,
                    at,
                }])
            }
            TenantCommand::ReleaseHold {
                request_id,
                reason,
                at,
            } => {
                let hold = self
                    .holds
                    .get(&request_id)
                    .ok_or(TenantError::UnknownHold(request_id))?;
                Ok(vec![TenantEvent::HoldReleased {
                    request_id,
                    hold_pico: hold.amount,
                    reason,
                    at,
                }])
            }
            TenantCommand::ReleaseAbandonedHolds { live_instances, at } => Ok(self
                .holds
                .iter()
                .filter_map(|(request_id, hold)| {
                    let reason = if !live_instances.contains(&hold.instance_id) {
                        "abandoned: the hub process that placed this hold stopped before settling"
                    } else if hold.expires_at <= at {
                        "expired: the request did not settle within the hold's time to live"
                    } else {
                        return None;
                    };
                    Some(TenantEvent::HoldReleased {
                        request_id: *request_id,
                        hold_pico: hold.amount,
                        reason: reason.to_string(),
                        at,
                    })
                })
                .collect()),
            TenantCommand::SetLowBalanceThreshold { threshold, at } => {
                if self.low_balance_threshold == threshold {
                    return Ok(vec![]);
                }
                Ok(vec![TenantEvent::LowBalanceThresholdSet {
                    threshold_pico: threshold,
                    at,
                }])
            }
            TenantCommand::SuspendTenant { reason, at } => {
                check_label("reason", &reason, STATUS_REASON_MAX_CHARS)?;
                if matches!(self.status, TenantStatus::Suspended { .. }) {
                    return Ok(vec![]);
                }
                Ok(vec![TenantEvent::TenantSuspended { reason, at }])
            }
            TenantCommand::ResumeTenant { at } => match self.status {
                TenantStatus::Suspended { .. } => Ok(vec![TenantEvent::TenantResumed { at }]),
                _ => Ok(vec![]),
            },
            TenantCommand::CloseTenant {
                reason,
                remaining,
                at,
            } => self.decide_close(reason, remaining, at),
        }
    }

    /// Whether the tenant's status lets `command` be decided at all: a suspended
    /// tenant admits no model request, a closed one nothing that adds to it.
    /// Settling, releasing and expiring still work, so nothing open is stranded.
    fn admits(&self, command: &TenantCommand) -> Result<(), TenantError> {
        match (&self.status, command) {
            (TenantStatus::Suspended { reason }, TenantCommand::ReserveCredits { .. }) => {
                Err(TenantError::TenantSuspended {
                    reason: reason.clone(),
                })
            }
            (TenantStatus::Closed { .. }, TenantCommand::ReserveCredits { .. }) => {
                Err(TenantError::TenantClosed)
            }
            (
                TenantStatus::Closed { .. },
                TenantCommand::IssueApiKey { .. }
                | TenantCommand::GrantCredits { .. }
                | TenantCommand::RecordPayment { .. }
                | TenantCommand::RefundPayment { .. }
                | TenantCommand::SetLowBalanceThreshold { .. }
                | TenantCommand::SuspendTenant { .. }
                | TenantCommand::ResumeTenant { .. }
                | TenantCommand::CloseTenant { .. },
            ) => Err(TenantError::AlreadyClosed),
            _ => Ok(()),
        }
    }

    /// Closes the tenant once no hold is open: the lots due expire, then what is
    /// left of `available` is closed out (forfeited or refunded), then the
    /// tenant is closed.
    fn decide_close(
        &self,
        reason: String,
        remaining: RemainingCredit,
        at: DateTime<Utc>,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        check_label("reason", &reason, STATUS_REASON_MAX_CHARS)?;
        if !self.holds.is_empty() {
            return Err(TenantError::HoldsOpen {
                count: self.holds.len(),
            });
        }
        let mut events = self.expiry_events(at);
        let left = events.iter().fold(self.available(), |available, e| {
            available + available_delta(e)
        });
        events.push(TenantEvent::CreditsClosedOut {
            disposition: remaining,
            amount_pico: left.max(Credits::ZERO),
            at,
        });
        events.push(TenantEvent::TenantClosed { reason, at });
        Ok(events)
    }

    /// Applies one event. Cannot fail: events are facts.
    pub fn apply_event(&mut self, event: TenantEvent) {
        let position = self.position();
        self.lots.apply(&event, position);
        match event {
            TenantEvent::TenantCreated {
                tenant_id, name, ..
            } => {
                self.tenant_id = Some(tenant_id);
                self.name = name;
            }
            TenantEvent::ApiKeyIssued {
                key_id,
                name,
                role,
                key_hash,
                ..
            } => {
                self.keys.insert(
                    key_id,
                    KeyRecord {
                        name,
                        role,
                        key_hash,
                        revoked: false,
                        scopes: Scopes::default(),
                        usage: ScopeUsage::default(),
                        project: None,
                    },
                );
            }
            TenantEvent::KeyProjectSet {
                key_id, project_id, ..
            } => {
                if let Some(key) = self.keys.get_mut(&key_id) {
                    key.project = project_id;
                }
            }
            TenantEvent::ProjectCreated {
                project_id,
                name,
                scopes,
                ..
            } => {
                self.projects.insert(
                    project_id,
                    ProjectRecord {
                        name,
                        scopes,
                        usage: ScopeUsage::default(),
                        deleted: false,
                    },
                );
            }
            TenantEvent::ProjectScopesSet {
                project_id, scopes, ..
            } => {
                if let Some(project) = self.projects.get_mut(&project_id) {
                    project
                        .usage
                        .budget_changed(project.scopes.budget.as_ref(), scopes.budget.as_ref());
                    project.scopes = scopes;
                }
            }
            TenantEvent::ProjectDeleted { project_id, .. } => {
                if let Some(project) = self.projects.get_mut(&project_id) {
                    project.deleted = true;
                }
            }
            TenantEvent::ApiKeyScopesSet { key_id, scopes, .. } => {
                if let Some(key) = self.keys.get_mut(&key_id) {
                    key.usage
                        .budget_changed(key.scopes.budget.as_ref(), scopes.budget.as_ref());
                    key.scopes = scopes;
                }
            }
            TenantEvent::ApiKeyRevoked { key_id, .. } => {
                if let Some(key) = self.keys.get_mut(&key_id) {
                    key.revoked = true;
                }
            }
            TenantEvent::CreditsGranted {
                amount_pico,
                idempotency_key,
                reason,
                expires_at,
                payment,
                at,
            } => {
                self.granted = self.granted + amount_pico;
                match payment {
                    Some(PaymentRef {
                        payment_event_id,
                        payment_id,
                    }) => {
                        self.payment_events.insert(
                            payment_event_id.clone(),
                            PaymentEventRecord {
                                kind: PaymentEventKind::Succeeded,
                                payment_id: payment_id.clone(),
                                amount: amount_pico,
                            },
                        );
                        self.payments.insert(
                            payment_id,
                            PaymentRecord {
                                amount: amount_pico,
                                revoked: Credits::ZERO,
                                payment_event_id,
                                at,
                            },
                        );
                    }
                    None => {
                        self.grants.insert(
                            idempotency_key,
                            GrantRecord {
                                amount: amount_pico,
                                reason,
                                expires_at,
                                at,
                            },
                        );
                    }
                }
            }
            TenantEvent::CreditsExpired { amount_pico, .. } => {
                self.expired = self.expired + amount_pico;
            }
            TenantEvent::CreditsRevoked {
                payment_event_id,
                payment_id,
                requested_pico,
                amount_pico,
                ..
            } => {
                self.revoked = self.revoked + amount_pico;
                if let Some(payment) = self.payments.get_mut(&payment_id) {
                    payment.revoked = payment.revoked + amount_pico;
                }
                self.payment_events.insert(
                    payment_event_id,
                    PaymentEventRecord {
                        kind: PaymentEventKind::Refunded,
                        payment_id,
                        amount: requested_pico,
                    },
                );
            }
            TenantEvent::CreditsReserved {
                request_id,
                key_id,
                model,
                hold_pico,
                rates,
                price_version,
                instance_id,
                expires_at,
                project,
                at,
                ..
            } => {
                self.held = self.held + hold_pico;
                // Before 2.0 the event did not name the project: the key's was
                // the one checked (and always equals a 2.0 event's).
                let key = self.keys.get_mut(&key_id);
                let project = project.or_else(|| key.as_ref().and_then(|k| k.project));
                if let Some(key) = key {
                    key.usage.note_request(at);
                }
                if let Some(project) = project.and_then(|p| self.projects.get_mut(&p)) {
                    project.usage.note_request(at);
                }
                self.holds.insert(
                    request_id,
                    Hold {
                        key_id,
                        project,
                        model,
                        amount: hold_pico,
                        rates,
                        price_version,
                        instance_id,
                        expires_at,
                        at,
                    },
                );
            }
            TenantEvent::UsageSettled {
                request_id,
                key_id,
                usage,
                cost_pico,
                hold_pico,
                at,
                ..
            } => {
                let tokens = usage.prompt_tokens() + usage.output_tokens;
                if let Some(key) = self.keys.get_mut(&key_id) {
                    let budget = key.scopes.budget.as_ref();
                    key.usage.note_settlement(budget, cost_pico, tokens, at);
                }
                // The project the hold counted against, even if the key moved since.
                let hold = self.holds.remove(&request_id);
                if let Some(project) = hold
                    .and_then(|h| h.project)
                    .and_then(|p| self.projects.get_mut(&p))
                {
                    let budget = project.scopes.budget.as_ref();
                    project.usage.note_settlement(budget, cost_pico, tokens, at);
                }
                self.held = self.held - hold_pico;
                self.spent = self.spent + cost_pico;
            }
            // Informational: the charge is in UsageSettled.
            TenantEvent::UpstreamAttempted { .. } => {}
            TenantEvent::HoldReleased {
                request_id,
                hold_pico,
                ..
            } => {
                self.holds.remove(&request_id);
                self.held = self.held - hold_pico;
            }
            TenantEvent::LowBalanceThresholdSet { threshold_pico, .. } => {
                self.low_balance_threshold = threshold_pico;
            }
            // A notification: changes no credit.
            TenantEvent::LowBalanceCrossed { .. } => {}
            TenantEvent::PaymentEventNoted {
                payment_event_id,
                payment_id,
                amount_pico,
                ..
            } => {
                self.payment_events.insert(
                    payment_event_id,
                    PaymentEventRecord {
                        kind: PaymentEventKind::Succeeded,
                        payment_id,
                        amount: amount_pico,
                    },
                );
            }
            TenantEvent::TenantSuspended { reason, .. } => {
                self.status = TenantStatus::Suspended { reason };
            }
            TenantEvent::TenantResumed { .. } => self.status = TenantStatus::Active,
            TenantEvent::CreditsClosedOut { amount_pico, .. } => {
                self.closed_out = self.closed_out + amount_pico;
            }
            TenantEvent::TenantClosed { reason, .. } => {
                self.status = TenantStatus::Closed { reason };
            }
        }
        debug_assert!(
            self.held >= Credits::ZERO,
            "held credit can never be negative"
        );
        debug_assert!(
            self.lots.total() <= self.position().max(Credits::ZERO),
            "expiring lots never hold more than the credit left"
        );
    }
}

/// One set of scopes (a key's or a project's) with what it has used and holds.
struct Scope<'a> {
    name: &'static str,
    scopes: &'a Scopes,
    usage: &'a ScopeUsage,
    held: Credits,
    in_flight: u32,
}

impl Scope<'_> {
    /// The model, then concurrency, the minute's requests and tokens, then the
    /// budget (what the period settled plus what is held, against `hold`).
    fn check(
        &self,
        model: &ModelId,
        hold: Credits,
        at: DateTime<Utc>,
        budget_error: impl Fn(&'static str, String, String, String) -> TenantError,
    ) -> Result<(), TenantError> {
        let scopes = self.scopes;
        if !scopes.allows_model(model) {
            return Err(TenantError::ModelNotAllowed {
                scope: self.name,
                model: model.to_string(),
                allowed: scopes.models.clone().unwrap_or_default().join(", "),
            });
        }
        if let Some(max) = scopes.max_concurrent {
            if self.in_flight >= max {
                // A hold ends when its request does: a second is a fair first wait.
                return Err(TenantError::RateLimited {
                    scope: self.name,
                    limit: "max_concurrent",
                    value: u64::from(max),
                    retry_after_secs: 1,
                });
            }
        }
        let (requests, tokens) = self.usage.in_minute(at);
        let full_minute = [
            ("rpm", scopes.rpm.map(u64::from), u64::from(requests)),
            ("tpm", scopes.tpm, tokens),
        ]
        .into_iter()
        .find_map(|(limit, value, used)| value.filter(|v| used >= *v).map(|v| (limit, v)));
        if let Some((limit, value)) = full_minute {
            return Err(TenantError::RateLimited {
                scope: self.name,
                limit,
                value,
                retry_after_secs: scopes::seconds_to_next_minute(at),
            });
        }
        if let Some(budget) = &scopes.budget {
            let remaining = budget.amount - self.usage.spent_in_period(budget, at) - self.held;
            if remaining < hold {
                return Err(budget_error(
                    budget.period.as_str(),
                    budget.amount.to_decimal_string(),
                    remaining.max(Credits::ZERO).to_decimal_string(),
                    hold.to_decimal_string(),
                ));
            }
        }
        Ok(())
    }
}

/// How an event changes `available` (`granted − spent − expired − revoked −
/// closed_out − held`).
pub fn available_delta(event: &TenantEvent) -> Credits {
    match event {
        TenantEvent::CreditsGranted { amount_pico, .. } => *amount_pico,
        TenantEvent::CreditsExpired { amount_pico, .. }
        | TenantEvent::CreditsRevoked { amount_pico, .. }
        | TenantEvent::CreditsClosedOut { amount_pico, .. } => -*amount_pico,
        TenantEvent::CreditsReserved { hold_pico, .. } => -*hold_pico,
        TenantEvent::UsageSettled {
            cost_pico,
            hold_pico,
            ..
        } => *hold_pico - *cost_pico,
        TenantEvent::HoldReleased { hold_pico, .. } => *hold_pico,
        TenantEvent::TenantCreated { .. }
        | TenantEvent::ApiKeyIssued { .. }
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
        | TenantEvent::TenantClosed { .. } => Credits::ZERO,
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "Tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(event);
    }
}
