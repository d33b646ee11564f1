//! Holds are committed without waiting for the disk (`Durability::HoldsOnly`):
//! only a database crash can lose one, and everything committed after it with
//! it. These tests make that loss by hand and check that the log stays a
//! gap-free, intact chain: the store refuses an append whose predecessor is
//! missing, the tenant's actor reloads, and the request whose hold vanished
//! fails without a charge.

use crate::audit::tamper;
use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::on_both_stores;
use aigne_hub::audit::verify_store;
use aigne_hub::store::{Durability, StoreError};
use domain::TenantId;

async fn append_needs_the_event_before_it(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let store = app.store();
    for durability in [Durability::Durable, Durability::HoldsOnly] {
        let tenant = TenantId::new_random();
        let meta = plain_metadata(tenant);
        let events = |from: usize, n: usize| -> Vec<_> {
            (from..from + n)
                .map(|i| (pico_grant(i), meta.clone()))
                .collect()
        };
        store
            .append(
                tenant,
                1,
                &[(tenant_created(tenant), meta.clone())],
                durability,
            )
            .await
            .unwrap();
        store
            .append(tenant, 2, &events(2, 2), durability)
            .await
            .unwrap();
        // Sequence 4 is missing: 5 and 6 must not land.
        let gap = store.append(tenant, 5, &events(5, 2), durability).await;
        assert!(matches!(gap, Err(StoreError::Conflict)), "{gap:?}");
        // A taken sequence is refused as before.
        let taken = store.append(tenant, 3, &events(3, 1), durability).await;
        assert!(matches!(taken, Err(StoreError::Conflict)), "{taken:?}");
        store
            .append(tenant, 4, &events(4, 3), durability)
            .await
            .unwrap();
        let stored = store.tenant_events(tenant, 0).await.unwrap();
        let sequences: Vec<usize> = stored.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=6).collect::<Vec<_>>(), "{durability:?}");
    }
}
on_both_stores!(
    append_needs_the_event_before_it,
    append_needs_the_event_before_it
);

/// The tenant's last stored event, as `(sequence, event_type)`.
async fn last_event(app: &TestApp, tenant: TenantId) -> (usize, String) {
    let events = app
        .store()
        .raw_tenant_events(tenant, 0, 10_000)
        .await
        .unwrap();
    let last = events.last().expect("the tenant has events");
    (last.sequence, last.event_type.clone())
}

async fn a_lost_hold_fails_its_request_without_a_gap(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK, ("slow-1s", "1", "2", Some(1000))])
        .await;
    let tenant = app.create_tenant("1").await;
    let tenant_id: TenantId = tenant.parse().unwrap();
    let key = app.issue_key(&tenant, "member").await;
    let before = app.balance(&tenant).await;
    let (head_before, _) = last_event(&app, tenant_id).await;

    // A request whose upstream takes a second: its hold is committed at once.
    let in_flight = {
        let (client, address, key) = (app.client.clone(), app.address.clone(), key.clone());
        tokio::spawn(async move {
            client
                .post(format!("{address}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat_body("slow-1s", false))
                .send()
                .await
                .unwrap()
        })
    };
    let (sequence, event_type) = wait_for(WAIT_DEADLINE, "the hold reaches the store", || async {
        let (sequence, event_type) = last_event(&app, tenant_id).await;
        (sequence > head_before).then_some((sequence, event_type))
    })
    .await;
    assert_eq!(sequence, head_before + 1);
    assert_eq!(event_type, "CreditsReserved");
    // The database "crashes" before the hold reached its disk: the hold is gone,
    // while the hub still has it in memory.
    tamper(
        &app,
        "DELETE FROM events WHERE aggregate_type = 'Tenant' AND aggregate_id = $1
            AND sequence = (SELECT MAX(sequence) FROM events WHERE aggregate_type = 'Tenant' AND aggregate_id = $1)",
        tenant_id,
    )
    .await;

    let response = in_flight.await.unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    // Nothing was charged, nothing is held, and the stream has no gap.
    let after = app.balance(&tenant).await;
    assert_eq!(after, before);
    let events = app
        .store()
        .raw_tenant_events(tenant_id, 0, 10_000)
        .await
        .unwrap();
    let sequences: Vec<usize> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len()).collect::<Vec<_>>());
    assert!(!events.iter().any(|e| e.event_type == "UsageSettled"));
    let reports = verify_store(app.store().as_ref(), Some(tenant_id))
        .await
        .unwrap();
    assert_eq!(reports[0].first_break, None);

    // The tenant goes on as before: the next call is held, settled and chained.
    let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let after = app.balance(&tenant).await;
    assert_eq!(after["held"], "0");
    assert_ne!(after["spent"], before["spent"]);
    let reports = verify_store(app.store().as_ref(), Some(tenant_id))
        .await
        .unwrap();
    assert_eq!(reports[0].first_break, None);
    assert!(reports[0].events > head_before, "{:?}", reports[0]);
}
on_both_stores!(
    a_lost_hold_fails_its_request_without_a_gap,
    a_lost_hold_fails_its_request_without_a_gap
);
