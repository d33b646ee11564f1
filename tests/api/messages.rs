//! `POST /v1/messages`: Anthropic's wire format in and out, on the same billing
//! path as the OpenAI endpoints. Against an Anthropic upstream the body and the
//! answer pass through unchanged; against an OpenAI-compatible upstream both are
//! translated.

use crate::helpers::*;
use crate::mock_anthropic::{self, MockAnthropic};
use crate::mock_openai;
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::{Credits, Ingress, Usage};
use serde_json::{json, Value};
use std::time::Duration;

/// Prices of every model here: input 1, output 2, cache read 0.5, cache write
/// 1.25 credits per million tokens, so a token counted as the wrong kind shows.
fn cost(usage: &Usage) -> Credits {
    Credits::from_pico(
        (usage.input_tokens * 1_000_000
            + usage.output_tokens * 2_000_000
            + usage.cache_read_tokens * 500_000
            + usage.cache_write_tokens * 1_250_000) as i128,
    )
}

/// The Anthropic mock's `conf-text` usage (JSON, and the stream's merged figures).
fn anthropic_text_usage() -> Usage {
    Usage {
        input_tokens: mock_anthropic::TEXT_INPUT_TOKENS,
        cache_write_tokens: mock_anthropic::TEXT_CACHE_CREATION_TOKENS,
        cache_read_tokens: mock_anthropic::TEXT_CACHE_READ_TOKENS,
        output_tokens: mock_anthropic::TEXT_OUTPUT_TOKENS,
        ..Usage::default()
    }
}

fn anthropic_tools_usage() -> Usage {
    Usage {
        input_tokens: mock_anthropic::TOOLS_INPUT_TOKENS,
        cache_write_tokens: mock_anthropic::TOOLS_CACHE_CREATION_TOKENS,
        cache_read_tokens: mock_anthropic::TOOLS_CACHE_READ_TOKENS,
        output_tokens: mock_anthropic::TOOLS_OUTPUT_TOKENS,
        ..Usage::default()
    }
}

/// The OpenAI mock's usage: `prompt_tokens` includes the cached ones.
fn openai_usage() -> Usage {
    Usage {
        input_tokens: mock_openai::PROMPT_TOKENS - mock_openai::CACHED_TOKENS,
        cache_read_tokens: mock_openai::CACHED_TOKENS,
        output_tokens: mock_openai::COMPLETION_TOKENS,
        ..Usage::default()
    }
}

struct Setup {
    app: TestApp,
    anthropic: MockAnthropic,
    tenant: String,
    key: String,
}

const MODELS: [&str; 9] = [
    "anth/conf-text",
    "anth/conf-tools",
    "anth/conf-slow",
    "anth/conf-die",
    "anth/conf-status-429",
    "mock/gpt-mock",
    "mock/conf-tools",
    "mock/slow-stream",
    "mock/fail-400",
];

/// A hub with an Anthropic provider `anth` and an OpenAI one `mock`, and a
/// tenant with `credits`.
async fn setup(kind: StoreKind, credits: &str) -> Setup {
    let app = spawn_app(kind).await;
    let anthropic = MockAnthropic::start();
    app.add_provider(
        json!({"name": "anth", "kind": "anthropic", "base_url": anthropic.base_url,
            "api_key": mock_anthropic::MOCK_API_KEY}),
    )
    .await;
    app.add_provider(
        json!({"name": "mock", "kind": "openai", "base_url": app.mock.base_url,
            "api_key": mock_openai::MOCK_API_KEY}),
    )
    .await;
    for model in MODELS {
        app.set_price(
            model,
            json!({"input_per_mtok": "1", "output_per_mtok": "2", "cache_read_per_mtok": "0.5",
                "cache_write_per_mtok": "1.25", "max_output_tokens": 1000}),
        )
        .await;
    }
    let (tenant, key) = app.tenant_with_key(credits, "member").await;
    Setup {
        app,
        anthropic,
        tenant,
        key,
    }
}

impl Setup {
    /// A call as Anthropic's SDK makes it: the key in `x-api-key`.
    async fn messages(&self, body: &Value) -> reqwest::Response {
        self.app
            .client
            .post(format!("{}/v1/messages", self.app.address))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The same body sent straight to the Anthropic mock, for comparison.
    async fn direct(&self, body: &Value) -> String {
        self.app
            .client
            .post(format!("{}/v1/messages", self.anthropic.base_url))
            .header("x-api-key", mock_anthropic::MOCK_API_KEY)
            .header("anthropic-version", mock_anthropic::ANTHROPIC_VERSION)
            .json(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn settlements(&self) -> Vec<(String, Usage, Credits)> {
        tenant_events(&self.app, &self.tenant)
            .await
            .into_iter()
            .filter_map(|e| match e.event {
                TenantEvent::UsageSettled {
                    request_id,
                    usage,
                    cost_pico,
                    ..
                } => Some((request_id.to_string(), usage, cost_pico)),
                _ => None,
            })
            .collect()
    }

    async fn reservations(&self) -> Vec<Ingress> {
        tenant_events(&self.app, &self.tenant)
            .await
            .into_iter()
            .filter_map(|e| match e.event {
                TenantEvent::CreditsReserved { ingress, .. } => Some(ingress),
                _ => None,
            })
            .collect()
    }

    /// The settlements so far are exactly `expected`, each charged at the rates,
    /// and the balance shows their sum spent and nothing held.
    async fn assert_billed(&self, expected: &[Usage]) {
        let settled = self.settlements().await;
        let usages: Vec<Usage> = settled.iter().map(|s| s.1).collect();
        assert_eq!(usages, expected);
        let mut total = Credits::from_pico(0);
        for (_, usage, charged) in &settled {
            assert_eq!(*charged, cost(usage));
            total = total + *charged;
        }
        let balance = self.app.balance(&self.tenant).await;
        assert_eq!(balance["held"], "0");
        assert_eq!(balance["spent"], total.to_decimal_string());
        assert_eq!(
            balance["available"],
            (Credits::parse("10").unwrap() - total).to_decimal_string()
        );
        assert!(self
            .reservations()
            .await
            .iter()
            .all(|i| *i == Ingress::Anthropic));
    }

    async fn wait_until_nothing_held(&self) {
        self.app.wait_until_nothing_held(&self.tenant).await;
    }
}

/// A request using what only Anthropic understands: cache_control markers, a
/// thinking block with its signature, extended thinking, fields the hub does not
/// know.
fn anthropic_only_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 200,
        "stream": stream,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "A long document to cache.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "The user wants brevity.", "signature": "EqQBCkYIBxgCKkBsig=="},
                {"type": "text", "text": "Understood."},
            ]},
            {"role": "user", "content": "Say hello"},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "user-42"},
        "service_tier": "auto",
        "x_future_field": {"kept": [1, 2.5, "three", null]},
    })
}

async fn anthropic_upstream_json_passes_through(kind: StoreKind) {
    let s = setup(kind, "10").await;
    let body = anthropic_only_request("anth/conf-text", false);
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let text = response.text().await.unwrap();

    // The upstream saw the client's body, only `model` changed, with the hub's key.
    let sent = s.anthropic.requests().pop().unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("conf-text");
    assert_eq!(sent.body, expected);
    assert_eq!(sent.api_key.as_deref(), Some(mock_anthropic::MOCK_API_KEY));
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));
    // And the client got the upstream's answer byte for byte.
    assert_eq!(text, s.direct(&sent.body).await);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["content"][0]["text"], "Hello there");

    let settled = s.settlements().await;
    assert_eq!(settled[0].0, id);
    s.assert_billed(&[anthropic_text_usage()]).await;
    // 12 input + 7 cache writes at 1.25 + 5 cache reads at 0.5 + 30 output at 2.
    assert_eq!(s.app.balance(&s.tenant).await["spent"], "0.00008325");

    // The key as a bearer token works the same.
    let response = s
        .app
        .client
        .post(format!("{}/v1/messages", s.app.address))
        .bearer_auth(&s.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    s.assert_billed(&[anthropic_text_usage(), anthropic_text_usage()])
        .await;
}
on_both_stores!(
    anthropic_upstream_json_passes_through,
    anthropic_upstream_json_passes_through
);

async fn anthropic_upstream_stream_is_relayed(kind: StoreKind) {
    let s = setup(kind, "10").await;
    let body = anthropic_only_request("anth/conf-text", true);
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    request_id(&response);
    let text = response.text().await.unwrap();
    let sent = s.anthropic.requests().pop().unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("conf-text");
    assert_eq!(sent.body, expected);
    // Every event as the upstream sent it, ping included, message_stop last.
    assert_eq!(text, s.direct(&sent.body).await);
    let streamed = anthropic_events(&text);
    assert_eq!(
        event_names(&streamed),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    // Input and cache counts from message_start, the cumulative output from
    // message_delta (30, not 1 + 30).
    s.assert_billed(&[anthropic_text_usage()]).await;

    // Tool use streamed: message_delta repeats the input counts (newer API versions).
    let body = json!({"model": "anth/conf-tools", "max_tokens": 100, "stream": true,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let text = s.messages(&body).await.text().await.unwrap();
    let sent = s.anthropic.requests().pop().unwrap();
    assert_eq!(
        sent.body["tools"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(text, s.direct(&sent.body).await);
    s.assert_billed(&[anthropic_text_usage(), anthropic_tools_usage()])
        .await;
}
on_both_stores!(
    anthropic_upstream_stream_is_relayed,
    anthropic_upstream_stream_is_relayed
);

fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "Current weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
}

async fn openai_upstream_json_is_translated(kind: StoreKind) {
    let s = setup(kind, "10").await;
    let body = json!({
        "model": "mock/conf-tools",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [weather_tool()],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 3,
        "metadata": {"user_id": "user-42"},
    });
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        s.app.mock.requests().pop().unwrap(),
        json!({
            "model": "conf-tools",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            "max_completion_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["END"],
            "user": "user-42",
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "auto",
        })
    );
    assert_eq!(
        answer,
        json!({
            "id": format!("msg_{}", id.replace('-', "")),
            "type": "message",
            "role": "assistant",
            "model": "conf-tools",
            "content": [{"type": "tool_use", "id": "call_mock1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 30},
        })
    );

    // The round trip: the tool_use goes back with its result.
    let tool_use = answer["content"][0].clone();
    let body = json!({
        "model": "mock/gpt-mock",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [tool_use]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_mock1", "content": [{"type": "text", "text": "18C, sunny"}]},
                {"type": "text", "text": "Short answer please."},
            ]},
        ],
        "tools": [weather_tool()],
    });
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        s.app.mock.requests().pop().unwrap()["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_mock1", "content": "18C, sunny"},
            {"role": "user", "content": "Short answer please."},
        ])
    );
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Hello there"}])
    );
    assert_eq!(answer["stop_reason"], "end_turn");
    // 8 input + 4 cached at 0.5 + 30 output at 2, twice.
    s.assert_billed(&[openai_usage(), openai_usage()]).await;
    assert_eq!(s.app.balance(&s.tenant).await["spent"], "0.00014");
}
on_both_stores!(
    openai_upstream_json_is_translated,
    openai_upstream_json_is_translated
);

async fn openai_upstream_stream_is_translated(kind: StoreKind) {
    let s = setup(kind, "10").await;
    let body = json!({"model": "mock/gpt-mock", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    request_id(&response);
    let streamed = anthropic_events(&response.text().await.unwrap());
    let sent = s.app.mock.requests().pop().unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["max_completion_tokens"], 100);
    assert_eq!(
        event_names(&streamed),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(streamed[0].1["message"]["role"], "assistant");
    assert_eq!(streamed[0].1["message"]["model"], "gpt-mock");
    assert_eq!(
        streamed[2].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = streamed
        .iter()
        .filter_map(|(_, e)| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello there");
    assert_eq!(
        streamed[7].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 30}})
    );
    s.assert_billed(&[openai_usage()]).await;

    // A tool call streamed as a tool_use block with input_json_delta pieces.
    let body = json!({"model": "mock/conf-tools", "max_tokens": 100, "stream": true,
        "tools": [weather_tool()], "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let streamed = anthropic_events(&s.messages(&body).await.text().await.unwrap());
    assert_eq!(
        s.app.mock.requests().pop().unwrap()["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    let start = streamed
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(
        start.1["content_block"],
        json!({"type": "tool_use", "id": "call_mock1", "name": "get_weather", "input": {}})
    );
    let input: String = streamed
        .iter()
        .filter(|(_, e)| e["delta"]["type"] == "input_json_delta")
        .map(|(_, e)| e["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({"city": "Paris"})
    );
    let delta = &streamed
        .iter()
        .find(|(n, _)| n == "message_delta")
        .unwrap()
        .1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(event_names(&streamed).last(), Some(&"message_stop"));
    s.assert_billed(&[openai_usage(), openai_usage()]).await;
}
on_both_stores!(
    openai_upstream_stream_is_translated,
    openai_upstream_stream_is_translated
);

fn assert_anthropic_error(body: &Value, error_type: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], error_type, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

async fn bad_key_is_401_in_anthropic_shape(kind: StoreKind) {
    let s = setup(kind, "10").await;
    let body = json!({"model": "anth/conf-text", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    // A key of the right shape with a wrong secret, one of the wrong shape, none.
    let wrong_secret = format!("{}x", &s.key[..s.key.len() - 1]);
    let url = format!("{}/v1/messages", s.app.address);
    let attempts = [
        s.app.client.post(&url).header("x-api-key", &wrong_secret),
        s.app
            .client
            .post(&url)
            .header("x-api-key", "sk-ant-api03-not-a-hub-key"),
        s.app.client.post(&url).bearer_auth(&wrong_secret),
        s.app.client.post(&url),
    ];
    for request in attempts {
        let response = request.json(&body).send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_anthropic_error(&response.json().await.unwrap(), "authentication_error");
    }
    assert!(s.anthropic.requests().is_empty());
    assert!(s.reservations().await.is_empty());
}
on_both_stores!(
    bad_key_is_401_in_anthropic_shape,
    bad_key_is_401_in_anthropic_shape
);

async fn invalid_requests_are_refused_in_anthropic_shape(kind: StoreKind) {
    let s = setup(kind, "10").await;
    // max_tokens is required, as by Anthropic: no hold, no upstream call.
    for model in ["anth/conf-text", "mock/gpt-mock"] {
        let response = s
            .messages(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_anthropic_error(&body, "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_tokens"),
            "{body}"
        );
    }
    // A server tool cannot be translated for an OpenAI model: refused before the hold.
    let response = s
        .messages(&json!({"model": "mock/gpt-mock", "max_tokens": 10,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 400);
    assert_anthropic_error(&response.json().await.unwrap(), "invalid_request_error");
    // Unknown model, body over the limit, wrong method.
    let response = s
        .messages(&json!({"model": "anth/nope", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 404);
    assert_anthropic_error(&response.json().await.unwrap(), "not_found_error");
    let big = "x".repeat(300 * 1024);
    let response = s
        .messages(&json!({"model": "anth/conf-text", "max_tokens": 10,
            "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(response.status(), 413);
    assert_anthropic_error(&response.json().await.unwrap(), "request_too_large");
    let response = s
        .app
        .client
        .get(format!("{}/v1/messages", s.app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_anthropic_error(&response.json().await.unwrap(), "invalid_request_error");

    assert!(s.anthropic.requests().is_empty());
    assert!(s.app.mock.requests().is_empty());
    assert!(s.reservations().await.is_empty());
    let balance = s.app.balance(&s.tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(
    invalid_requests_are_refused_in_anthropic_shape,
    invalid_requests_are_refused_in_anthropic_shape
);

async fn insufficient_credits_is_402(kind: StoreKind) {
    // The hold of 1000 output tokens at 2 credits per million is 0.002 credits.
    let s = setup(kind, "0.001").await;
    for stream in [false, true] {
        let response = s
            .messages(
                &json!({"model": "anth/conf-text", "max_tokens": 1000, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(response.status(), 402);
        let body: Value = response.json().await.unwrap();
        assert_anthropic_error(&body, "billing_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("insufficient credits"));
    }
    assert!(s.anthropic.requests().is_empty());
    let balance = s.app.balance(&s.tenant).await;
    assert_charged_nothing(&balance);
}
on_both_stores!(insufficient_credits_is_402, insufficient_credits_is_402);

async fn client_leaving_mid_stream_is_billed_once(kind: StoreKind) {
    let s = setup(kind, "10").await;
    for (n, model) in ["anth/conf-slow", "mock/slow-stream"]
        .into_iter()
        .enumerate()
    {
        let mut response = s
            .messages(&json!({"model": model, "max_tokens": 500, "stream": true,
                "messages": [{"role": "user", "content": "Count"}]}))
            .await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        for _ in 0..4 {
            response
                .chunk()
                .await
                .unwrap()
                .expect("some events before leaving");
        }
        drop(response);
        s.wait_until_nothing_held().await;
        let settled = s.settlements().await;
        assert_eq!(settled.len(), n + 1, "billed once: {settled:?}");
        let (settled_id, usage, charged) = &settled[n];
        assert_eq!(*settled_id, id);
        assert!(usage.output_tokens > 0, "{usage:?}");
        assert_eq!(*charged, cost(usage));
    }
    // Nothing more is charged later (the upstreams stopped being read): a check
    // that nothing happens, so it can only wait a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.settlements().await.len(), 2);
}
on_both_stores!(
    client_leaving_mid_stream_is_billed_once,
    client_leaving_mid_stream_is_billed_once
);

async fn upstream_failures_in_anthropic_shape(kind: StoreKind) {
    let s = setup(kind, "10").await;
    // Upstream statuses map as on the OpenAI endpoints, at no cost.
    for (model, status, error_type) in [
        ("anth/conf-status-429", 429, "rate_limit_error"),
        ("mock/fail-400", 400, "invalid_request_error"),
    ] {
        let response = s
            .messages(&json!({"model": model, "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(response.status(), status, "{model}");
        request_id(&response);
        assert_anthropic_error(&response.json().await.unwrap(), error_type);
    }
    assert!(s.settlements().await.is_empty());

    // An upstream dying mid-stream ends the stream with an error event, never
    // message_stop; the text that reached the client is billed once.
    let text = s
        .messages(
            &json!({"model": "anth/conf-die", "max_tokens": 10, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .text()
        .await
        .unwrap();
    let streamed = anthropic_events(&text);
    assert_eq!(event_names(&streamed).last(), Some(&"error"), "{text}");
    assert!(!event_names(&streamed).contains(&"message_stop"));
    assert_anthropic_error(&streamed.last().unwrap().1, "api_error");
    s.wait_until_nothing_held().await;
    assert_eq!(s.settlements().await.len(), 1);
}
on_both_stores!(
    upstream_failures_in_anthropic_shape,
    upstream_failures_in_anthropic_shape
);

async fn fallback_from_anthropic_to_openai_translates_per_attempt(kind: StoreKind) {
    let s = setup(kind, "10").await;
    s.app
        .set_price("anth/conf-status-500", json!({"input_per_mtok": "1", "output_per_mtok": "2", "cache_read_per_mtok": "0.5",
                "cache_write_per_mtok": "1.25", "max_output_tokens": 1000, "fallbacks": ["mock/gpt-mock"]}))
        .await;
    let body = anthropic_only_request("anth/conf-status-500", false);
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Hello there"}])
    );
    // Anthropic got the body as it is; the fallback got it translated.
    let sent = s.anthropic.requests().pop().unwrap();
    assert_eq!(sent.body["thinking"], body["thinking"]);
    let translated = s.app.mock.requests().pop().unwrap();
    assert_eq!(translated["model"], "gpt-mock");
    assert_eq!(
        translated["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert!(translated.get("thinking").is_none());
    // Every try is an event; the request is billed once, at the fallback's usage.
    let attempts: Vec<(String, bool)> = tenant_events(&s.app, &s.tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::UpstreamAttempted {
                provider, usage, ..
            } => Some((provider, usage.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(attempts.first(), Some(&("anth".to_string(), false)));
    assert_eq!(attempts.last(), Some(&("mock".to_string(), true)));
    s.assert_billed(&[openai_usage()]).await;
}
on_both_stores!(
    fallback_from_anthropic_to_openai_translates_per_attempt,
    fallback_from_anthropic_to_openai_translates_per_attempt
);
