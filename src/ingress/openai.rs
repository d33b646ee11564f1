//! OpenAI's API as an ingress: `/v1/chat/completions` (JSON and SSE),
//! `/v1/embeddings`, `/v1/images/generations`, OpenAI's wire format in and out.
//! The request path is `crate::pipeline`'s; this module parses the requests and
//! encodes the stream (a chat stream ends with `data: [DONE]` once its charge is
//! committed).

use crate::error::HubError;
use crate::ingress::lenient;
use crate::ingress::openai_wire::{AddedChoice, AddedChunk, ChunkHeader, ChunkObject};
use crate::ingress::{self, frames, sse_response, ModelCall, RequestFields, Wire, WireError};
use crate::pipeline::{
    chat_pieces, credit_exhausted_note, openai_chunk_bytes, Ending, PipelineError, StreamCodec,
    CHAT, CHAT_STREAM, EMBEDDINGS, IMAGES,
};
use crate::providers::openai_usage_json;
use actix_web::HttpResponse;
use bytes::Bytes;
use domain::tenant::Attempt;
use domain::{Ingress, Usage};
use serde_json::Value;
use tracing::Instrument;

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
pub(crate) const CHOICES_MAX: u64 = 128;

fn parse_chat_request(request: &Value) -> Result<ChatRequest, HubError> {
    ingress::json_object(request)?;
    let fields = RequestFields::of(request);
    let model = ingress::model_field(fields.model.as_deref(), "openai/gpt-4o-mini")?;
    match fields.messages {
        Some(messages) if !messages.is_empty() => {
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
    let stream = ingress::flag(fields.stream, "stream")?;
    let mut max_tokens: Option<u32> = None;
    for (field, cap) in [
        ("max_completion_tokens", fields.max_completion_tokens),
        ("max_tokens", fields.max_tokens),
    ] {
        if let Some(cap) = ingress::token_cap(cap, field)? {
            max_tokens = Some(max_tokens.map_or(cap, |m| m.min(cap)));
        }
    }
    let choices = ingress::count(fields.n.as_ref(), "n", CHOICES_MAX)?;
    let client_wants_usage = fields
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(ChatRequest {
        model,
        stream,
        max_tokens,
        choices,
        client_wants_usage,
    })
}

/// OpenAI's wire format: the hub's own error shape.
pub(crate) struct OpenAi;

impl Wire for OpenAi {
    const INGRESS: Ingress = Ingress::Openai;

    fn error_body(error: &HubError) -> Value {
        error.body()
    }
}

type Answer = Result<HttpResponse, WireError<OpenAi>>;

/// `POST /v1/chat/completions`: JSON, or SSE when `"stream": true`.
pub(crate) async fn chat_completions(mut call: ModelCall<OpenAi>) -> Answer {
    let chat = parse_chat_request(&call.json)?;
    prepare_upstream_request(&mut call.json);
    let span = call.span(&chat.model);
    async move {
        let ask = call.chat_ask(&chat.model, chat.max_tokens, chat.choices);
        let admitted = call.admit(ask).await?;
        if chat.stream {
            let wants_usage = chat.client_wants_usage;
            let rx = admitted
                .stream(&CHAT_STREAM, &call.json, |_, upstream| {
                    (OpenAiStream::new(wants_usage), chat_pieces(upstream))
                })
                .await?;
            return Ok(sse_response(frames(rx)));
        }
        let settled = admitted.complete(&CHAT, &call.json).await?;
        Ok(HttpResponse::Ok().json(settled.answer.body))
    }
    .instrument(span)
    .await
}

/// `POST /v1/embeddings`: billed by input tokens.
pub(crate) async fn embeddings(mut call: ModelCall<OpenAi>) -> Answer {
    let fields = RequestFields::of(&call.json);
    let model = required_model(&fields)?;
    ingress::check_embeddings_input(fields.input.as_ref(), "input", call.hub.limits())?;
    prepare_upstream_request(&mut call.json);
    let admitted = call.admit(call.embeddings_ask(&model)).await?;
    let settled = admitted.complete(&EMBEDDINGS, &call.json).await?;
    Ok(HttpResponse::Ok().json(settled.answer.body))
}

/// `POST /v1/images/generations`: billed per image.
pub(crate) async fn images(mut call: ModelCall<OpenAi>) -> Answer {
    let fields = RequestFields::of(&call.json);
    let model = required_model(&fields)?;
    if fields.prompt.as_deref().is_none_or(str::is_empty) {
        return Err(HubError::BadRequest(
            "`prompt` is required and must be a non-empty string".into(),
        )
        .into());
    }
    let n = ingress::images_asked(fields.n.as_ref(), "n", call.hub.limits())?;
    if let Some(format) = fields.response_format {
        if !matches!(format.ok().as_deref(), Some("url" | "b64_json")) {
            return Err(HubError::BadRequest(
                "`response_format` must be \"url\" or \"b64_json\"".into(),
            )
            .into());
        }
    }
    prepare_upstream_request(&mut call.json);
    let admitted = call.admit(call.images_ask(&model, n, &call.json)).await?;
    let settled = admitted.complete(&IMAGES, &call.json).await?;
    Ok(HttpResponse::Ok().json(settled.answer.body))
}

fn required_model(fields: &RequestFields) -> Result<String, HubError> {
    ingress::model_field(fields.model.as_deref(), "openai/text-embedding-3-small")
}

fn prepare_upstream_request(request: &mut Value) {
    // The provider module decides how to ask for streamed usage; the client's own
    // wish is remembered in `client_wants_usage`. `model` is set per attempt.
    if let Some(object) = request.as_object_mut() {
        object.remove("stream_options");
    }
}

// ---------------------------------------------------------------------------
// Streams

fn sse_frame(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// A chat stream in OpenAI's frames: the chunks as they came, then (when the
/// client asked for it) a usage chunk, then `data: [DONE]` once the charge is
/// committed. A stream the tenant's credit cannot pay for ends with a chunk whose
/// `finish_reason` is `"length"`, saying why beside it.
struct OpenAiStream {
    client_wants_usage: bool,
    /// The last chunk passed on: the chunks the hub adds take its id, created
    /// time and model.
    last_chunk: ChunkHeader,
}

impl OpenAiStream {
    fn new(client_wants_usage: bool) -> Self {
        OpenAiStream {
            client_wants_usage,
            last_chunk: ChunkHeader::default(),
        }
    }

    /// A chunk the hub adds to the stream.
    fn chunk_like(&self, choices: Vec<AddedChoice>) -> AddedChunk {
        let field = |value: &Option<Value>| value.clone().unwrap_or(Value::Null);
        AddedChunk {
            id: field(&self.last_chunk.id),
            object: ChunkObject::ChatCompletionChunk,
            created: field(&self.last_chunk.created),
            model: field(&self.last_chunk.model),
            choices,
            usage: None,
            aigne_hub: None,
        }
    }
}

impl StreamCodec for OpenAiStream {
    type Piece = Value;

    fn generated_bytes(&self, chunk: &Value) -> Option<u64> {
        Some(openai_chunk_bytes(chunk))
    }

    fn encode(&mut self, chunk: Value) -> Vec<Bytes> {
        let frame = sse_frame(&chunk.to_string());
        self.last_chunk = lenient::read(&chunk);
        vec![frame]
    }

    fn closing(&mut self, ending: Ending, charged: &Usage) -> Vec<Bytes> {
        let mut last = match ending {
            Ending::Done if !self.client_wants_usage => return Vec::new(),
            Ending::Done => self.chunk_like(Vec::new()),
            Ending::CreditExhausted => {
                let mut chunk = self.chunk_like(vec![AddedChoice::cut_at_length()]);
                chunk.aigne_hub = Some(credit_exhausted_note());
                chunk
            }
        };
        if self.client_wants_usage {
            last.usage = Some(openai_usage_json(charged));
        }
        vec![sse_frame(&ingress::to_json_text(&last))]
    }

    fn settled(&mut self, _: Ending, _: &Usage, _: &Attempt) -> Vec<Bytes> {
        vec![sse_frame("[DONE]")]
    }

    fn error_frame(&self, error: PipelineError) -> Bytes {
        sse_frame(&HubError::from(error).body().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chat_request_keeps_the_smallest_cap_and_its_stream_options() {
        let bad = parse_chat_request(&json!({"model": "a/b", "messages": [1]}));
        assert!(matches!(bad, Err(HubError::BadRequest(m)) if m.contains("every entry")));
        let two_caps = json!({"model": "a/b", "messages": [{}], "max_tokens": 50, "max_completion_tokens": 20});
        assert_eq!(parse_chat_request(&two_caps).unwrap().max_tokens, Some(20));
        let streamed = json!({"model": "a/b", "messages": [{}], "n": 3, "stream": true,
            "stream_options": {"include_usage": true}});
        let chat = parse_chat_request(&streamed).unwrap();
        assert_eq!(
            (chat.choices, chat.stream, chat.client_wants_usage),
            (3, true, true)
        );
        let too_many = json!({"model": "a/b", "messages": [{}], "n": CHOICES_MAX + 1});
        assert!(parse_chat_request(&too_many).is_err());
    }

    #[test]
    fn a_stream_cut_for_credit_ends_at_a_length_with_the_reason_and_usage() {
        let mut codec = OpenAiStream::new(true);
        codec.encode(json!({"id": "c1", "created": 7, "model": "m", "choices": []}));
        let usage = Usage::estimate(8, 4);
        let frames = codec.closing(Ending::CreditExhausted, &usage);
        let text = std::str::from_utf8(&frames[0]).unwrap();
        let chunk: Value =
            serde_json::from_str(text.trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            (chunk["id"].clone(), chunk["created"].clone()),
            (json!("c1"), json!(7))
        );
        assert_eq!(chunk["choices"][0]["finish_reason"], "length");
        assert_eq!(chunk["aigne_hub"]["stopped"], "insufficient_credits");
        assert_eq!(chunk["usage"], openai_usage_json(&usage));
        assert!(OpenAiStream::new(false)
            .closing(Ending::Done, &usage)
            .is_empty());
    }
}
