//! The durability contract: a response the client fully received is billed, even
//! if the hub is killed with SIGKILL right after; requests in flight at the crash
//! become holds that are released (with a reason) after restart, never charged.

use crate::helpers::{database_url_for, poll_for, wait_for, StoreKind};
use crate::mock_openai::MockUpstream;
use crate::process::HubEnv;
use domain::tenant::TenantEvent;
use domain::{Credits, RequestId};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Client loops sending requests while the hub is killed.
const CLIENTS: usize = 12;

async fn client_loop(
    address: String,
    key: String,
    stream: bool,
    received: Arc<Mutex<Vec<String>>>,
) {
    let client = reqwest::Client::new();
    let model = if stream { "mock/gpt-mock" } else { "mock/slow" };
    let body =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    loop {
        let Ok(response) = client
            .post(format!("{address}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
        else {
            return;
        };
        if response.status() != 200 {
            return;
        }
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let Ok(text) = response.text().await else {
            return;
        };
        // Fully received: the whole JSON, or a stream through its final [DONE].
        let complete = if stream {
            text.ends_with("data: [DONE]\n\n")
        } else {
            serde_json::from_str::<Value>(&text).is_ok()
        };
        if !complete {
            return;
        }
        received.lock().unwrap().push(request_id);
    }
}

async fn sigkill_during_load_loses_no_billing(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::new(temp.path(), database_url_for(kind).await);
    let mock = MockUpstream::start();
    let mut hub = env.start().await;
    let (tenant, key) = hub
        .setup(&env, &mock.base_url, &["gpt-mock", "slow"], "100")
        .await;

    let received = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..CLIENTS)
        .map(|i| {
            actix_web::rt::spawn(client_loop(
                hub.address.clone(),
                key.clone(),
                i % 3 == 0,
                received.clone(),
            ))
        })
        .collect();
    // Let the load run until enough requests completed (bounded: a slow machine
    // must not hang the test), then kill the hub while others are in flight.
    poll_for(Duration::from_secs(20), || async {
        (received.lock().unwrap().len() >= 30).then_some(())
    })
    .await;
    hub.kill_hard();
    for l in loops {
        l.await.unwrap();
    }
    let received: Vec<String> = received.lock().unwrap().clone();
    assert!(
        received.len() > 20,
        "the load ran: {} responses",
        received.len()
    );

    let hub = env.start().await;
    // The dead process's holds are released once it is seen to be gone.
    let balance = wait_for(Duration::from_secs(30), "no hold stays open", || async {
        let balance = hub.balance(&env, &tenant).await;
        (balance["held"] == "0").then_some(balance)
    })
    .await;
    assert_eq!(balance["held"], "0", "no hold stays open: {balance}");

    let store = aigne_hub::store::open(env.database_url.as_deref(), &env.data_dir)
        .await
        .unwrap();
    let events = store
        .tenant_events(tenant.parse().unwrap(), 0)
        .await
        .unwrap();
    let mut settled: HashMap<RequestId, usize> = HashMap::new();
    let mut released: HashMap<RequestId, String> = HashMap::new();
    let mut reserved: HashSet<RequestId> = HashSet::new();
    let mut spent = Credits::ZERO;
    for e in &events {
        match &e.event {
            TenantEvent::CreditsReserved { request_id, .. } => {
                assert!(reserved.insert(*request_id))
            }
            TenantEvent::UsageSettled {
                request_id,
                cost_pico,
                ..
            } => {
                *settled.entry(*request_id).or_default() += 1;
                spent = spent + *cost_pico;
            }
            TenantEvent::HoldReleased {
                request_id, reason, ..
            } => assert!(released.insert(*request_id, reason.clone()).is_none()),
            _ => {}
        }
    }
    for request_id in &received {
        let id: RequestId = request_id.parse().unwrap();
        assert_eq!(
            settled.get(&id),
            Some(&1),
            "request {request_id} returned 200 and must be settled exactly once"
        );
    }
    for id in &reserved {
        let outcomes =
            settled.get(id).copied().unwrap_or(0) + usize::from(released.contains_key(id));
        assert_eq!(
            outcomes, 1,
            "hold {id} must end exactly once (settled or released)"
        );
    }
    let abandoned = released
        .values()
        .filter(|r| r.starts_with("abandoned"))
        .count();
    assert!(
        abandoned >= 1,
        "requests in flight at the kill are released as abandoned: {released:?}"
    );
    assert_eq!(balance["spent"], spent.to_decimal_string());
    assert_eq!(balance["granted"], "100");

    // An auditor's replay of the log agrees with the live projection.
    let output = env.command().arg("replay").output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("replay output: {output:?}"));
    assert!(output.status.success(), "{report}");
    assert_eq!(report["all_identical"], true);
    drop(hub);
}
crate::on_both_stores!(
    sigkill_during_load_loses_no_billing,
    sigkill_during_load_loses_no_billing
);

/// Live hub processes in the store.
async fn live_instances(kind: StoreKind, env: &HubEnv) -> i64 {
    use sqlx::Connection;
    let sql = "SELECT COUNT(*) FROM hub_instances";
    match kind {
        StoreKind::Postgres => {
            let url = env.database_url.as_deref().unwrap();
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
        StoreKind::Sqlite => {
            let path = env.data_dir.join("aigne-hub.sqlite");
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
    }
}

/// A hub stopped with SIGTERM after serving requests on every HTTP worker
/// withdraws from the live set, so no other process mistakes its (released)
/// holds for a crashed one's.
async fn a_stopped_hub_withdraws_from_the_live_set(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = database_url_for(kind).await;
    let env = HubEnv::new(temp.path(), database_url);
    let mock = MockUpstream::start();
    let mut hub = env.start().await;
    let (_tenant, key) = hub.setup(&env, &mock.base_url, &["gpt-mock"], "100").await;
    // Concurrent requests, so that connections get opened on several workers.
    let client = reqwest::Client::new();
    let calls = (0..16).map(|_| {
        client
            .post(format!("{}/v1/chat/completions", hub.address))
            .bearer_auth(&key)
            .json(
                &json!({"model": "mock/gpt-mock", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
    });
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    // Operator reads go to the store from the HTTP workers themselves, so the
    // pool opens connections there, on runtimes that end before the process.
    let reads = (0..32).map(|_| {
        client
            .get(format!("{}/admin/v1/providers", hub.address))
            .bearer_auth(&env.operator_token)
            .send()
    });
    for response in futures_util::future::join_all(reads).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(live_instances(kind, &env).await, 1);
    hub.terminate();
    assert_eq!(live_instances(kind, &env).await, 0);
    let log = std::fs::read_to_string(&env.log_path).unwrap();
    assert!(!log.contains("could not withdraw"), "{log}");
}
crate::on_both_stores!(
    a_stopped_hub_withdraws_from_the_live_set,
    a_stopped_hub_withdraws_from_the_live_set
);
