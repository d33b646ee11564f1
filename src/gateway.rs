//! The model request path: authenticate, hold, call upstream, settle, answer.
//!
//! One clear path per request (see docs/ARCHITECTURE.md):
//! 1. the tenant actor checks the key and places a hold (402 if credit is short);
//! 2. the upstream is called;
//! 3. on failure the hold is released (the request costs nothing); on success the
//!    usage the upstream reported is settled;
//! 4. only after the settlement is committed does the client get the answer (the
//!    whole JSON, or a stream's final `data: [DONE]`). So a response a client has
//!    fully received is always billed, even if the hub dies right after.

use crate::actors::TenantOp;
use crate::auth::{presented_key, PresentedKey};
use crate::body::{parse_json, read_limited};
use crate::catalog::{Candidate, PriceFor};
use crate::config::Limits;
use crate::error::HubError;
use crate::hub::Hub;
use crate::providers::{
    api_for, openai_usage_json, ChatOutcome, ChatStream, EmbeddingsOutcome, ImagesOutcome,
    Provider, ProviderKind, StreamItem, UpstreamCall, UpstreamError,
};
use crate::routing::{backoff, classify, Failure, ATTEMPTS_PER_REQUEST_MAX};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use domain::tenant::{Attempt, TenantCommand};
use domain::{Capability, Credits, Ingress, ModelPrice, Permission, RequestId, Usage};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Chunks buffered between the upstream reader and a slow client.
pub const STREAM_BUFFER_CHUNKS: usize = 64;

/// The parts of an OpenAI chat request the hub needs; the rest passes through.
struct ChatRequest {
    model: String,
    stream: bool,
    /// The smallest output cap the client named (`max_tokens`,
    /// `max_completion_tokens`); the hub sends the upstream one cap, never larger.
    max_tokens: Option<u32>,
    /// Choices requested (`n`): each may produce up to `max_tokens`.
    choices: u32,
    client_wants_usage: bool,
}

/// Most choices one request may ask for (bounds the hold).
pub const CHOICES_MAX: u64 = 128;

fn parse_chat_request(request: &Value) -> Result<ChatRequest, HubError> {
    let object = request
        .as_object()
        .ok_or_else(|| HubError::BadRequest("request body must be a JSON object".into()))?;
    let model = object
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            HubError::BadRequest(
                "`model` is required and must be a string like \"openai/gpt-4o-mini\"".into(),
            )
        })?;
    match object.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => {
            if messages.iter().any(|m| !m.is_object()) {
                return Err(HubError::BadRequest(
                    "every entry of `messages` must be an object".into(),
                ));
            }
        }
        _ => {
            return Err(HubError::BadRequest(
                "`messages` is required and must be a non-empty array".into(),
            ))
        }
    }
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(HubError::BadRequest("`stream` must be a boolean".into())),
    };
    let mut max_tokens = None;
    for field in ["max_completion_tokens", "max_tokens"] {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_u64()
                    .filter(|n| *n >= 1 && *n <= u32::MAX as u64)
                    .ok_or_else(|| {
                        HubError::BadRequest(format!("`{field}` must be a positive integer"))
                    })?;
                max_tokens = Some(max_tokens.map_or(n as u32, |m: u32| m.min(n as u32)));
            }
        }
    }
    let choices = match object.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=CHOICES_MAX).contains(n))
            .ok_or_else(|| {
                HubError::BadRequest(format!("`n` must be an integer from 1 to {CHOICES_MAX}"))
            })? as u32,
    };
    let client_wants_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatRequest {
        model: model.to_string(),
        stream,
        max_tokens,
        choices,
        client_wants_usage,
    })
}

/// Longest calling-app label recorded.
const CLIENT_APP_MAX_CHARS: usize = 200;

/// The calling app, as AIGNE clients name themselves in `x-aigne-hub-client-did`.
pub(crate) fn client_app(req: &HttpRequest) -> Option<String> {
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

/// Everything needed to settle or release one request's hold.
#[derive(Clone)]
pub(crate) struct Billing {
    pub(crate) hub: Arc<Hub>,
    pub(crate) key: PresentedKey,
    pub(crate) request_id: RequestId,
    pub(crate) prompt_bytes: u64,
    pub(crate) started: Instant,
    /// The most this request may cost: its hold plus what the tenant had left
    /// after placing it (as of admission). `None`: no mid-stream cutoff.
    pub(crate) spend_limit: Option<Credits>,
    /// The smallest output cap (per choice) the client named; `None`: none. Each
    /// attempt sends the upstream this, lowered to its model's cap (the hold
    /// covers the largest of those).
    pub(crate) requested_output_cap: Option<u32>,
}

impl Billing {
    async fn execute(&self, command: TenantCommand) -> Result<(), HubError> {
        let op = TenantOp::Execute {
            auth: None,
            command,
            request_id: Some(self.request_id),
        };
        self.hub
            .tenants
            .call(self.key.tenant_id, op)
            .await
            .map(|_| ())
    }

    /// Charges `usage` at the rates of the attempt that produced it.
    pub(crate) async fn settle(&self, attempt: &Attempt, usage: Usage) -> Result<(), HubError> {
        self.execute(TenantCommand::SettleUsage {
            request_id: self.request_id,
            attempt: attempt.clone(),
            usage,
            upstream_latency_ms: self.started.elapsed().as_millis() as u64,
            at: self.hub.clock.now(),
        })
        .await
        .map_err(|e| match e {
            // The only conflict a settlement meets: its hold is gone, released by
            // the sweeper after its time to live, or lost with a database crash
            // (see `store::Durability`). Not the client's doing; it may retry.
            HubError::Conflict(_) => HubError::Unavailable(
                "this request's credit hold is no longer open, so it was not charged; retry".into(),
            ),
            other => other,
        })
    }

    async fn record_failure(&self, attempt: &Attempt, error: &UpstreamError, latency: Duration) {
        let status = match error {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        };
        let command = TenantCommand::RecordFailedAttempt {
            request_id: self.request_id,
            attempt: attempt.clone(),
            status,
            reason: error.to_string(),
            latency_ms: latency.as_millis() as u64,
            at: self.hub.clock.now(),
        };
        if let Err(e) = self.execute(command).await {
            tracing::warn!(request_id = %self.request_id, error = %e, "recording a failed attempt failed");
        }
    }

    /// Closes the books on a stream that did not finish. Whatever reached the
    /// client is charged (the provider's figures, but at least the text sent); a
    /// stream that failed before any text costs nothing.
    pub(crate) async fn close_unfinished(
        &self,
        attempt: &Attempt,
        usage: Option<Usage>,
        output_bytes: u64,
        failure: Option<&UpstreamError>,
    ) {
        match failure {
            Some(e) if usage.is_none() && output_bytes == 0 => {
                self.release(format!("upstream failed mid-stream: {e}"))
                    .await
            }
            _ => {
                if let Err(e) = self
                    .settle(
                        attempt,
                        partial_usage(usage, self.prompt_bytes, output_bytes),
                    )
                    .await
                {
                    tracing::warn!(request_id = %self.request_id, error = %e, "settling an unfinished stream failed");
                }
            }
        }
    }

    /// Ends a stream that did not finish, the same way for every wire protocol: a
    /// client that left (`failure` `None`) or an upstream that failed. Returns the
    /// failure as the client may see it (its secrets redacted), to send as the
    /// protocol's error frame.
    pub(crate) async fn end_unfinished(
        &self,
        attempt: &Attempt,
        provider: &Provider,
        usage: Option<Usage>,
        output_bytes: u64,
        failure: Option<UpstreamError>,
    ) -> Option<HubError> {
        match failure {
            None => {
                tracing::info!(request_id = %self.request_id, "client left mid-stream; settling what was generated");
                self.close_unfinished(attempt, usage, output_bytes, None)
                    .await;
                None
            }
            Some(e) => {
                let e = e.redacted(provider);
                self.close_unfinished(attempt, usage, output_bytes, Some(&e))
                    .await;
                Some(HubError::from(e))
            }
        }
    }

    /// Whether a stream that has generated `output_bytes` would cost more than the
    /// request may spend: the provider's figures so far where it gave them, at
    /// least the generated text's estimate.
    pub(crate) fn would_overspend(
        &self,
        attempt: &Attempt,
        reported: Option<&Usage>,
        output_bytes: u64,
    ) -> bool {
        let Some(limit) = self.spend_limit else {
            return false;
        };
        let running = partial_usage(reported.cloned(), self.prompt_bytes, output_bytes);
        attempt.rates.cost_of(&running) > limit
    }

    pub(crate) async fn release(&self, reason: String) {
        let command = TenantCommand::ReleaseHold {
            request_id: self.request_id,
            reason,
            at: self.hub.clock.now(),
        };
        if let Err(e) = self.execute(command).await {
            // The hold stays until the sweeper releases it at its time to live.
            tracing::warn!(request_id = %self.request_id, error = %e, "releasing a hold failed");
        }
    }
}

/// A request admitted: key checked, candidates routed, hold placed.
pub(crate) struct Admitted {
    pub(crate) billing: Billing,
    pub(crate) candidates: Vec<Candidate>,
}

/// What a model request asks for, for its hold.
pub(crate) struct Ask<'a> {
    pub(crate) model: &'a str,
    pub(crate) capability: Capability,
    /// The wire protocol the request came in with (recorded in the reservation).
    pub(crate) ingress: Ingress,
    pub(crate) prompt_bytes: u64,
    /// The smallest output cap the client named (per choice); `None`: none. The
    /// hold is for it, lowered to the largest cap among the candidates.
    pub(crate) max_tokens: Option<u32>,
    /// Choices (`n`): each may produce up to the output tokens.
    pub(crate) choices: u32,
    pub(crate) images: u32,
}

/// The price a hold is placed at: for every kind of token the dearest rate of any
/// candidate, and the largest output cap, so a fallback never costs more than held.
fn hold_price(candidates: &[Candidate]) -> ModelPrice {
    let mut price = candidates[0].priced.price;
    for c in &candidates[1..] {
        let (a, b) = (&mut price.rates, &c.priced.price.rates);
        a.input = a.input.max(b.input);
        a.output = a.output.max(b.output);
        a.cache_read = a.cache_read.max(b.cache_read);
        a.cache_write = a.cache_write.max(b.cache_write);
        a.image = a.image.max(b.image);
        price.max_output_tokens = price
            .max_output_tokens
            .max(c.priced.price.max_output_tokens);
    }
    price
}

/// Checks the key, routes the model and places the hold (401/403/404/402 here).
pub(crate) async fn admit(
    hub: &Arc<Hub>,
    req: &HttpRequest,
    key: PresentedKey,
    ask: Ask<'_>,
) -> Result<Admitted, HubError> {
    admit_image_variant(hub, req, key, ask, (None, None)).await
}

/// [`admit`] for an image request, priced by its size and quality.
pub(crate) async fn admit_image_variant(
    hub: &Arc<Hub>,
    req: &HttpRequest,
    key: PresentedKey,
    ask: Ask<'_>,
    (image_size, image_quality): (Option<&str>, Option<&str>),
) -> Result<Admitted, HubError> {
    let auth = Some(Hub::key_auth(&key, Permission::CallModels));
    let who = PriceFor {
        tenant_id: key.tenant_id,
        image_size,
        image_quality,
        at_cost: hub.mode.charges_at_cost(),
    };
    let mut catalog = hub.catalog.snapshot();
    let mut candidates = catalog.candidates_for(ask.model, who);
    // Never refuse a model from a stale catalog: another writer may have just
    // added it (one query, on the refusal path only).
    if candidates.is_empty() && hub.catalog.refresh_if_changed().await? {
        catalog = hub.catalog.snapshot();
        candidates = catalog.candidates_for(ask.model, who);
    }
    if candidates.is_empty() {
        // Check the key first, so an unknown model is never a way to probe keys.
        hub.tenants
            .call(key.tenant_id, TenantOp::Read { auth })
            .await?;
        return Err(HubError::ModelNotFound(crate::error::UnknownModel {
            model: ask.model.to_string(),
            suggestions: catalog.closest_ids(ask.model),
        }));
    }
    let price = hold_price(&candidates);
    let primary = &candidates[0].priced;
    let request_id = RequestId::new_random();
    let max_tokens = price.output_cap(ask.max_tokens).saturating_mul(ask.choices);
    let reserve = TenantCommand::ReserveCredits {
        request_id,
        key_id: key.key_id,
        model: primary.model.clone(),
        capability: ask.capability,
        ingress: ask.ingress,
        app: client_app(req),
        price,
        price_version: primary.price_version,
        prompt_bytes: ask.prompt_bytes,
        max_tokens: Some(max_tokens),
        images: ask.images,
        instance_id: hub.instance_id,
        expires_at: hub.clock.now() + Duration::from_millis(hub.limits.hold_ttl_ms),
        enforce_credit: hub.mode.enforces_credit(),
        at: hub.clock.now(),
    };
    let hold = price.hold_for(ask.prompt_bytes, Some(max_tokens), ask.images);
    let reply = hub
        .tenants
        .call(
            key.tenant_id,
            TenantOp::Execute {
                auth,
                command: reserve,
                request_id: Some(request_id),
            },
        )
        .await
        .map_err(|e| advice_per_choice(e, ask.choices))?;
    // Admitted: every answer from here on carries the id (`routes::request_id_header`).
    actix_web::HttpMessage::extensions_mut(req).insert(request_id);
    hub.router.earn();
    let spend_limit = (hub.mode.enforces_credit() && hub.limits.stream_credit_cutoff)
        .then(|| reply.balance.available + hold);
    let billing = Billing {
        hub: hub.clone(),
        key,
        request_id,
        prompt_bytes: ask.prompt_bytes,
        started: Instant::now(),
        spend_limit,
        requested_output_cap: ask.max_tokens,
    };
    Ok(Admitted {
        billing,
        candidates,
    })
}

/// A 402's advice counts the output tokens of all choices together; a client
/// sets `max_tokens` per choice.
fn advice_per_choice(e: HubError, choices: u32) -> HubError {
    match e {
        HubError::InsufficientCredits {
            available,
            required,
            max_tokens_that_fit,
            default_max_tokens,
        } => HubError::InsufficientCredits {
            available,
            required,
            max_tokens_that_fit: max_tokens_that_fit
                .map(|n| n / u64::from(choices.max(1)))
                .filter(|n| *n >= 1),
            default_max_tokens,
        },
        other => other,
    }
}

/// The operation a request performs upstream.
#[derive(Clone, Copy)]
pub(crate) enum Operation {
    Chat,
    ChatStream,
    Embeddings,
    Images,
    /// Anthropic Messages (`/v1/messages`, `crate::messages`): passed through to
    /// Anthropic, translated for the other kinds.
    Messages,
    MessagesStream,
}

pub(crate) enum Answer {
    Chat(ChatOutcome),
    Stream(ChatStream),
    Embeddings(EmbeddingsOutcome),
    Images(ImagesOutcome),
    Messages(crate::messages::MessagesReply),
    MessagesStream(crate::messages::MessagesEvents),
}

async fn perform(
    operation: Operation,
    hub: &Hub,
    provider: &Provider,
    request: &Value,
) -> Result<Answer, UpstreamError> {
    let call = UpstreamCall {
        http: &hub.upstream,
        provider,
    };
    let api = api_for(provider.kind);
    Ok(match operation {
        Operation::Chat => Answer::Chat(api.chat(&call, request).await?),
        Operation::ChatStream => Answer::Stream(api.chat_stream(&call, request).await?),
        Operation::Embeddings => Answer::Embeddings(api.embeddings(&call, request).await?),
        Operation::Images => Answer::Images(api.images(&call, request).await?),
        Operation::Messages => Answer::Messages(crate::messages::perform(&call, request).await?),
        Operation::MessagesStream => {
            Answer::MessagesStream(crate::messages::perform_stream(&call, request).await?)
        }
    })
}

/// Every field an OpenAI-shaped chat request can cap its output with. All are
/// removed before the one the upstream reads is set: given two, an upstream may
/// honour the larger, past what was held.
const OUTPUT_CAP_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Sends an OpenAI-shaped chat request with exactly one output cap, `cap` (what
/// the hold was placed for, or less). OpenAI gets `max_completion_tokens`: its
/// reasoning models refuse `max_tokens`, and it counts reasoning tokens too. The
/// compatible kinds (Ollama's maps it to `num_predict`) and the translations
/// (Anthropic `max_tokens`, Gemini `maxOutputTokens`, Bedrock
/// `inferenceConfig.maxTokens`) read `max_tokens`.
fn set_output_cap(request: &mut Value, kind: ProviderKind, cap: u32) {
    let Some(object) = request.as_object_mut() else {
        return;
    };
    for field in OUTPUT_CAP_FIELDS {
        object.remove(field);
    }
    let field = if kind == ProviderKind::OpenAi {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    object.insert(field.into(), Value::from(cap));
}

/// Gives one attempt's request the output cap the hub decided: the client's,
/// lowered to this candidate's model cap, in the one field the upstream reads.
fn cap_attempt(
    request: &mut Value,
    operation: Operation,
    kind: ProviderKind,
    requested: Option<u32>,
    price: &ModelPrice,
) {
    let cap = price.output_cap(requested);
    match operation {
        Operation::Chat | Operation::ChatStream => set_output_cap(request, kind, cap),
        // An Anthropic Messages body has one cap; the translation for other kinds
        // carries it over (`messages::convert`).
        Operation::Messages | Operation::MessagesStream => {
            request["max_tokens"] = Value::from(cap);
        }
        Operation::Embeddings | Operation::Images => {}
    }
}

/// Tries the candidates in order (see `routing`), recording every failed attempt.
/// On success returns the answer, the attempt that gave it and its provider; on
/// failure releases the hold and returns the last error.
pub(crate) async fn attempt(
    billing: &Billing,
    candidates: &[Candidate],
    operation: Operation,
    request: &Value,
) -> Result<(Answer, Attempt, Provider), HubError> {
    let hub = &billing.hub;
    let limits = &hub.limits;
    let mut number = 0u32;
    let mut last_error: Option<UpstreamError> = None;
    let mut rejected: Vec<String> = Vec::new();
    'candidates: for candidate in candidates {
        let mut retry = 0u32;
        while number < ATTEMPTS_PER_REQUEST_MAX {
            let Some(provider) = hub.router.pick(&candidate.provider, &rejected, retry > 0) else {
                last_error.get_or_insert(UpstreamError::Status {
                    status: 401,
                    code: None,
                    message: "every credential of the provider is disabled".into(),
                });
                continue 'candidates;
            };
            number += 1;
            let attempt = Attempt {
                number,
                provider: provider.name.clone(),
                credential_id: provider.credential_id.clone(),
                model: candidate.priced.model.clone(),
                price_version: candidate.priced.price_version,
                rates: candidate.priced.price.rates,
                terms: candidate.priced.terms,
            };
            let mut upstream_request = request.clone();
            upstream_request["model"] =
                Value::String(candidate.priced.model.upstream_model().to_string());
            cap_attempt(
                &mut upstream_request,
                operation,
                provider.kind,
                billing.requested_output_cap,
                &candidate.priced.price,
            );
            let started = Instant::now();
            let error = match perform(operation, hub, &provider, &upstream_request).await {
                Ok(answer) => return Ok((answer, attempt, provider)),
                Err(e) => e.redacted(&provider),
            };
            billing
                .record_failure(&attempt, &error, started.elapsed())
                .await;
            let failure = classify(&error);
            tracing::warn!(request_id = %billing.request_id, attempt = number, provider = %provider.name, error = %error, upstream_text = %error.upstream_text(), "upstream attempt failed");
            match failure {
                Failure::Fatal => {
                    billing.release(format!("upstream failed: {error}")).await;
                    return Err(error.into());
                }
                Failure::CredentialRejected => {
                    let reason = format!("rejected by the upstream: {error}");
                    tracing::error!(provider = %provider.name, credential_id = %provider.credential_id, reason = %reason, "provider credential disabled");
                    if let Err(e) = hub
                        .set_credential_disabled(&provider.credential_id, Some(&reason))
                        .await
                    {
                        tracing::warn!(error = %e, "disabling a credential failed");
                    }
                    rejected.push(provider.credential_id.clone());
                    last_error = Some(error);
                    // Another credential of the same candidate, while one is left.
                    continue;
                }
                Failure::RateLimited => hub
                    .router
                    .cool_down(&provider.credential_id, limits.rate_limit_cooldown_ms),
                Failure::Transient => {}
            }
            last_error = Some(error);
            if retry >= limits.retries_per_candidate || !hub.router.take_retry() {
                continue 'candidates;
            }
            tokio::time::sleep(backoff(
                retry,
                limits.retry_base_delay_ms,
                limits.retry_max_delay_ms,
            ))
            .await;
            retry += 1;
        }
    }
    let error = last_error.unwrap_or(UpstreamError::Connect("no candidate could be tried".into()));
    billing.release(format!("upstream failed: {error}")).await;
    Err(error.into())
}

pub async fn chat_completions(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let mut request: Value = parse_json(&body)?;
    let chat = parse_chat_request(&request)?;
    let span = tracing::info_span!("chat", tenant_id = %key.tenant_id, model = %chat.model, request_id = tracing::field::Empty);
    async move {
        let ask = Ask {
            model: &chat.model,
            capability: Capability::Chat,
            ingress: Ingress::Openai,
            // The whole body's size bounds the prompt's tokens (a token is at least a byte).
            prompt_bytes: body.len() as u64,
            max_tokens: chat.max_tokens,
            choices: chat.choices,
            images: 0,
        };
        let Admitted {
            billing,
            candidates,
        } = admit(&hub, &req, key, ask).await?;
        tracing::Span::current().record("request_id", tracing::field::display(billing.request_id));
        prepare_upstream_request(&mut request);
        if chat.stream {
            let (answer, attempt, provider) =
                attempt(&billing, &candidates, Operation::ChatStream, &request).await?;
            let Answer::Stream(upstream) = answer else {
                unreachable!("a stream operation answers with a stream")
            };
            Ok(stream_chat(
                billing,
                attempt,
                provider,
                upstream,
                chat.client_wants_usage,
            ))
        } else {
            let (answer, attempt, _) =
                attempt(&billing, &candidates, Operation::Chat, &request).await?;
            let Answer::Chat(outcome) = answer else {
                unreachable!("a chat operation answers with a chat")
            };
            let usage = outcome.usage.unwrap_or_else(|| {
                let text = outcome
                    .body
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Usage::estimate(billing.prompt_bytes, text.len() as u64)
            });
            billing.settle(&attempt, usage).await?;
            Ok(with_request_id(&mut HttpResponse::Ok(), billing.request_id).json(outcome.body))
        }
    }
    .instrument(span)
    .await
}

/// `POST /v1/embeddings`: billed by input tokens.
pub async fn embeddings(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let mut request: Value = parse_json(&body)?;
    let model = required_model(&request)?;
    check_embeddings_input(request.get("input"), "input", &hub.limits)?;
    let ask = Ask {
        model: &model,
        capability: Capability::Embeddings,
        ingress: Ingress::Openai,
        prompt_bytes: body.len() as u64,
        max_tokens: Some(0),
        choices: 1,
        images: 0,
    };
    let Admitted {
        billing,
        candidates,
    } = admit(&hub, &req, key, ask).await?;
    prepare_upstream_request(&mut request);
    let (answer, attempt, _) =
        attempt(&billing, &candidates, Operation::Embeddings, &request).await?;
    let Answer::Embeddings(outcome) = answer else {
        unreachable!("an embeddings operation answers with embeddings")
    };
    let input_bytes = request
        .get("input")
        .map_or(0, |i| i.to_string().len() as u64);
    let usage = outcome
        .usage
        .unwrap_or_else(|| Usage::estimate(input_bytes, 0));
    billing.settle(&attempt, usage).await?;
    Ok(with_request_id(&mut HttpResponse::Ok(), billing.request_id).json(outcome.body))
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
) -> Result<u64, HubError> {
    let max = limits.images_per_call_max;
    match n {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            HubError::BadRequest(format!("`{field}` must be an integer from 1 to {max}"))
        }),
    }
}

/// `POST /v1/images/generations`: billed per image.
pub async fn images(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let hub = hub.into_inner();
    let key = presented_key(&req)?;
    let body = read_limited(payload, hub.limits.max_request_body_bytes).await?;
    let mut request: Value = parse_json(&body)?;
    let model = required_model(&request)?;
    if request
        .get("prompt")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(HubError::BadRequest(
            "`prompt` is required and must be a non-empty string".into(),
        ));
    }
    let n = images_asked(request.get("n"), "n", &hub.limits)?;
    if let Some(format) = request.get("response_format").filter(|f| !f.is_null()) {
        if !matches!(format.as_str(), Some("url" | "b64_json")) {
            return Err(HubError::BadRequest(
                "`response_format` must be \"url\" or \"b64_json\"".into(),
            ));
        }
    }
    let ask = Ask {
        model: &model,
        capability: Capability::Images,
        ingress: Ingress::Openai,
        prompt_bytes: body.len() as u64,
        max_tokens: Some(0),
        choices: 1,
        images: n as u32,
    };
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
    } = admit_image_variant(&hub, &req, key, ask, (size.as_deref(), quality.as_deref())).await?;
    prepare_upstream_request(&mut request);
    let (answer, attempt, _) = attempt(&billing, &candidates, Operation::Images, &request).await?;
    let Answer::Images(outcome) = answer else {
        unreachable!("an images operation answers with images")
    };
    billing
        .settle(
            &attempt,
            Usage {
                images: outcome.images,
                ..Usage::default()
            },
        )
        .await?;
    Ok(with_request_id(&mut HttpResponse::Ok(), billing.request_id).json(outcome.body))
}

fn required_model(request: &Value) -> Result<String, HubError> {
    request
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            HubError::BadRequest(
                "`model` is required and must be a string like \"openai/text-embedding-3-small\""
                    .into(),
            )
        })
}

fn prepare_upstream_request(request: &mut Value) {
    // The provider module decides how to ask for streamed usage; the client's own
    // wish is remembered in `client_wants_usage`. `model` is set per attempt.
    if let Some(object) = request.as_object_mut() {
        object.remove("stream_options");
    }
}

pub(crate) fn with_request_id(
    builder: &mut actix_web::HttpResponseBuilder,
    request_id: RequestId,
) -> &mut actix_web::HttpResponseBuilder {
    builder.insert_header(("x-request-id", request_id.to_string()))
}

fn stream_chat(
    billing: Billing,
    attempt: Attempt,
    provider: Provider,
    upstream: ChatStream,
    client_wants_usage: bool,
) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER_CHUNKS);
    let request_id = billing.request_id;
    actix_web::rt::spawn(relay_stream(
        billing,
        attempt,
        provider,
        upstream,
        tx,
        client_wants_usage,
    ));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    with_request_id(&mut HttpResponse::Ok(), request_id)
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

/// Bytes of generated text in one OpenAI stream chunk (for estimates only).
pub(crate) fn generated_bytes(chunk: &Value) -> u64 {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    let mut n = 0;
    for choice in choices {
        let Some(delta) = choice.get("delta") else {
            continue;
        };
        for field in ["content", "reasoning_content", "refusal"] {
            n += delta.get(field).and_then(Value::as_str).map_or(0, str::len) as u64;
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                n += call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .map_or(0, str::len) as u64;
                n += call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .map_or(0, str::len) as u64;
            }
        }
    }
    n
}

fn sse_frame(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The usage chunk a client that asked for `stream_options.include_usage` gets
/// last, in OpenAI's shape, whichever provider answered.
fn usage_chunk(last_chunk: Option<&Value>, usage: &Usage) -> Value {
    let mut chunk = chunk_like(last_chunk, json!([]));
    chunk["usage"] = openai_usage_json(usage);
    chunk
}

/// A chunk the hub adds to a stream, with the id, created time and model of the
/// upstream's last chunk.
fn chunk_like(last_chunk: Option<&Value>, choices: Value) -> Value {
    let field = |name: &str| {
        last_chunk
            .and_then(|c| c.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "id": field("id"),
        "object": "chat.completion.chunk",
        "created": field("created"),
        "model": field("model"),
        "choices": choices,
    })
}

/// The chunk that ends a stream the tenant's credit cannot pay for: a normal
/// `finish_reason: "length"` (what clients already handle for a token cap) and,
/// beside it, why.
pub(crate) fn credit_exhausted_chunk(last_chunk: Option<&Value>) -> Value {
    let mut chunk = chunk_like(
        last_chunk,
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}]),
    );
    chunk["aigne_hub"] = json!({
        "stopped": "insufficient_credits",
        "message": "the stream was ended because the tenant's available credit would not cover more output; what was delivered is billed",
    });
    chunk
}

/// What a stream that did not finish is charged: the provider's own figures where
/// it reported them (some report input at the start, output only at the end), but
/// never fewer output tokens than the text that already reached the client.
pub(crate) fn partial_usage(
    reported: Option<Usage>,
    prompt_bytes: u64,
    output_bytes: u64,
) -> Usage {
    let estimate = Usage::estimate(prompt_bytes, output_bytes);
    match reported {
        None => estimate,
        Some(mut usage) => {
            if estimate.output_tokens > usage.output_tokens {
                usage.output_tokens = estimate.output_tokens;
                usage.estimated = true;
            }
            usage
        }
    }
}

/// How a relayed stream ended (every ingress's relay).
pub(crate) enum StreamEnd {
    /// The next chunk would have cost more than the tenant can pay.
    CreditExhausted,
    Done,
    ClientGone,
    UpstreamFailed(UpstreamError),
}

/// Copies the provider's stream to the client, then settles and finishes it.
async fn relay_stream(
    billing: Billing,
    attempt: Attempt,
    provider: Provider,
    mut upstream: ChatStream,
    tx: mpsc::Sender<Bytes>,
    client_wants_usage: bool,
) {
    let mut usage: Option<Usage> = None;
    let mut output_bytes: u64 = 0;
    let mut last_chunk: Option<Value> = None;
    let end = loop {
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
                if tx.send(sse_frame(&chunk.to_string())).await.is_err() {
                    break StreamEnd::ClientGone;
                }
                last_chunk = Some(chunk);
            }
        }
    };
    // Stop reading the upstream now (a client that left should not keep generating).
    drop(upstream);

    let estimate = || Usage::estimate(billing.prompt_bytes, output_bytes);
    match end {
        StreamEnd::Done => {
            let charged = usage.unwrap_or_else(estimate);
            if client_wants_usage
                && tx
                    .send(sse_frame(
                        &usage_chunk(last_chunk.as_ref(), &charged).to_string(),
                    ))
                    .await
                    .is_err()
            {
                // Left before the end: what was generated is still billed below.
            }
            let last = match billing.settle(&attempt, charged).await {
                Ok(()) => sse_frame("[DONE]"),
                Err(e) => sse_frame(&e.body().to_string()),
            };
            let _ = tx.send(last).await;
        }
        StreamEnd::CreditExhausted => {
            tracing::info!(request_id = %billing.request_id, "stream ended: the tenant's credit would not cover more");
            let charged = partial_usage(usage, billing.prompt_bytes, output_bytes);
            let mut last = credit_exhausted_chunk(last_chunk.as_ref());
            if client_wants_usage {
                last["usage"] = openai_usage_json(&charged);
            }
            let _ = tx.send(sse_frame(&last.to_string())).await;
            let end = match billing.settle(&attempt, charged).await {
                Ok(()) => sse_frame("[DONE]"),
                Err(e) => sse_frame(&e.body().to_string()),
            };
            let _ = tx.send(end).await;
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
                let _ = tx.send(sse_frame(&e.body().to_string())).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_validation_names_the_problem() {
        let err = |v: Value| match parse_chat_request(&v) {
            Err(HubError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {:?}", other.map(|c| c.model)),
        };
        assert!(err(json!({"messages": [{"role": "user", "content": "hi"}]})).contains("`model`"));
        assert!(err(json!({"model": "a/b", "messages": []})).contains("`messages`"));
        assert!(
            err(json!({"model": "a/b", "messages": [{"role": "user"}], "stream": "yes"}))
                .contains("`stream`")
        );
        assert!(
            err(json!({"model": "a/b", "messages": [{"role": "user"}], "max_tokens": -1}))
                .contains("`max_tokens`")
        );
        let ok = parse_chat_request(&json!({"model": "a/b", "messages": [{"role": "user"}], "max_tokens": 50, "max_completion_tokens": 20})).unwrap();
        assert_eq!(ok.max_tokens, Some(20));
    }

    #[test]
    fn an_unfinished_stream_is_charged_at_least_the_text_sent() {
        let reported = Usage {
            input_tokens: 20,
            output_tokens: 1,
            ..Usage::default()
        };
        let charged = partial_usage(Some(reported), 100, 400);
        assert_eq!(
            (
                charged.input_tokens,
                charged.output_tokens,
                charged.estimated
            ),
            (20, 100, true)
        );
        let reported = Usage {
            input_tokens: 20,
            output_tokens: 500,
            ..Usage::default()
        };
        assert_eq!(partial_usage(Some(reported), 100, 400), reported);
        assert_eq!(partial_usage(None, 8, 4), Usage::estimate(8, 4));
    }

    #[test]
    fn a_chat_request_goes_upstream_with_exactly_the_decided_cap() {
        let price = ModelPrice {
            rates: domain::Rates::default(),
            max_output_tokens: 1000,
        };
        let caps = |request: &Value| {
            OUTPUT_CAP_FIELDS
                .iter()
                .filter_map(|f| request.get(*f).map(|v| (*f, v.clone())))
                .collect::<Vec<_>>()
        };
        let mut request = json!({"model": "m", "messages": []});
        cap_attempt(
            &mut request,
            Operation::Chat,
            ProviderKind::Anthropic,
            None,
            &price,
        );
        assert_eq!(caps(&request), vec![("max_tokens", json!(1000))]);
        let mut request = json!({"model": "m", "max_tokens": 1, "max_completion_tokens": 2000, "max_output_tokens": 3000});
        cap_attempt(
            &mut request,
            Operation::ChatStream,
            ProviderKind::OpenAi,
            Some(1),
            &price,
        );
        assert_eq!(caps(&request), vec![("max_completion_tokens", json!(1))]);
        let mut request = json!({"model": "m", "max_completion_tokens": 5000});
        cap_attempt(
            &mut request,
            Operation::Chat,
            ProviderKind::DeepSeek,
            Some(5000),
            &price,
        );
        assert_eq!(
            caps(&request),
            vec![("max_tokens", json!(1000))],
            "never above the model's cap"
        );
        let mut request = json!({"model": "m", "max_tokens": 5000});
        cap_attempt(
            &mut request,
            Operation::Messages,
            ProviderKind::Anthropic,
            Some(5000),
            &price,
        );
        assert_eq!(request["max_tokens"], 1000);
    }

    #[test]
    fn generated_bytes_counts_content_and_tool_arguments() {
        let chunk = json!({"choices": [{"delta": {"content": "abc", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]});
        assert_eq!(generated_bytes(&chunk), 6);
    }
}
