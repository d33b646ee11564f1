//! Amazon Bedrock, through its Converse API (`POST /model/{modelId}/converse`) and
//! ConverseStream API (`POST /model/{modelId}/converse-stream`), every request
//! signed with AWS Signature Version 4 (service `bedrock`, the provider's region).
//!
//! Requests arrive in OpenAI's chat shape and are translated to Converse: system
//! messages become `system` blocks, `tool` messages become `toolResult` blocks of a
//! user message, assistant `tool_calls` become `toolUse` blocks, consecutive
//! messages of one role are merged (Converse requires alternating roles). Answers
//! are translated back to `chat.completion` / `chat.completion.chunk` objects.
//!
//! Usage facts relied on: Bedrock reports camelCase `inputTokens`, `outputTokens`,
//! `totalTokens` and, with prompt caching, `cacheReadInputTokens` and
//! `cacheWriteInputTokens`; `inputTokens` does not include the cache fields, so it
//! is the normalized `input_tokens` as is. A stream reports usage once, in its
//! final `metadata` event.
//!
//! A ConverseStream body is not SSE but AWS event-stream binary framing
//! (`application/vnd.amazon.eventstream`): each message is a prelude (total length,
//! headers length, prelude CRC32), headers (`:message-type`, `:event-type`,
//! `:exception-type`, `:content-type`), a JSON payload and a message CRC32.
//!
//! Embeddings and image generation go through InvokeModel
//! (`POST /model/{modelId}/invoke`, signed the same way), whose body is the
//! model's own format, chosen by model id (an inference-profile prefix such as
//! `us.` is allowed):
//!
//! - `amazon.titan-embed-*`: Titan Text Embeddings, one call per input
//!   (`{"inputText","dimensions"?,"normalize"?}` → `{"embedding","inputTextTokenCount"}`);
//!   the token counts are summed, exact.
//! - `cohere.embed-*`: Cohere Embed, up to 96 texts per call
//!   (`{"texts","input_type"}` → `{"embeddings","id","response_type","texts"}`). The
//!   body reports no tokens; the `x-amzn-bedrock-input-token-count` response
//!   header is used when present, else the usage is estimated and flagged so.
//! - `amazon.titan-image-generator-*`, `amazon.nova-canvas-*`: `TEXT_IMAGE`
//!   (`{"taskType","textToImageParams","imageGenerationConfig"}` → `{"images":[base64]}`).
//!   Bedrock returns no URLs: `response_format: "url"` gets `data:` URLs.

use super::wire::{lenient, lenient_items, present, read_or_default};
use super::{
    embedding_texts, embedding_vector, embeddings_list, image_item, image_size, images_answer,
    wants_base64_embeddings, AnswerBudget, AnswerKind, AssistantMessage, ChatOutcome, ChatStream,
    Credential, EmbeddingsOutcome, ImagesOutcome, ProviderApi, StreamItem, UpstreamCall,
    UpstreamError,
};
use async_trait::async_trait;
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use domain::Usage;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Number, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

/// Whether this protocol passes the conformance suite.
pub(crate) const AVAILABLE: bool = true;

/// The SigV4 signing name of the Bedrock runtime.
pub(crate) const SIGNING_SERVICE: &str = "bedrock";

/// Largest event-stream message accepted (the format's own limit is 16 MiB), which
/// bounds what the hub buffers for one upstream stream.
pub const EVENT_STREAM_MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Prelude (12 bytes) plus message CRC (4 bytes): the smallest valid message.
const EVENT_STREAM_MESSAGE_MIN_BYTES: usize = 16;
const EVENT_STREAM_PRELUDE_BYTES: usize = 12;

pub(crate) struct Bedrock;

// ---------------------------------------------------------------------------
// Wire shapes: what Bedrock answers
//
// Read leniently (see `super::wire`): a field of the wrong type counts as absent.

/// A Converse answer.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseAnswer {
    #[serde(default, deserialize_with = "lenient")]
    output: Option<ConverseOutput>,
    #[serde(default, deserialize_with = "lenient")]
    stop_reason: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<ConverseUsage>,
}

#[derive(Deserialize)]
struct ConverseOutput {
    #[serde(default, deserialize_with = "lenient")]
    message: Option<ConverseAnswerMessage>,
}

#[derive(Deserialize)]
struct ConverseAnswerMessage {
    #[serde(default, deserialize_with = "lenient_items")]
    content: Option<Vec<ConverseAnswerBlock>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseAnswerBlock {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    /// Read as a [`ConverseToolUse`]; present at all, the block is a tool call.
    #[serde(default, deserialize_with = "present")]
    tool_use: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    reasoning_content: Option<ConverseReasoning>,
}

/// A `toolUse` block (whole in an answer, its start in a stream).
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseToolUse {
    /// The id and name are passed on as they came (`""` when absent).
    #[serde(default, deserialize_with = "present")]
    tool_use_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    input: Option<Value>,
}

impl ConverseToolUse {
    fn id(&mut self) -> Value {
        self.tool_use_id.take().unwrap_or_else(|| json!(""))
    }

    fn name(&mut self) -> Value {
        self.name.take().unwrap_or_else(|| json!(""))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseReasoning {
    #[serde(default, deserialize_with = "lenient")]
    reasoning_text: Option<ConverseText>,
}

#[derive(Deserialize)]
struct ConverseText {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
}

/// Converse's `usage` (see the module documentation).
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseUsage {
    #[serde(default, deserialize_with = "lenient")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_write_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens: Option<u64>,
}

/// The JSON payload of a ConverseStream event (its kind is in the
/// `:event-type` header); each kind reads only its own fields.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseStreamEvent {
    /// `contentBlockStart`, `contentBlockDelta`.
    #[serde(default, deserialize_with = "lenient")]
    content_block_index: Option<u64>,
    /// `contentBlockStart`.
    #[serde(default, deserialize_with = "lenient")]
    start: Option<ConverseBlockStart>,
    /// `contentBlockDelta`.
    #[serde(default, deserialize_with = "lenient")]
    delta: Option<ConverseBlockDelta>,
    /// `messageStop`.
    #[serde(default, deserialize_with = "lenient")]
    stop_reason: Option<String>,
    /// `metadata`.
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<ConverseUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseBlockStart {
    /// Read as a [`ConverseToolUse`]; present at all, a tool call starts.
    #[serde(default, deserialize_with = "present")]
    tool_use: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseBlockDelta {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    tool_use: Option<ConverseToolInputDelta>,
    #[serde(default, deserialize_with = "lenient")]
    reasoning_content: Option<ConverseText>,
}

#[derive(Deserialize)]
struct ConverseToolInputDelta {
    #[serde(default, deserialize_with = "lenient")]
    input: Option<String>,
}

/// A Bedrock error body: `{"message": …}`, capitalized by some AWS front ends.
#[derive(Default, Deserialize)]
struct BedrockErrorBody {
    /// Kept as it came: a `message` that is not text hides `Message`.
    #[serde(default, deserialize_with = "present")]
    message: Option<Value>,
    #[serde(rename = "Message", default, deserialize_with = "lenient")]
    capitalized_message: Option<String>,
}

/// A Titan Text Embeddings answer.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanEmbedAnswer {
    #[serde(default, deserialize_with = "lenient")]
    embedding: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    embeddings_by_type: Option<FloatEmbedding>,
    #[serde(default, deserialize_with = "lenient")]
    input_text_token_count: Option<u64>,
}

/// `{"float": […]}`: the float entry of embeddings asked for by type.
#[derive(Deserialize)]
struct FloatEmbedding {
    #[serde(default, deserialize_with = "lenient")]
    float: Option<Vec<Value>>,
}

/// A Cohere Embed answer.
#[derive(Default, Deserialize)]
struct CohereEmbedAnswer {
    #[serde(default, deserialize_with = "lenient")]
    embeddings: Option<CohereEmbeddings>,
}

/// A list of vectors (`embeddings_floats`) or, when types were asked for,
/// `{"float": [...]}` (`embeddings_by_type`).
#[derive(Deserialize)]
#[serde(untagged)]
enum CohereEmbeddings {
    Floats(Vec<Value>),
    ByType(FloatEmbedding),
}

/// A `TEXT_IMAGE` answer.
#[derive(Default, Deserialize)]
struct TextImageAnswer {
    #[serde(default, deserialize_with = "lenient")]
    images: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    error: Option<String>,
}

/// The request path of Converse (or ConverseStream) for a model id, with the id
/// percent-encoded as one path segment (ids hold `:`, ARNs hold `/` too).
pub fn converse_path(model_id: &str, stream: bool) -> String {
    let action = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("model/{}/{action}", encode_path_segment(model_id))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The message of a Bedrock error body (`{"message": "..."}`; some AWS front
/// ends capitalize it).
pub(crate) fn bedrock_error_message(body: &Value) -> Option<String> {
    let body: BedrockErrorBody = read_or_default(body);
    match body.message {
        Some(message) => String::deserialize(message).ok(),
        None => body.capitalized_message,
    }
}

/// The SigV4 headers (`x-amz-date`, `authorization`) for one request whose other
/// signed headers are `headers` (`host` is taken from the URL and signed too).
pub fn sigv4_headers(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, UpstreamError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let signing_error = |e: &dyn std::fmt::Display| {
        UpstreamError::Protocol(format!("could not sign the Bedrock request: {e}"))
    };
    let identity = aws_credential_types::Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        "aigne-hub",
    )
    .into();
    // Default settings: the canonical URI is percent-encoded once more, as every
    // AWS service but S3 expects (so `%3A` in a model id is signed as `%253A`).
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| signing_error(&e))?
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| signing_error(&e))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| signing_error(&e))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// A signed `POST` of `body` (JSON) to `path` under the provider's base URL.
fn signed_post(
    call: &UpstreamCall<'_>,
    path: &str,
    body: &Value,
    accept: &str,
) -> Result<reqwest::RequestBuilder, UpstreamError> {
    let provider = call.provider;
    let Credential::Aws {
        access_key_id,
        secret_access_key,
    } = &provider.credential
    else {
        return Err(UpstreamError::Protocol(
            "a bedrock provider needs AWS credentials".into(),
        ));
    };
    let region = provider
        .region
        .as_deref()
        .ok_or_else(|| UpstreamError::Protocol("a bedrock provider needs a region".into()))?;
    let url = provider.endpoint(path);
    let bytes = serde_json::to_vec(body)
        .map_err(|e| UpstreamError::Protocol(format!("request is not serializable: {e}")))?;
    let headers = [("content-type", "application/json"), ("accept", accept)];
    let signed = sigv4_headers(
        &url,
        &headers,
        &bytes,
        access_key_id,
        secret_access_key.expose(),
        region,
        SystemTime::now(),
    )?;
    let mut request = call.http.client().post(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    for (name, value) in signed {
        request = request.header(name, value);
    }
    Ok(request.body(bytes))
}

fn unsupported(capability: &'static str) -> UpstreamError {
    UpstreamError::Unsupported {
        provider: "bedrock",
        capability,
    }
}

// ---------------------------------------------------------------------------
// Wire shapes: the OpenAI embeddings and images requests read, the InvokeModel
// requests written

/// The fields of an OpenAI embeddings request the InvokeModel bodies read.
#[derive(Default, Deserialize)]
struct EmbeddingsRequest {
    /// Titan takes a whole number; Cohere is given the value as it came.
    #[serde(default)]
    dimensions: Option<Value>,
    /// Not OpenAI fields: passed on when a client sends them.
    #[serde(default, deserialize_with = "lenient")]
    normalize: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    input_type: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    truncate: Option<String>,
}

/// The fields of an OpenAI images request a `TEXT_IMAGE` body reads.
#[derive(Default, Deserialize)]
struct ImagesRequest {
    #[serde(default, deserialize_with = "lenient")]
    prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    n: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    quality: Option<String>,
}

/// A Titan Text Embeddings request.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanEmbedRequest {
    input_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalize: Option<bool>,
    /// Titan Multimodal Embeddings' form of `dimensions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding_config: Option<TitanEmbeddingConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanEmbeddingConfig {
    output_embedding_length: u64,
}

/// A Cohere Embed request.
#[derive(Serialize)]
struct CohereEmbedRequest<'a> {
    texts: &'a [String],
    input_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<Value>,
}

// ---------------------------------------------------------------------------
// Wire shapes: the OpenAI chat request read, the Converse request written

/// The fields of an OpenAI chat request the translation reads, each read
/// leniently (a field of the wrong type counts as absent).
#[derive(Default, Deserialize)]
struct ChatRequest {
    #[serde(default, deserialize_with = "lenient_items")]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default, deserialize_with = "lenient")]
    max_completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    temperature: Option<Number>,
    #[serde(default, deserialize_with = "lenient")]
    top_p: Option<Number>,
    #[serde(default, deserialize_with = "lenient")]
    stop: Option<ChatStop>,
    #[serde(default, deserialize_with = "lenient_items")]
    tools: Option<Vec<ChatTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
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
    #[serde(default, deserialize_with = "lenient_items")]
    tool_calls: Option<Vec<ChatToolCall>>,
    #[serde(default, deserialize_with = "lenient")]
    tool_call_id: Option<String>,
}

#[derive(Default, Deserialize)]
struct ChatToolCall {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    function: Option<ChatFunctionCall>,
}

#[derive(Default, Deserialize)]
struct ChatFunctionCall {
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    arguments: Option<String>,
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
}

/// `image_url` as `{"url": …}` or, as some clients send it, the URL itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatImageUrl {
    Url(String),
    Object { url: String },
}

#[derive(Default, Deserialize)]
struct ChatTool {
    /// Read as a [`ChatFunction`]; a tool without one is left out.
    #[serde(default, deserialize_with = "present")]
    function: Option<Value>,
}

#[derive(Default, Deserialize)]
struct ChatFunction {
    /// Passed on as given (`""` when absent).
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
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

/// A Converse request body. It goes out through `serde_json::to_value`, so its
/// keys are sent sorted, as they always were.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest {
    messages: Vec<ConverseMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<ConverseBlock>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    inference_config: InferenceConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ConverseToolConfig>,
}

#[derive(Serialize)]
struct ConverseMessage {
    role: &'static str,
    content: Vec<ConverseBlock>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ConverseBlock {
    Text(String),
    Image(ConverseImage),
    ToolUse(ConverseToolUseBlock),
    ToolResult(ConverseToolResult),
}

#[derive(Serialize)]
struct ConverseImage {
    format: &'static str,
    source: ConverseImageSource,
}

#[derive(Serialize)]
struct ConverseImageSource {
    bytes: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseToolUseBlock {
    tool_use_id: String,
    name: String,
    input: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseToolResult {
    tool_use_id: String,
    content: [ConverseToolResultContent; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ConverseToolResultContent {
    Json(Value),
    Text(String),
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Value>>,
}

impl InferenceConfig {
    fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseToolConfig {
    tools: Vec<ConverseTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ConverseToolChoice>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseTool {
    tool_spec: ConverseToolSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseToolSpec {
    name: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: ConverseSchema,
}

#[derive(Serialize)]
struct ConverseSchema {
    json: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ConverseToolChoice {
    Any {},
    Auto {},
    Tool { name: String },
}

/// The text of an OpenAI message `content` that may only hold text: a string, or
/// an array of `{"type":"text","text":…}` parts (joined).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| read_or_default::<ChatPart>(p).text)
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A base64 `data:` URL as a Converse image block.
fn image_block(url: &str) -> Result<ConverseBlock, UpstreamError> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| unsupported("images by URL (send a base64 data: URL)"))?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| unsupported("images by URL (send a base64 data: URL)"))?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or_else(|| unsupported("images by URL (send a base64 data: URL)"))?;
    let format = match mime.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => return Err(unsupported("images other than PNG, JPEG, GIF or WebP")),
    };
    Ok(ConverseBlock::Image(ConverseImage {
        format,
        source: ConverseImageSource {
            bytes: data.to_string(),
        },
    }))
}

/// Converse content blocks of a user or assistant message's `content`.
fn content_blocks(content: &Value) -> Result<Vec<ConverseBlock>, UpstreamError> {
    let mut blocks = Vec::new();
    match content {
        Value::Null => {}
        Value::String(s) => {
            if !s.is_empty() {
                blocks.push(ConverseBlock::Text(s.clone()));
            }
        }
        Value::Array(parts) => {
            for part in parts.iter().map(read_or_default::<ChatPart>) {
                match part.kind.as_deref() {
                    Some("text") => {
                        let text = part.text.unwrap_or_default();
                        if !text.is_empty() {
                            blocks.push(ConverseBlock::Text(text));
                        }
                    }
                    Some("image_url") => {
                        let url = match part.image_url {
                            Some(ChatImageUrl::Url(url) | ChatImageUrl::Object { url }) => url,
                            None => String::new(),
                        };
                        blocks.push(image_block(&url)?);
                    }
                    _ => return Err(unsupported("message parts other than text and images")),
                }
            }
        }
        _ => {
            return Err(unsupported(
                "message content that is not a string or an array",
            ))
        }
    }
    Ok(blocks)
}

/// A tool result's content: a JSON object is passed as `json`, anything else as
/// `text`.
fn tool_result_content(content: &Value) -> ConverseToolResultContent {
    let text = text_of(content);
    match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => ConverseToolResultContent::Json(object),
        _ => ConverseToolResultContent::Text(text),
    }
}

/// `tool_calls` of an assistant message as `toolUse` blocks.
fn tool_use_blocks(tool_calls: Vec<ChatToolCall>) -> Result<Vec<ConverseBlock>, UpstreamError> {
    let mut blocks = Vec::new();
    for call in tool_calls {
        let function = call.function.unwrap_or_default();
        let arguments = function.arguments.unwrap_or_default();
        let input = if arguments.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str::<Value>(&arguments) {
                Ok(object @ Value::Object(_)) => object,
                _ => {
                    return Err(unsupported(
                        "tool call arguments that are not a JSON object",
                    ))
                }
            }
        };
        blocks.push(ConverseBlock::ToolUse(ConverseToolUseBlock {
            tool_use_id: call.id.unwrap_or_default(),
            name: function.name.unwrap_or_default(),
            input,
        }));
    }
    Ok(blocks)
}

/// `toolConfig` from OpenAI `tools` and `tool_choice`; `None` when there are no
/// tools or the choice is `"none"`.
fn tool_config(tools: Option<Vec<ChatTool>>, choice: Option<&Value>) -> Option<ConverseToolConfig> {
    let tools = tools.filter(|t| !t.is_empty())?;
    let choice =
        match choice {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match s.as_str() {
                "none" => return None,
                "required" => Some(ConverseToolChoice::Any {}),
                _ => Some(ConverseToolChoice::Auto {}),
            },
            Some(object) => ChatNamedToolChoice::deserialize(object).ok().map(|named| {
                ConverseToolChoice::Tool {
                    name: named.function.name,
                }
            }),
        };
    let tools = tools
        .into_iter()
        .filter_map(|tool| tool.function)
        .map(|function| {
            let function: ChatFunction = read_or_default(&function);
            let schema = function
                .parameters
                .map(Value::Object)
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            ConverseTool {
                tool_spec: ConverseToolSpec {
                    name: function.name.unwrap_or_else(|| json!("")),
                    description: function.description,
                    input_schema: ConverseSchema { json: schema },
                },
            }
        })
        .collect();
    Some(ConverseToolConfig {
        tools,
        tool_choice: choice,
    })
}

/// An OpenAI chat request as a Converse (or ConverseStream) request body; the
/// model id goes in the path, not the body.
pub fn openai_to_converse_request(request: &Value) -> Result<Value, UpstreamError> {
    let request: ChatRequest = read_or_default(request);
    let mut system = Vec::new();
    let mut messages: Vec<ConverseMessage> = Vec::new();
    for message in request.messages.into_iter().flatten() {
        let content = message.content.unwrap_or(Value::Null);
        let (role, blocks) = match message.role.as_deref() {
            Some("system" | "developer") => {
                let text = text_of(&content);
                if !text.is_empty() {
                    system.push(ConverseBlock::Text(text));
                }
                continue;
            }
            Some("user") => ("user", content_blocks(&content)?),
            Some("assistant") => {
                let mut blocks = content_blocks(&content)?;
                blocks.extend(tool_use_blocks(message.tool_calls.unwrap_or_default())?);
                ("assistant", blocks)
            }
            Some("tool") => {
                let block = ConverseBlock::ToolResult(ConverseToolResult {
                    tool_use_id: message.tool_call_id.unwrap_or_default(),
                    content: [tool_result_content(&content)],
                });
                ("user", vec![block])
            }
            _ => {
                return Err(unsupported(
                    "messages of roles other than system, developer, user, assistant and tool",
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Converse requires alternating roles: consecutive tool results (and a user
        // message after them) become one user message.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(ConverseMessage {
                role,
                content: blocks,
            }),
        }
    }
    let inference_config = InferenceConfig {
        // The hub sends one cap; should two come, the smaller (what a hold assumes).
        max_tokens: [request.max_completion_tokens, request.max_tokens]
            .into_iter()
            .flatten()
            .min(),
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: match request.stop {
            Some(ChatStop::One(s)) => Some(vec![Value::String(s)]),
            Some(ChatStop::Many(stops)) if !stops.is_empty() => Some(stops),
            _ => None,
        },
    };
    let body = ConverseRequest {
        messages,
        system,
        inference_config,
        tool_config: tool_config(request.tools, request.tool_choice.as_ref()),
    };
    serde_json::to_value(body)
        .map_err(|e| UpstreamError::Protocol(format!("request not encodable: {e}")))
}

/// A Converse `stopReason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Reads a Converse `usage` object; `None` if absent or malformed.
pub fn usage_from_converse(usage: &Value) -> Option<Usage> {
    usage_of(&read_or_default(usage))
}

fn usage_of(usage: &ConverseUsage) -> Option<Usage> {
    Some(Usage {
        input_tokens: usage.input_tokens?,
        cache_read_tokens: usage.cache_read_input_tokens.unwrap_or(0),
        cache_write_tokens: usage.cache_write_input_tokens.unwrap_or(0),
        output_tokens: usage.output_tokens.unwrap_or(0),
        ..Usage::default()
    })
}

fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Converse response as an OpenAI `chat.completion`, with its usage.
pub fn converse_to_openai_response(
    body: &Value,
    model: &str,
    id: &str,
) -> Result<ChatOutcome, UpstreamError> {
    let answer: ConverseAnswer = read_or_default(body);
    let content = answer
        .output
        .and_then(|o| o.message)
        .and_then(|m| m.content)
        .ok_or_else(|| UpstreamError::Protocol("Converse answer without output.message".into()))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(t) = block.text {
            text.push_str(&t);
        } else if let Some(tool_use) = &block.tool_use {
            let mut tool_use: ConverseToolUse = read_or_default(tool_use);
            let input = tool_use.input.take().unwrap_or(json!({}));
            tool_calls.push(json!({
                "id": tool_use.id(),
                "type": "function",
                "function": {
                    "name": tool_use.name(),
                    "arguments": input.to_string(),
                },
            }));
        } else if let Some(t) = block
            .reasoning_content
            .and_then(|r| r.reasoning_text)
            .and_then(|r| r.text)
        {
            reasoning.push_str(&t);
        }
    }
    let message = AssistantMessage::new(text, reasoning, tool_calls);
    let stop_reason = answer.stop_reason.as_deref().unwrap_or("end_turn");
    let usage = answer.usage.as_ref().and_then(usage_of);
    let choice =
        json!({"index": 0, "message": message, "finish_reason": finish_reason(stop_reason)});
    let body = super::chat_completion(
        json!(id),
        now_seconds(),
        json!(model),
        vec![choice],
        usage.as_ref(),
    );
    Ok(ChatOutcome { body, usage })
}

/// An incremental decoder of AWS event-stream messages: bytes are pushed as they
/// arrive, whole messages (CRC-checked) come out. It buffers at most one
/// unfinished message of at most its `message_max_bytes` (at most
/// [`EVENT_STREAM_MESSAGE_MAX_BYTES`]) plus the last chunk.
pub struct EventStreamParser {
    buffer: BytesMut,
    message_max_bytes: usize,
}

impl Default for EventStreamParser {
    fn default() -> Self {
        Self::new(EVENT_STREAM_MESSAGE_MAX_BYTES)
    }
}

impl EventStreamParser {
    /// A parser refusing messages longer than `message_max_bytes` (the hub's
    /// `Limits::upstream_stream_event_max_bytes`) or than the format allows.
    pub fn new(message_max_bytes: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            message_max_bytes: message_max_bytes.min(EVENT_STREAM_MESSAGE_MAX_BYTES),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        self.buffer.extend_from_slice(chunk);
        self.leading_message_len().map(|_| ())
    }

    /// The total length the prelude of the next message announces, once known.
    fn leading_message_len(&self) -> Result<Option<usize>, UpstreamError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if len < EVENT_STREAM_MESSAGE_MIN_BYTES {
            return Err(UpstreamError::Protocol(format!(
                "event-stream message of {len} bytes is out of bounds"
            )));
        }
        if len > self.message_max_bytes {
            return Err(UpstreamError::AnswerTooLarge {
                limit_bytes: self.message_max_bytes,
            });
        }
        Ok(Some(len))
    }

    /// The next complete message in what was pushed so far, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>, UpstreamError> {
        if self.buffer.len() < EVENT_STREAM_PRELUDE_BYTES {
            return Ok(None);
        }
        let Some(len) = self.leading_message_len()? else {
            return Ok(None);
        };
        if self.buffer.len() < len {
            return Ok(None);
        }
        let frame: Bytes = self.buffer.split_to(len).freeze();
        aws_smithy_eventstream::frame::read_message_from(frame)
            .map(Some)
            .map_err(|e| UpstreamError::Protocol(format!("bad event-stream message: {e}")))
    }

    /// Whether bytes of an unfinished message remain.
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

/// The string value of an event-stream header.
pub(crate) fn event_header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// The HTTP status Bedrock documents for a ConverseStream exception.
fn exception_status(exception_type: &str) -> u16 {
    match exception_type {
        "validationException" => 400,
        "accessDeniedException" => 403,
        "resourceNotFoundException" => 404,
        "modelTimeoutException" => 408,
        "modelStreamErrorException" => 424,
        "throttlingException" => 429,
        "internalServerException" => 500,
        "serviceUnavailableException" | "modelNotReadyException" => 503,
        _ => 502,
    }
}

/// Turns ConverseStream events into OpenAI stream items, one message at a time.
pub struct ConverseStreamTranslator {
    id: String,
    model: String,
    created: i64,
    /// Converse `contentBlockIndex` of each tool call → its OpenAI tool call index.
    tool_indices: HashMap<u64, u64>,
    stopped: bool,
}

impl ConverseStreamTranslator {
    pub fn new(id: &str, model: &str) -> Self {
        Self {
            id: id.to_string(),
            model: model.to_string(),
            created: now_seconds(),
            tool_indices: HashMap::new(),
            stopped: false,
        }
    }

    /// Whether `messageStop` arrived (a stream ending before it was cut short).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> StreamItem {
        StreamItem::Chunk(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    /// The stream items one event-stream message stands for; an exception is an
    /// error.
    pub fn items_for(&mut self, message: &Message) -> Result<Vec<StreamItem>, UpstreamError> {
        let json = || -> Result<Value, UpstreamError> {
            serde_json::from_slice(message.payload()).map_err(|e| {
                UpstreamError::Protocol(format!("event-stream payload is not JSON: {e}"))
            })
        };
        let payload = || -> Result<ConverseStreamEvent, UpstreamError> {
            Ok(serde_json::from_value(json()?).unwrap_or_default())
        };
        match event_header(message, ":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let kind = event_header(message, ":exception-type").unwrap_or("exception");
                let message_text = json()
                    .ok()
                    .and_then(|p| bedrock_error_message(&p))
                    .unwrap_or_else(|| kind.to_string());
                return Err(UpstreamError::Status {
                    status: exception_status(kind),
                    code: super::redact::error_code(&serde_json::json!({ "__type": kind })),
                    message: format!("{kind}: {message_text}"),
                });
            }
            _ => {
                let code = event_header(message, ":error-code").unwrap_or("error");
                let text = event_header(message, ":error-message").unwrap_or("stream error");
                return Err(UpstreamError::Status {
                    status: 502,
                    code: super::redact::error_code(&serde_json::json!({ "code": code })),
                    message: format!("{code}: {text}"),
                });
            }
        }
        let event_type = event_header(message, ":event-type").unwrap_or("");
        let items = match event_type {
            "messageStart" => {
                vec![self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)]
            }
            "contentBlockStart" => {
                let event = payload()?;
                match event.start.and_then(|s| s.tool_use) {
                    Some(tool_use) => {
                        let mut tool_use: ConverseToolUse = read_or_default(&tool_use);
                        let block = event.content_block_index.unwrap_or(0);
                        let index = self.tool_indices.len() as u64;
                        self.tool_indices.insert(block, index);
                        vec![self.chunk(
                            json!({"tool_calls": [{
                                "index": index,
                                "id": tool_use.id(),
                                "type": "function",
                                "function": {
                                    "name": tool_use.name(),
                                    "arguments": "",
                                },
                            }]}),
                            Value::Null,
                        )]
                    }
                    None => Vec::new(),
                }
            }
            "contentBlockDelta" => {
                let event = payload()?;
                let delta = event.delta.unwrap_or_default();
                if let Some(text) = delta.text {
                    vec![self.chunk(json!({"content": text}), Value::Null)]
                } else if let Some(input) = delta.tool_use.and_then(|t| t.input) {
                    let block = event.content_block_index.unwrap_or(0);
                    let index = self.tool_indices.get(&block).copied().ok_or_else(|| {
                        UpstreamError::Protocol("tool input for a block that never started".into())
                    })?;
                    vec![self.chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]}),
                        Value::Null,
                    )]
                } else if let Some(text) = delta.reasoning_content.and_then(|r| r.text) {
                    vec![self.chunk(json!({"reasoning_content": text}), Value::Null)]
                } else {
                    Vec::new()
                }
            }
            "messageStop" => {
                let event = payload()?;
                self.stopped = true;
                let reason = event.stop_reason.as_deref().unwrap_or("end_turn");
                vec![self.chunk(json!({}), json!(finish_reason(reason)))]
            }
            "metadata" => payload()?
                .usage
                .as_ref()
                .and_then(usage_of)
                .map(StreamItem::Usage)
                .into_iter()
                .collect(),
            // contentBlockStop and events added later carry nothing to relay.
            _ => Vec::new(),
        };
        Ok(items)
    }
}

/// A body as it arrives (`Upstream::stream_bytes`: bounded in all).
pub type ByteStream = super::UpstreamBytes;

struct StreamState {
    bytes: ByteStream,
    parser: EventStreamParser,
    translator: ConverseStreamTranslator,
    pending: VecDeque<StreamItem>,
    done: bool,
}

impl StreamState {
    fn fail(mut self, e: UpstreamError) -> Option<(Result<StreamItem, UpstreamError>, Self)> {
        self.done = true;
        self.pending.clear();
        Some((Err(e), self))
    }
}

/// Decodes a ConverseStream body into OpenAI stream items, waiting at most `idle`
/// between chunks.
pub fn converse_stream(
    bytes: ByteStream,
    translator: ConverseStreamTranslator,
    idle: Duration,
) -> ChatStream {
    decode_converse_stream(bytes, EventStreamParser::default(), translator, idle)
}

/// [`converse_stream`] with the parser that bounds its messages.
fn decode_converse_stream(
    bytes: ByteStream,
    parser: EventStreamParser,
    translator: ConverseStreamTranslator,
    idle: Duration,
) -> ChatStream {
    let state = StreamState {
        bytes,
        parser,
        translator,
        pending: VecDeque::new(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut state| async move {
            loop {
                if let Some(item) = state.pending.pop_front() {
                    return Some((Ok(item), state));
                }
                if state.done {
                    return None;
                }
                match state.parser.next_message() {
                    Err(e) => return state.fail(e),
                    Ok(Some(message)) => match state.translator.items_for(&message) {
                        Ok(items) => {
                            state.pending.extend(items);
                            continue;
                        }
                        Err(e) => return state.fail(e),
                    },
                    Ok(None) => {}
                }
                match tokio::time::timeout(idle, state.bytes.next()).await {
                    Err(_) => return state.fail(UpstreamError::Timeout),
                    Ok(None) => {
                        if state.parser.has_partial() {
                            return state
                                .fail(UpstreamError::Protocol("stream ended mid-message".into()));
                        }
                        if !state.translator.stopped() {
                            return state.fail(UpstreamError::Protocol(
                                "stream ended before messageStop".into(),
                            ));
                        }
                        state.done = true;
                    }
                    Ok(Some(Err(e))) => return state.fail(e),
                    Ok(Some(Ok(chunk))) => {
                        if let Err(e) = state.parser.push(&chunk) {
                            return state.fail(e);
                        }
                    }
                }
            }
        },
    ))
}

fn model_of(request: &Value) -> Result<&str, UpstreamError> {
    super::request_model(request)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| UpstreamError::Protocol("request without a model".into()))
}

/// An OpenAI-style id from Bedrock's request id (a fresh one if it sent none).
fn completion_id(response: &reqwest::Response) -> String {
    let request_id = response
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    format!("chatcmpl-{request_id}")
}

// ---------------------------------------------------------------------------
// InvokeModel: embeddings and images

/// The request path of InvokeModel for a model id (one encoded path segment).
pub fn invoke_path(model_id: &str) -> String {
    format!("model/{}/invoke", encode_path_segment(model_id))
}

/// The model id without a cross-region inference profile prefix (`us.`, `eu.`, …),
/// which names where the call may run, not the model's body format.
fn base_model_id(model_id: &str) -> &str {
    const PROFILE_PREFIXES: [&str; 8] = [
        "us.", "us-gov.", "eu.", "apac.", "jp.", "au.", "ca.", "global.",
    ];
    PROFILE_PREFIXES
        .iter()
        .find_map(|prefix| model_id.strip_prefix(prefix))
        .unwrap_or(model_id)
}

/// The InvokeModel body family of an embeddings model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingFamily {
    /// `amazon.titan-embed-*`: one text per call.
    Titan,
    /// `cohere.embed-*`: up to [`COHERE_TEXTS_PER_CALL`] texts per call.
    Cohere,
}

/// The family of an embeddings model id; `None` for models this module cannot
/// embed with.
pub fn embedding_family(model_id: &str) -> Option<EmbeddingFamily> {
    let id = base_model_id(model_id);
    if id.starts_with("amazon.titan-embed") {
        Some(EmbeddingFamily::Titan)
    } else if id.starts_with("cohere.embed") {
        Some(EmbeddingFamily::Cohere)
    } else {
        None
    }
}

/// Texts one Cohere Embed call may carry (Bedrock's documented maximum).
pub(crate) const COHERE_TEXTS_PER_CALL: usize = 96;

/// Titan embedding calls in flight at once for one request.
const TITAN_CONCURRENT_CALLS: usize = 4;

/// The Titan Embeddings body for one text. Titan Text Embeddings V2 takes
/// `dimensions` (256, 512 or 1024) and `normalize`; the multimodal model takes
/// `embeddingConfig.outputEmbeddingLength` instead.
pub fn titan_embed_request(model_id: &str, text: &str, request: &Value) -> Value {
    let request: EmbeddingsRequest = read_or_default(request);
    let dimensions = request.dimensions.and_then(|d| u64::deserialize(d).ok());
    let mut body = TitanEmbedRequest {
        input_text: text.to_string(),
        ..TitanEmbedRequest::default()
    };
    if base_model_id(model_id).starts_with("amazon.titan-embed-image") {
        body.embedding_config = dimensions.map(|d| TitanEmbeddingConfig {
            output_embedding_length: d,
        });
    } else {
        body.dimensions = dimensions;
        body.normalize = request.normalize;
    }
    json!(body)
}

/// The Cohere Embed body for a batch of texts. `input_type` defaults to
/// `search_document` (Cohere requires one; a client may send its own, as may it
/// `truncate`); `dimensions` becomes `output_dimension`, which only Embed v4 has.
pub fn cohere_embed_request(
    model_id: &str,
    texts: &[String],
    request: &Value,
) -> Result<Value, UpstreamError> {
    let request: EmbeddingsRequest = read_or_default(request);
    if request.dimensions.is_some() && !base_model_id(model_id).starts_with("cohere.embed-v4") {
        return Err(unsupported(
            "`dimensions` with Cohere Embed models before v4",
        ));
    }
    Ok(json!(CohereEmbedRequest {
        texts,
        input_type: request
            .input_type
            .unwrap_or_else(|| "search_document".to_string()),
        truncate: request.truncate,
        output_dimension: request.dimensions,
    }))
}

/// The float vectors of a Cohere Embed answer: `embeddings` is a list of vectors
/// (`embeddings_floats`) or, when types were asked for, `{"float": [...]}`
/// (`embeddings_by_type`).
fn cohere_vectors(answer: &Value, texts: usize) -> Result<Vec<Value>, UpstreamError> {
    let answer: CohereEmbedAnswer = read_or_default(answer);
    match answer.embeddings {
        Some(CohereEmbeddings::Floats(vectors)) => Some(vectors),
        Some(CohereEmbeddings::ByType(by_type)) => by_type.float,
        None => None,
    }
    .filter(|v| v.len() == texts)
    .ok_or_else(|| {
        UpstreamError::Protocol("Cohere Embed answered the wrong number of embeddings".into())
    })
}

/// The vector of a Titan Embeddings answer (`embedding`, or the float entry of
/// `embeddingsByType`), and the input tokens it reports.
fn titan_vector(answer: &Value) -> Result<(Vec<Value>, Option<u64>), UpstreamError> {
    let answer: TitanEmbedAnswer = read_or_default(answer);
    let vector = answer
        .embedding
        .or_else(|| answer.embeddings_by_type.and_then(|e| e.float))
        .ok_or_else(|| UpstreamError::Protocol("Titan Embeddings answered no embedding".into()))?;
    Ok((vector, answer.input_text_token_count))
}

/// The input tokens InvokeModel reports in a response header (not part of the
/// body format of every model).
fn header_input_tokens(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-amzn-bedrock-input-token-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn estimated_tokens(texts: &[String]) -> u64 {
    Usage::estimate(texts.iter().map(|t| t.len() as u64).sum(), 0).input_tokens
}

/// One signed InvokeModel call: the response's header token count and its body.
/// The body counts against `budget`, shared by the calls of one request.
async fn invoke(
    call: &UpstreamCall<'_>,
    model_id: &str,
    body: &Value,
    budget: &AnswerBudget,
) -> Result<(Option<u64>, Value), UpstreamError> {
    let post = signed_post(call, &invoke_path(model_id), body, "application/json")?;
    let response = call.http.send(post, bedrock_error_message).await?;
    let tokens = header_input_tokens(&response);
    Ok((tokens, call.http.json_within(response, budget).await?))
}

/// Vectors (in input order) and usage of an embeddings request.
async fn embed(
    call: &UpstreamCall<'_>,
    model_id: &str,
    family: EmbeddingFamily,
    texts: &[String],
    request: &Value,
) -> Result<(Vec<Vec<Value>>, Usage), UpstreamError> {
    let mut usage = Usage::default();
    let mut vectors = Vec::with_capacity(texts.len());
    let budget = call.http.answer_budget(AnswerKind::Embeddings);
    match family {
        EmbeddingFamily::Titan => {
            let bodies: Vec<Value> = texts
                .iter()
                .map(|text| titan_embed_request(model_id, text, request))
                .collect();
            // Built up front, so that the stream holds futures, not a closure
            // over borrowed texts.
            let calls: Vec<_> = bodies
                .iter()
                .map(|body| invoke(call, model_id, body, &budget))
                .collect();
            // The first failure ends the request (the gateway may retry it whole).
            let answers: Vec<(Option<u64>, Value)> = futures_util::stream::iter(calls)
                .buffered(TITAN_CONCURRENT_CALLS)
                .try_collect()
                .await?;
            for (text, (_, answer)) in texts.iter().zip(answers) {
                let (vector, input_tokens) = titan_vector(&answer)?;
                vectors.push(vector);
                match input_tokens {
                    Some(tokens) => usage.input_tokens += tokens,
                    None => {
                        usage.input_tokens += estimated_tokens(std::slice::from_ref(text));
                        usage.estimated = true;
                    }
                }
            }
        }
        EmbeddingFamily::Cohere => {
            for batch in texts.chunks(COHERE_TEXTS_PER_CALL) {
                let body = cohere_embed_request(model_id, batch, request)?;
                let (header_tokens, answer) = invoke(call, model_id, &body, &budget).await?;
                for vector in cohere_vectors(&answer, batch.len())? {
                    let Value::Array(vector) = vector else {
                        return Err(UpstreamError::Protocol(
                            "Cohere Embed answered a malformed embedding".into(),
                        ));
                    };
                    vectors.push(vector);
                }
                // The body has no token count; the header, when Bedrock sends it,
                // is exact. Otherwise estimate, flagged.
                match header_tokens {
                    Some(tokens) => usage.input_tokens += tokens,
                    None => {
                        usage.input_tokens += estimated_tokens(batch);
                        usage.estimated = true;
                    }
                }
            }
        }
    }
    Ok((vectors, usage))
}

/// Whether a model generates images from text with the Titan Image Generator /
/// Nova Canvas body.
pub fn is_text_image_model(model_id: &str) -> bool {
    let id = base_model_id(model_id);
    id.starts_with("amazon.titan-image-generator") || id.starts_with("amazon.nova-canvas")
}

/// An OpenAI images request as a Titan Image Generator / Nova Canvas
/// `TEXT_IMAGE` body: `n` → `numberOfImages`, `size` → `width`/`height`,
/// `quality` `hd`/`high` → `premium`, `standard`/`medium`/`low` → `standard`.
pub fn openai_to_text_image_request(request: &Value) -> Result<Value, UpstreamError> {
    let images: ImagesRequest = read_or_default(request);
    let prompt = images
        .prompt
        .filter(|p| !p.is_empty())
        .ok_or_else(|| unsupported("image requests without a prompt"))?;
    let mut config = Map::new();
    config.insert("numberOfImages".into(), json!(images.n.unwrap_or(1)));
    if let Some((width, height)) = image_size(request, "bedrock")? {
        config.insert("width".into(), json!(width));
        config.insert("height".into(), json!(height));
    }
    match images.quality.as_deref() {
        None | Some("auto") => {}
        Some("hd" | "high") => {
            config.insert("quality".into(), json!("premium"));
        }
        Some("standard" | "medium" | "low") => {
            config.insert("quality".into(), json!("standard"));
        }
        Some(_) => return Err(unsupported("image qualities other than standard and hd")),
    }
    Ok(json!({
        "taskType": "TEXT_IMAGE",
        "textToImageParams": {"text": prompt},
        "imageGenerationConfig": config,
    }))
}

/// The MIME type of base64 image data, from its first bytes (JPEG or PNG, what
/// these models produce).
fn base64_image_mime(b64: &str) -> &'static str {
    if b64.starts_with("/9j/") {
        "image/jpeg"
    } else {
        "image/png"
    }
}

/// An OpenAI images answer from a `TEXT_IMAGE` answer (`{"images":[base64…]}`);
/// an answer with an `error` and no images is the upstream refusing.
pub fn text_image_to_openai(
    answer: &Value,
    request: &Value,
) -> Result<ImagesOutcome, UpstreamError> {
    let answer: TextImageAnswer = read_or_default(answer);
    let Some(images) = answer.images.filter(|i| !i.is_empty()) else {
        return Err(match answer.error {
            Some(message) if !message.is_empty() => UpstreamError::Status {
                status: 400,
                code: None,
                message,
            },
            _ => UpstreamError::Protocol("InvokeModel answered no images".into()),
        });
    };
    let data = images
        .iter()
        .map(|image| match image {
            Value::String(b64) => Ok(image_item(request, b64, base64_image_mime(b64))),
            _ => Err(UpstreamError::Protocol(
                "an image that is not base64".into(),
            )),
        })
        .collect::<Result<Vec<_>, UpstreamError>>()?;
    Ok(images_answer(data))
}

#[async_trait]
impl ProviderApi for Bedrock {
    async fn chat(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatOutcome, UpstreamError> {
        let model = model_of(request)?;
        let converse = openai_to_converse_request(request)?;
        let post = signed_post(
            call,
            &converse_path(model, false),
            &converse,
            "application/json",
        )?;
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let exchange = async {
            let response = call.http.send(post, bedrock_error_message).await?;
            let id = completion_id(&response);
            let body = call.http.json_body(response, AnswerKind::Chat).await?;
            converse_to_openai_response(&body, model, &id)
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
        let model = model_of(request)?;
        let converse = openai_to_converse_request(request)?;
        let post = signed_post(
            call,
            &converse_path(model, true),
            &converse,
            "application/vnd.amazon.eventstream",
        )?;
        let response = call.http.send(post, bedrock_error_message).await?;
        let translator = ConverseStreamTranslator::new(&completion_id(&response), model);
        let limits = &call.http.limits;
        let idle = Duration::from_millis(limits.upstream_idle_timeout_ms);
        let parser = EventStreamParser::new(limits.upstream_stream_event_max_bytes);
        Ok(decode_converse_stream(
            call.http.stream_bytes(response),
            parser,
            translator,
            idle,
        ))
    }
    async fn embeddings(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<EmbeddingsOutcome, UpstreamError> {
        let model = model_of(request)?;
        let family = embedding_family(model).ok_or_else(|| {
            unsupported("embeddings with models other than amazon.titan-embed-* and cohere.embed-*")
        })?;
        let texts = embedding_texts(request, "bedrock")?;
        let base64 = wants_base64_embeddings(request);
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let (vectors, usage) =
            tokio::time::timeout(total, embed(call, model, family, &texts, request))
                .await
                .map_err(|_| UpstreamError::Timeout)??;
        let vectors = vectors
            .iter()
            .map(|v| embedding_vector(v, base64))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                UpstreamError::Protocol("an embedding value that is not a number".into())
            })?;
        Ok(EmbeddingsOutcome {
            body: embeddings_list(model, vectors, usage.input_tokens),
            usage: Some(usage),
        })
    }

    async fn images(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ImagesOutcome, UpstreamError> {
        let model = model_of(request)?;
        if !is_text_image_model(model) {
            return Err(unsupported(
                "image generation with models other than amazon.titan-image-generator-* and amazon.nova-canvas-*",
            ));
        }
        let body = openai_to_text_image_request(request)?;
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let budget = call.http.answer_budget(AnswerKind::Images);
        let (_, answer) = tokio::time::timeout(total, invoke(call, model, &body, &budget))
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        text_image_to_openai(&answer, request)
    }
}
