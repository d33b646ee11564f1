//! AIGNE v2's wire format as the hub reads and writes it: the calls'
//! `{"input", "options", "model"}` (`@aigne/core`'s `ChatModel` and image and
//! embedding inputs), and the answers and stream deltas the client reads. Keys
//! the hub does not know are ignored, as the client's own models ignore them.

use crate::ingress::lenient::{
    any_value, lenient, present, read_or_default, shaped, Items, Shaped,
};
use crate::ingress::openai_wire::ImageRequestOptions;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------
// Calls (read)

/// A call: its `input` (an object of `I`'s fields), the top-level `model` of
/// older clients, and `options`.
#[derive(Deserialize, Default)]
#[serde(bound = "I: DeserializeOwned")]
pub(crate) struct Call<I> {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) input: Option<I>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) options: Option<CallOptions>,
}

#[derive(Deserialize, Default)]
pub(crate) struct CallOptions {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) streaming: Option<bool>,
}

/// A chat call's `input`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatInput {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) messages: Option<Items<Message>>,
    #[serde(default)]
    pub(crate) tools: Option<Shaped<Items<Tool>>>,
    #[serde(default)]
    pub(crate) tool_choice: Option<ToolChoice>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) response_format: Option<ResponseFormat>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model_options: Option<ChatOptions>,
}

/// `input.modelOptions` of a chat call.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatOptions {
    #[serde(default, deserialize_with = "shaped")]
    pub(crate) model: Option<Shaped<String>>,
    #[serde(default)]
    pub(crate) temperature: Option<Shaped<Number>>,
    #[serde(default)]
    pub(crate) top_p: Option<Shaped<Number>>,
    #[serde(default)]
    pub(crate) frequency_penalty: Option<Shaped<Number>>,
    #[serde(default)]
    pub(crate) presence_penalty: Option<Shaped<Number>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) reasoning_effort: Option<ReasoningEffort>,
    #[serde(default)]
    pub(crate) max_tokens: Option<Shaped<u64>>,
}

/// `modelOptions.reasoningEffort`: a level, or a token budget.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ReasoningEffort {
    Level(String),
    Budget(Number),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Message {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) role: Option<String>,
    #[serde(default)]
    pub(crate) content: Option<Shaped<MessageContent>>,
    #[serde(default)]
    pub(crate) tool_calls: Option<Shaped<Items<ToolCall>>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) tool_call_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum MessageContent {
    Text(String),
    Parts(Items<ContentPart>),
}

/// A content part, any type (`kind` says which fields apply).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContentPart {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) data: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) mime_type: Option<String>,
}

/// A tool call of an earlier turn (arguments as an object).
#[derive(Deserialize, Default)]
pub(crate) struct ToolCall {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) function: Option<ToolCallFunction>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ToolCallFunction {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) arguments: Option<Value>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Tool {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) function: Option<ToolFunction>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ToolFunction {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) parameters: Option<Map<String, Value>>,
}

/// `input.toolChoice`: a mode, or a tool by `function.name`.
pub(crate) enum ToolChoice {
    Mode(String),
    Tool(NamedTool),
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::String(mode) => ToolChoice::Mode(mode),
            other => ToolChoice::Tool(read_or_default(other)),
        })
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct NamedTool {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) function: Option<ToolName>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ToolName {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResponseFormat {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub(crate) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) json_schema: Option<JsonSchema>,
}

/// `responseFormat.jsonSchema`; its settings pass on as they came.
#[derive(Deserialize, Default)]
pub(crate) struct JsonSchema {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) name: Option<Value>,
    #[serde(default)]
    pub(crate) description: Option<Value>,
    #[serde(default)]
    pub(crate) strict: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) schema: Option<Map<String, Value>>,
}

/// An image call's `input`, and its `modelOptions`: the image options come in
/// either (the input's win), in AIGNE's or OpenAI's names.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageInput {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) image: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) n: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) output_file_type: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model_options: Option<ImageModelOptions>,
    #[serde(flatten)]
    pub(crate) options: ImageOptions,
}

#[derive(Deserialize, Default)]
pub(crate) struct ImageModelOptions {
    #[serde(default, deserialize_with = "shaped")]
    pub(crate) model: Option<Shaped<String>>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) n: Option<Value>,
    #[serde(flatten)]
    pub(crate) options: ImageOptions,
}

/// Image options passed on to the upstream. Each as it came: a string or a
/// number is passed on, anything else dropped (`ImageOption::passed`).
#[derive(Deserialize, Default)]
pub(crate) struct ImageOptions {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) size: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) quality: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) style: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) background: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) moderation: Option<Value>,
    #[serde(default, deserialize_with = "any_value", rename = "outputCompression")]
    pub(crate) output_compression_aigne: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) output_compression: Option<Value>,
    #[serde(default, deserialize_with = "any_value", rename = "outputFormat")]
    pub(crate) output_format_aigne: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) output_format: Option<Value>,
    #[serde(default, deserialize_with = "any_value", rename = "responseFormat")]
    pub(crate) response_format_aigne: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) response_format: Option<Value>,
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) user: Option<Value>,
}

impl ImageOptions {
    /// The options passed on (OpenAI's names): a string or a number, under
    /// AIGNE's name if it is there (even of another type), else OpenAI's.
    pub(crate) fn passed(self) -> ImageRequestOptions {
        let pass = |aigne: Option<Value>, openai: Option<Value>| {
            aigne.or(openai).filter(|v| v.is_string() || v.is_number())
        };
        ImageRequestOptions {
            size: pass(self.size, None),
            quality: pass(self.quality, None),
            style: pass(self.style, None),
            background: pass(self.background, None),
            moderation: pass(self.moderation, None),
            output_compression: pass(self.output_compression_aigne, self.output_compression),
            output_format: pass(self.output_format_aigne, self.output_format),
            response_format: pass(self.response_format_aigne, self.response_format),
            user: pass(self.user, None),
        }
    }
}

/// An embeddings call: `{"input": {"input", "modelOptions"}}`, or the older
/// `{"model", "input"}` (the texts).
#[derive(Deserialize, Default)]
pub(crate) struct EmbeddingsCall {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) input: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model: Option<String>,
}

/// An embeddings call's `input` (the newer shape).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EmbeddingsInput {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) input: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model_options: Option<EmbeddingsOptions>,
}

#[derive(Deserialize, Default)]
pub(crate) struct EmbeddingsOptions {
    #[serde(default, deserialize_with = "shaped")]
    pub(crate) model: Option<Shaped<String>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) dimensions: Option<u64>,
}

// ---------------------------------------------------------------------------
// Upstream answers (read)

/// The fields of an OpenAI images answer the hub reads.
#[derive(Deserialize, Default)]
pub(crate) struct ImagesAnswer {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) data: Option<Items<ImageItem>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) usage: Option<ImagesUsage>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ImageItem {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) b64_json: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) url: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ImagesUsage {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) output_tokens: Option<u64>,
}

/// The fields of an OpenAI embeddings answer the hub reads; `data` passes on
/// as it came.
#[derive(Deserialize, Default)]
pub(crate) struct EmbeddingsAnswer {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) data: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) model: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Embedding {
    #[serde(default, deserialize_with = "any_value")]
    pub(crate) embedding: Option<Value>,
}

// ---------------------------------------------------------------------------
// Answers and stream frames (written)

/// An answer: its output, the model, and the usage with the charge.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Answer<O> {
    #[serde(flatten)]
    pub(crate) output: O,
    /// The upstream's name of the model.
    pub(crate) model: String,
    /// The hub id of the candidate that answered.
    pub(crate) model_with_provider: String,
    pub(crate) usage: AigneUsage,
    /// Why the hub ended a stream early, when it did.
    #[serde(rename = "aigne_hub", skip_serializing_if = "Option::is_none")]
    pub(crate) aigne_hub: Option<Value>,
}

/// `usage`: numbers, and the charge in credits.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AigneUsage {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) aigne_hub_credits: Value,
    pub(crate) credit_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache_creation_input_tokens: Option<u64>,
}

/// A chat answer's output (`text` or `json`, `thoughts`, `toolCalls`).
#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) json: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) thoughts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<Vec<ToolCallOutput>>,
}

/// A tool call in AIGNE's shape (arguments as an object).
#[derive(Serialize, Debug)]
pub(crate) struct ToolCallOutput {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: FunctionKind,
    pub(crate) function: ToolCallOutputFunction,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FunctionKind {
    Function,
}

#[derive(Serialize, Debug)]
pub(crate) struct ToolCallOutputFunction {
    pub(crate) name: String,
    pub(crate) arguments: Value,
}

/// An image answer's output.
#[derive(Serialize, Debug)]
pub(crate) struct ImagesOutput {
    pub(crate) images: Vec<FileOutput>,
}

/// A file in `@aigne/core`'s shape: a URL or inline base64.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum FileOutput {
    Url {
        url: String,
        #[serde(rename = "mimeType")]
        mime_type: String,
    },
    File {
        data: String,
        #[serde(rename = "mimeType")]
        mime_type: String,
    },
}

/// An embeddings answer's output: the vectors, and the upstream's `data`.
#[derive(Serialize, Debug)]
pub(crate) struct EmbeddingsOutput {
    pub(crate) embeddings: Vec<Value>,
    pub(crate) data: Value,
}

/// A chat stream's frame: text as it comes, or the final answer.
pub(crate) type ChatFrame = StreamDelta<Answer<ChatOutput>>;

/// One stream frame: `{"delta": {"text": {…}}}` or `{"delta": {"json": …}}`.
#[derive(Serialize, Debug)]
pub(crate) struct StreamDelta<J> {
    pub(crate) delta: DeltaBody<J>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeltaBody<J> {
    Text(TextDelta),
    Json(J),
}

/// A piece of text or of thoughts.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TextDelta {
    Text(String),
    Thoughts(String),
}

/// The error body of the AIGNE wire format: the hub's error with its message
/// and type in AIGNE's words; its other fields pass on.
#[derive(Serialize, Deserialize, Default, Debug)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) error: ErrorDetail,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub(crate) struct ErrorDetail {
    #[serde(default)]
    pub(crate) message: String,
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

/// The body of a call that failed after its status was sent (see
/// `late_error_body`).
#[derive(Serialize, Debug)]
pub(crate) struct LateErrorBody {
    #[serde(flatten)]
    pub(crate) body: ErrorBody,
    pub(crate) usage: AigneUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) images: Option<Vec<FileOutput>>,
}

/// A stream's `error` event.
#[derive(Serialize, Debug)]
pub(crate) struct ErrorEvent<'a> {
    pub(crate) message: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: Option<&'a str>,
}

// ---------------------------------------------------------------------------
// Discovery, catalogue, status, user info (written)

/// `/__blocklet__.js`: where the client finds the hub's endpoints.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlockletInfo {
    pub(crate) app_name: &'static str,
    pub(crate) component_mount_points: Vec<MountPoint>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MountPoint {
    pub(crate) title: &'static str,
    pub(crate) name: &'static str,
    pub(crate) did: &'static str,
    pub(crate) mount_point: &'static str,
    pub(crate) status: &'static str,
}

/// One model of `/api/ai/models`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ModelEntry {
    pub(crate) key: String,
    pub(crate) model: String,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) provider: String,
    pub(crate) provider_display_name: String,
    #[serde(rename = "input_credits_per_token")]
    pub(crate) input_credits_per_token: String,
    #[serde(rename = "output_credits_per_token")]
    pub(crate) output_credits_per_token: String,
    pub(crate) model_metadata: ModelMetadata,
    pub(crate) status: Availability,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ModelMetadata {
    pub(crate) max_tokens: u32,
}

/// Whether calls can succeed (`/api/v2/status`, a model's `status`), and why
/// not.
#[derive(Serialize, Debug)]
pub(crate) struct Availability {
    pub(crate) available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// `/api/user/info`: the tenant's credit in AIGNE's shape.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserInfo {
    pub(crate) user: UserIdentity,
    pub(crate) credit_balance: CreditBalance,
    pub(crate) payment_link: Option<String>,
    pub(crate) profile_link: Option<String>,
    pub(crate) enable_credit: bool,
    pub(crate) credit_prefix: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserIdentity {
    pub(crate) did: String,
    pub(crate) full_name: String,
    pub(crate) email: String,
}

/// Credit amounts as decimal strings.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreditBalance {
    pub(crate) balance: String,
    pub(crate) total: String,
    pub(crate) pending_credit: String,
    pub(crate) spent: String,
}
