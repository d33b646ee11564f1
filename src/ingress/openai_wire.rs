//! OpenAI's chat wire format as the other ingresses translate to and from it:
//! the chat request they write for an upstream that speaks OpenAI's shape, and
//! the fields of its answers and stream chunks they read.

use crate::ingress::lenient::{any_value, lenient, present, Items};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------
// Request (written)

/// A chat request translated from another wire format (`stream` is left to the
/// operation: the provider modules set it).
#[derive(Serialize, Default, Debug)]
pub(crate) struct ChatRequest {
    /// Absent where the hub sets it per attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<String>,
    pub(crate) messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) top_p: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) frequency_penalty: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_penalty: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stop: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tools: Option<Vec<ChatTool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<ChatToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_format: Option<ResponseFormat>,
    /// Set by a codec that decides it (the Messages translation leaves it to
    /// the provider modules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<bool>,
}

/// `{"type": "json_schema", "json_schema": …}`: structured output.
#[derive(Serialize, Debug)]
pub(crate) struct ResponseFormat {
    #[serde(rename = "type")]
    pub(crate) kind: JsonSchemaType,
    pub(crate) json_schema: JsonSchemaFormat,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JsonSchemaType {
    JsonSchema,
}

/// The client's schema settings, passed on as they came.
#[derive(Serialize, Debug)]
pub(crate) struct JsonSchemaFormat {
    pub(crate) name: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) strict: Option<Value>,
    pub(crate) schema: Value,
}

/// One message of a chat request.
#[derive(Serialize, Debug)]
pub(crate) struct ChatMessage {
    pub(crate) role: ChatRole,
    /// Null when an assistant's turn is only tool calls.
    pub(crate) content: Option<MessageContent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<ChatToolCall>,
    /// Which call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
}

impl ChatMessage {
    /// A message of `role` with `content` and nothing else.
    pub(crate) fn new(role: ChatRole, content: Option<MessageContent>) -> Self {
        ChatMessage {
            role,
            content,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChatRole {
    System,
    User,
    Assistant,
    Tool,
}

/// A message's content: its text, or parts.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub(crate) enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    File { file: FileData },
}

#[derive(Serialize, Debug)]
pub(crate) struct ImageUrl {
    pub(crate) url: String,
}

#[derive(Serialize, Debug)]
pub(crate) struct FileData {
    pub(crate) filename: String,
    pub(crate) file_data: String,
}

#[derive(Serialize, Debug)]
pub(crate) struct ChatToolCall {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: FunctionType,
    pub(crate) function: FunctionCall,
}

#[derive(Serialize, Debug)]
pub(crate) struct FunctionCall {
    pub(crate) name: String,
    /// The arguments as a JSON string.
    pub(crate) arguments: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FunctionType {
    Function,
}

#[derive(Serialize, Debug)]
pub(crate) struct ChatTool {
    #[serde(rename = "type")]
    pub(crate) kind: FunctionType,
    pub(crate) function: FunctionSpec,
}

#[derive(Serialize, Debug)]
pub(crate) struct FunctionSpec {
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    pub(crate) parameters: Value,
}

/// `"auto"`, `"required"`, `"none"`, or one function by name.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub(crate) enum ChatToolChoice {
    Mode(ToolMode),
    Function {
        #[serde(rename = "type")]
        kind: FunctionType,
        function: FunctionName,
    },
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ToolMode {
    Auto,
    Required,
    None,
}

#[derive(Serialize, Debug)]
pub(crate) struct FunctionName {
    pub(crate) name: String,
}

/// An embeddings request built by a codec.
#[derive(Serialize, Debug)]
pub(crate) struct EmbeddingsRequest {
    /// The texts, as the client sent them (checked by `check_embeddings_input`).
    pub(crate) input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dimensions: Option<u64>,
}

/// An image request built by a codec.
#[derive(Serialize, Debug)]
pub(crate) struct ImageRequest {
    pub(crate) prompt: String,
    pub(crate) n: u32,
    #[serde(flatten)]
    pub(crate) options: ImageRequestOptions,
}

/// Image options, each a string or a number as the client sent it.
#[derive(Serialize, Debug, Default)]
pub(crate) struct ImageRequestOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) size: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quality: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) style: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) background: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) moderation: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_compression: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<Value>,
}

impl ImageRequestOptions {
    /// These options, each filled from `fallback` where absent.
    pub(crate) fn or(self, fallback: ImageRequestOptions) -> Self {
        ImageRequestOptions {
            size: self.size.or(fallback.size),
            quality: self.quality.or(fallback.quality),
            style: self.style.or(fallback.style),
            background: self.background.or(fallback.background),
            moderation: self.moderation.or(fallback.moderation),
            output_compression: self.output_compression.or(fallback.output_compression),
            output_format: self.output_format.or(fallback.output_format),
            response_format: self.response_format.or(fallback.response_format),
            user: self.user.or(fallback.user),
        }
    }
}

// ---------------------------------------------------------------------------
// Stream chunks the hub adds (written)

/// The fields of an upstream chunk that the chunks the hub adds repeat, as
/// they came.
#[derive(Deserialize, Default)]
pub(crate) struct ChunkHeader {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) id: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) created: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) model: Option<Value>,
}

/// A `chat.completion.chunk` the hub adds to a stream (the usage, or the end
/// of a stream cut for credit).
#[derive(Serialize, Debug)]
pub(crate) struct AddedChunk {
    pub(crate) id: Value,
    pub(crate) object: ChunkObject,
    pub(crate) created: Value,
    pub(crate) model: Value,
    pub(crate) choices: Vec<AddedChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Value>,
    /// Why the hub ended the stream, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aigne_hub: Option<Value>,
}

#[derive(Serialize, Debug)]
pub(crate) enum ChunkObject {
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

#[derive(Serialize, Debug)]
pub(crate) struct AddedChoice {
    pub(crate) index: u32,
    pub(crate) delta: Map<String, Value>,
    pub(crate) logprobs: Option<Value>,
    pub(crate) finish_reason: &'static str,
}

impl AddedChoice {
    /// The end of a choice cut at a length (`finish_reason: "length"`).
    pub(crate) fn cut_at_length() -> Self {
        AddedChoice {
            index: 0,
            delta: Map::new(),
            logprobs: None,
            finish_reason: "length",
        }
    }
}

// ---------------------------------------------------------------------------
// Answer and stream chunks (read)

/// The fields of a `chat.completion` or a `chat.completion.chunk` the
/// translations read.
#[derive(Deserialize, Default)]
pub(crate) struct ChatAnswer {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) choices: Option<Items<Choice>>,
}

impl ChatAnswer {
    /// The first choice (the other wire formats have one).
    pub(crate) fn first_choice(&self) -> Option<&Choice> {
        self.choices.as_ref().and_then(|c| c.0.first())
    }
}

/// A choice: its `message` in an answer, its `delta` in a chunk.
#[derive(Deserialize, Default)]
pub(crate) struct Choice {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) index: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) message: Option<AnswerMessage>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) delta: Option<AnswerMessage>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct AnswerMessage {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) content: Option<AnswerContent>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) reasoning_content: Option<String>,
    /// Some compatible upstreams' name for `reasoning_content`.
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) reasoning: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) refusal: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) tool_calls: Option<Items<AnswerToolCall>>,
}

/// A message's `content`: a string, or parts of which the text is read.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum AnswerContent {
    Text(String),
    Parts(Items<AnswerPart>),
}

impl AnswerMessage {
    /// The content when it is a string (parts are not read).
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.content {
            Some(AnswerContent::Text(text)) => Some(text),
            _ => None,
        }
    }

    /// The reasoning, under either name, if not empty.
    pub(crate) fn thoughts(&self) -> Option<&str> {
        [&self.reasoning_content, &self.reasoning]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|t| !t.is_empty())
    }
}

impl AnswerContent {
    /// The text (of the parts, joined).
    pub(crate) fn text(&self) -> String {
        match self {
            AnswerContent::Text(text) => text.clone(),
            AnswerContent::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct AnswerPart {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) text: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct AnswerToolCall {
    /// A chunk's position of the call.
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) index: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) function: Option<AnswerFunction>,
}

impl AnswerToolCall {
    pub(crate) fn name(&self) -> Option<&str> {
        self.function.as_ref().and_then(|f| f.name.as_deref())
    }

    pub(crate) fn arguments(&self) -> Option<&str> {
        self.function.as_ref().and_then(|f| f.arguments.as_deref())
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct AnswerFunction {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) arguments: Option<String>,
}
