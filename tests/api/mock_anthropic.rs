//! A mock Anthropic Messages API on 127.0.0.1, speaking the documented wire
//! format: `POST /v1/messages` authenticated by `x-api-key` and versioned by
//! `anthropic-version`; a `message` object as JSON; or, with `"stream": true`,
//! named server-sent events (`event: <name>` then `data: <json with the same
//! type>`, each frame ended by a blank line): `message_start`, `ping`,
//! `content_block_start`, `content_block_delta` (`text_delta`,
//! `input_json_delta`), `content_block_stop`, `message_delta` (stop reason and the
//! cumulative `output_tokens`), `message_stop`; and error bodies of the shape
//! `{"type":"error","error":{"type":…,"message":…}}`.
//!
//! It implements the conformance model names (see conformance.rs): `conf-text`,
//! `conf-tools`, `conf-slow`, `conf-die` and `conf-status-<N>`; and
//! `huge-answer` (a message of [`HUGE_ANSWER_BYTES`], made as it is sent) and
//! `endless-stream` (text events that never stop).

use crate::helpers::serve_mock;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MOCK_API_KEY: &str = "sk-ant-mock-upstream-secret-4d2b8e6a1c";
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `conf-text`'s usage: uncached input, cache writes, cache reads, output.
pub const TEXT_INPUT_TOKENS: u64 = 12;
pub const TEXT_CACHE_CREATION_TOKENS: u64 = 7;
pub const TEXT_CACHE_READ_TOKENS: u64 = 5;
pub const TEXT_OUTPUT_TOKENS: u64 = 30;
/// `conf-tools`'s usage.
pub const TOOLS_INPUT_TOKENS: u64 = 380;
pub const TOOLS_CACHE_CREATION_TOKENS: u64 = 0;
pub const TOOLS_CACHE_READ_TOKENS: u64 = 9;
pub const TOOLS_OUTPUT_TOKENS: u64 = 41;

pub const STREAM_TEXT: [&str; 3] = ["Hel", "lo ", "there"];
pub const TOOL_INPUT_PIECES: [&str; 3] = [r#"{"ci"#, r#"ty": "Pa"#, r#"ris"}"#];

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub api_key: Option<String>,
    pub anthropic_version: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct MockState {
    pub requests: Vec<RecordedRequest>,
}

#[derive(Clone)]
pub struct MockAnthropic {
    /// The server root (the provider appends `/v1/messages`).
    pub base_url: String,
    pub state: Arc<Mutex<MockState>>,
}

impl MockAnthropic {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(MockState::default()));
        let data = web::Data::new(state.clone());
        let port = serve_mock(move |routes| {
            routes
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(1 << 20))
                .route("/v1/messages", web::post().to(messages));
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error(status: u16, message: &str) -> HttpResponse {
    let body = format!(
        r#"{{"type":"error","error":{{"type":"{}","message":{}}},"request_id":"req_mock01"}}"#,
        error_type(status),
        Value::from(message)
    );
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header(("request-id", "req_mock01"))
        .content_type("application/json")
        .body(body)
}

/// One server-sent event, as Anthropic frames it.
fn frame(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn usage_json(input: u64, cache_creation: u64, cache_read: u64, output: u64) -> String {
    format!(
        r#"{{"input_tokens":{input},"cache_creation_input_tokens":{cache_creation},"cache_read_input_tokens":{cache_read},"cache_creation":{{"ephemeral_5m_input_tokens":{cache_creation},"ephemeral_1h_input_tokens":0}},"output_tokens":{output},"service_tier":"standard"}}"#
    )
}

fn message_start(model: &str, usage: &str) -> String {
    frame(
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":"msg_mock01","type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{usage}}}}}"#,
            Value::from(model)
        ),
    )
}

fn ping() -> String {
    frame("ping", r#"{"type": "ping"}"#)
}

fn text_block_start(index: u64) -> String {
    frame(
        "content_block_start",
        &format!(
            r#"{{"type":"content_block_start","index":{index},"content_block":{{"type":"text","text":""}}}}"#
        ),
    )
}

fn text_delta(index: u64, text: &str) -> String {
    frame(
        "content_block_delta",
        &format!(
            r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":{}}}}}"#,
            Value::from(text)
        ),
    )
}

fn block_stop(index: u64) -> String {
    frame(
        "content_block_stop",
        &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
    )
}

fn message_delta(stop_reason: &str, usage: &str) -> String {
    frame(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop_reason}","stop_sequence":null}},"usage":{usage}}}"#
        ),
    )
}

fn message_stop() -> String {
    frame("message_stop", r#"{"type":"message_stop"}"#)
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Frames sent one after another, each after its delay.
fn sse(frames: Vec<(u64, String)>) -> HttpResponse {
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
        let (delay_ms, frame) = frames.next()?;
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(frame)), frames))
    });
    sse_response(stream)
}

fn sse_response(
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("request-id", "req_mock01"))
        .streaming(stream)
}

/// What Anthropic checks of every request before it runs the model.
fn invalid_request(body: &Value) -> Option<String> {
    if !body["model"].is_string() {
        return Some("model: Field required".into());
    }
    if !body["max_tokens"].is_u64() {
        return Some("max_tokens: Field required".into());
    }
    let Some(messages) = body["messages"].as_array() else {
        return Some("messages: Field required".into());
    };
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Some(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if !(message["content"].is_string() || message["content"].is_array()) {
            return Some(format!("messages.{i}.content: Field required"));
        }
    }
    None
}

async fn messages(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let body = body.into_inner();
    let api_key = header(&req, "x-api-key");
    let anthropic_version = header(&req, "anthropic-version");
    state.lock().unwrap().requests.push(RecordedRequest {
        api_key: api_key.clone(),
        anthropic_version: anthropic_version.clone(),
        content_type: header(&req, "content-type"),
        body: body.clone(),
    });
    if api_key.as_deref() != Some(MOCK_API_KEY) {
        return error(401, "invalid x-api-key");
    }
    if anthropic_version.as_deref() != Some(ANTHROPIC_VERSION) {
        return error(400, "anthropic-version: header is required");
    }
    if let Some(message) = invalid_request(&body) {
        return error(400, &message);
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    if let Some(status) = model.strip_prefix("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return error(status, &format!("mock {status} message"));
    }
    let stream = body["stream"].as_bool() == Some(true);
    match (model.as_str(), stream) {
        ("conf-tools", false) => tools_json(),
        ("conf-tools", true) => tools_stream(),
        ("conf-die", true) => die_stream(),
        ("huge-answer", false) => huge_answer(),
        ("endless-stream", true) => endless_stream(),
        ("conf-slow", true) => {
            let pieces: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
            text_stream(&model, &pieces, 20)
        }
        (_, true) => {
            let pieces: Vec<String> = STREAM_TEXT.iter().map(|s| s.to_string()).collect();
            text_stream(&model, &pieces, 0)
        }
        (_, false) => text_json(&model),
    }
}

fn text_usage(output: u64) -> String {
    usage_json(
        TEXT_INPUT_TOKENS,
        TEXT_CACHE_CREATION_TOKENS,
        TEXT_CACHE_READ_TOKENS,
        output,
    )
}

fn text_json(model: &str) -> HttpResponse {
    let body = format!(
        r#"{{"id":"msg_mock01","type":"message","role":"assistant","model":{},"content":[{{"type":"text","text":"Hello there"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{}}}"#,
        Value::from(model),
        text_usage(TEXT_OUTPUT_TOKENS)
    );
    HttpResponse::Ok()
        .insert_header(("request-id", "req_mock01"))
        .content_type("application/json")
        .body(body)
}

/// A text answer streamed in `pieces`, `delay_ms` apart: input and cache usage in
/// `message_start` (with `output_tokens: 1`), the cumulative output in
/// `message_delta`.
fn text_stream(model: &str, pieces: &[String], delay_ms: u64) -> HttpResponse {
    let mut frames = vec![
        (0, message_start(model, &text_usage(1))),
        (0, text_block_start(0)),
        (0, ping()),
    ];
    for piece in pieces {
        frames.push((delay_ms, text_delta(0, piece)));
    }
    frames.push((0, block_stop(0)));
    frames.push((
        0,
        message_delta(
            "end_turn",
            &format!(r#"{{"output_tokens":{TEXT_OUTPUT_TOKENS}}}"#),
        ),
    ));
    frames.push((0, message_stop()));
    sse(frames)
}

/// `conf-die`: some text, then the connection breaks.
fn die_stream() -> HttpResponse {
    let mut frames = vec![
        message_start("conf-die", &text_usage(1)),
        text_block_start(0),
        ping(),
    ];
    for piece in STREAM_TEXT {
        frames.push(text_delta(0, piece));
    }
    // Let the text reach the hub, then break the connection.
    let stream = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|f| Ok::<_, std::io::Error>(Bytes::from(f))),
    )
    .chain(futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(std::io::Error::other("connection reset"))
    }));
    sse_response(stream)
}

fn tools_usage(output: u64) -> String {
    usage_json(
        TOOLS_INPUT_TOKENS,
        TOOLS_CACHE_CREATION_TOKENS,
        TOOLS_CACHE_READ_TOKENS,
        output,
    )
}

/// `conf-tools`: a `tool_use` of `get_weather({"city":"Paris"})`.
fn tools_json() -> HttpResponse {
    let body = format!(
        r#"{{"id":"msg_mock02","type":"message","role":"assistant","model":"conf-tools","content":[{{"type":"text","text":"I'll check the weather in Paris."}},{{"type":"tool_use","id":"toolu_mock01","name":"get_weather","input":{{"city":"Paris"}}}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{}}}"#,
        tools_usage(TOOLS_OUTPUT_TOKENS)
    );
    HttpResponse::Ok()
        .insert_header(("request-id", "req_mock02"))
        .content_type("application/json")
        .body(body)
}

/// `conf-tools` streamed: a short text block, then the tool_use block whose input
/// arrives as `input_json_delta` pieces. Its `message_delta` repeats the input and
/// cache counts, as newer API versions do.
fn tools_stream() -> HttpResponse {
    let mut frames = vec![
        message_start("conf-tools", &tools_usage(1)),
        text_block_start(0),
        ping(),
        text_delta(0, "I'll check the weather in Paris."),
        block_stop(0),
        frame(
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_mock01","name":"get_weather","input":{}}}"#,
        ),
        frame(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        ),
    ];
    for piece in TOOL_INPUT_PIECES {
        frames.push(frame(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":{}}}}}"#,
                Value::from(piece)
            ),
        ));
    }
    frames.push(block_stop(1));
    frames.push(message_delta(
        "tool_use",
        &format!(
            r#"{{"input_tokens":{TOOLS_INPUT_TOKENS},"cache_creation_input_tokens":{TOOLS_CACHE_CREATION_TOKENS},"cache_read_input_tokens":{TOOLS_CACHE_READ_TOKENS},"output_tokens":{TOOLS_OUTPUT_TOKENS}}}"#
        ),
    ));
    frames.push(message_stop());
    sse(frames.into_iter().map(|f| (0, f)).collect())
}

/// Size of a `huge-answer` message: far past any limit of the hub's.
pub const HUGE_ANSWER_BYTES: usize = 500 * 1024 * 1024;

/// A text message of [`HUGE_ANSWER_BYTES`], sent in chunks of about 64 KiB made
/// one at a time, without a `content-length`.
fn huge_answer() -> HttpResponse {
    let head = Bytes::from_static(
        br#"{"id":"msg_huge","type":"message","role":"assistant","model":"huge-answer","content":[{"type":"text","text":""#,
    );
    let chunk = Bytes::from("more ".repeat(64 * 1024 / 5));
    let tail = Bytes::from(format!(
        r#""}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{}}}"#,
        text_usage(TEXT_OUTPUT_TOKENS)
    ));
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

/// A text stream that never ends (until the reader leaves).
fn endless_stream() -> HttpResponse {
    let start = [
        message_start("endless-stream", &text_usage(1)),
        text_block_start(0),
    ]
    .concat();
    let delta = Bytes::from(text_delta(0, "more "));
    let body = futures_util::stream::once(async move { Bytes::from(start) })
        .chain(futures_util::stream::repeat(delta))
        .map(Ok::<_, std::io::Error>);
    sse_response(body)
}
