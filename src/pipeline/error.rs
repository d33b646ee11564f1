//! Why a model request got no answer: the pipeline's own refusals, and the
//! actor's, the upstream's and the store's errors kept as causes. Each ingress
//! encodes it in its wire format through the HTTP mapping (`crate::error`).

use crate::actors::ActorError;
use crate::catalog::UnknownModel;
use crate::providers::UpstreamError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    /// The catalog routes the model to no provider (the key was checked first).
    #[error("{0}")]
    ModelNotFound(UnknownModel),
    /// The settlement found its hold gone: released by the sweeper after its
    /// time to live, or lost with a database crash (see `store::Durability`).
    /// Not the client's doing; it may retry.
    #[error("this request's credit hold is no longer open, so it was not charged; retry")]
    HoldLost(#[source] ActorError),
    /// The tenant refused (key, credit) or could not answer.
    #[error(transparent)]
    Actor(#[from] ActorError),
    /// The last attempt's failure, after retries and fallbacks.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The catalog could not be refreshed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
