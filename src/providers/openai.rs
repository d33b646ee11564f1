//! The OpenAI wire format, spoken by OpenAI and by the OpenAI-compatible
//! providers (DeepSeek, xAI, OpenRouter, Doubao/Volcengine Ark, Poe, and Ollama's
//! compatibility API). One implementation; quirks are per kind below.
//!
//! One exception: Ollama's embeddings go to its native `POST {base}/api/embed`
//! (`{"model","input":[…]}` → `{"model","embeddings":[[…]],"prompt_eval_count"}`),
//! since its OpenAI-compatible `/v1/embeddings` reports no token usage and the
//! native API does (`prompt_eval_count`).
//!
//! Usage facts relied on: `prompt_tokens` includes cached tokens
//! (`prompt_tokens_details.cached_tokens`; DeepSeek reports
//! `prompt_cache_hit_tokens`/`prompt_cache_miss_tokens` instead),
//! `completion_tokens` includes reasoning tokens, and a stream reports usage only
//! when asked with `stream_options.include_usage`, in a final chunk that may still
//! carry `choices`.

use super::{
    embedding_texts, embedding_vector, embeddings_list, error_dot_message, wants_base64_embeddings,
    AnswerKind, ChatOutcome, ChatStream, EmbeddingsOutcome, ImagesOutcome, Provider, ProviderApi,
    ProviderKind, StreamItem, UpstreamCall, UpstreamError,
};
use async_trait::async_trait;
use domain::Usage;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

pub struct OpenAiCompatible;

/// Reads usage from an OpenAI-style `usage` object; `None` if absent or malformed.
pub fn usage_from_openai(usage: &Value) -> Option<Usage> {
    let prompt_tokens = usage.get("prompt_tokens")?.as_u64()?;
    let output_tokens = usage
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let detail = |path: &str| usage.pointer(path).and_then(Value::as_u64);
    // OpenAI counts cached tokens inside prompt_tokens; the ledger keeps them apart.
    let cached = detail("/prompt_tokens_details/cached_tokens")
        .or_else(|| detail("/prompt_cache_hit_tokens"))
        .unwrap_or(0);
    let cache_read_tokens = cached.min(prompt_tokens);
    Some(Usage {
        input_tokens: prompt_tokens - cache_read_tokens,
        cache_read_tokens,
        cache_write_tokens: 0,
        output_tokens,
        reasoning_tokens: detail("/completion_tokens_details/reasoning_tokens").unwrap_or(0),
        estimated: false,
        images: 0,
    })
}

fn chat_path(kind: ProviderKind) -> &'static str {
    match kind {
        // Ollama's base URL is the server root; its OpenAI API lives under /v1.
        ProviderKind::Ollama => "v1/chat/completions",
        _ => "chat/completions",
    }
}

fn post(call: &UpstreamCall<'_>, path: &str, body: &Value) -> reqwest::RequestBuilder {
    let provider: &Provider = call.provider;
    let mut request = call.http.client().post(provider.endpoint(path)).json(body);
    if !provider.api_key().is_empty() {
        request = request.bearer_auth(provider.api_key());
    }
    request
}

/// Turns one streamed OpenAI chunk into stream items: its usage (if any) and the
/// chunk itself without `usage` (dropped when only usage was left).
fn chunk_items(mut chunk: Value) -> Result<Vec<StreamItem>, UpstreamError> {
    if let Some(error) = chunk.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("stream error")
            .to_string();
        return Err(UpstreamError::Status {
            status: 502,
            code: super::redact::error_code(&chunk),
            message,
        });
    }
    let mut items = Vec::with_capacity(2);
    let usage = chunk.as_object_mut().and_then(|o| o.remove("usage"));
    if let Some(usage) = usage
        .as_ref()
        .filter(|u| !u.is_null())
        .and_then(usage_from_openai)
    {
        items.push(StreamItem::Usage(usage));
    }
    let has_choices = chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if has_choices {
        items.insert(0, StreamItem::Chunk(chunk));
    }
    Ok(items)
}

/// The message of an Ollama error body: `{"error": "…"}` (a string), or OpenAI's
/// shape from proxies in front of it.
fn ollama_error_message(body: &Value) -> Option<String> {
    body.get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| error_dot_message(body))
}

/// The native `/api/embed` body for an OpenAI embeddings request; Ollama's own
/// options (`truncate`, `keep_alive`, `options`) and `dimensions` pass through.
pub fn ollama_embed_request(request: &Value, texts: &[String]) -> Value {
    let mut body =
        json!({"model": request.get("model").cloned().unwrap_or(Value::Null), "input": texts});
    for field in ["dimensions", "truncate", "keep_alive", "options"] {
        if let Some(value) = request.get(field).filter(|v| !v.is_null()) {
            body[field] = value.clone();
        }
    }
    body
}

/// An OpenAI embeddings answer from Ollama's `/api/embed` answer for `texts`; its
/// `prompt_eval_count` is the usage (an estimate from the texts, flagged, if it
/// is missing).
pub fn ollama_embed_to_openai(
    answer: &Value,
    model: &str,
    texts: &[String],
    base64: bool,
) -> Result<EmbeddingsOutcome, UpstreamError> {
    let inputs = texts.len();
    let vectors = answer
        .get("embeddings")
        .and_then(Value::as_array)
        .filter(|e| e.len() == inputs)
        .ok_or_else(|| {
            UpstreamError::Protocol("/api/embed answered the wrong number of embeddings".into())
        })?
        .iter()
        .map(|v| v.as_array().and_then(|v| embedding_vector(v, base64)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            UpstreamError::Protocol("/api/embed answered a malformed embedding".into())
        })?;
    let usage = match answer.get("prompt_eval_count").and_then(Value::as_u64) {
        Some(tokens) => Usage {
            input_tokens: tokens,
            ..Usage::default()
        },
        None => Usage::estimate(texts.iter().map(|t| t.len() as u64).sum(), 0),
    };
    let model = answer.get("model").and_then(Value::as_str).unwrap_or(model);
    Ok(EmbeddingsOutcome {
        body: embeddings_list(model, vectors, usage.input_tokens),
        usage: Some(usage),
    })
}

async fn ollama_embeddings(
    call: &UpstreamCall<'_>,
    request: &Value,
) -> Result<EmbeddingsOutcome, UpstreamError> {
    let texts = embedding_texts(request, "ollama")?;
    let model = request.get("model").and_then(Value::as_str).unwrap_or("");
    let body = ollama_embed_request(request, &texts);
    let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
    let exchange = async {
        let response = call
            .http
            .send(post(call, "api/embed", &body), ollama_error_message)
            .await?;
        let answer = call
            .http
            .json_body(response, AnswerKind::Embeddings)
            .await?;
        ollama_embed_to_openai(&answer, model, &texts, wants_base64_embeddings(request))
    };
    tokio::time::timeout(total, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

#[async_trait]
impl ProviderApi for OpenAiCompatible {
    async fn chat(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatOutcome, UpstreamError> {
        let total = Duration::from_millis(call.http.limits.upstream_total_timeout_ms);
        let exchange = async {
            let response = call
                .http
                .send(
                    post(call, chat_path(call.provider.kind), request),
                    error_dot_message,
                )
                .await?;
            let body = call.http.json_body(response, AnswerKind::Chat).await?;
            let usage = body.get("usage").and_then(usage_from_openai);
            Ok(ChatOutcome { body, usage })
        };
        tokio::time::timeout(total, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn chat_stream(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ChatStream, UpstreamError> {
        let mut request = request.clone();
        request["stream"] = json!(true);
        // Always ask for usage: billing settles from it.
        request["stream_options"] = json!({"include_usage": true});
        let response = call
            .http
            .send(
                post(call, chat_path(call.provider.kind), &request),
                error_dot_message,
            )
            .await?;
        let items = call
            .http
            .sse_events(response)
            .take_while(|event| std::future::ready(!matches!(event, Ok(e) if e.data == "[DONE]")))
            .filter_map(|event| async move {
                match event {
                    Err(e) => Some(vec![Err(e)]),
                    Ok(event) => match serde_json::from_str::<Value>(&event.data) {
                        // Keep-alive or vendor comments that are not JSON carry nothing.
                        Err(_) => None,
                        Ok(chunk) => Some(match chunk_items(chunk) {
                            Ok(items) => items.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(e)],
                        }),
                    },
                }
            })
            .flat_map(futures_util::stream::iter);
        Ok(Box::pin(items))
    }

    async fn embeddings(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<EmbeddingsOutcome, UpstreamError> {
        let kind = call.provider.kind;
        if !matches!(
            kind,
            ProviderKind::OpenAi
                | ProviderKind::Ollama
                | ProviderKind::Doubao
                | ProviderKind::OpenRouter
        ) {
            return Err(UpstreamError::Unsupported {
                provider: kind.as_str(),
                capability: "embeddings",
            });
        }
        if kind == ProviderKind::Ollama {
            return ollama_embeddings(call, request).await;
        }
        let response = call
            .http
            .send(post(call, "embeddings", request), error_dot_message)
            .await?;
        let body = call
            .http
            .json_body(response, AnswerKind::Embeddings)
            .await?;
        let usage = body.get("usage").and_then(usage_from_openai);
        Ok(EmbeddingsOutcome { body, usage })
    }

    async fn images(
        &self,
        call: &UpstreamCall<'_>,
        request: &Value,
    ) -> Result<ImagesOutcome, UpstreamError> {
        let kind = call.provider.kind;
        if !matches!(
            kind,
            ProviderKind::OpenAi | ProviderKind::Xai | ProviderKind::Doubao
        ) {
            return Err(UpstreamError::Unsupported {
                provider: kind.as_str(),
                capability: "image generation",
            });
        }
        let response = call
            .http
            .send(post(call, "images/generations", request), error_dot_message)
            .await?;
        let body = call.http.json_body(response, AnswerKind::Images).await?;
        let images = body
            .get("data")
            .and_then(Value::as_array)
            .map_or(0, |d| d.len() as u64);
        Ok(ImagesOutcome { body, images })
    }
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
        assert!(usage_from_openai(&json!({"completion_tokens": 1})).is_none());
    }

    #[test]
    fn deepseek_cache_hits_are_cache_reads() {
        let u = usage_from_openai(&json!({
            "prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34,
            "prompt_cache_hit_tokens": 24, "prompt_cache_miss_tokens": 6
        }))
        .unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.output_tokens),
            (6, 24, 4)
        );
    }

    #[test]
    fn final_chunk_with_choices_and_usage_yields_both() {
        let items = chunk_items(json!({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})).unwrap();
        assert!(matches!(&items[0], StreamItem::Chunk(c) if c.get("usage").is_none()));
        assert!(matches!(&items[1], StreamItem::Usage(u) if u.input_tokens == 2));
        assert!(chunk_items(json!({"choices": [], "usage": null}))
            .unwrap()
            .is_empty());
    }
}
