//! Upstream AI providers.
//!
//! This gateway speaks to OpenAI-compatible upstreams only
//! ([`openai`]); every provider module maps its wire format to the shared
//! [`ChatOutcome`] / [`SseEvent`] shapes and its errors to [`UpstreamError`], so
//! that billing never depends on which provider answered.

pub mod openai;
pub mod sse;

use crate::config::Limits;
use crate::crypto::Secret;
use domain::Usage;
use std::str::FromStr;
use std::time::Duration;

/// The protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
        }
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(ProviderKind::OpenAi),
            other => Err(format!("unknown provider kind {other:?}: this hub supports \"openai\" (OpenAI-compatible upstreams)")),
        }
    }
}

/// A configured upstream, with its credential decrypted for use.
#[derive(Clone, Debug)]
pub struct Provider {
    pub provider_id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("could not reach the upstream: {0}")]
    Connect(String),
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("upstream sent something unexpected: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// Removes the provider's key from any text the upstream echoed back.
    pub fn redacted(self, key: &Secret) -> Self {
        let scrub = |s: String| {
            if key.expose().len() >= 8 {
                s.replace(key.expose(), "***")
            } else {
                s
            }
        };
        match self {
            UpstreamError::Status { status, message } => UpstreamError::Status {
                status,
                message: scrub(message),
            },
            UpstreamError::Protocol(m) => UpstreamError::Protocol(scrub(m)),
            UpstreamError::Connect(m) => UpstreamError::Connect(scrub(m)),
            other => other,
        }
    }
}

impl From<UpstreamError> for crate::error::HubError {
    fn from(e: UpstreamError) -> Self {
        use crate::error::HubError;
        match e {
            UpstreamError::Timeout => HubError::UpstreamTimeout,
            UpstreamError::Status {
                status: 400 | 404 | 422,
                message,
            } => HubError::BadRequest(format!("the provider refused the request: {message}")),
            UpstreamError::Status {
                status: 401 | 403, ..
            } => HubError::UpstreamCredentialRejected,
            UpstreamError::Status {
                status: 429,
                message,
            } => HubError::UpstreamRateLimited(message),
            other => HubError::Upstream(other.to_string()),
        }
    }
}

/// A non-streaming answer: the upstream's JSON as is, and the usage it reported.
pub struct ChatOutcome {
    pub body: serde_json::Value,
    pub usage: Option<Usage>,
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The HTTP client all upstream calls share, with the named timeouts.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    pub limits: Limits,
}

impl Upstream {
    pub fn new(limits: &Limits) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(limits.upstream_connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            limits: limits.clone(),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Maps a reqwest failure without ever printing the request (headers hold the key).
pub fn transport_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Connect("connection failed".into())
    } else {
        UpstreamError::Protocol(e.without_url().to_string())
    }
}
