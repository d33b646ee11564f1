//! A hold not settled within its time to live is released by the sweep; the
//! request's late settlement then finds no hold, is answered 503 and charges
//! nothing (docs/api.md, the 503 answers). The test moves the hub's clock past
//! the time to live and runs one sweep pass itself instead of waiting.

use crate::helpers::*;
use crate::on_both_stores;
use crate::scripted_upstream::{add_scripted_provider, price, ScriptedUpstream};
use chrono::TimeDelta;
use domain::tenant::TenantEvent;
use serde_json::{json, Value};

async fn a_settlement_after_the_holds_time_to_live_is_refused_and_charges_nothing(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        // Only the passes this test runs may find the hold past its time.
        s.limits.hold_expiry_sweep_interval_ms = 3_600_000;
        s.limits.upstream_first_byte_timeout_ms = 60_000;
        s.limits.upstream_total_timeout_ms = 60_000;
    })
    .await;
    let upstream = ScriptedUpstream::start();
    add_scripted_provider(&app, &upstream).await;
    let priced = price(
        &app,
        "gated",
        json!({"input_per_mtok": "1", "output_per_mtok": "2"}),
    )
    .await;
    assert_eq!(priced.status(), 200);
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let before = app.balance(&tenant).await;

    let request = {
        let client = app.client.clone();
        let url = format!("{}/v1/chat/completions", app.address);
        let body =
            json!({"model": "scripted/gated", "messages": [{"role": "user", "content": "hi"}]});
        actix_web::rt::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    // The upstream was called: the hold is committed.
    upstream.until_calls(1).await;
    app.projections_caught_up().await;
    let held = app.balance(&tenant).await;
    assert_ne!(held["held"], "0", "the request holds credit: {held}");

    let live = vec![app.hub.instance_id()];
    assert_eq!(
        app.hub.release_abandoned_holds(live.clone()).await.unwrap(),
        0,
        "within its time to live the hold stays"
    );
    let ttl = TimeDelta::milliseconds(app.settings.limits.hold_ttl_ms as i64);
    app.hub.clock().advance(ttl + TimeDelta::seconds(1));
    assert_eq!(
        app.hub.release_abandoned_holds(live).await.unwrap(),
        1,
        "past its time to live the hold is released"
    );

    upstream.open_gate();
    let response = request.await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no longer open") && message.contains("not charged"),
        "{body}"
    );

    let after = app.balance(&tenant).await;
    for field in ["available", "spent", "held"] {
        assert_eq!(after[field], before[field], "{field}: {before} -> {after}");
    }
    let events = tenant_events(&app, &tenant).await;
    let released: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::HoldReleased { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 1, "{released:?}");
    assert!(released[0].starts_with("expired"), "{released:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, TenantEvent::UsageSettled { .. })),
        "nothing settled"
    );
}
on_both_stores!(
    a_settlement_after_the_holds_time_to_live_is_refused_and_charges_nothing,
    a_settlement_after_the_holds_time_to_live_is_refused_and_charges_nothing
);
