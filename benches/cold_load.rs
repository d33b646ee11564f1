//! Cold-loading a tenant with a long history: how long the first request after a
//! restart (or after the actor went idle) waits for the tenant's state.
//!
//! Writes N events (default 1,000,000: create, a key, a grant, then reserve/settle
//! pairs) for one tenant straight into a fresh store, then times
//! `Store::load_tenant` twice: from the events alone, and from a snapshot taken
//! the way the tenant actor takes them (every `SNAPSHOT_EVERY_EVENTS`), i.e. with
//! up to that many events after it.
//!
//! Run: `cargo bench --bench cold_load` (PostgreSQL at AIGNE_HUB_TEST_PG_URL or
//! postgres://postgres@127.0.0.1:5432/postgres, and SQLite in a temp dir).
//! `COLD_LOAD_EVENTS=100000` for a quicker run.

use aigne_hub::store::{self, Durability, EventMetadata, Store, SNAPSHOT_EVERY_EVENTS};
use chrono::Utc;
use cqrs_es::DomainEvent;
use domain::tenant::{Attempt, KeyHash, TenantCommand, TenantEvent};
use domain::{
    Capability, Credits, Ingress, InstanceId, KeyId, ModelId, ModelPrice, Rate, Rates, RequestId,
    Role, TenantId, Usage,
};
use std::time::Instant;

/// Rows per INSERT statement while seeding.
const SEED_BATCH_EVENTS: usize = 5_000;

fn history(tenant_id: TenantId, count: usize) -> Vec<TenantEvent> {
    let mut state = domain::tenant::Tenant::default();
    let mut events = Vec::with_capacity(count);
    let mut run = |command: TenantCommand, events: &mut Vec<TenantEvent>| {
        for e in state.decide(command).expect("seed commands are valid") {
            state.apply_event(e.clone());
            events.push(e);
        }
    };
    let at = Utc::now();
    let key_id = KeyId::new_random();
    run(
        TenantCommand::CreateTenant {
            tenant_id,
            name: "big".into(),
            initial_credits: Credits::from_whole_credits(1_000_000),
            at,
        },
        &mut events,
    );
    run(
        TenantCommand::IssueApiKey {
            key_id,
            name: "k".into(),
            role: Role::Member,
            key_hash: KeyHash::of_secret("s"),
            scopes: Default::default(),
            project: None,
            at,
        },
        &mut events,
    );
    let price = ModelPrice {
        rates: Rates::flat(
            Rate::from_pico_per_token(1_000_000),
            Rate::from_pico_per_token(2_000_000),
        ),
        max_output_tokens: 100,
    };
    let model = ModelId::parse("openai/gpt-4o-mini").unwrap();
    let instance_id = InstanceId::new_random();
    while events.len() < count {
        let request_id = RequestId::new_random();
        run(
            TenantCommand::ReserveCredits {
                request_id,
                key_id,
                model: model.clone(),
                capability: Capability::Chat,
                ingress: Ingress::Openai,
                app: None,
                end_user: None,
                price,
                price_version: 1,
                prompt_bytes: 100,
                max_tokens: None,
                images: 0,
                instance_id,
                expires_at: at,
                enforce_credit: true,
                at,
            },
            &mut events,
        );
        let usage = Usage {
            input_tokens: 20,
            output_tokens: 30,
            ..Usage::default()
        };
        run(
            TenantCommand::SettleUsage {
                request_id,
                attempt: Attempt {
                    number: 1,
                    provider: "openai".into(),
                    credential_id: "c1".into(),
                    model: model.clone(),
                    price_version: 1,
                    rates: price.rates,
                    terms: domain::ChargeTerms::sold_directly(price.rates),
                },
                usage,
                upstream_latency_ms: 5,
                at,
            },
            &mut events,
        );
    }
    events.truncate(count);
    events
}

async fn seed(store: &dyn Store, tenant_id: TenantId, events: &[TenantEvent]) {
    let meta = EventMetadata {
        recorded_at: Utc::now(),
        tenant_id,
        request_id: None,
        instance_id: InstanceId::new_random(),
        actor: None,
        prev_hash: None,
        hash: None,
    };
    let mut next = 1;
    for chunk in events.chunks(SEED_BATCH_EVENTS) {
        let batch: Vec<_> = chunk.iter().map(|e| (e.clone(), meta.clone())).collect();
        store
            .append(tenant_id, next, &batch, Durability::Durable)
            .await
            .unwrap();
        next += batch.len();
    }
}

async fn measure(label: &str, store: &dyn Store, count: usize) {
    let tenant_id = TenantId::new_random();
    let events = history(tenant_id, count);
    assert!(events.iter().all(|e| !e.event_type().is_empty()));
    let t = Instant::now();
    seed(store, tenant_id, &events).await;
    println!(
        "{label}: seeded {count} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let full = store.load_tenant(tenant_id).await.unwrap();
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(full.version, count);

    // The actor snapshots every SNAPSHOT_EVERY_EVENTS events: worst case, that
    // many minus one remain after the snapshot.
    let behind = SNAPSHOT_EVERY_EVENTS - 1;
    let mut state = domain::tenant::Tenant::default();
    for e in &events[..count - behind] {
        state.apply_event(e.clone());
    }
    store
        .save_snapshot(tenant_id, count - behind, &state)
        .await
        .unwrap();
    let t = Instant::now();
    let from_snapshot = store.load_tenant(tenant_id).await.unwrap();
    let snap_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(from_snapshot.version, count);
    assert_eq!(
        from_snapshot.state, full.state,
        "snapshot + tail equals the full fold"
    );
    println!(
        "{label}: cold load of a {count}-event tenant: {full_ms:.0} ms from events alone, {snap_ms:.1} ms from a snapshot + {behind} events (ratio {:.0}x)",
        full_ms / snap_ms
    );
}

fn main() {
    let count: usize = std::env::var("COLD_LOAD_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let admin = std::env::var("AIGNE_HUB_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable");
        let name = format!("aigne_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        {
            let pg = store::open(Some(&url), std::path::Path::new("."))
                .await
                .unwrap();
            measure("postgres", pg.as_ref(), count).await;
        }
        let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = store::open(None, dir.path()).await.unwrap();
        measure("sqlite", sqlite.as_ref(), count).await;
    });
}
