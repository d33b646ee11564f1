//! A mock OpenAI-compatible upstream on 127.0.0.1, speaking the documented wire
//! format: chat completion JSON, `chat.completion.chunk` SSE with `data: [DONE]`,
//! the usage chunk only when `stream_options.include_usage` is set (and
//! `"usage": null` on the other chunks then), and OpenAI error bodies.
//!
//! The model name picks a behaviour: `gpt-mock` answers normally; `fail-503`,
//! `fail-400` fail; `no-usage` omits usage; `overshoot` reports more output tokens
//! than `max_tokens`; `exact-hold` reports exactly `max_tokens` output tokens;
//! `hang` never answers; `slow` answers after 100 ms; `slow-stream` streams many chunks slowly; `die-mid-stream`
//! drops the connection after some text; `endless-stream` streams text and never
//! stops; `largest-cap` honours the LARGEST output
//! cap field it received (`max_tokens`, `max_completion_tokens`,
//! `max_output_tokens`), as an upstream a two-cap request could overspend
//! through: it reports that many output tokens, half of them reasoning, and
//! writes [`LARGEST_CAP_PIECE`] once per token, at most three times. On every
//! route, `huge-answer` answers [`HUGE_ANSWER_BYTES`] of valid JSON, made as it
//! is sent (never held whole).
//!
//! Also, under other roots, the per-provider variants the hub reaches with a
//! provider's own base URL: Ollama's native `POST /api/embed`
//! (`{"model","input"}` → `{"model","embeddings","total_duration",
//! "load_duration","prompt_eval_count"}`, errors `{"error":"…"}`), OpenRouter's
//! `POST /api/v1/embeddings` and Volcengine Ark's (Doubao) `POST /api/v3/embeddings`
//! and `POST /api/v3/images/generations`, each in its provider's answer shape. A
//! model named `conf-status-<N>` fails with status N and "mock N message".

use crate::helpers::serve_mock;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MOCK_API_KEY: &str = "sk-mock-upstream-secret-7f3a9c1e5b";
pub const PROMPT_TOKENS: u64 = 12;
pub const CACHED_TOKENS: u64 = 4;
pub const COMPLETION_TOKENS: u64 = 30;
pub const STREAM_TEXT: [&str; 3] = ["Hel", "lo ", "there"];
/// The text `largest-cap` writes per output token (at most three times).
pub const LARGEST_CAP_PIECE: &str = "ab";

/// The largest of every output cap field in a chat request.
fn largest_cap(body: &Value) -> Option<u64> {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .filter_map(|f| body[*f].as_u64())
        .max()
}

/// `largest-cap`'s text pieces for `cap` output tokens.
fn largest_cap_pieces(cap: u64) -> Vec<String> {
    vec![LARGEST_CAP_PIECE.to_string(); cap.min(3) as usize]
}

#[derive(Default)]
pub struct MockState {
    pub requests: Vec<Value>,
    /// Report usage the way DeepSeek does (`prompt_cache_hit_tokens`).
    pub deepseek_usage: bool,
    /// The paths of the requests to the per-provider routes (`/api/...`).
    pub paths: Vec<String>,
}

#[derive(Clone)]
pub struct MockUpstream {
    pub base_url: String,
    pub state: Arc<Mutex<MockState>>,
}

impl MockUpstream {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(MockState::default()));
        let data = web::Data::new(state.clone());
        let port = serve_mock(move |routes| {
            routes
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/embeddings", web::post().to(embeddings))
                .route("/v1/images/generations", web::post().to(images))
                .route("/api/embed", web::post().to(ollama_embed))
                .route("/api/v1/embeddings", web::post().to(openrouter_embeddings))
                .route("/api/v3/embeddings", web::post().to(ark_embeddings))
                .route("/api/v3/images/generations", web::post().to(ark_images));
        });
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

    /// The paths of the requests to the per-provider routes, in order.
    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().paths.clone()
    }

    /// The server root (Ollama's base URL), without `/v1`.
    pub fn root_url(&self) -> String {
        self.base_url.trim_end_matches("/v1").to_string()
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
    if model == "huge-answer" {
        return huge_answer("chat.completion");
    }
    if model == "endless-stream" {
        return endless_stream();
    }
    let max_tokens = body["max_tokens"]
        .as_u64()
        .or(body["max_completion_tokens"].as_u64());
    let completion_tokens = match model.as_str() {
        "overshoot" => 5_000,
        "exact-hold" => max_tokens.expect("exact-hold needs max_tokens"),
        "largest-cap" => largest_cap(&body).expect("largest-cap needs a cap"),
        _ => COMPLETION_TOKENS,
    };
    let reasoning_tokens = if model == "largest-cap" {
        completion_tokens / 2
    } else {
        0
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
        "slow-1s" => tokio::time::sleep(Duration::from_millis(1_000)).await,
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
            "largest-cap" => (largest_cap_pieces(completion_tokens), 0),
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
            if model == "largest-cap" {
                last["usage"]["completion_tokens_details"]["reasoning_tokens"] =
                    json!(reasoning_tokens);
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
    if model == "largest-cap" {
        answer["choices"][0]["message"]["content"] =
            json!(largest_cap_pieces(completion_tokens).concat());
        answer["usage"]["completion_tokens_details"]["reasoning_tokens"] = json!(reasoning_tokens);
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
    if body["model"] == "huge-answer" {
        return huge_answer("list");
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
    if body["model"] == "huge-answer" {
        return huge_answer("list");
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

// ---------------------------------------------------------------------------
// Per-provider routes

/// Records a request to a per-provider route; `Some` is the answer when the
/// model asks for a failure (`conf-status-<N>`) or the key is wrong.
fn record(
    state: &Arc<Mutex<MockState>>,
    req: &HttpRequest,
    body: &Value,
    error_body: fn(u16, &str) -> HttpResponse,
) -> Option<HttpResponse> {
    {
        let mut state = state.lock().unwrap();
        state.requests.push(body.clone());
        state.paths.push(req.path().to_string());
    }
    if !authorized(req) {
        return Some(error_body(401, "Incorrect API key provided"));
    }
    if let Some(status) = body["model"]
        .as_str()
        .and_then(|m| m.strip_prefix("conf-status-"))
    {
        let status: u16 = status.parse().unwrap();
        return Some(error_body(status, &format!("mock {status} message")));
    }
    None
}

fn openai_error(status: u16, message: &str) -> HttpResponse {
    error(status, message, "invalid_request_error")
}

/// The `prompt_eval_count` Ollama's mock reports: two per input plus one per
/// whitespace-separated word.
pub fn ollama_prompt_eval_count(texts: &[&str]) -> u64 {
    texts
        .iter()
        .map(|t| t.split_whitespace().count() as u64 + 2)
        .sum()
}

fn ollama_error(status: u16, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({ "error": message }))
}

/// Ollama's native `POST /api/embed`. Ollama needs no key, but one sent must be
/// the mock's (as behind an authenticating proxy).
async fn ollama_embed(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return ollama_error(400, "invalid character in JSON");
    };
    {
        let mut state = state.lock().unwrap();
        state.requests.push(body.clone());
        state.paths.push(req.path().to_string());
    }
    if req.headers().contains_key("authorization") && !authorized(&req) {
        return ollama_error(401, "unauthorized");
    }
    let known = [
        "model",
        "input",
        "truncate",
        "options",
        "keep_alive",
        "dimensions",
    ];
    if let Some(key) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
    {
        return ollama_error(400, &format!("this mock refuses the unknown field {key:?}"));
    }
    let Some(model) = body["model"].as_str().filter(|m| !m.is_empty()) else {
        return ollama_error(400, "model is required");
    };
    if let Some(status) = model.strip_prefix("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return ollama_error(status, &format!("mock {status} message"));
    }
    if model == "not-pulled" {
        return ollama_error(
            404,
            &format!("model \"{model}\" not found, try pulling it first"),
        );
    }
    let texts: Vec<&str> = match &body["input"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => match items.iter().map(Value::as_str).collect::<Option<_>>() {
            Some(texts) => texts,
            None => return ollama_error(400, "invalid input type"),
        },
        _ => return ollama_error(400, "invalid input type"),
    };
    let dimensions = body["dimensions"].as_u64().unwrap_or(768) as usize;
    let embeddings: Vec<Vec<f64>> = texts
        .iter()
        .map(|t| {
            let mut v = vec![t.len() as f64];
            v.extend((1..dimensions).map(|i| if i % 2 == 0 { 0.25 } else { -0.5 }));
            v
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "model": model,
        "embeddings": embeddings,
        "total_duration": 14_143_917,
        "load_duration": 1_019_500,
        "prompt_eval_count": ollama_prompt_eval_count(&texts),
    }))
}

/// OpenRouter's embeddings usage (it also reports the cost in USD).
pub const OPENROUTER_EMBEDDING_PROMPT_TOKENS: u64 = 21;

/// OpenRouter's `POST /api/v1/embeddings`.
async fn openrouter_embeddings(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(answer) = record(&state, &req, &body, openai_error) {
        return answer;
    }
    let inputs = body["input"].as_array().map_or(1, Vec::len);
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "embedding": [0.0023, -0.0093, 0.0158], "index": i}))
        .collect();
    HttpResponse::Ok().json(json!({
        "id": "gen-emb-1700000000-mock",
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": OPENROUTER_EMBEDDING_PROMPT_TOKENS, "total_tokens": OPENROUTER_EMBEDDING_PROMPT_TOKENS, "cost": 0.00000042},
    }))
}

/// Ark's embeddings usage.
pub const ARK_EMBEDDING_PROMPT_TOKENS: u64 = 17;

fn ark_error(status: u16, message: &str) -> HttpResponse {
    let code = match status {
        400 => "InvalidParameter",
        401 => "AuthenticationError",
        429 => "RateLimitExceeded.EndpointRPMExceeded",
        _ => "InternalServiceError",
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(
        json!({"error": {"code": code, "message": message, "param": "", "type": "BadRequest"}}),
    )
}

/// Volcengine Ark's `POST /api/v3/embeddings` (Doubao embedding models).
async fn ark_embeddings(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(answer) = record(&state, &req, &body, ark_error) {
        return answer;
    }
    let inputs = body["input"].as_array().map_or(1, Vec::len);
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"embedding": [0.0312, -0.0176, 0.0044], "index": i, "object": "embedding"}))
        .collect();
    HttpResponse::Ok().json(json!({
        "created": 1_700_000_000,
        "data": data,
        "id": "021700000000000mockarkembedding",
        "model": body["model"],
        "object": "list",
        "usage": {"prompt_tokens": ARK_EMBEDDING_PROMPT_TOKENS, "total_tokens": ARK_EMBEDDING_PROMPT_TOKENS},
    }))
}

/// Volcengine Ark's `POST /api/v3/images/generations` (Seedream): one image per
/// call, `usage.generated_images` beside the data.
async fn ark_images(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(answer) = record(&state, &req, &body, ark_error) {
        return answer;
    }
    let known = [
        "model",
        "prompt",
        "response_format",
        "size",
        "seed",
        "guidance_scale",
        "watermark",
    ];
    if let Some(key) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
    {
        return ark_error(
            400,
            &format!("The parameter `{key}` specified in the request is not valid"),
        );
    }
    let item = if body["response_format"] == "b64_json" {
        json!({"b64_json": "iVBORw0KGgo=", "size": "1024x1024"})
    } else {
        json!({"url": "https://ark-content-generation-cn-beijing.tos-cn-beijing.volces.com/mock/0.jpeg", "size": "1024x1024"})
    };
    HttpResponse::Ok().json(json!({
        "model": body["model"],
        "created": 1_700_000_000,
        "data": [item],
        "usage": {"generated_images": 1, "output_tokens": 4096, "total_tokens": 4096},
    }))
}

// ---------------------------------------------------------------------------
// Answers without end

/// Size of a `huge-answer` answer: far past any limit of the hub's.
pub const HUGE_ANSWER_BYTES: usize = 500 * 1024 * 1024;

/// [`HUGE_ANSWER_BYTES`] of JSON (`{"object":…,"data":[{…},…]}`), sent in
/// chunks of about 64 KiB made one at a time, without a `content-length`.
fn huge_answer(object: &str) -> HttpResponse {
    let item = r#"{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,0.0158,0.0412]},"#;
    let chunk = Bytes::from(item.repeat(64 * 1024 / item.len()));
    let head = Bytes::from(format!(r#"{{"object":"{object}","data":["#));
    let tail = Bytes::from_static(br#"{"object":"embedding","index":0,"embedding":[]}]}"#);
    let chunks = HUGE_ANSWER_BYTES / chunk.len();
    let body = futures_util::stream::once(async move { head })
        .chain(futures_util::stream::iter(
            (0..chunks).map(move |_| chunk.clone()),
        ))
        .chain(futures_util::stream::once(async move { tail }))
        .map(Ok::<_, std::io::Error>);
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body)
}

/// A chat stream of text chunks that never ends (until the reader leaves).
fn endless_stream() -> HttpResponse {
    let frame = Bytes::from(chunk(
        "endless-stream",
        json!({"content": "more "}),
        Value::Null,
        false,
    ));
    let body = futures_util::stream::repeat(frame).map(Ok::<_, std::io::Error>);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}
