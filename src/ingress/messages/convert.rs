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

use crate::providers::UpstreamError;
use domain::Usage;
use serde_json::{json, Map, Value};

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
pub fn anthropic_to_openai_request(request: &Value) -> Result<Value, ConvertError> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("`model` is required"))?;
    let anthropic_messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| refuse("`messages` is required"))?;

    let mut messages = Vec::new();
    if let Some(system) = anthropic_to_openai_system(request.get("system"))? {
        messages.push(json!({"role": "system", "content": system}));
    }
    for (i, message) in anthropic_messages.iter().enumerate() {
        let content = message.get("content");
        match message.get("role").and_then(Value::as_str) {
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

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = request.get("max_tokens").filter(|v| v.is_u64()) {
        out.insert("max_tokens".into(), max.clone());
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = request.get(field).filter(|v| v.is_number()) {
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(stop) = request
        .get("stop_sequences")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
    {
        out.insert("stop".into(), Value::Array(stop.clone()));
    }
    if let Some(user) = request
        .pointer("/metadata/user_id")
        .filter(|u| u.is_string())
    {
        out.insert("user".into(), user.clone());
    }
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    if let Some(tools) = tools {
        out.insert(
            "tools".into(),
            Value::Array(
                tools
                    .iter()
                    .map(anthropic_to_openai_tool)
                    .collect::<Result<_, _>>()?,
            ),
        );
        if let Some(choice) = request.get("tool_choice").filter(|c| !c.is_null()) {
            let (choice, parallel) = anthropic_to_openai_tool_choice(choice)?;
            out.insert("tool_choice".into(), choice);
            if parallel == Some(false) {
                out.insert("parallel_tool_calls".into(), json!(false));
            }
        }
    }
    Ok(Value::Object(out))
}

/// The text of content blocks that must all be text (system, tool results).
fn text_of_blocks(blocks: &[Value], what: &str) -> Result<Vec<String>, ConvertError> {
    blocks
        .iter()
        .map(|b| match b.get("type").and_then(Value::as_str) {
            Some("text") => Ok(b
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()),
            other => Err(refuse(format!(
                "{what} may only hold text blocks for this model, not {}",
                other.unwrap_or("an untyped block")
            ))),
        })
        .collect()
}

/// `system` (a string or text blocks) as one system message's text.
fn anthropic_to_openai_system(system: Option<&Value>) -> Result<Option<String>, ConvertError> {
    let text = match system {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => text_of_blocks(blocks, "`system`")?.join("\n\n"),
        Some(_) => return Err(refuse("`system` must be a string or an array of blocks")),
    };
    Ok((!text.is_empty()).then_some(text))
}

/// A user turn: its tool results as `tool` messages (Anthropic puts them first,
/// OpenAI wants them right after the assistant's calls), then the rest as one
/// user message.
fn anthropic_to_openai_user(
    content: Option<&Value>,
    messages: &mut Vec<Value>,
) -> Result<(), ConvertError> {
    let blocks = match content {
        Some(Value::String(s)) => {
            messages.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(refuse("message `content` must be a string or an array")),
    };
    let mut parts = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str).unwrap_or("") {
            "tool_result" => messages.push(anthropic_to_openai_tool_result(block)?),
            "text" => parts.push(json!({"type": "text", "text": block.get("text").and_then(Value::as_str).unwrap_or("")})),
            "image" => parts.push(anthropic_to_openai_image(block)?),
            "document" => parts.push(anthropic_to_openai_document(block)?),
            other => {
                return Err(refuse(format!(
                    "content block type {other:?} is not supported in a user turn for this model"
                )))
            }
        }
    }
    let single_text = parts.len() == 1 && parts[0]["type"] == "text";
    match parts.len() {
        0 => {}
        _ if single_text => {
            let text = parts.pop().and_then(|p| p.get("text").cloned());
            messages.push(json!({"role": "user", "content": text}));
        }
        _ => messages.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

/// A base64 or URL image as an OpenAI `image_url` part.
fn anthropic_to_openai_image(block: &Value) -> Result<Value, ConvertError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source
                .get("media_type")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("an image source needs `media_type`"))?,
            source
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("an image source needs `data`"))?
        ),
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse("an image source needs `url`"))?
            .to_string(),
        other => {
            return Err(refuse(format!(
                "image source type {:?} is not supported for this model",
                other.unwrap_or("")
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A base64 PDF as an OpenAI `file` part; a plain-text document as text.
fn anthropic_to_openai_document(block: &Value) -> Result<Value, ConvertError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let field = |name: &str| source.get(name).and_then(Value::as_str);
    match (field("type"), field("media_type"), field("data")) {
        (Some("base64"), Some(media_type @ "application/pdf"), Some(data)) => {
            let filename = block
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("document.pdf");
            Ok(json!({"type": "file", "file": {
                "filename": filename,
                "file_data": format!("data:{media_type};base64,{data}"),
            }}))
        }
        (Some("text"), _, Some(text)) => Ok(json!({"type": "text", "text": text})),
        _ => Err(refuse(
            "only base64 PDF and plain-text documents are supported for this model",
        )),
    }
}

/// A `tool_result` block as a `tool` message (text only; an error result says so).
fn anthropic_to_openai_tool_result(block: &Value) -> Result<Value, ConvertError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("a tool_result block needs `tool_use_id`"))?;
    let mut text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => text_of_blocks(blocks, "a tool_result")?.join("\n"),
        Some(_) => return Err(refuse("tool_result `content` must be a string or an array")),
    };
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        text = format!("Error: {text}");
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

/// An assistant turn: its text, and its `tool_use` blocks as tool calls.
/// Thinking blocks are dropped (OpenAI's chat input has no place for them).
fn anthropic_to_openai_assistant(content: Option<&Value>) -> Result<Option<Value>, ConvertError> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(Some(json!({"role": "assistant", "content": s}))),
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(refuse("message `content` must be a string or an array")),
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            "tool_use" => tool_calls.push(json!({
                "id": block.get("id").and_then(Value::as_str)
                    .ok_or_else(|| refuse("a tool_use block needs `id`"))?,
                "type": "function",
                "function": {
                    "name": block.get("name").and_then(Value::as_str)
                        .ok_or_else(|| refuse("a tool_use block needs `name`"))?,
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
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
    let mut message = json!({"role": "assistant"});
    message["content"] = if text.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    Ok(Some(message))
}

/// A client tool as an OpenAI function tool; server tools are Anthropic's own.
fn anthropic_to_openai_tool(tool: &Value) -> Result<Value, ConvertError> {
    if let Some(kind) = tool
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| *t != "custom")
    {
        return Err(refuse(format!(
            "tool type {kind:?} is an Anthropic server tool"
        )));
    }
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("a tool needs `name`"))?;
    let mut function = json!({"name": name});
    if let Some(description) = tool.get("description").filter(|d| d.is_string()) {
        function["description"] = description.clone();
    }
    function["parameters"] = tool
        .get("input_schema")
        .filter(|s| s.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    Ok(json!({"type": "function", "function": function}))
}

/// Anthropic `tool_choice` as OpenAI's, and whether parallel calls are allowed.
fn anthropic_to_openai_tool_choice(choice: &Value) -> Result<(Value, Option<bool>), ConvertError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    let out = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("`tool_choice` of type tool needs `name`"))?;
            json!({"type": "function", "function": {"name": name}})
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
pub fn openai_to_anthropic_stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Normalized usage in Anthropic's shape (`input_tokens` excludes cache reads
/// and writes, as Anthropic's does).
pub fn anthropic_usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    })
}

/// A tool call's `arguments` (a JSON string) as a tool_use `input` (an object).
pub fn tool_input(arguments: Option<&str>) -> Value {
    arguments
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// An OpenAI `chat.completion` as an Anthropic `message`, with the usage charged.
pub fn openai_to_anthropic_response(body: &Value, usage: &Usage, id: &str, model: &str) -> Value {
    let choice = body.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(reasoning) = message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        // No signature: the upstream gave none.
        content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": tool_input(call.pointer("/function/arguments").and_then(Value::as_str)),
        }));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": openai_to_anthropic_stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": anthropic_usage_json(usage),
    })
}

/// Bytes of generated text in an Anthropic message (for estimates only).
pub fn anthropic_message_output_bytes(message: &Value) -> u64 {
    message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|block| {
            let text = ["text", "thinking"]
                .iter()
                .filter_map(|f| block.get(*f).and_then(Value::as_str))
                .map(str::len)
                .sum::<usize>();
            let input = block.get("input").map_or(0, |i| i.to_string().len());
            (text + input) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            out,
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
        let choice = |c: Value| anthropic_to_openai_tool_choice(&c).unwrap().0;
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
        let error = anthropic_to_openai_tool_result(
            &json!({"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": true}),
        )
        .unwrap();
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
            out,
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
