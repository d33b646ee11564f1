//! AIGNE v2 shapes ↔ OpenAI shapes. Pure functions: the providers speak OpenAI's
//! wire format (see `crate::providers`), the AIGNE client speaks `@aigne/core`'s
//! `ChatModel` input and output. The client's source (`@aigne/core` 1.72.0,
//! `agents/chat-model.js`) is the authority for these shapes.

use super::wire::{
    Call, ChatFrame, ChatInput, ChatOutput, ContentPart, DeltaBody, FunctionKind, JsonSchema,
    Message, MessageContent, ReasoningEffort, StreamDelta, TextDelta, Tool, ToolCall,
    ToolCallOutput, ToolCallOutputFunction, ToolChoice,
};
use crate::error::HubError;
use crate::ingress;
use crate::ingress::lenient::{self, Items, Shaped};
use crate::ingress::openai_wire::{
    AnswerToolCall, ChatAnswer, ChatMessage, ChatRequest, ChatRole, ChatTool, ChatToolCall,
    ChatToolChoice, ContentPart as ChatPart, FunctionCall, FunctionName, FunctionSpec,
    FunctionType, ImageUrl, JsonSchemaFormat, JsonSchemaType, MessageContent as ChatContent,
    ResponseFormat, ToolMode,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Number, Value};

fn bad(message: impl Into<String>) -> HubError {
    HubError::BadRequest(message.into())
}

/// Most messages one chat call may carry (bounds the conversion work).
pub(crate) const MESSAGES_MAX: usize = 10_000;

/// A chat call as the hub needs it.
#[derive(Debug)]
pub(crate) struct ChatCall {
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

/// A call whose `input` is an object, read as an `I`.
pub(crate) struct InputCall<I> {
    pub(crate) input: I,
    /// The top-level `model` of older clients.
    pub(crate) model: Option<String>,
    /// `options.streaming === true` only.
    pub(crate) streaming: bool,
}

/// A call's `input`, which must be an object.
pub(crate) fn input_of<I: DeserializeOwned + Default>(
    call: &Value,
) -> Result<InputCall<I>, HubError> {
    if !call.is_object() {
        return Err(bad("request body must be a JSON object"));
    }
    let call: Call<I> = lenient::read(call);
    let input = call
        .input
        .ok_or_else(|| bad("`input` is required and must be an object"))?;
    Ok(InputCall {
        input,
        model: call.model,
        streaming: call.options.and_then(|o| o.streaming) == Some(true),
    })
}

/// The hub model id of a call: `input.modelOptions.model` (`chosen`), else a
/// top-level `model` (older clients). `aignehub/` in front is the client's own
/// provider name and is dropped.
pub(crate) fn model_of(
    chosen: Option<Shaped<String>>,
    top_level: Option<String>,
) -> Result<String, HubError> {
    let model = match chosen {
        Some(chosen) => chosen.ok(),
        None => top_level,
    };
    let model = model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            bad("`input.modelOptions.model` is required: a string like \"openai/gpt-4o-mini\"")
        })?;
    let model = model.strip_prefix("aignehub/").unwrap_or(model);
    Ok(model.to_string())
}

/// Every item converted by `convert` (given its index, for messages that name it).
fn each<T, U>(
    items: Items<T>,
    convert: fn(usize, T) -> Result<U, HubError>,
) -> Result<Vec<U>, HubError> {
    let items = items.0.into_iter().enumerate();
    items.map(|(i, item)| convert(i, item)).collect()
}

/// Converts `POST /api/v2/chat` to an OpenAI chat request. Unknown keys are
/// ignored; known ones of the wrong shape are a 400 naming the field.
pub(crate) fn chat_call(call: &Value) -> Result<ChatCall, HubError> {
    let call: InputCall<ChatInput> = input_of(call)?;
    let input = call.input;
    let options = input.model_options.unwrap_or_default();
    let model = model_of(options.model, call.model)?;
    let messages = match input.messages {
        Some(messages) if !messages.0.is_empty() => messages,
        _ => {
            return Err(bad(
                "`input.messages` is required and must be a non-empty array",
            ))
        }
    };
    if messages.0.len() > MESSAGES_MAX {
        return Err(bad(format!(
            "`input.messages` has more than {MESSAGES_MAX} messages"
        )));
    }
    let mut out = ChatRequest {
        messages: each(messages, message)?,
        ..ChatRequest::default()
    };

    let has_tools = match input.tools {
        None => false,
        Some(Shaped::Is(tools)) => {
            let has_tools = !tools.0.is_empty();
            if has_tools {
                out.tools = Some(each(tools, tool)?);
            }
            has_tools
        }
        Some(Shaped::Not) => return Err(bad("`input.tools` must be an array")),
    };
    out.tool_choice = input.tool_choice.map(tool_choice).transpose()?;
    let json_mode = match input.response_format {
        None => false,
        Some(format) => match format.kind.as_deref() {
            Some("text") => false,
            Some("json_schema") => {
                out.response_format = Some(json_schema_format(format.json_schema)?);
                true
            }
            _ => {
                return Err(bad(
                    "`input.responseFormat.type` must be \"text\" or \"json_schema\"",
                ))
            }
        },
    };
    let number = |field: &str, value: Option<Shaped<Number>>| match value {
        None => Ok(None),
        Some(Shaped::Is(n)) => Ok(Some(n)),
        Some(Shaped::Not) => Err(bad(format!(
            "`input.modelOptions.{field}` must be a number"
        ))),
    };
    out.temperature = number("temperature", options.temperature)?;
    out.top_p = number("topP", options.top_p)?;
    out.frequency_penalty = number("frequencyPenalty", options.frequency_penalty)?;
    out.presence_penalty = number("presencePenalty", options.presence_penalty)?;
    if has_tools {
        out.parallel_tool_calls = options.parallel_tool_calls;
    }
    out.reasoning_effort = options.reasoning_effort.and_then(reasoning_effort);
    let max_tokens = match options.max_tokens {
        None => None,
        Some(cap) => Some(
            cap.ok()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("`input.modelOptions.maxTokens` must be a positive integer"))?,
        ),
    };
    out.stream = Some(call.streaming);
    Ok(ChatCall {
        model,
        streaming: call.streaming,
        json_mode,
        max_tokens,
        openai: ingress::to_json(&out),
    })
}

/// `input.toolChoice` in OpenAI's shape.
fn tool_choice(choice: ToolChoice) -> Result<ChatToolChoice, HubError> {
    let name = match choice {
        ToolChoice::Mode(mode) => match mode.as_str() {
            "auto" => return Ok(ChatToolChoice::Mode(ToolMode::Auto)),
            "none" => return Ok(ChatToolChoice::Mode(ToolMode::None)),
            "required" => return Ok(ChatToolChoice::Mode(ToolMode::Required)),
            _ => None,
        },
        ToolChoice::Tool(tool) => tool.function.and_then(|f| f.name),
    };
    let name = name.ok_or_else(|| {
        bad("`input.toolChoice` must be \"auto\", \"none\", \"required\" or a tool")
    })?;
    Ok(ChatToolChoice::Function {
        kind: FunctionType::Function,
        function: FunctionName { name },
    })
}

/// `responseFormat.jsonSchema` as OpenAI's strict structured output.
fn json_schema_format(schema: Option<JsonSchema>) -> Result<ResponseFormat, HubError> {
    let schema = schema.ok_or_else(|| {
        bad("`input.responseFormat.jsonSchema` is required for type \"json_schema\"")
    })?;
    let inner = schema
        .schema
        .ok_or_else(|| bad("`input.responseFormat.jsonSchema.schema` must be an object"))?;
    Ok(ResponseFormat {
        kind: JsonSchemaType::JsonSchema,
        json_schema: JsonSchemaFormat {
            name: schema.name.unwrap_or_else(|| json!("output")),
            description: schema.description,
            strict: schema.strict,
            schema: strict_json_schema(&Value::Object(inner)),
        },
    })
}

/// `modelOptions.reasoningEffort`: a level, or a token budget mapped to one the
/// way the AIGNE OpenAI model does.
fn reasoning_effort(value: ReasoningEffort) -> Option<&'static str> {
    match value {
        ReasoningEffort::Level(level) => match level.as_str() {
            "minimal" => Some("minimal"),
            "low" => Some("low"),
            "medium" => Some("medium"),
            "high" => Some("high"),
            _ => None,
        },
        ReasoningEffort::Budget(n) => {
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
    }
}

fn message(index: usize, m: Message) -> Result<ChatMessage, HubError> {
    let at = |field: &str| format!("`input.messages[{index}].{field}`");
    let role = match m.role.as_deref() {
        Some("system") => ChatRole::System,
        Some("user") => ChatRole::User,
        Some("agent") | Some("assistant") => ChatRole::Assistant,
        Some("tool") => ChatRole::Tool,
        _ => {
            return Err(bad(format!(
                "{} must be \"system\", \"user\", \"agent\" or \"tool\"",
                at("role")
            )))
        }
    };
    let content = match m.content {
        None => None,
        Some(Shaped::Is(MessageContent::Text(s))) => Some(ChatContent::Text(s)),
        Some(Shaped::Is(MessageContent::Parts(parts))) => Some(ChatContent::Parts(
            parts
                .0
                .into_iter()
                .enumerate()
                .map(|(j, p)| content_part(index, j, p))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Some(Shaped::Not) => {
            return Err(bad(format!(
                "{} must be a string or an array of parts",
                at("content")
            )))
        }
    };
    let tool_calls = match m.tool_calls {
        None => Vec::new(),
        Some(Shaped::Is(calls)) => calls
            .0
            .into_iter()
            .enumerate()
            .map(|(j, c)| tool_call_to_openai(index, j, c))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Shaped::Not) => return Err(bad(format!("{} must be an array", at("toolCalls")))),
    };
    let tool_call_id = if role == ChatRole::Tool {
        let id = m.tool_call_id.ok_or_else(|| {
            bad(format!(
                "{} is required for a tool message",
                at("toolCallId")
            ))
        })?;
        Some(id)
    } else {
        None
    };
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
        tool_call_id,
        name: m.name,
    })
}

fn content_part(index: usize, part_index: usize, p: ContentPart) -> Result<ChatPart, HubError> {
    let at = format!("`input.messages[{index}].content[{part_index}]`");
    let text_of = |field: &str, value: Option<String>| {
        value.ok_or_else(|| bad(format!("{at}.{field} must be a string")))
    };
    let image = |url: String| ChatPart::ImageUrl {
        image_url: ImageUrl { url },
    };
    match p.kind.as_deref() {
        Some("text") => Ok(ChatPart::Text {
            text: text_of("text", p.text)?,
        }),
        Some("url") => Ok(image(text_of("url", p.url)?)),
        Some("file") => {
            let mime = p
                .mime_type
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "image/png".into());
            let data = text_of("data", p.data)?;
            Ok(image(format!("data:{mime};base64,{data}")))
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
fn tool_call_to_openai(
    index: usize,
    call_index: usize,
    c: ToolCall,
) -> Result<ChatToolCall, HubError> {
    let at = format!("`input.messages[{index}].toolCalls[{call_index}]`");
    let id =
        c.id.ok_or_else(|| bad(format!("{at}.id must be a string")))?;
    let function = c.function.unwrap_or_default();
    let name = function
        .name
        .ok_or_else(|| bad(format!("{at}.function.name must be a string")))?;
    let arguments = match function.arguments {
        None | Some(Value::Null) => "{}".to_string(),
        // Tolerated: an OpenAI-style string is passed on as it is.
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
    };
    Ok(ChatToolCall {
        id,
        kind: FunctionType::Function,
        function: FunctionCall { name, arguments },
    })
}

fn tool(index: usize, t: Tool) -> Result<ChatTool, HubError> {
    let at = format!("`input.tools[{index}]`");
    let function = t
        .function
        .ok_or_else(|| bad(format!("{at}.function must be an object")))?;
    let name = function
        .name
        .ok_or_else(|| bad(format!("{at}.function.name must be a string")))?;
    let parameters = function.parameters.map_or_else(
        || json!({"type": "object", "properties": {}}),
        Value::Object,
    );
    Ok(ChatTool {
        kind: FunctionType::Function,
        function: FunctionSpec {
            name,
            description: function.description,
            parameters,
        },
    })
}

/// A JSON schema as OpenAI's strict structured outputs need it: every property
/// of an object is required, and the ones that were optional may be null (the
/// AIGNE client drops null fields before it validates the answer). As the AIGNE
/// OpenAI model does it.
pub(crate) fn strict_json_schema(schema: &Value) -> Value {
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
pub(crate) fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

fn tool_call_output(id: String, name: String, arguments: &str) -> ToolCallOutput {
    ToolCallOutput {
        id,
        kind: FunctionKind::Function,
        function: ToolCallOutputFunction {
            name,
            arguments: arguments_object(arguments),
        },
    }
}

fn tool_calls_to_aigne(calls: &Items<AnswerToolCall>) -> Vec<ToolCallOutput> {
    calls
        .iter()
        .map(|c| {
            tool_call_output(
                c.id.clone().unwrap_or_default(),
                c.name().unwrap_or_default().to_string(),
                c.arguments().unwrap_or(""),
            )
        })
        .collect()
}

/// Sets `text`, or `json` in JSON mode when the text is a JSON object.
fn put_text(out: &mut ChatOutput, text: String, json_mode: bool) {
    if json_mode {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&text) {
            out.json = Some(v);
            return;
        }
    }
    if !text.is_empty() {
        out.text = Some(text);
    }
}

/// The parts of an OpenAI `chat.completion` an AIGNE answer carries (`text` or
/// `json`, `thoughts`, `toolCalls`), and the upstream's name of the model. Usage
/// is added by the caller.
pub(crate) fn chat_output(body: &Value, json_mode: bool) -> (ChatOutput, Option<String>) {
    let answer: ChatAnswer = lenient::read(body);
    let mut out = ChatOutput::default();
    let message = answer.first_choice().and_then(|c| c.message.as_ref());
    let Some(message) = message else {
        return (out, answer.model);
    };
    let mut text = message.text().unwrap_or_default().to_string();
    if text.is_empty() {
        if let Some(refusal) = &message.refusal {
            text = refusal.clone();
        }
    }
    put_text(&mut out, text, json_mode);
    out.thoughts = message.thoughts().map(str::to_string);
    if let Some(calls) = message.tool_calls.as_ref().filter(|c| !c.0.is_empty()) {
        out.tool_calls = Some(tool_calls_to_aigne(calls));
    }
    (out, answer.model)
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
pub(crate) struct StreamAccumulator {
    json_mode: bool,
    /// Text held back in JSON mode (sent as `json` at the end).
    held_text: String,
    refusal: String,
    sent_text: bool,
    calls: Vec<PartialCall>,
    model: Option<String>,
}

fn text_delta(delta: TextDelta) -> ChatFrame {
    StreamDelta {
        delta: DeltaBody::Text(delta),
    }
}

impl StreamAccumulator {
    pub(crate) fn new(json_mode: bool) -> Self {
        Self {
            json_mode,
            ..Self::default()
        }
    }

    /// The deltas to send for one upstream chunk (choice 0 only: an AIGNE answer
    /// has one output).
    pub(crate) fn push(&mut self, chunk: &Value) -> Vec<ChatFrame> {
        let chunk: ChatAnswer = lenient::read(chunk);
        if self.model.is_none() {
            self.model = chunk.model;
        }
        let mut frames = Vec::new();
        let choices = chunk.choices.iter().flat_map(Items::iter);
        let Some(choice) = choices.into_iter().find(|c| c.index.unwrap_or(0) == 0) else {
            return frames;
        };
        let Some(delta) = &choice.delta else {
            return frames;
        };
        if let Some(thoughts) = delta.thoughts() {
            frames.push(text_delta(TextDelta::Thoughts(thoughts.to_string())));
        }
        if let Some(t) = delta.text().filter(|t| !t.is_empty()) {
            if self.json_mode {
                self.held_text.push_str(t);
            } else {
                self.sent_text = true;
                frames.push(text_delta(TextDelta::Text(t.to_string())));
            }
        }
        if let Some(r) = &delta.refusal {
            self.refusal.push_str(r);
        }
        for call in delta.tool_calls.iter().flat_map(Items::iter) {
            self.push_call(call);
        }
        frames
    }

    /// Adds a tool call's piece to the call it continues (or a new one).
    fn push_call(&mut self, call: &AnswerToolCall) {
        let index = call.index.map_or(self.calls.len(), |i| i as usize);
        // Indexes come from the upstream: never allocate past one new call.
        let index = index.min(self.calls.len());
        if index == self.calls.len() {
            self.calls.push(PartialCall::default());
        }
        let partial = &mut self.calls[index];
        if let Some(id) = &call.id {
            partial.id = id.clone();
        }
        if let Some(name) = call.name() {
            partial.name.push_str(name);
        }
        if let Some(args) = call.arguments() {
            partial.arguments.push_str(args);
        }
    }

    /// After the upstream finished: text still to send (JSON mode whose text was
    /// not JSON, or a refusal), the structured parts for the final frame
    /// (`toolCalls`, `json`), and the upstream's name of the model.
    pub(crate) fn finish(self) -> (Vec<ChatFrame>, ChatOutput, Option<String>) {
        let mut frames = Vec::new();
        let mut parts = ChatOutput::default();
        if !self.held_text.is_empty() {
            let mut out = ChatOutput::default();
            put_text(&mut out, self.held_text, true);
            if let Some(json) = out.json {
                parts.json = Some(json);
            } else if let Some(text) = out.text {
                frames.push(text_delta(TextDelta::Text(text)));
            }
        }
        if !self.sent_text && parts.json.is_none() && !self.refusal.is_empty() {
            frames.push(text_delta(TextDelta::Text(self.refusal)));
        }
        if !self.calls.is_empty() {
            let calls = self.calls.into_iter();
            let calls = calls.map(|c| tool_call_output(c.id, c.name, &c.arguments));
            parts.tool_calls = Some(calls.collect());
        }
        (frames, parts, self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::to_json;

    /// An answer's output as the client reads it, with the upstream's model.
    fn with_model(output: &ChatOutput, model: Option<String>) -> Value {
        let mut out = to_json(output);
        if let Some(model) = model {
            out["model"] = json!(model);
        }
        out
    }

    fn chat_output_json(body: &Value, json_mode: bool) -> Value {
        let (output, model) = chat_output(body, json_mode);
        with_model(&output, model)
    }

    fn frames_json(frames: Vec<ChatFrame>) -> Vec<Value> {
        frames.iter().map(to_json).collect()
    }

    /// A finished stream's text frames and final parts, as the client reads them.
    fn finished(acc: StreamAccumulator) -> (Vec<Value>, Value) {
        let (frames, output, model) = acc.finish();
        (frames_json(frames), with_model(&output, model))
    }

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
        let out = chat_output_json(&body, false);
        assert!(out.get("text").is_none());
        assert_eq!(out["thoughts"], "thinking");
        assert_eq!(
            out["toolCalls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(out["model"], "gpt-4o-mini-2024");
        let body = json!({"choices": [{"message": {"content": "{\"a\":1}"}}]});
        assert_eq!(chat_output_json(&body, true)["json"], json!({"a": 1}));
        assert_eq!(chat_output_json(&body, false)["text"], "{\"a\":1}");
        assert_eq!(arguments_object("not json"), json!({}));
    }

    #[test]
    fn stream_deltas_carry_text_as_it_comes_and_tool_calls_complete_at_the_end() {
        let mut acc = StreamAccumulator::new(false);
        let chunk =
            |delta: Value| json!({"model": "m1", "choices": [{"index": 0, "delta": delta}]});
        assert_eq!(
            frames_json(acc.push(&chunk(json!({"content": "Hel"})))),
            vec![json!({"delta": {"text": {"text": "Hel"}}})]
        );
        assert_eq!(
            frames_json(acc.push(&chunk(json!({"reasoning_content": "hm"})))),
            vec![json!({"delta": {"text": {"thoughts": "hm"}}})]
        );
        assert!(acc
            .push(&chunk(json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_", "arguments": "{\"ci"}}]})))
            .is_empty());
        acc.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": "ty\":\"Paris\"}"}}]})));
        acc.push(&chunk(json!({"tool_calls": [{"index": 7, "id": "c2", "function": {"name": "g", "arguments": ""}}]})));
        let (frames, parts) = finished(acc);
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
        let (frames, parts) = finished(acc);
        assert!(frames.is_empty());
        assert_eq!(parts["json"], json!({"a": 1}));

        let mut acc = StreamAccumulator::new(true);
        acc.push(&chunk("not json"));
        let (frames, parts) = finished(acc);
        assert_eq!(
            frames,
            vec![json!({"delta": {"text": {"text": "not json"}}})]
        );
        assert!(parts.get("json").is_none());
    }
}
