//! The tenant actor and its group commit.
//!
//! Commands that arrive while a commit is in flight queue up; the next commit
//! takes all of them (up to [`GROUP_COMMIT_MAX_COMMANDS`]), decides each against
//! the state the earlier ones left, and writes all their events in one
//! transaction. Callers get their answers only after that transaction commits, so
//! nothing a client sees can be lost by a crash. Reads queue behind commands the
//! same way and so never see uncommitted state.
//!
//! Other writers (hub processes, the CLI) append to the same stream. An append
//! of ours meets their events as a conflict; everything else rests on two rules:
//! a reported change ([`CatchUp`]) makes the actor reload before its next
//! decision, and a refusal (401/402/403/404) is never answered from a view that
//! could be stale: the store's newest sequence is checked first, and if it is
//! ahead the actor reloads and decides again.

use super::ActorError;
use crate::store::{Durability, EventLog, EventMetadata, StoreError, SNAPSHOT_EVERY_EVENTS};
use actix::prelude::*;
use chrono::Utc;
use domain::tenant::{
    Balance, GrantRecord, KeyHash, KeyRecord, ProjectRecord, Tenant, TenantCommand, TenantError,
    TenantEvent, TenantStatus,
};
use domain::{ChangedBy, Credits, InstanceId, KeyId, Permission, ProjectId, RequestId, TenantId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Commands decided and committed together at most (bounds one transaction).
pub(crate) const GROUP_COMMIT_MAX_COMMANDS: usize = 256;
/// Times a batch is retried after another process wrote to the same tenant.
pub(crate) const CONFLICT_RETRIES_MAX: u32 = 5;
/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_MS: u64 = 1_000;
/// How often an actor with holds of unknown outcome (see `unsure_holds`) tries
/// to learn whether they were committed: short, because such a hold keeps
/// credit from its tenant; each try is one load while the store is down.
const UNSURE_HOLDS_RETRY_MS: u64 = 500;
/// The reason recorded when such a hold is released.
const UNSURE_HOLD_RELEASE_REASON: &str =
    "the ledger became unavailable while the hold was committed; its request was answered 503";
/// What a caller is told when its tenant's queue is full or its call waited too
/// long: a 503, so that clients back off and retry.
pub(crate) const TENANT_BUSY: &str = "the tenant is busy; retry shortly";

/// A key to check before an operation: the caller must hold `permission`.
#[derive(Clone, Debug)]
pub(crate) struct Auth {
    pub key_id: KeyId,
    pub key_hash: KeyHash,
    pub permission: Permission,
    /// When the check is made: a key past its `expires_at` is refused.
    pub at: chrono::DateTime<Utc>,
}

// Short-lived messages: boxing the command would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum TenantOp {
    /// Decide a command (after checking `auth`, if any) and commit its events.
    Execute {
        auth: Option<Auth>,
        command: TenantCommand,
        request_id: Option<RequestId>,
        /// Who asked: recorded in the metadata of every event the command writes.
        actor: ChangedBy,
    },
    /// Read the committed state (after checking `auth`, if any).
    Read { auth: Option<Auth> },
    /// Read the committed state and one key's (after checking `auth`, if any).
    ReadKey { auth: Option<Auth>, key_id: KeyId },
    /// Read the committed state and the tenant's live projects.
    ReadProjects { auth: Option<Auth> },
}

/// What an operation answers: the tenant's committed position after it.
#[derive(Clone, Debug)]
pub(crate) struct TenantReply {
    pub tenant_name: String,
    /// Active, suspended or closed, with the reason.
    pub status: TenantStatus,
    pub balance: Balance,
    /// For a grant: the grant recorded under its idempotency key (the original one
    /// when the grant was a repeat).
    pub grant: Option<GrantRecord>,
    /// Events written, not counting a payment event id only noted
    /// (`PaymentEventNoted`): 0 means the command was a duplicate.
    pub events_written: usize,
    /// For `ReadKey`, and commands on one key (issue, scopes): that key.
    pub key: Option<KeyState>,
    /// For `ReadProjects`, and commands on a project: the live projects.
    pub projects: Option<Vec<ProjectState>>,
}

/// A project as its tenant knows it, with what its keys' requests hold.
#[derive(Clone, Debug)]
pub(crate) struct ProjectState {
    pub project_id: ProjectId,
    pub record: ProjectRecord,
    pub held: Credits,
    pub in_flight: u32,
    /// Its live (not revoked) keys.
    pub keys: usize,
}

/// A key as its tenant knows it: its record (scopes and their usage) and what
/// its open requests hold.
#[derive(Clone, Debug)]
pub(crate) struct KeyState {
    pub key_id: KeyId,
    pub record: KeyRecord,
    pub held: Credits,
    pub in_flight: u32,
}

#[derive(Message)]
#[rtype(result = "Result<TenantReply, ActorError>")]
pub(crate) struct Call(pub TenantOp);

/// Another writer appended to this tenant's stream up to `0` (its newest
/// sequence; `usize::MAX` when unknown, e.g. after missed notifications): the
/// actor reloads before its next decision if it is behind.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CatchUp(pub usize);

struct Pending {
    op: TenantOp,
    reply: oneshot::Sender<Result<TenantReply, ActorError>>,
    conflicts: u32,
    /// When the operation reached the actor: a refusal needs a view at least as
    /// fresh as this.
    arrived: Instant,
}

/// Decided operations with their answers, and the events they need committed.
type Outcomes = Vec<(Pending, Result<TenantReply, ActorError>)>;
type Events = Vec<(TenantEvent, EventMetadata)>;

/// Whether an answer refuses the caller (401, 402, 403, 404): such an answer is
/// only given from a view known to be current.
fn is_refusal(answer: &Result<TenantReply, ActorError>) -> bool {
    answer.as_ref().is_err_and(ActorError::is_refusal)
}

pub(crate) struct TenantActor {
    pub(super) tenant_id: TenantId,
    pub(super) generation: u64,
    /// A tenant actor needs its stream only.
    pub(super) store: Arc<dyn EventLog>,
    pub(super) instance_id: InstanceId,
    pub(super) mailbox_capacity: usize,
    pub(super) idle_stop: Duration,
    pub(super) on_commit: Arc<Notify>,
    pub(super) on_stop: Box<dyn Fn(TenantId, u64) + Send>,
    state: Tenant,
    version: usize,
    events_since_snapshot: usize,
    /// The hash of the last committed event: the next one links to it.
    chain_head: Option<String>,
    loaded: bool,
    busy: bool,
    pending: VecDeque<Pending>,
    last_active: Instant,
    /// The view held everything committed before this instant: when the last
    /// load started, or the last commit of ours that met no conflict, or the
    /// last check of the store's newest sequence.
    verified_at: Option<Instant>,
    /// The newest sequence another writer reported ([`CatchUp`]) and when.
    known_newest: usize,
    known_newest_at: Instant,
    /// Holds whose commit failed without an answer from the store (the
    /// connection broke during the commit): their requests were answered 503, so
    /// nothing depends on them; once the store answers again, any of them that
    /// was committed after all is released.
    unsure_holds: Vec<RequestId>,
}

impl TenantActor {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        tenant_id: TenantId,
        generation: u64,
        store: Arc<dyn EventLog>,
        instance_id: InstanceId,
        mailbox_capacity: usize,
        idle_stop: Duration,
        on_commit: Arc<Notify>,
        on_stop: Box<dyn Fn(TenantId, u64) + Send>,
    ) -> Self {
        Self {
            tenant_id,
            generation,
            store,
            instance_id,
            mailbox_capacity,
            idle_stop,
            on_commit,
            on_stop,
            state: Tenant::default(),
            version: 0,
            events_since_snapshot: 0,
            chain_head: None,
            loaded: false,
            busy: false,
            pending: VecDeque::new(),
            last_active: Instant::now(),
            verified_at: None,
            known_newest: 0,
            known_newest_at: Instant::now(),
            unsure_holds: Vec::new(),
        }
    }

    /// Starts the next load or commit if nothing is in flight.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while !self.busy && !self.pending.is_empty() {
            if !self.loaded || self.known_newest > self.version {
                self.load(ctx);
                return;
            }
            let take = self.pending.len().min(GROUP_COMMIT_MAX_COMMANDS);
            let batch: Vec<Pending> = self.pending.drain(..take).collect();
            let durability = batch_durability(batch.iter().map(|p| &p.op));
            let mut events: Events = Vec::new();
            let mut outcomes = Vec::with_capacity(batch.len());
            for pending in batch {
                let outcome = self.decide(&pending.op, &mut events);
                outcomes.push((pending, outcome));
            }
            if self.refuses_from_unverified_view(&outcomes) {
                self.verify_then_finish(ctx, events, outcomes, durability);
                return;
            }
            self.finish(ctx, events, outcomes, durability);
        }
    }

    /// Answers a decided batch, committing its events first if it has any.
    fn finish(
        &mut self,
        ctx: &mut Context<Self>,
        events: Events,
        outcomes: Outcomes,
        durability: Durability,
    ) {
        if events.is_empty() {
            for (pending, outcome) in outcomes {
                let _ = pending.reply.send(outcome);
            }
        } else {
            self.commit(ctx, events, outcomes, durability);
        }
    }

    /// Whether a refusal in `outcomes` was decided for an operation that arrived
    /// after the view was last known to be current.
    fn refuses_from_unverified_view(&self, outcomes: &Outcomes) -> bool {
        outcomes.iter().any(|(pending, outcome)| {
            is_refusal(outcome) && self.verified_at.is_none_or(|at| pending.arrived > at)
        })
    }

    /// Reads the store's newest sequence of this tenant before answering a
    /// refusal: if another writer is ahead (a grant from the CLI, a key issued
    /// through another process), the batch is decided again after a reload.
    /// Refusals are the rare path; the success path gains no query.
    fn verify_then_finish(
        &mut self,
        ctx: &mut Context<Self>,
        events: Events,
        outcomes: Outcomes,
        durability: Durability,
    ) {
        self.busy = true;
        let (store, tenant_id) = (self.store.clone(), self.tenant_id);
        let started = Instant::now();
        let check = async move { store.tenant_head(tenant_id).await };
        ctx.spawn(check.into_actor(self).map(move |head, actor, ctx| {
            actor.busy = false;
            match head {
                Ok(head) if head > actor.version => {
                    // The batch's events were applied to a stale state: reload
                    // and decide the same operations again, in the same order.
                    actor.learn_newest(head);
                    for (pending, _) in outcomes.into_iter().rev() {
                        actor.pending.push_front(pending);
                    }
                }
                Ok(_) => {
                    actor.verified_at = Some(started);
                    actor.finish(ctx, events, outcomes, durability);
                }
                Err(e) => {
                    // Whether the view is current cannot be told: no refusal.
                    let e = Arc::new(e);
                    let outcomes = outcomes
                        .into_iter()
                        .map(|(pending, outcome)| match outcome {
                            refusal if is_refusal(&refusal) => {
                                (pending, Err(ActorError::RefusalUnverified(e.clone())))
                            }
                            other => (pending, other),
                        })
                        .collect();
                    actor.finish(ctx, events, outcomes, durability);
                }
            }
            actor.pump(ctx);
        }));
    }

    /// Notes that the stream reaches at least `sequence` (see [`CatchUp`]).
    fn learn_newest(&mut self, sequence: usize) {
        if sequence > self.version {
            self.known_newest = self.known_newest.max(sequence);
            self.known_newest_at = Instant::now();
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let store = self.store.clone();
        let tenant_id = self.tenant_id;
        let started = Instant::now();
        let load = async move { store.load_tenant(tenant_id).await };
        ctx.spawn(load.into_actor(self).map(move |result, actor, ctx| {
            actor.busy = false;
            match result {
                Ok(loaded) => {
                    actor.state = loaded.state;
                    actor.chain_head = loaded.chain_head;
                    actor.version = loaded.version;
                    actor.events_since_snapshot = loaded.events_since_snapshot;
                    actor.loaded = true;
                    actor.verified_at = Some(started);
                    // A change reported before the load started is in it.
                    if actor.known_newest_at <= started {
                        actor.known_newest = actor.version;
                    }
                }
                Err(e) => {
                    tracing::error!(tenant_id = %actor.tenant_id, error = %e, "loading tenant failed");
                    let e = Arc::new(e);
                    for pending in actor.pending.drain(..) {
                        let _ = pending.reply.send(Err(ActorError::LedgerUnavailable(e.clone())));
                    }
                }
            }
            actor.pump(ctx);
        }));
    }

    fn project_states(&self) -> Vec<ProjectState> {
        let state = &self.state;
        state
            .projects
            .iter()
            .filter(|(_, p)| !p.deleted)
            .map(|(id, record)| {
                let (held, in_flight) = state.project_holds(*id);
                ProjectState {
                    project_id: *id,
                    record: record.clone(),
                    held,
                    in_flight,
                    keys: state
                        .keys
                        .values()
                        .filter(|k| !k.revoked && k.project == Some(*id))
                        .count(),
                }
            })
            .collect()
    }

    fn key_state(&self, key_id: KeyId) -> Result<KeyState, TenantError> {
        let record = self
            .state
            .keys
            .get(&key_id)
            .ok_or(TenantError::UnknownKey(key_id))?;
        let (held, in_flight) = self.state.key_holds(key_id);
        Ok(KeyState {
            key_id,
            record: record.clone(),
            held,
            in_flight,
        })
    }

    /// Decides one operation against the current state, applying its events.
    fn decide(
        &mut self,
        op: &TenantOp,
        events: &mut Vec<(TenantEvent, EventMetadata)>,
    ) -> Result<TenantReply, ActorError> {
        let (auth, command, request_id, actor) = match op {
            TenantOp::Execute {
                auth,
                command,
                request_id,
                actor,
            } => (auth, Some(command), *request_id, Some(actor)),
            TenantOp::Read { auth }
            | TenantOp::ReadKey { auth, .. }
            | TenantOp::ReadProjects { auth } => (auth, None, None, None),
        };
        let key_of = match op {
            TenantOp::ReadKey { key_id, .. } => Some(*key_id),
            TenantOp::Execute { command, .. } => match command {
                TenantCommand::IssueApiKey { key_id, .. }
                | TenantCommand::SetKeyScopes { key_id, .. } => Some(*key_id),
                _ => None,
            },
            TenantOp::Read { .. } | TenantOp::ReadProjects { .. } => None,
        };
        let with_projects = match op {
            TenantOp::ReadProjects { .. } => true,
            TenantOp::Execute { command, .. } => matches!(
                command,
                TenantCommand::CreateProject { .. }
                    | TenantCommand::SetProjectScopes { .. }
                    | TenantCommand::DeleteProject { .. }
            ),
            _ => false,
        };
        let operator = auth.is_none();
        let not_found = |e: TenantError| -> ActorError {
            if operator && e == TenantError::TenantNotFound {
                ActorError::TenantNotFound
            } else {
                e.into()
            }
        };
        if operator
            && !self.state.exists()
            && !matches!(command, Some(TenantCommand::CreateTenant { .. }))
        {
            return Err(ActorError::TenantNotFound);
        }
        if let Some(a) = auth {
            self.state
                .authorize(a.key_id, &a.key_hash, a.permission, a.at)
                .map_err(not_found)?;
            if let Some(command) = command {
                self.state
                    .may_manage_key(a.key_id, command)
                    .map_err(not_found)?;
            }
        }
        let mut written = 0;
        let mut grant_key = None;
        if let Some(command) = command {
            if let TenantCommand::GrantCredits {
                idempotency_key, ..
            } = command
            {
                grant_key = Some(idempotency_key.clone());
            }
            let new_events = self.state.decide(command.clone()).map_err(not_found)?;
            let recorded_at = Utc::now();
            for event in new_events {
                self.state.apply_event(event.clone());
                let metadata = EventMetadata {
                    recorded_at,
                    tenant_id: self.tenant_id,
                    request_id: event.request_id().or(request_id),
                    instance_id: self.instance_id,
                    actor: actor.cloned(),
                    // Filled in at commit, when the chain's order is final.
                    prev_hash: None,
                    hash: None,
                };
                // A payment event id only noted changed nothing a client sees.
                written += usize::from(!matches!(event, TenantEvent::PaymentEventNoted { .. }));
                events.push((event, metadata));
            }
        }
        Ok(TenantReply {
            tenant_name: self.state.name.clone(),
            status: self.state.status.clone(),
            balance: self.state.balance(),
            grant: grant_key.and_then(|k| self.state.grants.get(&k).cloned()),
            events_written: written,
            key: key_of
                .map(|key_id| self.key_state(key_id))
                .transpose()
                .map_err(not_found)?,
            projects: with_projects.then(|| self.project_states()),
        })
    }

    fn commit(
        &mut self,
        ctx: &mut Context<Self>,
        events: Vec<(TenantEvent, EventMetadata)>,
        outcomes: Vec<(Pending, Result<TenantReply, ActorError>)>,
        durability: Durability,
    ) {
        self.busy = true;
        let store = self.store.clone();
        let tenant_id = self.tenant_id;
        let first_sequence = self.version + 1;
        let count = events.len();
        let head = self.chain_head.clone();
        let started = Instant::now();
        let append = async move {
            let mut events = events;
            let head = crate::store::chain(tenant_id, first_sequence, head, &mut events)?;
            store
                .append(tenant_id, first_sequence, &events, durability)
                .await?;
            Ok::<_, StoreError>(head)
        };
        ctx.spawn(append.into_actor(self).map(move |result, actor, ctx| {
            actor.busy = false;
            match result {
                Ok(head) => {
                    actor.chain_head = head;
                    actor.version += count;
                    actor.events_since_snapshot += count;
                    // The append found no other writer's event after ours.
                    actor.verified_at = Some(started);
                    for (pending, outcome) in outcomes {
                        let _ = pending.reply.send(outcome);
                    }
                    actor.on_commit.notify_one();
                    actor.maybe_snapshot(ctx);
                }
                Err(StoreError::Conflict) => {
                    // Another hub process wrote to this tenant: reload and decide
                    // the same operations again, in the same order.
                    actor.loaded = false;
                    for (mut pending, _) in outcomes.into_iter().rev() {
                        if pending.conflicts >= CONFLICT_RETRIES_MAX {
                            let _ = pending.reply.send(Err(StoreError::Conflict.into()));
                        } else {
                            pending.conflicts += 1;
                            actor.pending.push_front(pending);
                        }
                    }
                }
                Err(e) => {
                    // Written or not (a connection lost during the commit leaves
                    // it unknown): forget the applied events by reloading, and
                    // find out about the holds whose callers now get a 503.
                    tracing::error!(tenant_id = %actor.tenant_id, error = %e, "commit failed");
                    actor.loaded = false;
                    actor.note_unsure_holds(&outcomes);
                    actor.retry_unsure_holds_later(ctx);
                    let e = Arc::new(e);
                    for (pending, outcome) in outcomes {
                        let answer = match outcome {
                            Ok(_) => Err(ActorError::LedgerUnavailable(e.clone())),
                            err => err,
                        };
                        let _ = pending.reply.send(answer);
                    }
                }
            }
            actor.pump(ctx);
        }));
    }

    /// Remembers the holds (and releases) of a batch whose commit outcome is
    /// unknown and whose callers are answered 503 (see `unsure_holds`).
    fn note_unsure_holds(&mut self, outcomes: &Outcomes) {
        for (pending, outcome) in outcomes {
            let TenantOp::Execute { command, .. } = &pending.op else {
                continue;
            };
            match command {
                TenantCommand::ReserveCredits { request_id, .. }
                | TenantCommand::ReleaseHold { request_id, .. }
                    if outcome.is_ok() =>
                {
                    self.unsure_holds.push(*request_id)
                }
                _ => {}
            }
        }
    }

    /// Schedules [`Self::recover_unsure_holds`] (a timer only while there are
    /// such holds: an idle actor has none running).
    fn retry_unsure_holds_later(&mut self, ctx: &mut Context<Self>) {
        if !self.unsure_holds.is_empty() {
            ctx.run_later(
                Duration::from_millis(UNSURE_HOLDS_RETRY_MS),
                |actor, ctx| actor.recover_unsure_holds(ctx),
            );
        }
    }

    /// Once the store answers again, releases every hold of unknown outcome that
    /// was committed after all (no answer depends on it) and forgets the rest.
    fn recover_unsure_holds(&mut self, ctx: &mut Context<Self>) {
        if self.unsure_holds.is_empty() {
            return;
        }
        if self.busy || !self.loaded {
            if !self.busy {
                // Learns what was committed; a failed load is retried later.
                self.load(ctx);
            }
            self.retry_unsure_holds_later(ctx);
            return;
        }
        let at = Utc::now();
        for request_id in std::mem::take(&mut self.unsure_holds) {
            if !self.state.holds.contains_key(&request_id) {
                continue;
            }
            tracing::warn!(tenant_id = %self.tenant_id, %request_id, "releasing a hold committed while the ledger became unavailable");
            // Nobody waits for this answer; a failed release is noted again.
            let (reply, _) = oneshot::channel();
            self.pending.push_back(Pending {
                op: TenantOp::Execute {
                    auth: None,
                    command: TenantCommand::ReleaseHold {
                        request_id,
                        reason: UNSURE_HOLD_RELEASE_REASON.into(),
                        at,
                    },
                    request_id: Some(request_id),
                    actor: ChangedBy::Hub,
                },
                reply,
                conflicts: 0,
                arrived: Instant::now(),
            });
        }
        self.pump(ctx);
    }

    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        if self.events_since_snapshot < SNAPSHOT_EVERY_EVENTS {
            return;
        }
        self.events_since_snapshot = 0;
        let store = self.store.clone();
        let (tenant_id, version, state) = (self.tenant_id, self.version, self.state.clone());
        ctx.spawn(
            async move {
                if let Err(e) = store.save_snapshot(tenant_id, version, &state).await {
                    tracing::warn!(%tenant_id, error = %e, "snapshot not saved; the next cold load reads more events");
                }
            }
            .into_actor(self),
        );
    }
}

/// How durable a batch's commit must be before its callers hear back: only a
/// batch of nothing but holds may skip waiting for the disk (see [`Durability`]
/// for why that keeps every answered request billed).
fn batch_durability<'a>(ops: impl IntoIterator<Item = &'a TenantOp>) -> Durability {
    let holds_only = ops.into_iter().all(|op| match op {
        TenantOp::Execute { command, .. } => {
            matches!(command, TenantCommand::ReserveCredits { .. })
        }
        // Reads write nothing.
        TenantOp::Read { .. } | TenantOp::ReadKey { .. } | TenantOp::ReadProjects { .. } => true,
    });
    if holds_only {
        Durability::HoldsOnly
    } else {
        Durability::Durable
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        ctx.run_interval(Duration::from_millis(IDLE_CHECK_MS), |actor, ctx| {
            if !actor.busy
                && actor.pending.is_empty()
                && actor.unsure_holds.is_empty()
                && actor.last_active.elapsed() >= actor.idle_stop
            {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if self.busy || !self.pending.is_empty() || !self.unsure_holds.is_empty() {
            return Running::Continue;
        }
        (self.on_stop)(self.tenant_id, self.generation);
        Running::Stop
    }
}

impl Handler<Call> for TenantActor {
    type Result = ResponseFuture<Result<TenantReply, ActorError>>;

    fn handle(&mut self, call: Call, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        // Every message leaves actix's mailbox at once for `pending`, so the
        // mailbox's capacity alone would bound nothing: the bound is kept here.
        if self.pending.len() >= self.mailbox_capacity {
            return Box::pin(async { Err(ActorError::Busy) });
        }
        let (reply, answer) = oneshot::channel();
        self.pending.push_back(Pending {
            op: call.0,
            reply,
            conflicts: 0,
            arrived: Instant::now(),
        });
        self.pump(ctx);
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(ActorError::Stopped)) })
    }
}

#[cfg(test)]
mod tests;

impl Handler<CatchUp> for TenantActor {
    type Result = ();

    fn handle(&mut self, CatchUp(sequence): CatchUp, _ctx: &mut Self::Context) {
        // Reloaded before the next decision, not now: an idle tenant costs nothing.
        self.learn_newest(sequence);
    }
}
