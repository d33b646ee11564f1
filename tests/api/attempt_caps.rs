//! The caps on what one request may try (docs/api.md, routing): at most four
//! fallbacks per model and at most `ATTEMPTS_PER_REQUEST_MAX` (8) upstream
//! attempts per request over all candidates, counted at the upstream. And at
//! most 10 images per call, refused before the upstream is called.

use crate::helpers::*;
use crate::on_both_stores;
use crate::scripted_upstream::{add_scripted_provider, price, ScriptedUpstream};
use domain::tenant::TenantEvent;
use serde_json::{json, Value};

/// The documented caps, written out rather than read from the code under test.
const FALLBACKS_MAX: usize = 4;
const ATTEMPTS_MAX: usize = 8;
const IMAGES_MAX: u64 = 10;

/// Prices `fail-0` … `fail-{FALLBACKS_MAX}`, all failing, `fail-0` with the
/// others as its fallbacks, in order.
async fn failing_chain(app: &TestApp, upstream: &ScriptedUpstream) -> Vec<String> {
    add_scripted_provider(app, upstream).await;
    let models: Vec<String> = (0..=FALLBACKS_MAX).map(|i| format!("fail-{i}")).collect();
    for model in models.iter().skip(1) {
        let response = price(
            app,
            model,
            json!({"input_per_mtok": "1", "output_per_mtok": "2"}),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let fallbacks: Vec<String> = models
        .iter()
        .skip(1)
        .map(|m| format!("scripted/{m}"))
        .collect();
    let response = price(
        app,
        &models[0],
        json!({"input_per_mtok": "1", "output_per_mtok": "2", "fallbacks": fallbacks}),
    )
    .await;
    assert_eq!(response.status(), 200);
    models
}

fn failing_request() -> Value {
    json!({"model": "scripted/fail-0", "messages": [{"role": "user", "content": "hi"}]})
}

fn attempts_recorded(events: &[aigne_hub::store::StoredEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.event, TenantEvent::UpstreamAttempted { .. }))
        .count()
}

async fn a_request_tries_its_model_and_each_of_four_fallbacks_once(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| s.limits.retries_per_candidate = 0).await;
    let upstream = ScriptedUpstream::start();
    let models = failing_chain(&app, &upstream).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = app.chat(&key, &failing_request()).await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        upstream.models_called(),
        models,
        "each candidate once, in order"
    );
    assert_eq!(
        attempts_recorded(&tenant_events(&app, &tenant).await),
        models.len()
    );
    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(
    a_request_tries_its_model_and_each_of_four_fallbacks_once,
    a_request_tries_its_model_and_each_of_four_fallbacks_once
);

async fn a_request_makes_at_most_eight_attempts_over_all_candidates(kind: StoreKind) {
    // One retry per candidate: five candidates would make ten attempts uncapped.
    let app = spawn_app_with(kind, |s| s.limits.retries_per_candidate = 1).await;
    let upstream = ScriptedUpstream::start();
    let models = failing_chain(&app, &upstream).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = app.chat(&key, &failing_request()).await;
    assert_eq!(response.status(), 502);
    let expected: Vec<String> = models
        .iter()
        .flat_map(|m| [m.clone(), m.clone()])
        .take(ATTEMPTS_MAX)
        .collect();
    assert!(
        models.len() * 2 > ATTEMPTS_MAX,
        "the cap is what stops them"
    );
    assert_eq!(upstream.models_called(), expected);
    assert_eq!(
        attempts_recorded(&tenant_events(&app, &tenant).await),
        ATTEMPTS_MAX
    );
    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(
    a_request_makes_at_most_eight_attempts_over_all_candidates,
    a_request_makes_at_most_eight_attempts_over_all_candidates
);

async fn a_fifth_fallback_is_refused(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let upstream = ScriptedUpstream::start();
    failing_chain(&app, &upstream).await;
    let fallbacks: Vec<String> = (1..=FALLBACKS_MAX + 1)
        .map(|i| format!("scripted/fail-{i}"))
        .collect();
    let response = price(
        &app,
        "fail-0",
        json!({"input_per_mtok": "1", "output_per_mtok": "2", "fallbacks": fallbacks}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("at most {FALLBACKS_MAX} fallbacks")),
        "{body}"
    );
}
on_both_stores!(a_fifth_fallback_is_refused, a_fifth_fallback_is_refused);

async fn images(app: &TestApp, key: &str, n: u64) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/images/generations", app.address))
        .bearer_auth(key)
        .json(&json!({"model": "scripted/painter", "prompt": "a cat", "n": n}))
        .send()
        .await
        .unwrap()
}

async fn more_than_ten_images_are_refused_before_the_upstream_is_called(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let upstream = ScriptedUpstream::start();
    add_scripted_provider(&app, &upstream).await;
    let response = price(
        &app,
        "painter",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.01"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = images(&app, &key, IMAGES_MAX + 1).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("from 1 to {IMAGES_MAX}")),
        "{body}"
    );
    assert_eq!(upstream.calls(), 0, "refused before any upstream call");

    // The cap itself is allowed, and billed per image.
    let response = images(&app, &key, IMAGES_MAX).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["data"].as_array().map(Vec::len),
        Some(IMAGES_MAX as usize)
    );
    assert_eq!(upstream.calls(), 1);
    // Ten images at 0.01.
    assert_eq!(app.balance(&tenant).await["spent"], "0.1");
}
on_both_stores!(
    more_than_ten_images_are_refused_before_the_upstream_is_called,
    more_than_ten_images_are_refused_before_the_upstream_is_called
);
