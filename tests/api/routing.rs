//! Routing and resilience: fallbacks, retries, credential rotation, and one event
//! per attempt under one logical request.

use crate::helpers::*;
use crate::mock_openai::{CACHED_TOKENS, COMPLETION_TOKENS, MOCK_API_KEY, PROMPT_TOKENS};
use crate::on_both_stores;
use domain::tenant::{AttemptOutcome, TenantEvent};
use domain::Credits;
use reqwest::Method;
use serde_json::{json, Value};

fn attempts(
    events: &[aigne_hub::store::StoredEvent],
) -> Vec<(u32, String, String, AttemptOutcome, Credits)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::UpstreamAttempted {
                attempt,
                provider,
                credential_id,
                outcome,
                cost_pico,
                ..
            } => Some((
                *attempt,
                provider.clone(),
                credential_id.clone(),
                outcome.clone(),
                *cost_pico,
            )),
            _ => None,
        })
        .collect()
}

async fn fallback_bills_once_at_the_second_candidates_price(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_fallback_to_backup().await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = app.chat(&key, &chat_body("fail-503", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        response.json::<Value>().await.unwrap()["choices"][0]["message"]["content"],
        "Hello there"
    );

    let events = tenant_events(&app, &tenant).await;
    let tried = attempts(&events);
    assert_eq!(tried.len(), 3, "{tried:?}");
    for (i, (number, provider, _, outcome, cost)) in tried.iter().take(2).enumerate() {
        assert_eq!(*number, i as u32 + 1);
        assert_eq!(provider, "mock");
        assert!(
            matches!(
                outcome,
                AttemptOutcome::Failed {
                    status: Some(503),
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(*cost, Credits::ZERO, "failed attempts cost nothing");
    }
    // The backup's price: 8 uncached + 4 cached input tokens at 3, 30 output at 4.
    let expected = Credits::from_pico(
        (((PROMPT_TOKENS - CACHED_TOKENS) + CACHED_TOKENS) * 3_000_000
            + COMPLETION_TOKENS * 4_000_000) as i128,
    );
    assert_eq!(
        (tried[2].0, tried[2].1.as_str(), &tried[2].3, tried[2].4),
        (3, "backup", &AttemptOutcome::Succeeded, expected)
    );
    let settled: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::UsageSettled {
                request_id,
                provider,
                model,
                cost_pico,
                ..
            } => Some((
                request_id.to_string(),
                provider.clone(),
                model.to_string(),
                *cost_pico,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        settled,
        vec![(
            request_id,
            "backup".to_string(),
            "backup/gpt-mock".to_string(),
            expected
        )],
        "billed once, at the backup's price"
    );
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], expected.to_decimal_string());
    assert_eq!(balance["held"], "0");
}
on_both_stores!(
    fallback_bills_once_at_the_second_candidates_price,
    fallback_bills_once_at_the_second_candidates_price
);

async fn a_rejected_credential_is_disabled_and_rotation_moves_on(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    // A second credential, the upstream rejects it, weighted to be picked first.
    let bad = app
        .admin_json(
            Method::POST,
            "/admin/v1/providers/mock/credentials",
            Some(json!({"api_key": "sk-revoked-upstream-key", "weight": 1000})),
        )
        .await;
    let bad_id = bad["credential_id"].as_str().unwrap().to_string();
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    for _ in 0..5 {
        assert_eq!(
            app.chat(&key, &chat_body("gpt-mock", false)).await.status(),
            200
        );
    }
    let events = tenant_events(&app, &tenant).await;
    let tried = attempts(&events);
    let rejected: Vec<_> = tried.iter().filter(|t| t.2 == bad_id).collect();
    assert_eq!(
        rejected.len(),
        1,
        "the rejected credential is used once, then disabled: {tried:?}"
    );
    assert!(matches!(
        rejected[0].3,
        AttemptOutcome::Failed {
            status: Some(401),
            ..
        }
    ));
    assert_eq!(
        tried
            .iter()
            .filter(|t| t.3 == AttemptOutcome::Succeeded)
            .count(),
        5
    );

    let providers = app
        .admin_json(Method::GET, "/admin/v1/providers", None)
        .await;
    let listed = providers["data"][0]["credentials"]
        .as_array()
        .unwrap()
        .clone();
    let bad_listed = listed
        .iter()
        .find(|c| c["credential_id"] == bad_id.as_str())
        .unwrap();
    assert!(
        bad_listed["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("401"),
        "reported: {bad_listed}"
    );
    assert!(!providers.to_string().contains("sk-revoked-upstream-key"));

    app.admin_json(
        Method::PUT,
        &format!("/admin/v1/credentials/{bad_id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    let providers = app
        .admin_json(Method::GET, "/admin/v1/providers", None)
        .await;
    assert!(providers["data"][0]["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["disabled_reason"].is_null()));
}
on_both_stores!(
    a_rejected_credential_is_disabled_and_rotation_moves_on,
    a_rejected_credential_is_disabled_and_rotation_moves_on
);

async fn a_rate_limited_credential_cools_down_and_the_next_one_is_tried(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("conf-status-429", "1", "2", None)])
        .await;
    app.admin_json(
        Method::POST,
        "/admin/v1/providers/mock/credentials",
        Some(json!({"api_key": MOCK_API_KEY})),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let response = app.chat(&key, &chat_body("conf-status-429", false)).await;
    assert_eq!(
        response.status(),
        429,
        "retries exhausted: the rate limit is passed on"
    );
    let tried = attempts(&tenant_events(&app, &tenant).await);
    assert_eq!(tried.len(), 2, "one retry per candidate: {tried:?}");
    assert_ne!(
        tried[0].2, tried[1].2,
        "the retry avoids the credential that is cooling down"
    );
    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(
    a_rate_limited_credential_cools_down_and_the_next_one_is_tried,
    a_rate_limited_credential_cools_down_and_the_next_one_is_tried
);
