//! AIGNE v2 shapes ↔ OpenAI shapes. Pure functions: the providers speak OpenAI's
//! wire format (see `crate::providers`), the AIGNE client speaks `@aigne/core`'s
//! `ChatModel` input and output. The client's source (`@aigne/core` 1.72.0,
//! `agents/chat-model.js`) is the authority for these shapes.

use crate::error::HubError;
use serde_json::{json, Map, Value};

fn bad(message: impl Into<String>) -> HubError {
    HubError::BadRequest(message.into())
}

/// Most messages one chat call may carry (bounds the conversion work).
pub const MESSAGES_MAX: usize = 10_000;

/// A chat call as the hub needs it.
#[derive(Debug)]
pub struct ChatCall {
    /// The hub model id, `provider/model`.
    pub model: String,
    /// `options.streaming === true`, and nothing else, makes a stream.
    pub streaming: bool,
    /// `responseFormat.type == "json_schema"`: the answer is a `json` object.
    pub json_mode: bool,
    /// `modelOptions.maxTokens`: the client's output cap, if it names one. It is
    /// not in `openai`: the hub holds for and sends one cap per attempt
    /// (`pipeline::Admitted::complete`).
    pub max_tokens: Option<u32>,
    /// The request in OpenAI's shape (without `model`, which is set per attempt).
    pub openai: Value,
}

/// The hub model id of a call: `input.modelOptions.model`, else a top-level
/// `model` (older clients). `aignehub/` in front is the client's own provider
/// name and is dropped.
pub fn model_of(call: &Value, input: &Value) -> Result<String, HubError> {
    let model = input
        .pointer("/modelOptions/model")
        .or_else(|| call.get("model"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            bad("`input.modelOptions.model` is required: a string like \"openai/gpt-4o-mini\"")
        })?;
    let model = model.strip_prefix("aignehub/").unwrap_or(model);
    Ok(model.to_string())
}

/// `input`, which must be an object.
pub fn input_of(call: &Value) -> Result<&Value, HubError> {
    if !call.is_object() {
        return Err(bad("request body must be a JSON object"));
    }
    call.get("input")
        .filter(|i| i.is_object())
        .ok_or_else(|| bad("`input` is required and must be an object"))
}

/// Whether the caller asked for a stream: `options.streaming === true` only.
pub fn wants_stream(call: &Value) -> bool {
    call.pointer("/options/streaming") == Some(&Value::Bool(true))
}

/// Converts `POST /api/v2/chat` to an OpenAI chat request. Unknown keys are
/// ignored; known ones of the wrong shape are a 400 naming the field.
/// Every item converted by `convert` (given its index, for messages that name it).
fn each(
    items: &[Value],
    convert: fn(usize, &Value) -> Result<Value, HubError>,
) -> Result<Value, HubError> {
    let items = items.iter().enumerate().map(|(i, item)| convert(i, item));
    Ok(Value::Array(items.collect::<Result<_, _>>()?))
}

pub fn chat_call(call: &Value) -> Result<ChatCall, HubError> {
    let input = input_of(call)?;
    let model = model_of(call, input)?;
    let messages = match input.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        _ => {
            return Err(bad(
                "`input.messages` is required and must be a non-empty array",
            ))
        }
    };
    if messages.len() > MESSAGES_MAX {
        return Err(bad(format!(
            "`input.messages` has more than {MESSAGES_MAX} messages"
        )));
    }
    let mut out = Map::new();
    out.insert("messages".into(), each(messages, message)?);

    let has_tools = match input.get("tools") {
        None | Some(Value::Null) => false,
        Some(Value::Array(tools)) => {
            if !tools.is_empty() {
                out.insert("tools".into(), each(tools, tool)?);
            }
            !tools.is_empty()
        }
        Some(_) => return Err(bad("`input.tools` must be an array")),
    };
    match input.get("toolChoice") {
        None | Some(Value::Null) => {}
        Some(Value::String(choice)) if matches!(choice.as_str(), "auto" | "none" | "required") => {
            out.insert("tool_choice".into(), json!(choice));
        }
        Some(choice) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad("`input.toolChoice` must be \"auto\", \"none\", \"required\" or a tool")
                })?;
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": name}}),
            );
        }
    }
    let mut json_mode = false;
    match input.get("responseFormat") {
        None | Some(Value::Null) => {}
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_schema") => {
                let schema = format.get("jsonSchema").filter(|s| s.is_object()).ok_or_else(|| {
                    bad("`input.responseFormat.jsonSchema` is required for type \"json_schema\"")
                })?;
                let mut json_schema = Map::new();
                json_schema.insert(
                    "name".into(),
                    schema.get("name").cloned().unwrap_or(json!("output")),
                );
                for field in ["description", "strict"] {
                    if let Some(v) = schema.get(field).filter(|v| !v.is_null()) {
                        json_schema.insert(field.into(), v.clone());
                    }
                }
                let inner = schema
                    .get("schema")
                    .filter(|s| s.is_object())
                    .ok_or_else(|| {
                        bad("`input.responseFormat.jsonSchema.schema` must be an object")
                    })?;
                json_schema.insert("schema".into(), strict_json_schema(inner));
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": json_schema}),
                );
                json_mode = true;
            }
            _ => {
                return Err(bad(
                    "`input.responseFormat.type` must be \"text\" or \"json_schema\"",
                ))
            }
        },
    }
    let options = input.get("modelOptions").cloned().unwrap_or(Value::Null);
    let number = |field: &str| -> Result<Option<Value>, HubError> {
        match options.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if v.is_number() => Ok(Some(v.clone())),
            Some(_) => Err(bad(format!(
                "`input.modelOptions.{field}` must be a number"
            ))),
        }
    };
    for (field, openai) in [
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("frequencyPenalty", "frequency_penalty"),
        ("presencePenalty", "presence_penalty"),
    ] {
        if let Some(v) = number(field)? {
            out.insert(openai.into(), v);
        }
    }
    if has_tools {
        if let Some(parallel) = options.get("parallelToolCalls").and_then(Value::as_bool) {
            out.insert("parallel_tool_calls".into(), json!(parallel));
        }
    }
    if let Some(effort) = reasoning_effort(options.get("reasoningEffort")) {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    let max_tokens = match options.get("maxTokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
                .ok_or_else(|| bad("`input.modelOptions.maxTokens` must be a positive integer"))?
                as u32,
        ),
    };
    let streaming = wants_stream(call);
    out.insert("stream".into(), json!(streaming));
    Ok(ChatCall {
        model,
        streaming,
        json_mode,
        max_tokens,
        openai: Value::Object(out),
    })
}

/// `modelOptions.reasoningEffort`: a level, or a token budget mapped to one the
/// way the AIGNE OpenAI model does.
fn reasoning_effort(value: Option<&Value>) -> Option<&'static str> {
    match value? {
        Value::String(s) => match s.as_str() {
            "minimal" => Some("minimal"),
            "low" => Some("low"),
            "medium" => Some("medium"),
            "high" => Some("high"),
            _ => None,
        },
        Value::Number(n) => {
            let n = n.as_f64()?;
            if n > 5000.0 {
                Some("high")
            } else if n > 1000.0 {
                Some("medium")
            } else if n > 500.0 {
                Some("low")
            } else if n > 0.0 {
                Some("minimal")
            } else {
                None
            }
        }
        _ => None,
    }
}

fn message(index: usize, m: &Value) -> Result<Value, HubError> {
    let at = |field: &str| format!("`input.messages[{index}].{field}`");
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system") => "system",
        Some("user") => "user",
        Some("agent") | Some("assistant") => "assistant",
        Some("tool") => "tool",
        _ => {
            return Err(bad(format!(
                "{} must be \"system\", \"user\", \"agent\" or \"tool\"",
                at("role")
            )))
        }
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    let content = match m.get("content") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(parts)) => Value::Array(
            parts
                .iter()
                .enumerate()
                .map(|(j, p)| content_part(index, j, p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(bad(format!(
                "{} must be a string or an array of parts",
                at("content")
            )))
        }
    };
    match m.get("toolCalls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) if !calls.is_empty() => {
            let calls = calls
                .iter()
                .enumerate()
                .map(|(j, c)| tool_call_to_openai(index, j, c))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("tool_calls".into(), Value::Array(calls));
        }
        Some(Value::Array(_)) => {}
        Some(_) => return Err(bad(format!("{} must be an array", at("toolCalls")))),
    }
    out.insert("content".into(), content);
    if role == "tool" {
        let id = m.get("toolCallId").and_then(Value::as_str).ok_or_else(|| {
            bad(format!(
                "{} is required for a tool message",
                at("toolCallId")
            ))
        })?;
        out.insert("tool_call_id".into(), json!(id));
    }
    if let Some(name) = m.get("name").and_then(Value::as_str) {
        out.insert("name".into(), json!(name));
    }
    Ok(Value::Object(out))
}

fn content_part(index: usize, part_index: usize, p: &Value) -> Result<Value, HubError> {
    let at = format!("`input.messages[{index}].content[{part_index}]`");
    let text_of = |field: &str| {
        p.get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{at}.{field} must be a string")))
    };
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text", "text": text_of("text")?})),
        Some("url") => Ok(json!({"type": "image_url", "image_url": {"url": text_of("url")?}})),
        Some("file") => {
            let mime = p
                .get("mimeType")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .unwrap_or("image/png");
            Ok(json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{}", text_of("data")?)}}))
        }
        Some("local") => Err(bad(format!(
            "{at} is a local file: the hub cannot read the caller's disk; send it as {{\"type\":\"file\",\"data\":<base64>}}"
        ))),
        _ => Err(bad(format!(
            "{at}.type must be \"text\", \"url\" or \"file\""
        ))),
    }
}

/// An AIGNE tool call (arguments as an object) to OpenAI's (arguments as a JSON string).
fn tool_call_to_openai(index: usize, call_index: usize, c: &Value) -> Result<Value, HubError> {
    let at = format!("`input.messages[{index}].toolCalls[{call_index}]`");
    let id = c
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.id must be a string")))?;
    let name = c
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.function.name must be a string")))?;
    let arguments = match c.pointer("/function/arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        // Tolerated: an OpenAI-style string is passed on as it is.
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
}

fn tool(index: usize, t: &Value) -> Result<Value, HubError> {
    let at = format!("`input.tools[{index}]`");
    let function = t
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| bad(format!("{at}.function must be an object")))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.function.name must be a string")))?;
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    if let Some(d) = function.get("description").and_then(Value::as_str) {
        out.insert("description".into(), json!(d));
    }
    let parameters = match function.get("parameters") {
        Some(p) if p.is_object() => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    out.insert("parameters".into(), parameters);
    Ok(json!({"type": "function", "function": out}))
}

/// A JSON schema as OpenAI's strict structured outputs need it: every property
/// of an object is required, and the ones that were optional may be null (the
/// AIGNE client drops null fields before it validates the answer). As the AIGNE
/// OpenAI model does it.
pub fn strict_json_schema(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = object.clone();
    match object.get("type").and_then(Value::as_str) {
        Some("object") => {
            let required: Vec<&str> = object
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(properties) = object.get("properties").and_then(Value::as_object) {
                let mut converted = Map::new();
                for (key, value) in properties {
                    let value = strict_json_schema(value);
                    let value = if required.contains(&key.as_str()) {
                        value
                    } else {
                        json!({"anyOf": [value, {"type": ["null"]}]})
                    };
                    converted.insert(key.clone(), value);
                }
                out.insert(
                    "required".into(),
                    Value::Array(properties.keys().map(|k| json!(k)).collect()),
                );
                out.insert("properties".into(), Value::Object(converted));
            }
        }
        Some("array") => {
            if let Some(items) = object.get("items") {
                out.insert("items".into(), strict_json_schema(items));
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// An OpenAI tool call's arguments (a JSON string) as the object AIGNE expects.
/// Arguments that are not a JSON object become `{}` (the client then checks them
/// against the tool's schema).
pub fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

fn tool_calls_to_aigne(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            let arguments = c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            json!({
                "id": c.get("id").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(),
                    "arguments": arguments_object(arguments),
                },
            })
        })
        .collect()
}

/// Sets `text`, or `json` in JSON mode when the text is a JSON object.
fn put_text(out: &mut Map<String, Value>, text: String, json_mode: bool) {
    if json_mode {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&text) {
            out.insert("json".into(), v);
            return;
        }
    }
    if !text.is_empty() {
        out.insert("text".into(), json!(text));
    }
}

/// The parts of an OpenAI `chat.completion` an AIGNE answer carries: `text` or
/// `json`, `thoughts`, `toolCalls`, `model` (the upstream's name). Usage is added
/// by the caller.
pub fn chat_output(body: &Value, json_mode: bool) -> Map<String, Value> {
    let mut out = Map::new();
    let message = body.pointer("/choices/0/message").unwrap_or(&Value::Null);
    let mut text = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if text.is_empty() {
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            text = refusal.to_string();
        }
    }
    put_text(&mut out, text, json_mode);
    for field in ["reasoning_content", "reasoning"] {
        if let Some(thoughts) = message
            .get(field)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            out.insert("thoughts".into(), json!(thoughts));
            break;
        }
    }
    if let Some(calls) = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    {
        out.insert("toolCalls".into(), Value::Array(tool_calls_to_aigne(calls)));
    }
    if let Some(model) = body.get("model").and_then(Value::as_str) {
        out.insert("model".into(), json!(model));
    }
    out
}

/// A tool call being assembled from stream deltas.
#[derive(Default, Debug)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Turns OpenAI `chat.completion.chunk`s into AIGNE stream deltas: text and
/// thoughts as they come (`{"delta":{"text":{…}}}`), tool calls and JSON output
/// assembled and sent once, complete, at the end (the client merges `json`
/// deltas by shallow assignment, so a partial list would replace the whole).
#[derive(Default, Debug)]
pub struct StreamAccumulator {
    json_mode: bool,
    /// Text held back in JSON mode (sent as `json` at the end).
    held_text: String,
    refusal: String,
    sent_text: bool,
    calls: Vec<PartialCall>,
    model: Option<String>,
}

fn text_delta(key: &str, text: &str) -> Value {
    json!({"delta": {"text": {key: text}}})
}

impl StreamAccumulator {
    pub fn new(json_mode: bool) -> Self {
        Self {
            json_mode,
            ..Self::default()
        }
    }

    /// The deltas to send for one upstream chunk (choice 0 only: an AIGNE answer
    /// has one output).
    pub fn push(&mut self, chunk: &Value) -> Vec<Value> {
        if self.model.is_none() {
            self.model = chunk
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        let mut frames = Vec::new();
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            })
        else {
            return frames;
        };
        let Some(delta) = choice.get("delta") else {
            return frames;
        };
        for field in ["reasoning_content", "reasoning"] {
            if let Some(t) = delta
                .get(field)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                frames.push(text_delta("thoughts", t));
                break;
            }
        }
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.json_mode {
                self.held_text.push_str(t);
            } else {
                self.sent_text = true;
                frames.push(text_delta("text", t));
            }
        }
        if let Some(r) = delta.get("refusal").and_then(Value::as_str) {
            self.refusal.push_str(r);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                let index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .map_or(self.calls.len(), |i| i as usize);
                // Indexes come from the upstream: never allocate past one new call.
                let index = index.min(self.calls.len());
                if index == self.calls.len() {
                    self.calls.push(PartialCall::default());
                }
                let partial = &mut self.calls[index];
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    partial.id = id.to_string();
                }
                if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                    partial.name.push_str(name);
                }
                if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    partial.arguments.push_str(args);
                }
            }
        }
        frames
    }

    /// After the upstream finished: text still to send (JSON mode whose text was
    /// not JSON, or a refusal), and the structured parts for the final frame
    /// (`toolCalls`, `json`, `model`).
    pub fn finish(self) -> (Vec<Value>, Map<String, Value>) {
        let mut frames = Vec::new();
        let mut parts = Map::new();
        if !self.held_text.is_empty() {
            let mut out = Map::new();
            put_text(&mut out, self.held_text, true);
            if let Some(json) = out.remove("json") {
                parts.insert("json".into(), json);
            } else if let Some(Value::String(text)) = out.remove("text") {
                frames.push(text_delta("text", &text));
            }
        }
        if !self.sent_text && !parts.contains_key("json") && !self.refusal.is_empty() {
            frames.push(text_delta("text", &self.refusal));
        }
        if !self.calls.is_empty() {
            let calls: Vec<Value> = self
                .calls
                .into_iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": arguments_object(&c.arguments)},
                    })
                })
                .collect();
            parts.insert("toolCalls".into(), Value::Array(calls));
        }
        if let Some(model) = self.model {
            parts.insert("model".into(), json!(model));
        }
        (frames, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(input: Value) -> Value {
        json!({"input": input, "agent": "$CHAT_MODEL", "options": {"userContext": {}, "memories": []}})
    }

    #[test]
    fn a_client_chat_call_becomes_an_openai_request() {
        let c = chat_call(&call(json!({
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "file", "data": "AAA=", "mimeType": "image/jpeg"}, {"type": "url", "url": "https://x/y.png"}]},
                {"role": "agent", "toolCalls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "toolCallId": "c1", "content": "{\"temp\":20}"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}, "metadata": {}}],
            "toolChoice": "auto",
            "modelOptions": {"model": "openai/gpt-4o-mini", "temperature": 0.2, "topP": 1, "parallelToolCalls": true,
                "cacheConfig": {"autoBreakpoints": {"lastMessage": true}}, "somethingNew": 1},
            "outputFileType": "url",
            "unknownKey": {"x": 1}
        })))
        .unwrap();
        assert_eq!(c.model, "openai/gpt-4o-mini");
        assert!(!c.streaming && !c.json_mode);
        let o = &c.openai;
        assert_eq!(
            o["messages"][0],
            json!({"role": "system", "content": "Be brief"})
        );
        assert_eq!(
            o["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/jpeg;base64,AAA="
        );
        assert_eq!(
            o["messages"][1]["content"][2]["image_url"]["url"],
            "https://x/y.png"
        );
        assert_eq!(o["messages"][2]["role"], "assistant");
        assert_eq!(o["messages"][2]["content"], Value::Null);
        assert_eq!(
            o["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(o["messages"][3]["tool_call_id"], "c1");
        assert_eq!(o["tools"][0]["function"]["name"], "get_weather");
        assert!(o["tools"][0].get("metadata").is_none());
        assert_eq!(o["tool_choice"], "auto");
        assert_eq!(o["temperature"], 0.2);
        assert_eq!(o["top_p"], 1);
        assert_eq!(o["parallel_tool_calls"], true);
        assert_eq!(o["stream"], false);
        for ignored in [
            "cacheConfig",
            "somethingNew",
            "outputFileType",
            "unknownKey",
            "model",
        ] {
            assert!(o.get(ignored).is_none(), "{ignored}");
        }
    }

    #[test]
    fn only_streaming_true_streams() {
        let mut body = call(
            json!({"messages": [{"role": "user", "content": "hi"}], "modelOptions": {"model": "a/b"}}),
        );
        assert!(!chat_call(&body).unwrap().streaming);
        body["options"]["streaming"] = json!("true");
        assert!(!chat_call(&body).unwrap().streaming);
        body["options"]["streaming"] = json!(true);
        assert!(chat_call(&body).unwrap().streaming);
    }

    #[test]
    fn the_model_may_come_with_the_clients_own_prefix_or_at_the_top() {
        let body = json!({"model": "aignehub/mock/gpt-mock", "input": {"messages": [{"role": "user", "content": "hi"}]}});
        assert_eq!(chat_call(&body).unwrap().model, "mock/gpt-mock");
    }

    #[test]
    fn malformed_calls_name_the_field() {
        let err = |v: Value| match chat_call(&v) {
            Err(HubError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        };
        assert!(err(json!({"input": {"messages": []}})).contains("model"));
        assert!(err(call(json!({"modelOptions": {"model": "a/b"}}))).contains("input.messages"));
        assert!(err(call(json!({"modelOptions": {"model": "a/b"}, "messages": [{"role": "robot", "content": "x"}]})))
            .contains("input.messages[0].role"));
        assert!(err(call(json!({"modelOptions": {"model": "a/b"}, "messages": [{"role": "tool", "content": "x"}]})))
            .contains("toolCallId"));
        assert!(err(call(json!({"modelOptions": {"model": "a/b", "maxTokens": 0}, "messages": [{"role": "user", "content": "x"}]})))
            .contains("modelOptions.maxTokens"));
        assert!(err(call(json!({"modelOptions": {"model": "a/b", "temperature": "hot"}, "messages": [{"role": "user", "content": "x"}]})))
            .contains("temperature"));
        assert!(err(call(json!({"modelOptions": {"model": "a/b"}, "messages": [{"role": "user", "content": [{"type": "local", "path": "/etc/passwd"}]}]})))
            .contains("local file"));
    }

    #[test]
    fn json_schema_output_is_strict_with_optional_fields_nullable() {
        let c = chat_call(&call(json!({
            "messages": [{"role": "user", "content": "x"}],
            "modelOptions": {"model": "a/b"},
            "responseFormat": {"type": "json_schema", "jsonSchema": {"name": "output", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "object", "properties": {"c": {"type": "number"}}, "required": []}}}, "required": ["a"]}}}
        })))
        .unwrap();
        assert!(c.json_mode);
        let f = &c.openai["response_format"];
        assert_eq!(f["type"], "json_schema");
        assert_eq!(f["json_schema"]["strict"], true);
        let s = &f["json_schema"]["schema"];
        assert_eq!(s["required"], json!(["a", "b"]));
        assert_eq!(s["properties"]["a"], json!({"type": "string"}));
        assert_eq!(s["properties"]["b"]["anyOf"][1], json!({"type": ["null"]}));
        assert_eq!(
            s["properties"]["b"]["anyOf"][0]["items"]["properties"]["c"]["anyOf"][0],
            json!({"type": "number"})
        );
    }

    #[test]
    fn an_openai_answer_becomes_aigne_output() {
        let body = json!({"model": "gpt-4o-mini-2024", "choices": [{"message": {"role": "assistant", "content": null,
            "reasoning_content": "thinking",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]}}]});
        let out = chat_output(&body, false);
        assert!(out.get("text").is_none());
        assert_eq!(out["thoughts"], "thinking");
        assert_eq!(
            out["toolCalls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(out["model"], "gpt-4o-mini-2024");
        let body = json!({"choices": [{"message": {"content": "{\"a\":1}"}}]});
        assert_eq!(chat_output(&body, true)["json"], json!({"a": 1}));
        assert_eq!(chat_output(&body, false)["text"], "{\"a\":1}");
        assert_eq!(arguments_object("not json"), json!({}));
    }

    #[test]
    fn stream_deltas_carry_text_as_it_comes_and_tool_calls_complete_at_the_end() {
        let mut acc = StreamAccumulator::new(false);
        let chunk =
            |delta: Value| json!({"model": "m1", "choices": [{"index": 0, "delta": delta}]});
        assert_eq!(
            acc.push(&chunk(json!({"content": "Hel"}))),
            vec![json!({"delta": {"text": {"text": "Hel"}}})]
        );
        assert_eq!(
            acc.push(&chunk(json!({"reasoning_content": "hm"}))),
            vec![json!({"delta": {"text": {"thoughts": "hm"}}})]
        );
        assert!(acc
            .push(&chunk(json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_", "arguments": "{\"ci"}}]})))
            .is_empty());
        acc.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": "ty\":\"Paris\"}"}}]})));
        acc.push(&chunk(json!({"tool_calls": [{"index": 7, "id": "c2", "function": {"name": "g", "arguments": ""}}]})));
        let (frames, parts) = acc.finish();
        assert!(frames.is_empty());
        assert_eq!(parts["model"], "m1");
        assert_eq!(
            parts["toolCalls"],
            json!([
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": {}}}
            ])
        );
    }

    #[test]
    fn json_mode_streams_hold_text_back_and_send_json() {
        let mut acc = StreamAccumulator::new(true);
        let chunk = |t: &str| json!({"choices": [{"index": 0, "delta": {"content": t}}]});
        assert!(acc.push(&chunk("{\"a\":")).is_empty());
        assert!(acc.push(&chunk("1}")).is_empty());
        let (frames, parts) = acc.finish();
        assert!(frames.is_empty());
        assert_eq!(parts["json"], json!({"a": 1}));

        let mut acc = StreamAccumulator::new(true);
        acc.push(&chunk("not json"));
        let (frames, parts) = acc.finish();
        assert_eq!(
            frames,
            vec![json!({"delta": {"text": {"text": "not json"}}})]
        );
        assert!(parts.get("json").is_none());
    }
}
