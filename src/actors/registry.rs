//! Finds or starts the actor of a tenant.

use super::tenant::{Call, CatchUp, TenantActor, TenantOp, TenantReply};
use super::ActorError;
use crate::config::Limits;
use crate::store::EventLog;
use actix::prelude::*;
use domain::{InstanceId, TenantId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

type ActorMap = Arc<Mutex<HashMap<TenantId, (u64, Addr<TenantActor>)>>>;

/// Upper bound on tenant actors alive at once in one process (each holds a
/// tenant's state in memory); past it new tenants wait for idle ones to stop.
pub(crate) const LIVE_TENANT_ACTORS_MAX: usize = 100_000;

#[derive(Clone)]
pub(crate) struct TenantRegistry {
    actors: ActorMap,
    arbiters: Arc<Vec<ArbiterHandle>>,
    next_generation: Arc<AtomicU64>,
    next_arbiter: Arc<AtomicUsize>,
    store: Arc<dyn EventLog>,
    instance_id: InstanceId,
    limits: Limits,
    on_commit: Arc<Notify>,
}

impl TenantRegistry {
    /// Must run inside an actix `System`: it starts the actor threads.
    pub(crate) fn new(
        store: Arc<dyn EventLog>,
        instance_id: InstanceId,
        limits: Limits,
        threads: usize,
        on_commit: Arc<Notify>,
    ) -> Self {
        let arbiters = (0..threads.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        Self {
            actors: Arc::default(),
            arbiters: Arc::new(arbiters),
            next_generation: Arc::default(),
            next_arbiter: Arc::default(),
            store,
            instance_id,
            limits,
            on_commit,
        }
    }

    fn addr_for(&self, tenant_id: TenantId) -> Result<Addr<TenantActor>, ActorError> {
        let mut actors = self.actors.lock().expect("actor map lock poisoned");
        if let Some((_, addr)) = actors.get(&tenant_id) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        if actors.len() >= LIVE_TENANT_ACTORS_MAX {
            return Err(ActorError::TooManyTenants);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let arbiter =
            &self.arbiters[self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len()];
        let map = self.actors.clone();
        let on_stop = Box::new(move |tenant_id: TenantId, generation: u64| {
            let mut actors = map.lock().expect("actor map lock poisoned");
            if actors.get(&tenant_id).map(|(g, _)| *g) == Some(generation) {
                actors.remove(&tenant_id);
            }
        });
        let actor = TenantActor::new(
            tenant_id,
            generation,
            self.store.clone(),
            self.instance_id,
            self.limits.tenant_mailbox_capacity,
            Duration::from_millis(self.limits.tenant_idle_stop_ms),
            self.on_commit.clone(),
            on_stop,
        );
        let addr = TenantActor::start_in_arbiter(arbiter, move |_| actor);
        actors.insert(tenant_id, (generation, addr.clone()));
        Ok(addr)
    }

    /// Runs one operation on a tenant and waits for its committed answer.
    pub(crate) async fn call(
        &self,
        tenant_id: TenantId,
        op: TenantOp,
    ) -> Result<TenantReply, ActorError> {
        let timeout = Duration::from_millis(self.limits.tenant_call_timeout_ms);
        // An actor that stopped between lookup and send never saw the message
        // (Closed): start a fresh one and send again, once.
        for _ in 0..2 {
            let addr = self.addr_for(tenant_id)?;
            match tokio::time::timeout(timeout, addr.send(Call(op.clone()))).await {
                Err(_) => return Err(ActorError::Busy),
                Ok(Ok(answer)) => return answer,
                Ok(Err(MailboxError::Closed)) => continue,
                Ok(Err(MailboxError::Timeout)) => return Err(ActorError::Busy),
            }
        }
        Err(ActorError::Unreachable)
    }

    /// Another writer appended to `tenant_id`'s stream up to `sequence`: its
    /// actor, if one is running here, reloads before its next decision. (One
    /// that is not running loads the stream when next used.)
    pub(crate) fn catch_up(&self, tenant_id: TenantId, sequence: usize) {
        let actors = self.actors.lock().expect("actor map lock poisoned");
        if let Some((_, addr)) = actors.get(&tenant_id) {
            // Not bounded by the mailbox: dropping it would leave a stale view.
            addr.do_send(CatchUp(sequence));
        }
    }

    /// Changes may have been missed: every running actor reloads before its
    /// next decision.
    pub(crate) fn catch_up_all(&self) {
        let actors = self.actors.lock().expect("actor map lock poisoned");
        for (_, addr) in actors.values() {
            addr.do_send(CatchUp(usize::MAX));
        }
    }

    /// The running actor of `tenant_id`, if any (tests look inside it).
    #[cfg(test)]
    pub(crate) fn running_actor(&self, tenant_id: TenantId) -> Option<Addr<TenantActor>> {
        let actors = self.actors.lock().expect("actor map lock poisoned");
        actors.get(&tenant_id).map(|(_, addr)| addr.clone())
    }

    #[cfg(test)]
    pub(crate) fn live_actor_count(&self) -> usize {
        self.actors.lock().expect("actor map lock poisoned").len()
    }

    /// Stops the actor threads (after the HTTP server has drained).
    pub(crate) fn shutdown(&self) {
        for arbiter in self.arbiters.iter() {
            arbiter.stop();
        }
    }
}
