//! The provider conformance suite: every provider kind, through the hub's OpenAI
//! endpoint, against a mock speaking that provider's own wire format.
//!
//! A provider passes when, for JSON and for streams: text and tool calls
//! round-trip, finish reasons map, the usage the hub records equals the usage the
//! mock reported (normalized: uncached input, cache reads, cache writes, output,
//! reasoning) and the charge is that usage at each kind's rate; a client leaving
//! mid-stream is billed once and frees its hold; an upstream dying mid-stream ends
//! the client's stream with an error; upstream error statuses map to the right
//! hub status and cost nothing.
//!
//! A mock joins the suite by understanding these model names:
//! `conf-text` (answers "Hello there", finish "stop"), `conf-tools` (calls
//! `get_weather` with `{"city":"Paris"}`), `conf-slow` (a long, slow stream),
//! `conf-die` (streams some text, then breaks the connection) and
//! `conf-status-<N>` (fails with HTTP status N and the message "mock N message").

use crate::helpers::*;
use domain::{Credits, Rate, Rates, Usage};
use serde_json::{json, Value};

/// What the suite needs to know about one provider under test.
pub struct Fixture {
    /// Body of `POST /admin/v1/providers`; the suite sets `"name": "conf"`.
    pub provider: Value,
    /// The normalized usage the mock reports for `conf-text` (JSON and stream).
    pub text_usage: Usage,
    /// The normalized usage the mock reports for `conf-tools`.
    pub tools_usage: Usage,
    /// Keeps the mock server alive for the test.
    pub _mock: Box<dyn std::any::Any>,
}

/// Each kind of token at a different price, so a usage mapped to the wrong kind
/// shows up in the charge: input 1, output 2, cache read 0.5, cache write 1.25
/// credits per million tokens.
pub fn conformance_rates() -> Rates {
    let r = |s: &str| Rate::parse_per_million(s).unwrap();
    Rates {
        input: r("1"),
        output: r("2"),
        cache_read: r("0.5"),
        cache_write: r("1.25"),
        image: Rate::default(),
    }
}

const MODELS: [&str; 8] = [
    "conf-text",
    "conf-tools",
    "conf-slow",
    "conf-die",
    "conf-status-400",
    "conf-status-401",
    "conf-status-429",
    "conf-status-500",
];

pub struct Setup {
    pub app: TestApp,
    pub tenant: String,
    pub key: String,
    pub fixture: Fixture,
}

pub async fn setup(kind: StoreKind, fixture: Fixture) -> Setup {
    let app = spawn_app(kind).await;
    let mut provider = fixture.provider.clone();
    provider["name"] = json!("conf");
    app.add_provider(provider).await;
    for model in MODELS {
        let price = json!({"input_per_mtok": "1", "output_per_mtok": "2", "cache_read_per_mtok": "0.5", "cache_write_per_mtok": "1.25", "max_output_tokens": 1000});
        app.set_price(&format!("conf/{model}"), price).await;
    }
    let (tenant, key) = app.tenant_with_key("10", "member").await;
    Setup {
        app,
        tenant,
        key,
        fixture,
    }
}

fn text_request(model: &str, stream: bool) -> Value {
    json!({
        "model": format!("conf/{model}"),
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "max_tokens": 100,
        "temperature": 0.2,
        "stream": stream,
    })
}

fn tools_request(stream: bool) -> Value {
    json!({
        "model": "conf/conf-tools",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "auto",
        "max_tokens": 100,
        "stream": stream,
    })
}

impl Setup {
    async fn chat(&self, body: &Value) -> reqwest::Response {
        self.app.chat(&self.key, body).await
    }

    async fn settlements(&self) -> Vec<(Usage, Credits)> {
        settlements(&self.app, &self.tenant).await
    }

    /// Exactly one settlement so far, of exactly `expected`, charged at the rates.
    async fn assert_billed(&self, expected: Usage) {
        let settled = self.settlements().await;
        assert_eq!(settled.len(), 1, "{settled:?}");
        assert_eq!(
            settled[0].0, expected,
            "recorded usage must equal what the provider reported"
        );
        assert_eq!(settled[0].1, conformance_rates().cost_of(&expected));
        let balance = self.app.balance(&self.tenant).await;
        assert_eq!(balance["held"], "0");
        assert_eq!(balance["spent"], settled[0].1.to_decimal_string());
    }

    async fn wait_until_nothing_held(&self) -> Value {
        self.app.wait_until_nothing_held(&self.tenant).await
    }
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| f.trim().strip_prefix("data: ").unwrap_or(f).to_string())
        .collect()
}

fn stream_chunks(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str(f).unwrap_or_else(|e| panic!("{e}: {f}")))
        .collect()
}

pub async fn text_json(s: Setup) {
    let response = s.chat(&text_request("conf-text", false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"]["prompt_tokens"],
        s.fixture.text_usage.prompt_tokens()
    );
    assert_eq!(
        body["usage"]["completion_tokens"],
        s.fixture.text_usage.output_tokens
    );
    s.assert_billed(s.fixture.text_usage).await;
}

pub async fn text_stream(s: Setup) {
    let response = s.chat(&text_request("conf-text", true)).await;
    assert_eq!(response.status(), 200);
    let frames = sse_data(&response.text().await.unwrap());
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let chunks = stream_chunks(&frames);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c.get("usage").is_none()),
        "{chunks:?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello there");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"),
        "{chunks:?}"
    );
    s.assert_billed(s.fixture.text_usage).await;

    // A client that asks for usage gets it last, in OpenAI's shape.
    let mut body = text_request("conf-text", true);
    body["stream_options"] = json!({"include_usage": true});
    let frames = sse_data(&s.chat(&body).await.text().await.unwrap());
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["prompt_tokens"],
        s.fixture.text_usage.prompt_tokens()
    );
    assert_eq!(
        usage["usage"]["completion_tokens"],
        s.fixture.text_usage.output_tokens
    );
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"],
        s.fixture.text_usage.cache_read_tokens
    );
}

pub async fn tools_json(s: Setup) {
    let response = s.chat(&tools_request(false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let message = &body["choices"][0]["message"];
    let call = &message["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(
        call["function"]["arguments"]
            .as_str()
            .expect("arguments are a JSON string"),
    )
    .unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    s.assert_billed(s.fixture.tools_usage).await;
}

pub async fn tools_stream(s: Setup) {
    let response = s.chat(&tools_request(true)).await;
    assert_eq!(response.status(), 200);
    let frames = sse_data(&response.text().await.unwrap());
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let chunks = stream_chunks(&frames);
    let mut name = String::new();
    let mut arguments = String::new();
    for c in &chunks {
        for call in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            name.push_str(call["function"]["name"].as_str().unwrap_or(""));
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"),
        "{chunks:?}"
    );
    s.assert_billed(s.fixture.tools_usage).await;
}

pub async fn client_leaving_mid_stream(s: Setup) {
    let mut response = s.chat(&text_request("conf-slow", true)).await;
    assert_eq!(response.status(), 200);
    for _ in 0..3 {
        response
            .chunk()
            .await
            .unwrap()
            .expect("some chunks before leaving");
    }
    drop(response);
    let balance = s.wait_until_nothing_held().await;
    assert_eq!(balance["held"], "0");
    let settled = s.settlements().await;
    assert_eq!(
        settled.len(),
        1,
        "billed once for what was generated: {settled:?}"
    );
    assert!(settled[0].0.output_tokens > 0);
    assert_ne!(balance["spent"], "0");
}

pub async fn upstream_dying_mid_stream(s: Setup) {
    let text = s
        .chat(&text_request("conf-die", true))
        .await
        .text()
        .await
        .unwrap();
    let frames = sse_data(&text);
    assert!(
        !frames.iter().any(|f| f == "[DONE]"),
        "a broken stream must not look complete: {text}"
    );
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    let chunks = stream_chunks(&frames[..frames.len() - 1]);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!streamed.is_empty(), "some text arrived before the break");
    assert_eq!(s.wait_until_nothing_held().await["held"], "0");
    assert_eq!(
        s.settlements().await.len(),
        1,
        "text reached the client, so it is billed once"
    );
}

pub async fn upstream_errors_map_and_cost_nothing(s: Setup) {
    for (upstream, hub, code) in [
        (400, 400, "invalid_request"),
        (429, 429, "rate_limited"),
        (500, 502, "upstream_error"),
        // Last: a rejected credential is disabled, so later calls could not reach the mock.
        (401, 502, "provider_credential_rejected"),
    ] {
        for stream in [false, true] {
            let response = s
                .chat(&text_request(&format!("conf-status-{upstream}"), stream))
                .await;
            assert_eq!(
                response.status(),
                hub,
                "upstream {upstream} (stream: {stream})"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{body}");
            if upstream == 400 {
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("upstream answered 400")
                        && !message.contains("mock 400 message"),
                    "the hub's words with the provider's status, not its text: {body}"
                );
            }
        }
    }
    let balance = s.app.balance(&s.tenant).await;
    assert_charged_nothing(&balance);
}

/// Generates the whole suite for one provider, on both stores.
#[macro_export]
macro_rules! conformance_suite {
    ($provider:ident, $fixture:expr) => {
        mod $provider {
            use super::*;
            use $crate::conformance as c;
            macro_rules! case {
                ($case:ident) => {
                    mod $case {
                        use super::*;
                        #[actix_web::test]
                        async fn sqlite() {
                            c::$case(c::setup($crate::helpers::StoreKind::Sqlite, $fixture).await)
                                .await
                        }
                        #[actix_web::test]
                        async fn postgres() {
                            c::$case(c::setup($crate::helpers::StoreKind::Postgres, $fixture).await)
                                .await
                        }
                    }
                };
            }
            case!(text_json);
            case!(text_stream);
            case!(tools_json);
            case!(tools_stream);
            case!(client_leaving_mid_stream);
            case!(upstream_dying_mid_stream);
            case!(upstream_errors_map_and_cost_nothing);
        }
    };
}
