//! The tenant actor and its group commit.
//!
//! Commands that arrive while a commit is in flight queue up; the next commit
//! takes all of them (up to [`GROUP_COMMIT_MAX_COMMANDS`]), decides each against
//! the state the earlier ones left, and writes all their events in one
//! transaction. Callers get their answers only after that transaction commits, so
//! nothing a client sees can be lost by a crash. Reads queue behind commands the
//! same way and so never see uncommitted state.

use crate::error::HubError;
use crate::store::{Durability, EventMetadata, Store, StoreError, SNAPSHOT_EVERY_EVENTS};
use actix::prelude::*;
use chrono::Utc;
use domain::tenant::{
    Balance, GrantRecord, KeyHash, Tenant, TenantCommand, TenantError, TenantEvent,
};
use domain::{InstanceId, KeyId, Permission, RequestId, Role, TenantId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Commands decided and committed together at most (bounds one transaction).
pub const GROUP_COMMIT_MAX_COMMANDS: usize = 256;
/// Times a batch is retried after another process wrote to the same tenant.
pub const CONFLICT_RETRIES_MAX: u32 = 5;
/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_MS: u64 = 1_000;

/// A key to check before an operation: the caller must hold `permission`.
#[derive(Clone, Debug)]
pub struct Auth {
    pub key_id: KeyId,
    pub key_hash: KeyHash,
    pub permission: Permission,
}

// Short-lived messages: boxing the command would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TenantOp {
    /// Decide a command (after checking `auth`, if any) and commit its events.
    Execute {
        auth: Option<Auth>,
        command: TenantCommand,
        request_id: Option<RequestId>,
    },
    /// Read the committed state (after checking `auth`, if any).
    Read { auth: Option<Auth> },
}

/// What an operation answers: the tenant's committed position after it.
#[derive(Clone, Debug)]
pub struct TenantReply {
    pub tenant_name: String,
    pub balance: Balance,
    pub role: Option<Role>,
    /// For a grant: the grant recorded under its idempotency key (the original one
    /// when the grant was a repeat).
    pub grant: Option<GrantRecord>,
    /// Events written, not counting a payment event id only noted
    /// (`PaymentEventNoted`): 0 means the command was a duplicate.
    pub events_written: usize,
}

#[derive(Message)]
#[rtype(result = "Result<TenantReply, HubError>")]
pub struct Call(pub TenantOp);

struct Pending {
    op: TenantOp,
    reply: oneshot::Sender<Result<TenantReply, HubError>>,
    conflicts: u32,
}

pub struct TenantActor {
    pub(super) tenant_id: TenantId,
    pub(super) generation: u64,
    pub(super) store: Arc<dyn Store>,
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
}

impl TenantActor {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        tenant_id: TenantId,
        generation: u64,
        store: Arc<dyn Store>,
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
        }
    }

    /// Starts the next load or commit if nothing is in flight.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while !self.busy && !self.pending.is_empty() {
            if !self.loaded {
                self.load(ctx);
                return;
            }
            let take = self.pending.len().min(GROUP_COMMIT_MAX_COMMANDS);
            let batch: Vec<Pending> = self.pending.drain(..take).collect();
            let durability = batch_durability(batch.iter().map(|p| &p.op));
            let mut events: Vec<(TenantEvent, EventMetadata)> = Vec::new();
            let mut outcomes = Vec::with_capacity(batch.len());
            for pending in batch {
                let outcome = self.decide(&pending.op, &mut events);
                outcomes.push((pending, outcome));
            }
            if events.is_empty() {
                for (pending, outcome) in outcomes {
                    let _ = pending.reply.send(outcome);
                }
                continue;
            }
            self.commit(ctx, events, outcomes, durability);
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let store = self.store.clone();
        let tenant_id = self.tenant_id;
        let load = async move { store.load_tenant(tenant_id).await };
        ctx.spawn(load.into_actor(self).map(|result, actor, ctx| {
            actor.busy = false;
            match result {
                Ok(loaded) => {
                    actor.state = loaded.state;
                    actor.chain_head = loaded.chain_head;
                    actor.version = loaded.version;
                    actor.events_since_snapshot = loaded.events_since_snapshot;
                    actor.loaded = true;
                }
                Err(e) => {
                    tracing::error!(tenant_id = %actor.tenant_id, error = %e, "loading tenant failed");
                    for pending in actor.pending.drain(..) {
                        let _ = pending.reply.send(Err(HubError::Unavailable(crate::error::LEDGER_UNAVAILABLE.into())));
                    }
                }
            }
            actor.pump(ctx);
        }));
    }

    /// Decides one operation against the current state, applying its events.
    fn decide(
        &mut self,
        op: &TenantOp,
        events: &mut Vec<(TenantEvent, EventMetadata)>,
    ) -> Result<TenantReply, HubError> {
        let (auth, command, request_id) = match op {
            TenantOp::Execute {
                auth,
                command,
                request_id,
            } => (auth, Some(command), *request_id),
            TenantOp::Read { auth } => (auth, None, None),
        };
        let operator = auth.is_none();
        let not_found = |e: TenantError| -> HubError {
            if operator && e == TenantError::TenantNotFound {
                HubError::NotFound("tenant not found".into())
            } else {
                e.into()
            }
        };
        if operator
            && !self.state.exists()
            && !matches!(command, Some(TenantCommand::CreateTenant { .. }))
        {
            return Err(HubError::NotFound("tenant not found".into()));
        }
        let role = match auth {
            Some(a) => Some(
                self.state
                    .authorize(a.key_id, &a.key_hash, a.permission)
                    .map_err(not_found)?,
            ),
            None => None,
        };
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
            balance: self.state.balance(),
            role,
            grant: grant_key.and_then(|k| self.state.grants.get(&k).cloned()),
            events_written: written,
        })
    }

    fn commit(
        &mut self,
        ctx: &mut Context<Self>,
        events: Vec<(TenantEvent, EventMetadata)>,
        outcomes: Vec<(Pending, Result<TenantReply, HubError>)>,
        durability: Durability,
    ) {
        self.busy = true;
        let store = self.store.clone();
        let tenant_id = self.tenant_id;
        let first_sequence = self.version + 1;
        let count = events.len();
        let head = self.chain_head.clone();
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
                    // Nothing was written: forget the applied events by reloading.
                    tracing::error!(tenant_id = %actor.tenant_id, error = %e, "commit failed");
                    actor.loaded = false;
                    let message = crate::error::LEDGER_UNAVAILABLE.to_string();
                    for (pending, outcome) in outcomes {
                        let answer = match outcome {
                            Ok(_) => Err(HubError::Unavailable(message.clone())),
                            err => err,
                        };
                        let _ = pending.reply.send(answer);
                    }
                }
            }
            actor.pump(ctx);
        }));
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
        TenantOp::Read { .. } => true,
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
                && actor.last_active.elapsed() >= actor.idle_stop
            {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if self.busy || !self.pending.is_empty() {
            return Running::Continue;
        }
        (self.on_stop)(self.tenant_id, self.generation);
        Running::Stop
    }
}

impl Handler<Call> for TenantActor {
    type Result = ResponseFuture<Result<TenantReply, HubError>>;

    fn handle(&mut self, call: Call, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.pending.push_back(Pending {
            op: call.0,
            reply,
            conflicts: 0,
        });
        self.pump(ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(HubError::Unavailable("tenant actor stopped".into())))
        })
    }
}
