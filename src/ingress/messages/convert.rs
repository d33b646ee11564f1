//! Anthropic Messages ↔ OpenAI chat, for upstreams that do not speak Anthropic's
//! protocol (the OpenAI-compatible family, Gemini, Bedrock: every provider module
//! takes OpenAI's shape).
//!
//! What has no OpenAI equivalent is dropped, not refused: `top_k`, `thinking`,
//! `cache_control`, `service_tier`, `metadata` other than `user_id`, and thinking
//! blocks of earlier assistant turns. What cannot be expressed at all is refused
//! with a 400 naming it: server tools (`web_search_…`, `bash_…`, …), block types
//! other than text, image, document (base64 PDF or plain text), tool_use,
//! tool_result and thinking, and images inside tool results.

use super::wire::{
    AnthropicUsage, Block, Content, ContentBlock, Message, MessageType, MessagesRequest, Role,
    Tool, ToolChoice, UpstreamAnswer,
};
use crate::ingress::lenient::{self, Items};
use crate::ingress::openai_wire::{
    AnswerContent, ChatAnswer, ChatMessage, ChatRequest, ChatRole, ChatTool, ChatToolCall,
    ChatToolChoice, ContentPart, FileData, FunctionCall, FunctionName, FunctionSpec, FunctionType,
    ImageUrl, MessageContent, ToolMode,
};
use crate::providers::UpstreamError;
use domain::Usage;
use serde_json::{json, Value};

/// A request the translation cannot express in OpenAI's shape.
#[derive(Debug, thiserror::Error)]
#[error("{0} (this request can only be sent to an Anthropic model)")]
pub struct ConvertError(pub String);

impl From<ConvertError> for UpstreamError {
    fn from(e: ConvertError) -> Self {
        UpstreamError::Refused(e.to_string())
    }
}

impl From<ConvertError> for crate::error::HubError {
    fn from(e: ConvertError) -> Self {
        crate::error::HubError::BadRequest(e.to_string())
    }
}

fn refuse(message: impl Into<String>) -> ConvertError {
    ConvertError(message.into())
}

// ---------------------------------------------------------------------------
// Anthropic request → OpenAI request
// ---------------------------------------------------------------------------

/// Translates an Anthropic Messages request into an OpenAI chat request (same
/// `model`; `stream` is left to the operation: the provider modules set it).
pub(crate) fn anthropic_to_openai_request(request: &Value) -> Result<ChatRequest, ConvertError> {
    let request: MessagesRequest = lenient::read(request);
    let model = request.model.ok_or_else(|| refuse("`model` is required"))?;
    let anthropic_messages = request
        .messages
        .ok_or_else(|| refuse("`messages` is required"))?;

    let mut messages = Vec::new();
    if let Some(system) = anthropic_to_openai_system(request.system)? {
        messages.push(ChatMessage::new(
            ChatRole::System,
            Some(MessageContent::Text(system)),
        ));
    }
    for (i, message) in anthropic_messages.0.into_iter().enumerate() {
        let content = message.content;
        match message.role.as_deref() {
            Some("user") => anthropic_to_openai_user(content, &mut messages)?,
            Some("assistant") => {
                if let Some(m) = anthropic_to_openai_assistant(content)? {
                    messages.push(m);
                }
            }
            _ => {
                return Err(refuse(format!(
                    "messages.{i}.role must be \"user\" or \"assistant\""
                )))
            }
        }
    }

    let mut out = ChatRequest {
        model: Some(model),
        messages,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        stop: request.stop_sequences.filter(|s| !s.is_empty()),
        user: request.metadata.and_then(|m| m.user_id),
        ..ChatRequest::default()
    };
    let tools = request.tools.filter(|t| !t.0.is_empty());
    if let Some(tools) = tools {
        out.tools = Some(
            tools
                .0
                .into_iter()
                .map(anthropic_to_openai_tool)
                .collect::<Result<_, _>>()?,
        );
        if let Some(choice) = request.tool_choice {
            let (choice, parallel) = anthropic_to_openai_tool_choice(choice)?;
            out.tool_choice = Some(choice);
            if parallel == Some(false) {
                out.parallel_tool_calls = Some(false);
            }
        }
    }
    Ok(out)
}

/// The text of content blocks that must all be text (system, tool results).
fn text_of_blocks(blocks: Vec<Block>, what: &str) -> Result<Vec<String>, ConvertError> {
    blocks
        .into_iter()
        .map(|b| match b.kind.as_deref() {
            Some("text") => Ok(b.text.unwrap_or_default()),
            other => Err(refuse(format!(
                "{what} may only hold text blocks for this model, not {}",
                other.unwrap_or("an untyped block")
            ))),
        })
        .collect()
}

/// `system` (a string or text blocks) as one system message's text.
fn anthropic_to_openai_system(system: Option<Content>) -> Result<Option<String>, ConvertError> {
    let text = match system {
        None => return Ok(None),
        Some(Content::Text(s)) => s,
        Some(Content::Blocks(blocks)) => text_of_blocks(blocks, "`system`")?.join("\n\n"),
        Some(Content::Other) => {
            return Err(refuse("`system` must be a string or an array of blocks"))
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

/// A user turn: its tool results as `tool` messages (Anthropic puts them first,
/// OpenAI wants them right after the assistant's calls), then the rest as one
/// user message.
fn anthropic_to_openai_user(
    content: Option<Content>,
    messages: &mut Vec<ChatMessage>,
) -> Result<(), ConvertError> {
    let blocks = match content {
        Some(Content::Text(s)) => {
            messages.push(ChatMessage::new(
                ChatRole::User,
                Some(MessageContent::Text(s)),
            ));
            return Ok(());
        }
        Some(Content::Blocks(blocks)) => blocks,
        _ => return Err(refuse("message `content` must be a string or an array")),
    };
    let mut parts = Vec::new();
    for block in blocks {
        match block.kind.as_deref().unwrap_or("") {
            "tool_result" => messages.push(anthropic_to_openai_tool_result(block)?),
            "text" => parts.push(ContentPart::Text {
                text: block.text.unwrap_or_default(),
            }),
            "image" => parts.push(anthropic_to_openai_image(block)?),
            "document" => parts.push(anthropic_to_openai_document(block)?),
            other => {
                return Err(refuse(format!(
                    "content block type {other:?} is not supported in a user turn for this model"
                )))
            }
        }
    }
    let content = match (parts.pop(), parts.is_empty()) {
        (None, _) => return Ok(()),
        (Some(ContentPart::Text { text }), true) => MessageContent::Text(text),
        (Some(last), _) => {
            parts.push(last);
            MessageContent::Parts(parts)
        }
    };
    messages.push(ChatMessage::new(ChatRole::User, Some(content)));
    Ok(())
}

/// A base64 or URL image as an OpenAI `image_url` part.
fn anthropic_to_openai_image(block: Block) -> Result<ContentPart, ConvertError> {
    let source = block.source.unwrap_or_default();
    let url = match source.kind.as_deref() {
        Some("base64") => format!(
            "data:{};base64,{}",
            source
                .media_type
                .ok_or_else(|| refuse("an image source needs `media_type`"))?,
            source
                .data
                .ok_or_else(|| refuse("an image source needs `data`"))?
        ),
        Some("url") => source
            .url
            .ok_or_else(|| refuse("an image source needs `url`"))?,
        other => {
            return Err(refuse(format!(
                "image source type {:?} is not supported for this model",
                other.unwrap_or("")
            )))
        }
    };
    Ok(ContentPart::ImageUrl {
        image_url: ImageUrl { url },
    })
}

/// A base64 PDF as an OpenAI `file` part; a plain-text document as text.
fn anthropic_to_openai_document(block: Block) -> Result<ContentPart, ConvertError> {
    let source = block.source.unwrap_or_default();
    match (
        source.kind.as_deref(),
        source.media_type.as_deref(),
        source.data,
    ) {
        (Some("base64"), Some(media_type @ "application/pdf"), Some(data)) => {
            Ok(ContentPart::File {
                file: FileData {
                    filename: block.title.unwrap_or_else(|| "document.pdf".into()),
                    file_data: format!("data:{media_type};base64,{data}"),
                },
            })
        }
        (Some("text"), _, Some(text)) => Ok(ContentPart::Text { text }),
        _ => Err(refuse(
            "only base64 PDF and plain-text documents are supported for this model",
        )),
    }
}

/// A `tool_result` block as a `tool` message (text only; an error result says so).
fn anthropic_to_openai_tool_result(block: Block) -> Result<ChatMessage, ConvertError> {
    let id = block
        .tool_use_id
        .ok_or_else(|| refuse("a tool_result block needs `tool_use_id`"))?;
    let mut text = match block.content {
        None => String::new(),
        Some(Content::Text(s)) => s,
        Some(Content::Blocks(blocks)) => text_of_blocks(blocks, "a tool_result")?.join("\n"),
        Some(Content::Other) => {
            return Err(refuse("tool_result `content` must be a string or an array"))
        }
    };
    if block.is_error == Some(true) {
        text = format!("Error: {text}");
    }
    Ok(ChatMessage {
        tool_call_id: Some(id),
        ..ChatMessage::new(ChatRole::Tool, Some(MessageContent::Text(text)))
    })
}

/// An assistant turn: its text, and its `tool_use` blocks as tool calls.
/// Thinking blocks are dropped (OpenAI's chat input has no place for them).
fn anthropic_to_openai_assistant(
    content: Option<Content>,
) -> Result<Option<ChatMessage>, ConvertError> {
    let blocks = match content {
        Some(Content::Text(s)) => {
            return Ok(Some(ChatMessage::new(
                ChatRole::Assistant,
                Some(MessageContent::Text(s)),
            )))
        }
        Some(Content::Blocks(blocks)) => blocks,
        _ => return Err(refuse("message `content` must be a string or an array")),
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.kind.as_deref().unwrap_or("") {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(ChatToolCall {
                id: block
                    .id
                    .ok_or_else(|| refuse("a tool_use block needs `id`"))?,
                kind: FunctionType::Function,
                function: FunctionCall {
                    name: block
                        .name
                        .ok_or_else(|| refuse("a tool_use block needs `name`"))?,
                    arguments: block.input.unwrap_or_else(|| json!({})).to_string(),
                },
            }),
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(refuse(format!(
                "content block type {other:?} is not supported in an assistant turn for this model"
            )))
            }
        }
    }
    if text.is_empty() && tool_calls.is_empty() {
        return Ok(None);
    }
    let content = (!text.is_empty()).then_some(MessageContent::Text(text));
    Ok(Some(ChatMessage {
        tool_calls,
        ..ChatMessage::new(ChatRole::Assistant, content)
    }))
}

/// A client tool as an OpenAI function tool; server tools are Anthropic's own.
fn anthropic_to_openai_tool(tool: Tool) -> Result<ChatTool, ConvertError> {
    if let Some(kind) = tool.kind.as_deref().filter(|t| *t != "custom") {
        return Err(refuse(format!(
            "tool type {kind:?} is an Anthropic server tool"
        )));
    }
    let name = tool.name.ok_or_else(|| refuse("a tool needs `name`"))?;
    Ok(ChatTool {
        kind: FunctionType::Function,
        function: FunctionSpec {
            name,
            description: tool.description,
            parameters: tool.input_schema.map_or_else(
                || json!({"type": "object", "properties": {}}),
                Value::Object,
            ),
        },
    })
}

/// Anthropic `tool_choice` as OpenAI's, and whether parallel calls are allowed.
fn anthropic_to_openai_tool_choice(
    choice: ToolChoice,
) -> Result<(ChatToolChoice, Option<bool>), ConvertError> {
    let parallel = choice.disable_parallel_tool_use.map(|disabled| !disabled);
    let out = match choice.kind.as_deref() {
        Some("auto") => ChatToolChoice::Mode(ToolMode::Auto),
        Some("any") => ChatToolChoice::Mode(ToolMode::Required),
        Some("none") => ChatToolChoice::Mode(ToolMode::None),
        Some("tool") => {
            let name = choice
                .name
                .ok_or_else(|| refuse("`tool_choice` of type tool needs `name`"))?;
            ChatToolChoice::Function {
                kind: FunctionType::Function,
                function: FunctionName { name },
            }
        }
        other => {
            return Err(refuse(format!(
                "unknown `tool_choice` type {:?}",
                other.unwrap_or("")
            )))
        }
    };
    Ok((out, parallel))
}

// ---------------------------------------------------------------------------
// OpenAI answer → Anthropic answer
// ---------------------------------------------------------------------------

/// An OpenAI `finish_reason` as an Anthropic `stop_reason`. OpenAI's `stop` does
/// not say whether a stop sequence matched, so it is always `end_turn`.
pub(crate) fn openai_to_anthropic_stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Normalized usage in Anthropic's shape (`input_tokens` excludes cache reads
/// and writes, as Anthropic's does).
pub(crate) fn anthropic_usage(usage: &Usage) -> AnthropicUsage {
    AnthropicUsage {
        input_tokens: usage.input_tokens,
        cache_creation_input_tokens: usage.cache_write_tokens,
        cache_read_input_tokens: usage.cache_read_tokens,
        output_tokens: usage.output_tokens,
    }
}

/// A tool call's `arguments` (a JSON string) as a tool_use `input` (an object).
pub(crate) fn tool_input(arguments: Option<&str>) -> Value {
    arguments
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// An OpenAI `chat.completion` as an Anthropic `message`, with the usage charged.
pub(crate) fn openai_to_anthropic_response(
    body: &Value,
    usage: &Usage,
    id: &str,
    model: &str,
) -> Message<AnthropicUsage> {
    let answer: ChatAnswer = lenient::read(body);
    let choice = answer.first_choice();
    let message = choice.and_then(|c| c.message.as_ref());
    let mut content = Vec::new();
    if let Some(reasoning) = message
        .and_then(|m| m.reasoning_content.as_deref())
        .filter(|r| !r.is_empty())
    {
        // No signature: the upstream gave none.
        content.push(ContentBlock::Thinking {
            thinking: reasoning.to_string(),
            signature: String::new(),
        });
    }
    let text = message
        .and_then(|m| m.content.as_ref())
        .map(AnswerContent::text)
        .unwrap_or_default();
    if !text.is_empty() {
        content.push(ContentBlock::Text { text });
    }
    let calls = message.and_then(|m| m.tool_calls.as_ref());
    for call in calls.into_iter().flat_map(Items::iter) {
        content.push(ContentBlock::ToolUse {
            id: call.id.clone(),
            name: call.name().map(str::to_string),
            input: tool_input(call.arguments()),
        });
    }
    Message {
        id: id.to_string(),
        kind: MessageType::Message,
        role: Role::Assistant,
        model: model.to_string(),
        content,
        stop_reason: Some(openai_to_anthropic_stop_reason(
            choice.and_then(|c| c.finish_reason.as_deref()),
        )),
        stop_sequence: None,
        usage: anthropic_usage(usage),
    }
}

/// Bytes of generated text in an Anthropic message (for estimates only).
pub(crate) fn anthropic_message_output_bytes(message: &UpstreamAnswer) -> u64 {
    let blocks = message.content.iter().flat_map(Items::iter);
    blocks
        .map(|block| {
            let text = [&block.text, &block.thinking]
                .into_iter()
                .flatten()
                .map(String::len)
                .sum::<usize>();
            let input = block.input.as_ref().map_or(0, |i| i.to_string().len());
            (text + input) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::to_json;

    #[test]
    fn request_maps_system_messages_tools_and_parameters() {
        let out = anthropic_to_openai_request(&json!({
            "model": "gpt-x",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                       {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "Thanks"},
                ]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "temperature": 0.3, "top_p": 0.9, "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": true,
        }))
        .unwrap();
        assert_eq!(
            to_json(&out),
            json!({
                "model": "gpt-x",
                "max_tokens": 100,
                "messages": [
                    {"role": "system", "content": "Be brief.\n\nBe kind."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    ]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": "Thanks"},
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "temperature": 0.3,
                "top_p": 0.9,
                "stop": ["END"],
                "user": "u1",
            })
        );
    }

    #[test]
    fn tool_choice_and_errors_map() {
        let choice = |c: Value| {
            to_json(
                &anthropic_to_openai_tool_choice(lenient::read(&c))
                    .unwrap()
                    .0,
            )
        };
        assert_eq!(choice(json!({"type": "auto"})), json!("auto"));
        assert_eq!(choice(json!({"type": "none"})), json!("none"));
        assert_eq!(
            choice(json!({"type": "tool", "name": "f"})),
            json!({"type": "function", "function": {"name": "f"}})
        );
        let refused = |request: Value| anthropic_to_openai_request(&request).unwrap_err().0;
        assert!(refused(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
        )
        .contains("server tool"));
        assert!(refused(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]}]}))
        .contains("tool_result"));
        let error = to_json(
            &anthropic_to_openai_tool_result(lenient::read(
                &json!({"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": true}),
            ))
            .unwrap(),
        );
        assert_eq!(error["content"], "Error: boom");
    }

    #[test]
    fn response_maps_blocks_stop_reason_and_usage() {
        let body = json!({"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me check.", "reasoning_content": "think",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}]});
        let usage = Usage {
            input_tokens: 8,
            cache_read_tokens: 4,
            output_tokens: 30,
            ..Usage::default()
        };
        let out = openai_to_anthropic_response(&body, &usage, "msg_1", "gpt-x");
        assert_eq!(
            to_json(&out),
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "gpt-x",
                "content": [
                    {"type": "thinking", "thinking": "think", "signature": ""},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 30},
            })
        );
        for (finish, stop) in [
            (Some("stop"), "end_turn"),
            (Some("length"), "max_tokens"),
            (Some("tool_calls"), "tool_use"),
            (Some("content_filter"), "refusal"),
            (None, "end_turn"),
        ] {
            assert_eq!(openai_to_anthropic_stop_reason(finish), stop);
        }
    }
}
