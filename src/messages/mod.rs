//! Anthropic's Messages API as an ingress: `POST /v1/messages`, Anthropic's wire
//! format in and out (docs/api.md, "Anthropic Messages ingress").
//!
//! A request takes the same path as `/v1/chat/completions` (`crate::gateway`: key
//! check, routing with fallbacks, hold, attempts with retries, settlement,
//! events), recorded as [`Ingress::Anthropic`]. Per attempt:
//! - an Anthropic upstream gets the client's body as it is, only `model` set to
//!   the upstream's name, and its answer goes back as it came (JSON byte for byte,
//!   streams event for event); the hub only reads the usage;
//! - any other upstream gets the request translated to OpenAI's shape
//!   ([`convert`]) and its answer translated back, streams included ([`stream`]).
//!
//! As on every model endpoint, the client gets the end of an answer (the JSON, a
//! stream's `message_stop`) only after its charge is committed.

pub mod convert;
pub mod stream;

use crate::auth::{self, PresentedKey, BEARER_MAX_BYTES};
use crate::body::{parse_json, read_limited};
use crate::error::{AuthFailure, HubError};
use crate::gateway::{
    self, generated_bytes, with_request_id, Admitted, Answer, Ask, Billing, Operation, StreamEnd,
    STREAM_BUFFER_CHUNKS,
};
use crate::hub::Hub;
use crate::providers::anthropic::{self, MessagesItem, MessagesOutcome, MessagesStream};
use crate::providers::{
    api_for, ChatOutcome, ChatStream, Provider, ProviderKind, StreamItem, UpstreamCall,
    UpstreamError,
};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use domain::tenant::Attempt;
use domain::{Capability, Ingress, RequestId, Usage};
use futures_util::StreamExt;
use serde_json::{json, Value};
use stream::{event_frame, event_output_bytes, typed_frame, OpenAiToAnthropicStream};
use tokio::sync::mpsc;
use tracing::Instrument;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/messages")
            .route(web::post().to(messages))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(MessagesError::from(HubError::MethodNotAllowed))
            })),
    );
}

// ---------------------------------------------------------------------------
// Errors

/// A `HubError` answered in Anthropic's shape,
/// `{"type":"error","error":{"type","message"}}`, with the hub's status, and the
/// request id once the request has one.
#[derive(Debug)]
pub struct MessagesError {
    pub error: HubError,
    pub request_id: Option<RequestId>,
}

impl From<HubError> for MessagesError {
    fn from(error: HubError) -> Self {
        MessagesError {
            error,
            request_id: None,
        }
    }
}

impl std::fmt::Display for MessagesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Anthropic's error type for a hub error.
pub fn anthropic_error_type(e: &HubError) -> &'static str {
    match e {
        HubError::Unauthenticated(_) => "authentication_error",
        HubError::PermissionDenied(_) => "permission_error",
        HubError::InsufficientCredits { .. } => "billing_error",
        HubError::BadRequest(_) | HubError::Conflict(_) | HubError::MethodNotAllowed => {
            "invalid_request_error"
        }
        HubError::NotFound(_) | HubError::ModelNotFound(_) => "not_found_error",
        HubError::PayloadTooLarge { .. } => "request_too_large",
        HubError::UpstreamRateLimited(_) => "rate_limit_error",
        HubError::UpstreamTimeout => "timeout_error",
        HubError::Unavailable(_) => "overloaded_error",
        HubError::Upstream(_)
        | HubError::UpstreamCredentialRejected
        | HubError::UpstreamAnswerTooLarge { .. }
        | HubError::Internal(_) => "api_error",
    }
}

pub fn anthropic_error_body(e: &HubError) -> Value {
    json!({"type": "error", "error": {"type": anthropic_error_type(e), "message": e.to_string()}})
}

/// The `error` event that ends a stream that failed after it started.
fn error_frame(e: &HubError) -> Bytes {
    event_frame(Some("error"), &anthropic_error_body(e).to_string())
}

impl ResponseError for MessagesError {
    fn status_code(&self) -> StatusCode {
        self.error.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.error, HubError::Internal(_) | HubError::Unavailable(_)) {
            tracing::error!(error = %self.error, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Some(request_id) = self.request_id {
            with_request_id(&mut response, request_id);
        }
        response.json(anthropic_error_body(&self.error))
    }
}

// ---------------------------------------------------------------------------
// Request

/// The hub key: `x-api-key` (what Anthropic's SDKs send) or `Authorization: Bearer`.
fn presented_key(req: &HttpRequest) -> Result<PresentedKey, HubError> {
    match req.headers().get("x-api-key") {
        Some(value) => {
            let malformed = HubError::Unauthenticated(AuthFailure::MalformedKey);
            let value = value.to_str().map_err(|_| malformed)?;
            if value.len() > BEARER_MAX_BYTES {
                return Err(HubError::Unauthenticated(AuthFailure::MalformedKey));
            }
            auth::tenant_key(req, value.trim())
        }
        None => auth::presented_key(req),
    }
}

/// The parts of a Messages request the hub needs; the rest passes through.
struct MessagesRequest {
    model: String,
    max_tokens: u32,
    stream: bool,
}

fn parse_messages_request(request: &Value) -> Result<MessagesRequest, HubError> {
    let object = request
        .as_object()
        .ok_or_else(|| HubError::BadRequest("request body must be a JSON object".into()))?;
    let model = object
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            HubError::BadRequest(
                "`model` is required and must be a string like \"anthropic/claude-sonnet-4-5\""
                    .into(),
            )
        })?;
    let max_tokens = match object.get("max_tokens") {
        None | Some(Value::Null) => {
            return Err(HubError::BadRequest(
                "`max_tokens` is required (the Messages API has no default)".into(),
            ))
        }
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1 && *n <= u32::MAX as u64)
            .ok_or_else(|| HubError::BadRequest("`max_tokens` must be a positive integer".into()))?
            as u32,
    };
    match object.get("messages") {
        Some(Value::Array(messages))
            if !messages.is_empty() && messages.iter().all(Value::is_object) => {}
        _ => {
            return Err(HubError::BadRequest(
                "`messages` is required and must be a non-empty array of objects".into(),
            ))
        }
    }
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(HubError::BadRequest("`stream` must be a boolean".into())),
    };
    Ok(MessagesRequest {
        model: model.to_string(),
        max_tokens,
        stream,
    })
}

/// A request for a model none of whose candidates speaks Anthropic's protocol is
/// translated once before the hold, so that one the translation cannot express is
/// refused (400) without a hold or an attempt.
fn refuse_untranslatable(hub: &Hub, model: &str, request: &Value) -> Result<(), HubError> {
    let candidates = hub.catalog.snapshot().candidates(model);
    if !candidates.is_empty()
        && candidates
            .iter()
            .all(|c| c.provider.kind != ProviderKind::Anthropic)
    {
        convert::anthropic_to_openai_request(request)?;
    }
    Ok(())
}

/// The id of an answer the hub translated (from the request id).
fn message_id(request_id: RequestId) -> String {
    format!("msg_{}", request_id.0.simple())
}

// ---------------------------------------------------------------------------
// Upstream (called by `gateway::attempt`, once per attempt)

/// A JSON answer: Anthropic's own, or an OpenAI one to translate.
pub(crate) enum MessagesReply {
    Anthropic(MessagesOutcome),
    Translated(ChatOutcome),
}

/// A stream: Anthropic's events, or OpenAI chunks to translate.
pub(crate) enum MessagesEvents {
    Anthropic(MessagesStream),
    Translated(ChatStream),
}

/// The OpenAI request for a provider that does not speak Anthropic's protocol.
fn openai_request(call: &UpstreamCall<'_>, request: &Value) -> Result<Value, UpstreamError> {
    let mut openai = convert::anthropic_to_openai_request(request)?;
    // OpenAI's reasoning models refuse `max_tokens`; the compatible kinds know it.
    if call.provider.kind == ProviderKind::OpenAi {
        if let Some(max) = openai.as_object_mut().and_then(|o| o.remove("max_tokens")) {
            openai["max_completion_tokens"] = max;
        }
    }
    Ok(openai)
}

/// One JSON attempt; `request` is the client's body with `model` already the
/// upstream's name.
pub(crate) async fn perform(
    call: &UpstreamCall<'_>,
    request: &Value,
) -> Result<MessagesReply, UpstreamError> {
    if call.provider.kind == ProviderKind::Anthropic {
        return Ok(MessagesReply::Anthropic(
            anthropic::messages_passthrough(call, request).await?,
        ));
    }
    let openai = openai_request(call, request)?;
    Ok(MessagesReply::Translated(
        api_for(call.provider.kind).chat(call, &openai).await?,
    ))
}

/// One streaming attempt (see [`perform`]).
pub(crate) async fn perform_stream(
    call: &UpstreamCall<'_>,
    request: &Value,
) -> Result<MessagesEvents, UpstreamError> {
    if call.provider.kind == ProviderKind::Anthropic {
        return Ok(MessagesEvents::Anthropic(
            anthropic::messages_passthrough_stream(call, request).await?,
        ));
    }
    let openai = openai_request(call, request)?;
    Ok(MessagesEvents::Translated(
        api_for(call.provider.kind)
            .chat_stream(call, &openai)
            .await?,
    ))
}

// ---------------------------------------------------------------------------
// Handler

/// `POST /v1/messages`: JSON, or named SSE events when `"stream": true`.
pub async fn messages(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, MessagesError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let request: Value = parse_json(&body)?;
    let parsed = parse_messages_request(&request)?;
    refuse_untranslatable(&hub, &parsed.model, &request)?;
    let span = tracing::info_span!("messages", tenant_id = %key.tenant_id, model = %parsed.model, request_id = tracing::field::Empty);
    async move {
        let ask = Ask {
            model: &parsed.model,
            capability: Capability::Chat,
            ingress: Ingress::Anthropic,
            // The whole body's size bounds the prompt's tokens (a token is at least a byte).
            prompt_bytes: body.len() as u64,
            max_tokens: Some(parsed.max_tokens),
            choices: 1,
            images: 0,
        };
        let Admitted {
            billing,
            candidates,
        } = gateway::admit(&hub, &req, key, ask).await?;
        let request_id = billing.request_id;
        tracing::Span::current().record("request_id", tracing::field::display(request_id));
        let failed = |error: HubError| MessagesError {
            error,
            request_id: Some(request_id),
        };
        if parsed.stream {
            let (answer, attempt, provider) =
                gateway::attempt(&billing, &candidates, Operation::MessagesStream, &request)
                    .await
                    .map_err(failed)?;
            let Answer::MessagesStream(upstream) = answer else {
                unreachable!("a messages stream operation answers with a messages stream")
            };
            return Ok(stream_response(billing, attempt, provider, upstream));
        }
        let (answer, attempt, _) =
            gateway::attempt(&billing, &candidates, Operation::Messages, &request)
                .await
                .map_err(failed)?;
        let Answer::Messages(reply) = answer else {
            unreachable!("a messages operation answers with a message")
        };
        match reply {
            MessagesReply::Anthropic(outcome) => {
                let usage = outcome.usage.unwrap_or_else(|| {
                    let message: Value = serde_json::from_slice(&outcome.body).unwrap_or_default();
                    Usage::estimate(
                        billing.prompt_bytes,
                        convert::anthropic_message_output_bytes(&message),
                    )
                });
                billing.settle(&attempt, usage).await.map_err(failed)?;
                Ok(with_request_id(&mut HttpResponse::Ok(), request_id)
                    .content_type("application/json")
                    .body(outcome.body))
            }
            MessagesReply::Translated(outcome) => {
                let usage = outcome.usage.unwrap_or_else(|| {
                    let message = outcome.body.pointer("/choices/0/message");
                    let text = message
                        .and_then(|m| m.get("content"))
                        .and_then(Value::as_str)
                        .map_or(0, str::len);
                    let calls = message
                        .and_then(|m| m.get("tool_calls"))
                        .map_or(0, |c| c.to_string().len());
                    Usage::estimate(billing.prompt_bytes, (text + calls) as u64)
                });
                billing.settle(&attempt, usage).await.map_err(failed)?;
                let message = convert::openai_to_anthropic_response(
                    &outcome.body,
                    &usage,
                    &message_id(request_id),
                    attempt.model.upstream_model(),
                );
                Ok(with_request_id(&mut HttpResponse::Ok(), request_id).json(message))
            }
        }
    }
    .instrument(span)
    .await
}

// ---------------------------------------------------------------------------
// Streams

fn stream_response(
    billing: Billing,
    attempt: Attempt,
    provider: Provider,
    upstream: MessagesEvents,
) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER_CHUNKS);
    let request_id = billing.request_id;
    actix_web::rt::spawn(relay(billing, attempt, provider, upstream, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
    });
    with_request_id(&mut HttpResponse::Ok(), request_id)
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

/// Where a relayed stream's events come from.
enum Source {
    /// An Anthropic upstream's events as they came; its `message_stop` is held
    /// back until the charge is committed.
    Anthropic {
        events: MessagesStream,
        message_stop: Option<Bytes>,
        /// The index of the content block started and not yet stopped, which a
        /// stream cut short must close.
        open_block: Option<u64>,
    },
    /// OpenAI chunks, translated.
    Translated {
        chunks: ChatStream,
        translator: OpenAiToAnthropicStream,
    },
}

/// An event's type: its `type` field, else its SSE name.
fn event_type<'a>(event: &'a crate::providers::SseEvent, data: &'a Value) -> &'a str {
    data.get("type")
        .and_then(Value::as_str)
        .or(event.event.as_deref())
        .unwrap_or("")
}

/// What the upstream's next item gives the client.
enum Relayed {
    Frames(Vec<Bytes>),
    /// The next delta would have cost more than the tenant can pay: it was read
    /// but not passed on.
    CreditExhausted,
}

impl Source {
    /// The next frames for the client (`None` at the end), noting usage and the
    /// bytes of generated text on the way. Each delta is priced before it is
    /// passed on (`Billing::would_overspend`), as on `/v1/chat/completions`.
    async fn next(
        &mut self,
        billing: &Billing,
        attempt: &Attempt,
        usage: &mut Option<Usage>,
        output_bytes: &mut u64,
    ) -> Option<Result<Relayed, UpstreamError>> {
        loop {
            match self {
                Source::Anthropic {
                    events,
                    message_stop,
                    open_block,
                } => match events.next().await? {
                    Err(e) => return Some(Err(e)),
                    Ok(MessagesItem::Usage(reported)) => *usage = Some(reported),
                    Ok(MessagesItem::Event(event)) => {
                        let data = serde_json::from_str::<Value>(&event.data).unwrap_or_default();
                        match event_type(&event, &data) {
                            "content_block_delta" => {
                                let after = *output_bytes + event_output_bytes(&data);
                                if billing.would_overspend(attempt, usage.as_ref(), after) {
                                    return Some(Ok(Relayed::CreditExhausted));
                                }
                                *output_bytes = after;
                            }
                            "content_block_start" => {
                                *open_block = data.get("index").and_then(Value::as_u64);
                            }
                            "content_block_stop" => *open_block = None,
                            "message_stop" => {
                                *message_stop =
                                    Some(event_frame(event.event.as_deref(), &event.data));
                                continue;
                            }
                            _ => {}
                        }
                        let frame = event_frame(event.event.as_deref(), &event.data);
                        return Some(Ok(Relayed::Frames(vec![frame])));
                    }
                },
                Source::Translated { chunks, translator } => match chunks.next().await? {
                    Err(e) => return Some(Err(e)),
                    Ok(StreamItem::Usage(reported)) => *usage = Some(reported),
                    Ok(StreamItem::Chunk(chunk)) => {
                        let after = *output_bytes + generated_bytes(&chunk);
                        // Checked before the translator sees the chunk, so that the
                        // blocks it believes open are those the client saw open.
                        if billing.would_overspend(attempt, usage.as_ref(), after) {
                            return Some(Ok(Relayed::CreditExhausted));
                        }
                        *output_bytes = after;
                        let events = translator.on_chunk(&chunk);
                        return Some(Ok(Relayed::Frames(
                            events.iter().map(typed_frame).collect(),
                        )));
                    }
                },
            }
        }
    }
}

/// Copies the upstream's stream to the client as Anthropic events, then settles
/// and sends `message_stop` (settled before it is sent, so a stream a client has
/// fully received is always billed). A stream the tenant's credit cannot pay for
/// is ended early, as if by `max_tokens` (docs/billing.md, "Mid-stream enforcement").
async fn relay(
    billing: Billing,
    attempt: Attempt,
    provider: Provider,
    upstream: MessagesEvents,
    tx: mpsc::Sender<Bytes>,
) {
    let mut usage: Option<Usage> = None;
    let mut output_bytes: u64 = 0;
    let mut source = match upstream {
        MessagesEvents::Anthropic(events) => Source::Anthropic {
            events,
            message_stop: None,
            open_block: None,
        },
        MessagesEvents::Translated(chunks) => Source::Translated {
            chunks,
            translator: OpenAiToAnthropicStream::new(
                message_id(billing.request_id),
                attempt.model.upstream_model().to_string(),
            ),
        },
    };
    let opening: Vec<Bytes> = match &source {
        Source::Translated { translator, .. } => {
            translator.start().iter().map(typed_frame).collect()
        }
        Source::Anthropic { .. } => Vec::new(),
    };
    let end = 'relay: {
        for frame in opening {
            if tx.send(frame).await.is_err() {
                break 'relay StreamEnd::ClientGone;
            }
        }
        loop {
            let frames = match source
                .next(&billing, &attempt, &mut usage, &mut output_bytes)
                .await
            {
                None => break StreamEnd::Done,
                Some(Err(e)) => break StreamEnd::UpstreamFailed(e),
                Some(Ok(Relayed::CreditExhausted)) => break StreamEnd::CreditExhausted,
                Some(Ok(Relayed::Frames(frames))) => frames,
            };
            for frame in frames {
                if tx.send(frame).await.is_err() {
                    break 'relay StreamEnd::ClientGone;
                }
            }
        }
    };
    // Stop reading the upstream now (a client that left should not keep generating).
    let (held_stop, open_block, translator) = match source {
        Source::Anthropic {
            events,
            message_stop,
            open_block,
        } => {
            drop(events);
            (message_stop, open_block, None)
        }
        Source::Translated { chunks, translator } => {
            drop(chunks);
            (None, None, Some(translator))
        }
    };

    match end {
        StreamEnd::Done => {
            let charged =
                usage.unwrap_or_else(|| Usage::estimate(billing.prompt_bytes, output_bytes));
            if let Some(mut translator) = translator {
                for event in translator.finish(&charged) {
                    // A client leaving now is still billed in full below.
                    let _ = tx.send(typed_frame(&event)).await;
                }
            }
            let last = match billing.settle(&attempt, charged).await {
                Ok(()) => held_stop.unwrap_or_else(|| typed_frame(&stream::message_stop())),
                Err(e) => error_frame(&e),
            };
            let _ = tx.send(last).await;
        }
        StreamEnd::CreditExhausted => {
            tracing::info!(request_id = %billing.request_id, "stream ended: the tenant's credit would not cover more");
            let charged = gateway::partial_usage(usage, billing.prompt_bytes, output_bytes);
            let closing = match translator {
                Some(mut translator) => translator.credit_exhausted(&charged),
                None => stream::credit_exhausted_events(open_block, &charged),
            };
            for event in closing {
                // A client leaving now is still billed for what it got below.
                let _ = tx.send(typed_frame(&event)).await;
            }
            let last = match billing.settle(&attempt, charged).await {
                Ok(()) => typed_frame(&stream::message_stop()),
                Err(e) => error_frame(&e),
            };
            let _ = tx.send(last).await;
        }
        StreamEnd::ClientGone => {
            billing
                .end_unfinished(&attempt, &provider, usage, output_bytes, None)
                .await;
        }
        StreamEnd::UpstreamFailed(e) => {
            let failure = billing
                .end_unfinished(&attempt, &provider, usage, output_bytes, Some(e))
                .await;
            if let Some(e) = failure {
                let _ = tx.send(error_frame(&e)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_validation_names_the_problem() {
        let err = |v: Value| match parse_messages_request(&v) {
            Err(HubError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {:?}", other.map(|r| r.model)),
        };
        let messages = json!([{"role": "user", "content": "hi"}]);
        assert!(err(json!({"model": "a/b", "messages": messages})).contains("`max_tokens`"));
        assert!(
            err(json!({"model": "a/b", "messages": messages, "max_tokens": 0}))
                .contains("`max_tokens`")
        );
        assert!(err(json!({"max_tokens": 5, "messages": messages})).contains("`model`"));
        assert!(
            err(json!({"model": "a/b", "max_tokens": 5, "messages": []})).contains("`messages`")
        );
        assert!(err(
            json!({"model": "a/b", "max_tokens": 5, "messages": messages, "stream": "yes"})
        )
        .contains("`stream`"));
        let ok = parse_messages_request(
            &json!({"model": "a/b", "max_tokens": 5, "messages": messages, "stream": true}),
        )
        .unwrap();
        assert_eq!((ok.max_tokens, ok.stream), (5, true));
    }

    #[test]
    fn errors_take_anthropic_types() {
        assert_eq!(
            anthropic_error_body(&HubError::Unauthenticated(AuthFailure::RevokedKey)),
            json!({"type": "error", "error": {"type": "authentication_error", "message": "this API key was revoked; ask your administrator for a new one"}})
        );
        assert_eq!(
            anthropic_error_type(&HubError::InsufficientCredits {
                available: "0".into(),
                required: "1".into(),
                max_tokens_that_fit: None,
                default_max_tokens: None,
            }),
            "billing_error"
        );
        assert_eq!(
            anthropic_error_type(&HubError::UpstreamRateLimited("x".into())),
            "rate_limit_error"
        );
    }
}
