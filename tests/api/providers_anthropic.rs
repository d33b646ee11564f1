//! The `anthropic` kind through the conformance suite against the Anthropic mock,
//! plus checks of what the hub actually sends to Anthropic.

use crate::conformance::{self, Fixture};
use crate::conformance_suite;
use crate::helpers::{assert_charged_nothing, StoreKind};
use crate::mock_anthropic::*;
use domain::Usage;
use serde_json::{json, Value};

/// `conf-text`'s usage, normalized: Anthropic's `input_tokens` already excludes
/// the cache writes and reads.
fn text_usage() -> Usage {
    Usage {
        input_tokens: TEXT_INPUT_TOKENS,
        cache_write_tokens: TEXT_CACHE_CREATION_TOKENS,
        cache_read_tokens: TEXT_CACHE_READ_TOKENS,
        output_tokens: TEXT_OUTPUT_TOKENS,
        ..Usage::default()
    }
}

fn tools_usage() -> Usage {
    Usage {
        input_tokens: TOOLS_INPUT_TOKENS,
        cache_write_tokens: TOOLS_CACHE_CREATION_TOKENS,
        cache_read_tokens: TOOLS_CACHE_READ_TOKENS,
        output_tokens: TOOLS_OUTPUT_TOKENS,
        ..Usage::default()
    }
}

fn fixture_with(mock: MockAnthropic, api_key: &str) -> Fixture {
    Fixture {
        provider: json!({"kind": "anthropic", "base_url": mock.base_url, "api_key": api_key}),
        text_usage: text_usage(),
        tools_usage: tools_usage(),
        _mock: Box::new(mock),
    }
}

fn fixture() -> Fixture {
    fixture_with(MockAnthropic::start(), MOCK_API_KEY)
}

conformance_suite!(anthropic, fixture());

/// The mock's streams follow Anthropic's framing: `event: <name>`, then `data:`
/// JSON whose `type` is that name, then a blank line; ending with `message_stop`.
#[actix_web::test]
async fn mock_streams_use_anthropic_framing() {
    let mock = MockAnthropic::start();
    for model in ["conf-text", "conf-tools"] {
        let text = reqwest::Client::new()
            .post(format!("{}/v1/messages", mock.base_url))
            .header("x-api-key", MOCK_API_KEY)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&json!({"model": model, "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        let mut names = Vec::new();
        for f in text.trim_end().split("\n\n") {
            let (event, data) = f.split_once('\n').expect("two lines per frame");
            let name = event.strip_prefix("event: ").expect("an event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "{f}");
            names.push(name.to_string());
        }
        assert_eq!(names.first().map(String::as_str), Some("message_start"));
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    }
}

/// What the hub sends: headers, and an OpenAI request translated to the Messages
/// API (system on top, tool calls and results as blocks, images, stop sequences).
#[actix_web::test]
async fn hub_sends_translated_requests_with_anthropic_headers() {
    let mock = MockAnthropic::start();
    let s = conformance::setup(StoreKind::Sqlite, fixture_with(mock.clone(), MOCK_API_KEY)).await;
    let request = json!({
        "model": "conf/conf-text",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_a", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_b", "content": "21C"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": ["END"],
        "top_p": 0.5,
        "max_completion_tokens": 64,
    });
    let response = s.app.chat(&s.key, &request).await;
    assert_eq!(response.status(), 200);
    let sent = mock.requests().pop().unwrap();
    assert_eq!(sent.api_key.as_deref(), Some(MOCK_API_KEY));
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));
    assert!(sent
        .content_type
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(
        sent.body,
        json!({
            "model": "conf-text",
            "system": "Be brief.",
            "max_tokens": 64,
            "top_p": 0.5,
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_b", "content": "21C"},
                ]},
            ],
            "tools": [{"name": "get_weather", "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
        })
    );

    // Streams ask for it; a request without a cap gets the model's configured
    // output cap (1000 in the conformance price book), which Anthropic requires
    // and the hold assumed.
    let mut body = json!({"model": "conf/conf-text", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let response = s.app.chat(&s.key, &body).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let sent = mock.requests().pop().unwrap().body;
    assert_eq!(
        (sent["stream"].clone(), sent["max_tokens"].clone()),
        (json!(true), json!(1000))
    );
    assert!(sent.get("stream_options").is_none());

    // Anthropic refuses unknown fields, so nothing OpenAI-only passes through.
    body["stream"] = json!(false);
    body["frequency_penalty"] = json!(0.5);
    body["logprobs"] = json!(false);
    s.app.chat(&s.key, &body).await.text().await.unwrap();
    let sent = mock.requests().pop().unwrap().body;
    let mut keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["max_tokens", "messages", "model"]);
}

/// A key Anthropic rejects (401, in its error shape) is the provider's credential
/// problem, not the client's; and the key never reaches the client.
#[actix_web::test]
async fn rejected_key_is_a_provider_credential_error() {
    let s = conformance::setup(
        StoreKind::Sqlite,
        fixture_with(MockAnthropic::start(), "sk-ant-wrong-key-0123456789"),
    )
    .await;
    for stream in [false, true] {
        let body = json!({"model": "conf/conf-text", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        let response = s.app.chat(&s.key, &body).await;
        assert_eq!(response.status(), 502);
        let text = response.text().await.unwrap();
        assert!(text.contains("provider_credential_rejected"), "{text}");
        assert!(!text.contains("sk-ant-wrong-key"), "{text}");
    }
    let balance = s.app.balance(&s.tenant).await;
    assert_charged_nothing(&balance);
}
