//! A mock OpenAI-compatible upstream on 127.0.0.1, speaking the documented wire
//! format: chat completion JSON, `chat.completion.chunk` SSE with `data: [DONE]`,
//! the usage chunk only when `stream_options.include_usage` is set (and
//! `"usage": null` on the other chunks then), and OpenAI error bodies.
//!
//! The model name picks a behaviour: `gpt-mock` answers normally; `fail-503`,
//! `fail-400` fail; `no-usage` omits usage; `overshoot` reports more output tokens
//! than `max_tokens`; `exact-hold` reports exactly `max_tokens` output tokens;
//! `hang` never answers; `slow` answers after 100 ms; `slow-stream` streams many chunks slowly; `die-mid-stream`
//! drops the connection after some text.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MOCK_API_KEY: &str = "sk-mock-upstream-secret-7f3a9c1e5b";
pub const PROMPT_TOKENS: u64 = 12;
pub const CACHED_TOKENS: u64 = 4;
pub const COMPLETION_TOKENS: u64 = 30;
pub const STREAM_TEXT: [&str; 3] = ["Hel", "lo ", "there"];

#[derive(Default)]
pub struct MockState {
    pub requests: Vec<Value>,
    /// Report usage the way DeepSeek does (`prompt_cache_hit_tokens`).
    pub deepseek_usage: bool,
}

#[derive(Clone)]
pub struct MockUpstream {
    pub base_url: String,
    pub state: Arc<Mutex<MockState>>,
}

impl MockUpstream {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(MockState::default()));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/embeddings", web::post().to(embeddings))
                .route("/v1/images/generations", web::post().to(images))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            state,
        }
    }

    /// The same mock, reporting usage as DeepSeek does.
    pub fn start_deepseek() -> Self {
        let mock = Self::start();
        mock.state.lock().unwrap().deepseek_usage = true;
        mock
    }

    pub fn requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn error(status: u16, message: &str, kind: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}}))
}

fn usage(completion_tokens: u64, deepseek: bool) -> Value {
    if deepseek {
        return json!({
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion_tokens,
            "total_tokens": PROMPT_TOKENS + completion_tokens,
            "prompt_cache_hit_tokens": CACHED_TOKENS,
            "prompt_cache_miss_tokens": PROMPT_TOKENS - CACHED_TOKENS,
        });
    }
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn chunk(model: &str, delta: Value, finish_reason: Value, include_usage: bool) -> String {
    let mut c = json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
    });
    if include_usage {
        c["usage"] = Value::Null;
    }
    format!("data: {c}\n\n")
}

async fn chat(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let body = body.into_inner();
    state.lock().unwrap().requests.push(body.clone());
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {MOCK_API_KEY}"));
    if !authorized {
        return error(
            401,
            "Incorrect API key provided: sk-wro***ong.",
            "invalid_request_error",
        );
    }
    let deepseek = state.lock().unwrap().deepseek_usage;
    // Conformance-suite names (see conformance.rs) map onto this mock's behaviours.
    let model = match body["model"].as_str().unwrap_or("") {
        "conf-text" => "gpt-mock",
        "conf-slow" => "slow-stream",
        "conf-die" => "die-mid-stream",
        other => other,
    }
    .to_string();
    if let Some(status) = model.strip_prefix("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return error(
            status,
            &format!("mock {status} message"),
            "invalid_request_error",
        );
    }
    if model == "conf-tools" {
        return tool_call_answer(&body, deepseek);
    }
    let max_tokens = body["max_tokens"]
        .as_u64()
        .or(body["max_completion_tokens"].as_u64());
    let completion_tokens = match model.as_str() {
        "overshoot" => 5_000,
        "exact-hold" => max_tokens.expect("exact-hold needs max_tokens"),
        _ => COMPLETION_TOKENS,
    };
    match model.as_str() {
        "fail-503" => return error(503, "The server is overloaded", "server_error"),
        "fail-400" => {
            return error(
                400,
                "Invalid value for 'temperature'",
                "invalid_request_error",
            )
        }
        "slow" => tokio::time::sleep(Duration::from_millis(100)).await,
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return error(500, "hung", "server_error");
        }
        _ => {}
    }
    if body["stream"].as_bool() == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let mut frames: Vec<(u64, String)> = vec![(
            0,
            chunk(
                &model,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                include_usage,
            ),
        )];
        let (pieces, delay_ms): (Vec<String>, u64) = match model.as_str() {
            "slow-stream" => ((0..200).map(|i| format!("w{i} ")).collect(), 20),
            _ => (STREAM_TEXT.iter().map(|s| s.to_string()).collect(), 0),
        };
        for piece in pieces {
            frames.push((
                delay_ms,
                chunk(
                    &model,
                    json!({"content": piece}),
                    Value::Null,
                    include_usage,
                ),
            ));
        }
        if model == "die-mid-stream" {
            // Let the text reach the hub, then break the connection.
            let stream = futures_util::stream::iter(
                frames
                    .into_iter()
                    .map(|(_, f)| Ok::<_, std::io::Error>(Bytes::from(f))),
            )
            .chain(futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset"))
            }));
            return HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(stream);
        }
        frames.push((0, chunk(&model, json!({}), json!("stop"), include_usage)));
        if include_usage {
            let mut last = json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                "system_fingerprint": "fp_mock", "choices": []
            });
            if model != "no-usage" {
                last["usage"] = usage(completion_tokens, deepseek);
            }
            frames.push((0, format!("data: {last}\n\n")));
        }
        frames.push((0, "data: [DONE]\n\n".to_string()));
        let stream = futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
            let (delay_ms, frame) = frames.next()?;
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(frame)), frames))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(stream);
    }
    let mut answer = json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage(completion_tokens, deepseek),
    });
    if model == "no-usage" {
        answer.as_object_mut().unwrap().remove("usage");
    }
    HttpResponse::Ok().json(answer)
}

use futures_util::StreamExt;

/// `conf-tools`: a call of `get_weather({"city":"Paris"})`, JSON or streamed.
fn tool_call_answer(body: &Value, deepseek: bool) -> HttpResponse {
    let arguments = r#"{"city":"Paris"}"#;
    if body["stream"].as_bool() == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let call_start = json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]});
        let mut frames = vec![chunk("conf-tools", call_start, Value::Null, include_usage)];
        for part in [r#"{"city""#, r#":"Paris"}"#] {
            frames.push(chunk(
                "conf-tools",
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
                include_usage,
            ));
        }
        frames.push(chunk(
            "conf-tools",
            json!({}),
            json!("tool_calls"),
            include_usage,
        ));
        if include_usage {
            let last = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "conf-tools",
                "system_fingerprint": "fp_mock", "choices": [], "usage": usage(COMPLETION_TOKENS, deepseek)});
            frames.push(format!("data: {last}\n\n"));
        }
        frames.push("data: [DONE]\n\n".to_string());
        let stream = futures_util::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok::<_, std::io::Error>(Bytes::from(f))),
        );
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(stream);
    }
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": "conf-tools",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": "call_mock1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": usage(COMPLETION_TOKENS, deepseek),
    }))
}

pub const EMBEDDING_PROMPT_TOKENS: u64 = 8;

fn authorized(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {MOCK_API_KEY}"))
}

async fn embeddings(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    state.lock().unwrap().requests.push(body.0.clone());
    if !authorized(&req) {
        return error(401, "Incorrect API key provided", "invalid_request_error");
    }
    let inputs = match &body["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.0023, -0.0093, 0.0158]}))
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": EMBEDDING_PROMPT_TOKENS, "total_tokens": EMBEDDING_PROMPT_TOKENS}
    }))
}

async fn images(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    state.lock().unwrap().requests.push(body.0.clone());
    if !authorized(&req) {
        return error(401, "Incorrect API key provided", "invalid_request_error");
    }
    let n = body["n"].as_u64().unwrap_or(1);
    let b64 = body["response_format"] == "b64_json";
    let data: Vec<Value> = (0..n)
        .map(|i| {
            if b64 {
                json!({"b64_json": "iVBORw0KGgo=", "revised_prompt": "a cat"})
            } else {
                json!({"url": format!("https://images.example/{i}.png")})
            }
        })
        .collect();
    HttpResponse::Ok().json(json!({"created": 1_700_000_000, "data": data}))
}
