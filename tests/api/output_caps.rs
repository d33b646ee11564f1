//! One output cap per request (docs/billing.md, "One output cap"): the hub holds
//! for the smallest cap the client named, lowered to the model's
//! `max_output_tokens`, and sends the upstream exactly that cap in the one field
//! it reads, whatever the ingress and whichever provider. The `largest-cap` mock
//! honours the largest cap field it receives, as an upstream a request with two
//! caps (`"max_tokens": 1, "max_completion_tokens": 2000`) once overdrew a tenant
//! through. A 402 says which `max_tokens` would fit.

use crate::aigne::{chat_call, post_v2};
use crate::helpers::*;
use crate::mock_anthropic::{self, MockAnthropic};
use crate::mock_bedrock::{MockBedrock, MOCK_ACCESS_KEY_ID, MOCK_REGION, MOCK_SECRET_ACCESS_KEY};
use crate::mock_gemini::{MockGemini, MOCK_GEMINI_KEY};
use crate::mock_openai::MOCK_API_KEY;
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::Credits;
use serde_json::{json, Value};

/// 1 pico-credit per prompt token, 0.001 credit (10^9 pico) per output token: a
/// tenant's credit counts the output tokens it can pay for.
const OUTPUT_PICO_PER_TOKEN: i128 = 1_000_000_000;

/// Every output cap field an OpenAI-shaped request could carry.
const CAP_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// The cap fields of one upstream request, with their values.
fn caps(request: &Value) -> Vec<(&'static str, Value)> {
    CAP_FIELDS
        .iter()
        .filter_map(|f| request.get(*f).map(|v| (*f, v.clone())))
        .collect()
}

async fn add_provider(app: &TestApp, name: &str, mut provider: Value) {
    provider["name"] = json!(name);
    app.add_provider(provider).await;
}

/// Prices `model` (`provider/name`) at the rates above, with `max_output_tokens`.
async fn price(app: &TestApp, model: &str, max_output_tokens: u32) {
    app.set_price(
        model,
        json!({"input_per_mtok": "0.000001", "output_per_mtok": "1000",
            "cache_read_per_mtok": "0.000001", "cache_write_per_mtok": "0.000001",
            "max_output_tokens": max_output_tokens}),
    )
    .await;
}

/// A hub with the OpenAI mock as provider `mock` (`mock/largest-cap`, cap
/// `max_output_tokens`) and a member key of a tenant with `credits`.
async fn setup(
    kind: StoreKind,
    credits: &str,
    max_output_tokens: u32,
) -> (TestApp, String, String) {
    let app = spawn_app(kind).await;
    let provider =
        json!({"kind": "openai", "base_url": app.mock.base_url, "api_key": MOCK_API_KEY});
    add_provider(&app, "mock", provider).await;
    price(&app, "mock/largest-cap", max_output_tokens).await;
    let (tenant, key) = app.tenant_with_key(credits, "member").await;
    (app, tenant, key)
}

async fn available(app: &TestApp, tenant: &str) -> Credits {
    let balance = app.balance(tenant).await;
    Credits::parse(balance["available"].as_str().unwrap()).unwrap()
}

/// The attack: one output token held, two thousand asked for in the other field.
fn two_caps(stream: bool) -> Value {
    let mut body = chat_body("largest-cap", stream);
    body["max_tokens"] = json!(1);
    body["max_completion_tokens"] = json!(2000);
    body
}

/// Every settlement of the tenant: (output tokens, reasoning tokens, overshoot).
async fn settlements(app: &TestApp, tenant: &str) -> Vec<(u64, u64, Credits)> {
    tenant_events(app, tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::UsageSettled {
                usage,
                overshoot_pico,
                ..
            } => Some((usage.output_tokens, usage.reasoning_tokens, overshoot_pico)),
            _ => None,
        })
        .collect()
}

async fn two_output_caps_never_overdraw_a_tenant(kind: StoreKind) {
    // Enough for two requests of one output token, and a little over.
    let (app, tenant, key) = setup(kind, "0.0025", 4096).await;
    for stream in [false, true] {
        let response = app.chat(&key, &two_caps(stream)).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        }
        let upstream = app.mock.requests().pop().unwrap();
        assert_eq!(
            caps(&upstream),
            vec![("max_completion_tokens", json!(1))],
            "the upstream gets one cap, the one held for: {upstream}"
        );
        let left = available(&app, &tenant).await;
        assert!(
            !left.is_negative(),
            "available {left} after stream={stream}"
        );
    }
    // What was charged is what was held for: no overshoot.
    for (output, _, overshoot) in settlements(&app, &tenant).await {
        assert_eq!((output, overshoot), (1, Credits::ZERO));
    }
}
on_both_stores!(
    two_output_caps_never_overdraw_a_tenant,
    two_output_caps_never_overdraw_a_tenant
);

async fn many_two_cap_requests_at_once_never_overdraw_a_tenant(kind: StoreKind) {
    // Enough for three one-token requests.
    let (app, tenant, key) = setup(kind, "0.0035", 4096).await;
    let requests = (0..32).map(|i| {
        let (app, key) = (&app, &key);
        async move {
            let response = app.chat(key, &two_caps(i % 2 == 1)).await;
            let status = response.status().as_u16();
            let _ = response.text().await;
            status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| [200, 402].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let left = available(&app, &tenant).await;
    assert!(!left.is_negative(), "available {left}");
    for upstream in app.mock.requests() {
        assert_eq!(caps(&upstream), vec![("max_completion_tokens", json!(1))]);
    }
    let settled = settlements(&app, &tenant).await;
    assert_eq!(
        settled.len(),
        statuses.iter().filter(|s| **s == 200).count()
    );
    assert!(
        settled.iter().all(|(_, _, o)| *o == Credits::ZERO),
        "{settled:?}"
    );
}
on_both_stores!(
    many_two_cap_requests_at_once_never_overdraw_a_tenant,
    many_two_cap_requests_at_once_never_overdraw_a_tenant
);

async fn a_cap_above_the_models_is_lowered_to_it_and_reasoning_is_output(kind: StoreKind) {
    // Credit for 60 output tokens: a hold for the 100,000 asked would be refused.
    let (app, tenant, key) = setup(kind, "0.0601", 50).await;
    let mut body = chat_body("largest-cap", false);
    body["max_tokens"] = json!(100_000);
    let response = app.chat(&key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 50);
    assert_eq!(
        caps(&app.mock.requests()[0]),
        vec![("max_completion_tokens", json!(50))]
    );
    // Reasoning tokens are output: charged within the hold.
    assert_eq!(
        settlements(&app, &tenant).await,
        vec![(50, 25, Credits::ZERO)]
    );
}
on_both_stores!(
    a_cap_above_the_models_is_lowered_to_it_and_reasoning_is_output,
    a_cap_above_the_models_is_lowered_to_it_and_reasoning_is_output
);

async fn ollama_gets_one_max_tokens(kind: StoreKind) {
    let (app, _tenant, key) = setup(kind, "20", 4096).await;
    let provider =
        json!({"kind": "ollama", "base_url": app.mock.root_url(), "api_key": MOCK_API_KEY});
    add_provider(&app, "local", provider).await;
    price(&app, "local/largest-cap", 4096).await;
    for stream in [false, true] {
        let mut body = two_caps(stream);
        body["model"] = json!("local/largest-cap");
        let response = app.chat(&key, &body).await;
        assert_eq!(response.status(), 200);
        let _ = response.text().await;
        let upstream = app.mock.requests().pop().unwrap();
        // Ollama's OpenAI-compatible API maps `max_tokens` to `num_predict`.
        assert_eq!(
            caps(&upstream),
            vec![("max_tokens", json!(1))],
            "{upstream}"
        );
    }
}
on_both_stores!(ollama_gets_one_max_tokens, ollama_gets_one_max_tokens);

async fn gemini_gets_the_decided_cap_as_max_output_tokens(kind: StoreKind) {
    let (app, _tenant, key) = setup(kind, "20", 4096).await;
    let gemini = MockGemini::start();
    let provider =
        json!({"kind": "gemini", "base_url": gemini.base_url, "api_key": MOCK_GEMINI_KEY});
    add_provider(&app, "gem", provider).await;
    price(&app, "gem/conf-text", 100).await;
    for stream in [false, true] {
        let body = json!({"model": "gem/conf-text", "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 5000, "stream": stream});
        let response = app.chat(&key, &body).await;
        assert_eq!(response.status(), 200);
        let _ = response.text().await;
        let upstream = gemini.requests().pop().unwrap().body;
        assert_eq!(
            upstream["generationConfig"]["maxOutputTokens"], 100,
            "{upstream}"
        );
    }
}
on_both_stores!(
    gemini_gets_the_decided_cap_as_max_output_tokens,
    gemini_gets_the_decided_cap_as_max_output_tokens
);

async fn bedrock_gets_the_decided_cap_as_max_tokens(kind: StoreKind) {
    let (app, _tenant, key) = setup(kind, "20", 4096).await;
    let bedrock = MockBedrock::start();
    let provider = json!({"kind": "bedrock", "region": MOCK_REGION, "access_key_id": MOCK_ACCESS_KEY_ID,
        "secret_access_key": MOCK_SECRET_ACCESS_KEY, "base_url": bedrock.base_url});
    add_provider(&app, "bed", provider).await;
    price(&app, "bed/conf-text", 4096).await;
    for stream in [false, true] {
        let mut body = two_caps(stream);
        body["model"] = json!("bed/conf-text");
        let response = app.chat(&key, &body).await;
        assert_eq!(response.status(), 200);
        let _ = response.text().await;
        let upstream = bedrock.requests().pop().unwrap().body;
        assert_eq!(upstream["inferenceConfig"]["maxTokens"], 1, "{upstream}");
    }
}
on_both_stores!(
    bedrock_gets_the_decided_cap_as_max_tokens,
    bedrock_gets_the_decided_cap_as_max_tokens
);

async fn messages_send_the_decided_cap_to_every_upstream(kind: StoreKind) {
    let (app, _tenant, key) = setup(kind, "1", 50).await;
    let anthropic = MockAnthropic::start();
    let provider = json!({"kind": "anthropic", "base_url": anthropic.base_url,
        "api_key": mock_anthropic::MOCK_API_KEY});
    add_provider(&app, "anth", provider).await;
    price(&app, "anth/conf-text", 50).await;
    for stream in [false, true] {
        for model in ["anth/conf-text", "mock/largest-cap"] {
            let body = json!({"model": model, "max_tokens": 100_000, "stream": stream,
                "messages": [{"role": "user", "content": "Say hello"}]});
            let response = app
                .client
                .post(format!("{}/v1/messages", app.address))
                .header("x-api-key", &key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{model}");
            let _ = response.text().await;
        }
        // Passed through to Anthropic with the cap lowered to the model's.
        assert_eq!(anthropic.requests().pop().unwrap().body["max_tokens"], 50);
        // Translated for OpenAI: one cap, in the field OpenAI reads.
        let upstream = app.mock.requests().pop().unwrap();
        assert_eq!(caps(&upstream), vec![("max_completion_tokens", json!(50))]);
    }
}
on_both_stores!(
    messages_send_the_decided_cap_to_every_upstream,
    messages_send_the_decided_cap_to_every_upstream
);

async fn aigne_chat_sends_model_options_max_tokens_as_the_one_cap(kind: StoreKind) {
    let (app, _tenant, key) = setup(kind, "20", 4096).await;
    for (max_tokens, expected) in [(Some(7), 7), (Some(10_000), 4096), (None, 4096)] {
        let mut call = chat_call("mock/largest-cap", Some(false));
        if let Some(n) = max_tokens {
            call["input"]["modelOptions"]["maxTokens"] = json!(n);
        }
        let response = post_v2(&app, &key, "/api/v2/chat", &call).await;
        assert_eq!(response.status(), 200);
        let _ = response.text().await;
        let upstream = app.mock.requests().pop().unwrap();
        assert_eq!(
            caps(&upstream),
            vec![("max_completion_tokens", json!(expected))]
        );
    }
}
on_both_stores!(
    aigne_chat_sends_model_options_max_tokens_as_the_one_cap,
    aigne_chat_sends_model_options_max_tokens_as_the_one_cap
);

async fn a_402_names_the_max_tokens_that_would_fit(kind: StoreKind) {
    // Ten output tokens and some change: the prompt costs a few hundred pico.
    let credits = Credits::from_pico(10 * OUTPUT_PICO_PER_TOKEN + 500_000);
    let (app, _tenant, key) = setup(kind, &credits.to_decimal_string(), 4096).await;
    let response = app.chat(&key, &chat_body("largest-cap", false)).await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_credits");
    assert_eq!(body["error"]["max_tokens_that_fit"], 10, "{body}");
    assert_eq!(body["error"]["default_max_tokens"], 4096, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`max_tokens` of at most 10") && message.contains("4096"),
        "{message}"
    );
    // Per choice: two choices of five tokens each fit.
    let mut two_choices = chat_body("largest-cap", false);
    two_choices["n"] = json!(2);
    let body: Value = app.chat(&key, &two_choices).await.json().await.unwrap();
    assert_eq!(body["error"]["max_tokens_that_fit"], 5, "{body}");
    // The advice is right: with it the request gets through.
    let mut fitting = chat_body("largest-cap", false);
    fitting["max_tokens"] = json!(10);
    assert_eq!(app.chat(&key, &fitting).await.status(), 200);
    // When not even one output token fits, the 402 says only the default.
    let response = app.chat(&key, &chat_body("largest-cap", false)).await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].get("max_tokens_that_fit").is_none(), "{body}");
    assert_eq!(body["error"]["default_max_tokens"], 4096);
}
on_both_stores!(
    a_402_names_the_max_tokens_that_would_fit,
    a_402_names_the_max_tokens_that_would_fit
);
