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

use super::wire::{lenient, present, read_or_default};
use super::{
    embedding_texts, embedding_vector, embeddings_list, error_dot_message, wants_base64_embeddings,
    AnswerKind, ChatOutcome, ChatStream, EmbeddingsOutcome, ImagesOutcome, Provider, ProviderApi,
    ProviderKind, StreamItem, UpstreamCall, UpstreamError,
};
use async_trait::async_trait;
use domain::Usage;
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::time::Duration;

pub(crate) struct OpenAiCompatible;

// ---------------------------------------------------------------------------
// Wire shapes. Requests and answers pass through as they came; these read (and,
// for streams, add) only the fields the hub itself needs, leniently (see
// `super::wire`): a field of the wrong type counts as absent.

/// An OpenAI-style `usage` object (DeepSeek's cache fields included).
#[derive(Default, Deserialize)]
struct OpenAiUsage {
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionTokensDetails {
    #[serde(default, deserialize_with = "lenient")]
    reasoning_tokens: Option<u64>,
}

/// The usage of an answer (the rest passes through unread).
#[derive(Default, Deserialize)]
struct AnswerUsage {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<OpenAiUsage>,
}

/// What the hub reads of a streamed chunk (which passes on otherwise as it came).
#[derive(Default, Deserialize)]
struct ChunkView {
    /// Present at all, the chunk is an error.
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    choices: Option<Vec<IgnoredAny>>,
}

/// The `error` of an error body or chunk.
#[derive(Default, Deserialize)]
struct ErrorDetail {
    #[serde(default, deserialize_with = "lenient")]
    message: Option<String>,
}

/// A chat request sent for a stream: the client's fields as they came, with the
/// two the hub sets.
#[derive(Serialize)]
struct StreamingChatRequest {
    #[serde(flatten)]
    fields: Map<String, Value>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The fields of an embeddings request Ollama's native API reads; its own
/// options pass through as given.
#[derive(Default, Deserialize)]
struct OllamaEmbedOptions {
    #[serde(default)]
    model: Value,
    #[serde(default)]
    dimensions: Option<Value>,
    #[serde(default)]
    truncate: Option<Value>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    options: Option<Value>,
}

/// An `/api/embed` request.
#[derive(Serialize)]
struct OllamaEmbedRequest<'a> {
    model: Value,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncate: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<Value>,
}

/// An `/api/embed` answer.
#[derive(Default, Deserialize)]
struct OllamaEmbedAnswer {
    #[serde(default, deserialize_with = "lenient")]
    embeddings: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_eval_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
}

/// An Ollama error body: `{"error": "…"}`, or OpenAI's shape from proxies.
#[derive(Default, Deserialize)]
struct OllamaErrorBody {
    #[serde(default, deserialize_with = "lenient")]
    error: Option<OllamaError>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OllamaError {
    Text(String),
    Detail(ErrorDetail),
}

/// An images answer: only how many images it holds is read.
#[derive(Default, Deserialize)]
struct ImagesAnswer {
    #[serde(default, deserialize_with = "lenient")]
    data: Option<Vec<IgnoredAny>>,
}

/// Reads usage from an OpenAI-style `usage` object; `None` if absent or malformed.
pub(crate) fn usage_from_openai(usage: &Value) -> Option<Usage> {
    usage_of(read_or_default(usage))
}

fn usage_of(usage: OpenAiUsage) -> Option<Usage> {
    let prompt_tokens = usage.prompt_tokens?;
    let output_tokens = usage.completion_tokens.unwrap_or(0);
    // OpenAI counts cached tokens inside prompt_tokens; the ledger keeps them apart.
    let cached = usage
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .or(usage.prompt_cache_hit_tokens)
        .unwrap_or(0);
    let cache_read_tokens = cached.min(prompt_tokens);
    Some(Usage {
        input_tokens: prompt_tokens - cache_read_tokens,
        cache_read_tokens,
        cache_write_tokens: 0,
        output_tokens,
        reasoning_tokens: usage
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0),
        estimated: false,
        images: 0,
    })
}

/// The usage an answer reports.
fn answer_usage(body: &Value) -> Option<Usage> {
    read_or_default::<AnswerUsage>(body)
        .usage
        .and_then(usage_of)
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
    let view: ChunkView = read_or_default(&chunk);
    if let Some(error) = view.error {
        let message = read_or_default::<ErrorDetail>(&error)
            .message
            .unwrap_or_else(|| "stream error".to_string());
        return Err(UpstreamError::Status {
            status: 502,
            code: super::redact::error_code(&chunk),
            message,
        });
    }
    let mut items = Vec::with_capacity(2);
    let usage = match &mut chunk {
        Value::Object(fields) => fields.remove("usage"),
        _ => None,
    };
    if let Some(usage) = usage
        .as_ref()
        .filter(|u| !u.is_null())
        .and_then(usage_from_openai)
    {
        items.push(StreamItem::Usage(usage));
    }
    if view.choices.is_some_and(|c| !c.is_empty()) {
        items.insert(0, StreamItem::Chunk(chunk));
    }
    Ok(items)
}

/// The message of an Ollama error body: `{"error": "…"}` (a string), or OpenAI's
/// shape from proxies in front of it.
fn ollama_error_message(body: &Value) -> Option<String> {
    match read_or_default::<OllamaErrorBody>(body).error? {
        OllamaError::Text(message) => Some(message),
        OllamaError::Detail(detail) => detail.message,
    }
}

/// The native `/api/embed` body for an OpenAI embeddings request; Ollama's own
/// options (`truncate`, `keep_alive`, `options`) and `dimensions` pass through.
pub(crate) fn ollama_embed_request(request: &Value, texts: &[String]) -> Value {
    let options: OllamaEmbedOptions = read_or_default(request);
    json!(OllamaEmbedRequest {
        model: options.model,
        input: texts,
        dimensions: options.dimensions,
        truncate: options.truncate,
        keep_alive: options.keep_alive,
        options: options.options,
    })
}

/// An OpenAI embeddings answer from Ollama's `/api/embed` answer for `texts`; its
/// `prompt_eval_count` is the usage (an estimate from the texts, flagged, if it
/// is missing).
pub(crate) fn ollama_embed_to_openai(
    answer: &Value,
    model: &str,
    texts: &[String],
    base64: bool,
) -> Result<EmbeddingsOutcome, UpstreamError> {
    let answer: OllamaEmbedAnswer = read_or_default(answer);
    let vectors = answer
        .embeddings
        .filter(|e| e.len() == texts.len())
        .ok_or_else(|| {
            UpstreamError::Protocol("/api/embed answered the wrong number of embeddings".into())
        })?
        .iter()
        .map(|v| match v {
            Value::Array(v) => embedding_vector(v, base64),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            UpstreamError::Protocol("/api/embed answered a malformed embedding".into())
        })?;
    let usage = match answer.prompt_eval_count {
        Some(tokens) => Usage {
            input_tokens: tokens,
            ..Usage::default()
        },
        None => Usage::estimate(texts.iter().map(|t| t.len() as u64).sum(), 0),
    };
    let model = answer.model.as_deref().unwrap_or(model);
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
    let model = super::request_model(request).unwrap_or("");
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
            let usage = answer_usage(&body);
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
        let mut fields = match request {
            Value::Object(fields) => fields.clone(),
            _ => Map::new(),
        };
        // Set below: the client's own values give way.
        fields.remove("stream");
        fields.remove("stream_options");
        let request = StreamingChatRequest {
            fields,
            stream: true,
            // Always ask for usage: billing settles from it.
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        // Through a JSON value, so that the keys go out sorted, as they always did.
        let request = serde_json::to_value(request)
            .map_err(|e| UpstreamError::Protocol(format!("request not encodable: {e}")))?;
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
        let usage = answer_usage(&body);
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
        let images = read_or_default::<ImagesAnswer>(&body)
            .data
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
