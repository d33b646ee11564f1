//! The relay of a streamed answer, the same for every wire format: each piece
//! of generated text is priced before it is passed on (a stream the tenant's
//! credit cannot pay for ends early), and the stream ends with its charge
//! committed before the last frame, or, unfinished, with what reached the
//! client charged. A [`StreamCodec`] turns pieces and endings into frames.

use super::billing::{partial_usage, Billing};
use super::PipelineError;
use crate::providers::{ChatStream, Provider, StreamItem, UpstreamError};
use bytes::Bytes;
use domain::tenant::Attempt;
use domain::Usage;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use std::pin::Pin;
use tokio::sync::mpsc;

/// Frames buffered between the upstream reader and a slow client.
pub(crate) const STREAM_BUFFER_CHUNKS: usize = 64;

/// One item of an upstream stream: usage figures, or a piece of the answer.
pub(crate) enum Upstreamed<P> {
    Usage(Usage),
    Piece(P),
}

/// An upstream stream as the relay reads it.
pub(crate) type Pieces<P> = Pin<Box<dyn Stream<Item = Result<Upstreamed<P>, UpstreamError>>>>;

/// An OpenAI-shaped chat stream as pieces (chunks).
pub(crate) fn chat_pieces(upstream: ChatStream) -> Pieces<Value> {
    Box::pin(upstream.map(|item| {
        item.map(|item| match item {
            StreamItem::Usage(usage) => Upstreamed::Usage(usage),
            StreamItem::Chunk(chunk) => Upstreamed::Piece(chunk),
        })
    }))
}

/// `pieces`, each piece mapped by `f` (a codec reading pieces of two kinds).
pub(crate) fn map_pieces<P: 'static, Q: 'static>(pieces: Pieces<P>, f: fn(P) -> Q) -> Pieces<Q> {
    Box::pin(pieces.map(move |item| {
        item.map(|item| match item {
            Upstreamed::Usage(usage) => Upstreamed::Usage(usage),
            Upstreamed::Piece(piece) => Upstreamed::Piece(f(piece)),
        })
    }))
}

/// How a stream that reached its end, charged in full, ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The upstream finished.
    Done,
    /// The next piece would have cost more than the tenant can pay.
    CreditExhausted,
}

/// A wire format's frames for a relayed stream.
pub(crate) trait StreamCodec: 'static {
    type Piece;

    /// Frames sent before the first piece.
    fn opening(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    /// Bytes of generated text in `piece`, which the credit check prices before
    /// the piece is passed on; `None`: not generated text, passed on unpriced.
    fn generated_bytes(&self, piece: &Self::Piece) -> Option<u64>;

    /// The client's frames for one piece (none for a piece held back).
    fn encode(&mut self, piece: Self::Piece) -> Vec<Bytes>;

    /// Frames sent at the end, before the charge (`charged`) is committed.
    fn closing(&mut self, ending: Ending, charged: &Usage) -> Vec<Bytes>;

    /// The last frames, sent once the charge is committed.
    fn settled(&mut self, ending: Ending, charged: &Usage, attempt: &Attempt) -> Vec<Bytes>;

    /// The frame that tells the client the stream failed.
    fn error_frame(&self, error: PipelineError) -> Bytes;
}

/// How a relayed stream ended.
enum StreamEnd {
    Charged(Ending),
    ClientGone,
    UpstreamFailed(UpstreamError),
}

/// Sends `frames` until the client is gone; whether it is still there.
async fn send_all(tx: &mpsc::Sender<Bytes>, frames: Vec<Bytes>) -> bool {
    for frame in frames {
        if tx.send(frame).await.is_err() {
            return false;
        }
    }
    true
}

/// Copies the upstream's stream to the client in `codec`'s frames, then settles
/// and finishes it.
pub(super) async fn relay<C: StreamCodec>(
    billing: Billing,
    attempt: Attempt,
    provider: Provider,
    mut pieces: Pieces<C::Piece>,
    mut codec: C,
    tx: mpsc::Sender<Bytes>,
) {
    let mut usage: Option<Usage> = None;
    let mut output_bytes: u64 = 0;
    let end = 'relay: {
        if !send_all(&tx, codec.opening()).await {
            break 'relay StreamEnd::ClientGone;
        }
        loop {
            let piece = match pieces.next().await {
                None => break StreamEnd::Charged(Ending::Done),
                Some(Err(e)) => break StreamEnd::UpstreamFailed(e),
                Some(Ok(Upstreamed::Usage(reported))) => {
                    usage = Some(reported);
                    continue;
                }
                Some(Ok(Upstreamed::Piece(piece))) => piece,
            };
            if let Some(bytes) = codec.generated_bytes(&piece) {
                let after = output_bytes + bytes;
                if billing.would_overspend(&attempt, usage.as_ref(), after) {
                    break StreamEnd::Charged(Ending::CreditExhausted);
                }
                output_bytes = after;
            }
            if !send_all(&tx, codec.encode(piece)).await {
                break 'relay StreamEnd::ClientGone;
            }
        }
    };
    // Stop reading the upstream now (a client that left should not keep generating).
    drop(pieces);

    match end {
        StreamEnd::Charged(ending) => {
            let charged = match ending {
                Ending::Done => {
                    usage.unwrap_or_else(|| Usage::estimate(billing.prompt_bytes, output_bytes))
                }
                Ending::CreditExhausted => {
                    tracing::info!(request_id = %billing.request_id, "stream ended: the tenant's credit would not cover more");
                    partial_usage(usage, billing.prompt_bytes, output_bytes)
                }
            };
            // A client leaving now is still billed below for what it got.
            send_all(&tx, codec.closing(ending, &charged)).await;
            let last = match billing.settle(&attempt, charged).await {
                Ok(()) => codec.settled(ending, &charged, &attempt),
                Err(e) => vec![codec.error_frame(e)],
            };
            send_all(&tx, last).await;
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
                let _ = tx.send(codec.error_frame(e)).await;
            }
        }
    }
}

/// Bytes of generated text in one OpenAI stream chunk (for estimates only).
pub(crate) fn openai_chunk_bytes(chunk: &Value) -> u64 {
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
                for field in ["/function/arguments", "/function/name"] {
                    n += call
                        .pointer(field)
                        .and_then(Value::as_str)
                        .map_or(0, str::len) as u64;
                }
            }
        }
    }
    n
}

/// Why a stream was ended early, in the same words on every ingress (beside
/// each protocol's own way to say the output stopped at a length).
pub(crate) fn credit_exhausted_note() -> Value {
    json!({
        "stopped": "insufficient_credits",
        "message": "the stream was ended because the tenant's available credit would not cover more output; what was delivered is billed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chunk_bytes_counts_content_and_tool_arguments() {
        let chunk = json!({"choices": [{"delta": {"content": "abc", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]});
        assert_eq!(openai_chunk_bytes(&chunk), 6);
    }
}
