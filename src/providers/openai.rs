//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`).
//!
//! Usage facts this module relies on: `prompt_tokens` includes cached tokens
//! (`prompt_tokens_details.cached_tokens`), `completion_tokens` includes reasoning
//! tokens, and a stream reports usage only when asked with
//! `stream_options.include_usage`, in a final chunk.

use super::{transport_error, ChatOutcome, Provider, Upstream, UpstreamError};
use domain::Usage;
use serde_json::Value;
use std::time::Duration;

/// Longest upstream error text passed on to the client.
const ERROR_MESSAGE_MAX_CHARS: usize = 500;

fn endpoint(provider: &Provider) -> String {
    format!(
        "{}/chat/completions",
        provider.base_url.trim_end_matches('/')
    )
}

/// Reads usage from an OpenAI `usage` object; `None` if absent or malformed.
pub fn usage_from_openai(usage: &Value) -> Option<Usage> {
    let prompt_tokens = usage.get("prompt_tokens")?.as_u64()?;
    let output_tokens = usage.get("completion_tokens")?.as_u64()?;
    let detail = |path: &str| usage.pointer(path).and_then(Value::as_u64).unwrap_or(0);
    // OpenAI counts cached tokens inside prompt_tokens; the ledger keeps them apart.
    let cache_read_tokens = detail("/prompt_tokens_details/cached_tokens").min(prompt_tokens);
    Some(Usage {
        input_tokens: prompt_tokens - cache_read_tokens,
        cache_read_tokens,
        cache_write_tokens: 0,
        output_tokens,
        reasoning_tokens: detail("/completion_tokens_details/reasoning_tokens"),
        estimated: false,
    })
}

async fn error_from_response(response: reqwest::Response) -> UpstreamError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or(text);
    UpstreamError::Status {
        status,
        message: message.chars().take(ERROR_MESSAGE_MAX_CHARS).collect(),
    }
}

async fn send(
    upstream: &Upstream,
    provider: &Provider,
    body: &Value,
) -> Result<reqwest::Response, UpstreamError> {
    let request = upstream
        .client()
        .post(endpoint(provider))
        .bearer_auth(provider.api_key.expose())
        .json(body)
        .send();
    let first_byte = Duration::from_millis(upstream.limits.upstream_first_byte_timeout_ms);
    let response = tokio::time::timeout(first_byte, request)
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(transport_error)?;
    if !response.status().is_success() {
        return Err(error_from_response(response).await);
    }
    Ok(response)
}

/// A non-streaming completion.
pub async fn chat(
    upstream: &Upstream,
    provider: &Provider,
    body: &Value,
) -> Result<ChatOutcome, UpstreamError> {
    let total = Duration::from_millis(upstream.limits.upstream_total_timeout_ms);
    let exchange = async {
        let response = send(upstream, provider, body).await?;
        let bytes = response.bytes().await.map_err(transport_error)?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Protocol(format!("response is not JSON: {e}")))?;
        let usage = body.get("usage").and_then(usage_from_openai);
        Ok(ChatOutcome { body, usage })
    };
    tokio::time::timeout(total, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// Starts a streaming completion; the caller reads the SSE body.
pub async fn chat_stream(
    upstream: &Upstream,
    provider: &Provider,
    body: &Value,
) -> Result<reqwest::Response, UpstreamError> {
    send(upstream, provider, body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_reads_cached_and_reasoning_details() {
        let u = usage_from_openai(&json!({
            "prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 5},
            "completion_tokens_details": {"reasoning_tokens": 3}
        }))
        .unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.reasoning_tokens
            ),
            (15, 9, 5, 3)
        );
        assert!(usage_from_openai(&json!({"prompt_tokens": 1})).is_none());
    }
}
