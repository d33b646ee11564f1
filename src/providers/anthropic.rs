//! The Anthropic Messages API (`POST {base_url}/v1/messages`).
//!
//! Requests arrive in OpenAI's chat format and are translated to Anthropic's
//! (`openai_to_anthropic_request`); answers are translated back to OpenAI's
//! `chat.completion` object (`answer_to_openai`) or, for streams, to
//! `chat.completion.chunk` objects (`AnthropicToOpenAiStream`).
//!
//! Usage facts relied on: Anthropic's `usage.input_tokens` EXCLUDES the prompt
//! tokens written to (`cache_creation_input_tokens`) and read from
//! (`cache_read_input_tokens`) the cache, so the three map one to one onto the
//! normalized `Usage`; `output_tokens` includes thinking tokens, which Anthropic
//! does not count apart (so `reasoning_tokens` stays 0). In a stream,
//! `message_start` carries the input and cache counts (and an initial
//! `output_tokens`), and `message_delta` carries the CUMULATIVE `output_tokens`
//! (newer API versions repeat the input and cache counts there too): every field is
//! merged by taking its latest reported value, never by adding.
//!
//! The hub's own Anthropic ingress (`POST /v1/messages`, `crate::ingress::messages`) does
//! not translate at all when the upstream is Anthropic: `messages_passthrough`
//! and `messages_passthrough_stream` send the client's body as it is and hand the
//! answer back as it came, reading only the usage.

use super::wire::{lenient, lenient_items, present, read_or_default};
use super::{
    chat_completion, error_dot_message, AnswerKind, AssistantMessage, ChatOutcome, ChatStream,
    ProviderApi, SseEvent, StreamItem, UpstreamCall, UpstreamError,
};
use async_trait::async_trait;
use domain::Usage;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Number, Value};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;

/// Whether this protocol passes the conformance suite.
pub(crate) const AVAILABLE: bool = true;

/// The API version this module speaks (sent as `anthropic-version`).
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Output cap sent when the request names none (Anthropic requires `max_tokens`).
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;

pub(crate) struct Anthropic;

/// A request the translation cannot express in Anthropic's format.
fn bad_request(message: impl Into<String>) -> UpstreamError {
    UpstreamError::Refused(message.into())
}

// ---------------------------------------------------------------------------
// Wire shapes: the OpenAI request read, the Anthropic request written
// ---------------------------------------------------------------------------

/// The fields of an OpenAI chat request the translation reads. Each is read
/// leniently (see [`super::wire`]): a field of the wrong type counts as absent.
#[derive(Default, Deserialize)]
struct OpenAiChatRequest {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient_items")]
    messages: Option<Vec<OpenAiMessage>>,
    #[serde(default, deserialize_with = "lenient")]
    n: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    top_p: Option<Number>,
    /// Not OpenAI, but accepted by several OpenAI-compatible gateways.
    #[serde(default, deserialize_with = "lenient")]
    top_k: Option<Number>,
    #[serde(default, deserialize_with = "lenient")]
    stop: Option<OpenAiStop>,
    #[serde(default, deserialize_with = "lenient")]
    user: Option<String>,
    /// Extended thinking, in Anthropic's own shape.
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "lenient_items")]
    tools: Option<Vec<OpenAiTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    parallel_tool_calls: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    response_format: Option<OpenAiResponseFormat>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiStop {
    One(String),
    /// Passed on as given.
    Many(Vec<Value>),
}

#[derive(Default, Deserialize)]
struct OpenAiMessage {
    #[serde(default, deserialize_with = "lenient")]
    role: Option<String>,
    /// A string, an array of parts, or null: checked by the translation, which
    /// refuses any other shape.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default, deserialize_with = "lenient_items")]
    tool_calls: Option<Vec<OpenAiToolCall>>,
    #[serde(default, deserialize_with = "lenient")]
    tool_call_id: Option<String>,
}

/// One part of a message's `content` array.
#[derive(Default, Deserialize)]
struct OpenAiPart {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    refusal: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    image_url: Option<OpenAiImageUrl>,
    #[serde(default, deserialize_with = "lenient")]
    file: Option<OpenAiFile>,
    /// Anthropic's prompt-caching marker, passed on as given.
    #[serde(default, deserialize_with = "present")]
    cache_control: Option<Value>,
}

/// `image_url` as `{"url": …}` or, as some clients send it, the URL itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiImageUrl {
    Url(String),
    Object { url: String },
}

#[derive(Deserialize)]
struct OpenAiFile {
    #[serde(default, deserialize_with = "lenient")]
    file_data: Option<String>,
}

#[derive(Default, Deserialize)]
struct OpenAiToolCall {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    function: Option<OpenAiFunctionCall>,
}

#[derive(Deserialize)]
struct OpenAiFunctionCall {
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    arguments: Option<String>,
}

#[derive(Default, Deserialize)]
struct OpenAiTool {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    /// Kept as it came so that a `function` of the wrong shape is reported as
    /// lacking `function.name`, not as absent.
    #[serde(default, deserialize_with = "present")]
    function: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    cache_control: Option<Value>,
}

#[derive(Default, Deserialize)]
struct OpenAiFunction {
    #[serde(default, deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    parameters: Option<Map<String, Value>>,
}

/// `tool_choice: {"type": "function", "function": {"name": …}}`.
#[derive(Deserialize)]
struct OpenAiNamedToolChoice {
    function: OpenAiFunctionName,
}

#[derive(Deserialize)]
struct OpenAiFunctionName {
    name: String,
}

#[derive(Deserialize)]
struct OpenAiResponseFormat {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    json_schema: Option<OpenAiJsonSchema>,
}

#[derive(Deserialize)]
struct OpenAiJsonSchema {
    #[serde(default, deserialize_with = "present")]
    schema: Option<Value>,
}

/// An Anthropic Messages request. It goes out through `serde_json::to_value`, so
/// its keys are sent sorted, as they always were.
#[derive(Serialize)]
struct AnthropicRequest {
    model: String,
    messages: Vec<AnthropicMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<AnthropicContent>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<AnthropicMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<AnthropicTool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<AnthropicToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
}

#[derive(Serialize)]
struct AnthropicMessage {
    role: &'static str,
    content: AnthropicContent,
}

/// Content as a plain string (the shortest form) or as blocks.
#[derive(Serialize)]
#[serde(untagged)]
enum AnthropicContent {
    Text(String),
    Blocks(Vec<AnthropicBlock>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicBlock {
    Text {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    Image {
        source: AnthropicSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    Document {
        source: AnthropicSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: AnthropicContent,
    },
}

impl AnthropicBlock {
    fn text(text: impl Into<String>) -> Self {
        AnthropicBlock::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    /// The text of a text block without a cache marker (one that can be sent as a
    /// plain string).
    fn plain_text(&self) -> Option<&str> {
        match self {
            AnthropicBlock::Text {
                text,
                cache_control: None,
            } => Some(text),
            _ => None,
        }
    }

    fn set_cache_control(&mut self, marker: Value) {
        match self {
            AnthropicBlock::Text { cache_control, .. }
            | AnthropicBlock::Image { cache_control, .. }
            | AnthropicBlock::Document { cache_control, .. } => *cache_control = Some(marker),
            AnthropicBlock::ToolUse { .. } | AnthropicBlock::ToolResult { .. } => {}
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Serialize)]
struct AnthropicMetadata {
    user_id: String,
}

#[derive(Serialize)]
struct AnthropicTool {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<Value>,
}

#[derive(Serialize)]
struct AnthropicToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

impl AnthropicToolChoice {
    fn of_kind(kind: &'static str) -> Self {
        Self {
            kind,
            name: None,
            disable_parallel_tool_use: None,
        }
    }
}

// ---------------------------------------------------------------------------
// OpenAI request → Anthropic request
// ---------------------------------------------------------------------------

/// Translates an OpenAI chat request (with `model` already the upstream's name)
/// into an Anthropic Messages request. Does not set `stream`.
pub(crate) fn openai_to_anthropic_request(request: &Value) -> Result<Value, UpstreamError> {
    anthropic_body(request, false)
}

/// The Anthropic request body for an OpenAI chat request, with `"stream": true`
/// when `stream`.
fn anthropic_body(request: &Value, stream: bool) -> Result<Value, UpstreamError> {
    let mut body = translate_request(read_or_default(request))?;
    body.stream = stream.then_some(true);
    serde_json::to_value(body)
        .map_err(|e| UpstreamError::Protocol(format!("request not encodable: {e}")))
}

fn translate_request(request: OpenAiChatRequest) -> Result<AnthropicRequest, UpstreamError> {
    let model = request
        .model
        .ok_or_else(|| bad_request("`model` is required"))?;
    let openai_messages = request
        .messages
        .ok_or_else(|| bad_request("`messages` is required"))?;
    if request.n.is_some_and(|n| n > 1) {
        return Err(bad_request(
            "Anthropic returns a single choice: `n` must be 1",
        ));
    }

    let mut system: Vec<AnthropicBlock> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<AnthropicBlock>)> = Vec::new();
    for message in openai_messages {
        match message.role.as_deref().unwrap_or("") {
            "system" | "developer" => {
                system.extend(openai_to_anthropic_content(message.content.as_ref(), true)?);
            }
            "user" => {
                let blocks = openai_to_anthropic_content(message.content.as_ref(), false)?;
                push_message(&mut messages, "user", blocks);
            }
            "assistant" => {
                let blocks = openai_to_anthropic_assistant_blocks(message)?;
                push_message(&mut messages, "assistant", blocks);
            }
            "tool" => {
                // Tool results go back as a user turn; consecutive results (and a user
                // message right after them) merge into one turn, results first.
                let block = openai_to_anthropic_tool_result(message)?;
                push_message(&mut messages, "user", vec![block]);
            }
            other => {
                return Err(bad_request(format!(
                    "message role {other:?} is not supported by Anthropic"
                )))
            }
        }
    }

    // `response_format` has no equivalent in the Messages API: best effort, the
    // wanted format is asked for in the system prompt (the answer is not validated).
    if let Some(instruction) = request
        .response_format
        .and_then(response_format_instruction)
    {
        system.push(AnthropicBlock::text(instruction));
    }

    let max_tokens = requested_max_tokens(&request.max_completion_tokens, &request.max_tokens)?;
    let tools = match request.tools.filter(|t| !t.is_empty()) {
        Some(tools) => Some(
            tools
                .into_iter()
                .map(openai_to_anthropic_tool)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let tool_choice =
        openai_to_anthropic_tool_choice(request.tool_choice.as_ref(), request.parallel_tool_calls)?
            .filter(|_| tools.is_some());
    let stop_sequences = match request.stop {
        Some(OpenAiStop::One(s)) => Some(vec![Value::String(s)]),
        Some(OpenAiStop::Many(list)) if !list.is_empty() => Some(list),
        _ => None,
    };
    Ok(AnthropicRequest {
        model,
        messages: messages
            .into_iter()
            .map(|(role, blocks)| AnthropicMessage {
                role,
                content: collapse_blocks(blocks),
            })
            .collect(),
        system: system_content(system),
        max_tokens,
        // OpenAI accepts 0..=2, Anthropic 0..=1.
        temperature: request.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: request.top_p,
        top_k: request.top_k,
        stop_sequences,
        metadata: request.user.map(|user_id| AnthropicMetadata { user_id }),
        thinking: request.thinking,
        tools,
        tool_choice,
        stream: None,
    })
}

/// The system blocks as one string when they are all plain text, else as blocks
/// (which keeps `cache_control` markers a client put on system parts).
fn system_content(system: Vec<AnthropicBlock>) -> Option<AnthropicContent> {
    if system.is_empty() {
        return None;
    }
    let texts: Option<Vec<&str>> = system.iter().map(AnthropicBlock::plain_text).collect();
    Some(match texts {
        Some(texts) => AnthropicContent::Text(texts.join("\n\n")),
        None => AnthropicContent::Blocks(system),
    })
}

/// `max_completion_tokens` / `max_tokens` (the smaller when both are given, as the
/// hold assumes), else [`DEFAULT_MAX_TOKENS`].
fn requested_max_tokens(
    max_completion_tokens: &Option<Value>,
    max_tokens: &Option<Value>,
) -> Result<u64, UpstreamError> {
    let mut max = None;
    for (field, value) in [
        ("max_completion_tokens", max_completion_tokens),
        ("max_tokens", max_tokens),
    ] {
        if let Some(v) = value {
            let n = v
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad_request(format!("`{field}` must be a positive integer")))?;
            max = Some(max.map_or(n, |m: u64| m.min(n)));
        }
    }
    Ok(max.unwrap_or(DEFAULT_MAX_TOKENS))
}

/// Appends a turn, merging it into the previous one when the role is the same
/// (Anthropic wants user and assistant turns to alternate).
fn push_message(
    messages: &mut Vec<(&'static str, Vec<AnthropicBlock>)>,
    role: &'static str,
    blocks: Vec<AnthropicBlock>,
) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
        _ => messages.push((role, blocks)),
    }
}

/// A turn of one plain text block is sent as a string, the shortest form.
fn collapse_blocks(mut blocks: Vec<AnthropicBlock>) -> AnthropicContent {
    if blocks.len() == 1 && blocks[0].plain_text().is_some() {
        if let Some(AnthropicBlock::Text { text, .. }) = blocks.pop() {
            return AnthropicContent::Text(text);
        }
    }
    AnthropicContent::Blocks(blocks)
}

/// Content of a system or user message (a string or an array of parts) as
/// Anthropic content blocks. Empty text is dropped (Anthropic refuses it).
fn openai_to_anthropic_content(
    content: Option<&Value>,
    text_only: bool,
) -> Result<Vec<AnthropicBlock>, UpstreamError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![AnthropicBlock::text(s.as_str())]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                if let Some(block) = openai_to_anthropic_part(read_or_default(part), text_only)? {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(bad_request(
            "message `content` must be a string or an array of parts",
        )),
    }
}

/// One OpenAI content part as an Anthropic block (`None` for empty text).
fn openai_to_anthropic_part(
    part: OpenAiPart,
    text_only: bool,
) -> Result<Option<AnthropicBlock>, UpstreamError> {
    let kind = part.kind.as_deref().unwrap_or("");
    let mut block = match kind {
        "text" | "refusal" => {
            let text = if kind == "text" {
                part.text
            } else {
                part.refusal
            }
            .ok_or_else(|| bad_request(format!("a `{kind}` part needs `{kind}`")))?;
            if text.is_empty() {
                return Ok(None);
            }
            AnthropicBlock::text(text)
        }
        "image_url" if !text_only => {
            let url = match part.image_url {
                Some(OpenAiImageUrl::Url(url) | OpenAiImageUrl::Object { url }) => url,
                None => return Err(bad_request("an `image_url` part needs `image_url.url`")),
            };
            AnthropicBlock::Image {
                source: image_source(&url)?,
                cache_control: None,
            }
        }
        "file" if !text_only => {
            // PDFs as base64 data URLs become `document` blocks.
            let data = part.file.and_then(|f| f.file_data).ok_or_else(|| {
                bad_request("only `file` parts with `file_data` are supported for Anthropic")
            })?;
            let (media_type, data) = parse_data_url(&data)
                .ok_or_else(|| bad_request("`file.file_data` must be a base64 data URL"))?;
            AnthropicBlock::Document {
                source: AnthropicSource::Base64 {
                    media_type: media_type.to_string(),
                    data: data.to_string(),
                },
                cache_control: None,
            }
        }
        other => {
            return Err(bad_request(format!(
                "content part type {other:?} is not supported here by Anthropic"
            )))
        }
    };
    if let Some(cache_control) = part.cache_control {
        block.set_cache_control(cache_control);
    }
    Ok(Some(block))
}

/// `data:<media type>;base64,<data>` → (media type, data).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// An image URL as an Anthropic image `source`: data URLs inline as base64, web
/// URLs by reference.
fn image_source(url: &str) -> Result<AnthropicSource, UpstreamError> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url)
            .ok_or_else(|| bad_request("image data URLs must be base64 encoded"))?;
        Ok(AnthropicSource::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        })
    } else if url.starts_with("http://") || url.starts_with("https://") {
        Ok(AnthropicSource::Url {
            url: url.to_string(),
        })
    } else {
        Err(bad_request("an image URL must be an http(s) or data URL"))
    }
}

/// An assistant message: its text, then its tool calls as `tool_use` blocks.
fn openai_to_anthropic_assistant_blocks(
    message: OpenAiMessage,
) -> Result<Vec<AnthropicBlock>, UpstreamError> {
    let mut blocks = openai_to_anthropic_content(message.content.as_ref(), true)?;
    for call in message.tool_calls.into_iter().flatten() {
        let id = call
            .id
            .ok_or_else(|| bad_request("a tool call needs an `id`"))?;
        let (name, arguments) = match call.function {
            Some(OpenAiFunctionCall {
                name: Some(name),
                arguments,
            }) => (name, arguments.unwrap_or_default()),
            _ => return Err(bad_request("a tool call needs `function.name`")),
        };
        // Anthropic wants the input as an object; arguments that are not a JSON
        // object (or empty) are sent as an empty input.
        let input = serde_json::from_str::<Value>(&arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        blocks.push(AnthropicBlock::ToolUse { id, name, input });
    }
    Ok(blocks)
}

/// A `role: "tool"` message as a `tool_result` block.
fn openai_to_anthropic_tool_result(
    message: OpenAiMessage,
) -> Result<AnthropicBlock, UpstreamError> {
    let tool_use_id = message
        .tool_call_id
        .ok_or_else(|| bad_request("a tool message needs `tool_call_id`"))?;
    let content = match message.content {
        Some(Value::String(s)) => AnthropicContent::Text(s),
        Some(parts @ Value::Array(_)) => {
            AnthropicContent::Blocks(openai_to_anthropic_content(Some(&parts), false)?)
        }
        _ => AnthropicContent::Text(String::new()),
    };
    Ok(AnthropicBlock::ToolResult {
        tool_use_id,
        content,
    })
}

/// An OpenAI function tool as an Anthropic tool.
fn openai_to_anthropic_tool(tool: OpenAiTool) -> Result<AnthropicTool, UpstreamError> {
    if tool.kind.as_deref() != Some("function") {
        return Err(bad_request(
            "only `function` tools are supported for Anthropic",
        ));
    }
    let function = tool
        .function
        .ok_or_else(|| bad_request("a tool needs `function`"))?;
    let function: OpenAiFunction = read_or_default(&function);
    let name = function
        .name
        .ok_or_else(|| bad_request("a tool needs `function.name`"))?;
    Ok(AnthropicTool {
        name,
        description: function.description,
        input_schema: function
            .parameters
            .map(Value::Object)
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        cache_control: tool.cache_control,
    })
}

/// OpenAI `tool_choice` (and `parallel_tool_calls`) as Anthropic `tool_choice`.
fn openai_to_anthropic_tool_choice(
    choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
) -> Result<Option<AnthropicToolChoice>, UpstreamError> {
    let mut out = match choice {
        None | Some(Value::Null) => {
            if parallel_tool_calls == Some(false) {
                AnthropicToolChoice::of_kind("auto")
            } else {
                return Ok(None);
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => AnthropicToolChoice::of_kind("auto"),
            "none" => return Ok(Some(AnthropicToolChoice::of_kind("none"))),
            "required" => AnthropicToolChoice::of_kind("any"),
            other => return Err(bad_request(format!("unknown `tool_choice` {other:?}"))),
        },
        Some(object) => {
            let named = OpenAiNamedToolChoice::deserialize(object)
                .map_err(|_| bad_request("`tool_choice` needs `function.name`"))?;
            AnthropicToolChoice {
                name: Some(named.function.name),
                ..AnthropicToolChoice::of_kind("tool")
            }
        }
    };
    if parallel_tool_calls == Some(false) {
        out.disable_parallel_tool_use = Some(true);
    }
    Ok(Some(out))
}

/// The system instruction standing in for `response_format` (best effort: the
/// Messages API has no JSON mode).
fn response_format_instruction(format: OpenAiResponseFormat) -> Option<String> {
    match format.kind.as_deref()? {
        "json_object" => Some(
            "Respond only with a single valid JSON object, without any other text or code fences."
                .to_string(),
        ),
        "json_schema" => {
            let schema = format.json_schema.and_then(|s| s.schema);
            let mut text = String::from(
                "Respond only with a single valid JSON value, without any other text or code fences",
            );
            match schema {
                Some(schema) => {
                    text.push_str(", conforming to this JSON schema:\n");
                    text.push_str(&schema.to_string());
                }
                None => text.push('.'),
            }
            Some(text)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Wire shapes: Anthropic's answer, stream events, usage and errors
// ---------------------------------------------------------------------------

/// An Anthropic message (the answer of a call without `stream`).
#[derive(Default, Deserialize)]
struct AnthropicAnswer {
    /// Passed on as it came (`null` when absent).
    #[serde(default)]
    id: Value,
    #[serde(default)]
    model: Value,
    #[serde(default, deserialize_with = "lenient_items")]
    content: Option<Vec<AnswerBlock>>,
    #[serde(default, deserialize_with = "lenient")]
    stop_reason: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<AnthropicUsage>,
}

/// A content block of an answer, or the block a stream's `content_block_start`
/// opens. Only the fields of the kinds the hub passes on are read.
#[derive(Default, Deserialize)]
struct AnswerBlock {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<String>,
    /// A `tool_use` block's id and name, passed on as they came.
    #[serde(default)]
    id: Value,
    #[serde(default)]
    name: Value,
    #[serde(default, deserialize_with = "present")]
    input: Option<Value>,
}

/// Anthropic's `usage` block (see the module documentation for what each counts).
#[derive(Clone, Copy, Default, Deserialize)]
struct AnthropicUsage {
    #[serde(default, deserialize_with = "lenient")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens: Option<u64>,
}

/// One stream event. A flat struct rather than an enum over `type`: an event
/// without `type` takes its kind from the SSE event name, and each kind reads only
/// its own fields.
#[derive(Default, Deserialize)]
struct StreamEvent {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    /// `message_start`: the message being streamed.
    #[serde(default, deserialize_with = "lenient")]
    message: Option<StartedMessage>,
    /// `content_block_*`: the block's position in the message.
    #[serde(default, deserialize_with = "lenient")]
    index: Option<u64>,
    /// `content_block_start`.
    #[serde(default, deserialize_with = "lenient")]
    content_block: Option<AnswerBlock>,
    /// `content_block_delta` and `message_delta`.
    #[serde(default, deserialize_with = "lenient")]
    delta: Option<StreamDelta>,
    /// `message_delta`.
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<AnthropicUsage>,
    /// `error`.
    #[serde(default, deserialize_with = "lenient")]
    error: Option<AnthropicErrorDetail>,
}

impl StreamEvent {
    /// The event's kind: its payload's `type`, else the SSE event name.
    fn kind<'a>(&'a self, event: Option<&'a str>) -> &'a str {
        self.kind.as_deref().or(event).unwrap_or("")
    }
}

#[derive(Default, Deserialize)]
struct StartedMessage {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    model: Value,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<AnthropicUsage>,
}

#[derive(Default, Deserialize)]
struct StreamDelta {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    thinking: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    partial_json: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    stop_reason: Option<String>,
}

/// `error` of an error body or of a stream's `error` event.
#[derive(Default, Deserialize)]
struct AnthropicErrorDetail {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<String>,
}

// ---------------------------------------------------------------------------
// Anthropic response → OpenAI response
// ---------------------------------------------------------------------------

/// Normalized usage from an Anthropic `usage` object; `None` if it has no counts.
#[cfg(test)]
pub(crate) fn usage_from_anthropic(usage: &Value) -> Option<Usage> {
    usage_of(&read_or_default(usage))
}

fn usage_of(usage: &AnthropicUsage) -> Option<Usage> {
    let merged = UsageMerge::default().merged_with(usage);
    merged.any().then(|| merged.usage())
}

/// An Anthropic `stop_reason` as an OpenAI `finish_reason`.
pub(crate) fn anthropic_to_openai_finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and any newer reason.
        _ => "stop",
    }
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An Anthropic message as an OpenAI `chat.completion` (with `usage` when the
/// message reported it).
#[cfg(test)]
pub(crate) fn anthropic_to_openai_response(body: &Value) -> Result<Value, UpstreamError> {
    answer_to_openai(read_or_default(body))
}

fn answer_to_openai(answer: AnthropicAnswer) -> Result<Value, UpstreamError> {
    let blocks = answer
        .content
        .ok_or_else(|| UpstreamError::Protocol("message without `content`".into()))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.kind.as_deref() {
            Some("text") => text.push_str(block.text.as_deref().unwrap_or("")),
            Some("thinking") => reasoning.push_str(block.thinking.as_deref().unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.id,
                "type": "function",
                "function": {
                    "name": block.name,
                    "arguments": block.input.unwrap_or_else(|| json!({})).to_string(),
                },
            })),
            _ => {}
        }
    }
    let message = AssistantMessage::new(text, reasoning, tool_calls);
    let finish_reason = answer
        .stop_reason
        .as_deref()
        .map(anthropic_to_openai_finish_reason);
    let choice = json!({"index": 0, "message": message, "finish_reason": finish_reason});
    let usage = answer.usage.as_ref().and_then(usage_of);
    Ok(chat_completion(
        answer.id,
        now_unix(),
        answer.model,
        vec![choice],
        usage.as_ref(),
    ))
}

/// The status an in-stream `error` event stands for, from its `error.type`.
fn status_of_error_type(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 502,
    }
}

/// The error an in-stream `error` event stands for; `code` is the upstream's
/// error code read from the whole event.
fn stream_error(error: Option<AnthropicErrorDetail>, code: Option<String>) -> UpstreamError {
    let error = error.unwrap_or_default();
    UpstreamError::Status {
        status: status_of_error_type(error.kind.as_deref().unwrap_or("")),
        code,
        message: error.message.unwrap_or_else(|| "stream error".to_string()),
    }
}

// ---------------------------------------------------------------------------
// Anthropic stream → OpenAI chunks
// ---------------------------------------------------------------------------

/// Usage reported piecewise in a stream: each field keeps its latest value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsageMerge {
    input_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
    cache_read_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl UsageMerge {
    /// Takes every count `usage` reports (replacing, never adding: Anthropic's
    /// counts are cumulative); absent or null fields keep their previous value.
    fn merged_with(mut self, usage: &AnthropicUsage) -> Self {
        self.input_tokens = usage.input_tokens.or(self.input_tokens);
        self.cache_write_tokens = usage
            .cache_creation_input_tokens
            .or(self.cache_write_tokens);
        self.cache_read_tokens = usage.cache_read_input_tokens.or(self.cache_read_tokens);
        self.output_tokens = usage.output_tokens.or(self.output_tokens);
        self
    }

    fn any(&self) -> bool {
        self.input_tokens.is_some()
            || self.cache_write_tokens.is_some()
            || self.cache_read_tokens.is_some()
            || self.output_tokens.is_some()
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            cache_read_tokens: self.cache_read_tokens.unwrap_or(0),
            cache_write_tokens: self.cache_write_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            // Anthropic counts thinking inside output_tokens without a breakdown.
            ..Usage::default()
        }
    }
}

/// A streamed tool call: its OpenAI index, and whether any argument text was sent.
struct ToolBlock {
    index: usize,
    sent_arguments: bool,
}

/// Translates Anthropic stream events, one at a time, into OpenAI stream items.
pub(crate) struct AnthropicToOpenAiStream {
    id: Value,
    model: Value,
    created: i64,
    usage: UsageMerge,
    last_usage: Option<Usage>,
    /// Tool-use blocks by Anthropic content-block index.
    tools: HashMap<u64, ToolBlock>,
    /// Whether `message_stop` arrived (the stream is complete).
    pub(crate) finished: bool,
}

impl Default for AnthropicToOpenAiStream {
    fn default() -> Self {
        Self {
            id: Value::Null,
            model: Value::Null,
            created: now_unix(),
            usage: UsageMerge::default(),
            last_usage: None,
            tools: HashMap::new(),
            finished: false,
        }
    }
}

impl AnthropicToOpenAiStream {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> StreamItem {
        StreamItem::Chunk(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    fn merge_usage(&mut self, usage: Option<AnthropicUsage>, items: &mut Vec<StreamItem>) {
        let Some(usage) = usage else {
            return;
        };
        self.usage = self.usage.merged_with(&usage);
        if !self.usage.any() {
            return;
        }
        let merged = self.usage.usage();
        if self.last_usage != Some(merged) {
            self.last_usage = Some(merged);
            items.push(StreamItem::Usage(merged));
        }
    }

    /// The items one event yields. `event` is the SSE event name; the payload's own
    /// `type` decides (they are the same in Anthropic's streams).
    pub(crate) fn on_event(
        &mut self,
        event: Option<&str>,
        data: &Value,
    ) -> Result<Vec<StreamItem>, UpstreamError> {
        let parsed: StreamEvent = read_or_default(data);
        let mut items = Vec::new();
        match parsed.kind(event) {
            "message_start" => {
                let message = parsed.message.unwrap_or_default();
                self.id = message.id;
                self.model = message.model;
                items.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
                self.merge_usage(message.usage, &mut items);
            }
            "content_block_start" => {
                let index = parsed.index.unwrap_or(0);
                let block = parsed.content_block.unwrap_or_default();
                self.on_block_start(index, block, &mut items);
            }
            "content_block_delta" => {
                let index = parsed.index.unwrap_or(0);
                let delta = parsed.delta.unwrap_or_default();
                self.on_block_delta(index, delta, &mut items)?;
            }
            "content_block_stop" => {
                let index = parsed.index.unwrap_or(0);
                // A tool called without input streams no JSON at all: give the client
                // arguments it can parse.
                if let Some(tool) = self.tools.get_mut(&index) {
                    if !tool.sent_arguments {
                        tool.sent_arguments = true;
                        let tool_index = tool.index;
                        items.push(self.chunk(
                            json!({"tool_calls": [{"index": tool_index, "function": {"arguments": "{}"}}]}),
                            None,
                        ));
                    }
                }
            }
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    items.push(
                        self.chunk(json!({}), Some(anthropic_to_openai_finish_reason(&reason))),
                    );
                }
                self.merge_usage(parsed.usage, &mut items);
            }
            "message_stop" => self.finished = true,
            "error" => return Err(stream_error(parsed.error, super::redact::error_code(data))),
            // `ping`, and event types added later, carry nothing for the client.
            _ => {}
        }
        Ok(items)
    }

    fn on_block_start(&mut self, index: u64, block: AnswerBlock, items: &mut Vec<StreamItem>) {
        match block.kind.as_deref() {
            Some("text") => {
                let text = block.text.unwrap_or_default();
                if !text.is_empty() {
                    items.push(self.chunk(json!({"content": text}), None));
                }
            }
            Some("tool_use") => {
                let tool_index = self.tools.len();
                self.tools.insert(
                    index,
                    ToolBlock {
                        index: tool_index,
                        sent_arguments: false,
                    },
                );
                items.push(self.chunk(
                    json!({"tool_calls": [{
                        "index": tool_index,
                        "id": block.id,
                        "type": "function",
                        "function": {
                            "name": block.name,
                            "arguments": "",
                        },
                    }]}),
                    None,
                ));
            }
            Some("thinking") => {
                let text = block.thinking.unwrap_or_default();
                if !text.is_empty() {
                    items.push(self.chunk(json!({"reasoning_content": text}), None));
                }
            }
            _ => {}
        }
    }

    fn on_block_delta(
        &mut self,
        index: u64,
        delta: StreamDelta,
        items: &mut Vec<StreamItem>,
    ) -> Result<(), UpstreamError> {
        let non_empty = |text: Option<String>| text.filter(|t| !t.is_empty());
        match delta.kind.as_deref() {
            Some("text_delta") => {
                if let Some(text) = non_empty(delta.text) {
                    items.push(self.chunk(json!({"content": text}), None));
                }
            }
            Some("thinking_delta") => {
                if let Some(text) = non_empty(delta.thinking) {
                    items.push(self.chunk(json!({"reasoning_content": text}), None));
                }
            }
            Some("input_json_delta") => {
                if let Some(partial_json) = non_empty(delta.partial_json) {
                    let tool = self.tools.get_mut(&index).ok_or_else(|| {
                        UpstreamError::Protocol("input_json_delta outside a tool_use block".into())
                    })?;
                    tool.sent_arguments = true;
                    let tool_index = tool.index;
                    items.push(self.chunk(
                        json!({"tool_calls": [{
                            "index": tool_index,
                            "function": {"arguments": partial_json},
                        }]}),
                        None,
                    ));
                }
            }
            // signature_delta, citations_delta, empty deltas: nothing to pass on.
            _ => {}
        }
        Ok(())
    }
}

type SseStream = Pin<Box<dyn Stream<Item = Result<SseEvent, UpstreamError>> + Send>>;

struct StreamState {
    events: SseStream,
    translator: AnthropicToOpenAiStream,
    pending: VecDeque<Result<StreamItem, UpstreamError>>,
    ended: bool,
}

/// OpenAI stream items from Anthropic's events; ends after `message_stop`, and with
/// an error if the upstream stops before it (a cut stream must not look complete).
fn anthropic_to_openai_stream(events: SseStream) -> ChatStream {
    let state = StreamState {
        events,
        translator: AnthropicToOpenAiStream::default(),
        pending: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.pending.pop_front() {
                return Some((item, s));
            }
            if s.ended {
                return None;
            }
            match s.events.next().await {
                None => {
                    s.ended = true;
                    return Some((
                        Err(UpstreamError::Protocol(
                            "stream ended before message_stop".into(),
                        )),
                        s,
                    ));
                }
                Some(Err(e)) => {
                    s.ended = true;
                    return Some((Err(e), s));
                }
                Some(Ok(event)) => {
                    // Anthropic's payloads are all JSON; anything else carries nothing.
                    let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                        continue;
                    };
                    match s.translator.on_event(event.event.as_deref(), &data) {
                        Ok(items) => s.pending.extend(items.into_iter().map(Ok)),
                        Err(e) => {
                            s.ended = true;
                            s.pending.push_back(Err(e));
                        }
                    }
                    if s.translator.finished {
                        s.ended = true;
                    }
                }
            }
        }
    }))
}

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

fn post(call: &UpstreamCall<'_>, body: &Value) -> reqwest::RequestBuilder {
    let provider = call.provider;
    // The base URL is the server root; tolerate one configured with `/v1`.
    let path = if provider.base_url.trim_end_matches('/').ends_with("/v1") {
        "messages"
    } else {
        "v1/messages"
    };
    call.http
        .client()
        .post(provider.endpoint(path))
        .header("x-api-key", provider.api_key())
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(body)
}

#[async_trait]
impl ProviderApi for Anthropic {
    async fn chat(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatOutcome, UpstreamError> {
        let body = openai_to_anthropic_request(request)?;
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let exchange = async {
            let response = call.http.send(post(call, &body), error_dot_message).await?;
            let answer = call.http.json_body(response, AnswerKind::Chat).await?;
            let answer: AnthropicAnswer = serde_json::from_value(answer).unwrap_or_default();
            let usage = answer.usage.as_ref().and_then(usage_of);
            let body = answer_to_openai(answer)?;
            Ok(ChatOutcome { body, usage })
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
        let body = anthropic_body(request, true)?;
        let response = call.http.send(post(call, &body), error_dot_message).await?;
        Ok(anthropic_to_openai_stream(call.http.sse_events(response)))
    }
}

// ---------------------------------------------------------------------------
// Pass-through: Anthropic in, Anthropic out (the `/v1/messages` ingress)
// ---------------------------------------------------------------------------

/// An Anthropic Messages answer exactly as the upstream sent it, and its usage.
pub(crate) struct MessagesOutcome {
    /// The upstream's JSON body, byte for byte.
    pub(crate) body: bytes::Bytes,
    pub(crate) usage: Option<Usage>,
}

/// What a passed-through stream yields.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum MessagesItem {
    /// One upstream event as it came; `message_stop` is the last.
    Event(SseEvent),
    /// The usage so far (merged, see [`UsageMerge`]): the last one wins.
    Usage(Usage),
}

pub(crate) type MessagesStream =
    Pin<Box<dyn Stream<Item = Result<MessagesItem, UpstreamError>> + Send>>;

/// Sends an Anthropic Messages request as it is (the caller has set `model` to
/// the upstream's name; its `stream` is absent or false) and returns the answer
/// untouched, with the usage read from it.
pub(crate) async fn messages_passthrough(
    call: &UpstreamCall<'_>,
    request: &Value,
) -> Result<MessagesOutcome, UpstreamError> {
    let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
    let exchange = async {
        let response = call
            .http
            .send(post(call, request), error_dot_message)
            .await?;
        let budget = call.http.answer_budget(AnswerKind::Chat);
        let body = call.http.body_within(response, &budget).await?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("response is not JSON: {e}")))?;
        if !answer.is_object() {
            return Err(UpstreamError::Protocol(
                "response is not a message object".into(),
            ));
        }
        let usage = read_or_default::<AnswerUsage>(&answer)
            .usage
            .as_ref()
            .and_then(usage_of);
        Ok(MessagesOutcome { body, usage })
    };
    tokio::time::timeout(total, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// Sends an Anthropic Messages request with `"stream": true` as it is and returns
/// its events untouched, with the usage merged from `message_start` and
/// `message_delta`. An `error` event becomes the stream's error; a stream that
/// stops before `message_stop` ends with an error (a cut stream must not look
/// complete).
pub(crate) async fn messages_passthrough_stream(
    call: &UpstreamCall<'_>,
    request: &Value,
) -> Result<MessagesStream, UpstreamError> {
    let response = call
        .http
        .send(post(call, request), error_dot_message)
        .await?;
    let state = (
        call.http.sse_events(response),
        PassthroughUsage::default(),
        VecDeque::<Result<MessagesItem, UpstreamError>>::new(),
        false,
    );
    Ok(Box::pin(futures_util::stream::unfold(
        state,
        |(mut events, mut reader, mut pending, mut ended)| async move {
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((item, (events, reader, pending, ended)));
                }
                if ended {
                    return None;
                }
                match events.next().await {
                    None => {
                        ended = true;
                        pending.push_back(Err(UpstreamError::Protocol(
                            "stream ended before message_stop".into(),
                        )));
                    }
                    Some(Err(e)) => {
                        ended = true;
                        pending.push_back(Err(e));
                    }
                    Some(Ok(event)) => match reader.on_event(event) {
                        Ok((items, finished)) => {
                            pending.extend(items.into_iter().map(Ok));
                            ended = finished;
                        }
                        Err(e) => {
                            ended = true;
                            pending.push_back(Err(e));
                        }
                    },
                }
            }
        },
    )))
}

/// The usage of a passed-through answer (the rest is not read).
#[derive(Default, Deserialize)]
struct AnswerUsage {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<AnthropicUsage>,
}

/// Reads the usage (and the end, and errors) of a passed-through stream.
#[derive(Default)]
struct PassthroughUsage {
    usage: UsageMerge,
    last: Option<Usage>,
}

impl PassthroughUsage {
    /// The items one event yields (a usage change first, then the event itself)
    /// and whether it was the last (`message_stop`).
    fn on_event(&mut self, event: SseEvent) -> Result<(Vec<MessagesItem>, bool), UpstreamError> {
        // A payload that is not a JSON object carries nothing but its event name.
        let parsed: StreamEvent = serde_json::from_str(&event.data).unwrap_or_default();
        let kind = parsed.kind(event.event.as_deref()).to_string();
        let usage = match kind.as_str() {
            "message_start" => parsed.message.and_then(|m| m.usage),
            "message_delta" => parsed.usage,
            "error" => {
                let data = serde_json::from_str::<Value>(&event.data).unwrap_or(Value::Null);
                return Err(stream_error(parsed.error, super::redact::error_code(&data)));
            }
            _ => None,
        };
        let mut items = Vec::new();
        if let Some(usage) = usage {
            self.usage = self.usage.merged_with(&usage);
            let merged = self.usage.usage();
            if self.usage.any() && self.last != Some(merged) {
                self.last = Some(merged);
                items.push(MessagesItem::Usage(merged));
            }
        }
        items.push(MessagesItem::Event(event));
        Ok((items, kind == "message_stop"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        openai_to_anthropic_request(&request).unwrap()
    }

    #[test]
    fn system_messages_become_top_level_system_and_defaults_apply() {
        let out = translate(json!({
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
                {"role": "user", "content": "Say hello"},
            ],
            "temperature": 1.7,
            "top_p": 0.9,
            "stop": "END",
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-x",
                "system": "Be brief.\n\nBe kind.",
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": DEFAULT_MAX_TOKENS,
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["END"],
            })
        );
        let out = translate(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 300, "max_completion_tokens": 200, "stop": ["a", "b"]}),
        );
        assert_eq!(out["max_tokens"], 200);
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        assert!(out.get("system").is_none());
    }

    #[test]
    fn fields_of_the_wrong_type_count_as_absent_and_null_markers_pass_on() {
        let out = translate(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "x", "cache_control": null}]}],
            "temperature": "hot", "top_p": "high", "user": 7, "stop": 3, "n": "two",
            "thinking": "yes", "parallel_tool_calls": "no",
        }));
        assert_eq!(
            out,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "x", "cache_control": null}]}],
                "max_tokens": DEFAULT_MAX_TOKENS,
            })
        );
        // The keys go out sorted, as they did when the body was built as a JSON value.
        let out = translate(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.5, "stop": "S", "user": "u"}),
        );
        assert_eq!(
            out.to_string(),
            r#"{"max_tokens":4096,"messages":[{"content":"x","role":"user"}],"metadata":{"user_id":"u"},"model":"m","stop_sequences":["S"],"temperature":0.5}"#
        );
    }

    #[test]
    fn tools_and_tool_choice_map() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now"}}]);
        let request = |choice: Value| {
            translate(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": tools, "tool_choice": choice}),
            )
        };
        let out = request(json!("auto"));
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get_weather", "description": "Weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(out["tool_choice"], json!({"type": "auto"}));
        assert_eq!(
            request(json!("none"))["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            request(json!("required"))["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            request(json!({"type": "function", "function": {"name": "now"}}))["tool_choice"],
            json!({"type": "tool", "name": "now"})
        );
        let out = translate(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": tools, "parallel_tool_calls": false}),
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tool_calls_and_results_round_trip_as_blocks() {
        let out = translate(json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Thanks"},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks"},
                ]},
            ])
        );
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let out = translate(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
            ]}]}),
        );
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ])
        );
        let bad = openai_to_anthropic_request(
            &json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
        );
        assert!(matches!(bad, Err(UpstreamError::Refused(_))));
    }

    #[test]
    fn response_format_becomes_a_system_instruction() {
        let out = translate(
            json!({"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"}}),
        );
        let system = out["system"].as_str().unwrap();
        assert!(
            system.starts_with("S\n\n") && system.contains("JSON object"),
            "{system}"
        );
    }

    #[test]
    fn response_maps_text_tools_finish_and_usage() {
        let out = anthropic_to_openai_response(&json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5, "output_tokens": 7},
        }))
        .unwrap();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["id"], "msg_1");
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], "Let me check.");
        assert_eq!(message["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["usage"]["prompt_tokens"], 18);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
        for (reason, mapped) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
        ] {
            assert_eq!(anthropic_to_openai_finish_reason(reason), mapped);
        }
    }

    #[test]
    fn usage_excludes_cache_tokens_from_input() {
        let u = usage_from_anthropic(
            &json!({"input_tokens": 10, "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 5, "output_tokens": 7}),
        )
        .unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.cache_write_tokens,
                u.cache_read_tokens,
                u.output_tokens
            ),
            (10, 3, 5, 7)
        );
        assert!(usage_from_anthropic(&json!({})).is_none());
    }

    fn usages(items: &[StreamItem]) -> Vec<Usage> {
        items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Usage(u) => Some(*u),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stream_usage_is_merged_not_added() {
        let mut t = AnthropicToOpenAiStream::default();
        let start = t
            .on_event(
                Some("message_start"),
                &json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x",
                "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5, "output_tokens": 1}}}),
            )
            .unwrap();
        assert_eq!(usages(&start)[0].output_tokens, 1);
        // Cumulative output: the latest value wins.
        let delta = |usage: Value| json!({"type": "message_delta", "delta": {"stop_reason": null}, "usage": usage});
        let items = t
            .on_event(None, &delta(json!({"output_tokens": 20})))
            .unwrap();
        assert_eq!(
            usages(&items),
            vec![Usage {
                input_tokens: 10,
                cache_write_tokens: 3,
                cache_read_tokens: 5,
                output_tokens: 20,
                ..Usage::default()
            }]
        );
        // Repeated fields (newer API versions) replace; nulls keep; no change, no item.
        let items = t
            .on_event(
                None,
                &delta(json!({"input_tokens": 10, "cache_read_input_tokens": null, "output_tokens": 20})),
            )
            .unwrap();
        assert!(usages(&items).is_empty());
        let items = t
            .on_event(
                None,
                &delta(json!({"input_tokens": 11, "output_tokens": 25})),
            )
            .unwrap();
        assert_eq!(
            usages(&items)[0],
            Usage {
                input_tokens: 11,
                cache_write_tokens: 3,
                cache_read_tokens: 5,
                output_tokens: 25,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn stream_tool_calls_become_openai_deltas() {
        let mut t = AnthropicToOpenAiStream::default();
        let mut chunks = Vec::new();
        for event in [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 4, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "ping"}),
            json!({"type": "message_stop"}),
        ] {
            for item in t.on_event(None, &event).unwrap() {
                if let StreamItem::Chunk(c) = item {
                    assert_eq!(c["object"], "chat.completion.chunk");
                    assert_eq!(c["id"], "msg_1");
                    assert!(c.get("usage").is_none());
                    chunks.push(c["choices"][0].clone());
                }
            }
        }
        assert!(t.finished);
        assert_eq!(chunks[0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(
            chunks[3]["delta"]["tool_calls"][0],
            json!({"index": 0, "function": {"arguments": "{\"city\":"}})
        );
        assert_eq!(chunks[5]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(
            chunks[6]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert_eq!(chunks[7]["finish_reason"], "tool_calls");
        assert_eq!(chunks.len(), 8);
    }

    #[test]
    fn passthrough_reads_usage_and_keeps_events_as_they_came() {
        let mut r = PassthroughUsage::default();
        let event = |name: &str, data: &str| SseEvent {
            event: Some(name.into()),
            data: data.into(),
        };
        let start = event(
            "message_start",
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
        );
        let (items, done) = r.on_event(start.clone()).unwrap();
        let usage = Usage {
            input_tokens: 10,
            cache_write_tokens: 3,
            cache_read_tokens: 5,
            output_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(
            items,
            vec![MessagesItem::Usage(usage), MessagesItem::Event(start)]
        );
        assert!(!done);
        let ping = event("ping", r#"{"type": "ping"}"#);
        assert_eq!(
            r.on_event(ping.clone()).unwrap().0,
            vec![MessagesItem::Event(ping)]
        );
        let delta = event(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30}}"#,
        );
        let (items, _) = r.on_event(delta).unwrap();
        assert_eq!(
            items[0],
            MessagesItem::Usage(Usage {
                output_tokens: 30,
                ..usage
            })
        );
        let (items, done) = r
            .on_event(event("message_stop", r#"{"type":"message_stop"}"#))
            .unwrap();
        assert_eq!(items.len(), 1);
        assert!(done);
        let e = r
            .on_event(event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .unwrap_err();
        assert!(matches!(e, UpstreamError::Status { status: 529, .. }));
    }

    #[test]
    fn stream_error_event_maps_its_type() {
        let mut t = AnthropicToOpenAiStream::default();
        let e = t
            .on_event(
                Some("error"),
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            )
            .unwrap_err();
        assert!(
            matches!(e, UpstreamError::Status { status: 529, ref message, .. } if message == "Overloaded")
        );
        let e = t
            .on_event(
                None,
                &json!({"type": "error", "error": {"type": "weird", "message": "?"}}),
            )
            .unwrap_err();
        assert!(matches!(e, UpstreamError::Status { status: 502, .. }));
    }
}
