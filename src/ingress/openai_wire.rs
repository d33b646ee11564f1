//! OpenAI's chat wire format as the other ingresses translate to and from it:
//! the chat request they write for an upstream that speaks OpenAI's shape, and
//! the fields of its answers and stream chunks they read.

use crate::ingress::lenient::{lenient, present, Items};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

// ---------------------------------------------------------------------------
// Request (written)

/// A chat request translated from another wire format (`stream` is left to the
/// operation: the provider modules set it).
#[derive(Serialize, Default, Debug)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
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
    pub(crate) stop: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tools: Option<Vec<ChatTool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<ChatToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parallel_tool_calls: Option<bool>,
}

/// One message of a chat request, by role.
#[derive(Serialize, Debug)]
#[serde(tag = "role", rename_all = "lowercase")]
pub(crate) enum ChatMessage {
    System {
        content: String,
    },
    User {
        content: UserContent,
    },
    Assistant {
        /// Null when the turn is only tool calls.
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ChatToolCall>,
    },
    Tool {
        tool_call_id: String,
        content: String,
    },
}

/// A user message's content: its text, or parts.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub(crate) enum UserContent {
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

// ---------------------------------------------------------------------------
// Answer and stream chunks (read)

/// The fields of a `chat.completion` or a `chat.completion.chunk` the
/// translations read.
#[derive(Deserialize, Default)]
pub(crate) struct ChatAnswer {
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
