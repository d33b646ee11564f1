//! The Google Gemini API (`generativelanguage.googleapis.com/v1beta`): chat through
//! `models/{model}:generateContent` and `:streamGenerateContent?alt=sse`,
//! embeddings through `:batchEmbedContents`, and images through Imagen's
//! `:predict` (`{"instances":[{"prompt"}],"parameters":{"sampleCount"}}` →
//! `{"predictions":[{"bytesBase64Encoded","mimeType"}]}`; Imagen returns bytes
//! only, so `response_format: "url"` gets `data:` URLs). The API key travels in
//! the `x-goog-api-key` header, never in the URL.
//!
//! Requests arrive in OpenAI's shape and are translated here (`openai_to_gemini_*`);
//! answers go back in OpenAI's shape (`gemini_to_openai_*`).
//!
//! Usage facts relied on (`usageMetadata`): `promptTokenCount` includes
//! `cachedContentTokenCount`; `toolUsePromptTokenCount` (the results of built-in
//! tools fed back to the model) is prompt-side and counted in neither
//! `promptTokenCount` nor `candidatesTokenCount`; `candidatesTokenCount` excludes
//! `thoughtsTokenCount`. Fields that are zero are omitted (proto3 JSON). In a stream
//! every chunk carries the usage so far (cumulative), so the last one wins.
//! A stream has no `[DONE]`: it just ends after the chunk with a `finishReason`.

use super::wire::{lenient, lenient_items, present, read_or_default};
use super::{
    chat_completion, image_item, image_size, images_answer, AnswerKind, AssistantMessage,
    ChatOutcome, ChatStream, EmbeddingsOutcome, ImagesOutcome, ProviderApi, StreamItem,
    UpstreamCall, UpstreamError,
};
use async_trait::async_trait;
use base64::Engine;
use domain::Usage;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Whether this protocol passes the conformance suite.
pub(crate) const AVAILABLE: bool = true;

pub(crate) struct Gemini;

fn unsupported(capability: &'static str) -> UpstreamError {
    UpstreamError::Unsupported {
        provider: "gemini",
        capability,
    }
}

// ---------------------------------------------------------------------------
// Wire shapes: what Gemini answers
//
// Read leniently (see `super::wire`): a field of the wrong type counts as absent.

/// A `GenerateContentResponse`, whole or one streamed chunk of it. An `error`
/// may stand in its place, in a 200 answer or in a stream.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiAnswer {
    #[serde(default, deserialize_with = "lenient_items")]
    candidates: Option<Vec<GeminiCandidate>>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_feedback: Option<GeminiPromptFeedback>,
    #[serde(default, deserialize_with = "lenient")]
    usage_metadata: Option<GeminiUsage>,
    #[serde(default, deserialize_with = "lenient")]
    response_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    model_version: Option<String>,
    /// Read by [`gemini_error_status`]; present at all, it is an error.
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
}

impl GeminiAnswer {
    fn candidates(&self) -> &[GeminiCandidate] {
        self.candidates.as_deref().unwrap_or_default()
    }

    fn completion_id(&self) -> String {
        match self.response_id.as_deref() {
            Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
            _ => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// No candidates because the prompt itself was blocked.
    fn prompt_blocked(&self) -> bool {
        self.prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some())
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiCandidate {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<GeminiAnswerContent>,
    #[serde(default, deserialize_with = "lenient")]
    finish_reason: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    index: Option<u64>,
}

impl GeminiCandidate {
    fn parts(&self) -> &[GeminiAnswerPart] {
        self.content
            .as_ref()
            .and_then(|c| c.parts.as_deref())
            .unwrap_or_default()
    }

    /// Its `index`, else its position among the candidates.
    fn index(&self, position: usize) -> u64 {
        self.index.unwrap_or(position as u64)
    }
}

#[derive(Default, Deserialize)]
struct GeminiAnswerContent {
    #[serde(default, deserialize_with = "lenient_items")]
    parts: Option<Vec<GeminiAnswerPart>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiAnswerPart {
    /// Read as a [`GeminiFunctionCall`]; present at all, the part is a call.
    #[serde(default, deserialize_with = "present")]
    function_call: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thought: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    thought_signature: Option<String>,
}

#[derive(Default, Deserialize)]
struct GeminiFunctionCall {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    /// Passed on as it came, even `null`.
    #[serde(default, deserialize_with = "present")]
    args: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiPromptFeedback {
    #[serde(default, deserialize_with = "present")]
    block_reason: Option<Value>,
}

/// `usageMetadata` (see the module documentation for what each count covers).
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    #[serde(default, deserialize_with = "lenient")]
    prompt_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cached_content_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    tool_use_prompt_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    candidates_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    thoughts_token_count: Option<u64>,
}

/// The `error` object of an error body, of a 200 answer or of a stream chunk.
#[derive(Default, Deserialize)]
struct GeminiError {
    #[serde(default, deserialize_with = "lenient")]
    code: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<String>,
    #[serde(default, deserialize_with = "lenient_items")]
    details: Option<Vec<GeminiErrorDetail>>,
}

#[derive(Default, Deserialize)]
struct GeminiErrorDetail {
    #[serde(default, deserialize_with = "lenient")]
    reason: Option<String>,
}

/// A Google error body: `{"error": {…}}`.
#[derive(Default, Deserialize)]
struct GeminiErrorBody {
    #[serde(default, deserialize_with = "lenient")]
    error: Option<GeminiError>,
}

/// A `BatchEmbedContentsResponse`.
#[derive(Default, Deserialize)]
struct GeminiEmbedAnswer {
    #[serde(default, deserialize_with = "lenient_items")]
    embeddings: Option<Vec<GeminiEmbedding>>,
}

#[derive(Default, Deserialize)]
struct GeminiEmbedding {
    /// The numbers passed on as they came.
    #[serde(default, deserialize_with = "lenient")]
    values: Option<Vec<Value>>,
}

/// An Imagen `predict` answer.
#[derive(Default, Deserialize)]
struct ImagenAnswer {
    #[serde(default, deserialize_with = "lenient_items")]
    predictions: Option<Vec<ImagenPrediction>>,
    /// Read by [`gemini_error_status`]; present at all, it is an error.
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImagenPrediction {
    #[serde(default, deserialize_with = "lenient")]
    bytes_base64_encoded: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    mime_type: Option<String>,
    /// The prompt as rewritten, when Imagen enhanced it.
    #[serde(default, deserialize_with = "lenient")]
    prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    rai_filtered_reason: Option<String>,
}

// ---------------------------------------------------------------------------
// Usage

/// Normalizes a Gemini `usageMetadata` object; `None` if absent or without a
/// prompt count.
#[cfg(test)]
pub(crate) fn usage_from_gemini(meta: &Value) -> Option<Usage> {
    usage_of(&read_or_default(meta))
}

fn usage_of(meta: &GeminiUsage) -> Option<Usage> {
    let count = |n: Option<u64>| n.unwrap_or(0);
    let prompt = meta.prompt_token_count?;
    // The prompt count includes the cached tokens; the ledger keeps them apart.
    let cached = count(meta.cached_content_token_count).min(prompt);
    let thoughts = count(meta.thoughts_token_count);
    Some(Usage {
        input_tokens: prompt - cached + count(meta.tool_use_prompt_token_count),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        output_tokens: count(meta.candidates_token_count) + thoughts,
        reasoning_tokens: thoughts,
        ..Usage::default()
    })
}

// ---------------------------------------------------------------------------
// Endpoints and errors

/// The model's resource collection and id: `models/x` or `tunedModels/x`; a bare
/// name is a base model.
fn gemini_resource(model: &str) -> (&'static str, &str) {
    match model.strip_prefix("tunedModels/") {
        Some(name) => ("tunedModels", name),
        None => ("models", model.strip_prefix("models/").unwrap_or(model)),
    }
}

/// `models/{model}:{action}`, the model percent-encoded so that it can never
/// change the rest of the URL.
fn gemini_model_path(model: &str, action: &str) -> String {
    let (collection, name) = gemini_resource(model);
    let mut encoded = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{collection}/{encoded}:{action}")
}

fn upstream_model(request: &Value) -> Result<&str, UpstreamError> {
    super::request_model(request)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| unsupported("requests without a model"))
}

/// Appended to an error message when Google names the API key as the problem (it
/// answers 400 INVALID_ARGUMENT for a bad key, which is the hub's fault, not the
/// client's).
const KEY_REJECTED_MARK: &str = "[API key rejected]";

/// The message of a Google error body (`{"error":{"code","message","status"}}`,
/// sometimes wrapped in an array).
fn gemini_error_message(body: &Value) -> Option<String> {
    let body = match body {
        Value::Array(items) => items.first().unwrap_or(body),
        _ => body,
    };
    let error = read_or_default::<GeminiErrorBody>(body).error?;
    let message = error.message?;
    let key_rejected = error
        .details
        .iter()
        .flatten()
        .filter_map(|d| d.reason.as_deref())
        .any(|reason| matches!(reason, "API_KEY_INVALID" | "API_KEY_EXPIRED"));
    Some(if key_rejected {
        format!("{message} {KEY_REJECTED_MARK}")
    } else {
        message
    })
}

/// A bad API key is a rejected credential whatever status Google used.
fn credential_rejected_as_401(e: UpstreamError) -> UpstreamError {
    match e {
        UpstreamError::Status { message, code, .. } if message.ends_with(KEY_REJECTED_MARK) => {
            UpstreamError::Status {
                status: 401,
                code,
                message,
            }
        }
        other => other,
    }
}

/// An error object inside a 200 answer or a stream.
fn gemini_error_status(error: &Value) -> UpstreamError {
    let detail: GeminiError = read_or_default(error);
    let status = detail
        .code
        .filter(|c| (400..=599).contains(c))
        .unwrap_or(502) as u16;
    let message = detail.message.unwrap_or_else(|| "stream error".to_string());
    let code = super::redact::error_code(&serde_json::json!({ "error": error }));
    UpstreamError::Status {
        status,
        code,
        message,
    }
}

async fn send(
    call: &UpstreamCall<'_>,
    path: &str,
    query: &[(&str, &str)],
    body: &Value,
) -> Result<reqwest::Response, UpstreamError> {
    let mut key =
        reqwest::header::HeaderValue::from_str(call.provider.api_key()).map_err(|_| {
            UpstreamError::Status {
                status: 401,
                code: None,
                message: "the provider's API key is not a valid header value".into(),
            }
        })?;
    key.set_sensitive(true);
    let request = call
        .http
        .client()
        .post(call.provider.endpoint(path))
        .query(query)
        .header("x-goog-api-key", key)
        .json(body);
    call.http
        .send(request, gemini_error_message)
        .await
        .map_err(credential_rejected_as_401)
}

/// The fields of an OpenAI chat request the translation reads, each read
/// leniently (a field of the wrong type counts as absent).
#[derive(Default, Deserialize)]
struct ChatRequest {
    #[serde(default, deserialize_with = "lenient_items")]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default, deserialize_with = "lenient_items")]
    tools: Option<Vec<ChatTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    max_completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    max_tokens: Option<u64>,
    /// The sampling options are passed on as given (Gemini judges them).
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    n: Option<Value>,
    #[serde(default)]
    seed: Option<Value>,
    #[serde(default)]
    presence_penalty: Option<Value>,
    #[serde(default)]
    frequency_penalty: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    stop: Option<ChatStop>,
    #[serde(default, deserialize_with = "lenient")]
    response_format: Option<ChatResponseFormat>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatStop {
    One(String),
    /// Passed on as given.
    Many(Vec<Value>),
}

#[derive(Default, Deserialize)]
struct ChatMessage {
    #[serde(default, deserialize_with = "lenient")]
    role: Option<String>,
    /// A string, an array of parts, or null: checked by the translation.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    tool_call_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_items")]
    tool_calls: Option<Vec<ChatToolCall>>,
    /// The deprecated single function call; present at all, it is a call.
    #[serde(default, deserialize_with = "present")]
    function_call: Option<Value>,
}

#[derive(Default, Deserialize)]
struct ChatToolCall {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<String>,
    /// Read as a [`ChatFunctionCall`].
    #[serde(default, deserialize_with = "present")]
    function: Option<Value>,
    /// Gemini's thought signature, as Google's own OpenAI layer carries it.
    #[serde(default, deserialize_with = "lenient")]
    extra_content: Option<ChatExtraContent>,
}

#[derive(Default, Deserialize)]
struct ChatFunctionCall {
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    /// A JSON text, an object, or absent.
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct ChatExtraContent {
    #[serde(default, deserialize_with = "lenient")]
    google: Option<ChatGoogleExtra>,
}

#[derive(Deserialize)]
struct ChatGoogleExtra {
    #[serde(default, deserialize_with = "lenient")]
    thought_signature: Option<String>,
}

/// One part of a message's `content` array.
#[derive(Default, Deserialize)]
struct ChatPart {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    image_url: Option<ChatImageUrl>,
    #[serde(default, deserialize_with = "lenient")]
    input_audio: Option<ChatAudio>,
    #[serde(default, deserialize_with = "lenient")]
    file: Option<ChatFile>,
}

/// `image_url` as `{"url": …}` or, as some clients send it, the URL itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatImageUrl {
    Url(String),
    Object { url: String },
}

#[derive(Deserialize)]
struct ChatAudio {
    #[serde(default, deserialize_with = "lenient")]
    data: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    format: Option<String>,
}

#[derive(Deserialize)]
struct ChatFile {
    #[serde(default, deserialize_with = "lenient")]
    file_data: Option<String>,
}

/// A tool: `{"type": "function", "function": {…}}`, or the function's fields
/// given on the tool itself.
#[derive(Default, Deserialize)]
struct ChatTool {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    /// Read as a [`ChatFunction`]; absent, the tool's own fields are read.
    #[serde(default, deserialize_with = "present")]
    function: Option<Value>,
    #[serde(flatten)]
    own: ChatFunction,
}

#[derive(Default, Deserialize)]
struct ChatFunction {
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    parameters: Option<Map<String, Value>>,
}

/// `tool_choice: {"type": "function", "function": {"name": …}}`.
#[derive(Deserialize)]
struct ChatNamedToolChoice {
    function: ChatFunctionName,
}

#[derive(Deserialize)]
struct ChatFunctionName {
    name: String,
}

#[derive(Deserialize)]
struct ChatResponseFormat {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    json_schema: Option<ChatJsonSchema>,
}

#[derive(Deserialize)]
struct ChatJsonSchema {
    #[serde(default, deserialize_with = "present")]
    schema: Option<Value>,
}

/// A `GenerateContentRequest`. It goes out through `serde_json::to_value`, so its
/// keys are sent sorted, as they always were.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<GeminiRolelessContent>,
    contents: Vec<GeminiContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[GeminiTools; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<GeminiToolConfig>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig,
}

/// `{"parts": […]}`: the system instruction, or the content of an embed request.
#[derive(Serialize)]
struct GeminiRolelessContent {
    parts: Vec<GeminiPart>,
}

#[derive(Serialize)]
struct GeminiContent {
    role: &'static str,
    parts: Vec<GeminiPart>,
}

/// One part: exactly one of the data fields (a function call may carry its
/// thought signature).
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<GeminiBlob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<GeminiFileData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<GeminiCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<GeminiFunctionResponse>,
}

impl GeminiPart {
    fn text(text: String) -> Self {
        Self {
            text: Some(text),
            ..Self::default()
        }
    }

    fn inline_data(mime_type: &str, data: &str) -> Self {
        Self {
            inline_data: Some(GeminiBlob {
                mime_type: mime_type.to_string(),
                data: data.to_string(),
            }),
            ..Self::default()
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiBlob {
    mime_type: String,
    data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiFileData {
    file_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'static str>,
}

#[derive(Serialize)]
struct GeminiCall {
    name: String,
    args: Value,
}

#[derive(Serialize)]
struct GeminiFunctionResponse {
    name: String,
    response: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiTools {
    function_declarations: Vec<GeminiFunctionDeclaration>,
}

#[derive(Serialize)]
struct GeminiFunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiToolConfig {
    function_calling_config: GeminiFunctionCallingConfig,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiFunctionCallingConfig {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[String; 1]>,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.candidate_count.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.stop_sequences.is_none()
            && self.response_mime_type.is_none()
            && self.response_schema.is_none()
    }
}

// ---------------------------------------------------------------------------
// Requests: OpenAI -> Gemini

/// Translates an OpenAI chat request into a Gemini `GenerateContentRequest`.
pub(crate) fn openai_to_gemini_request(request: &Value) -> Result<Value, UpstreamError> {
    let request: ChatRequest = read_or_default(request);
    let generation_config = openai_to_gemini_generation_config(&request);
    let (system, contents) = openai_messages_to_gemini(request.messages.unwrap_or_default())?;
    let tools = openai_tools_to_gemini(request.tools)?;
    let tool_config = match (&tools, &request.tool_choice) {
        (Some(_), Some(choice)) => openai_tool_choice_to_gemini(choice),
        _ => None,
    };
    let body = GeminiRequest {
        system_instruction: (!system.is_empty()).then_some(GeminiRolelessContent { parts: system }),
        contents,
        tools,
        tool_config,
        generation_config,
    };
    serde_json::to_value(body)
        .map_err(|e| UpstreamError::Protocol(format!("request not encodable: {e}")))
}

/// Appends parts to the last content if it has the same role (Gemini wants turns
/// to alternate), else starts a new content.
fn push_gemini_content(
    contents: &mut Vec<GeminiContent>,
    role: &'static str,
    parts: Vec<GeminiPart>,
) {
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => contents.push(GeminiContent { role, parts }),
    }
}

/// System instruction parts and `contents` from OpenAI messages.
fn openai_messages_to_gemini(
    messages: Vec<ChatMessage>,
) -> Result<(Vec<GeminiPart>, Vec<GeminiContent>), UpstreamError> {
    let mut system = Vec::new();
    let mut contents = Vec::new();
    // Tool call id -> function name, for the tool results that answer them.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for message in messages {
        let content = message.content.unwrap_or(Value::Null);
        let (gemini_role, parts) = match message.role.as_deref().unwrap_or("user") {
            "system" | "developer" => {
                system.extend(openai_text_of(&content)?.into_iter().map(GeminiPart::text));
                continue;
            }
            "user" => ("user", openai_user_content_to_gemini_parts(&content)?),
            "assistant" => (
                "model",
                openai_assistant_to_gemini_parts(
                    &content,
                    message.tool_calls,
                    message.function_call,
                    &mut call_names,
                )?,
            ),
            "tool" => {
                let name = message
                    .tool_call_id
                    .as_ref()
                    .and_then(|id| call_names.get(id))
                    .or(message.name.as_ref())
                    .ok_or_else(|| {
                        unsupported("tool results whose tool_call_id matches no earlier tool call")
                    })?;
                (
                    "user",
                    vec![openai_tool_result_to_gemini_part(name, &content)?],
                )
            }
            // The deprecated function-calling messages.
            "function" => {
                let name = message
                    .name
                    .as_ref()
                    .ok_or_else(|| unsupported("function results without a name"))?;
                (
                    "user",
                    vec![openai_tool_result_to_gemini_part(name, &content)?],
                )
            }
            _ => {
                return Err(unsupported(
                    "messages with roles other than system, developer, user, assistant and tool",
                ))
            }
        };
        if !parts.is_empty() {
            push_gemini_content(&mut contents, gemini_role, parts);
        }
    }
    Ok((system, contents))
}

/// The texts of a content that may only hold text (a string, or text parts).
fn openai_text_of(content: &Value) -> Result<Vec<String>, UpstreamError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .map(read_or_default::<ChatPart>)
            .filter(|p| p.kind.as_deref() != Some("refusal"))
            .map(|p| match p.kind.as_deref() {
                Some("text") | None => p.text.ok_or_else(|| unsupported("text parts without text")),
                Some(_) => Err(unsupported(
                    "content parts other than text in system, assistant or tool messages",
                )),
            })
            .filter(|t| !matches!(t, Ok(t) if t.is_empty()))
            .collect(),
        _ => Err(unsupported(
            "message content that is neither text nor parts",
        )),
    }
}

fn openai_user_content_to_gemini_parts(content: &Value) -> Result<Vec<GeminiPart>, UpstreamError> {
    let Value::Array(parts) = content else {
        return Ok(openai_text_of(content)?
            .into_iter()
            .map(GeminiPart::text)
            .collect());
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts.iter().map(read_or_default::<ChatPart>) {
        match part.kind.as_deref() {
            Some("text") => {
                let text = part
                    .text
                    .ok_or_else(|| unsupported("text parts without text"))?;
                if !text.is_empty() {
                    out.push(GeminiPart::text(text));
                }
            }
            Some("image_url") => {
                let url = match part.image_url {
                    Some(ChatImageUrl::Url(url) | ChatImageUrl::Object { url }) => url,
                    None => return Err(unsupported("image_url parts without a url")),
                };
                out.push(openai_url_to_gemini_part(&url)?);
            }
            Some("input_audio") => {
                let Some(ChatAudio {
                    data: Some(data),
                    format: Some(format),
                }) = part.input_audio
                else {
                    return Err(unsupported("input_audio parts without data and format"));
                };
                let mime_type = match format.as_str() {
                    "mp3" => "audio/mp3".to_string(),
                    other => format!("audio/{other}"),
                };
                out.push(GeminiPart::inline_data(&mime_type, &data));
            }
            Some("file") => {
                let data = part
                    .file
                    .and_then(|f| f.file_data)
                    .ok_or_else(|| unsupported("file parts other than inline file_data"))?;
                out.push(openai_url_to_gemini_part(&data)?);
            }
            _ => {
                return Err(unsupported(
                    "content parts other than text, image_url, input_audio and file",
                ))
            }
        }
    }
    Ok(out)
}

/// A data URL becomes `inlineData`; an http(s) or gs:// URL becomes `fileData`.
fn openai_url_to_gemini_part(url: &str) -> Result<GeminiPart, UpstreamError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| unsupported("malformed data: URLs"))?;
        let mime_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| unsupported("data: URLs that are not base64"))?;
        let mime_type = if mime_type.is_empty() {
            "application/octet-stream"
        } else {
            mime_type
        };
        return Ok(GeminiPart::inline_data(mime_type, data));
    }
    let lower = url.to_ascii_lowercase();
    if !["http://", "https://", "gs://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
    {
        return Err(unsupported(
            "media URLs other than data:, http(s):// and gs:// URLs",
        ));
    }
    Ok(GeminiPart {
        file_data: Some(GeminiFileData {
            file_uri: url.to_string(),
            mime_type: mime_type_from_extension(&lower),
        }),
        ..GeminiPart::default()
    })
}

fn mime_type_from_extension(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path.rsplit_once('.')?.1;
    Some(match extension {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => return None,
    })
}

/// An assistant message: its text, then one `functionCall` part per tool call.
fn openai_assistant_to_gemini_parts(
    content: &Value,
    tool_calls: Option<Vec<ChatToolCall>>,
    legacy_function_call: Option<Value>,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<GeminiPart>, UpstreamError> {
    let mut parts: Vec<GeminiPart> = openai_text_of(content)?
        .into_iter()
        .map(GeminiPart::text)
        .collect();
    let legacy_call = legacy_function_call.map(|function| ChatToolCall {
        function: Some(function),
        ..ChatToolCall::default()
    });
    let calls = tool_calls.into_iter().flatten().chain(legacy_call);
    for call in calls {
        let function: ChatFunctionCall =
            read_or_default(call.function.as_ref().unwrap_or(&Value::Null));
        let name = function
            .name
            .ok_or_else(|| unsupported("tool calls without a function name"))?;
        let args = match function.arguments {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => serde_json::from_str::<Value>(&s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| unsupported("tool call arguments that are not a JSON object"))?,
            Some(v @ Value::Object(_)) => v,
            Some(_) => {
                return Err(unsupported(
                    "tool call arguments that are not a JSON object",
                ))
            }
        };
        if let Some(id) = call.id {
            call_names.insert(id, name.clone());
        }
        parts.push(GeminiPart {
            function_call: Some(GeminiCall { name, args }),
            thought_signature: call
                .extra_content
                .and_then(|e| e.google)
                .and_then(|g| g.thought_signature),
            ..GeminiPart::default()
        });
    }
    Ok(parts)
}

/// A tool result: a JSON object is the response as is; anything else is its
/// `output` (Google's documented convention).
fn openai_tool_result_to_gemini_part(
    name: &str,
    content: &Value,
) -> Result<GeminiPart, UpstreamError> {
    let text = openai_text_of(content)?.concat();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        Ok(other) => json!({ "output": other }),
        Err(_) => json!({ "output": text }),
    };
    Ok(GeminiPart {
        function_response: Some(GeminiFunctionResponse {
            name: name.to_string(),
            response,
        }),
        ..GeminiPart::default()
    })
}

fn openai_tools_to_gemini(
    tools: Option<Vec<ChatTool>>,
) -> Result<Option<[GeminiTools; 1]>, UpstreamError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut declarations = Vec::with_capacity(tools.len());
    for tool in tools {
        if tool.kind.as_deref().unwrap_or("function") != "function" {
            return Err(unsupported("tools other than functions"));
        }
        let function = match &tool.function {
            Some(function) => read_or_default(function),
            None => tool.own,
        };
        let name = function
            .name
            .ok_or_else(|| unsupported("function tools without a name"))?;
        let parameters = function.parameters.and_then(|parameters| {
            let schema = openai_schema_to_gemini(&Value::Object(parameters));
            // Gemini refuses an object schema without properties; no parameters is the
            // same thing.
            (!is_empty_object_schema(&schema)).then_some(schema)
        });
        declarations.push(GeminiFunctionDeclaration {
            name,
            description: function.description,
            parameters,
        });
    }
    Ok(Some([GeminiTools {
        function_declarations: declarations,
    }]))
}

/// Whether a (Gemini) schema is an object without properties.
fn is_empty_object_schema(schema: &Value) -> bool {
    #[derive(Default, Deserialize)]
    struct ObjectSchema {
        #[serde(rename = "type", default, deserialize_with = "lenient")]
        kind: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        properties: Option<Map<String, Value>>,
    }
    let schema: ObjectSchema = read_or_default(schema);
    schema
        .kind
        .is_some_and(|t| t.eq_ignore_ascii_case("object"))
        && schema.properties.is_none_or(|p| p.is_empty())
}

fn openai_tool_choice_to_gemini(choice: &Value) -> Option<GeminiToolConfig> {
    let mode = |mode| GeminiFunctionCallingConfig {
        mode,
        allowed_function_names: None,
    };
    let config = match choice {
        Value::String(choice) => match choice.as_str() {
            "auto" => mode("AUTO"),
            "none" => mode("NONE"),
            "required" => mode("ANY"),
            _ => return None,
        },
        Value::Object(_) => {
            let named = ChatNamedToolChoice::deserialize(choice).ok()?;
            GeminiFunctionCallingConfig {
                mode: "ANY",
                allowed_function_names: Some([named.function.name]),
            }
        }
        _ => return None,
    };
    Some(GeminiToolConfig {
        function_calling_config: config,
    })
}

/// The keywords of Gemini's `Schema` (an OpenAPI subset).
const GEMINI_SCHEMA_FIELDS: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// Turns a JSON Schema (as OpenAI tools and response formats carry) into Gemini's
/// `Schema`: keywords Gemini does not know (`additionalProperties`, `$schema`,
/// `strict`, ...) are dropped, `"type": [T, "null"]` becomes `nullable`, `oneOf`
/// becomes `anyOf` and `const` a one-value `enum`. `$ref` is not resolved.
fn openai_schema_to_gemini(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "type" => match value {
                Value::Array(types) => {
                    let concrete: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if concrete.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    match concrete.as_slice() {
                        [] => {}
                        [one] => {
                            out.insert("type".into(), (*one).clone());
                        }
                        many => {
                            let any_of: Vec<Value> =
                                many.iter().map(|t| json!({ "type": t })).collect();
                            out.insert("anyOf".into(), Value::Array(any_of));
                        }
                    }
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "properties" => {
                if let Some(properties) = value.as_object() {
                    let converted: Map<String, Value> = properties
                        .iter()
                        .map(|(name, s)| (name.clone(), openai_schema_to_gemini(s)))
                        .collect();
                    out.insert("properties".into(), Value::Object(converted));
                }
            }
            "items" => {
                out.insert("items".into(), openai_schema_to_gemini(value));
            }
            "anyOf" | "oneOf" => {
                if let Some(options) = value.as_array() {
                    let converted = options.iter().map(openai_schema_to_gemini).collect();
                    out.insert("anyOf".into(), Value::Array(converted));
                }
            }
            "const" => {
                out.entry("enum").or_insert_with(|| json!([value]));
            }
            known if GEMINI_SCHEMA_FIELDS.contains(&known) => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// `generationConfig` from the OpenAI sampling and output options.
fn openai_to_gemini_generation_config(request: &ChatRequest) -> GenerationConfig {
    let mut config = GenerationConfig {
        max_output_tokens: [request.max_completion_tokens, request.max_tokens]
            .into_iter()
            .flatten()
            .min(),
        temperature: request.temperature.clone(),
        top_p: request.top_p.clone(),
        candidate_count: request.n.clone(),
        seed: request.seed.clone(),
        presence_penalty: request.presence_penalty.clone(),
        frequency_penalty: request.frequency_penalty.clone(),
        stop_sequences: match &request.stop {
            Some(ChatStop::One(s)) => Some(vec![json!(s)]),
            Some(ChatStop::Many(stops)) if !stops.is_empty() => Some(stops.clone()),
            _ => None,
        },
        ..GenerationConfig::default()
    };
    if let Some(format) = &request.response_format {
        match format.kind.as_deref() {
            Some("json_object") => config.response_mime_type = Some("application/json"),
            Some("json_schema") => {
                config.response_mime_type = Some("application/json");
                config.response_schema = format
                    .json_schema
                    .as_ref()
                    .and_then(|s| s.schema.as_ref())
                    .map(openai_schema_to_gemini);
            }
            _ => {}
        }
    }
    config
}

// ---------------------------------------------------------------------------
// Responses: Gemini -> OpenAI

fn gemini_finish_reason_to_openai(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => "content_filter",
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// What the parts of one candidate (or one streamed piece of it) say.
#[derive(Default)]
struct OpenAiPieces {
    content: String,
    reasoning: String,
    /// OpenAI tool calls, each with its `index` within the candidate.
    tool_calls: Vec<Value>,
}

/// Reads Gemini parts; `calls_so_far` numbers the tool calls of the candidate.
fn gemini_parts_to_openai(parts: &[GeminiAnswerPart], calls_so_far: &mut usize) -> OpenAiPieces {
    let mut pieces = OpenAiPieces::default();
    for part in parts {
        if let Some(call) = &part.function_call {
            let call: GeminiFunctionCall = read_or_default(call);
            let index = *calls_so_far;
            *calls_so_far += 1;
            let id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{index}"));
            let arguments = call.args.unwrap_or_else(|| json!({}));
            let mut tool_call = json!({
                "index": index,
                "id": id,
                "type": "function",
                "function": {
                    "name": call.name.unwrap_or_default(),
                    "arguments": arguments.to_string(),
                },
            });
            if let Some(signature) = &part.thought_signature {
                tool_call["extra_content"] =
                    json!({ "google": { "thought_signature": signature } });
            }
            pieces.tool_calls.push(tool_call);
        } else if let Some(text) = &part.text {
            if part.thought == Some(true) {
                pieces.reasoning.push_str(text);
            } else {
                pieces.content.push_str(text);
            }
        }
    }
    pieces
}

/// Translates a `GenerateContentResponse` into an OpenAI `chat.completion`.
#[cfg(test)]
pub(crate) fn gemini_to_openai_response(answer: &Value, model: &str) -> ChatOutcome {
    answer_to_openai(&read_or_default(answer), model)
}

fn answer_to_openai(answer: &GeminiAnswer, model: &str) -> ChatOutcome {
    let mut choices: Vec<Value> = answer
        .candidates()
        .iter()
        .enumerate()
        .map(|(position, candidate)| candidate_to_openai_choice(candidate, position))
        .collect();
    if choices.is_empty() {
        // No candidates: the prompt itself was blocked (`promptFeedback.blockReason`).
        let finish_reason = if answer.prompt_blocked() {
            "content_filter"
        } else {
            "stop"
        };
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": "" },
            "logprobs": null,
            "finish_reason": finish_reason,
        }));
    }
    let usage = answer.usage_metadata.as_ref().and_then(usage_of);
    let body = chat_completion(
        json!(answer.completion_id()),
        chrono::Utc::now().timestamp(),
        json!(answer.model_version.as_deref().unwrap_or(model)),
        choices,
        usage.as_ref(),
    );
    ChatOutcome { body, usage }
}

/// One candidate as an OpenAI `choice`.
fn candidate_to_openai_choice(candidate: &GeminiCandidate, position: usize) -> Value {
    let pieces = gemini_parts_to_openai(candidate.parts(), &mut 0);
    let called_tools = !pieces.tool_calls.is_empty();
    // A whole answer's tool calls have no `index` (a stream's do).
    let calls: Vec<Value> = pieces
        .tool_calls
        .into_iter()
        .map(|mut call| {
            if let Value::Object(fields) = &mut call {
                fields.remove("index");
            }
            call
        })
        .collect();
    let message = AssistantMessage::new(pieces.content, pieces.reasoning, calls);
    let finish_reason = candidate
        .finish_reason
        .as_deref()
        .map_or(if called_tools { "tool_calls" } else { "stop" }, |r| {
            gemini_finish_reason_to_openai(r, called_tools)
        });
    json!({
        "index": candidate.index(position),
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason,
    })
}

#[derive(Default)]
struct StreamCandidate {
    role_sent: bool,
    tool_calls: usize,
}

/// Turns streamed `GenerateContentResponse` chunks into OpenAI
/// `chat.completion.chunk` objects and usage items.
struct GeminiStreamTranslator {
    id: Option<String>,
    created: i64,
    model: String,
    candidates: HashMap<u64, StreamCandidate>,
    usage: Option<Usage>,
    finished: bool,
}

impl GeminiStreamTranslator {
    fn new(model: &str) -> Self {
        Self {
            id: None,
            created: chrono::Utc::now().timestamp(),
            model: model.to_string(),
            candidates: HashMap::new(),
            usage: None,
            finished: false,
        }
    }

    fn openai_chunk(&self, index: u64, delta: Map<String, Value>, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": index, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    }

    /// [`Self::on_chunk`] of a chunk given as JSON.
    #[cfg(test)]
    fn gemini_chunk_to_openai(&mut self, chunk: &Value) -> Result<Vec<StreamItem>, UpstreamError> {
        self.on_chunk(read_or_default(chunk))
    }

    fn on_chunk(&mut self, chunk: GeminiAnswer) -> Result<Vec<StreamItem>, UpstreamError> {
        if let Some(error) = &chunk.error {
            return Err(gemini_error_status(error));
        }
        if self.id.is_none() {
            self.id = Some(chunk.completion_id());
        }
        if let Some(model) = &chunk.model_version {
            self.model = model.clone();
        }
        let mut items = Vec::new();
        for (position, candidate) in chunk.candidates().iter().enumerate() {
            let index = candidate.index(position);
            let state = self.candidates.entry(index).or_default();
            let pieces = gemini_parts_to_openai(candidate.parts(), &mut state.tool_calls);
            let finish = candidate
                .finish_reason
                .as_deref()
                .map(|r| gemini_finish_reason_to_openai(r, state.tool_calls > 0));
            let mut delta = Map::new();
            if !pieces.content.is_empty() {
                delta.insert("content".into(), json!(pieces.content));
            }
            if !pieces.reasoning.is_empty() {
                delta.insert("reasoning_content".into(), json!(pieces.reasoning));
            }
            if !pieces.tool_calls.is_empty() {
                delta.insert("tool_calls".into(), Value::Array(pieces.tool_calls));
            }
            if delta.is_empty() && finish.is_none() {
                continue;
            }
            if !state.role_sent {
                state.role_sent = true;
                delta.insert("role".into(), json!("assistant"));
            }
            self.finished |= finish.is_some();
            items.push(StreamItem::Chunk(self.openai_chunk(index, delta, finish)));
        }
        if chunk.candidates().is_empty() && chunk.prompt_blocked() {
            self.finished = true;
            let mut delta = Map::new();
            delta.insert("role".into(), json!("assistant"));
            items.push(StreamItem::Chunk(self.openai_chunk(
                0,
                delta,
                Some("content_filter"),
            )));
        }
        // Cumulative: the newest replaces the last, never adds to it.
        if let Some(usage) = chunk.usage_metadata.as_ref().and_then(usage_of) {
            if self.usage != Some(usage) {
                self.usage = Some(usage);
                items.push(StreamItem::Usage(usage));
            }
        }
        Ok(items)
    }

    /// A stream that ends before any `finishReason` was cut short, not complete.
    fn end(&self) -> Option<UpstreamError> {
        (!self.finished)
            .then(|| UpstreamError::Protocol("the stream ended before the model finished".into()))
    }
}

// ---------------------------------------------------------------------------
// Embeddings

/// A `BatchEmbedContentsRequest` with one request per input.
fn openai_to_gemini_embed_request(model: &str, inputs: &[String], request: &Value) -> Value {
    #[derive(Default, Deserialize)]
    struct EmbeddingsRequest {
        #[serde(default, deserialize_with = "lenient")]
        dimensions: Option<u64>,
    }
    let (collection, name) = gemini_resource(model);
    let dimensions = read_or_default::<EmbeddingsRequest>(request).dimensions;
    let requests: Vec<GeminiEmbedRequest> = inputs
        .iter()
        .map(|text| GeminiEmbedRequest {
            model: format!("{collection}/{name}"),
            content: GeminiRolelessContent {
                parts: vec![GeminiPart::text(text.clone())],
            },
            output_dimensionality: dimensions,
        })
        .collect();
    json!({ "requests": requests })
}

/// One request of a `BatchEmbedContentsRequest`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiEmbedRequest {
    model: String,
    content: GeminiRolelessContent,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u64>,
}

/// An OpenAI embeddings `list` from a `BatchEmbedContentsResponse`.
fn gemini_to_openai_embeddings(
    answer: &Value,
    model: &str,
    inputs: &[String],
    base64: bool,
) -> Result<Value, UpstreamError> {
    let answer: GeminiEmbedAnswer = read_or_default(answer);
    let embeddings = answer
        .embeddings
        .filter(|e| e.len() == inputs.len())
        .ok_or_else(|| {
            UpstreamError::Protocol(
                "batchEmbedContents answered the wrong number of embeddings".into(),
            )
        })?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (index, embedding) in embeddings.into_iter().enumerate() {
        let values = embedding
            .values
            .ok_or_else(|| UpstreamError::Protocol("an embedding without values".into()))?;
        let vector = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for v in values {
                bytes.extend_from_slice(&(v.as_f64().unwrap_or(0.0) as f32).to_le_bytes());
            }
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            Value::Array(values)
        };
        data.push(json!({ "object": "embedding", "index": index, "embedding": vector }));
    }
    // Gemini's embed API reports no token usage. The body carries an estimate (the
    // hub's bytes-per-token rule) so that it has OpenAI's shape; the outcome's usage
    // is `None`, so the gateway bills an estimate flagged as such.
    let bytes: u64 = inputs.iter().map(|s| s.len() as u64).sum();
    let estimated = Usage::estimate(bytes, 0).input_tokens;
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": estimated, "total_tokens": estimated },
    }))
}

// ---------------------------------------------------------------------------
// Images (Imagen)

/// Imagen's aspect ratios, as width:height.
const IMAGEN_ASPECT_RATIOS: [(u32, u32); 5] = [(1, 1), (3, 4), (4, 3), (9, 16), (16, 9)];

/// The Imagen aspect ratio of a size: the one within 5% of it (so 1792x1024 is
/// 16:9); sizes near none of them are refused.
fn imagen_aspect_ratio(width: u32, height: u32) -> Result<String, UpstreamError> {
    IMAGEN_ASPECT_RATIOS
        .iter()
        .find(|(rw, rh)| {
            // |w/h - rw/rh| <= 5% of rw/rh, in integers.
            let (lhs, rhs) = (width as u64 * *rh as u64, height as u64 * *rw as u64);
            lhs.abs_diff(rhs) * 20 <= rhs
        })
        .map(|(rw, rh)| format!("{rw}:{rh}"))
        .ok_or_else(|| {
            unsupported("image sizes whose aspect ratio is not 1:1, 3:4, 4:3, 9:16 or 16:9")
        })
}

/// An OpenAI images request as an Imagen `predict` body: `n` → `sampleCount`,
/// `size` → `aspectRatio`.
pub fn openai_to_imagen_request(request: &Value) -> Result<Value, UpstreamError> {
    #[derive(Default, Deserialize)]
    struct ImagesRequest {
        #[serde(default, deserialize_with = "lenient")]
        prompt: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        n: Option<u64>,
    }
    let images: ImagesRequest = read_or_default(request);
    let prompt = images
        .prompt
        .filter(|p| !p.is_empty())
        .ok_or_else(|| unsupported("image requests without a prompt"))?;
    let mut parameters = Map::new();
    parameters.insert("sampleCount".into(), json!(images.n.unwrap_or(1)));
    if let Some((width, height)) = image_size(request, "gemini")? {
        parameters.insert(
            "aspectRatio".into(),
            json!(imagen_aspect_ratio(width, height)?),
        );
    }
    Ok(json!({ "instances": [{ "prompt": prompt }], "parameters": parameters }))
}

/// An OpenAI images answer from an Imagen `predict` answer. Predictions without
/// bytes (filtered by Google's safety filters) are left out, so only images
/// returned are billed; an answer with none is a refusal.
pub fn imagen_to_openai(answer: &Value, request: &Value) -> Result<ImagesOutcome, UpstreamError> {
    imagen_answer_to_openai(read_or_default(answer), request)
}

fn imagen_answer_to_openai(
    answer: ImagenAnswer,
    request: &Value,
) -> Result<ImagesOutcome, UpstreamError> {
    let predictions = answer.predictions.unwrap_or_default();
    let mut data = Vec::with_capacity(predictions.len());
    let mut filtered = None;
    for prediction in predictions {
        match prediction.bytes_base64_encoded {
            Some(b64) => {
                let mime_type = prediction.mime_type.as_deref().unwrap_or("image/png");
                let mut item = image_item(request, &b64, mime_type);
                if let Some(prompt) = prediction.prompt {
                    item["revised_prompt"] = json!(prompt);
                }
                data.push(item);
            }
            None => filtered = filtered.or(prediction.rai_filtered_reason),
        }
    }
    if data.is_empty() {
        // Google's filter reason is its own text: the operator's log keeps it.
        if let Some(reason) = filtered {
            tracing::info!(reason = %reason, "Imagen filtered every image");
        }
        return Err(UpstreamError::Refused(
            "Imagen returned no image (the prompt or every image was filtered)".into(),
        ));
    }
    Ok(images_answer(data))
}

// ---------------------------------------------------------------------------

#[async_trait]
impl ProviderApi for Gemini {
    async fn chat(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatOutcome, UpstreamError> {
        let model = upstream_model(request)?;
        let body = openai_to_gemini_request(request)?;
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let exchange = async {
            let path = gemini_model_path(model, "generateContent");
            let response = send(call, &path, &[], &body).await?;
            let answer = call.http.json_body(response, AnswerKind::Chat).await?;
            let answer: GeminiAnswer = serde_json::from_value(answer).unwrap_or_default();
            if let Some(error) = &answer.error {
                return Err(gemini_error_status(error));
            }
            Ok(answer_to_openai(&answer, model))
        };
        tokio::time::timeout(total, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn chat_stream(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatStream, UpstreamError> {
        let model = upstream_model(request)?;
        let body = openai_to_gemini_request(request)?;
        let path = gemini_model_path(model, "streamGenerateContent");
        let response = send(call, &path, &[("alt", "sse")], &body).await?;
        let state = (
            call.http.sse_events(response),
            GeminiStreamTranslator::new(model),
            false,
        );
        let items =
            futures_util::stream::unfold(state, |(mut events, mut translator, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let event = match events.next().await {
                        None => {
                            let cut_short = translator.end()?;
                            return Some((vec![Err(cut_short)], (events, translator, true)));
                        }
                        Some(Err(e)) => return Some((vec![Err(e)], (events, translator, true))),
                        Some(Ok(event)) => event,
                    };
                    // Keep-alives or anything else that is not a JSON object carries
                    // nothing.
                    let Ok(chunk) = serde_json::from_str::<GeminiAnswer>(&event.data) else {
                        continue;
                    };
                    match translator.on_chunk(chunk) {
                        Ok(items) if items.is_empty() => continue,
                        Ok(items) => {
                            let items = items.into_iter().map(Ok).collect();
                            return Some((items, (events, translator, false)));
                        }
                        Err(e) => return Some((vec![Err(e)], (events, translator, true))),
                    }
                }
            })
            .flat_map(futures_util::stream::iter);
        Ok(Box::pin(items))
    }

    async fn embeddings(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<EmbeddingsOutcome, UpstreamError> {
        let model = upstream_model(request)?;
        let inputs = super::embedding_texts(request, "gemini")?;
        let base64 = super::wants_base64_embeddings(request);
        let body = openai_to_gemini_embed_request(model, &inputs, request);
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let exchange = async {
            let path = gemini_model_path(model, "batchEmbedContents");
            let response = send(call, &path, &[], &body).await?;
            let answer = call
                .http
                .json_body(response, AnswerKind::Embeddings)
                .await?;
            let body = gemini_to_openai_embeddings(&answer, model, &inputs, base64)?;
            // No usage: Gemini's embed API does not report any (see above).
            Ok(EmbeddingsOutcome { body, usage: None })
        };
        tokio::time::timeout(total, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn images(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ImagesOutcome, UpstreamError> {
        let model = upstream_model(request)?;
        let body = openai_to_imagen_request(request)?;
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let exchange = async {
            let path = gemini_model_path(model, "predict");
            let response = send(call, &path, &[], &body).await?;
            let answer = call.http.json_body(response, AnswerKind::Images).await?;
            let answer: ImagenAnswer = serde_json::from_value(answer).unwrap_or_default();
            if let Some(error) = &answer.error {
                return Err(gemini_error_status(error));
            }
            imagen_answer_to_openai(answer, request)
        };
        tokio::time::timeout(total, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(input: u64, cache_read: u64, output: u64, reasoning: u64) -> Usage {
        Usage {
            input_tokens: input,
            cache_read_tokens: cache_read,
            output_tokens: output,
            reasoning_tokens: reasoning,
            ..Usage::default()
        }
    }

    #[test]
    fn usage_separates_cache_and_counts_tool_use_prompt_as_input_and_thoughts_as_output() {
        let u = usage_from_gemini(&json!({
            "promptTokenCount": 40, "cachedContentTokenCount": 16, "toolUsePromptTokenCount": 6,
            "candidatesTokenCount": 9, "thoughtsTokenCount": 5, "totalTokenCount": 60
        }))
        .unwrap();
        assert_eq!(u, usage(30, 16, 14, 5));
        assert_eq!(
            u.prompt_tokens() + u.output_tokens,
            60,
            "matches totalTokenCount"
        );
        // Zero fields are omitted on the wire.
        assert_eq!(
            usage_from_gemini(&json!({"promptTokenCount": 7, "totalTokenCount": 7})).unwrap(),
            usage(7, 0, 0, 0)
        );
        assert!(usage_from_gemini(&json!({"candidatesTokenCount": 3})).is_none());
        assert!(usage_from_gemini(&json!({})).is_none());
    }

    #[test]
    fn system_messages_become_the_system_instruction_and_roles_map() {
        let body = openai_to_gemini_request(&json!({
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]},
                {"role": "user", "content": "and again"},
            ],
            "stream": true,
        }))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Hi"}]},
                    {"role": "model", "parts": [{"text": "Bonjour"}]},
                    {"role": "user", "parts": [{"text": "Again"}, {"text": "and again"}]},
                ],
            })
        );
    }

    #[test]
    fn images_audio_and_files_become_inline_or_file_data() {
        let body = openai_to_gemini_request(&json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.PNG?x=1"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/photo"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        ]}]}))
        .unwrap();
        assert_eq!(
            body["contents"][0]["parts"],
            json!([
                {"text": "What is this?"},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                {"fileData": {"fileUri": "https://example.com/a/cat.PNG?x=1", "mimeType": "image/png"}},
                {"fileData": {"fileUri": "https://example.com/photo"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            ])
        );
        for bad in [
            "data:image/png,rawbytes",
            "ftp://example.com/x.png",
            "file:///etc/passwd",
        ] {
            let result =
                openai_to_gemini_request(&json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": bad}}]}]}));
            assert!(
                matches!(result, Err(UpstreamError::Unsupported { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn tools_tool_choice_calls_and_results_translate() {
        let request = json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                     "extra_content": {"google": {"thought_signature": "sig=="}}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"c\": 21}"},
                {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "noon"}]},
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                        "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                            "days": {"type": "array", "items": {"type": "integer", "minimum": 1, "exclusiveMaximum": 8}}},
                        "required": ["city"], "additionalProperties": false},
                    "strict": true}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
            ],
            "tool_choice": "required",
            "parallel_tool_calls": true,
        });
        let body = openai_to_gemini_request(&request).unwrap();
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
                {"role": "model", "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig=="},
                    {"functionCall": {"name": "get_time", "args": {}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"c": 21}}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
                ]},
            ])
        );
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather", "parameters": {"type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "nullable": true, "enum": ["c", "f"]},
                        "days": {"type": "array", "items": {"type": "integer", "minimum": 1}}},
                    "required": ["city"]}},
                {"name": "get_time"},
            ]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY"}})
        );
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE")] {
            let mut r = request.clone();
            r["tool_choice"] = json!(choice);
            let body = openai_to_gemini_request(&r).unwrap();
            assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }

        // A tool result must answer an earlier call.
        let orphan =
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
        assert!(matches!(
            openai_to_gemini_request(&orphan),
            Err(UpstreamError::Unsupported { .. })
        ));
        let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]});
        assert!(openai_to_gemini_request(&bad_args).is_err());
    }

    #[test]
    fn generation_config_maps_sampling_stop_and_response_format() {
        let body = openai_to_gemini_request(&json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 300, "max_completion_tokens": 200, "temperature": 0.7, "top_p": 0.95,
            "n": 2, "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2, "stop": "STOP!",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string", "const": "z"}}, "additionalProperties": false}}},
            "user": "u-1", "stream_options": null,
        }))
        .unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({
                "maxOutputTokens": 200, "temperature": 0.7, "topP": 0.95, "candidateCount": 2, "seed": 7,
                "presencePenalty": 0.1, "frequencyPenalty": 0.2, "stopSequences": ["STOP!"],
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object", "properties": {"a": {"type": "string", "enum": ["z"]}}},
            })
        );
        let body =
            openai_to_gemini_request(&json!({"messages": [{"role": "user", "content": "hi"}]}))
                .unwrap();
        assert!(body.get("generationConfig").is_none());
        assert!(body.get("systemInstruction").is_none());
    }

    #[test]
    fn model_paths_are_encoded_and_accept_prefixed_names() {
        assert_eq!(
            gemini_model_path("gemini-2.5-flash", "generateContent"),
            "models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            gemini_model_path("models/gemini-2.5-pro", "streamGenerateContent"),
            "models/gemini-2.5-pro:streamGenerateContent"
        );
        assert_eq!(
            gemini_model_path("tunedModels/my-model", "generateContent"),
            "tunedModels/my-model:generateContent"
        );
        assert_eq!(
            gemini_model_path("x?key=1#/../y", "generateContent"),
            "models/x%3Fkey%3D1%23%2F..%2Fy:generateContent"
        );
    }

    #[test]
    fn responses_map_text_thoughts_tool_calls_finish_reasons_and_usage() {
        let outcome = gemini_to_openai_response(
            &json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "thinking...", "thought": true},
                    {"text": "Hello "}, {"text": "there"},
                ]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 4, "candidatesTokenCount": 3, "thoughtsTokenCount": 2, "totalTokenCount": 15},
                "modelVersion": "gemini-2.5-flash", "responseId": "abc",
            }),
            "gemini-2.5-flash",
        );
        let body = &outcome.body;
        assert_eq!(body["id"], "chatcmpl-abc");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gemini-2.5-flash");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
        assert_eq!(
            body["choices"][0]["message"]["reasoning_content"],
            "thinking..."
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(outcome.usage, Some(usage(6, 4, 5, 2)));
        assert_eq!(body["usage"]["prompt_tokens"], 10);
        assert_eq!(body["usage"]["completion_tokens"], 5);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            body["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );

        let outcome = gemini_to_openai_response(
            &json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "a", "args": {"x": 1}}, "thoughtSignature": "s1"},
                {"functionCall": {"name": "b", "args": {}}},
            ]}, "finishReason": "STOP"}]}),
            "m",
        );
        let message = &outcome.body["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"],
            json!([
                {"id": "call_0", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"},
                 "extra_content": {"google": {"thought_signature": "s1"}}},
                {"id": "call_1", "type": "function", "function": {"name": "b", "arguments": "{}"}},
            ])
        );
        assert_eq!(outcome.body["choices"][0]["finish_reason"], "tool_calls");
        assert!(outcome.usage.is_none() && outcome.body.get("usage").is_none());

        for (reason, expected) in [
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let outcome = gemini_to_openai_response(
                &json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}),
                "m",
            );
            assert_eq!(
                outcome.body["choices"][0]["finish_reason"], expected,
                "{reason}"
            );
        }
        let blocked = gemini_to_openai_response(
            &json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}),
            "m",
        );
        assert_eq!(
            blocked.body["choices"][0]["finish_reason"],
            "content_filter"
        );
        assert_eq!(blocked.usage, Some(usage(8, 0, 0, 0)));
    }

    fn chunks(items: &[StreamItem]) -> Vec<&Value> {
        items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Chunk(c) => Some(c),
                StreamItem::Usage(_) => None,
            })
            .collect()
    }

    #[test]
    fn stream_chunks_translate_and_cumulative_usage_replaces() {
        let mut t = GeminiStreamTranslator::new("gemini-2.5-flash");
        let meta = |candidates: u64| json!({"promptTokenCount": 10, "cachedContentTokenCount": 2, "candidatesTokenCount": candidates, "thoughtsTokenCount": 4});
        let first = t
            .gemini_chunk_to_openai(&json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
                "usageMetadata": meta(1), "responseId": "r1", "modelVersion": "gemini-2.5-flash"}))
            .unwrap();
        assert_eq!(
            first,
            vec![
                StreamItem::Chunk(
                    json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": t.created,
                    "model": "gemini-2.5-flash",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "logprobs": null, "finish_reason": null}]})
                ),
                StreamItem::Usage(usage(8, 2, 5, 4)),
            ]
        );
        // The same usage again is not repeated; a grown one replaces it.
        let same = t
            .gemini_chunk_to_openai(&json!({"candidates": [{"content": {"parts": [{"text": "lo"}]}}], "usageMetadata": meta(1)}))
            .unwrap();
        assert_eq!(same.len(), 1);
        assert_eq!(
            chunks(&same)[0]["choices"][0]["delta"],
            json!({"content": "lo"})
        );
        assert!(t.end().is_some(), "no finish reason yet");
        let last = t
            .gemini_chunk_to_openai(&json!({"candidates": [{"content": {"parts": [{"text": "!"}]}, "finishReason": "STOP"}], "usageMetadata": meta(3)}))
            .unwrap();
        assert_eq!(chunks(&last)[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks(&last)[0]["id"], "chatcmpl-r1");
        assert_eq!(last.last(), Some(&StreamItem::Usage(usage(8, 2, 7, 4))));
        assert!(t.end().is_none());
    }

    #[test]
    fn streamed_function_calls_are_whole_tool_call_deltas() {
        let mut t = GeminiStreamTranslator::new("m");
        let items = t
            .gemini_chunk_to_openai(&json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP", "index": 0}]}))
            .unwrap();
        let choice = &chunks(&items)[0]["choices"][0];
        assert_eq!(
            choice["delta"]["tool_calls"],
            json!([{"index": 0, "id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(chunks(&items)[0].get("usage").is_none());
    }

    #[test]
    fn an_error_inside_the_stream_is_a_status_error() {
        let mut t = GeminiStreamTranslator::new("m");
        let e = t
            .gemini_chunk_to_openai(&json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}))
            .unwrap_err();
        assert!(
            matches!(e, UpstreamError::Status { status: 503, ref message, .. } if message == "The model is overloaded.")
        );
        let e = t
            .gemini_chunk_to_openai(&json!({"error": {"message": "boom"}}))
            .unwrap_err();
        assert!(matches!(e, UpstreamError::Status { status: 502, .. }));
    }

    #[test]
    fn error_bodies_name_a_rejected_key() {
        let body = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}});
        let message = gemini_error_message(&body).unwrap();
        let e = credential_rejected_as_401(UpstreamError::Status {
            status: 400,
            code: None,
            message,
        });
        assert!(matches!(e, UpstreamError::Status { status: 401, .. }));
        let plain = json!([{"error": {"code": 400, "message": "mock 400 message", "status": "INVALID_ARGUMENT"}}]);
        assert_eq!(
            gemini_error_message(&plain).as_deref(),
            Some("mock 400 message")
        );
    }
}
