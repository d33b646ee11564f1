//! Anthropic protocol: not implemented yet, so the kind is refused when a provider is
//! added (see `ProviderKind::is_available`).

use super::{ChatOutcome, ChatStream, ProviderApi, UpstreamCall, UpstreamError};
use async_trait::async_trait;
use serde_json::Value;

/// Whether this protocol passes the conformance suite.
pub const AVAILABLE: bool = false;

pub struct Anthropic;

#[async_trait]
impl ProviderApi for Anthropic {
    async fn chat(
        &self,
        call: &UpstreamCall<'_>,
        _request: &Value,
    ) -> Result<ChatOutcome, UpstreamError> {
        Err(UpstreamError::Unsupported {
            provider: call.provider.kind.as_str(),
            capability: "chat (not implemented yet)",
        })
    }

    async fn chat_stream(
        &self,
        call: &UpstreamCall<'_>,
        _request: &Value,
    ) -> Result<ChatStream, UpstreamError> {
        Err(UpstreamError::Unsupported {
            provider: call.provider.kind.as_str(),
            capability: "chat (not implemented yet)",
        })
    }
}
