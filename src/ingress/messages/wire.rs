//! Anthropic's Messages wire format as the hub reads and writes it: the request
//! fields the translation reads, the answer and stream events it writes, and
//! the fields of an Anthropic upstream's events it prices.
//!
//! No catch-all is needed here: an Anthropic upstream gets the client's body and
//! the client the upstream's answer as they came (bytes, not these structs);
//! these only read from them.

use crate::ingress::lenient::{any_value, lenient, present, read_or_default, Items};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------
// Request (read for the translation to OpenAI's shape)

/// The request fields the translation reads; the others have no OpenAI
/// equivalent and are dropped.
#[derive(Deserialize, Default)]
pub(crate) struct MessagesRequest {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) messages: Option<Items<InputMessage>>,
    #[serde(default)]
    pub(crate) system: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) temperature: Option<Number>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) top_p: Option<Number>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) stop_sequences: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) tools: Option<Items<Tool>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) tool_choice: Option<ToolChoice>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Metadata {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) user_id: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct InputMessage {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) role: Option<String>,
    #[serde(default)]
    pub(crate) content: Option<Content>,
}

/// A `content` (or `system`) field: a string, or content blocks.
pub(crate) enum Content {
    Text(String),
    Blocks(Vec<Block>),
    /// Neither (the translation refuses it, naming the field).
    Other,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::String(text) => Content::Text(text),
            Value::Array(blocks) => {
                Content::Blocks(blocks.into_iter().map(read_or_default).collect())
            }
            _ => Content::Other,
        })
    }
}

/// A content block, any type: the fields of every type the translation reads
/// (`kind` says which apply).
#[derive(Deserialize, Default)]
pub(crate) struct Block {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) text: Option<String>,
    /// image, document
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) source: Option<Source>,
    /// document
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) title: Option<String>,
    /// tool_result
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) tool_use_id: Option<String>,
    #[serde(default)]
    pub(crate) content: Option<Content>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) is_error: Option<bool>,
    /// tool_use
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) input: Option<Value>,
}

/// An image's or document's `source`.
#[derive(Deserialize, Default)]
pub(crate) struct Source {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) media_type: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) data: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) url: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Tool {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) input_schema: Option<Map<String, Value>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ToolChoice {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) disable_parallel_tool_use: Option<bool>,
}

// ---------------------------------------------------------------------------
// Answer (written for a translated answer)

/// A `message`: the whole answer, or (empty) in `message_start`.
#[derive(Serialize)]
pub(crate) struct Message<U> {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: MessageType,
    pub(crate) role: Role,
    pub(crate) model: String,
    pub(crate) content: Vec<ContentBlock>,
    pub(crate) stop_reason: Option<&'static str>,
    pub(crate) stop_sequence: Option<String>,
    pub(crate) usage: U,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MessageType {
    Message,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Assistant,
}

/// A content block of an answer.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ContentBlock {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    ToolUse {
        id: Option<String>,
        name: Option<String>,
        input: Value,
    },
}

/// Usage in Anthropic's shape.
#[derive(Serialize)]
pub(crate) struct AnthropicUsage {
    pub(crate) input_tokens: u64,
    pub(crate) cache_creation_input_tokens: u64,
    pub(crate) cache_read_input_tokens: u64,
    pub(crate) output_tokens: u64,
}

/// The usage `message_start` carries before any is known.
#[derive(Serialize)]
pub(crate) struct StartUsage {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
}

// ---------------------------------------------------------------------------
// Stream events (written for a translated stream)

/// One stream event; its SSE name is its `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum StreamEvent {
    MessageStart {
        message: Message<StartUsage>,
    },
    Ping,
    ContentBlockStart {
        index: u64,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u64,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: AnthropicUsage,
        /// Why the hub ended the stream, when it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        aigne_hub: Option<Value>,
    },
    MessageStop,
}

impl StreamEvent {
    /// The event's `type`, which names its SSE frame.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
        }
    }
}

/// A `content_block_delta`'s delta (`text_delta`, `thinking_delta`,
/// `input_json_delta`).
#[derive(Serialize)]
#[serde(tag = "type")]
pub(crate) enum BlockDelta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
}

#[derive(Serialize)]
pub(crate) struct MessageDeltaBody {
    pub(crate) stop_reason: &'static str,
    pub(crate) stop_sequence: Option<String>,
}

/// `{"type":"error","error":{"type","message"}}`.
#[derive(Serialize)]
pub(crate) struct ErrorEvent {
    #[serde(rename = "type")]
    pub(crate) kind: ErrorType,
    pub(crate) error: ErrorDetail,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ErrorType {
    Error,
}

#[derive(Serialize)]
pub(crate) struct ErrorDetail {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    /// The hub's own code, where Anthropic's type alone would mislead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<&'static str>,
}

// ---------------------------------------------------------------------------
// An Anthropic upstream's answer and events (read, never rewritten)

/// The fields of an Anthropic upstream's event the hub reads; the event goes to
/// the client as it came.
#[derive(Deserialize, Default)]
pub(crate) struct UpstreamEvent {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) index: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) delta: Option<GeneratedText>,
}

/// The generated text of a delta or of an answer's content block.
#[derive(Deserialize, Default)]
pub(crate) struct GeneratedText {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) thinking: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) partial_json: Option<String>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) input: Option<Value>,
}

impl GeneratedText {
    /// Bytes of text (text, thinking, partial JSON).
    pub(crate) fn text_bytes(&self) -> u64 {
        [&self.text, &self.thinking, &self.partial_json]
            .into_iter()
            .flatten()
            .map(|s| s.len() as u64)
            .sum()
    }
}

/// The content of an Anthropic upstream's answer (for estimates only).
#[derive(Deserialize, Default)]
pub(crate) struct UpstreamAnswer {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) content: Option<Items<GeneratedText>>,
}
