//! `POST /v1/embeddings` (billed by input tokens) and `POST /v1/images/generations`
//! (billed per image), through the OpenAI mock.

use crate::helpers::*;
use crate::mock_openai::{EMBEDDING_PROMPT_TOKENS, MOCK_API_KEY};
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::Capability;
use serde_json::{json, Value};

async fn embeddings_are_billed_by_input_tokens(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("text-embedding-3-small", "1", "0", None)])
        .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let response = app
        .post(
            &key,
            "/v1/embeddings",
            &json!({"model": "mock/text-embedding-3-small", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["object"], "embedding");
    assert_eq!(app.mock.requests()[0]["model"], "text-embedding-3-small");
    let balance = app.balance(&tenant).await;
    assert_eq!(
        balance["spent"],
        domain::Credits::from_pico(EMBEDDING_PROMPT_TOKENS as i128 * 1_000_000).to_decimal_string()
    );
    assert_eq!(balance["held"], "0");
    let events = tenant_events(&app, &tenant).await;
    assert!(events.iter().any(|e| matches!(
        e.event,
        TenantEvent::CreditsReserved {
            capability: Capability::Embeddings,
            ..
        }
    )));

    let bad = app
        .post(
            &key,
            "/v1/embeddings",
            &json!({"model": "mock/text-embedding-3-small", "input": []}),
        )
        .await;
    assert_eq!(bad.status(), 400);
}
on_both_stores!(
    embeddings_are_billed_by_input_tokens,
    embeddings_are_billed_by_input_tokens
);

async fn images_are_billed_per_image(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[]).await;
    app.set_price(
        "mock/gpt-image-1",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    for (format, field) in [("b64_json", "b64_json"), ("url", "url")] {
        let response = app.post(&key, "/v1/images/generations", &json!({"model": "mock/gpt-image-1", "prompt": "a cat", "n": 2, "response_format": format})).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        assert!(body["data"][0][field].is_string(), "{body}");
    }
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], "0.16", "4 images at 0.04");
    assert_eq!(balance["held"], "0");

    // Not enough for the 10 images asked: refused before the upstream is called.
    let requests = app.mock.requests().len();
    let (_, poor_key) = app.tenant_with_key("0.1", "member").await;
    let response = app
        .post(
            &poor_key,
            "/v1/images/generations",
            &json!({"model": "mock/gpt-image-1", "prompt": "a cat", "n": 10}),
        )
        .await;
    assert_eq!(response.status(), 402);
    assert_eq!(app.mock.requests().len(), requests);
    let response = app
        .post(
            &key,
            "/v1/images/generations",
            &json!({"model": "mock/gpt-image-1", "prompt": "a cat", "response_format": "gif"}),
        )
        .await;
    assert_eq!(response.status(), 400);
}
on_both_stores!(images_are_billed_per_image, images_are_billed_per_image);

async fn a_provider_without_images_says_so_and_charges_nothing(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.add_provider(json!({"name": "ds", "kind": "deepseek", "base_url": app.mock.base_url, "api_key": MOCK_API_KEY})).await;
    app.set_price(
        "ds/some-image-model",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let response = app
        .post(
            &key,
            "/v1/images/generations",
            &json!({"model": "ds/some-image-model", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not offer image generation"),
        "{body}"
    );
    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(
    a_provider_without_images_says_so_and_charges_nothing,
    a_provider_without_images_says_so_and_charges_nothing
);
