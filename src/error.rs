//! Every error a client can see, and its HTTP mapping, in one place.
//!
//! Bodies follow OpenAI's shape, `{"error":{"message","type","code"}}`, so the
//! official SDKs surface them. Messages never contain secrets: provider keys and
//! hub keys are never formatted into an error.

use crate::actors::ActorError;
pub(crate) use crate::auth::AuthFailure;
pub(crate) use crate::catalog::UnknownModel;
use crate::hub::HubOpError;
use crate::pipeline::PipelineError;
use crate::prices::PriceError;
use crate::providers::UpstreamError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use domain::price_book::PriceBookError;
use domain::tenant::TenantError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    #[error("this API key's role ({0}) may not do that")]
    PermissionDenied(&'static str),
    /// A key asked to give or take more power than its own.
    #[error("{0}")]
    BeyondOwnPower(String),
    /// The operator suspended the tenant: no model request is admitted.
    #[error("this tenant is suspended: {0}")]
    TenantSuspended(String),
    /// The tenant is closed: only its auditors (and the operator) may read.
    #[error("this tenant is closed")]
    TenantClosed,
    #[error("insufficient credits: {available} available, {required} required for this request{}; ask your administrator to add credits", output_cap_hint(*.max_tokens_that_fit, *.default_max_tokens))]
    InsufficientCredits {
        available: String,
        required: String,
        /// A chat request's largest `max_tokens` (per choice) the credit holds
        /// for; `None` when not even one token fits, or not a chat request.
        max_tokens_that_fit: Option<u64>,
        /// The output cap a chat request that names none is held for (the
        /// model's `max_output_tokens`); `None` for other requests.
        default_max_tokens: Option<u32>,
    },
    /// The key's scope expired (`expires_at`).
    #[error("this API key expired at {0}; ask your administrator for a new one or a later expiry")]
    KeyExpired(String),
    /// The key's scope does not list the model.
    #[error("{0}")]
    ModelNotAllowed(String),
    /// The key's budget for its period cannot cover the request's hold.
    #[error("{0}")]
    KeyBudgetExhausted(String),
    /// The key's project's budget for its period cannot cover the request's hold.
    #[error("{0}")]
    ProjectBudgetExhausted(String),
    /// A rate or concurrency scope of the key: retry after `retry_after_secs`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ModelNotFound(UnknownModel),
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("upstream provider error: {0}")]
    Upstream(String),
    #[error("the upstream provider rejected the hub's credential; the operator must fix the provider key")]
    UpstreamCredentialRejected,
    #[error("the upstream provider did not answer in time")]
    UpstreamTimeout,
    /// The upstream's answer passed the hub's size limit for its kind and was cut
    /// off (`Limits::upstream_*_answer_max_bytes`).
    #[error("the upstream provider's answer is larger than the limit of {limit_bytes} bytes and was cut off; ask for less in one request")]
    UpstreamAnswerTooLarge { limit_bytes: usize },
    #[error("upstream rate limit: {0}")]
    UpstreamRateLimited(String),
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a chat request refused for credit could still get through (docs/billing.md,
/// "A smaller output cap").
pub(crate) fn output_cap_hint(max_tokens_that_fit: Option<u64>, default: Option<u32>) -> String {
    let Some(default) = default else {
        return String::new();
    };
    let without = format!(
        "a request without `max_tokens` is held for this model's default cap of {default} tokens"
    );
    match max_tokens_that_fit {
        Some(n) => format!("; it would fit with `max_tokens` of at most {n} ({without})"),
        None => format!("; not even one output token would fit ({without})"),
    }
}

impl HubError {
    /// The error's `code` (`invalid_api_key`, `tenant_suspended`, …): the same
    /// on every wire format that has room for it.
    pub(crate) fn code(&self) -> &'static str {
        self.kind_and_code().1
    }

    fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            HubError::Unauthenticated(_) => ("authentication_error", "invalid_api_key"),
            HubError::PermissionDenied(_) | HubError::BeyondOwnPower(_) => {
                ("permission_error", "permission_denied")
            }
            HubError::KeyExpired(_) => ("authentication_error", "key_expired"),
            HubError::ModelNotAllowed(_) => ("permission_error", "model_not_allowed"),
            HubError::KeyBudgetExhausted(_) => ("insufficient_quota", "key_budget_exhausted"),
            HubError::ProjectBudgetExhausted(_) => {
                ("insufficient_quota", "project_budget_exhausted")
            }
            HubError::RateLimited { .. } => ("rate_limit_error", "rate_limited"),
            HubError::TenantSuspended(_) => ("permission_error", "tenant_suspended"),
            HubError::TenantClosed => ("permission_error", "tenant_closed"),
            HubError::InsufficientCredits { .. } => ("insufficient_quota", "insufficient_credits"),
            HubError::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            HubError::NotFound(_) => ("invalid_request_error", "not_found"),
            HubError::ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            HubError::PayloadTooLarge { .. } => ("invalid_request_error", "payload_too_large"),
            HubError::Conflict(_) => ("invalid_request_error", "conflict"),
            HubError::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            HubError::Upstream(_) => ("api_error", "upstream_error"),
            HubError::UpstreamCredentialRejected => ("api_error", "provider_credential_rejected"),
            HubError::UpstreamTimeout => ("api_error", "upstream_timeout"),
            HubError::UpstreamAnswerTooLarge { .. } => ("api_error", "upstream_answer_too_large"),
            HubError::UpstreamRateLimited(_) => ("rate_limit_error", "rate_limited"),
            HubError::Unavailable(_) => ("api_error", "unavailable"),
            HubError::Internal(_) => ("api_error", "internal_error"),
        }
    }

    pub(crate) fn body(&self) -> serde_json::Value {
        let (kind, code) = self.kind_and_code();
        let mut body = json!({"error": {"message": self.to_string(), "type": kind, "code": code}});
        if let HubError::InsufficientCredits {
            max_tokens_that_fit,
            default_max_tokens,
            ..
        } = self
        {
            if let Some(n) = max_tokens_that_fit {
                body["error"]["max_tokens_that_fit"] = json!(n);
            }
            if let Some(n) = default_max_tokens {
                body["error"]["default_max_tokens"] = json!(n);
            }
        }
        body
    }
}

impl ResponseError for HubError {
    fn status_code(&self) -> StatusCode {
        match self {
            HubError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            HubError::PermissionDenied(_)
            | HubError::BeyondOwnPower(_)
            | HubError::ModelNotAllowed(_)
            | HubError::TenantSuspended(_)
            | HubError::TenantClosed => StatusCode::FORBIDDEN,
            HubError::KeyExpired(_) => StatusCode::UNAUTHORIZED,
            HubError::InsufficientCredits { .. }
            | HubError::KeyBudgetExhausted(_)
            | HubError::ProjectBudgetExhausted(_) => StatusCode::PAYMENT_REQUIRED,
            HubError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            HubError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HubError::NotFound(_) | HubError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            HubError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HubError::Conflict(_) => StatusCode::CONFLICT,
            HubError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            HubError::Upstream(_)
            | HubError::UpstreamCredentialRejected
            | HubError::UpstreamAnswerTooLarge { .. } => StatusCode::BAD_GATEWAY,
            HubError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            HubError::UpstreamRateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            HubError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HubError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self, HubError::Internal(_) | HubError::Unavailable(_)) {
            tracing::error!(error = %self, "request failed");
        }
        self.response().json(self.body())
    }
}

impl HubError {
    /// The answer's status, with `retry-after` (seconds) when the error says
    /// when to retry. Every ingress builds its error answers from this.
    pub(crate) fn response(&self) -> actix_web::HttpResponseBuilder {
        let mut response = HttpResponse::build(self.status_code());
        if let HubError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            response.insert_header(("retry-after", retry_after_secs.to_string()));
        }
        response
    }
}

/// Errors of the payment webhook endpoint (`POST /webhooks/payments`): its own
/// two, and every hub error. Its own are a separate type so that code matching
/// every `HubError` (other protocols' error shapes) needs no arm for them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    /// The `AIGNE-Hub-Signature` header is missing, malformed or stale, or no
    /// signature in it matches a configured secret.
    #[error("webhook signature rejected: {0}")]
    InvalidSignature(&'static str),
    #[error("payment webhooks are not configured on this hub: set AIGNE_HUB_WEBHOOK_SECRET")]
    NotConfigured,
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl WebhookError {
    pub(crate) fn body(&self) -> serde_json::Value {
        let (kind, code) = match self {
            WebhookError::InvalidSignature(_) => ("authentication_error", "invalid_signature"),
            WebhookError::NotConfigured => ("api_error", "webhooks_not_configured"),
            WebhookError::Hub(e) => return e.body(),
        };
        json!({"error": {"message": self.to_string(), "type": kind, "code": code}})
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebhookError::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            WebhookError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            WebhookError::Hub(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            WebhookError::Hub(e) => e.error_response(),
            WebhookError::NotConfigured => {
                tracing::warn!("a payment webhook arrived but AIGNE_HUB_WEBHOOK_SECRET is not set");
                HttpResponse::build(self.status_code()).json(self.body())
            }
            WebhookError::InvalidSignature(_) => {
                HttpResponse::build(self.status_code()).json(self.body())
            }
        }
    }
}

impl From<TenantError> for HubError {
    fn from(e: TenantError) -> Self {
        match e {
            // A key naming a tenant that does not exist is just an unknown key.
            TenantError::TenantNotFound | TenantError::Unauthenticated => {
                HubError::Unauthenticated(AuthFailure::UnknownKey)
            }
            TenantError::KeyRevoked => HubError::Unauthenticated(AuthFailure::RevokedKey),
            TenantError::KeyExpired(at) => HubError::KeyExpired(at),
            TenantError::ModelNotAllowed { .. } => HubError::ModelNotAllowed(e.to_string()),
            TenantError::KeyBudgetExhausted { .. } => HubError::KeyBudgetExhausted(e.to_string()),
            TenantError::ProjectBudgetExhausted { .. } => {
                HubError::ProjectBudgetExhausted(e.to_string())
            }
            TenantError::UnknownProject(_) => HubError::NotFound(e.to_string()),
            TenantError::ProjectAlreadyExists(_)
            | TenantError::ProjectHasKeys { .. }
            | TenantError::TooManyProjects => {
                HubError::Conflict(e.to_string())
            }
            TenantError::RateLimited {
                retry_after_secs, ..
            } => HubError::RateLimited {
                message: e.to_string(),
                retry_after_secs,
            },
            TenantError::PermissionDenied { role } => HubError::PermissionDenied(role),
            TenantError::BeyondOwnPower { .. } => HubError::BeyondOwnPower(e.to_string()),
            TenantError::TenantSuspended { reason } => HubError::TenantSuspended(reason),
            TenantError::TenantClosed => HubError::TenantClosed,
            TenantError::InsufficientCredits {
                available,
                required,
                advice,
            } => HubError::InsufficientCredits {
                available,
                required,
                // Output tokens of all choices together; `pipeline::admit` makes
                // them per choice, as a client sets `max_tokens`.
                max_tokens_that_fit: advice
                    .map(|a| a.output_tokens_that_fit)
                    .filter(|n| *n >= 1),
                default_max_tokens: advice.map(|a| a.default_max_tokens),
            },
            TenantError::InvalidLabel { .. }
            | TenantError::InvalidScopes(_)
            | TenantError::ExpiryNotInFuture
            | TenantError::ReservedIdempotencyKey(_) => HubError::BadRequest(e.to_string()),
            TenantError::UnknownKey(_) => HubError::NotFound(e.to_string()),
            TenantError::TenantAlreadyExists
            | TenantError::KeyAlreadyExists(_)
            | TenantError::IdempotencyKeyReused(_)
            | TenantError::HoldAlreadyExists(_)
            | TenantError::UnknownHold(_)
            // A payment event id is permanent: another body under it is a conflict.
            | TenantError::PaymentEventReused(_)
            | TenantError::PaymentAmountMismatch(_)
            // A refund that arrived before its payment: the sender retries later.
            | TenantError::UnknownPayment(_)
            | TenantError::AlreadyClosed
            | TenantError::HoldsOpen { .. } => HubError::Conflict(e.to_string()),
        }
    }
}

impl From<ActorError> for WebhookError {
    fn from(e: ActorError) -> Self {
        WebhookError::Hub(e.into())
    }
}

/// What a client is told when the store failed. The cause (a driver's words
/// about pools, sockets and tables) is logged for the operator, never sent.
pub(crate) const LEDGER_UNAVAILABLE: &str = "the ledger is unavailable, retry";

impl HubError {
    /// A 503 for a store failure: logs `cause`, answers [`LEDGER_UNAVAILABLE`].
    pub(crate) fn ledger_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "the store failed");
        HubError::Unavailable(LEDGER_UNAVAILABLE.into())
    }
}

impl From<crate::store::StoreError> for HubError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::DuplicateName(_) => HubError::Conflict(e.to_string()),
            crate::store::StoreError::Conflict => {
                HubError::Unavailable("too many concurrent writers for this tenant, retry".into())
            }
            other => HubError::ledger_unavailable(&other),
        }
    }
}

impl From<AuthFailure> for HubError {
    fn from(e: AuthFailure) -> Self {
        HubError::Unauthenticated(e)
    }
}

impl From<ActorError> for HubError {
    fn from(e: ActorError) -> Self {
        match e {
            ActorError::Refused(e) => e.into(),
            ActorError::TenantNotFound => HubError::NotFound(e.to_string()),
            ActorError::Busy
            | ActorError::TooManyTenants
            | ActorError::Stopped
            | ActorError::Unreachable => HubError::Unavailable(e.to_string()),
            // The actor logged the cause with its tenant.
            ActorError::LedgerUnavailable(_) => HubError::Unavailable(LEDGER_UNAVAILABLE.into()),
            // The store's words stay in the operator's log, as for every
            // store failure.
            ActorError::RefusalUnverified(cause) => HubError::ledger_unavailable(&cause),
            ActorError::Store(e) => e.into(),
        }
    }
}

impl From<PriceBookError> for HubError {
    fn from(e: PriceBookError) -> Self {
        match e {
            PriceBookError::Invalid(message) => HubError::BadRequest(message),
            stale @ PriceBookError::StaleImport { .. } => HubError::Conflict(stale.to_string()),
            unknown @ PriceBookError::UnknownAlias(_) => HubError::NotFound(unknown.to_string()),
        }
    }
}

impl From<PriceError> for HubError {
    fn from(e: PriceError) -> Self {
        match e {
            PriceError::Invalid(message) => HubError::BadRequest(message),
            PriceError::Book(e) => e.into(),
            PriceError::UnknownProvider(_) => HubError::NotFound(e.to_string()),
            PriceError::KeptChanging => HubError::Conflict(e.to_string()),
            PriceError::NotVisible => HubError::Internal(e.to_string()),
            PriceError::Store(e) => e.into(),
        }
    }
}

impl From<HubOpError> for HubError {
    fn from(e: HubOpError) -> Self {
        match e {
            HubOpError::Invalid(message) => HubError::BadRequest(message),
            HubOpError::NotFound(message) => HubError::NotFound(message),
            HubOpError::GrantNotRecorded | HubOpError::KeyNotShown => {
                HubError::Internal(e.to_string())
            }
            HubOpError::CredentialEncoding(cause) => HubError::Internal(cause.to_string()),
            HubOpError::Actor(e) => e.into(),
            HubOpError::Store(e) => e.into(),
        }
    }
}

impl From<PipelineError> for HubError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::ModelNotFound(unknown) => HubError::ModelNotFound(unknown),
            PipelineError::HoldLost(_) => HubError::Unavailable(e.to_string()),
            PipelineError::Actor(e) => e.into(),
            PipelineError::Upstream(e) => e.into(),
            PipelineError::Store(e) => e.into(),
        }
    }
}

/// Kept here rather than in `providers`, so that the providers need not know the
/// HTTP error they end up as.
impl From<UpstreamError> for HubError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout => HubError::UpstreamTimeout,
            UpstreamError::AnswerTooLarge { limit_bytes } => {
                HubError::UpstreamAnswerTooLarge { limit_bytes }
            }
            UpstreamError::Status {
                status: 400 | 404 | 413 | 422,
                ..
            } => HubError::BadRequest(format!("the provider refused the request: {e}")),
            UpstreamError::Status {
                status: 401 | 403, ..
            } => HubError::UpstreamCredentialRejected,
            UpstreamError::Status { status: 429, .. } => {
                HubError::UpstreamRateLimited(e.to_string())
            }
            UpstreamError::Refused(message) => HubError::BadRequest(message),
            UpstreamError::Unsupported { .. } => HubError::BadRequest(e.to_string()),
            other => HubError::Upstream(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use std::error::Error as _;
    use std::sync::Arc;

    fn answer(e: impl Into<HubError>) -> (u16, serde_json::Value) {
        let e = e.into();
        (e.status_code().as_u16(), e.body())
    }

    fn message(body: &serde_json::Value) -> &str {
        body["error"]["message"].as_str().unwrap()
    }

    #[test]
    fn a_store_conflict_is_a_503_asking_to_retry() {
        let (status, body) = answer(StoreError::Conflict);
        assert_eq!(status, 503);
        assert_eq!(
            message(&body),
            "service temporarily unavailable: too many concurrent writers for this tenant, retry"
        );
    }

    #[test]
    fn a_database_failure_is_a_503_without_the_drivers_words() {
        let (status, body) = answer(StoreError::Sqlx(sqlx::Error::PoolTimedOut));
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(
            message(&body),
            format!("service temporarily unavailable: {LEDGER_UNAVAILABLE}")
        );
    }

    #[test]
    fn a_duplicate_provider_name_is_a_409() {
        let (status, _) = answer(StoreError::DuplicateName("openai".into()));
        assert_eq!(status, 409);
    }

    #[test]
    fn actor_failures_keep_their_statuses() {
        let store_failed = || Arc::new(StoreError::Sqlx(sqlx::Error::PoolTimedOut));
        let cases = [
            (ActorError::Busy, 503, format!("service temporarily unavailable: {}", crate::actors::tenant::TENANT_BUSY)),
            (ActorError::TenantNotFound, 404, "tenant not found".to_string()),
            (
                ActorError::LedgerUnavailable(store_failed()),
                503,
                format!("service temporarily unavailable: {LEDGER_UNAVAILABLE}"),
            ),
            // Not the store's words: they stay in the operator's log.
            (
                ActorError::RefusalUnverified(store_failed()),
                503,
                format!("service temporarily unavailable: {LEDGER_UNAVAILABLE}"),
            ),
            (
                ActorError::Refused(TenantError::PermissionDenied { role: "viewer" }),
                403,
                "this API key's role (viewer) may not do that".to_string(),
            ),
            (
                ActorError::Refused(TenantError::TenantNotFound),
                401,
                AuthFailure::UnknownKey.to_string(),
            ),
            (
                ActorError::Store(StoreError::Conflict),
                503,
                "service temporarily unavailable: too many concurrent writers for this tenant, retry".to_string(),
            ),
        ];
        for (error, status, text) in cases {
            let (got_status, body) = answer(error);
            assert_eq!((got_status, message(&body)), (status, text.as_str()));
        }
    }

    #[test]
    fn a_store_failure_stays_the_cause_of_the_actors_error() {
        let error =
            ActorError::LedgerUnavailable(Arc::new(StoreError::Sqlx(sqlx::Error::PoolTimedOut)));
        let store = error.source().expect("the store's error is the cause");
        assert!(store.to_string().starts_with("database error: "));
        let driver = store
            .source()
            .expect("the driver's error is the store's cause");
        assert!(driver.downcast_ref::<sqlx::Error>().is_some());
    }

    /// Every tenant refusal, one of each kind.
    fn tenant_errors() -> Vec<TenantError> {
        let request = domain::RequestId::new_random();
        let key = domain::KeyId(uuid::Uuid::nil());
        vec![
            TenantError::TenantNotFound,
            TenantError::TenantAlreadyExists,
            TenantError::InvalidLabel {
                field: "name",
                max_chars: 64,
            },
            TenantError::Unauthenticated,
            TenantError::KeyRevoked,
            TenantError::PermissionDenied { role: "viewer" },
            TenantError::UnknownKey(key),
            TenantError::KeyAlreadyExists(key),
            TenantError::IdempotencyKeyReused("g".into()),
            TenantError::InsufficientCredits {
                available: "0".into(),
                required: "1".into(),
                advice: None,
            },
            TenantError::HoldAlreadyExists(request),
            TenantError::UnknownHold(request),
            TenantError::ExpiryNotInFuture,
            TenantError::ReservedIdempotencyKey("payment:x".into()),
            TenantError::PaymentEventReused("evt".into()),
            TenantError::PaymentAmountMismatch("pay".into()),
            TenantError::UnknownPayment("pay".into()),
            TenantError::TenantSuspended {
                reason: "unpaid".into(),
            },
            TenantError::TenantClosed,
            TenantError::AlreadyClosed,
            TenantError::HoldsOpen { count: 2 },
        ]
    }

    #[test]
    fn the_actors_refusal_and_conflict_tests_agree_with_the_http_statuses() {
        for e in tenant_errors() {
            let status = HubError::from(e.clone()).status_code().as_u16();
            let actor = ActorError::Refused(e);
            assert_eq!(actor.is_conflict(), status == 409, "{actor:?}");
            assert_eq!(actor.is_refusal(), matches!(status, 401..=404), "{actor:?}");
        }
    }

    #[test]
    fn a_suspended_or_closed_tenant_is_a_403_with_its_own_code() {
        let (status, body) = answer(ActorError::Refused(TenantError::TenantSuspended {
            reason: "unpaid invoice".into(),
        }));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("tenant_suspended"))
        );
        assert_eq!(message(&body), "this tenant is suspended: unpaid invoice");
        let (status, body) = answer(ActorError::Refused(TenantError::TenantClosed));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("tenant_closed"))
        );
        assert_eq!(
            answer(ActorError::Refused(TenantError::HoldsOpen { count: 1 })).0,
            409
        );
        assert_eq!(
            answer(ActorError::Refused(TenantError::AlreadyClosed)).0,
            409
        );
    }

    #[test]
    fn pipeline_failures_keep_their_statuses() {
        let hold_gone = PipelineError::HoldLost(ActorError::Refused(TenantError::UnknownHold(
            domain::RequestId::new_random(),
        )));
        let (status, body) = answer(hold_gone);
        assert_eq!(status, 503);
        assert_eq!(
            message(&body),
            "service temporarily unavailable: this request's credit hold is no longer open, so it was not charged; retry"
        );

        let unknown = PipelineError::ModelNotFound(UnknownModel {
            model: "gpt-9".into(),
            suggestions: vec!["openai/gpt-4o".into()],
        });
        let (status, body) = answer(unknown);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("model_not_found"))
        );

        let timeout = PipelineError::Upstream(UpstreamError::Timeout);
        assert_eq!(answer(timeout).0, 504);

        let store = PipelineError::Store(StoreError::Sqlx(sqlx::Error::PoolClosed));
        let (status, body) = answer(store);
        assert_eq!(status, 503);
        assert!(message(&body).ends_with(LEDGER_UNAVAILABLE));
    }

    #[test]
    fn a_402_shows_only_advice_that_fits_a_token() {
        let short = |fit| {
            PipelineError::Actor(ActorError::Refused(TenantError::InsufficientCredits {
                available: "0.1".into(),
                required: "1".into(),
                advice: Some(domain::OutputCapAdvice {
                    output_tokens_that_fit: fit,
                    default_max_tokens: 4096,
                }),
            }))
        };
        let (status, body) = answer(short(0));
        assert_eq!(status, 402);
        assert!(body["error"].get("max_tokens_that_fit").is_none());
        assert_eq!(body["error"]["default_max_tokens"], 4096);
        let (_, body) = answer(short(12));
        assert_eq!(body["error"]["max_tokens_that_fit"], 12);
    }

    #[test]
    fn price_and_hub_operation_failures_keep_their_statuses() {
        assert_eq!(
            answer(PriceError::Invalid("input_per_mtok: bad".into())).0,
            400
        );
        assert_eq!(answer(PriceError::UnknownProvider("acme".into())).0, 404);
        assert_eq!(answer(PriceError::KeptChanging).0, 409);
        assert_eq!(answer(PriceError::NotVisible).0, 500);
        assert_eq!(
            answer(PriceError::Book(PriceBookError::UnknownAlias("x".into()))).0,
            404
        );
        assert_eq!(answer(HubOpError::Invalid("weight".into())).0, 400);
        assert_eq!(answer(HubOpError::NotFound("provider".into())).0, 404);
        let (status, body) = answer(HubOpError::GrantNotRecorded);
        assert_eq!(
            (status, message(&body)),
            (500, "internal error: grant not recorded")
        );
        assert_eq!(
            answer(HubOpError::Actor(ActorError::Refused(
                TenantError::TenantAlreadyExists
            )))
            .0,
            409
        );
    }

    #[test]
    fn the_drivers_error_stays_the_root_cause_through_the_pipeline() {
        let error = PipelineError::Actor(ActorError::Store(StoreError::Sqlx(
            sqlx::Error::PoolTimedOut,
        )));
        let mut root: &dyn std::error::Error = &error;
        while let Some(cause) = root.source() {
            root = cause;
        }
        assert!(root.downcast_ref::<sqlx::Error>().is_some(), "{root}");
    }
}
