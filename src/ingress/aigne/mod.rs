//! AIGNE Hub's "v2" protocol, so that apps built on the AIGNE framework (the npm
//! client `@aigne/aigne-hub`, AIGNE CLI) use this hub unchanged. See docs/aigne.md.
//!
//! Model calls run through the path of every model request
//! (`crate::pipeline`: key check, routing, hold, attempts with retries and
//! fallbacks, settlement, events), with the ingress recorded as
//! [`Ingress::AigneV2`]. Only the shapes differ: requests are converted to
//! OpenAI's shape (`convert`), answers back to `@aigne/core`'s.
//!
//! Two behaviours of the client 0.10.16 shape this module:
//! - it waits at most 60 s for response headers and then sends the same POST
//!   again (up to 3 more times, no idempotency key). So a call that is not
//!   answered within `Limits::aigne_headers_after_ms` gets its status (200) and
//!   headers at once and its body when ready: one call, one charge.
//! - it merges streamed `json` deltas by shallow assignment, so the last frame
//!   carries the complete `usage` (tokens and credits together).

pub(crate) mod convert;
pub(crate) mod images;
pub(crate) mod wire;

use crate::actors::TenantOp;
use crate::auth::{bearer, presented_key};
use crate::catalog::PricedModel;
use crate::config::{AigneSettings, Limits};
use crate::error::HubError;
use crate::hub::Hub;
use crate::ingress::{self, frames, sse_response, ModelCall, Wire, WireError};
use crate::pipeline::{
    chat_pieces, credit_exhausted_note, openai_chunk_bytes, Admitted, Ask, Billed, Ending,
    PipelineError, Settled, StreamCodec, CHAT, CHAT_STREAM, EMBEDDINGS, IMAGES,
    STREAM_BUFFER_CHUNKS,
};
use crate::providers::ProviderKind;
use crate::providers::{ChatOutcome, EmbeddingsOutcome, ImagesOutcome};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use domain::tenant::{Attempt, TenantStatus};
use domain::{Credits, Ingress, Permission, RequestId, Usage};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::ingress::lenient::{self, Items};
use crate::ingress::openai_wire::{EmbeddingsRequest, ImageRequest};
use convert::{InputCall, StreamAccumulator};
use images::ImageStore;
use serde::Serialize;
use wire::{
    AigneUsage, Answer, Availability, BlockletInfo, CreditBalance, DeltaBody, Embedding,
    EmbeddingsAnswer, EmbeddingsCall, EmbeddingsInput, EmbeddingsOutput, ErrorBody, ErrorEvent,
    FileOutput, ImageInput, ImageItem, ImagesAnswer, ImagesOutput, LateErrorBody, ModelEntry,
    ModelMetadata, MountPoint, StreamDelta, UserIdentity, UserInfo,
};

/// The DID the AIGNE client looks for in `/__blocklet__.js` to find the hub.
pub(crate) const AIGNE_HUB_DID: &str = "z8ia3xzq2tMq8CRHfaXj1BTYJyYnEcHbqP8cJ";
/// Where the v2 endpoints are served (the client appends it to the origin).
pub(crate) const MOUNT_POINT: &str = "/";
/// The only credit prefixes the AIGNE client accepts in `usage.creditPrefix`.
pub(crate) const CREDIT_PREFIXES: [&str; 3] = ["$", "€", "¥"];

/// The protocol's state, as the app's data.
type State = web::Data<AigneState>;

/// The protocol's settings and its store of generated images (one per process,
/// registered as the app's data).
pub(crate) struct AigneState {
    pub credit_prefix: Option<String>,
    /// Origin for image URLs, without a trailing `/`; `None`: from the request.
    pub public_url: Option<String>,
    pub images: ImageStore,
}

impl AigneState {
    pub(crate) fn new(settings: &AigneSettings, limits: &Limits) -> anyhow::Result<Self> {
        if let Some(prefix) = &settings.credit_prefix {
            if !CREDIT_PREFIXES.contains(&prefix.as_str()) {
                anyhow::bail!(
                    "AIGNE_HUB_CREDIT_PREFIX must be \"$\", \"€\", \"¥\" or empty (no prefix), got {prefix:?}: the AIGNE client refuses any other"
                );
            }
        }
        let public_url = match &settings.public_url {
            None => None,
            Some(raw) => {
                let url = reqwest::Url::parse(raw)
                    .map_err(|e| anyhow::anyhow!("AIGNE_HUB_PUBLIC_URL {raw:?}: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    anyhow::bail!("AIGNE_HUB_PUBLIC_URL must be an http or https URL");
                }
                Some(raw.trim_end_matches('/').to_string())
            }
        };
        Ok(Self {
            credit_prefix: settings.credit_prefix.clone(),
            public_url,
            images: ImageStore::new(
                Duration::from_millis(limits.generated_image_ttl_ms),
                limits.generated_images_max_bytes,
                limits.generated_images_max_count,
            ),
        })
    }
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    let routes = [
        ("/__blocklet__.js", web::get().to(blocklet)),
        ("/api/v2/chat", web::post().to(chat)),
        ("/api/v2/image", web::post().to(image)),
        ("/api/v2/embeddings", web::post().to(embeddings)),
        ("/api/v2/images/{id}", web::get().to(generated_image)),
        ("/api/v2/status", web::get().to(status)),
        ("/api/ai/models", web::get().to(models)),
        ("/api/user/info", web::get().to(user_info)),
    ];
    for (path, route) in routes {
        cfg.service(
            web::resource(path)
                .route(route)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(HubError::MethodNotAllowed)
                })),
        );
    }
}

// ---------------------------------------------------------------------------
// Errors

/// AIGNE's wire format: errors as `{"error":{"message","type"}}` (the client
/// throws `message`), with `type: "NOT_ENOUGH"` for missing credit.
pub(crate) struct Aigne;

impl Wire for Aigne {
    const INGRESS: Ingress = Ingress::AigneV2;

    fn error_body(error: &HubError) -> Value {
        error_body(error)
    }
}

/// A `HubError` answered in the AIGNE shape.
pub(crate) type AigneError = WireError<Aigne>;

/// How a tenant out of credit gets more.
const TOP_UP: &str = "Ask the operator of this hub to add credits to your tenant \
    (aigne-hub credits grant --tenant <tenant id> --amount <credits> --idempotency-key <unique id> --reason top-up).";

/// The message of an error as AIGNE users see it.
fn error_message(e: &HubError) -> String {
    match e {
        HubError::InsufficientCredits {
            available,
            required,
            max_tokens_that_fit,
            default_max_tokens,
        } => {
            let hint = crate::error::output_cap_hint(*max_tokens_that_fit, *default_max_tokens)
                .replace("`max_tokens`", "`modelOptions.maxTokens`");
            format!(
                "Not enough credits: {available} available, {required} needed for this call{hint}. {TOP_UP}"
            )
        }
        other => other.to_string(),
    }
}

/// The hub's error body with the message and type in AIGNE's words.
fn aigne_error(e: &HubError) -> ErrorBody {
    let mut body: ErrorBody = lenient::read(&e.body());
    body.error.message = error_message(e);
    if matches!(e, HubError::InsufficientCredits { .. }) {
        body.error.kind = Some("NOT_ENOUGH".into());
    }
    body
}

pub(crate) fn error_body(e: &HubError) -> Value {
    ingress::to_json(&aigne_error(e))
}

/// The body of a call that failed after its status (200) was already sent (a
/// slow call, see `Limits::aigne_headers_after_ms`). `error` is the standard
/// error. The client 0.10.16 reads a 200 body as the answer and its schema
/// drops unknown keys, so `error` alone would look like an empty answer; the
/// body therefore also carries a `usage.creditPrefix` its schema refuses, with
/// the message in it: the client then fails with the message.
fn late_error_body(e: &HubError, images: bool) -> Value {
    let message = error_message(e);
    ingress::to_json(&LateErrorBody {
        body: aigne_error(e),
        usage: AigneUsage {
            input_tokens: 0,
            output_tokens: 0,
            aigne_hub_credits: json!(0),
            credit_prefix: Some(format!("error: {message}")),
            cache_read_input_tokens: None,
            cache_creation_input_tokens: None,
        },
        images: images.then(Vec::new),
    })
}

fn error_event(e: &HubError) -> Bytes {
    let body = aigne_error(e);
    let event = ErrorEvent {
        message: &body.error.message,
        kind: body.error.kind.as_deref(),
    };
    Bytes::from(format!(
        "event: error\ndata: {}\n\n",
        ingress::to_json_text(&event)
    ))
}

fn data_frame(frame: &impl Serialize) -> Bytes {
    Bytes::from(format!("data: {}\n\n", ingress::to_json_text(frame)))
}

// ---------------------------------------------------------------------------
// Shared answer parts

/// A credit amount as a JSON number, for display (the ledger keeps it exact).
pub(crate) fn credits_number(credits: Credits) -> Value {
    credits
        .to_decimal_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(json!(0), Value::Number)
}

/// `usage` in AIGNE's shape: numbers, and the charge in credits.
fn aigne_usage(state: &AigneState, usage: &Usage, cost: Credits) -> AigneUsage {
    AigneUsage {
        input_tokens: usage.prompt_tokens(),
        output_tokens: usage.output_tokens,
        aigne_hub_credits: credits_number(cost),
        credit_prefix: state.credit_prefix.clone(),
        cache_read_input_tokens: (usage.cache_read_tokens > 0).then_some(usage.cache_read_tokens),
        cache_creation_input_tokens: (usage.cache_write_tokens > 0)
            .then_some(usage.cache_write_tokens),
    }
}

/// An answer: `output` and what every answer carries: the model (the
/// upstream's name, `upstream_model`, if the answer named one),
/// `modelWithProvider` (the hub id of the candidate that answered) and `usage`
/// with the charge.
fn finish_output<O>(
    state: &AigneState,
    output: O,
    upstream_model: Option<String>,
    attempt: &Attempt,
    usage: &Usage,
) -> Answer<O> {
    let cost = attempt.rates.cost_of(usage);
    Answer {
        output,
        model: upstream_model.unwrap_or_else(|| attempt.model.upstream_model().to_string()),
        model_with_provider: attempt.model.as_str().to_string(),
        usage: aigne_usage(state, usage, cost),
        aigne_hub: None,
    }
}

/// While a slow call's body is pending, a byte is sent this often so that
/// proxies between the hub and the client do not close an idle connection: a
/// space before the JSON (JSON allows it), an SSE comment before the frames.
pub(crate) const SLOW_BODY_KEEPALIVE: Duration = Duration::from_secs(15);

/// A body that sends `keepalive` every `every` until `wait` is done, then what
/// `finish` makes of its output (nothing: the body goes on with what follows).
fn keepalive_until<T: 'static>(
    wait: impl Future<Output = T> + 'static,
    every: Duration,
    keepalive: &'static [u8],
    finish: impl FnOnce(T) -> Option<Bytes> + 'static,
) -> impl futures_util::Stream<Item = Bytes> {
    enum State<F, G> {
        Waiting(std::pin::Pin<Box<F>>, G),
        Finished,
    }
    futures_util::stream::unfold(
        State::Waiting(Box::pin(wait), finish),
        move |state| async move {
            let State::Waiting(mut wait, finish) = state else {
                return None;
            };
            tokio::select! {
                out = &mut wait => finish(out).map(|bytes| (bytes, State::Finished)),
                _ = tokio::time::sleep(every) => {
                    Some((Bytes::from_static(keepalive), State::Waiting(wait, finish)))
                }
            }
        },
    )
}

fn join_failed(e: tokio::task::JoinError) -> HubError {
    HubError::Internal(format!("the call's task ended abnormally: {e}"))
}

/// Answers a call whose answer comes whole: `billed`'s attempts and settlement,
/// then `encode` of what was settled, on a task of their own (see
/// [`json_answer`]); `images` says the answer is images (for its error shape).
async fn settled_answer<A: 'static, O: Serialize>(
    call: &ModelCall<Aigne>,
    state: State,
    admitted: Admitted,
    billed: &'static Billed<A>,
    request: Value,
    images: bool,
    encode: impl FnOnce(&AigneState, Settled<A>) -> Answer<O> + 'static,
) -> HttpResponse {
    let request_id = admitted.request_id();
    let work = async move {
        let settled = admitted.complete(billed, &request).await?;
        Ok(ingress::to_json(&encode(&state, settled)))
    };
    json_answer(&call.hub, request_id, images, work).await
}

/// Answers a non-streaming call with `work`'s JSON. If it is done within
/// `aigne_headers_after_ms`, with its real status; if not, status 200 and the
/// headers go at once and the body when ready (so the client never times out
/// waiting for headers and sends the call again). The work runs on its own
/// task: a client that leaves does not stop a call from being settled.
async fn json_answer(
    hub: &Hub,
    request_id: RequestId,
    images: bool,
    work: impl Future<Output = Result<Value, HubError>> + 'static,
) -> HttpResponse {
    let mut handle = actix_web::rt::spawn(work);
    let deadline = Duration::from_millis(hub.limits().aigne_headers_after_ms);
    let early = tokio::select! {
        joined = &mut handle => Some(joined.map_err(join_failed).and_then(|r| r)),
        _ = tokio::time::sleep(deadline) => None,
    };
    match early {
        Some(Ok(body)) => HttpResponse::Ok().json(body),
        Some(Err(e)) => AigneError::from(e).error_response(),
        None => {
            tracing::info!(%request_id, "slow call: status and headers sent, the body follows when ready");
            let body = keepalive_until(handle, SLOW_BODY_KEEPALIVE, b" ", move |joined| {
                let body = match joined.map_err(join_failed).and_then(|r| r) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::warn!(%request_id, error = %e, "a slow call failed after its headers were sent");
                        late_error_body(&e, images)
                    }
                };
                Some(Bytes::from(body.to_string()))
            });
            HttpResponse::Ok()
                .content_type("application/json")
                .insert_header(("cache-control", "no-cache"))
                .streaming(body.map(Ok::<_, Infallible>))
        }
    }
}

/// The hub's origin as the caller reaches it, for absolute URLs.
fn public_base(state: &AigneState, req: &HttpRequest) -> String {
    state.public_url.clone().unwrap_or_else(|| {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    })
}

// ---------------------------------------------------------------------------
// Discovery, catalogue, status

/// `GET /__blocklet__.js?type=json`: where the client finds the hub's endpoints.
pub(crate) async fn blocklet(query: web::Query<HashMap<String, String>>) -> HttpResponse {
    let info = BlockletInfo {
        app_name: "aigne-hub",
        component_mount_points: vec![MountPoint {
            title: "AIGNE Hub",
            name: "ai-kit",
            did: AIGNE_HUB_DID,
            mount_point: MOUNT_POINT,
            status: "running",
        }],
    };
    if query.get("type").map(String::as_str) == Some("json") {
        HttpResponse::Ok().json(info)
    } else {
        HttpResponse::Ok()
            .content_type("application/javascript")
            .body(format!(
                "window.blocklet = {};\n",
                ingress::to_json_text(&info)
            ))
    }
}

fn provider_display_name(name: &str, kind: ProviderKind) -> String {
    if name != kind.as_str() {
        return name.to_string();
    }
    match kind {
        ProviderKind::OpenAi => "OpenAI",
        ProviderKind::Anthropic => "Anthropic",
        ProviderKind::Bedrock => "Amazon Bedrock",
        ProviderKind::Gemini => "Google Gemini",
        ProviderKind::DeepSeek => "DeepSeek",
        ProviderKind::Ollama => "Ollama",
        ProviderKind::OpenRouter => "OpenRouter",
        ProviderKind::Xai => "xAI",
        ProviderKind::Doubao => "Doubao",
        ProviderKind::Poe => "Poe",
    }
    .to_string()
}

/// A model's type, which the catalogue does not record: a per-image price makes
/// an image model, `embed` in the name an embedding model, anything else chat.
pub(crate) fn model_type(m: &PricedModel) -> &'static str {
    if m.price.rates.image.pico_per_token() > 0 {
        "image"
    } else if m
        .model
        .upstream_model()
        .to_ascii_lowercase()
        .contains("embed")
    {
        "embedding"
    } else {
        "chat"
    }
}

fn credits_per_token(rate: domain::Rate) -> String {
    Credits::from_pico(rate.pico_per_token()).to_decimal_string()
}

/// `GET /api/ai/models?type=chat|image|embedding` (public): a JSON array, rates
/// as decimal strings in credits per token (per image for an image model's
/// output).
pub(crate) async fn models(
    hub: web::Data<Hub>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let wanted = query.get("type").map(|t| match t.as_str() {
        "chatCompletion" => "chat",
        "imageGeneration" => "image",
        other => other,
    });
    let catalog = hub.catalog().snapshot();
    let list: Vec<ModelEntry> = catalog
        .models
        .values()
        .filter_map(|m| {
            let provider = catalog.providers.get(m.model.provider())?;
            let kind = model_type(m);
            if wanted.is_some_and(|w| w != kind) {
                return None;
            }
            let rates = &m.price.rates;
            let output = if kind == "image" {
                rates.image
            } else {
                rates.output
            };
            let available = provider
                .credentials
                .iter()
                .any(|c| c.disabled_reason.is_none());
            Some(ModelEntry {
                key: m.model.as_str().to_string(),
                model: m.model.upstream_model().to_string(),
                kind,
                provider: provider.name.clone(),
                provider_display_name: provider_display_name(&provider.name, provider.kind),
                input_credits_per_token: credits_per_token(rates.input),
                output_credits_per_token: credits_per_token(output),
                model_metadata: ModelMetadata {
                    max_tokens: m.price.max_output_tokens,
                },
                status: Availability {
                    available,
                    error: None,
                },
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

/// `GET /api/v2/status[?model=]`: whether calls can succeed. With a key, also
/// whether its tenant has credit left.
pub(crate) async fn status(
    hub: web::Data<Hub>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, AigneError> {
    let unavailable = |error: String| {
        Ok(HttpResponse::Ok().json(Availability {
            available: false,
            error: Some(error),
        }))
    };
    if bearer(&req).is_some() {
        let key = presented_key(&req)?;
        let auth = Some(hub.key_auth(&key, Permission::CallModels));
        match hub
            .call_tenant(key.tenant_id, TenantOp::Read { auth })
            .await
            .map_err(HubError::from)
        {
            // A suspended tenant's calls are refused whatever its credit.
            Ok(reply) if reply.status != TenantStatus::Active => {
                let refusal = match reply.status {
                    TenantStatus::Suspended { reason } => HubError::TenantSuspended(reason),
                    _ => HubError::TenantClosed,
                };
                return unavailable(refusal.to_string());
            }
            Ok(reply) if reply.balance.available.pico() <= 0 => {
                return unavailable(format!(
                    "No credits left ({} available). {TOP_UP}",
                    reply.balance.available.to_decimal_string()
                ))
            }
            Ok(_) => {}
            Err(HubError::PermissionDenied(role)) => {
                return unavailable(format!("this key's role ({role}) may not call models"))
            }
            Err(e @ HubError::TenantClosed) => return unavailable(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    let catalog = hub.catalog().snapshot();
    let usable = |provider: &str| {
        catalog
            .providers
            .get(provider)
            .is_some_and(|p| p.credentials.iter().any(|c| c.disabled_reason.is_none()))
    };
    match query
        .get("model")
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
    {
        Some(model) => {
            let model = model.strip_prefix("aignehub/").unwrap_or(model);
            let candidates = catalog.candidates(model);
            if candidates.is_empty() {
                return unavailable(format!("the model {model:?} is not offered by this hub"));
            }
            if !candidates.iter().any(|c| usable(&c.provider.name)) {
                return unavailable(format!(
                    "no usable provider credential for {model:?}; the operator must fix the provider key"
                ));
            }
        }
        None => {
            if !catalog.models.values().any(|m| usable(m.model.provider())) {
                return unavailable("no model is configured on this hub".into());
            }
        }
    }
    Ok(HttpResponse::Ok().json(Availability {
        available: true,
        error: None,
    }))
}

/// `GET /api/user/info` (with a key): the tenant's credit in AIGNE's shape, so
/// that AIGNE CLI's `hub status` works. Any valid key may read it (an app's key
/// is usually a `member` key, and its 402s already tell the available credit).
pub(crate) async fn user_info(
    hub: web::Data<Hub>,
    state: State,
    req: HttpRequest,
) -> Result<HttpResponse, AigneError> {
    let key = presented_key(&req)?;
    let read = |permission| {
        hub.call_tenant(
            key.tenant_id,
            TenantOp::Read {
                auth: Some(hub.key_auth(&key, permission)),
            },
        )
    };
    let reply = match read(Permission::CallModels).await {
        Err(e) if e.is_permission_denied() => read(Permission::ReadBilling).await?,
        other => other?,
    };
    let b = &reply.balance;
    Ok(HttpResponse::Ok().json(UserInfo {
        user: UserIdentity {
            did: key.tenant_id.to_string(),
            full_name: reply.tenant_name.clone(),
            email: String::new(),
        },
        credit_balance: CreditBalance {
            balance: b.available.to_decimal_string(),
            total: b.granted.to_decimal_string(),
            pending_credit: b.held.to_decimal_string(),
            spent: b.spent.to_decimal_string(),
        },
        payment_link: None,
        profile_link: None,
        enable_credit: true,
        credit_prefix: state.credit_prefix.clone(),
    }))
}

/// `GET /api/v2/images/{id}`: a generated image, without a key (the id is the
/// secret), until it expires.
pub(crate) async fn generated_image(state: State, path: web::Path<String>) -> HttpResponse {
    match state.images.get(&path.into_inner()) {
        Some(image) => HttpResponse::Ok()
            .content_type(image.mime)
            .insert_header((
                "cache-control",
                format!("private, max-age={}", image.remaining.as_secs()),
            ))
            .insert_header(("x-content-type-options", "nosniff"))
            .body(image.data),
        None => AigneError::from(HubError::NotFound(
            "no such image (generated images expire; ask for a new one)".into(),
        ))
        .error_response(),
    }
}

// ---------------------------------------------------------------------------
// Chat

/// `POST /api/v2/chat`: JSON, or SSE when `options.streaming` is `true`.
pub(crate) async fn chat(call: ModelCall<Aigne>, state: State) -> Result<HttpResponse, AigneError> {
    let chat = convert::chat_call(&call.json)?;
    let span = call.span(&chat.model);
    async move {
        // A token is at least a byte: the larger of what came and what goes
        // upstream bounds the prompt.
        let prompt_bytes = call.body_bytes().max(chat.openai.to_string().len() as u64);
        let ask = Ask::chat(
            &chat.model,
            Ingress::AigneV2,
            prompt_bytes,
            chat.max_tokens,
            1,
        );
        let admitted = call.admit(ask).await?;
        let json_mode = chat.json_mode;
        if chat.streaming {
            return Ok(stream_chat(&call.hub, state, admitted, chat.openai, json_mode).await);
        }
        let encode = move |state: &AigneState, settled: Settled<ChatOutcome>| {
            let (output, model) = convert::chat_output(&settled.answer.body, json_mode);
            finish_output(state, output, model, &settled.attempt, &settled.usage)
        };
        Ok(settled_answer(&call, state, admitted, &CHAT, chat.openai, false, encode).await)
    }
    .instrument(span)
    .await
}

/// A streamed chat: SSE frames of `@aigne/core`'s agent response stream.
async fn stream_chat(
    hub: &Arc<Hub>,
    state: State,
    admitted: Admitted,
    request: Value,
    json_mode: bool,
) -> HttpResponse {
    let request_id = admitted.request_id();
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER_CHUNKS);
    let (started_tx, mut started_rx) = oneshot::channel::<Result<(), HubError>>();
    actix_web::rt::spawn(async move {
        let codec = |_: &Attempt, upstream| {
            let codec = AigneFrames {
                state,
                acc: StreamAccumulator::new(json_mode),
                json_mode,
            };
            (codec, chat_pieces(upstream))
        };
        // On failure the hold is already released; whoever waits for the start
        // reports it.
        let started = admitted
            .stream_into(&CHAT_STREAM, &request, codec, tx)
            .await
            .map_err(HubError::from);
        let _ = started_tx.send(started);
    });
    let frames = frames(rx);
    let deadline = Duration::from_millis(hub.limits().aigne_headers_after_ms);
    let early = tokio::select! {
        started = &mut started_rx => Some(started),
        _ = tokio::time::sleep(deadline) => None,
    };
    match early {
        Some(Ok(Err(e))) => AigneError::from(e).error_response(),
        Some(_) => sse_response(frames),
        None => {
            tracing::info!(%request_id, "slow stream start: status and headers sent, frames follow");
            // A failure to start now comes as the stream's error event.
            let start = keepalive_until(
                started_rx,
                SLOW_BODY_KEEPALIVE,
                b": keepalive\n\n",
                |started| match started {
                    Ok(Err(e)) => Some(error_event(&e)),
                    _ => None,
                },
            );
            sse_response(start.chain(frames))
        }
    }
}

/// A chat stream as AIGNE deltas; its final frame (model, tool calls, JSON
/// output and the complete usage with the charge) is sent once the charge is
/// committed, so a fully received answer is always billed. No `[DONE]`: the
/// client does not expect one. A chunk the tenant's credit cannot pay for is
/// not sent: the stream ends there with the same final frame, saying why in
/// `aigne_hub` (docs/billing.md, "Mid-stream enforcement").
struct AigneFrames {
    state: State,
    acc: StreamAccumulator,
    json_mode: bool,
}

impl StreamCodec for AigneFrames {
    type Piece = Value;

    fn generated_bytes(&self, chunk: &Value) -> Option<u64> {
        Some(openai_chunk_bytes(chunk))
    }

    fn encode(&mut self, chunk: Value) -> Vec<Bytes> {
        self.acc.push(&chunk).iter().map(data_frame).collect()
    }

    fn closing(&mut self, _: Ending, _: &Usage) -> Vec<Bytes> {
        Vec::new()
    }

    fn settled(&mut self, ending: Ending, charged: &Usage, attempt: &Attempt) -> Vec<Bytes> {
        let acc = std::mem::replace(&mut self.acc, StreamAccumulator::new(self.json_mode));
        let (frames, output, model) = acc.finish();
        let mut answer = finish_output(&self.state, output, model, attempt, charged);
        if ending == Ending::CreditExhausted {
            answer.aigne_hub = Some(credit_exhausted_note());
        }
        let last = StreamDelta {
            delta: DeltaBody::Json(answer),
        };
        frames
            .iter()
            .chain(std::iter::once(&last))
            .map(data_frame)
            .collect()
    }

    fn error_frame(&self, error: PipelineError) -> Bytes {
        error_event(&error.into())
    }
}

// ---------------------------------------------------------------------------
// Images

/// `POST /api/v2/image`: billed per image. Images come back as hub URLs (served
/// without a key until they expire) or inline base64 (`outputFileType: "file"`).
pub(crate) async fn image(
    call: ModelCall<Aigne>,
    state: State,
) -> Result<HttpResponse, AigneError> {
    let image_call: InputCall<ImageInput> = convert::input_of(&call.json)?;
    let input = image_call.input;
    let options = input.model_options.unwrap_or_default();
    let model = convert::model_of(options.model, image_call.model)?;
    let prompt = input.prompt.filter(|p| !p.is_empty()).ok_or_else(|| {
        HubError::BadRequest("`input.prompt` is required and must be a non-empty string".into())
    })?;
    if input.image.is_some_and(|i| !i.is_empty()) {
        return Err(HubError::BadRequest(
            "image editing (`input.image`) is not supported by this hub; send a prompt only".into(),
        )
        .into());
    }
    let n = ingress::images_asked(
        input.n.as_ref().or(options.n.as_ref()),
        "input.n",
        call.hub.limits(),
    )?;
    let inline = match input.output_file_type.as_deref() {
        None | Some("url") => false,
        Some("file") => true,
        Some(_) => {
            return Err(HubError::BadRequest(
                "`input.outputFileType` must be \"url\" or \"file\"".into(),
            )
            .into())
        }
    };
    let request = ingress::to_json(&ImageRequest {
        prompt,
        n,
        options: input.options.passed().or(options.options.passed()),
    });
    // Priced by size and quality like `/v1/images/generations` (docs/billing.md).
    let admitted = call.admit(call.images_ask(&model, n, &request)).await?;
    let base = public_base(&state, &call.req);
    let encode = move |state: &AigneState, settled: Settled<ImagesOutcome>| {
        let body: ImagesAnswer = lenient::read(&settled.answer.body);
        let images = body.data.iter().flat_map(Items::iter);
        let images = images
            .filter_map(|item| image_output(state, &base, item, inline))
            .collect();
        let output = ImagesOutput { images };
        let mut answer = finish_output(state, output, body.model, &settled.attempt, &settled.usage);
        // Token counts the upstream reported for images (display only; images
        // are billed per image).
        let usage = body.usage.unwrap_or_default();
        if let Some(tokens) = usage.input_tokens {
            answer.usage.input_tokens = tokens;
        }
        if let Some(tokens) = usage.output_tokens {
            answer.usage.output_tokens = tokens;
        }
        answer
    };
    Ok(settled_answer(&call, state, admitted, &IMAGES, request, true, encode).await)
}

/// One upstream image as AIGNE file content: a hub URL for base64 data (or the
/// data inline, if asked or too large to keep), the upstream's URL as it is.
fn image_output(
    state: &AigneState,
    base: &str,
    item: &ImageItem,
    inline: bool,
) -> Option<FileOutput> {
    if let Some(b64) = &item.b64_json {
        let data = BASE64.decode(b64).ok();
        let mime = data.as_deref().map_or("image/png", images::sniff_mime);
        if !inline {
            if let Some(id) = data.and_then(|d| state.images.put(Bytes::from(d), mime)) {
                return Some(FileOutput::Url {
                    url: format!("{base}/api/v2/images/{id}"),
                    mime_type: mime.to_string(),
                });
            }
        }
        return Some(FileOutput::File {
            data: b64.clone(),
            mime_type: mime.to_string(),
        });
    }
    let url = item.url.clone()?;
    Some(FileOutput::Url {
        url,
        mime_type: "image/png".into(),
    })
}

// ---------------------------------------------------------------------------
// Embeddings

/// `POST /api/v2/embeddings`: `{"input":{"input","modelOptions":{"model"}}}` (or
/// the older `{"model","input"}`), billed by input tokens.
pub(crate) async fn embeddings(
    call: ModelCall<Aigne>,
    state: State,
) -> Result<HttpResponse, AigneError> {
    let embeddings_call: EmbeddingsCall = lenient::read(&call.json);
    let top_level_model = embeddings_call.model;
    let (model, texts, dimensions) = match embeddings_call.input {
        Some(input @ Value::Object(_)) => {
            let input: EmbeddingsInput = lenient::read(&input);
            let options = input.model_options.unwrap_or_default();
            let model = convert::model_of(options.model, top_level_model)?;
            (model, input.input, options.dimensions)
        }
        texts => (convert::model_of(None, top_level_model)?, texts, None),
    };
    ingress::check_embeddings_input(texts.as_ref(), "input.input", call.hub.limits())?;
    let request = ingress::to_json(&EmbeddingsRequest {
        input: texts.unwrap_or(Value::Null),
        dimensions,
    });
    let admitted = call.admit(call.embeddings_ask(&model)).await?;
    let encode = |state: &AigneState, settled: Settled<EmbeddingsOutcome>| {
        let body: EmbeddingsAnswer = lenient::read(&settled.answer.body);
        let data = body.data.unwrap_or_else(|| json!([]));
        let items: Items<Embedding> = lenient::read(&data);
        let embeddings = items
            .0
            .into_iter()
            .map(|e| e.embedding.unwrap_or(Value::Null))
            .collect();
        let output = EmbeddingsOutput { embeddings, data };
        finish_output(state, output, body.model, &settled.attempt, &settled.usage)
    };
    Ok(settled_answer(&call, state, admitted, &EMBEDDINGS, request, false, encode).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_pending_body_sends_keepalives_then_the_answer() {
        let wait = async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            7
        };
        let body: Vec<Bytes> = keepalive_until(wait, Duration::from_millis(50), b" ", |n| {
            Some(Bytes::from(format!("{{\"n\":{n}}}")))
        })
        .collect()
        .await;
        assert_eq!(body.last().unwrap(), &Bytes::from_static(b"{\"n\":7}"));
        assert_eq!(
            &body[..body.len() - 1],
            [Bytes::from_static(b" "), Bytes::from_static(b" ")]
        );
        let joined: Vec<u8> = body.concat();
        assert_eq!(
            serde_json::from_slice::<Value>(&joined).unwrap(),
            json!({"n": 7})
        );
        let nothing: Vec<Bytes> = keepalive_until(async {}, Duration::from_secs(1), b" ", |_| None)
            .collect()
            .await;
        assert!(nothing.is_empty());
    }

    #[test]
    fn credits_are_numbers_for_display() {
        assert_eq!(
            credits_number(Credits::from_pico(72_000_000)),
            json!(0.000072)
        );
        assert_eq!(
            credits_number(Credits::from_pico(2_500_000_000_000)),
            json!(2.5)
        );
        assert_eq!(credits_number(Credits::ZERO), json!(0.0));
    }

    #[test]
    fn missing_credit_is_not_enough_and_says_how_to_top_up() {
        let body = error_body(&HubError::InsufficientCredits {
            available: "0.1".into(),
            required: "0.4".into(),
            max_tokens_that_fit: None,
            default_max_tokens: None,
        });
        assert_eq!(body["error"]["type"], "NOT_ENOUGH");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("0.1 available") && message.contains("credits grant"),
            "{message}"
        );
    }

    #[test]
    fn settings_refuse_prefixes_the_client_would_refuse() {
        let limits = Limits::default();
        let with = |prefix: Option<&str>| {
            AigneState::new(
                &AigneSettings {
                    credit_prefix: prefix.map(str::to_string),
                    public_url: None,
                },
                &limits,
            )
        };
        assert!(with(Some("$")).is_ok() && with(Some("€")).is_ok() && with(None).is_ok());
        assert!(with(Some("")).is_err() && with(Some("credits")).is_err());
        let bad_url = AigneSettings {
            credit_prefix: None,
            public_url: Some("ftp://x".into()),
        };
        assert!(AigneState::new(&bad_url, &limits).is_err());
    }
}
