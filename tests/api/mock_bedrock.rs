//! A mock Amazon Bedrock runtime on 127.0.0.1, speaking the documented Converse
//! API: `POST /model/{modelId}/converse` answers Converse JSON,
//! `POST /model/{modelId}/converse-stream` answers AWS event-stream binary frames
//! (`application/vnd.amazon.eventstream`, written with aws-smithy-eventstream, so
//! with real CRCs), errors are `{"message": …}` with `x-amzn-ErrorType`.
//!
//! Every request must carry a valid SigV4 `Authorization` header for
//! [`MOCK_ACCESS_KEY_ID`] in [`MOCK_REGION`] and service `bedrock`; the signature
//! is recomputed from the request as received and compared. Anything else gets
//! 403 `{"message":"The security token included in the request is invalid."}`.
//! Like Bedrock, the mock refuses body fields Converse does not know.
//!
//! The model id picks a behaviour: the conformance names (`conf-text`,
//! `conf-tools`, `conf-slow`, `conf-die`, `conf-status-<N>`), plus for streams
//! `split-frames` (conf-text with every frame cut into several TCP writes),
//! `bad-crc` (a frame with a corrupted CRC after some text), `stream-exception`
//! (a `throttlingException` after some text) and `no-stop` (a clean end without
//! `messageStop`). Any other id answers like `conf-text`.
//!
//! `POST /model/{modelId}/invoke` (InvokeModel) speaks each model's own body,
//! chosen by model id as Bedrock does, and refuses fields the model does not
//! know: `amazon.titan-embed-*` (Titan Text Embeddings: `{"inputText",
//! "dimensions"?,"normalize"?}` → `{"embedding","inputTextTokenCount",
//! "embeddingsByType"}`, token count [`titan_token_count`]), `cohere.embed-*`
//! (`{"texts","input_type",…}` → `{"embeddings","id","response_type","texts"}`,
//! no token count unless [`MockBedrock::send_token_count_headers`]), and
//! `amazon.titan-image-generator-*` / `amazon.nova-canvas-*` (`TEXT_IMAGE` →
//! `{"images":[base64 PNG…]}`). An id containing `conf-status-<N>` fails with
//! status N and "mock N message".

use crate::helpers::serve_mock;
use actix_web::{web, HttpRequest, HttpResponse};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const MOCK_ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
pub const MOCK_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
pub const MOCK_REGION: &str = "us-east-1";
pub const STREAM_TEXT: [&str; 3] = ["Hel", "lo ", "there"];

/// `conf-text` usage, as Bedrock reports it (inputTokens excludes the cache).
pub const TEXT_INPUT_TOKENS: u64 = 12;
pub const TEXT_CACHE_READ_TOKENS: u64 = 5;
pub const TEXT_CACHE_WRITE_TOKENS: u64 = 3;
pub const TEXT_OUTPUT_TOKENS: u64 = 30;
/// `conf-tools` usage (no cache fields at all).
pub const TOOLS_INPUT_TOKENS: u64 = 20;
pub const TOOLS_OUTPUT_TOKENS: u64 = 15;

/// One request the mock accepted (signature valid).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The raw (still percent-encoded) path.
    pub path: String,
    /// The model id, decoded.
    pub model_id: String,
    pub stream: bool,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
pub struct MockState {
    pub requests: Vec<Recorded>,
    /// Why each request refused for its signature was refused.
    pub rejections: Vec<String>,
    /// Send `x-amzn-bedrock-input-token-count` on Cohere Embed answers too.
    pub cohere_token_header: bool,
}

#[derive(Clone)]
pub struct MockBedrock {
    pub base_url: String,
    pub state: Arc<Mutex<MockState>>,
}

impl MockBedrock {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(MockState::default()));
        let data = web::Data::new(state.clone());
        let port = serve_mock(move |routes| {
            routes
                .app_data(data.clone())
                .default_service(web::to(handle));
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }

    /// From now on, Cohere Embed answers carry the input token count header.
    pub fn send_token_count_headers(&self) {
        self.state.lock().unwrap().cohere_token_header = true;
    }
}

fn error(status: u16, error_type: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header((
            "x-amzn-ErrorType",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        ))
        .insert_header(("x-amzn-RequestId", "mock-request-error"))
        .json(json!({"message": message}))
}

fn error_type_for(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        401 => "UnrecognizedClientException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Result<&'a str, String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("missing header {name}"))
}

/// Checks the SigV4 `Authorization` header: its form, its scope, and the
/// signature itself, recomputed with aws-sigv4 from the request as received.
pub fn check_sigv4(req: &HttpRequest, body: &[u8]) -> Result<(), String> {
    let authorization = header(req, "authorization")?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("algorithm is not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for field in fields.split(", ") {
        match field.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(format!("unexpected field {field:?}")),
        }
    }
    let (credential, signed_headers, signature) = (
        credential.ok_or("no Credential")?,
        signed_headers.ok_or("no SignedHeaders")?,
        signature.ok_or("no Signature")?,
    );
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope[..] else {
        return Err(format!("malformed credential scope {credential:?}"));
    };
    if key_id != MOCK_ACCESS_KEY_ID {
        return Err(format!("unknown access key id {key_id:?}"));
    }
    if region != MOCK_REGION || service != "bedrock" || terminator != "aws4_request" {
        return Err(format!("wrong scope {credential:?}"));
    }
    let amz_date = header(req, "x-amz-date")?;
    let time = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| format!("malformed x-amz-date {amz_date:?}"))?;
    if date.len() != 8 || !amz_date.starts_with(date) {
        return Err(format!(
            "scope date {date:?} is not the date of {amz_date:?}"
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return Err(format!(
            "SignedHeaders {signed_headers:?} lack host or x-amz-date"
        ));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("signature {signature:?} is not 64 hex digits"));
    }
    let mut headers = Vec::new();
    for name in &names {
        headers.push((*name, header(req, name)?));
    }
    let host = header(req, "host")?;
    let url = format!(
        "http://{host}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let time: SystemTime = time.and_utc().into();
    let identity = aws_credential_types::Credentials::new(
        MOCK_ACCESS_KEY_ID,
        MOCK_SECRET_ACCESS_KEY,
        None,
        None,
        "mock",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(MOCK_REGION)
        .name("bedrock")
        .time(time)
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let expected = aws_sigv4::http_request::sign(request, &params)
        .map_err(|e| e.to_string())?
        .signature()
        .to_string();
    if expected != signature {
        return Err("signature does not match".into());
    }
    Ok(())
}

/// Fields a Converse request may have; Bedrock refuses any other.
const CONVERSE_FIELDS: [&str; 10] = [
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "promptVariables",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
];

fn validate_converse(body: &Value) -> Result<(), String> {
    let object = body.as_object().ok_or("body is not an object")?;
    if let Some(key) = object
        .keys()
        .find(|k| !CONVERSE_FIELDS.contains(&k.as_str()))
    {
        return Err(format!("extraneous key [{key}] is not permitted"));
    }
    let messages = body["messages"].as_array().ok_or("messages is required")?;
    if messages.is_empty() {
        return Err("messages must not be empty".into());
    }
    let mut last_role = "";
    for m in messages {
        let role = m["role"].as_str().ok_or("message without role")?;
        if !matches!(role, "user" | "assistant") {
            return Err(format!("invalid role {role}"));
        }
        if role == last_role {
            return Err("A conversation must alternate between user and assistant roles".into());
        }
        last_role = role;
        if m["content"].as_array().is_none_or(|c| c.is_empty()) {
            return Err("message content must be a non-empty array".into());
        }
    }
    if messages[0]["role"] != "user" {
        return Err("A conversation must start with a user message".into());
    }
    Ok(())
}

async fn handle(
    state: web::Data<Arc<Mutex<MockState>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(reason) = check_sigv4(&req, &body) {
        state.lock().unwrap().rejections.push(reason);
        return error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let path = req.uri().path().to_string();
    let route = path
        .strip_prefix("/model/")
        .and_then(|rest| rest.rsplit_once('/'));
    if let Some((id, "invoke")) = route {
        if req.method() != "POST" {
            return error(404, "UnknownOperationException", "Unknown operation");
        }
        let Some(model_id) =
            percent_decode(id).filter(|m| !m.contains('/') || m.starts_with("arn:"))
        else {
            return error(400, "ValidationException", "malformed model identifier");
        };
        return invoke_model(&state, &req, &path, &model_id, &body);
    }
    let (model_id, stream) = match route {
        Some((id, "converse")) if req.method() == "POST" => (id, false),
        Some((id, "converse-stream")) if req.method() == "POST" => (id, true),
        _ => return error(404, "UnknownOperationException", "Unknown operation"),
    };
    let Some(model_id) =
        percent_decode(model_id).filter(|m| !m.contains('/') || m.starts_with("arn:"))
    else {
        return error(400, "ValidationException", "malformed model identifier");
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(400, "ValidationException", "request body is not JSON"),
    };
    if let Err(message) = validate_converse(&body) {
        return error(400, "ValidationException", &message);
    }
    state.lock().unwrap().requests.push(Recorded {
        path: path.clone(),
        model_id: model_id.clone(),
        stream,
        body: body.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    });
    if let Some(status) = model_id.strip_prefix("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return error(
            status,
            error_type_for(status),
            &format!("mock {status} message"),
        );
    }
    if stream {
        converse_stream(&model_id)
    } else {
        converse(&model_id)
    }
}

fn text_usage() -> Value {
    json!({
        "inputTokens": TEXT_INPUT_TOKENS,
        "outputTokens": TEXT_OUTPUT_TOKENS,
        "totalTokens": TEXT_INPUT_TOKENS + TEXT_CACHE_READ_TOKENS + TEXT_CACHE_WRITE_TOKENS + TEXT_OUTPUT_TOKENS,
        "cacheReadInputTokens": TEXT_CACHE_READ_TOKENS,
        "cacheWriteInputTokens": TEXT_CACHE_WRITE_TOKENS,
    })
}

fn tools_usage() -> Value {
    json!({
        "inputTokens": TOOLS_INPUT_TOKENS,
        "outputTokens": TOOLS_OUTPUT_TOKENS,
        "totalTokens": TOOLS_INPUT_TOKENS + TOOLS_OUTPUT_TOKENS,
    })
}

fn converse(model_id: &str) -> HttpResponse {
    let (content, stop_reason, usage) = if model_id == "conf-tools" {
        (
            json!([
                {"text": "Let me check the weather."},
                {"toolUse": {"toolUseId": "tooluse_mock1", "name": "get_weather", "input": {"city": "Paris"}}}
            ]),
            "tool_use",
            tools_usage(),
        )
    } else {
        (json!([{"text": "Hello there"}]), "end_turn", text_usage())
    };
    HttpResponse::Ok()
        .insert_header(("x-amzn-RequestId", "mock-request-1"))
        .json(json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason,
            "usage": usage,
            "metrics": {"latencyMs": 123},
        }))
}

fn string_header(name: &'static str, value: &str) -> Header {
    Header::new(name, HeaderValue::String(value.to_string().into()))
}

/// One event-stream message, as Bedrock frames it (with its padding field `p`).
pub fn event_frame(event_type: &str, mut payload: Value) -> Bytes {
    payload["p"] = json!("abcdefghijklmnopq");
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(string_header(":event-type", event_type))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "event"));
    frame(&message)
}

/// An exception message of the stream (`:message-type` exception).
pub fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    let message = Message::new(Bytes::from(json!({"message": message}).to_string()))
        .add_header(string_header(":exception-type", exception_type))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "exception"));
    frame(&message)
}

pub fn frame(message: &Message) -> Bytes {
    let mut buffer = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(message, &mut buffer).unwrap();
    Bytes::from(buffer)
}

/// The frames of a text answer made of `pieces`.
pub fn text_frames(pieces: &[String]) -> Vec<Bytes> {
    let mut frames = vec![event_frame("messageStart", json!({"role": "assistant"}))];
    for piece in pieces {
        frames.push(event_frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
        ));
    }
    frames.push(event_frame(
        "contentBlockStop",
        json!({"contentBlockIndex": 0}),
    ));
    frames.push(event_frame(
        "messageStop",
        json!({"stopReason": "end_turn"}),
    ));
    frames.push(event_frame(
        "metadata",
        json!({"usage": text_usage(), "metrics": {"latencyMs": 321}}),
    ));
    frames
}

/// The frames of `conf-tools`: a text block, then a `get_weather` tool use whose
/// input arrives in two pieces.
pub fn tool_frames() -> Vec<Bytes> {
    vec![
        event_frame("messageStart", json!({"role": "assistant"})),
        event_frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Let me check the weather."}}),
        ),
        event_frame("contentBlockStop", json!({"contentBlockIndex": 0})),
        event_frame(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_mock1", "name": "get_weather"}}}),
        ),
        event_frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\""}}}),
        ),
        event_frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": ":\"Paris\"}"}}}),
        ),
        event_frame("contentBlockStop", json!({"contentBlockIndex": 1})),
        event_frame("messageStop", json!({"stopReason": "tool_use"})),
        event_frame(
            "metadata",
            json!({"usage": tools_usage(), "metrics": {"latencyMs": 321}}),
        ),
    ]
}

fn stream_response<S>(stream: S) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static,
{
    HttpResponse::Ok()
        .content_type("application/vnd.amazon.eventstream")
        .insert_header(("x-amzn-RequestId", "mock-request-1"))
        .streaming(stream)
}

/// Sends `(delay before, bytes)` pieces in order.
fn paced(
    pieces: Vec<(u64, Bytes)>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(pieces.into_iter(), |mut pieces| async move {
        let (delay_ms, bytes) = pieces.next()?;
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Some((Ok::<_, std::io::Error>(bytes), pieces))
    })
}

fn pieces(text: &[&str]) -> Vec<String> {
    text.iter().map(|s| s.to_string()).collect()
}

fn converse_stream(model_id: &str) -> HttpResponse {
    match model_id {
        "conf-tools" => stream_response(paced(tool_frames().into_iter().map(|f| (0, f)).collect())),
        "conf-slow" => {
            let words: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
            let frames = text_frames(&words);
            stream_response(paced(frames.into_iter().map(|f| (20, f)).collect()))
        }
        "conf-die" | "bad-crc" | "stream-exception" => {
            // Some text reaches the hub first; then the stream breaks.
            let frames = vec![
                event_frame("messageStart", json!({"role": "assistant"})),
                event_frame(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
                ),
            ];
            let head = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
            let model = model_id.to_string();
            let tail = futures_util::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match model.as_str() {
                    "bad-crc" => {
                        let mut bad = event_frame(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0, "delta": {"text": "lo "}}),
                        )
                        .to_vec();
                        let last = bad.len() - 1;
                        bad[last] ^= 0xff;
                        Ok(Bytes::from(bad))
                    }
                    "stream-exception" => Ok(exception_frame(
                        "throttlingException",
                        "Too many tokens, please wait before trying again.",
                    )),
                    _ => Err(std::io::Error::other("connection reset")),
                }
            });
            stream_response(head.chain(tail))
        }
        "split-frames" => {
            // Each frame in three writes, 5 ms apart, cutting through the prelude
            // and the payload.
            let mut out = Vec::new();
            for f in text_frames(&pieces(&STREAM_TEXT)) {
                let (a, b) = (5, f.len() / 2);
                out.push((5, f.slice(..a)));
                out.push((5, f.slice(a..b)));
                out.push((5, f.slice(b..)));
            }
            stream_response(paced(out))
        }
        "no-stop" => {
            let mut frames = text_frames(&pieces(&STREAM_TEXT));
            frames.truncate(frames.len() - 2);
            stream_response(paced(frames.into_iter().map(|f| (0, f)).collect()))
        }
        _ => stream_response(paced(
            text_frames(&pieces(&STREAM_TEXT))
                .into_iter()
                .map(|f| (0, f))
                .collect(),
        )),
    }
}

// ---------------------------------------------------------------------------
// InvokeModel

/// A 1x1 PNG, as the image models' base64 output.
pub const PNG_1X1_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// The `inputTextTokenCount` the mock reports for a Titan input: three per
/// whitespace-separated word, plus two (deliberately unlike the hub's
/// bytes-per-token estimate).
pub fn titan_token_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64 * 3 + 2
}

/// The input token count header of a Cohere Embed answer, when sent.
pub fn cohere_token_count(texts: &[&str]) -> u64 {
    texts.iter().map(|t| t.len() as u64 + 1).sum()
}

/// A deterministic vector for a text: its length, then a fixed pattern.
pub fn mock_vector(text: &str, dimensions: usize) -> Vec<f64> {
    let pattern = [0.5, -0.25, 0.125];
    let mut values = vec![text.len() as f64];
    values.extend((1..dimensions).map(|i| pattern[(i - 1) % pattern.len()]));
    values
}

fn unknown_key(body: &Value, known: &[&str]) -> Result<(), String> {
    let object = body.as_object().ok_or("body is not a JSON object")?;
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(format!("extraneous key [{key}] is not permitted")),
        None => Ok(()),
    }
}

fn invoke_model(
    state: &Arc<Mutex<MockState>>,
    req: &HttpRequest,
    path: &str,
    model_id: &str,
    raw: &[u8],
) -> HttpResponse {
    if req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        != Some("application/json")
    {
        return error(
            400,
            "ValidationException",
            "The provided Content-Type is not supported",
        );
    }
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(_) => {
            return error(
                400,
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
            )
        }
    };
    state.lock().unwrap().requests.push(Recorded {
        path: path.to_string(),
        model_id: model_id.to_string(),
        stream: false,
        body: body.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    });
    if let Some((_, status)) = model_id.split_once("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return error(
            status,
            error_type_for(status),
            &format!("mock {status} message"),
        );
    }
    let id = model_id
        .split_once('.')
        .filter(|(prefix, _)| matches!(*prefix, "us" | "eu" | "apac" | "global"))
        .map_or(model_id, |(_, rest)| rest);
    let answer = if id.starts_with("amazon.titan-embed-text") {
        titan_embed(id, &body)
    } else if id.starts_with("cohere.embed") {
        let header = state.lock().unwrap().cohere_token_header;
        return match cohere_embed(id, &body) {
            Ok((answer, tokens)) => {
                let mut response = HttpResponse::Ok();
                response.insert_header(("x-amzn-RequestId", "mock-invoke-1"));
                if header {
                    response
                        .insert_header(("x-amzn-bedrock-input-token-count", tokens.to_string()));
                }
                response.json(answer)
            }
            Err(message) => error(400, "ValidationException", &message),
        };
    } else if id.starts_with("amazon.titan-image-generator") || id.starts_with("amazon.nova-canvas")
    {
        text_image(id, &body)
    } else {
        Err(format!(
            "The provided model identifier {model_id} is invalid or does not support InvokeModel in this mock."
        ))
    };
    match answer {
        Ok((answer, tokens)) => {
            let mut response = HttpResponse::Ok();
            response.insert_header(("x-amzn-RequestId", "mock-invoke-1"));
            if let Some(tokens) = tokens {
                response.insert_header(("x-amzn-bedrock-input-token-count", tokens.to_string()));
            }
            response.json(answer)
        }
        Err(message) => error(400, "ValidationException", &message),
    }
}

/// Titan Text Embeddings (G1 takes `inputText` only; V2 also `dimensions`
/// 256/512/1024, `normalize`, `embeddingTypes`).
fn titan_embed(id: &str, body: &Value) -> Result<(Value, Option<u64>), String> {
    let v2 = id.starts_with("amazon.titan-embed-text-v2");
    let known: &[&str] = if v2 {
        &["inputText", "dimensions", "normalize", "embeddingTypes"]
    } else {
        &["inputText"]
    };
    unknown_key(body, known)?;
    let text = body["inputText"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("inputText is required and must be a non-empty string")?;
    let dimensions = match &body["dimensions"] {
        Value::Null => 1024,
        d => match d.as_u64() {
            Some(d @ (256 | 512 | 1024)) => d as usize,
            _ => return Err("dimensions must be one of 256, 512, 1024".into()),
        },
    };
    if !body["normalize"].is_null() && !body["normalize"].is_boolean() {
        return Err("normalize must be a boolean".into());
    }
    let vector = mock_vector(text, if v2 { dimensions } else { 1536 });
    let tokens = titan_token_count(text);
    let mut answer = json!({"embedding": vector, "inputTextTokenCount": tokens});
    if v2 {
        answer["embeddingsByType"] = json!({"float": vector});
    }
    Ok((answer, Some(tokens)))
}

/// Cohere Embed v3 (`texts`, `input_type` required, `truncate`,
/// `embedding_types`) and v4 (also `output_dimension`, `max_tokens`).
fn cohere_embed(id: &str, body: &Value) -> Result<(Value, u64), String> {
    let v4 = id.starts_with("cohere.embed-v4");
    let mut known = vec![
        "texts",
        "images",
        "input_type",
        "truncate",
        "embedding_types",
    ];
    if v4 {
        known.extend(["inputs", "output_dimension", "max_tokens"]);
    }
    unknown_key(body, &known)?;
    let input_type = body["input_type"]
        .as_str()
        .ok_or("input_type is required")?;
    if !matches!(
        input_type,
        "search_document" | "search_query" | "classification" | "clustering" | "image"
    ) {
        return Err(format!("invalid input_type {input_type}"));
    }
    let texts: Vec<&str> = body["texts"]
        .as_array()
        .ok_or("texts is required")?
        .iter()
        .map(|t| t.as_str().ok_or("texts must be strings"))
        .collect::<Result<_, _>>()?;
    if texts.is_empty() || texts.len() > 96 {
        return Err("texts must hold 1 to 96 strings".into());
    }
    if texts.iter().any(|t| t.chars().count() > 2048) {
        return Err("a text is longer than 2048 characters".into());
    }
    let dimensions = if v4 {
        body["output_dimension"].as_u64().unwrap_or(1536) as usize
    } else {
        1024
    };
    let vectors: Vec<Vec<f64>> = texts.iter().map(|t| mock_vector(t, dimensions)).collect();
    let answer = if v4 {
        json!({"id": "mock-cohere-embed-1", "embeddings": {"float": vectors}, "response_type": "embeddings_by_type", "texts": texts})
    } else {
        json!({"id": "mock-cohere-embed-1", "embeddings": vectors, "response_type": "embeddings_floats", "texts": texts})
    };
    Ok((answer, cohere_token_count(&texts)))
}

/// Titan Image Generator / Nova Canvas, `TEXT_IMAGE` only.
fn text_image(id: &str, body: &Value) -> Result<(Value, Option<u64>), String> {
    unknown_key(
        body,
        &["taskType", "textToImageParams", "imageGenerationConfig"],
    )?;
    if body["taskType"] != "TEXT_IMAGE" {
        return Err("this mock only generates images from text (taskType TEXT_IMAGE)".into());
    }
    let params = &body["textToImageParams"];
    unknown_key(
        params,
        &[
            "text",
            "negativeText",
            "style",
            "conditionImage",
            "controlMode",
            "controlStrength",
        ],
    )?;
    let max_prompt = if id.starts_with("amazon.nova-canvas") {
        1024
    } else {
        512
    };
    let text = params["text"].as_str().unwrap_or("");
    if text.is_empty() || text.chars().count() > max_prompt {
        return Err(format!(
            "textToImageParams.text must hold 1 to {max_prompt} characters"
        ));
    }
    let config = &body["imageGenerationConfig"];
    let n = if config.is_null() {
        1
    } else {
        unknown_key(
            config,
            &[
                "numberOfImages",
                "width",
                "height",
                "quality",
                "cfgScale",
                "seed",
            ],
        )?;
        if !config["quality"].is_null()
            && !matches!(config["quality"].as_str(), Some("standard" | "premium"))
        {
            return Err("quality must be standard or premium".into());
        }
        for side in ["width", "height"] {
            if let Some(v) = config.get(side) {
                if !v
                    .as_u64()
                    .is_some_and(|v| (256..=4096).contains(&v) && v % 16 == 0)
                {
                    return Err(format!("{side} must be a multiple of 16 from 256 to 4096"));
                }
            }
        }
        if config.get("width").is_some() != config.get("height").is_some() {
            return Err("width and height go together".into());
        }
        match &config["numberOfImages"] {
            Value::Null => 1,
            v => v
                .as_u64()
                .filter(|n| (1..=5).contains(n))
                .ok_or("numberOfImages must be from 1 to 5")?,
        }
    };
    let images: Vec<&str> = (0..n).map(|_| PNG_1X1_BASE64).collect();
    Ok((json!({"images": images, "error": null}), None))
}
