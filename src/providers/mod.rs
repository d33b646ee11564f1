//! Upstream AI providers behind one trait.
//!
//! The hub's lingua franca is OpenAI's wire format: the pipeline hands every
//! provider an OpenAI-shaped request (with `model` already the upstream's own
//! name) and gets back OpenAI-shaped answers plus the usage the provider reported,
//! normalized (see `domain::Usage`). Each protocol lives in one module; the
//! OpenAI-compatible providers (OpenAI, DeepSeek, xAI, OpenRouter, Doubao, Poe and
//! Ollama's compatibility API) share [`openai`], with per-kind quirks there.
//! Billing never depends on which provider answered.

pub(crate) mod anthropic;
pub mod bedrock;
pub mod gemini;
pub(crate) mod openai;
mod redact;
pub(crate) mod sse;
pub(crate) mod wire;

use crate::config::Limits;
use crate::crypto::Secret;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use domain::Usage;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The protocol family and defaults of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Bedrock,
    Gemini,
    DeepSeek,
    Ollama,
    OpenRouter,
    Xai,
    Doubao,
    Poe,
}

impl ProviderKind {
    pub(crate) const ALL: [ProviderKind; 10] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Bedrock,
        ProviderKind::Gemini,
        ProviderKind::DeepSeek,
        ProviderKind::Ollama,
        ProviderKind::OpenRouter,
        ProviderKind::Xai,
        ProviderKind::Doubao,
        ProviderKind::Poe,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Gemini => "gemini",
            ProviderKind::DeepSeek => "deepseek",
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::Xai => "xai",
            ProviderKind::Doubao => "doubao",
            ProviderKind::Poe => "poe",
        }
    }

    /// The provider's public endpoint; every kind accepts a `base_url` override.
    /// Bedrock's depends on the region, so it has none here.
    pub(crate) fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Bedrock => None,
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::DeepSeek => Some("https://api.deepseek.com"),
            ProviderKind::Ollama => Some("http://127.0.0.1:11434"),
            ProviderKind::OpenRouter => Some("https://openrouter.ai/api/v1"),
            ProviderKind::Xai => Some("https://api.x.ai/v1"),
            ProviderKind::Doubao => Some("https://ark.cn-beijing.volces.com/api/v3"),
            ProviderKind::Poe => Some("https://api.poe.com/v1"),
        }
    }

    /// Whether this hub can call the kind yet (a protocol module is done only when
    /// it passes the conformance suite).
    pub(crate) fn is_available(self) -> bool {
        match self {
            ProviderKind::Anthropic => anthropic::AVAILABLE,
            ProviderKind::Bedrock => bedrock::AVAILABLE,
            ProviderKind::Gemini => gemini::AVAILABLE,
            _ => true,
        }
    }

    /// Whether the kind authenticates with AWS credentials instead of an API key.
    pub(crate) fn uses_aws_credentials(self) -> bool {
        self == ProviderKind::Bedrock
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown provider kind {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How the hub authenticates to a provider. Sealed at rest as one JSON document.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Credential {
    ApiKey {
        api_key: Secret,
    },
    Aws {
        access_key_id: String,
        secret_access_key: Secret,
    },
}

/// A configured upstream, with its credential decrypted for use.
#[derive(Clone, Debug)]
pub struct Provider {
    pub provider_id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// AWS region (Bedrock).
    pub region: Option<String>,
    /// Which of the provider's credentials this call uses.
    pub credential_id: String,
    pub credential: Credential,
}

impl Provider {
    /// The API key, for kinds that use one ("" for AWS credentials).
    pub(crate) fn api_key(&self) -> &str {
        match &self.credential {
            Credential::ApiKey { api_key } => api_key.expose(),
            Credential::Aws { .. } => "",
        }
    }

    /// Every secret of the credential, to scrub from upstream error text.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match &self.credential {
            Credential::ApiKey { api_key } => vec![api_key.expose()],
            Credential::Aws {
                secret_access_key, ..
            } => vec![secret_access_key.expose()],
        }
    }

    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }
}

/// Why an upstream call failed. `Display` is the hub's own words (the status and
/// the upstream's error code, never its text), so it may reach tenants, their
/// events and release reasons; the upstream's own text is only for the operator's
/// log ([`UpstreamError::upstream_text`]), scrubbed of credentials.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("could not reach the upstream: {0}")]
    Connect(String),
    #[error("{}", status_words(*status, code.as_deref()))]
    Status {
        status: u16,
        /// The upstream's error code (`invalid_request_error`, `INVALID_ARGUMENT`).
        code: Option<String>,
        /// The upstream's own text: for the operator's log only.
        message: String,
    },
    /// A request the hub itself cannot send to this provider, in the hub's words
    /// (a translation that cannot express it): a 400 the tenant may read.
    #[error("{0}")]
    Refused(String),
    #[error("upstream sent something unexpected: {0}")]
    Protocol(String),
    /// The answer passed its size limit (`Limits::upstream_*_max_bytes`) and
    /// was cut off.
    #[error("the answer is larger than the limit of {limit_bytes} bytes")]
    AnswerTooLarge { limit_bytes: usize },
    #[error("{provider} does not offer {capability}")]
    Unsupported {
        provider: &'static str,
        capability: &'static str,
    },
}

fn status_words(status: u16, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("upstream answered {status} ({code})"),
        None => format!("upstream answered {status}"),
    }
}

impl UpstreamError {
    /// Scrubs every credential-shaped token (any piece of the provider's secrets,
    /// in any case or base64, and keys of any kind) from the upstream's text.
    pub(crate) fn redacted(self, provider: &Provider) -> Self {
        let secrets = provider.secrets();
        let scrub = |s: String| redact::redact(&s, &secrets);
        match self {
            UpstreamError::Status {
                status,
                code,
                message,
            } => UpstreamError::Status {
                status,
                code: code.map(scrub),
                message: scrub(message),
            },
            UpstreamError::Protocol(m) => UpstreamError::Protocol(scrub(m)),
            UpstreamError::Connect(m) => UpstreamError::Connect(scrub(m)),
            other => other,
        }
    }

    /// The upstream's own words, for the operator's log (after [`Self::redacted`]).
    pub(crate) fn upstream_text(&self) -> &str {
        match self {
            UpstreamError::Status { message, .. } => message,
            _ => "",
        }
    }
}

/// A non-streaming chat answer: an OpenAI `chat.completion` object, and the usage
/// the provider reported (`None` if it reported none).
pub struct ChatOutcome {
    pub body: Value,
    pub usage: Option<Usage>,
}

/// What a chat stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    /// One OpenAI `chat.completion.chunk` object, without `usage`.
    Chunk(Value),
    /// The usage so far; cumulative, so the last one wins.
    Usage(Usage),
}

pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamItem, UpstreamError>> + Send>>;

/// An embeddings answer: an OpenAI `list` of `embedding` objects, and usage.
pub struct EmbeddingsOutcome {
    pub body: Value,
    pub usage: Option<Usage>,
}

/// An image answer: an OpenAI images response (`{"created","data":[…]}`) and how
/// many images it holds.
pub struct ImagesOutcome {
    pub body: Value,
    pub images: u64,
}

/// One call to one provider.
pub struct UpstreamCall<'a> {
    pub http: &'a Upstream,
    pub provider: &'a Provider,
}

/// One provider protocol. Requests arrive in OpenAI's shape with `model` set to the
/// upstream's model name; answers leave in OpenAI's shape.
#[async_trait]
pub trait ProviderApi: Send + Sync {
    async fn chat(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatOutcome, UpstreamError>;

    /// Starts a stream; errors before the first byte come back here, later ones
    /// inside the stream.
    async fn chat_stream(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatStream, UpstreamError>;

    async fn embeddings(
        &self,
        call: &UpstreamCall<'_>,
        _request: &Value,
    ) -> Result<EmbeddingsOutcome, UpstreamError> {
        Err(UpstreamError::Unsupported {
            provider: call.provider.kind.as_str(),
            capability: "embeddings",
        })
    }

    async fn images(
        &self,
        call: &UpstreamCall<'_>,
        _request: &Value,
    ) -> Result<ImagesOutcome, UpstreamError> {
        Err(UpstreamError::Unsupported {
            provider: call.provider.kind.as_str(),
            capability: "image generation",
        })
    }
}

/// The protocol implementation of a kind.
pub fn api_for(kind: ProviderKind) -> &'static dyn ProviderApi {
    match kind {
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Bedrock => &bedrock::Bedrock,
        ProviderKind::Gemini => &gemini::Gemini,
        ProviderKind::OpenAi
        | ProviderKind::DeepSeek
        | ProviderKind::Ollama
        | ProviderKind::OpenRouter
        | ProviderKind::Xai
        | ProviderKind::Doubao
        | ProviderKind::Poe => &openai::OpenAiCompatible,
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

/// The HTTP client of all upstream calls, with the named timeouts.
///
/// Each thread gets a client (and so a connection pool) of its own. A pooled
/// connection is driven by a task on the runtime that opened it, and actix runs
/// one runtime per thread: with one client shared by every HTTP worker, a request
/// on one worker often went out through a connection of another, with two more
/// thread switches for each call.
#[derive(Clone)]
pub struct Upstream {
    /// Key of this `Upstream`'s clients in every thread's [`UPSTREAM_CLIENTS`].
    id: u64,
    /// Used where a thread's own client cannot be built.
    shared: reqwest::Client,
    pub(crate) limits: Limits,
}

static NEXT_UPSTREAM_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static UPSTREAM_CLIENTS: std::cell::RefCell<std::collections::HashMap<u64, reqwest::Client>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl Upstream {
    pub fn new(limits: &Limits) -> anyhow::Result<Self> {
        Ok(Self {
            id: NEXT_UPSTREAM_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            shared: Self::build_client(limits)?,
            limits: limits.clone(),
        })
    }

    fn build_client(limits: &Limits) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(limits.upstream_connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
    }

    /// This thread's client (a cheap handle to its connection pool).
    pub(crate) fn client(&self) -> reqwest::Client {
        UPSTREAM_CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            if let Some(client) = clients.get(&self.id) {
                return client.clone();
            }
            match Self::build_client(&self.limits) {
                Ok(client) => clients.entry(self.id).or_insert(client).clone(),
                Err(_) => self.shared.clone(),
            }
        })
    }

    /// Sends a request, waiting at most the first-byte timeout for the response
    /// headers; a non-2xx answer becomes `UpstreamError::Status` with the message
    /// `error_message` extracts from the body.
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        error_message: fn(&Value) -> Option<String>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let first_byte = Duration::from_millis(self.limits.upstream_first_byte_timeout_ms);
        let response = tokio::time::timeout(first_byte, request.send())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(error_from_response(response, error_message).await);
        }
        Ok(response)
    }

    /// The byte budget of one request's answers of `kind`.
    pub(crate) fn answer_budget(&self, kind: AnswerKind) -> AnswerBudget {
        let limits = &self.limits;
        AnswerBudget::new(match kind {
            AnswerKind::Chat => limits.upstream_chat_answer_max_bytes,
            AnswerKind::Embeddings => limits.upstream_embeddings_answer_max_bytes,
            AnswerKind::Images => limits.upstream_images_answer_max_bytes,
        })
    }

    /// Reads a whole JSON answer of `kind` within the total timeout and its size
    /// limit.
    pub(crate) async fn json_body(
        &self,
        response: reqwest::Response,
        kind: AnswerKind,
    ) -> Result<Value, UpstreamError> {
        self.json_within(response, &self.answer_budget(kind)).await
    }

    /// [`Self::json_body`] counted against a budget shared with other calls.
    pub(crate) async fn json_within(
        &self,
        response: reqwest::Response,
        budget: &AnswerBudget,
    ) -> Result<Value, UpstreamError> {
        let body = self.read_within(response, budget).await?;
        // Parsed from the pieces as they arrived: no copy of the whole body.
        let reader = std::io::BufReader::with_capacity(64 * 1024, body.reader());
        serde_json::from_reader(reader)
            .map_err(|e| UpstreamError::Protocol(format!("response is not JSON: {e}")))
    }

    /// Reads a whole body within the total timeout, counted against `budget`.
    pub(crate) async fn body_within(
        &self,
        response: reqwest::Response,
        budget: &AnswerBudget,
    ) -> Result<Bytes, UpstreamError> {
        Ok(self.read_within(response, budget).await?.into_bytes())
    }

    async fn read_within(
        &self,
        response: reqwest::Response,
        budget: &AnswerBudget,
    ) -> Result<BodyPieces, UpstreamError> {
        let total = Duration::from_millis(self.limits.upstream_total_timeout_ms);
        tokio::time::timeout(total, read_bounded(response, budget))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// A streamed body as it arrives, failing once it passes
    /// `Limits::upstream_stream_answer_max_bytes`.
    pub(crate) fn stream_bytes(&self, response: reqwest::Response) -> UpstreamBytes {
        bounded_bytes(response, self.limits.upstream_stream_answer_max_bytes)
    }

    /// A streamed body's server-sent events, within the stream's limits (idle
    /// time, total bytes, bytes of one event). Used by every SSE-speaking provider.
    pub(crate) fn sse_events(&self, response: reqwest::Response) -> SseEvents {
        let idle = Duration::from_millis(self.limits.upstream_idle_timeout_ms);
        let parser = sse::SseParser::new(self.limits.upstream_stream_event_max_bytes);
        sse_events(self.stream_bytes(response), parser, idle)
    }
}

/// What an upstream answer carries, for its size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AnswerKind {
    Chat,
    Embeddings,
    Images,
}

/// Bytes the upstream answers of one request may still take. The calls one
/// request makes share it (Bedrock's Titan embeds one text per call).
pub(crate) struct AnswerBudget {
    limit_bytes: usize,
    remaining_bytes: AtomicUsize,
}

impl AnswerBudget {
    pub(crate) fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
            remaining_bytes: AtomicUsize::new(limit_bytes),
        }
    }

    /// Counts `bytes` more of an answer; past the limit, the answer is too large.
    pub(crate) fn take(&self, bytes: usize) -> Result<(), UpstreamError> {
        self.remaining_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .map(|_| ())
            .map_err(|_| self.exceeded())
    }

    fn remaining(&self) -> usize {
        self.remaining_bytes.load(Ordering::Relaxed)
    }

    fn exceeded(&self) -> UpstreamError {
        UpstreamError::AnswerTooLarge {
            limit_bytes: self.limit_bytes,
        }
    }
}

/// Reads a body chunk by chunk with a running count, so that an answer past the
/// budget is dropped (and its connection closed) as soon as it passes it, never
/// buffered whole.
async fn read_bounded(
    mut response: reqwest::Response,
    budget: &AnswerBudget,
) -> Result<BodyPieces, UpstreamError> {
    let announced = response
        .content_length()
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    if announced > budget.remaining() {
        return Err(budget.exceeded());
    }
    let mut body = BodyPieces(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        budget.take(chunk.len())?;
        body.0.push(chunk);
    }
    Ok(body)
}

/// A body kept as the pieces it arrived in: growing one buffer instead would
/// copy it as it grows, holding up to twice its size at once.
struct BodyPieces(Vec<Bytes>);

impl BodyPieces {
    fn reader(&self) -> PiecesReader<'_> {
        PiecesReader {
            pieces: self.0.iter(),
            current: &[],
        }
    }

    /// The body in one buffer (copied once, unless it came in one piece).
    fn into_bytes(mut self) -> Bytes {
        if self.0.len() == 1 {
            return self.0.remove(0);
        }
        let mut bytes = BytesMut::with_capacity(self.0.iter().map(Bytes::len).sum());
        for piece in self.0.drain(..) {
            bytes.extend_from_slice(&piece);
        }
        bytes.freeze()
    }
}

struct PiecesReader<'a> {
    pieces: std::slice::Iter<'a, Bytes>,
    current: &'a [u8],
}

impl std::io::Read for PiecesReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.pieces.next() {
                Some(piece) => self.current = piece,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = &self.current[n..];
        Ok(n)
    }
}

/// An upstream body as it arrives.
pub(crate) type UpstreamBytes = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// `response`'s body as it arrives, ending with `AnswerTooLarge` once it passes
/// `limit_bytes` in all.
fn bounded_bytes(response: reqwest::Response, limit_bytes: usize) -> UpstreamBytes {
    use futures_util::StreamExt;
    let budget = AnswerBudget::new(limit_bytes);
    Box::pin(response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(transport_error)?;
        budget.take(chunk.len())?;
        Ok(chunk)
    }))
}

/// Longest upstream error text kept (for the operator's log).
const ERROR_MESSAGE_MAX_CHARS: usize = 500;
/// Most bytes of an upstream error body read: enough for any real error
/// message, which is cut to [`ERROR_MESSAGE_MAX_CHARS`] anyway.
const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

async fn error_from_response(
    response: reqwest::Response,
    error_message: fn(&Value) -> Option<String>,
) -> UpstreamError {
    let status = response.status().as_u16();
    let text = error_body_text(response).await;
    let json = serde_json::from_str::<Value>(&text).ok();
    let code = json.as_ref().and_then(redact::error_code);
    let message = json.as_ref().and_then(error_message).unwrap_or(text);
    UpstreamError::Status {
        status,
        code,
        message: message.chars().take(ERROR_MESSAGE_MAX_CHARS).collect(),
    }
}

/// The first [`ERROR_BODY_MAX_BYTES`] of an error body, as text.
async fn error_body_text(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_MAX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = ERROR_BODY_MAX_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// An error body in OpenAI's and Anthropic's shape: `{"error": {"message": …}}`.
#[derive(Default, Deserialize)]
struct ErrorBody {
    #[serde(default, deserialize_with = "wire::lenient")]
    error: Option<ErrorBodyDetail>,
}

#[derive(Deserialize)]
struct ErrorBodyDetail {
    #[serde(default, deserialize_with = "wire::lenient")]
    message: Option<String>,
}

/// The `model` of an OpenAI request (by then the upstream's own name); `None`
/// when absent or not a string.
pub(crate) fn request_model(request: &Value) -> Option<&str> {
    #[derive(Deserialize)]
    struct ModelField<'a> {
        #[serde(borrow, default)]
        model: Option<&'a str>,
    }
    ModelField::deserialize(request).ok()?.model
}

/// The `error.message` of an error body (OpenAI's and Anthropic's shape).
pub(crate) fn error_dot_message(body: &Value) -> Option<String> {
    wire::read_or_default::<ErrorBody>(body).error?.message
}

/// Maps a reqwest failure without ever printing the request (headers hold the key).
pub(crate) fn transport_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Connect("connection failed".into())
    } else {
        UpstreamError::Protocol(e.without_url().to_string())
    }
}

/// The server-sent events of a stream.
pub(crate) type SseEvents = Pin<Box<dyn Stream<Item = Result<SseEvent, UpstreamError>> + Send>>;

/// Turns a byte stream of server-sent events into events, with the idle timeout
/// between chunks.
fn sse_events(bytes: UpstreamBytes, parser: sse::SseParser, idle: Duration) -> SseEvents {
    use futures_util::StreamExt;
    let state = (bytes, parser, false);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut bytes, mut parser, mut ended)| async move {
            loop {
                if ended {
                    return None;
                }
                match parser.next_event() {
                    Ok(Some(event)) => return Some((Ok(event), (bytes, parser, ended))),
                    Ok(None) => {}
                    Err(e) => return Some((Err(e), (bytes, parser, true))),
                }
                match tokio::time::timeout(idle, bytes.next()).await {
                    Err(_) => return Some((Err(UpstreamError::Timeout), (bytes, parser, true))),
                    Ok(None) => {
                        ended = true;
                        if parser.has_partial() {
                            return Some((
                                Err(UpstreamError::Protocol("stream ended mid-event".into())),
                                (bytes, parser, ended),
                            ));
                        }
                    }
                    Ok(Some(Err(e))) => return Some((Err(e), (bytes, parser, true))),
                    Ok(Some(Ok(chunk))) => {
                        if let Err(e) = parser.push(&chunk) {
                            return Some((Err(e), (bytes, parser, true)));
                        }
                    }
                }
            }
        },
    ))
}

/// An OpenAI `chat.completion` as the translating providers (Anthropic, Gemini,
/// Bedrock) build it, with `usage` when the upstream reported it. Built as a JSON
/// value, so its keys are sorted, as they always were.
pub(crate) fn chat_completion(
    id: Value,
    created: i64,
    model: Value,
    choices: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    #[derive(Serialize)]
    struct ChatCompletion {
        id: Value,
        object: &'static str,
        created: i64,
        model: Value,
        choices: Vec<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Value>,
    }
    serde_json::json!(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage: usage.map(openai_usage_json),
    })
}

/// The assistant `message` of an OpenAI `chat.completion` choice.
#[derive(Serialize)]
pub(crate) struct AssistantMessage {
    role: &'static str,
    /// `null` when the answer is tool calls and no text.
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<Value>>,
}

impl AssistantMessage {
    /// The message of an answer's text, reasoning and tool calls (the empty ones
    /// left out).
    pub(crate) fn new(text: String, reasoning: String, tool_calls: Vec<Value>) -> Self {
        let tool_calls_only = text.is_empty() && !tool_calls.is_empty();
        Self {
            role: "assistant",
            content: (!tool_calls_only).then_some(text),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        }
    }
}

/// Usage in OpenAI's shape, as the hub reports it to clients.
pub(crate) fn openai_usage_json(usage: &Usage) -> Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens(),
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.prompt_tokens() + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    })
}

// ---------------------------------------------------------------------------
// OpenAI shapes for embeddings and images, shared by the protocols that
// translate from a native format (Bedrock InvokeModel, Gemini Imagen, Ollama's
// native API).

/// The texts of an OpenAI embeddings request's `input` (a string or an array of
/// strings); token arrays have no equivalent in the native APIs and are refused.
pub(crate) fn embedding_texts(
    request: &Value,
    provider: &'static str,
) -> Result<Vec<String>, UpstreamError> {
    /// A string, an array of strings, or token arrays (refused).
    #[derive(Default, Deserialize)]
    struct EmbeddingsInput {
        #[serde(default)]
        input: Option<Value>,
    }
    let unsupported = |capability| UpstreamError::Unsupported {
        provider,
        capability,
    };
    match wire::read_or_default::<EmbeddingsInput>(request).input {
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(unsupported("embeddings of token arrays")),
            })
            .collect(),
        _ => Err(unsupported("embeddings without a text input")),
    }
}

/// Whether an embeddings request asks for `encoding_format: "base64"`.
pub(crate) fn wants_base64_embeddings(request: &Value) -> bool {
    #[derive(Default, Deserialize)]
    struct EncodingFormat {
        #[serde(default, deserialize_with = "wire::lenient")]
        encoding_format: Option<String>,
    }
    wire::read_or_default::<EncodingFormat>(request)
        .encoding_format
        .as_deref()
        == Some("base64")
}

/// One OpenAI `embedding` value: the numbers as they are, or, for
/// `encoding_format: "base64"`, little-endian f32s in base64 (as OpenAI encodes
/// them). `None` if a value is not a number.
pub(crate) fn embedding_vector(values: &[Value], base64: bool) -> Option<Value> {
    if !values.iter().all(Value::is_number) {
        return None;
    }
    if !base64 {
        return Some(Value::Array(values.to_vec()));
    }
    use base64::Engine;
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&(v.as_f64().unwrap_or(0.0) as f32).to_le_bytes());
    }
    Some(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// An OpenAI embeddings `list` of `vectors` (in input order) with the prompt
/// tokens they cost.
pub(crate) fn embeddings_list(model: &str, vectors: Vec<Value>, prompt_tokens: u64) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            serde_json::json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    serde_json::json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// One OpenAI `data` item of an images answer from base64 image bytes: with
/// `response_format: "url"`, a `data:` URL (upstreams that only return bytes
/// have no URL to give); otherwise (`"b64_json"` or absent) `b64_json`.
pub(crate) fn image_item(request: &Value, b64: &str, mime_type: &str) -> Value {
    #[derive(Default, Deserialize)]
    struct ResponseFormat {
        #[serde(default, deserialize_with = "wire::lenient")]
        response_format: Option<String>,
    }
    let format = wire::read_or_default::<ResponseFormat>(request).response_format;
    if format.as_deref() == Some("url") {
        serde_json::json!({"url": format!("data:{mime_type};base64,{b64}")})
    } else {
        serde_json::json!({"b64_json": b64})
    }
}

/// An OpenAI images answer holding `data`.
pub(crate) fn images_answer(data: Vec<Value>) -> ImagesOutcome {
    let images = data.len() as u64;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ImagesOutcome {
        body: serde_json::json!({"created": created, "data": data}),
        images,
    }
}

/// `size` (`"WIDTHxHEIGHT"`) of an OpenAI images request; `None` when absent or
/// `"auto"`, an error when it is not of that form.
pub(crate) fn image_size(
    request: &Value,
    provider: &'static str,
) -> Result<Option<(u32, u32)>, UpstreamError> {
    #[derive(Default, Deserialize)]
    struct ImageSize {
        #[serde(default)]
        size: Option<Value>,
    }
    let size = match wire::read_or_default::<ImageSize>(request).size {
        None => return Ok(None),
        Some(Value::String(s)) if s == "auto" => return Ok(None),
        Some(Value::String(s)) => Some(s),
        Some(_) => None,
    };
    size.as_deref()
        .and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
        .map(Some)
        .ok_or(UpstreamError::Unsupported {
            provider,
            capability: "image sizes other than \"WIDTHxHEIGHT\" or \"auto\"",
        })
}
