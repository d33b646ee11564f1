//! The actor's documented bounds and lifecycle: its queue bound, the call
//! timeout, group commit, and idle stop followed by a reload past a snapshot.
//!
//! A test holds the actor "busy" (as if a commit were in flight) by looking
//! inside it between two messages, so that calls queue up deterministically.

use super::*;
use crate::actors::TenantRegistry;
use crate::config::Limits;
use domain::Credits;
use std::collections::BTreeSet;

type Look<R> = Box<dyn FnOnce(&mut TenantActor, &mut Context<TenantActor>) -> R + Send>;

/// Runs a closure inside the actor, between two of its messages.
struct Inspect<R>(Look<R>);

impl<R: Send + 'static> Message for Inspect<R> {
    type Result = R;
}

impl<R: Send + 'static> Handler<Inspect<R>> for TenantActor {
    type Result = MessageResult<Inspect<R>>;

    fn handle(&mut self, Inspect(look): Inspect<R>, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(look(self, ctx))
    }
}

async fn inside<R: Send + 'static>(
    addr: &Addr<TenantActor>,
    look: impl FnOnce(&mut TenantActor, &mut Context<TenantActor>) -> R + Send + 'static,
) -> R {
    addr.send(Inspect(Box::new(look)))
        .await
        .expect("the actor is running")
}

/// Holds the actor as if a commit were in flight: nothing queued is decided.
async fn hold_busy(addr: &Addr<TenantActor>) {
    inside(addr, |actor, _| {
        assert!(!actor.busy, "nothing was in flight");
        actor.busy = true;
    })
    .await;
}

/// Lets a held actor go on; answers whether a commit is in flight right after
/// and how many operations still wait.
async fn let_go(addr: &Addr<TenantActor>) -> (bool, usize) {
    inside(addr, |actor, ctx| {
        actor.busy = false;
        actor.pump(ctx);
        (actor.busy, actor.pending.len())
    })
    .await
}

/// Waits until `count` operations wait in the actor's queue.
async fn until_pending(addr: &Addr<TenantActor>, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = inside(addr, |actor, _| actor.pending.len()).await;
        if pending == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} operations queued, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Fixture {
    registry: TenantRegistry,
    store: Arc<dyn EventLog>,
    tenant_id: TenantId,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.registry.shutdown();
    }
}

impl Fixture {
    /// A registry on a fresh SQLite store with `edit`ed limits, and one tenant.
    async fn new(edit: impl FnOnce(&mut Limits)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(None, dir.path()).await.unwrap();
        let mut limits = Limits::default();
        edit(&mut limits);
        let registry = TenantRegistry::new(
            store.clone(),
            InstanceId::new_random(),
            limits,
            1,
            Arc::new(Notify::new()),
        );
        let tenant_id = TenantId::new_random();
        let create = TenantCommand::CreateTenant {
            tenant_id,
            name: "t".into(),
            initial_credits: Credits::ZERO,
            at: Utc::now(),
        };
        registry.call(tenant_id, execute(create)).await.unwrap();
        Self {
            registry,
            store,
            tenant_id,
            _dir: dir,
        }
    }

    fn actor(&self) -> Addr<TenantActor> {
        self.registry
            .running_actor(self.tenant_id)
            .expect("the tenant's actor is running")
    }

    async fn head(&self) -> usize {
        self.store.tenant_head(self.tenant_id).await.unwrap()
    }

    /// Sends `ops` to the actor, each from its own task (so each reaches the
    /// mailbox even while it is full), and returns their answers' handles.
    fn send_all(
        &self,
        ops: impl IntoIterator<Item = TenantOp>,
    ) -> Vec<tokio::task::JoinHandle<Result<TenantReply, ActorError>>> {
        ops.into_iter()
            .map(|op| {
                let registry = self.registry.clone();
                let tenant_id = self.tenant_id;
                actix_web::rt::spawn(async move { registry.call(tenant_id, op).await })
            })
            .collect()
    }
}

fn execute(command: TenantCommand) -> TenantOp {
    TenantOp::Execute {
        auth: None,
        command,
        request_id: None,
        actor: domain::ChangedBy::OperatorApi,
    }
}

/// A grant of one pico-credit under idempotency key `g{n}`: one event.
fn grant(n: usize) -> TenantOp {
    execute(TenantCommand::GrantCredits {
        amount: Credits::from_pico(1),
        idempotency_key: format!("g{n}"),
        reason: "test".into(),
        expires_at: None,
        at: Utc::now(),
    })
}

async fn answers(
    handles: Vec<tokio::task::JoinHandle<Result<TenantReply, ActorError>>>,
) -> Vec<TenantReply> {
    let mut replies = Vec::new();
    for handle in handles {
        replies.push(handle.await.unwrap().expect("the operation is answered"));
    }
    replies
}

#[actix_web::test]
async fn a_full_queue_answers_busy_at_once_and_the_queued_operations_still_commit() {
    const CAPACITY: usize = 4;
    let fixture = Fixture::new(|l| {
        l.tenant_mailbox_capacity = CAPACITY;
        // Long enough that only the bound, not the timeout, can refuse.
        l.tenant_call_timeout_ms = 60_000;
    })
    .await;
    let addr = fixture.actor();
    let head_before = fixture.head().await;
    hold_busy(&addr).await;
    let queued = fixture.send_all((0..CAPACITY).map(grant));
    until_pending(&addr, CAPACITY).await;

    let started = Instant::now();
    let refused = fixture
        .registry
        .call(fixture.tenant_id, grant(CAPACITY))
        .await;
    match refused {
        Err(e @ ActorError::Busy) => assert_eq!(e.to_string(), TENANT_BUSY),
        other => panic!("a full queue must answer busy, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting: {:?}",
        started.elapsed()
    );
    assert_eq!(
        inside(&addr, |actor, _| actor.pending.len()).await,
        CAPACITY,
        "the refused operation was not queued"
    );

    let_go(&addr).await;
    let replies = answers(queued).await;
    assert_eq!(replies.len(), CAPACITY);
    assert_eq!(fixture.head().await, head_before + CAPACITY);
    let refused_key = format!("g{CAPACITY}");
    let granted = inside(&addr, move |actor, _| {
        actor.state.grants.contains_key(&refused_key)
    })
    .await;
    assert!(!granted, "the refused grant was never decided");
}

#[actix_web::test]
async fn a_call_waits_at_most_the_call_timeout() {
    const TIMEOUT_MS: u64 = 300;
    let fixture = Fixture::new(|l| l.tenant_call_timeout_ms = TIMEOUT_MS).await;
    let addr = fixture.actor();
    hold_busy(&addr).await;

    let started = Instant::now();
    let answer = fixture
        .registry
        .call(fixture.tenant_id, TenantOp::Read { auth: None })
        .await;
    let waited = started.elapsed();
    match answer {
        Err(e @ ActorError::Busy) => assert_eq!(e.to_string(), TENANT_BUSY),
        other => panic!("a call past its timeout must answer busy, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS),
        "answered before the timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited far past the timeout: {waited:?}"
    );

    // Once the actor moves again, calls are answered.
    let_go(&addr).await;
    fixture
        .registry
        .call(fixture.tenant_id, TenantOp::Read { auth: None })
        .await
        .expect("answered once the actor moves");
}

#[actix_web::test]
async fn commands_queued_during_a_commit_are_committed_together_in_order() {
    const QUEUED: usize = 10;
    let fixture = Fixture::new(|_| {}).await;
    let addr = fixture.actor();
    let head_before = fixture.head().await;
    hold_busy(&addr).await;
    let queued = fixture.send_all((0..QUEUED).map(grant));
    until_pending(&addr, QUEUED).await;

    let (committing, still_waiting) = let_go(&addr).await;
    assert!(committing, "a commit started");
    assert_eq!(still_waiting, 0, "one commit took every queued command");

    let replies = answers(queued).await;
    assert_eq!(fixture.head().await, head_before + QUEUED);
    // Each was decided against the state the ones before it left: the balances
    // answered are 1, 2, …, QUEUED pico-credits, one each.
    let available: BTreeSet<i128> = replies.iter().map(|r| r.balance.available.pico()).collect();
    let expected: BTreeSet<i128> = (1..=QUEUED as i128).collect();
    assert_eq!(available, expected);
}

#[actix_web::test]
async fn an_idle_actor_stops_and_reloads_the_same_state_past_a_snapshot() {
    // Long enough that the actor is still running when the test looks inside it
    // on a loaded machine; short enough to wait for.
    let fixture = Fixture::new(|l| l.tenant_idle_stop_ms = 1_000).await;
    let past_the_threshold = SNAPSHOT_EVERY_EVENTS + 50;
    answers(fixture.send_all((0..past_the_threshold).map(grant))).await;
    // Grants after the commit that crossed the threshold, so that events after
    // the snapshot exist however the first ones were grouped.
    let grants = past_the_threshold + 10;
    for n in past_the_threshold..grants {
        fixture
            .registry
            .call(fixture.tenant_id, grant(n))
            .await
            .unwrap();
    }

    // Looked at first, while the actor surely runs: it stops once idle.
    let look = |actor: &mut TenantActor, _: &mut Context<TenantActor>| {
        (
            actor.state.clone(),
            actor.version,
            actor.chain_head.clone(),
            actor.generation,
        )
    };
    let (state, version, chain_head, generation) = inside(&fixture.actor(), look).await;
    assert_eq!(
        state.balance().available.pico(),
        grants as i128,
        "every grant counted before the stop"
    );

    // The snapshot is saved after the commit that passed the threshold.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = fixture.store.load_tenant(fixture.tenant_id).await.unwrap();
        if loaded.events_since_snapshot < loaded.version {
            assert!(
                loaded.events_since_snapshot > 0,
                "events after the snapshot are read on reload too"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot was saved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while fixture.registry.live_actor_count() > 0 {
        assert!(Instant::now() < deadline, "the idle actor did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fixture
        .registry
        .call(fixture.tenant_id, TenantOp::Read { auth: None })
        .await
        .unwrap();
    let reloaded = inside(&fixture.actor(), look).await;
    assert_ne!(reloaded.3, generation, "a new actor was started");
    assert_eq!(
        (reloaded.0, reloaded.1, reloaded.2),
        (state, version, chain_head)
    );
}
