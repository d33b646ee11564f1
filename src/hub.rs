//! The hub's operations, shared by the HTTP API and the CLI.
//!
//! Everything that changes a tenant goes through its actor; everything the
//! operator configures (providers, prices) goes to the store and then refreshes
//! the catalog.

use crate::actors::{ActorError, Auth, KeyState, TenantOp, TenantRegistry, TenantReply};
use crate::auth::{new_key, PresentedKey};
use crate::catalog::Catalog;
use crate::config::{Limits, Settings};
use crate::crypto::{credential_binding, Secret, SecretBox, SECRET_MAX_BYTES};
use crate::projector::Projector;
use crate::providers::{Credential, ProviderKind, Upstream};
use crate::store::{
    Change, CredentialRow, EventLog, LiveSet, ProjectionRows, ProviderRow, Store, StoreError,
};
use chrono::{DateTime, Utc};
use domain::tenant::{Balance, GrantRecord, RemainingCredit, Scopes, ScopesPatch, TenantCommand};
use domain::{ChangedBy, Credits, InstanceId, KeyId, Permission, ProjectId, Role, TenantId};
use projections::balances::{BalanceRow, Balances};
use std::sync::Arc;
use std::time::Duration;

/// A key to issue: its label, role, scopes and project.
#[derive(Clone, Debug)]
pub(crate) struct KeySpec {
    pub name: String,
    pub role: Role,
    pub scopes: Scopes,
    pub project: Option<ProjectId>,
}

/// The hub's services: what routes, codecs, the CLI and start-up call.
///
/// Its parts are private. Tenants are reached through one door,
/// [`Hub::call_tenant`] (their actors decide every change); stored data through
/// the store's role that a caller needs ([`Hub::event_log`], [`Hub::read_models`],
/// [`Hub::live_set`]); the rest through narrow readers.
pub struct Hub {
    mode: crate::config::DeploymentMode,
    store: Arc<dyn Store>,
    tenants: TenantRegistry,
    catalog: Catalog,
    upstream: Upstream,
    router: crate::routing::Router,
    secrets: Arc<SecretBox>,
    projector: Projector,
    instance_id: InstanceId,
    limits: Limits,
    operator_token: String,
    /// Business time (see `clock`): wall time in production, movable in tests.
    clock: crate::clock::Clock,
    /// See [`Hub::full_hold_sweeps`].
    full_hold_sweeps: std::sync::atomic::AtomicU64,
}

/// What the hold sweep remembers from one pass to the next, so that it visits
/// the tenants only when a hold could be due for release:
/// - at the first pass (holds of processes that died before this one started);
/// - when a process left the live set since the last pass. Its holds were
///   committed at least `instance_stale_after_ms` before it left, long enough
///   for the balances projection (which the sweep reads) to show them;
/// - every `hold_expiry_sweep_interval_ms`, for holds past their time to live
///   (and holds of a process that started and died between two passes).
///
/// Visiting every tenant with open holds at every pass cost one command per busy
/// tenant every `hold_sweep_interval_ms`, whether or not anything was due.
#[derive(Default)]
struct SweepState {
    live: Option<Vec<InstanceId>>,
    last_full: Option<std::time::Instant>,
}

/// A provider as the operator adds it. Which credential fields are needed depends
/// on the kind: `api_key` for most, `region` + `access_key_id` +
/// `secret_access_key` for Bedrock. No `Debug`: it holds secrets.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderSpec {
    pub(crate) name: String,
    pub(crate) kind: String,
    /// Defaults to the kind's public endpoint.
    pub(crate) base_url: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    /// Share of requests in rotation once the provider has several credentials.
    pub(crate) weight: Option<u32>,
}

/// Another credential for an existing provider. No `Debug`: it holds secrets.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialSpec {
    pub(crate) api_key: Option<String>,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    pub(crate) weight: Option<u32>,
}

/// Why an operation of the hub was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubOpError {
    /// A provider or credential spec that does not hold.
    #[error("{0}")]
    Invalid(String),
    /// A provider or credential named that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A grant the tenant accepted is not in its reply.
    #[error("grant not recorded")]
    GrantNotRecorded,
    /// The actor answered a command on a key without the key.
    #[error("the key was not in the tenant's answer")]
    KeyNotShown,
    /// A credential could not be written as JSON before sealing.
    #[error("the credential could not be encoded")]
    CredentialEncoding(#[source] serde_json::Error),
    #[error(transparent)]
    Actor(#[from] ActorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Largest rotation weight of a credential.
pub(crate) const CREDENTIAL_WEIGHT_MAX: u32 = 1_000;

/// Checks a credential's fields for a kind of provider.
fn parse_credential(
    kind: ProviderKind,
    api_key: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
) -> Result<Credential, HubOpError> {
    let secret = |field: &str, value: Option<String>| -> Result<Secret, HubOpError> {
        match value {
            Some(v) if !v.is_empty() && v.len() <= SECRET_MAX_BYTES => Ok(Secret::new(v)),
            _ => Err(HubOpError::Invalid(format!(
                "{field} is required for a {} provider (1 to {SECRET_MAX_BYTES} bytes)",
                kind.as_str()
            ))),
        }
    };
    if kind.uses_aws_credentials() {
        let access_key_id = secret("access_key_id", access_key_id)?.expose().to_string();
        Ok(Credential::Aws {
            access_key_id,
            secret_access_key: secret("secret_access_key", secret_access_key)?,
        })
    } else {
        Ok(Credential::ApiKey {
            api_key: secret("api_key", api_key)?,
        })
    }
}

use crate::prices::PriceBookWriter;
pub(crate) use crate::prices::PriceSpec;

/// Tenants given an `ExpireCredits` in one expiry pass at most, so that a pass
/// stays short however many lots fall due at once.
pub(crate) const EXPIRY_TENANTS_PER_PASS: usize = 256;

/// Changes reported by the store and not yet applied, at most: past it the
/// store's watcher waits (PostgreSQL queues notifications meanwhile).
pub(crate) const CHANGES_QUEUE_MAX: usize = 4_096;

/// Aborts a background task when dropped (with the task that started it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Hub {
    /// Builds the hub's services on an open store. Must run inside an actix System
    /// (the tenant actors start on its arbiters).
    pub(crate) fn new(
        settings: &Settings,
        store: Arc<dyn Store>,
        secrets: Arc<SecretBox>,
        operator_token: String,
    ) -> anyhow::Result<Self> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let instance_id = InstanceId::new_random();
        Ok(Hub {
            tenants: TenantRegistry::new(
                store.clone(),
                instance_id,
                settings.limits.clone(),
                settings.actor_threads,
                wake.clone(),
            ),
            catalog: Catalog::new(store.clone(), secrets.clone()),
            upstream: Upstream::new(&settings.limits)?,
            router: crate::routing::Router::default(),
            projector: Projector::new(
                store.clone(),
                wake,
                projections::registry(&settings.limits.projection_settings()),
            ),
            secrets,
            instance_id,
            limits: settings.limits.clone(),
            mode: settings.mode,
            operator_token,
            store,
            clock: Default::default(),
            full_hold_sweeps: Default::default(),
        })
    }

    /// The one door to a tenant: its actor checks `op`'s key, if any, and decides.
    pub(crate) async fn call_tenant(
        &self,
        tenant_id: TenantId,
        op: TenantOp,
    ) -> Result<TenantReply, ActorError> {
        self.tenants.call(tenant_id, op).await
    }

    /// Stops every tenant actor (at shutdown, or at the end of a CLI command).
    pub fn shutdown_tenants(&self) {
        self.tenants.shutdown();
    }

    /// The whole store, for operations that replay or verify it and for tests.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stored events: tenant streams (read only here; written by the actors) and
    /// the price book.
    pub(crate) fn event_log(&self) -> &dyn EventLog {
        self.store.as_ref()
    }

    /// The projections' rows (balances, analytics, invoices).
    pub(crate) fn read_models(&self) -> &dyn ProjectionRows {
        self.store.as_ref()
    }

    /// The processes alive on this store.
    pub(crate) fn live_set(&self) -> &dyn LiveSet {
        self.store.as_ref()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn mode(&self) -> crate::config::DeploymentMode {
        self.mode
    }

    /// Business time now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The business clock (tests move it).
    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub(crate) fn router(&self) -> &crate::routing::Router {
        &self.router
    }

    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn instance_id(&self) -> InstanceId {
        self.instance_id
    }

    pub(crate) fn operator_token(&self) -> &str {
        &self.operator_token
    }

    pub fn projector(&self) -> &Projector {
        &self.projector
    }

    /// The price book's writer (set prices, aliases, margins and plans).
    pub(crate) fn price_book(&self, actor: ChangedBy) -> PriceBookWriter<'_> {
        PriceBookWriter {
            store: self.store.as_ref(),
            catalog: &self.catalog,
            clock: &self.clock,
            actor,
        }
    }

    /// The check of `key` for `permission`, now on the business clock (a key's
    /// expiry is checked against it).
    pub(crate) fn key_auth(&self, key: &PresentedKey, permission: Permission) -> Auth {
        Auth {
            key_id: key.key_id,
            key_hash: key.key_hash.clone(),
            permission,
            at: self.clock.now(),
        }
    }

    /// Runs an operator's (or the hub's own) command on a tenant: no key to check.
    async fn operator_command(
        &self,
        tenant_id: TenantId,
        command: TenantCommand,
        actor: ChangedBy,
    ) -> Result<TenantReply, ActorError> {
        let op = TenantOp::Execute {
            auth: None,
            command,
            request_id: None,
            actor,
        };
        self.tenants.call(tenant_id, op).await
    }

    pub(crate) async fn create_tenant(
        &self,
        name: String,
        initial_credits: Credits,
        actor: ChangedBy,
    ) -> Result<TenantId, HubOpError> {
        let tenant_id = TenantId::new_random();
        let command = TenantCommand::CreateTenant {
            tenant_id,
            name,
            initial_credits,
            at: self.clock.now(),
        };
        self.operator_command(tenant_id, command, actor).await?;
        Ok(tenant_id)
    }

    /// Suspends a tenant: its model requests are refused (403) until it is
    /// resumed; its open holds settle as usual. A second suspension is a no-op.
    pub(crate) async fn suspend_tenant(
        &self,
        tenant_id: TenantId,
        reason: String,
        actor: ChangedBy,
    ) -> Result<TenantReply, HubOpError> {
        let command = TenantCommand::SuspendTenant {
            reason,
            at: self.clock.now(),
        };
        Ok(self.operator_command(tenant_id, command, actor).await?)
    }

    /// Resumes a suspended tenant (an active one stays as it is).
    pub(crate) async fn resume_tenant(
        &self,
        tenant_id: TenantId,
        actor: ChangedBy,
    ) -> Result<TenantReply, HubOpError> {
        let command = TenantCommand::ResumeTenant {
            at: self.clock.now(),
        };
        Ok(self.operator_command(tenant_id, command, actor).await?)
    }

    /// Closes a tenant for good, once it has no open hold; the credit left is
    /// recorded as forfeited or refunded (`balance.closed_out` in the reply).
    pub(crate) async fn close_tenant(
        &self,
        tenant_id: TenantId,
        reason: String,
        remaining: RemainingCredit,
        actor: ChangedBy,
    ) -> Result<TenantReply, HubOpError> {
        let command = TenantCommand::CloseTenant {
            reason,
            remaining,
            at: self.clock.now(),
        };
        Ok(self.operator_command(tenant_id, command, actor).await?)
    }

    /// Issues a key; the returned text is the only copy of its secret.
    /// A command on a tenant's keys, by the operator (`auth: None`) or by a
    /// tenant key, which must hold `ManageKeys` and may not go beyond its own power.
    async fn key_command(
        &self,
        tenant_id: TenantId,
        command: TenantCommand,
        auth: Option<Auth>,
        actor: ChangedBy,
    ) -> Result<TenantReply, ActorError> {
        let op = TenantOp::Execute {
            auth,
            command,
            request_id: None,
            actor,
        };
        self.tenants.call(tenant_id, op).await
    }

    pub(crate) async fn issue_key(
        &self,
        tenant_id: TenantId,
        spec: KeySpec,
        auth: Option<Auth>,
        actor: ChangedBy,
    ) -> Result<(KeyId, String, KeyState), HubOpError> {
        let key = new_key(tenant_id);
        let command = TenantCommand::IssueApiKey {
            key_id: key.key_id,
            name: spec.name,
            role: spec.role,
            key_hash: key.key_hash,
            scopes: spec.scopes,
            project: spec.project,
            at: self.clock.now(),
        };
        let reply = self.key_command(tenant_id, command, auth, actor).await?;
        let state = reply.key.ok_or(HubOpError::KeyNotShown)?;
        Ok((key.key_id, key.full_key, state))
    }

    /// Changes some of a key's scopes; answers the key as it is after. `auth`:
    /// the tenant key making the change, checked first (`None`: the operator).
    pub(crate) async fn set_key_scopes(
        &self,
        tenant_id: TenantId,
        key_id: KeyId,
        patch: ScopesPatch,
        auth: Option<Auth>,
        actor: ChangedBy,
    ) -> Result<KeyState, HubOpError> {
        let command = TenantCommand::SetKeyScopes {
            key_id,
            patch,
            at: self.clock.now(),
        };
        let reply = self.key_command(tenant_id, command, auth, actor).await?;
        reply.key.ok_or(HubOpError::KeyNotShown)
    }

    /// A key of a tenant with its scopes and what its requests hold now.
    pub(crate) async fn key_state(
        &self,
        tenant_id: TenantId,
        key_id: KeyId,
        auth: Option<Auth>,
    ) -> Result<KeyState, HubOpError> {
        let reply = self
            .tenants
            .call(tenant_id, TenantOp::ReadKey { auth, key_id })
            .await?;
        reply.key.ok_or(HubOpError::KeyNotShown)
    }

    pub(crate) async fn revoke_key(
        &self,
        tenant_id: TenantId,
        key_id: KeyId,
        auth: Option<Auth>,
        actor: ChangedBy,
    ) -> Result<(), HubOpError> {
        let command = TenantCommand::RevokeApiKey {
            key_id,
            at: self.clock.now(),
        };
        self.key_command(tenant_id, command, auth, actor).await?;
        Ok(())
    }

    pub(crate) async fn grant(
        &self,
        tenant_id: TenantId,
        amount: Credits,
        idempotency_key: String,
        reason: String,
        expires_at: Option<DateTime<Utc>>,
        actor: ChangedBy,
    ) -> Result<(GrantRecord, TenantReply), HubOpError> {
        let command = TenantCommand::GrantCredits {
            amount,
            idempotency_key,
            reason,
            expires_at,
            at: self.clock.now(),
        };
        let reply = self.operator_command(tenant_id, command, actor).await?;
        let grant = reply.grant.clone().ok_or(HubOpError::GrantNotRecorded)?;
        Ok((grant, reply))
    }

    pub(crate) async fn balance(
        &self,
        tenant_id: TenantId,
        auth: Option<Auth>,
    ) -> Result<Balance, ActorError> {
        Ok(self
            .tenants
            .call(tenant_id, TenantOp::Read { auth })
            .await?
            .balance)
    }

    /// Adds a provider; its credential is sealed before it is stored.
    pub(crate) async fn add_provider(&self, spec: ProviderSpec) -> Result<ProviderRow, HubOpError> {
        let kind: ProviderKind = spec.kind.parse().map_err(HubOpError::Invalid)?;
        if !kind.is_available() {
            return Err(HubOpError::Invalid(format!(
                "provider kind {:?} is not supported by this hub yet",
                kind.as_str()
            )));
        }
        let name = spec.name;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !valid_name {
            return Err(HubOpError::Invalid(
                "provider name must be 1-64 characters of letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let credential = parse_credential(
            kind,
            spec.api_key,
            spec.access_key_id,
            spec.secret_access_key,
        )?;
        let region = if kind.uses_aws_credentials() {
            let region = spec.region.filter(|r| {
                !r.is_empty()
                    && r.len() <= 64
                    && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            Some(region.ok_or_else(|| {
                HubOpError::Invalid(
                    "region is required for a bedrock provider (e.g. \"us-east-1\")".into(),
                )
            })?)
        } else {
            None
        };
        let base_url = match (spec.base_url, kind.default_base_url(), &region) {
            (Some(url), _, _) => url,
            (None, Some(default), _) => default.to_string(),
            (None, None, Some(region)) => format!("https://bedrock-runtime.{region}.amazonaws.com"),
            (None, None, None) => return Err(HubOpError::Invalid("base_url is required".into())),
        };
        let url = reqwest::Url::parse(&base_url)
            .map_err(|_| HubOpError::Invalid("base_url is not a valid URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HubOpError::Invalid("base_url must be http or https".into()));
        }
        let row = ProviderRow {
            provider_id: uuid::Uuid::new_v4().to_string(),
            name,
            kind: kind.as_str().to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            region,
            created_at: Utc::now().to_rfc3339(),
        };
        let credential =
            self.seal_credential(&row.provider_id, &credential, spec.weight.unwrap_or(1))?;
        self.store.insert_provider(&row, &credential).await?;
        self.catalog.refresh().await?;
        Ok(row)
    }

    /// Adds another credential to a provider (rotation by weight).
    pub(crate) async fn add_credential(
        &self,
        provider_name: &str,
        spec: CredentialSpec,
    ) -> Result<String, HubOpError> {
        let provider = self
            .catalog
            .snapshot()
            .providers
            .get(provider_name)
            .cloned()
            .ok_or_else(|| HubOpError::NotFound(format!("provider {provider_name:?} not found")))?;
        let credential = parse_credential(
            provider.kind,
            spec.api_key,
            spec.access_key_id,
            spec.secret_access_key,
        )?;
        let row =
            self.seal_credential(&provider.provider_id, &credential, spec.weight.unwrap_or(1))?;
        self.store.insert_credential(&row).await?;
        self.catalog.refresh().await?;
        Ok(row.credential_id)
    }

    /// Disables a credential the upstream rejected, or re-enables one (`None`).
    pub(crate) async fn set_credential_disabled(
        &self,
        credential_id: &str,
        reason: Option<&str>,
    ) -> Result<(), HubOpError> {
        if !self
            .store
            .set_credential_disabled(credential_id, reason)
            .await?
        {
            return Err(HubOpError::NotFound(format!(
                "credential {credential_id:?} not found"
            )));
        }
        self.catalog.refresh().await?;
        Ok(())
    }

    fn seal_credential(
        &self,
        provider_id: &str,
        credential: &Credential,
        weight: u32,
    ) -> Result<CredentialRow, HubOpError> {
        if weight == 0 || weight > CREDENTIAL_WEIGHT_MAX {
            return Err(HubOpError::Invalid(format!(
                "weight must be 1 to {CREDENTIAL_WEIGHT_MAX}"
            )));
        }
        let credential_id = uuid::Uuid::new_v4().to_string();
        let plaintext =
            Secret::new(serde_json::to_string(credential).map_err(HubOpError::CredentialEncoding)?);
        Ok(CredentialRow {
            secret_ciphertext: self.secrets.seal(
                &plaintext,
                &credential_binding(provider_id, &credential_id, None),
            ),
            credential_id,
            provider_id: provider_id.to_string(),
            weight: weight as i64,
            disabled_reason: None,
            created_at: Utc::now().to_rfc3339(),
        })
    }

    /// Beats this process's heartbeat, then, when a hold could be due for release,
    /// releases holds left by dead processes and holds past their time to live
    /// (see [`SweepState`] for when that is).
    async fn sweep_holds_if_due(&self, state: &mut SweepState) -> Result<usize, StoreError> {
        let now = now_ms();
        self.store.heartbeat(self.instance_id, now).await?;
        let live = self
            .store
            .live_instances(now - self.limits.instance_stale_after_ms as i64)
            .await?;
        let vanished = match &state.live {
            None => true,
            Some(before) => before.iter().any(|i| !live.contains(i)),
        };
        let expiry_due = state.last_full.is_none_or(|at| {
            at.elapsed() >= Duration::from_millis(self.limits.hold_expiry_sweep_interval_ms)
        });
        state.live = Some(live.clone());
        if !vanished && !expiry_due {
            return Ok(0);
        }
        state.last_full = Some(std::time::Instant::now());
        self.full_hold_sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.release_abandoned_holds(live).await
    }

    /// Hold sweeps that visited every tenant with open holds, since start.
    pub fn full_hold_sweeps(&self) -> u64 {
        self.full_hold_sweeps
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Releases, in every tenant with open holds, the holds of processes not in
    /// `live` and the holds past their time to live on the hub's clock. Returns
    /// the holds released. Public so that a test can run one pass with the clock
    /// moved past a hold's time to live instead of waiting for the next one.
    pub async fn release_abandoned_holds(
        &self,
        live: Vec<InstanceId>,
    ) -> Result<usize, StoreError> {
        let mut released = 0;
        for (key, payload) in self.store.projection_rows(Balances::NAME).await? {
            let Ok(row) = serde_json::from_str::<BalanceRow>(&payload) else {
                continue;
            };
            if row.open_holds == 0 {
                continue;
            }
            let Ok(tenant_id) = key.parse::<TenantId>() else {
                continue;
            };
            let command = TenantCommand::ReleaseAbandonedHolds {
                live_instances: live.clone(),
                at: self.clock.now(),
            };
            match self
                .operator_command(tenant_id, command, ChangedBy::Hub)
                .await
            {
                Ok(reply) => released += reply.events_written,
                Err(e) => tracing::warn!(%tenant_id, error = %e, "hold sweep failed for tenant"),
            }
        }
        Ok(released)
    }

    /// Expires the lots past their expiry: an `ExpireCredits` for each tenant with
    /// a lot due, at most [`EXPIRY_TENANTS_PER_PASS`] tenants (earliest expiry
    /// first; the rest wait for the next pass). Returns the `CreditsExpired` events
    /// written.
    ///
    /// The tenants come from the balances projection, whose rows keep each
    /// tenant's expiring lots: one read of the table, like the hold sweep, and no
    /// tenant is loaded unless one of its lots is due. The projection may trail the
    /// log by a moment, which is harmless both ways: a lot granted just now is
    /// seen by a later pass (and a reservation expires due lots itself), and a
    /// tenant whose lots were just expired gets a command that decides nothing.
    pub async fn expire_due_credits(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut due: Vec<(DateTime<Utc>, TenantId)> = Vec::new();
        for (key, payload) in self.store.projection_rows(Balances::NAME).await? {
            // Rows without expiring lots do not even name the field: skip them unparsed.
            if !payload.contains("\"lots\"") {
                continue;
            }
            let Ok(row) = serde_json::from_str::<BalanceRow>(&payload) else {
                continue;
            };
            let (Some(next), Ok(tenant_id)) = (row.next_expiry(), key.parse::<TenantId>()) else {
                continue;
            };
            if next <= now {
                due.push((next, tenant_id));
            }
        }
        due.sort();
        due.truncate(EXPIRY_TENANTS_PER_PASS);
        let mut expired = 0;
        for (_, tenant_id) in due {
            let command = TenantCommand::ExpireCredits {
                at: self.clock.now(),
            };
            match self
                .operator_command(tenant_id, command, ChangedBy::Hub)
                .await
            {
                Ok(reply) => expired += reply.events_written,
                Err(e) => tracing::warn!(%tenant_id, error = %e, "credit expiry failed for tenant"),
            }
        }
        Ok(expired)
    }

    /// An expiry pass every `credit_expiry_interval_ms`, until the process ends.
    async fn run_credit_expiry(self: Arc<Self>) {
        let every = Duration::from_millis(self.limits.credit_expiry_interval_ms);
        loop {
            tokio::time::sleep(every).await;
            match self.expire_due_credits().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(lots = n, "expired credit past its expiry"),
                Err(e) => tracing::warn!(error = %e, "credit expiry pass failed"),
            }
        }
    }

    /// Keeps this process's view current with every other writer's changes,
    /// until the process ends: the store reports them (see `store::Change`),
    /// and every `catalog_refresh_ms` the catalog version is compared too, in
    /// case a report was lost.
    pub(crate) async fn run_freshness(self: Arc<Self>) {
        let (changes, mut reported) = tokio::sync::mpsc::channel(CHANGES_QUEUE_MAX);
        let store = self.store.clone();
        let poll_ms = self.limits.catalog_refresh_ms;
        let _watch = AbortOnDrop(actix_web::rt::spawn(async move {
            store.watch(changes, poll_ms).await
        }));
        let mut every = tokio::time::interval(Duration::from_millis(poll_ms));
        loop {
            tokio::select! {
                change = reported.recv() => match change {
                    Some(change) => self.apply_change(change).await,
                    None => return,
                },
                _ = every.tick() => {
                    if let Err(e) = self.catalog.refresh_if_changed().await {
                        tracing::warn!(error = %e, "catalog refresh failed");
                    }
                }
            }
        }
    }

    /// Brings this process's view up to one reported change.
    async fn apply_change(&self, change: Change) {
        let reload_catalog = match change {
            Change::Tenant {
                tenant_id,
                sequence,
                instance_id,
            } => {
                // This process's own appends are already in its actors.
                if instance_id != Some(self.instance_id) {
                    self.tenants.catch_up(tenant_id, sequence);
                }
                false
            }
            Change::Catalog => true,
            Change::Missed => {
                self.tenants.catch_up_all();
                true
            }
        };
        if reload_catalog {
            if let Err(e) = self.catalog.refresh_if_changed().await {
                tracing::warn!(error = %e, "catalog refresh failed");
            }
        }
    }

    /// Heartbeat, hold sweep and credit expiry, until the process ends.
    pub(crate) async fn run_maintenance(self: Arc<Self>) {
        // Expiry runs in its own task, stopped with this one: a long pass must never
        // delay a heartbeat (a process that misses them looks dead, and its holds
        // are released).
        let _expiry = AbortOnDrop(actix_web::rt::spawn(self.clone().run_credit_expiry()));
        let sweep_every = Duration::from_millis(self.limits.hold_sweep_interval_ms);
        let heartbeat_every = Duration::from_millis(self.limits.instance_heartbeat_ms);
        let mut last_sweep = std::time::Instant::now() - sweep_every;
        let mut sweep_state = SweepState::default();
        loop {
            if last_sweep.elapsed() >= sweep_every {
                last_sweep = std::time::Instant::now();
                match self.sweep_holds_if_due(&mut sweep_state).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(released = n, "released abandoned or expired holds"),
                    Err(e) => tracing::warn!(error = %e, "hold sweep failed"),
                }
            } else if let Err(e) = self.store.heartbeat(self.instance_id, now_ms()).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            tokio::time::sleep(heartbeat_every.min(sweep_every)).await;
        }
    }
}
