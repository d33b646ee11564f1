//! AIGNE Hub's "v2" protocol, so that apps built on the AIGNE framework (the npm
//! client `@aigne/aigne-hub`, AIGNE CLI) use this hub unchanged. See docs/aigne.md.
//!
//! Model calls run through the same path as the OpenAI-compatible endpoints
//! (`crate::gateway`: key check, routing, hold, attempts with retries and
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

pub mod convert;
pub mod images;

use crate::actors::TenantOp;
use crate::auth::{bearer, presented_key};
use crate::body::{parse_json, read_limited};
use crate::catalog::PricedModel;
use crate::config::{AigneSettings, Limits};
use crate::error::HubError;
use crate::gateway::{
    self, generated_bytes, with_request_id, Admitted, Answer, Ask, Billing, Operation, StreamEnd,
    STREAM_BUFFER_CHUNKS,
};
use crate::hub::Hub;
use crate::providers::{ChatStream, Provider, ProviderKind, StreamItem};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use domain::tenant::Attempt;
use domain::{Capability, Credits, Ingress, Permission, RequestId, Usage};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use convert::StreamAccumulator;
use images::ImageStore;

/// The DID the AIGNE client looks for in `/__blocklet__.js` to find the hub.
pub const AIGNE_HUB_DID: &str = "z8ia3xzq2tMq8CRHfaXj1BTYJyYnEcHbqP8cJ";
/// Where the v2 endpoints are served (the client appends it to the origin).
pub const MOUNT_POINT: &str = "/";
/// The only credit prefixes the AIGNE client accepts in `usage.creditPrefix`.
pub const CREDIT_PREFIXES: [&str; 3] = ["$", "€", "¥"];

/// The protocol's settings and its store of generated images (one per process).
pub struct AigneState {
    pub credit_prefix: Option<String>,
    /// Origin for image URLs, without a trailing `/`; `None`: from the request.
    pub public_url: Option<String>,
    pub images: ImageStore,
}

impl AigneState {
    pub fn new(settings: &AigneSettings, limits: &Limits) -> anyhow::Result<Self> {
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

pub fn configure(cfg: &mut web::ServiceConfig) {
    let not_allowed = || web::to(|| async { Err::<HttpResponse, _>(HubError::MethodNotAllowed) });
    cfg.service(
        web::resource("/__blocklet__.js")
            .route(web::get().to(blocklet))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/v2/chat")
            .route(web::post().to(chat))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/v2/image")
            .route(web::post().to(image))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/v2/embeddings")
            .route(web::post().to(embeddings))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/v2/images/{id}")
            .route(web::get().to(generated_image))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/v2/status")
            .route(web::get().to(status))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/ai/models")
            .route(web::get().to(models))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/api/user/info")
            .route(web::get().to(user_info))
            .default_service(not_allowed()),
    );
}

// ---------------------------------------------------------------------------
// Errors

/// A `HubError` answered in the AIGNE shape: `{"error":{"message","type"}}` (the
/// client throws `message`), with `type: "NOT_ENOUGH"` for missing credit.
#[derive(Debug)]
pub struct AigneError(pub HubError);

impl From<HubError> for AigneError {
    fn from(e: HubError) -> Self {
        AigneError(e)
    }
}

impl std::fmt::Display for AigneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for AigneError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.0, HubError::Internal(_) | HubError::Unavailable(_)) {
            tracing::error!(error = %self.0, "request failed");
        }
        HttpResponse::build(self.status_code()).json(error_body(&self.0))
    }
}

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

pub fn error_body(e: &HubError) -> Value {
    let mut body = e.body();
    body["error"]["message"] = json!(error_message(e));
    if matches!(e, HubError::InsufficientCredits { .. }) {
        body["error"]["type"] = json!("NOT_ENOUGH");
    }
    body
}

/// The body of a call that failed after its status (200) was already sent (a
/// slow call, see `Limits::aigne_headers_after_ms`). `error` is the standard
/// error. The client 0.10.16 reads a 200 body as the answer and its schema
/// drops unknown keys, so `error` alone would look like an empty answer; the
/// body therefore also carries a `usage.creditPrefix` its schema refuses, with
/// the message in it: the client then fails with the message.
fn late_error_body(e: &HubError, images: bool) -> Value {
    let mut body = error_body(e);
    let message = error_message(e);
    body["usage"] = json!({
        "inputTokens": 0,
        "outputTokens": 0,
        "aigneHubCredits": 0,
        "creditPrefix": format!("error: {message}"),
    });
    if images {
        body["images"] = json!([]);
    }
    body
}

fn error_event(e: &HubError) -> Bytes {
    let error = error_body(e);
    Bytes::from(format!(
        "event: error\ndata: {}\n\n",
        json!({"message": error["error"]["message"], "type": error["error"]["type"]})
    ))
}

fn data_frame(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

// ---------------------------------------------------------------------------
// Shared answer parts

/// A credit amount as a JSON number, for display (the ledger keeps it exact).
pub fn credits_number(credits: Credits) -> Value {
    credits
        .to_decimal_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(json!(0), Value::Number)
}

/// `usage` in AIGNE's shape: numbers, and the charge in credits.
fn usage_json(state: &AigneState, usage: &Usage, cost: Credits) -> Value {
    let mut out = json!({
        "inputTokens": usage.prompt_tokens(),
        "outputTokens": usage.output_tokens,
        "aigneHubCredits": credits_number(cost),
        "creditPrefix": state.credit_prefix,
    });
    if usage.cache_read_tokens > 0 {
        out["cacheReadInputTokens"] = json!(usage.cache_read_tokens);
    }
    if usage.cache_write_tokens > 0 {
        out["cacheCreationInputTokens"] = json!(usage.cache_write_tokens);
    }
    out
}

/// Adds what every answer carries: the model (the upstream's name unless the
/// answer named one), `modelWithProvider` (the hub id of the candidate that
/// answered) and `usage` with the charge.
fn finish_output(
    state: &AigneState,
    out: &mut Map<String, Value>,
    attempt: &Attempt,
    usage: &Usage,
) {
    if !out.get("model").is_some_and(Value::is_string) {
        out.insert("model".into(), json!(attempt.model.upstream_model()));
    }
    out.insert("modelWithProvider".into(), json!(attempt.model.as_str()));
    let cost = attempt.rates.cost_of(usage);
    out.insert("usage".into(), usage_json(state, usage, cost));
}

/// While a slow call's body is pending, a byte is sent this often so that
/// proxies between the hub and the client do not close an idle connection: a
/// space before the JSON (JSON allows it), an SSE comment before the frames.
pub const SLOW_BODY_KEEPALIVE: Duration = Duration::from_secs(15);

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

/// The error answer of an admitted call (with its request id).
fn failed(e: HubError, request_id: RequestId) -> HttpResponse {
    let mut response = AigneError(e).error_response();
    if let Ok(value) = request_id.to_string().parse() {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    response
}

fn join_failed(e: tokio::task::JoinError) -> HubError {
    HubError::Internal(format!("the call's task ended abnormally: {e}"))
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
    let deadline = Duration::from_millis(hub.limits.aigne_headers_after_ms);
    let early = tokio::select! {
        joined = &mut handle => Some(joined.map_err(join_failed).and_then(|r| r)),
        _ = tokio::time::sleep(deadline) => None,
    };
    match early {
        Some(Ok(body)) => with_request_id(&mut HttpResponse::Ok(), request_id).json(body),
        Some(Err(e)) => failed(e, request_id),
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
            with_request_id(&mut HttpResponse::Ok(), request_id)
                .content_type("application/json")
                .insert_header(("cache-control", "no-cache"))
                .streaming(body.map(Ok::<_, Infallible>))
        }
    }
}

fn sse_response(
    request_id: RequestId,
    body: impl futures_util::Stream<Item = Bytes> + 'static,
) -> HttpResponse {
    with_request_id(&mut HttpResponse::Ok(), request_id)
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body.map(Ok::<_, Infallible>))
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
pub async fn blocklet(query: web::Query<HashMap<String, String>>) -> HttpResponse {
    let info = json!({
        "appName": "aigne-hub",
        "componentMountPoints": [{
            "title": "AIGNE Hub",
            "name": "ai-kit",
            "did": AIGNE_HUB_DID,
            "mountPoint": MOUNT_POINT,
            "status": "running",
        }],
    });
    if query.get("type").map(String::as_str) == Some("json") {
        HttpResponse::Ok().json(info)
    } else {
        HttpResponse::Ok()
            .content_type("application/javascript")
            .body(format!("window.blocklet = {info};\n"))
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
pub fn model_type(m: &PricedModel) -> &'static str {
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
pub async fn models(
    hub: web::Data<Hub>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let wanted = query.get("type").map(|t| match t.as_str() {
        "chatCompletion" => "chat",
        "imageGeneration" => "image",
        other => other,
    });
    let catalog = hub.catalog.snapshot();
    let list: Vec<Value> = catalog
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
            Some(json!({
                "key": m.model.as_str(),
                "model": m.model.upstream_model(),
                "type": kind,
                "provider": provider.name,
                "providerDisplayName": provider_display_name(&provider.name, provider.kind),
                "input_credits_per_token": credits_per_token(rates.input),
                "output_credits_per_token": credits_per_token(output),
                "modelMetadata": {"maxTokens": m.price.max_output_tokens},
                "status": {"available": available},
            }))
        })
        .collect();
    HttpResponse::Ok().json(list)
}

/// `GET /api/v2/status[?model=]`: whether calls can succeed. With a key, also
/// whether its tenant has credit left.
pub async fn status(
    hub: web::Data<Hub>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, AigneError> {
    let unavailable =
        |error: String| Ok(HttpResponse::Ok().json(json!({"available": false, "error": error})));
    if bearer(&req).is_some() {
        let key = presented_key(&req)?;
        let auth = Some(Hub::key_auth(&key, Permission::CallModels));
        match hub.balance(key.tenant_id, auth).await {
            Ok(balance) if balance.available.pico() <= 0 => {
                return unavailable(format!(
                    "No credits left ({} available). {TOP_UP}",
                    balance.available.to_decimal_string()
                ))
            }
            Ok(_) => {}
            Err(HubError::PermissionDenied(role)) => {
                return unavailable(format!("this key's role ({role}) may not call models"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let catalog = hub.catalog.snapshot();
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
    Ok(HttpResponse::Ok().json(json!({"available": true})))
}

/// `GET /api/user/info` (with a key): the tenant's credit in AIGNE's shape, so
/// that AIGNE CLI's `hub status` works. Any valid key may read it (an app's key
/// is usually a `member` key, and its 402s already tell the available credit).
pub async fn user_info(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, AigneError> {
    let key = presented_key(&req)?;
    let read = |permission| {
        hub.tenants.call(
            key.tenant_id,
            TenantOp::Read {
                auth: Some(Hub::key_auth(&key, permission)),
            },
        )
    };
    let reply = match read(Permission::CallModels).await {
        Err(HubError::PermissionDenied(_)) => read(Permission::ReadBilling).await?,
        other => other?,
    };
    let b = &reply.balance;
    Ok(HttpResponse::Ok().json(json!({
        "user": {"did": key.tenant_id.to_string(), "fullName": reply.tenant_name, "email": ""},
        "creditBalance": {
            "balance": b.available.to_decimal_string(),
            "total": b.granted.to_decimal_string(),
            "pendingCredit": b.held.to_decimal_string(),
            "spent": b.spent.to_decimal_string(),
        },
        "paymentLink": null,
        "profileLink": null,
        "enableCredit": true,
        "creditPrefix": hub.aigne.credit_prefix,
    })))
}

/// `GET /api/v2/images/{id}`: a generated image, without a key (the id is the
/// secret), until it expires.
pub async fn generated_image(hub: web::Data<Hub>, path: web::Path<String>) -> HttpResponse {
    match hub.aigne.images.get(&path.into_inner()) {
        Some(image) => HttpResponse::Ok()
            .content_type(image.mime)
            .insert_header((
                "cache-control",
                format!("private, max-age={}", image.remaining.as_secs()),
            ))
            .insert_header(("x-content-type-options", "nosniff"))
            .body(image.data),
        None => AigneError(HubError::NotFound(
            "no such image (generated images expire; ask for a new one)".into(),
        ))
        .error_response(),
    }
}

// ---------------------------------------------------------------------------
// Chat

/// `POST /api/v2/chat`: JSON, or SSE when `options.streaming` is `true`.
pub async fn chat(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AigneError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let call: Value = parse_json(&body)?;
    let chat = convert::chat_call(&call)?;
    let span = tracing::info_span!("aigne_chat", tenant_id = %key.tenant_id, model = %chat.model, request_id = tracing::field::Empty);
    async move {
        // A token is at least a byte: the larger of what came and what goes
        // upstream bounds the prompt.
        let prompt_bytes = (body.len() as u64).max(chat.openai.to_string().len() as u64);
        let ask = Ask {
            model: &chat.model,
            capability: Capability::Chat,
            ingress: Ingress::AigneV2,
            prompt_bytes,
            max_tokens: chat.max_tokens,
            choices: 1,
            images: 0,
        };
        let Admitted {
            billing,
            candidates,
        } = gateway::admit(&hub, &req, key, ask).await?;
        let request_id = billing.request_id;
        tracing::Span::current().record("request_id", tracing::field::display(request_id));
        let json_mode = chat.json_mode;
        let request = chat.openai;
        if chat.streaming {
            return Ok(stream_chat(&hub, billing, candidates, request, json_mode).await);
        }
        let state = hub.clone();
        let work = async move {
            let (answer, attempt, _) =
                gateway::attempt(&billing, &candidates, Operation::Chat, &request).await?;
            let Answer::Chat(outcome) = answer else {
                unreachable!("a chat operation answers with a chat")
            };
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
            billing.settle(&attempt, usage).await?;
            let mut out = convert::chat_output(&outcome.body, json_mode);
            finish_output(&state.aigne, &mut out, &attempt, &usage);
            Ok(Value::Object(out))
        };
        Ok(json_answer(&hub, request_id, false, work).await)
    }
    .instrument(span)
    .await
}

/// A streamed chat: SSE frames of `@aigne/core`'s agent response stream.
async fn stream_chat(
    hub: &Arc<Hub>,
    billing: Billing,
    candidates: Vec<crate::catalog::Candidate>,
    request: Value,
    json_mode: bool,
) -> HttpResponse {
    let request_id = billing.request_id;
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER_CHUNKS);
    let (started_tx, mut started_rx) = oneshot::channel::<Result<(), HubError>>();
    let state = hub.clone();
    actix_web::rt::spawn(async move {
        match gateway::attempt(&billing, &candidates, Operation::ChatStream, &request).await {
            Err(e) => {
                // The hold is already released; whoever waits for the start reports it.
                let _ = started_tx.send(Err(e));
            }
            Ok((answer, attempt, provider)) => {
                let Answer::Stream(upstream) = answer else {
                    unreachable!("a stream operation answers with a stream")
                };
                let _ = started_tx.send(Ok(()));
                relay(
                    state,
                    billing,
                    attempt,
                    provider,
                    upstream,
                    tx,
                    StreamAccumulator::new(json_mode),
                )
                .await;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let deadline = Duration::from_millis(hub.limits.aigne_headers_after_ms);
    let early = tokio::select! {
        started = &mut started_rx => Some(started),
        _ = tokio::time::sleep(deadline) => None,
    };
    match early {
        Some(Ok(Err(e))) => failed(e, request_id),
        Some(_) => sse_response(request_id, frames),
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
            sse_response(request_id, start.chain(frames))
        }
    }
}

/// Copies the provider's stream to the client as AIGNE deltas, then settles and
/// sends the final frame (model, tool calls, JSON output and the complete usage
/// with the charge) — settled before it is sent, so a fully received answer is
/// always billed. No `[DONE]`: the client does not expect one. A chunk the
/// tenant's credit cannot pay for is not sent: the stream ends there with the
/// same final frame, saying why in `aigne_hub` (docs/billing.md, "Mid-stream
/// enforcement").
async fn relay(
    hub: Arc<Hub>,
    billing: Billing,
    attempt: Attempt,
    provider: Provider,
    mut upstream: ChatStream,
    tx: mpsc::Sender<Bytes>,
    mut acc: StreamAccumulator,
) {
    let mut usage: Option<Usage> = None;
    let mut output_bytes: u64 = 0;
    let end = 'relay: loop {
        match upstream.next().await {
            None => break StreamEnd::Done,
            Some(Err(e)) => break StreamEnd::UpstreamFailed(e),
            Some(Ok(StreamItem::Usage(reported))) => usage = Some(reported),
            Some(Ok(StreamItem::Chunk(chunk))) => {
                let after = output_bytes + generated_bytes(&chunk);
                if billing.would_overspend(&attempt, usage.as_ref(), after) {
                    break StreamEnd::CreditExhausted;
                }
                output_bytes = after;
                for frame in acc.push(&chunk) {
                    if tx.send(data_frame(&frame)).await.is_err() {
                        break 'relay StreamEnd::ClientGone;
                    }
                }
            }
        }
    };
    drop(upstream);
    match end {
        StreamEnd::Done | StreamEnd::CreditExhausted => {
            let exhausted = matches!(end, StreamEnd::CreditExhausted);
            let charged = if exhausted {
                tracing::info!(request_id = %billing.request_id, "stream ended: the tenant's credit would not cover more");
                gateway::partial_usage(usage, billing.prompt_bytes, output_bytes)
            } else {
                usage.unwrap_or_else(|| Usage::estimate(billing.prompt_bytes, output_bytes))
            };
            if let Err(e) = billing.settle(&attempt, charged).await {
                let _ = tx.send(error_event(&e)).await;
                return;
            }
            let (frames, mut parts) = acc.finish();
            finish_output(&hub.aigne, &mut parts, &attempt, &charged);
            if exhausted {
                // The chat cutoff's own words, so that every ingress says it alike.
                let mut note = gateway::credit_exhausted_chunk(None);
                parts.insert("aigne_hub".into(), note["aigne_hub"].take());
            }
            for frame in frames
                .iter()
                .chain(std::iter::once(&json!({"delta": {"json": parts}})))
            {
                if tx.send(data_frame(frame)).await.is_err() {
                    // Left before the end: the answer is billed all the same.
                    break;
                }
            }
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
                let _ = tx.send(error_event(&e)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Images

/// Image options passed on to the upstream (OpenAI's names; camelCase accepted).
const IMAGE_OPTIONS: [(&str, &str); 9] = [
    ("size", "size"),
    ("quality", "quality"),
    ("style", "style"),
    ("background", "background"),
    ("moderation", "moderation"),
    ("outputCompression", "output_compression"),
    ("outputFormat", "output_format"),
    ("responseFormat", "response_format"),
    ("user", "user"),
];

/// `POST /api/v2/image`: billed per image. Images come back as hub URLs (served
/// without a key until they expire) or inline base64 (`outputFileType: "file"`).
pub async fn image(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AigneError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let call: Value = parse_json(&body)?;
    let input = convert::input_of(&call)?;
    let model = convert::model_of(&call, input)?;
    let prompt = input
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            HubError::BadRequest("`input.prompt` is required and must be a non-empty string".into())
        })?;
    if input
        .get("image")
        .and_then(Value::as_array)
        .is_some_and(|i| !i.is_empty())
    {
        return Err(HubError::BadRequest(
            "image editing (`input.image`) is not supported by this hub; send a prompt only".into(),
        )
        .into());
    }
    let options = input.get("modelOptions").cloned().unwrap_or(Value::Null);
    let n = gateway::images_asked(
        input.get("n").or_else(|| options.get("n")),
        "input.n",
        &hub.limits,
    )?;
    let inline = match input.get("outputFileType").and_then(Value::as_str) {
        None | Some("url") => false,
        Some("file") => true,
        Some(_) => {
            return Err(HubError::BadRequest(
                "`input.outputFileType` must be \"url\" or \"file\"".into(),
            )
            .into())
        }
    };
    let mut request = json!({"prompt": prompt, "n": n});
    for source in [&options, input] {
        for (aigne, openai) in IMAGE_OPTIONS {
            if let Some(v) = source
                .get(aigne)
                .or_else(|| source.get(openai))
                .filter(|v| v.is_string() || v.is_number())
            {
                request[openai] = v.clone();
            }
        }
    }
    let ask = Ask {
        model: &model,
        capability: Capability::Images,
        ingress: Ingress::AigneV2,
        prompt_bytes: body.len() as u64,
        max_tokens: Some(0),
        choices: 1,
        images: n as u32,
    };
    // Priced by size and quality like `/v1/images/generations` (docs/billing.md).
    let variant = |field: &str| {
        request
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (size, quality) = (variant("size"), variant("quality"));
    let Admitted {
        billing,
        candidates,
    } = gateway::admit_image_variant(&hub, &req, key, ask, (size.as_deref(), quality.as_deref()))
        .await?;
    let request_id = billing.request_id;
    let base = public_base(&hub.aigne, &req);
    let state = hub.clone();
    let work = async move {
        let (answer, attempt, _) =
            gateway::attempt(&billing, &candidates, Operation::Images, &request).await?;
        let Answer::Images(outcome) = answer else {
            unreachable!("an images operation answers with images")
        };
        let usage = Usage {
            images: outcome.images,
            ..Usage::default()
        };
        billing.settle(&attempt, usage).await?;
        let images: Vec<Value> = outcome
            .body
            .get("data")
            .and_then(Value::as_array)
            .map(|data| {
                data.iter()
                    .filter_map(|item| image_output(&state.aigne, &base, item, inline))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Map::new();
        out.insert("images".into(), Value::Array(images));
        if let Some(model) = outcome.body.get("model").and_then(Value::as_str) {
            out.insert("model".into(), json!(model));
        }
        finish_output(&state.aigne, &mut out, &attempt, &usage);
        // Token counts the upstream reported for images (display only; images
        // are billed per image).
        for (field, upstream) in [
            ("inputTokens", "input_tokens"),
            ("outputTokens", "output_tokens"),
        ] {
            if let Some(tokens) = outcome
                .body
                .pointer(&format!("/usage/{upstream}"))
                .and_then(Value::as_u64)
            {
                out["usage"][field] = json!(tokens);
            }
        }
        Ok(Value::Object(out))
    };
    Ok(json_answer(&hub, request_id, true, work).await)
}

/// One upstream image as AIGNE file content: a hub URL for base64 data (or the
/// data inline, if asked or too large to keep), the upstream's URL as it is.
fn image_output(state: &AigneState, base: &str, item: &Value, inline: bool) -> Option<Value> {
    if let Some(b64) = item.get("b64_json").and_then(Value::as_str) {
        let data = BASE64.decode(b64).ok();
        let mime = data.as_deref().map_or("image/png", images::sniff_mime);
        if !inline {
            if let Some(id) = data.and_then(|d| state.images.put(Bytes::from(d), mime)) {
                return Some(
                    json!({"type": "url", "url": format!("{base}/api/v2/images/{id}"), "mimeType": mime}),
                );
            }
        }
        return Some(json!({"type": "file", "data": b64, "mimeType": mime}));
    }
    let url = item.get("url").and_then(Value::as_str)?;
    Some(json!({"type": "url", "url": url, "mimeType": "image/png"}))
}

// ---------------------------------------------------------------------------
// Embeddings

/// `POST /api/v2/embeddings`: `{"input":{"input","modelOptions":{"model"}}}` (or
/// the older `{"model","input"}`), billed by input tokens.
pub async fn embeddings(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AigneError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let call: Value = parse_json(&body)?;
    let (model, texts, options) = match call.get("input") {
        Some(input) if input.is_object() => (
            convert::model_of(&call, input)?,
            input.get("input"),
            input.get("modelOptions"),
        ),
        _ => (
            convert::model_of(&call, &Value::Null)?,
            call.get("input"),
            None,
        ),
    };
    gateway::check_embeddings_input(texts, "input.input", &hub.limits)?;
    let texts = texts.cloned().unwrap_or(Value::Null);
    let mut request = json!({"input": texts});
    if let Some(dimensions) = options
        .and_then(|o| o.get("dimensions"))
        .filter(|d| d.is_u64())
    {
        request["dimensions"] = dimensions.clone();
    }
    let ask = Ask {
        model: &model,
        capability: Capability::Embeddings,
        ingress: Ingress::AigneV2,
        prompt_bytes: body.len() as u64,
        max_tokens: Some(0),
        choices: 1,
        images: 0,
    };
    let Admitted {
        billing,
        candidates,
    } = gateway::admit(&hub, &req, key, ask).await?;
    let request_id = billing.request_id;
    let state = hub.clone();
    let work = async move {
        let (answer, attempt, _) =
            gateway::attempt(&billing, &candidates, Operation::Embeddings, &request).await?;
        let Answer::Embeddings(outcome) = answer else {
            unreachable!("an embeddings operation answers with embeddings")
        };
        let input_bytes = request["input"].to_string().len() as u64;
        let usage = outcome
            .usage
            .unwrap_or_else(|| Usage::estimate(input_bytes, 0));
        billing.settle(&attempt, usage).await?;
        let data = outcome.body.get("data").cloned().unwrap_or(json!([]));
        let vectors: Vec<Value> = data
            .as_array()
            .map(|d| d.iter().map(|e| e["embedding"].clone()).collect())
            .unwrap_or_default();
        let mut out = Map::new();
        out.insert("embeddings".into(), Value::Array(vectors));
        out.insert("data".into(), data);
        if let Some(model) = outcome.body.get("model").and_then(Value::as_str) {
            out.insert("model".into(), json!(model));
        }
        finish_output(&state.aigne, &mut out, &attempt, &usage);
        Ok(Value::Object(out))
    };
    Ok(json_answer(&hub, request_id, false, work).await)
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
