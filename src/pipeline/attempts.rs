//! The attempts of one request: candidates in order (see `routing`), retries
//! with backoff, failures recorded, credentials the upstream rejects disabled.

use super::billing::Billing;
use super::PipelineError;
use crate::catalog::Candidate;
use crate::providers::{
    api_for, ChatOutcome, ChatStream, EmbeddingsOutcome, ImagesOutcome, Provider, ProviderKind,
    UpstreamCall, UpstreamError,
};
use crate::routing::{backoff, classify, Failure, ATTEMPTS_PER_REQUEST_MAX};
use domain::tenant::Attempt;
use domain::Usage;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::time::Instant;

/// One upstream call of an attempt: `request` (OpenAI's shape unless the
/// operation says otherwise) with `model` already the upstream's name.
pub(crate) type Perform<A> =
    for<'a> fn(&'a UpstreamCall<'a>, &'a Value) -> BoxFuture<'a, Result<A, UpstreamError>>;

/// Where a request carries the output cap the hub decided.
#[derive(Clone, Copy)]
pub(crate) enum OutputCap {
    /// No output to cap (embeddings, images).
    None,
    /// An OpenAI-shaped chat request (see `set_chat_output_cap`).
    Chat,
    /// An Anthropic Messages body: one `max_tokens`, which the translation for
    /// other kinds carries over.
    Messages,
}

/// What a request does upstream, once per attempt, answering `A`.
pub(crate) struct Operation<A> {
    pub(crate) output_cap: OutputCap,
    pub(crate) perform: Perform<A>,
}

/// An operation whose whole answer comes at once, and what it is charged: the
/// upstream's figures, or an estimate from the sizes of the upstream request
/// (its prompt bytes given) and of the answer where it gave none.
pub(crate) struct Billed<A> {
    pub(crate) operation: Operation<A>,
    pub(crate) usage: fn(&A, &Value, u64) -> Usage,
}

/// An OpenAI-shaped chat completion, answered whole.
pub(crate) const CHAT: Billed<ChatOutcome> = Billed {
    operation: Operation {
        output_cap: OutputCap::Chat,
        perform: |call, request| api_for(call.provider.kind).chat(call, request),
    },
    usage: |answer, _, prompt_bytes| {
        answer
            .usage
            .unwrap_or_else(|| estimated_chat_usage(&answer.body, prompt_bytes))
    },
};

/// An OpenAI-shaped chat completion, streamed.
pub(crate) const CHAT_STREAM: Operation<ChatStream> = Operation {
    output_cap: OutputCap::Chat,
    perform: |call, request| api_for(call.provider.kind).chat_stream(call, request),
};

/// Embeddings, charged by input tokens.
pub(crate) const EMBEDDINGS: Billed<EmbeddingsOutcome> = Billed {
    operation: Operation {
        output_cap: OutputCap::None,
        perform: |call, request| api_for(call.provider.kind).embeddings(call, request),
    },
    usage: |answer, request, _| {
        let input_bytes = request.get("input").map_or(0, |i| i.to_string().len());
        answer
            .usage
            .unwrap_or_else(|| Usage::estimate(input_bytes as u64, 0))
    },
};

/// Image generation, charged per image.
pub(crate) const IMAGES: Billed<ImagesOutcome> = Billed {
    operation: Operation {
        output_cap: OutputCap::None,
        perform: |call, request| api_for(call.provider.kind).images(call, request),
    },
    usage: |answer, _, _| Usage {
        images: answer.images,
        ..Usage::default()
    },
};

/// Every field an OpenAI-shaped chat request can cap its output with. All are
/// removed before the one the upstream reads is set: given two, an upstream may
/// honour the larger, past what was held.
const OUTPUT_CAP_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Gives one attempt's request the output cap the hub decided (what the hold
/// was placed for, or less) in the one field its upstream reads. An OpenAI-shaped
/// chat request gets exactly one: OpenAI `max_completion_tokens` (its reasoning
/// models refuse `max_tokens`, and it counts reasoning tokens too); the
/// compatible kinds (Ollama's maps it to `num_predict`) and the translations
/// (Anthropic `max_tokens`, Gemini `maxOutputTokens`, Bedrock
/// `inferenceConfig.maxTokens`) read `max_tokens`.
fn set_output_cap(request: &mut Value, field: OutputCap, kind: ProviderKind, cap: u32) {
    let Some(object) = request.as_object_mut() else {
        return;
    };
    match field {
        OutputCap::None => {}
        OutputCap::Messages => {
            object.insert("max_tokens".into(), Value::from(cap));
        }
        OutputCap::Chat => {
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
    }
}

/// What an OpenAI chat answer without usage is charged: its text and tool
/// calls, estimated.
pub(crate) fn estimated_chat_usage(body: &Value, prompt_bytes: u64) -> Usage {
    let message = body.pointer("/choices/0/message");
    let text = message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map_or(0, str::len);
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .map_or(0, |c| c.to_string().len());
    Usage::estimate(prompt_bytes, (text + calls) as u64)
}

/// Tries the candidates in order (see `routing`), recording every failed attempt.
/// On success returns the answer, the attempt that gave it and its provider; on
/// failure releases the hold and returns the last error.
pub(super) async fn attempt<A>(
    billing: &Billing,
    candidates: &[Candidate],
    operation: &Operation<A>,
    request: &Value,
) -> Result<(A, Attempt, Provider), PipelineError> {
    let hub = &billing.hub;
    let limits = hub.limits();
    let mut number = 0u32;
    let mut last_error: Option<UpstreamError> = None;
    let mut rejected: Vec<String> = Vec::new();
    'candidates: for candidate in candidates {
        let mut retry = 0u32;
        while number < ATTEMPTS_PER_REQUEST_MAX {
            let Some(provider) = hub.router().pick(&candidate.provider, &rejected, retry > 0)
            else {
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
            let cap = candidate
                .priced
                .price
                .output_cap(billing.requested_output_cap);
            set_output_cap(
                &mut upstream_request,
                operation.output_cap,
                provider.kind,
                cap,
            );
            let started = Instant::now();
            let call = UpstreamCall {
                http: hub.upstream(),
                provider: &provider,
            };
            let error = match (operation.perform)(&call, &upstream_request).await {
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
                    .router()
                    .cool_down(&provider.credential_id, limits.rate_limit_cooldown_ms),
                Failure::Transient => {}
            }
            last_error = Some(error);
            if retry >= limits.retries_per_candidate || !hub.router().take_retry() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_goes_upstream_with_exactly_the_decided_cap() {
        let caps = |request: &Value| {
            OUTPUT_CAP_FIELDS
                .iter()
                .filter_map(|f| request.get(*f).map(|v| (*f, v.clone())))
                .collect::<Vec<_>>()
        };
        let capped = |mut request: Value, field, kind| {
            set_output_cap(&mut request, field, kind, 1000);
            caps(&request)
        };
        let chat = json!({"model": "m", "messages": []});
        assert_eq!(
            capped(chat, OutputCap::Chat, ProviderKind::Anthropic),
            vec![("max_tokens", json!(1000))]
        );
        let two = json!({"model": "m", "max_tokens": 1, "max_completion_tokens": 2000, "max_output_tokens": 3000});
        assert_eq!(
            capped(two.clone(), OutputCap::Chat, ProviderKind::OpenAi),
            vec![("max_completion_tokens", json!(1000))]
        );
        assert_eq!(
            capped(two.clone(), OutputCap::Chat, ProviderKind::DeepSeek),
            vec![("max_tokens", json!(1000))]
        );
        let messages = json!({"model": "m", "max_tokens": 5000});
        assert_eq!(
            capped(messages, OutputCap::Messages, ProviderKind::Anthropic),
            vec![("max_tokens", json!(1000))]
        );
        let embeddings = json!({"input": "x", "max_tokens": 5});
        assert_eq!(
            capped(embeddings, OutputCap::None, ProviderKind::OpenAi),
            vec![("max_tokens", json!(5))],
            "untouched"
        );
    }

    #[test]
    fn a_chat_answer_without_usage_is_estimated_from_its_text_and_tool_calls() {
        let body =
            json!({"choices": [{"message": {"content": "abcd", "tool_calls": [{"id": "1"}]}}]});
        let calls_len = json!([{"id": "1"}]).to_string().len() as u64;
        assert_eq!(
            estimated_chat_usage(&body, 40),
            Usage::estimate(40, 4 + calls_len)
        );
    }
}
