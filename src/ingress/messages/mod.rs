//! Anthropic's Messages API as an ingress: `POST /v1/messages`, Anthropic's wire
//! format in and out (docs/api.md, "Anthropic Messages ingress").
//!
//! A request takes the path of every model request (`crate::pipeline`: key
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

pub(crate) mod convert;
pub(crate) mod stream;
pub(crate) mod wire;

use crate::auth::{self, PresentedKey, BEARER_MAX_BYTES};
use crate::error::{AuthFailure, HubError};
use crate::hub::Hub;
use crate::ingress::lenient;
use crate::ingress::{self, frames, sse_response, ModelCall, RequestFields, Wire, WireError};
use crate::pipeline::{
    chat_pieces, map_pieces, openai_chunk_bytes, Billed, Ending, Operation, OutputCap, Perform,
    Pieces, PipelineError, StreamCodec, Upstreamed, CHAT, CHAT_STREAM,
};
use crate::providers::anthropic::{self, MessagesItem, MessagesOutcome, MessagesStream};
use crate::providers::{
    ChatOutcome, ChatStream, ProviderKind, SseEvent, UpstreamCall, UpstreamError,
};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use domain::tenant::Attempt;
use domain::{Ingress, RequestId, Usage};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::Value;
use stream::{event_frame, event_output_bytes, typed_frame, OpenAiToAnthropicStream};
use tracing::Instrument;
use wire::{ErrorDetail, ErrorEvent, ErrorType, UpstreamAnswer, UpstreamEvent};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
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

/// Anthropic's wire format: the key in `x-api-key` (what Anthropic's SDKs
/// send) or `Authorization: Bearer`; errors as
/// `{"type":"error","error":{"type","message"}}`.
pub(crate) struct Anthropic;

impl Wire for Anthropic {
    const INGRESS: Ingress = Ingress::Anthropic;

    fn key(req: &HttpRequest) -> Result<PresentedKey, HubError> {
        match req.headers().get("x-api-key") {
            Some(value) => {
                let malformed = || HubError::Unauthenticated(AuthFailure::MalformedKey);
                let value = value.to_str().map_err(|_| malformed())?;
                if value.len() > BEARER_MAX_BYTES {
                    return Err(malformed());
                }
                Ok(auth::tenant_key(req, value.trim())?)
            }
            None => Ok(auth::presented_key(req)?),
        }
    }

    fn error_body(error: &HubError) -> Value {
        anthropic_error_body(error)
    }
}

/// A `HubError` answered in Anthropic's shape.
pub(crate) type MessagesError = WireError<Anthropic>;

/// Anthropic's error type for a hub error.
pub(crate) fn anthropic_error_type(e: &HubError) -> &'static str {
    match e {
        HubError::Unauthenticated(_) => "authentication_error",
        HubError::KeyExpired(_) => "authentication_error",
        HubError::PermissionDenied(_)
        | HubError::BeyondOwnPower(_)
        | HubError::ModelNotAllowed(_)
        | HubError::TenantSuspended(_)
        | HubError::TenantClosed => "permission_error",
        HubError::InsufficientCredits { .. }
        | HubError::KeyBudgetExhausted(_)
        | HubError::ProjectBudgetExhausted(_) => "billing_error",
        HubError::RateLimited { .. } => "rate_limit_error",
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

/// A hub error in Anthropic's shape.
fn anthropic_error(e: &HubError) -> ErrorEvent {
    ErrorEvent {
        kind: ErrorType::Error,
        error: ErrorDetail {
            kind: anthropic_error_type(e),
            message: e.to_string(),
            // Anthropic's `permission_error` is also a role's refusal; the hub's
            // code tells a client a whole tenant is refused.
            code: matches!(e, HubError::TenantSuspended(_) | HubError::TenantClosed)
                .then(|| e.code()),
        },
    }
}

pub(crate) fn anthropic_error_body(e: &HubError) -> Value {
    ingress::to_json(&anthropic_error(e))
}

/// The `error` event that ends a stream that failed after it started.
fn error_frame(e: &HubError) -> Bytes {
    event_frame(Some("error"), &ingress::to_json_text(&anthropic_error(e)))
}

// ---------------------------------------------------------------------------
// Request

/// The parts of a Messages request the hub needs; the rest passes through.
struct MessagesRequest {
    model: String,
    max_tokens: u32,
    stream: bool,
}

fn parse_messages_request(request: &Value) -> Result<MessagesRequest, HubError> {
    ingress::json_object(request)?;
    let fields = RequestFields::of(request);
    let model = ingress::model_field(fields.model.as_deref(), "anthropic/claude-sonnet-4-5")?;
    let max_tokens = ingress::token_cap(fields.max_tokens, "max_tokens")?.ok_or_else(|| {
        HubError::BadRequest("`max_tokens` is required (the Messages API has no default)".into())
    })?;
    match fields.messages {
        Some(messages) if !messages.is_empty() && messages.iter().all(Value::is_object) => {}
        _ => {
            return Err(HubError::BadRequest(
                "`messages` is required and must be a non-empty array of objects".into(),
            ))
        }
    }
    Ok(MessagesRequest {
        model,
        max_tokens,
        stream: ingress::flag(fields.stream, "stream")?,
    })
}

/// A request for a model none of whose candidates speaks Anthropic's protocol is
/// translated once before the hold, so that one the translation cannot express is
/// refused (400) without a hold or an attempt.
fn refuse_untranslatable(hub: &Hub, model: &str, request: &Value) -> Result<(), HubError> {
    let candidates = hub.catalog().snapshot().candidates(model);
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
// Upstream (once per attempt)

/// An attempt's answer: an Anthropic upstream's own, or another's (in OpenAI's
/// shape) to translate.
pub(crate) enum Upstream<A, T> {
    Anthropic(A),
    Translated(T),
}

/// A JSON answer.
type MessagesReply = Upstream<MessagesOutcome, ChatOutcome>;
/// A stream: Anthropic's events, or OpenAI chunks.
type MessagesEvents = Upstream<MessagesStream, ChatStream>;

/// The OpenAI request for a provider that does not speak Anthropic's protocol.
fn openai_request(call: &UpstreamCall<'_>, request: &Value) -> Result<Value, UpstreamError> {
    let mut openai = convert::anthropic_to_openai_request(request)?;
    // OpenAI's reasoning models refuse `max_tokens`; the compatible kinds know it.
    if call.provider.kind == ProviderKind::OpenAi {
        openai.max_completion_tokens = openai.max_tokens.take();
    }
    Ok(ingress::to_json(&openai))
}

/// One attempt: the client's body as it is to an Anthropic upstream
/// (`anthropic`), translated to OpenAI's shape for any other (`translated`).
fn perform<'a, A: Send + 'a, T: Send + 'a>(
    call: &'a UpstreamCall<'a>,
    request: &'a Value,
    anthropic: Perform<A>,
    translated: Perform<T>,
) -> BoxFuture<'a, Result<Upstream<A, T>, UpstreamError>> {
    Box::pin(async move {
        if call.provider.kind == ProviderKind::Anthropic {
            return Ok(Upstream::Anthropic(anthropic(call, request).await?));
        }
        let openai = openai_request(call, request)?;
        Ok(Upstream::Translated(translated(call, &openai).await?))
    })
}

/// A Messages request answered whole.
const MESSAGES: Billed<MessagesReply> = Billed {
    operation: Operation {
        output_cap: OutputCap::Messages,
        perform: |call, request| {
            let anthropic: Perform<MessagesOutcome> =
                |call, request| Box::pin(anthropic::messages_passthrough(call, request));
            perform(call, request, anthropic, CHAT.operation.perform)
        },
    },
    usage: |answer, _, prompt_bytes| match answer {
        Upstream::Anthropic(outcome) => outcome.usage.unwrap_or_else(|| {
            let message: UpstreamAnswer = lenient::parse(&outcome.body);
            Usage::estimate(
                prompt_bytes,
                convert::anthropic_message_output_bytes(&message),
            )
        }),
        Upstream::Translated(outcome) => (CHAT.usage)(outcome, &Value::Null, prompt_bytes),
    },
};

/// A Messages request streamed.
const MESSAGES_STREAM: Operation<MessagesEvents> = Operation {
    output_cap: OutputCap::Messages,
    perform: |call, request| {
        let anthropic: Perform<MessagesStream> =
            |call, request| Box::pin(anthropic::messages_passthrough_stream(call, request));
        perform(call, request, anthropic, CHAT_STREAM.perform)
    },
};

// ---------------------------------------------------------------------------
// Handler

/// `POST /v1/messages`: JSON, or named SSE events when `"stream": true`.
pub(crate) async fn messages(call: ModelCall<Anthropic>) -> Result<HttpResponse, MessagesError> {
    let parsed = parse_messages_request(&call.json)?;
    refuse_untranslatable(&call.hub, &parsed.model, &call.json)?;
    let span = call.span(&parsed.model);
    async move {
        let admitted = call
            .admit(call.chat_ask(&parsed.model, Some(parsed.max_tokens), 1))
            .await?;
        let request = &call.json;
        let request_id = admitted.request_id();
        if parsed.stream {
            let rx = admitted
                .stream(&MESSAGES_STREAM, request, |attempt, events| {
                    AnthropicEvents::start(request_id, attempt, events)
                })
                .await?;
            return Ok(sse_response(frames(rx)));
        }
        let settled = admitted.complete(&MESSAGES, request).await?;
        Ok(match settled.answer {
            Upstream::Anthropic(outcome) => HttpResponse::Ok()
                .content_type("application/json")
                .body(outcome.body),
            Upstream::Translated(outcome) => {
                HttpResponse::Ok().json(convert::openai_to_anthropic_response(
                    &outcome.body,
                    &settled.usage,
                    &message_id(request_id),
                    settled.attempt.model.upstream_model(),
                ))
            }
        })
    }
    .instrument(span)
    .await
}

// ---------------------------------------------------------------------------
// Streams

/// One piece of a relayed stream: an Anthropic upstream's event, or an OpenAI
/// chunk to translate.
enum MessagesPiece {
    Event {
        event: SseEvent,
        data: UpstreamEvent,
    },
    Chunk(Value),
}

impl MessagesPiece {
    /// An event's type: its `type` field, else its SSE name.
    fn event_type<'a>(event: &'a SseEvent, data: &'a UpstreamEvent) -> &'a str {
        data.kind
            .as_deref()
            .or(event.event.as_deref())
            .unwrap_or("")
    }
}

/// A stream in Anthropic's events. Settled before `message_stop` is sent, so a
/// stream a client has fully received is always billed. A stream the tenant's
/// credit cannot pay for is ended early, as if by `max_tokens` (docs/billing.md,
/// "Mid-stream enforcement").
struct AnthropicEvents {
    /// An Anthropic upstream's `message_stop`, held back until the charge is
    /// committed.
    message_stop: Option<Bytes>,
    /// The index of the Anthropic content block started and not yet stopped,
    /// which a stream cut short must close.
    open_block: Option<u64>,
    /// The translation of an OpenAI upstream's chunks.
    translator: OpenAiToAnthropicStream,
    /// Whether the upstream speaks OpenAI's protocol (its chunks are translated).
    translating: bool,
}

impl AnthropicEvents {
    fn start(
        request_id: RequestId,
        attempt: &Attempt,
        events: MessagesEvents,
    ) -> (Self, Pieces<MessagesPiece>) {
        let (pieces, translating): (Pieces<MessagesPiece>, bool) = match events {
            Upstream::Anthropic(events) => {
                let pieces = events.map(|item| {
                    item.map(|item| match item {
                        MessagesItem::Usage(usage) => Upstreamed::Usage(usage),
                        MessagesItem::Event(event) => {
                            let data = lenient::parse(event.data.as_bytes());
                            Upstreamed::Piece(MessagesPiece::Event { event, data })
                        }
                    })
                });
                (Box::pin(pieces), false)
            }
            Upstream::Translated(chunks) => {
                (map_pieces(chat_pieces(chunks), MessagesPiece::Chunk), true)
            }
        };
        let codec = AnthropicEvents {
            message_stop: None,
            open_block: None,
            translator: OpenAiToAnthropicStream::new(
                message_id(request_id),
                attempt.model.upstream_model().to_string(),
            ),
            translating,
        };
        (codec, pieces)
    }
}

impl StreamCodec for AnthropicEvents {
    type Piece = MessagesPiece;

    fn opening(&mut self) -> Vec<Bytes> {
        if !self.translating {
            return Vec::new();
        }
        self.translator.start().iter().map(typed_frame).collect()
    }

    fn generated_bytes(&self, piece: &MessagesPiece) -> Option<u64> {
        match piece {
            MessagesPiece::Event { event, data } => (MessagesPiece::event_type(event, data)
                == "content_block_delta")
                .then(|| event_output_bytes(data)),
            // Priced before the translator sees the chunk, so that the blocks it
            // believes open are those the client saw open.
            MessagesPiece::Chunk(chunk) => Some(openai_chunk_bytes(chunk)),
        }
    }

    fn encode(&mut self, piece: MessagesPiece) -> Vec<Bytes> {
        let (event, data) = match piece {
            MessagesPiece::Chunk(chunk) => {
                return self
                    .translator
                    .on_chunk(&chunk)
                    .iter()
                    .map(typed_frame)
                    .collect()
            }
            MessagesPiece::Event { event, data } => (event, data),
        };
        let frame = event_frame(event.event.as_deref(), &event.data);
        match MessagesPiece::event_type(&event, &data) {
            "content_block_start" => self.open_block = data.index,
            "content_block_stop" => self.open_block = None,
            "message_stop" => {
                self.message_stop = Some(frame);
                return Vec::new();
            }
            _ => {}
        }
        vec![frame]
    }

    fn closing(&mut self, ending: Ending, charged: &Usage) -> Vec<Bytes> {
        let events = match (ending, self.translating) {
            (Ending::Done, true) => self.translator.finish(charged),
            (Ending::Done, false) => Vec::new(),
            (Ending::CreditExhausted, true) => self.translator.credit_exhausted(charged),
            (Ending::CreditExhausted, false) => {
                stream::credit_exhausted_events(self.open_block, charged)
            }
        };
        events.iter().map(typed_frame).collect()
    }

    fn settled(&mut self, ending: Ending, _: &Usage, _: &Attempt) -> Vec<Bytes> {
        let held = match ending {
            Ending::Done => self.message_stop.take(),
            // A held `message_stop` belongs to an answer that was not passed on whole.
            Ending::CreditExhausted => None,
        };
        vec![held.unwrap_or_else(|| typed_frame(&stream::message_stop()))]
    }

    fn error_frame(&self, error: PipelineError) -> Bytes {
        error_frame(&error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_messages_request_needs_max_tokens_and_message_objects() {
        let message = |max_tokens: Value, messages: Value| {
            parse_messages_request(
                &json!({"model": "a/b", "max_tokens": max_tokens, "messages": messages}),
            )
        };
        let hi = json!([{"role": "user", "content": "hi"}]);
        let refusal = |r: Result<MessagesRequest, HubError>| match r {
            Err(HubError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {:?}", other.map(|r| r.model)),
        };
        assert!(refusal(message(Value::Null, hi.clone())).contains("no default"));
        assert!(refusal(message(json!(0), hi.clone())).contains("`max_tokens`"));
        assert!(refusal(message(json!(5), json!(["hi"]))).contains("array of objects"));
        let ok = message(json!(5), hi).unwrap();
        assert_eq!((ok.max_tokens, ok.stream), (5, false));
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
