//! The wire formats model requests come in with, each a codec around the one
//! request path (`crate::pipeline`): it parses its request into an [`Ask`] and
//! an upstream request, and encodes answers, stream frames and errors in its own
//! shape.
//! - [`openai`]: `/v1/chat/completions`, `/v1/embeddings`, `/v1/images/generations`;
//! - [`messages`]: Anthropic's `/v1/messages`;
//! - [`aigne`]: AIGNE Hub's v2 protocol (`/api/v2/...`).
//!
//! Adding an ingress is one codec module here and its routes.

pub(crate) mod aigne;
pub(crate) mod lenient;
pub(crate) mod messages;
pub(crate) mod openai;
pub(crate) mod openai_wire;

use crate::actors::ActorError;
use crate::auth::{presented_key, AuthFailure, PresentedKey};
use crate::body::{parse_json, read_limited};
use crate::config::Limits;
use crate::error::HubError;
use crate::hub::Hub;
use crate::pipeline::{self, Admitted, Ask, Caller, PipelineError};
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use domain::tenant::END_USER_MAX_CHARS;
use domain::Ingress;
use futures_util::future::LocalBoxFuture;
use futures_util::{Stream, StreamExt};
use lenient::Shaped;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What differs between the ingresses at the HTTP edge: how a request presents
/// its key, and the shape of an error.
pub(crate) trait Wire: 'static {
    /// How the requests' reservations record the ingress.
    const INGRESS: Ingress;

    /// The hub key the request presents (`Authorization: Bearer` unless the
    /// wire format says otherwise).
    fn key(req: &HttpRequest) -> Result<PresentedKey, HubError> {
        Ok(presented_key(req)?)
    }

    /// An error's JSON body in this wire format.
    fn error_body(error: &HubError) -> Value;
}

/// A `HubError` answered in `W`'s shape, with the hub's status (and, once the
/// request is admitted, its id: `routes::request_id_header`).
pub(crate) struct WireError<W>(pub HubError, PhantomData<W>);

impl<W> From<HubError> for WireError<W> {
    fn from(error: HubError) -> Self {
        WireError(error, PhantomData)
    }
}

impl<W> From<AuthFailure> for WireError<W> {
    fn from(error: AuthFailure) -> Self {
        WireError(error.into(), PhantomData)
    }
}

impl<W> From<PipelineError> for WireError<W> {
    fn from(error: PipelineError) -> Self {
        WireError(error.into(), PhantomData)
    }
}

impl<W> From<ActorError> for WireError<W> {
    fn from(error: ActorError) -> Self {
        WireError(error.into(), PhantomData)
    }
}

impl<W> std::fmt::Debug for WireError<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<W> std::fmt::Display for WireError<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl<W: Wire> ResponseError for WireError<W> {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.0, HubError::Internal(_) | HubError::Unavailable(_)) {
            tracing::error!(error = %self.0, "request failed");
        }
        self.0.response().json(W::error_body(&self.0))
    }
}

/// A model request as it arrives: its key checked for form first, then its body
/// read within `Limits::max_request_body_bytes` and parsed as JSON.
pub(crate) struct ModelCall<W> {
    pub(crate) hub: Arc<Hub>,
    pub(crate) req: HttpRequest,
    pub(crate) key: PresentedKey,
    pub(crate) body: Bytes,
    pub(crate) json: Value,
    wire: PhantomData<W>,
}

impl<W: Wire> FromRequest for ModelCall<W> {
    type Error = WireError<W>;
    type Future = LocalBoxFuture<'static, Result<Self, WireError<W>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let hub = req
                .app_data::<web::Data<Hub>>()
                .ok_or_else(|| HubError::Internal("the hub is not in the app's data".into()))?
                .clone()
                .into_inner();
            let key = W::key(&req)?;
            let body = read_limited(payload, hub.limits().max_request_body_bytes).await?;
            let json = parse_json(&body)?;
            Ok(ModelCall {
                hub,
                req,
                key,
                body,
                json,
                wire: PhantomData,
            })
        })
    }
}

impl<W: Wire> ModelCall<W> {
    /// The log span of the request for `model` (its id is recorded once admitted).
    pub(crate) fn span(&self, model: &str) -> tracing::Span {
        tracing::info_span!("model_request", ingress = ?W::INGRESS, tenant_id = %self.key.tenant_id, model = %model, request_id = tracing::field::Empty)
    }

    /// What a chat asks for: the request's size bounds its prompt (a token is at
    /// least a byte).
    pub(crate) fn chat_ask<'a>(
        &self,
        model: &'a str,
        max_tokens: Option<u32>,
        choices: u32,
    ) -> Ask<'a> {
        Ask::chat(model, W::INGRESS, self.body_bytes(), max_tokens, choices)
    }

    /// What an embeddings request asks for.
    pub(crate) fn embeddings_ask<'a>(&self, model: &'a str) -> Ask<'a> {
        Ask::embeddings(model, W::INGRESS, self.body_bytes())
    }

    /// What an image request asks for: `images`, priced by the size and quality
    /// of the (OpenAI-shaped) upstream `request`.
    pub(crate) fn images_ask<'a>(
        &self,
        model: &'a str,
        images: u32,
        request: &'a Value,
    ) -> Ask<'a> {
        Ask::images(model, W::INGRESS, self.body_bytes(), images, request)
    }

    /// Admits the request (`pipeline::admit`) and, once admitted, names it:
    /// every answer from here on carries its id (`routes::request_id_header`),
    /// and so does the request's log span.
    pub(crate) async fn admit(&self, ask: Ask<'_>) -> Result<Admitted, HubError> {
        let caller = Caller {
            app: client_app(&self.req),
            end_user: end_user(&self.req, &self.json)?,
        };
        let admitted = pipeline::admit(&self.hub, self.key.clone(), ask, caller).await?;
        self.req.extensions_mut().insert(admitted.request_id());
        tracing::Span::current()
            .record("request_id", tracing::field::display(admitted.request_id()));
        Ok(admitted)
    }

    /// The size of the request as it came, which bounds its prompt's tokens (a
    /// token is at least a byte).
    pub(crate) fn body_bytes(&self) -> u64 {
        self.body.len() as u64
    }
}

/// Longest calling-app label recorded.
const CLIENT_APP_MAX_CHARS: usize = 200;

/// The calling app, as AIGNE clients name themselves in `x-aigne-hub-client-did`.
fn client_app(req: &HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get("x-aigne-hub-client-did")?
        .to_str()
        .ok()?
        .trim();
    (!value.is_empty()).then(|| {
        value
            .chars()
            .filter(|c| !c.is_control())
            .take(CLIENT_APP_MAX_CHARS)
            .collect()
    })
}

/// The header naming who a request is for; it wins over the body's field.
pub(crate) const END_USER_HEADER: &str = "x-aigne-hub-end-user";

/// Who the request is for: the `x-aigne-hub-end-user` header, else the body's
/// `user` (OpenAI's field), else its `metadata.user_id` (Anthropic's). At most
/// [`END_USER_MAX_CHARS`] characters, no control characters, and never a hub
/// key (it is recorded in the ledger for good): anything else is a 400 rather
/// than a silently cut or dropped label.
fn end_user(req: &HttpRequest, request: &Value) -> Result<Option<String>, HubError> {
    let (field, value) = match req.headers().get(END_USER_HEADER) {
        Some(header) => {
            let text = header.to_str().map_err(|_| {
                HubError::BadRequest(format!("the {END_USER_HEADER} header must be text"))
            })?;
            (END_USER_HEADER, Some(text))
        }
        None => match (
            request.get("user"),
            request.get("metadata").and_then(|m| m.get("user_id")),
        ) {
            (Some(user), _) => ("user", Some(string_field("user", user)?)),
            (None, Some(user)) => (
                "metadata.user_id",
                Some(string_field("metadata.user_id", user)?),
            ),
            (None, None) => ("user", None),
        },
    };
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.chars().count() > END_USER_MAX_CHARS || value.chars().any(char::is_control) {
        return Err(HubError::BadRequest(format!(
            "`{field}` must be at most {END_USER_MAX_CHARS} characters, without control characters"
        )));
    }
    if crate::auth::parse_key(value).is_ok() {
        return Err(HubError::BadRequest(format!(
            "`{field}` looks like an AIGNE Hub key; name the end user, never send a key there"
        )));
    }
    Ok(Some(value.to_string()))
}

fn string_field<'a>(field: &str, value: &'a Value) -> Result<&'a str, HubError> {
    value
        .as_str()
        .ok_or_else(|| HubError::BadRequest(format!("`{field}` must be a string")))
}

/// A streamed answer: the frames as they come.
pub(crate) fn sse_response(frames: impl Stream<Item = Bytes> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        // Proxies such as nginx must pass each frame on as it comes.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(frames.map(Ok::<_, Infallible>))
}

/// The frames a relay sends, as a stream.
pub(crate) fn frames(rx: mpsc::Receiver<Bytes>) -> impl Stream<Item = Bytes> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    })
}

/// A wire struct as JSON. The codecs' structs have string keys and fields that
/// always serialize, so this does not fail; were it to, the answer would be
/// null rather than a panic.
pub(crate) fn to_json(wire: &impl serde::Serialize) -> Value {
    serde_json::to_value(wire).unwrap_or_default()
}

/// [`to_json`] as text (an SSE frame's data).
pub(crate) fn to_json_text(wire: &impl serde::Serialize) -> String {
    serde_json::to_string(wire).unwrap_or_default()
}

/// A request body's top-level object.
pub(crate) fn json_object(request: &Value) -> Result<&Map<String, Value>, HubError> {
    request
        .as_object()
        .ok_or_else(|| HubError::BadRequest("request body must be a JSON object".into()))
}

/// The fields of a model request (OpenAI's or Anthropic's) that the hub reads
/// the same way in both; the request itself goes upstream as it came. A field
/// of the wrong type is refused by the function that reads it, naming it.
#[derive(Deserialize, Default)]
pub(crate) struct RequestFields {
    #[serde(default, deserialize_with = "lenient::lenient")]
    pub(crate) model: Option<String>,
    #[serde(default, deserialize_with = "lenient::lenient")]
    pub(crate) messages: Option<Vec<Value>>,
    #[serde(default)]
    pub(crate) stream: Option<Shaped<bool>>,
    #[serde(default)]
    pub(crate) max_tokens: Option<Shaped<u64>>,
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<Shaped<u64>>,
    /// Choices or images asked for (checked by [`count`]).
    #[serde(default, deserialize_with = "lenient::any_value")]
    pub(crate) n: Option<Value>,
    #[serde(default, deserialize_with = "lenient::lenient")]
    pub(crate) stream_options: Option<StreamOptions>,
    /// An embeddings request's texts (checked by [`check_embeddings_input`]).
    #[serde(default, deserialize_with = "lenient::any_value")]
    pub(crate) input: Option<Value>,
    #[serde(default, deserialize_with = "lenient::lenient")]
    pub(crate) prompt: Option<String>,
    #[serde(default)]
    pub(crate) response_format: Option<Shaped<String>>,
}

impl RequestFields {
    /// The fields of `request` (none, if it is not an object).
    pub(crate) fn of(request: &Value) -> Self {
        lenient::read(request)
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct StreamOptions {
    #[serde(default, deserialize_with = "lenient::lenient")]
    pub(crate) include_usage: Option<bool>,
}

/// A request's `model`: a non-empty string (the message shows one like `example`).
pub(crate) fn model_field(model: Option<&str>, example: &str) -> Result<String, HubError> {
    model
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            HubError::BadRequest(format!(
                "`model` is required and must be a string like \"{example}\""
            ))
        })
}

/// An optional boolean field (`stream`): `false` when absent.
pub(crate) fn flag(value: Option<Shaped<bool>>, field: &str) -> Result<bool, HubError> {
    match value {
        None => Ok(false),
        Some(Shaped::Is(b)) => Ok(b),
        Some(Shaped::Not) => Err(HubError::BadRequest(format!("`{field}` must be a boolean"))),
    }
}

/// An optional output cap (`max_tokens`): a positive integer that fits 32 bits.
pub(crate) fn token_cap(value: Option<Shaped<u64>>, field: &str) -> Result<Option<u32>, HubError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| HubError::BadRequest(format!("`{field}` must be a positive integer"))),
    }
}

/// Checks an embeddings request's input (`field` names it in the message): a
/// non-empty string, or a non-empty array of strings or token arrays, each one
/// input, at most `Limits::embeddings_inputs_per_call_max` of them. Done before
/// anything is held or sent: the answer grows with the inputs, not the body.
pub(crate) fn check_embeddings_input(
    input: Option<&Value>,
    field: &str,
    limits: &Limits,
) -> Result<(), HubError> {
    let inputs = match input {
        Some(Value::String(s)) if !s.is_empty() => 1,
        Some(Value::Array(items))
            if !items.is_empty() && items.iter().all(|i| i.is_string() || i.is_array()) =>
        {
            items.len()
        }
        _ => {
            return Err(HubError::BadRequest(format!(
                "`{field}` is required: a non-empty string or array of strings"
            )))
        }
    };
    let max = limits.embeddings_inputs_per_call_max;
    if inputs > max {
        return Err(HubError::BadRequest(format!(
            "`{field}` has {inputs} inputs; at most {max} are accepted in one call, send the rest in further calls"
        )));
    }
    Ok(())
}

/// The images (`n`) of an image request (`field` names it in the message): 1
/// when absent, at most `Limits::images_per_call_max`.
pub(crate) fn images_asked(
    n: Option<&Value>,
    field: &str,
    limits: &Limits,
) -> Result<u32, HubError> {
    count(n, field, limits.images_per_call_max)
}

/// A count (`n`): 1 when absent, else an integer from 1 to `max`.
pub(crate) fn count(n: Option<&Value>, field: &str, max: u64) -> Result<u32, HubError> {
    match n {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=max).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                HubError::BadRequest(format!("`{field}` must be an integer from 1 to {max}"))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_fields_name_the_problem() {
        let refusal = |r: Result<_, HubError>| match r {
            Err(HubError::BadRequest(m)) => m,
            Err(other) => panic!("expected BadRequest, got {other:?}"),
            Ok(()) => panic!("expected BadRequest"),
        };
        let request = RequestFields::of(&json!({"stream": "yes", "max_tokens": -1, "model": ""}));
        assert!(
            refusal(model_field(request.model.as_deref(), "x/y").map(|_| ()))
                .contains("like \"x/y\"")
        );
        assert!(refusal(flag(request.stream, "stream").map(|_| ())).contains("`stream`"));
        assert!(
            refusal(token_cap(request.max_tokens, "max_tokens").map(|_| ()))
                .contains("`max_tokens`")
        );
        assert!(refusal(json_object(&json!([])).map(|_| ())).contains("JSON object"));
        let big = RequestFields::of(&json!({"max_tokens": u64::from(u32::MAX) + 1}));
        assert!(token_cap(big.max_tokens, "max_tokens").is_err());
        let good = RequestFields::of(&json!({"stream": true, "max_tokens": 7, "model": "a/b"}));
        assert!(flag(good.stream, "stream").unwrap());
        assert_eq!(token_cap(good.max_tokens, "max_tokens").unwrap(), Some(7));
        assert_eq!(token_cap(None, "absent").unwrap(), None);
        assert_eq!(count(None, "n", 3).unwrap(), 1);
        assert!(count(Some(&json!(4)), "n", 3).is_err());
    }
}
