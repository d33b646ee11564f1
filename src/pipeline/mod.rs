//! The one path every model request takes, whatever wire format it came in
//! (see docs/ARCHITECTURE.md):
//! 1. [`admit`]: the tenant actor checks the key and places a hold (402 if
//!    credit is short), for the candidates the catalog routes the model to;
//! 2. [`Admitted::complete`] / [`Admitted::stream`]: the attempts run in order
//!    (retries, fallbacks, each failure recorded), calling the upstream through
//!    an [`Operation`] (a [`Billed`] one when the answer comes whole);
//! 3. on failure the hold is released (the request costs nothing); on success
//!    the usage the upstream reported is settled;
//! 4. only after the settlement is committed does the client get the end of
//!    the answer (the whole JSON, or a stream's last frame). So a response a
//!    client has fully received is always billed, even if the hub dies right
//!    after.
//!
//! The ingresses (`crate::ingress`) are codecs around this path: they parse
//! their wire format into an [`Ask`] and an upstream request, and encode the
//! answer, the stream frames ([`StreamCodec`]) and the errors in theirs.

mod admission;
mod attempts;
mod billing;
mod error;
mod relay;

pub(crate) use admission::{admit, Admitted, Ask, Caller};
pub(crate) use attempts::{
    Billed, Operation, OutputCap, Perform, CHAT, CHAT_STREAM, EMBEDDINGS, IMAGES,
};
pub(crate) use error::PipelineError;
pub(crate) use relay::{
    chat_pieces, credit_exhausted_note, map_pieces, openai_chunk_bytes, Ending, Pieces,
    StreamCodec, Upstreamed, STREAM_BUFFER_CHUNKS,
};

use bytes::Bytes;
use domain::tenant::Attempt;
use domain::Usage;
use serde_json::Value;
use tokio::sync::mpsc;

/// A request answered and its charge committed.
pub(crate) struct Settled<A> {
    pub(crate) answer: A,
    /// The attempt that answered (its model and rates).
    pub(crate) attempt: Attempt,
    /// What was charged.
    pub(crate) usage: Usage,
}

impl Admitted {
    /// Runs the attempts and settles the answer's usage before returning it.
    pub(crate) async fn complete<A>(
        self,
        billed: &Billed<A>,
        request: &Value,
    ) -> Result<Settled<A>, PipelineError> {
        let (answer, attempt, _) =
            attempts::attempt(&self.billing, &self.candidates, &billed.operation, request).await?;
        let usage = (billed.usage)(&answer, request, self.billing.prompt_bytes);
        self.billing.settle(&attempt, usage).await?;
        Ok(Settled {
            answer,
            attempt,
            usage,
        })
    }

    /// Runs the attempts and, once one answers with a stream, relays it to the
    /// returned receiver in `codec`'s frames, settling at its end.
    pub(crate) async fn stream<A, C: StreamCodec>(
        self,
        operation: &Operation<A>,
        request: &Value,
        codec: impl FnOnce(&Attempt, A) -> (C, Pieces<C::Piece>),
    ) -> Result<mpsc::Receiver<Bytes>, PipelineError> {
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER_CHUNKS);
        self.stream_into(operation, request, codec, tx).await?;
        Ok(rx)
    }

    /// [`Admitted::stream`] into a channel the caller made (to hand its
    /// receiver to the client before the stream starts).
    pub(crate) async fn stream_into<A, C: StreamCodec>(
        self,
        operation: &Operation<A>,
        request: &Value,
        codec: impl FnOnce(&Attempt, A) -> (C, Pieces<C::Piece>),
        tx: mpsc::Sender<Bytes>,
    ) -> Result<(), PipelineError> {
        let (answer, attempt, provider) =
            attempts::attempt(&self.billing, &self.candidates, operation, request).await?;
        let (codec, pieces) = codec(&attempt, answer);
        actix_web::rt::spawn(relay::relay(
            self.billing,
            attempt,
            provider,
            pieces,
            codec,
            tx,
        ));
        Ok(())
    }
}
