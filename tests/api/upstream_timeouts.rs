//! The idle and total upstream timeouts over HTTP (`Limits`): an upstream that
//! starts answering and then stalls is cut off after the timeout, the client is
//! told `upstream_timeout` (a 504, or the stream's last event once it started),
//! and the request's hold is released with nothing charged.

use crate::helpers::*;
use crate::on_both_stores;
use crate::scripted_upstream::{add_scripted_provider, price, ScriptedUpstream, STALL};
use domain::tenant::TenantEvent;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TIMEOUT_MS: u64 = 500;
/// Far longer than the timeout under test, far shorter than the stall.
const FIRST_BYTE_TIMEOUT_MS: u64 = 20_000;

async fn app_with_stalling_upstream(
    kind: StoreKind,
    edit: impl FnOnce(&mut aigne_hub::config::Limits),
) -> (TestApp, ScriptedUpstream, String, String) {
    let app = spawn_app_with(kind, |s| {
        s.limits.upstream_first_byte_timeout_ms = FIRST_BYTE_TIMEOUT_MS;
        s.limits.upstream_idle_timeout_ms = FIRST_BYTE_TIMEOUT_MS;
        s.limits.upstream_total_timeout_ms = FIRST_BYTE_TIMEOUT_MS;
        // One attempt: a timeout is otherwise retried.
        s.limits.retries_per_candidate = 0;
        edit(&mut s.limits);
    })
    .await;
    assert!(Duration::from_millis(FIRST_BYTE_TIMEOUT_MS) < STALL);
    let upstream = ScriptedUpstream::start();
    add_scripted_provider(&app, &upstream).await;
    for model in ["stall-body", "stall-stream"] {
        let response = price(
            &app,
            model,
            json!({"input_per_mtok": "1", "output_per_mtok": "2"}),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    (app, upstream, tenant, key)
}

/// The request's hold was released and nothing was charged.
async fn assert_released_uncharged(app: &TestApp, tenant: &str) {
    let balance = app.balance(tenant).await;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(balance["spent"], "0", "{balance}");
    let events = tenant_events(app, tenant).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.event, TenantEvent::HoldReleased { .. }))
            .count(),
        1
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, TenantEvent::UsageSettled { .. })),
        "nothing settled"
    );
}

fn assert_cut_at_the_timeout(waited: Duration) {
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS),
        "cut before the timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(FIRST_BYTE_TIMEOUT_MS),
        "not cut by the timeout under test: {waited:?}"
    );
}

async fn a_body_slower_than_the_total_timeout_is_cut_off_with_504(kind: StoreKind) {
    let (app, upstream, tenant, key) =
        app_with_stalling_upstream(kind, |l| l.upstream_total_timeout_ms = TIMEOUT_MS).await;
    let started = Instant::now();
    let response = app
        .chat(
            &key,
            &json!({"model": "scripted/stall-body", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_cut_at_the_timeout(started.elapsed());
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    assert_eq!(upstream.calls(), 1);
    assert_released_uncharged(&app, &tenant).await;
    let attempts = tenant_events(&app, &tenant)
        .await
        .into_iter()
        .filter(|e| matches!(e.event, TenantEvent::UpstreamAttempted { .. }))
        .count();
    assert_eq!(attempts, 1, "the timed-out attempt is recorded");
}
on_both_stores!(
    a_body_slower_than_the_total_timeout_is_cut_off_with_504,
    a_body_slower_than_the_total_timeout_is_cut_off_with_504
);

async fn a_stream_silent_past_the_idle_timeout_is_cut_off(kind: StoreKind) {
    let (app, upstream, tenant, key) =
        app_with_stalling_upstream(kind, |l| l.upstream_idle_timeout_ms = TIMEOUT_MS).await;
    let started = Instant::now();
    let response = app
        .chat(
            &key,
            &json!({"model": "scripted/stall-stream", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    // The stream had started (one chunk, no text yet): the failure is its last
    // event, no `[DONE]` follows, and nothing was generated to charge.
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert_cut_at_the_timeout(started.elapsed());
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or_else(|_| json!(data)))
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["object"], "chat.completion.chunk", "{text}");
    assert_eq!(events[1]["error"]["code"], "upstream_timeout", "{text}");
    assert_eq!(upstream.calls(), 1);
    assert_released_uncharged(&app, &tenant).await;
}
on_both_stores!(
    a_stream_silent_past_the_idle_timeout_is_cut_off,
    a_stream_silent_past_the_idle_timeout_is_cut_off
);
