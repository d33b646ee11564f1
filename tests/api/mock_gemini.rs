//! A mock Google Gemini API (`/v1beta`) on 127.0.0.1, speaking the documented wire
//! format: `models/{model}:generateContent` answers a `GenerateContentResponse`
//! (`candidates[].content.parts`, `finishReason`, `usageMetadata`, camelCase),
//! `:streamGenerateContent?alt=sse` streams `data: {GenerateContentResponse}` frames
//! (CRLF-separated, no `[DONE]`; every chunk carries the cumulative
//! `usageMetadata`), `:batchEmbedContents` answers `{"embeddings":[{"values"}]}`,
//! and errors are Google's `{"error":{"code","message","status"}}`.
//!
//! Like the real API it wants the key in `x-goog-api-key` (a wrong key is a 400
//! with reason `API_KEY_INVALID`, a missing one a 403) and refuses request fields
//! it does not know, so a request translated with OpenAI's names fails here.
//!
//! Model names (see conformance.rs): `conf-text` ("Hello there"; its usage has
//! cached, thinking and tool-use prompt tokens), `conf-tools` (calls
//! `get_weather({"city":"Paris"})`), `conf-slow` (200 chunks, 20 ms apart),
//! `conf-die` (some text, then the connection breaks), `conf-status-<N>` (fails
//! with status N, "mock N message"); also `conf-cut-short` (a stream that ends
//! cleanly before any `finishReason`). Any model embeds. `huge-answer` answers
//! any action with [`HUGE_ANSWER_BYTES`] of JSON made as it is sent;
//! `endless-stream` streams text that never stops.
//!
//! `:predict` is Imagen: `{"instances":[{"prompt"}],"parameters":{"sampleCount",…}}`
//! answers `{"predictions":[{"bytesBase64Encoded","mimeType"}]}` (`sampleCount`
//! 1 to 4). `conf-filtered` leaves one image out as Google's filters do (a
//! prediction with `raiFilteredReason` only, when `includeRaiReason` is set);
//! `conf-all-filtered` answers `{}`.

use crate::helpers::serve_mock;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MOCK_GEMINI_KEY: &str = "AIzaSyMock-gemini-upstream-secret-5c2e7a9d";

/// `conf-text` usage: the prompt count includes the cached tokens; the tool-use
/// prompt and the thoughts are counted apart.
pub const TEXT_PROMPT_TOKENS: u64 = 40;
pub const TEXT_CACHED_TOKENS: u64 = 16;
pub const TEXT_TOOL_USE_PROMPT_TOKENS: u64 = 6;
pub const TEXT_CANDIDATES_TOKENS: u64 = 9;
pub const TEXT_THOUGHTS_TOKENS: u64 = 5;
/// `conf-tools` usage (no tool-use prompt tokens: the field is omitted, as zero
/// fields are).
pub const TOOLS_PROMPT_TOKENS: u64 = 52;
pub const TOOLS_CACHED_TOKENS: u64 = 20;
pub const TOOLS_CANDIDATES_TOKENS: u64 = 11;
pub const TOOLS_THOUGHTS_TOKENS: u64 = 7;

pub const STREAM_TEXT: [&str; 3] = ["Hel", "lo ", "there"];
pub const THOUGHT_SIGNATURE: &str = "CiQBcsjafMockThoughtSignature0123456789==";

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub query: String,
    pub api_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct MockGeminiState {
    pub requests: Vec<RecordedRequest>,
}

#[derive(Clone)]
pub struct MockGemini {
    /// Up to the API version, as a provider's `base_url`.
    pub base_url: String,
    pub state: Arc<Mutex<MockGeminiState>>,
}

impl MockGemini {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(MockGeminiState::default()));
        let data = web::Data::new(state.clone());
        let port = serve_mock(move |routes| {
            routes
                .app_data(data.clone())
                // `{model_action}` is one path segment such as `conf-text:generateContent`.
                .route("/v1beta/models/{model_action}", web::post().to(handle));
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1beta"),
            state,
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn error_body(code: u16, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": google_status(code)}})
}

fn error(code: u16, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
        .json(error_body(code, message))
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    error(400, &message.into())
}

/// The message of a 400 INVALID_ARGUMENT refusal.
fn refusal(message: impl Into<String>) -> String {
    message.into()
}

/// Google's answer to an unknown field (it parses requests strictly).
fn unknown_fields(object: &Value, known: &[&str], at: &str) -> Result<(), String> {
    let Some(object) = object.as_object() else {
        return Err(refusal(format!(
            "Invalid JSON payload received. {at} must be an object."
        )));
    };
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(refusal(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\" at '{at}': Cannot find field."
        ))),
        None => Ok(()),
    }
}

const PART_DATA_FIELDS: [&str; 7] = [
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];

fn check_parts(parts: &Value, at: &str) -> Result<(), String> {
    let Some(parts) = parts.as_array().filter(|p| !p.is_empty()) else {
        return Err(refusal(format!(
            "* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
        )));
    };
    let mut known = PART_DATA_FIELDS.to_vec();
    known.extend(["thought", "thoughtSignature", "videoMetadata"]);
    for part in parts {
        unknown_fields(part, &known, &format!("{at}.parts[0]"))?;
        let data = PART_DATA_FIELDS
            .iter()
            .filter(|f| part.get(**f).is_some())
            .count();
        if data != 1 {
            return Err(refusal(format!(
                "* GenerateContentRequest.{at}.parts: a part must hold exactly one kind of data"
            )));
        }
        if let Some(inline) = part.get("inlineData") {
            unknown_fields(inline, &["mimeType", "data"], "inline_data")?;
        }
        if let Some(file) = part.get("fileData") {
            unknown_fields(file, &["mimeType", "fileUri"], "file_data")?;
        }
        if let Some(call) = part.get("functionCall") {
            unknown_fields(call, &["id", "name", "args"], "function_call")?;
            if !call["args"].is_object() && !call["args"].is_null() {
                return Err(refusal("function_call.args must be an object"));
            }
        }
        if let Some(response) = part.get("functionResponse") {
            unknown_fields(response, &["id", "name", "response"], "function_response")?;
            if !response["response"].is_object() || !response["name"].is_string() {
                return Err(refusal(
                    "function_response needs a name and a response object",
                ));
            }
        }
    }
    Ok(())
}

/// Validates a `GenerateContentRequest` the way the API does.
fn check_generate_request(body: &Value) -> Result<(), String> {
    unknown_fields(
        body,
        &[
            "contents",
            "tools",
            "toolConfig",
            "safetySettings",
            "systemInstruction",
            "generationConfig",
            "cachedContent",
        ],
        "",
    )?;
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Err(refusal(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    };
    for content in contents {
        unknown_fields(content, &["role", "parts"], "contents[0]")?;
        if !matches!(content["role"].as_str(), Some("user" | "model")) {
            return Err(refusal("Please use a valid role: user, model."));
        }
        check_parts(&content["parts"], "contents[0]")?;
    }
    if let Some(system) = body.get("systemInstruction") {
        unknown_fields(system, &["role", "parts"], "system_instruction")?;
        check_parts(&system["parts"], "system_instruction")?;
    }
    if let Some(config) = body.get("generationConfig") {
        unknown_fields(
            config,
            &[
                "stopSequences",
                "responseMimeType",
                "responseSchema",
                "responseJsonSchema",
                "responseModalities",
                "candidateCount",
                "maxOutputTokens",
                "temperature",
                "topP",
                "topK",
                "seed",
                "presencePenalty",
                "frequencyPenalty",
                "responseLogprobs",
                "logprobs",
                "thinkingConfig",
                "mediaResolution",
            ],
            "generation_config",
        )?;
    }
    if let Some(tools) = body.get("tools") {
        for tool in tools.as_array().into_iter().flatten() {
            unknown_fields(
                tool,
                &[
                    "functionDeclarations",
                    "googleSearch",
                    "codeExecution",
                    "urlContext",
                ],
                "tools[0]",
            )?;
            for declaration in tool["functionDeclarations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                unknown_fields(
                    declaration,
                    &[
                        "name",
                        "description",
                        "parameters",
                        "parametersJsonSchema",
                        "response",
                        "behavior",
                    ],
                    "tools[0].function_declarations[0]",
                )?;
            }
        }
    }
    if let Some(config) = body.get("toolConfig") {
        unknown_fields(config, &["functionCallingConfig"], "tool_config")?;
        let calling = &config["functionCallingConfig"];
        unknown_fields(
            calling,
            &["mode", "allowedFunctionNames"],
            "function_calling_config",
        )?;
        if !matches!(
            calling["mode"].as_str(),
            Some("AUTO" | "ANY" | "NONE" | "VALIDATED")
        ) {
            return Err(refusal(
                "Invalid value at 'tool_config.function_calling_config.mode'",
            ));
        }
    }
    Ok(())
}

fn text_usage(candidates_tokens: u64) -> Value {
    json!({
        "promptTokenCount": TEXT_PROMPT_TOKENS,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": TEXT_PROMPT_TOKENS + TEXT_TOOL_USE_PROMPT_TOKENS + candidates_tokens + TEXT_THOUGHTS_TOKENS,
        "cachedContentTokenCount": TEXT_CACHED_TOKENS,
        "toolUsePromptTokenCount": TEXT_TOOL_USE_PROMPT_TOKENS,
        "thoughtsTokenCount": TEXT_THOUGHTS_TOKENS,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": TEXT_PROMPT_TOKENS}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": TEXT_CACHED_TOKENS}],
        "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": TEXT_TOOL_USE_PROMPT_TOKENS}],
    })
}

fn tools_usage() -> Value {
    json!({
        "promptTokenCount": TOOLS_PROMPT_TOKENS,
        "candidatesTokenCount": TOOLS_CANDIDATES_TOKENS,
        "totalTokenCount": TOOLS_PROMPT_TOKENS + TOOLS_CANDIDATES_TOKENS + TOOLS_THOUGHTS_TOKENS,
        "cachedContentTokenCount": TOOLS_CACHED_TOKENS,
        "thoughtsTokenCount": TOOLS_THOUGHTS_TOKENS,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": TOOLS_PROMPT_TOKENS}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": TOOLS_CACHED_TOKENS}],
    })
}

/// One `GenerateContentResponse`.
fn response(model: &str, parts: Value, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = json!(finish);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "mockResp-7Ue2aPqLbM",
    })
}

fn frame(chunk: &Value) -> String {
    format!("data: {chunk}\r\n\r\n")
}

fn sse(frames: Vec<(u64, String)>) -> HttpResponse {
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
        let (delay_ms, frame) = frames.next()?;
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(frame)), frames))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(stream)
}

fn function_call_part() -> Value {
    json!({
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
        "thoughtSignature": THOUGHT_SIGNATURE,
    })
}

async fn handle(
    state: web::Data<Arc<Mutex<MockGeminiState>>>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let api_key = req
        .headers()
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return bad_request(format!("Invalid JSON payload received. {e}"));
        }
    };
    state.lock().unwrap().requests.push(RecordedRequest {
        path: req.path().to_string(),
        query: req.query_string().to_string(),
        api_key: api_key.clone(),
        body: body.clone(),
    });
    match api_key.as_deref() {
        None => {
            return error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            )
        }
        Some(MOCK_GEMINI_KEY) => {}
        Some(_) => {
            let mut body = error_body(400, "API key not valid. Please pass a valid API key.");
            body["error"]["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }]);
            return HttpResponse::BadRequest().json(body);
        }
    }
    let Some((model, action)) = path.split_once(':') else {
        return error(404, "The requested URL was not found on this server.");
    };
    match (model, action) {
        ("huge-answer", _) => return huge_answer(),
        ("endless-stream", "streamGenerateContent") => return endless_stream(),
        _ => {}
    }
    match action {
        "generateContent" => generate(model, &body, false, ""),
        "streamGenerateContent" => generate(model, &body, true, req.query_string()),
        "batchEmbedContents" => embed(model, &body),
        "predict" => predict(model, &body),
        _ => error(404, "The requested URL was not found on this server."),
    }
}

fn generate(model: &str, body: &Value, stream: bool, query: &str) -> HttpResponse {
    if let Err(refused) = check_generate_request(body) {
        return bad_request(refused);
    }
    if let Some(status) = model.strip_prefix("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return error(status, &format!("mock {status} message"));
    }
    if stream && !query.split('&').any(|p| p == "alt=sse") {
        return bad_request("this mock streams only with alt=sse");
    }
    match model {
        "conf-tools" => {
            let declared = body["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| t["functionDeclarations"].as_array().into_iter().flatten())
                .any(|d| d["name"] == "get_weather");
            if !declared {
                return bad_request("conf-tools needs the get_weather function declared");
            }
            let answer = response(model, json!([function_call_part()]), Some("STOP"), tools_usage());
            if stream {
                // Function calls arrive whole, in one chunk.
                sse(vec![(0, frame(&answer))])
            } else {
                HttpResponse::Ok().json(answer)
            }
        }
        "conf-text" | "conf-slow" | "conf-die" | "conf-cut-short" if stream => {
            let (pieces, delay_ms): (Vec<String>, u64) = match model {
                "conf-slow" => ((0..200).map(|i| format!("w{i} ")).collect(), 20),
                _ => (STREAM_TEXT.iter().map(|s| s.to_string()).collect(), 0),
            };
            let last = pieces.len() - 1;
            let per_piece = TEXT_CANDIDATES_TOKENS / STREAM_TEXT.len() as u64;
            let mut frames = Vec::new();
            for (i, piece) in pieces.into_iter().enumerate() {
                let finish = (i == last && model != "conf-die" && model != "conf-cut-short")
                    .then_some("STOP");
                // Cumulative usage: the final chunk reports the whole answer.
                let candidates = if i == last {
                    TEXT_CANDIDATES_TOKENS.max(per_piece * (i as u64 + 1))
                } else {
                    per_piece * (i as u64 + 1)
                };
                let chunk = response(model, json!([{"text": piece}]), finish, text_usage(candidates));
                frames.push((if i == 0 { 0 } else { delay_ms }, frame(&chunk)));
            }
            if model == "conf-die" {
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
            sse(frames)
        }
        "conf-text" | "conf-slow" | "conf-die" | "conf-cut-short" => HttpResponse::Ok().json(
            response(
                model,
                json!([{"text": "Hello there"}]),
                Some("STOP"),
                text_usage(TEXT_CANDIDATES_TOKENS),
            ),
        ),
        _ => error(
            404,
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent."
            ),
        ),
    }
}

/// `batchEmbedContents`: a deterministic vector per text (its length, then a
/// fixed pattern), `outputDimensionality` values long (3 by default).
fn embed(model: &str, body: &Value) -> HttpResponse {
    if let Err(refused) = unknown_fields(body, &["requests"], "") {
        return bad_request(refused);
    }
    let Some(requests) = body["requests"].as_array().filter(|r| !r.is_empty()) else {
        return bad_request("* BatchEmbedContentsRequest.requests: requests is not specified");
    };
    let mut embeddings = Vec::new();
    for request in requests {
        if let Err(refused) = unknown_fields(
            request,
            &[
                "model",
                "content",
                "taskType",
                "title",
                "outputDimensionality",
            ],
            "requests[0]",
        ) {
            return bad_request(refused);
        }
        if request["model"] != format!("models/{model}") {
            return bad_request(format!(
                "Model name mismatch: the request is for models/{model}, an embedding request names {}",
                request["model"]
            ));
        }
        let Some(text) = request
            .pointer("/content/parts/0/text")
            .and_then(Value::as_str)
        else {
            return bad_request(
                "* BatchEmbedContentsRequest.requests[0].content: content is not specified",
            );
        };
        let dimensions = request["outputDimensionality"].as_u64().unwrap_or(3) as usize;
        let pattern = [0.5, -0.25, 0.125];
        let mut values = vec![text.len() as f64];
        values.extend((1..dimensions).map(|i| pattern[(i - 1) % pattern.len()]));
        embeddings.push(json!({ "values": values }));
    }
    HttpResponse::Ok().json(json!({ "embeddings": embeddings }))
}

/// A 1x1 PNG, as Imagen's base64 output.
pub const IMAGEN_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// The reason the mock gives for a filtered image.
pub const RAI_FILTERED_REASON: &str = "Your current safety filter threshold filtered out 1 generated images. You will not be charged for blocked images.";

/// Imagen `predict`: validates the request as the API does (unknown fields,
/// one instance with a prompt, `sampleCount` 1 to 4, known aspect ratios).
fn predict(model: &str, body: &Value) -> HttpResponse {
    if let Err(refused) = unknown_fields(body, &["instances", "parameters"], "") {
        return bad_request(refused);
    }
    if let Some(status) = model.strip_prefix("conf-status-") {
        let status: u16 = status.parse().unwrap();
        return error(status, &format!("mock {status} message"));
    }
    let Some([instance]) = body["instances"].as_array().map(Vec::as_slice) else {
        return bad_request("instances must hold exactly one instance");
    };
    if let Err(refused) = unknown_fields(instance, &["prompt"], "instances[0]") {
        return bad_request(refused);
    }
    if instance["prompt"].as_str().is_none_or(str::is_empty) {
        return bad_request("instances[0].prompt is required");
    }
    let parameters = &body["parameters"];
    let checked = if parameters.is_null() {
        Ok(())
    } else {
        unknown_fields(
            parameters,
            &[
                "sampleCount",
                "aspectRatio",
                "personGeneration",
                "imageSize",
                "outputOptions",
                "enhancePrompt",
                "includeRaiReason",
                "includeSafetyAttributes",
                "safetySetting",
                "addWatermark",
                "seed",
                "language",
            ],
            "parameters",
        )
    };
    if let Err(refused) = checked {
        return bad_request(refused);
    }
    let count = match &parameters["sampleCount"] {
        Value::Null => 4,
        v => match v.as_u64().filter(|n| (1..=4).contains(n)) {
            Some(n) => n,
            None => return bad_request("sampleCount must be from 1 to 4"),
        },
    };
    if !parameters["aspectRatio"].is_null()
        && !matches!(
            parameters["aspectRatio"].as_str(),
            Some("1:1" | "3:4" | "4:3" | "9:16" | "16:9")
        )
    {
        return bad_request("aspectRatio must be one of 1:1, 3:4, 4:3, 9:16, 16:9");
    }
    if model == "conf-all-filtered" {
        return HttpResponse::Ok().json(json!({}));
    }
    let mut predictions: Vec<Value> = (0..count)
        .map(|_| json!({"bytesBase64Encoded": IMAGEN_PNG_BASE64, "mimeType": "image/png"}))
        .collect();
    if model == "conf-filtered" {
        predictions.pop();
        if parameters["includeRaiReason"] == true {
            predictions.push(json!({"raiFilteredReason": RAI_FILTERED_REASON}));
        }
    }
    HttpResponse::Ok().json(json!({ "predictions": predictions }))
}

/// Size of a `huge-answer` answer: far past any limit of the hub's.
pub const HUGE_ANSWER_BYTES: usize = 500 * 1024 * 1024;

/// [`HUGE_ANSWER_BYTES`] of JSON, in chunks of about 64 KiB made one at a time,
/// without a `content-length`.
fn huge_answer() -> HttpResponse {
    let head = Bytes::from_static(br#"{"embeddings":["#);
    let item = r#"{"values":[0.0023,-0.0093,0.0158,0.0412]},"#;
    let chunk = Bytes::from(item.repeat(64 * 1024 / item.len()));
    let tail = Bytes::from_static(br#"{"values":[]}]}"#);
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

/// A stream of text chunks that never ends (until the reader leaves).
fn endless_stream() -> HttpResponse {
    let chunk = json!({"candidates": [{"content": {"parts": [{"text": "more "}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1, "totalTokenCount": 5}});
    let frame = Bytes::from(format!("data: {chunk}\r\n\r\n"));
    let body = futures_util::stream::repeat(frame).map(Ok::<_, std::io::Error>);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}
