//! Admission: the key checked, the model routed to its candidates, the hold
//! placed, in one decision of the tenant's actor.

use super::billing::Billing;
use super::PipelineError;
use crate::actors::{ActorError, TenantOp};
use crate::auth::PresentedKey;
use crate::catalog::{Candidate, PriceFor};
use crate::hub::Hub;
use domain::tenant::{TenantCommand, TenantError};
use domain::{Capability, ChangedBy, Ingress, ModelPrice, Permission, RequestId};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a model request asks for, for its hold.
pub(crate) struct Ask<'a> {
    pub(crate) model: &'a str,
    pub(crate) capability: Capability,
    /// The wire protocol the request came in with (recorded in the reservation).
    pub(crate) ingress: Ingress,
    pub(crate) prompt_bytes: u64,
    /// The smallest output cap the client named (per choice); `None`: none. The
    /// hold is for it, lowered to the largest cap among the candidates.
    pub(crate) max_tokens: Option<u32>,
    /// Choices (`n`): each may produce up to the output tokens.
    pub(crate) choices: u32,
    pub(crate) images: u32,
    /// An image request's size and quality, which its price depends on.
    pub(crate) image_variant: (Option<&'a str>, Option<&'a str>),
}

impl<'a> Ask<'a> {
    /// A chat: `max_tokens` per choice, `choices` of them.
    pub(crate) fn chat(
        model: &'a str,
        ingress: Ingress,
        prompt_bytes: u64,
        max_tokens: Option<u32>,
        choices: u32,
    ) -> Self {
        Ask {
            model,
            capability: Capability::Chat,
            ingress,
            prompt_bytes,
            max_tokens,
            choices,
            images: 0,
            image_variant: (None, None),
        }
    }

    /// Embeddings: input tokens only.
    pub(crate) fn embeddings(model: &'a str, ingress: Ingress, prompt_bytes: u64) -> Self {
        Ask {
            capability: Capability::Embeddings,
            ..Ask::chat(model, ingress, prompt_bytes, Some(0), 1)
        }
    }

    /// `images` images, priced by the `size` and `quality` of the (OpenAI-shaped)
    /// upstream request.
    pub(crate) fn images(
        model: &'a str,
        ingress: Ingress,
        prompt_bytes: u64,
        images: u32,
        request: &'a Value,
    ) -> Self {
        let variant = |field| request.get(field).and_then(Value::as_str);
        Ask {
            capability: Capability::Images,
            images,
            image_variant: (variant("size"), variant("quality")),
            ..Ask::embeddings(model, ingress, prompt_bytes)
        }
    }
}

/// Who a request is from and for, as the caller said (recorded in the
/// reservation, for usage by app and by end user).
#[derive(Clone, Debug, Default)]
pub(crate) struct Caller {
    /// The calling app (`x-aigne-hub-client-did`).
    pub(crate) app: Option<String>,
    /// Who the request is for (`x-aigne-hub-end-user`, or the body's `user`).
    pub(crate) end_user: Option<String>,
}

/// A request admitted: key checked, candidates routed, hold placed.
pub(crate) struct Admitted {
    pub(crate) billing: Billing,
    pub(crate) candidates: Vec<Candidate>,
}

impl Admitted {
    pub(crate) fn request_id(&self) -> RequestId {
        self.billing.request_id
    }
}

/// The price a hold is placed at: for every kind of token the dearest rate of any
/// candidate, and the largest output cap, so a fallback never costs more than held.
fn hold_price(candidates: &[Candidate]) -> ModelPrice {
    let mut price = candidates[0].priced.price;
    for c in &candidates[1..] {
        let (a, b) = (&mut price.rates, &c.priced.price.rates);
        a.input = a.input.max(b.input);
        a.output = a.output.max(b.output);
        a.cache_read = a.cache_read.max(b.cache_read);
        a.cache_write = a.cache_write.max(b.cache_write);
        a.image = a.image.max(b.image);
        price.max_output_tokens = price
            .max_output_tokens
            .max(c.priced.price.max_output_tokens);
    }
    price
}

/// Checks the key, routes the model and places the hold (401/403/404/402 here).
pub(crate) async fn admit(
    hub: &Arc<Hub>,
    key: PresentedKey,
    ask: Ask<'_>,
    caller: Caller,
) -> Result<Admitted, PipelineError> {
    let auth = Some(hub.key_auth(&key, Permission::CallModels));
    let (image_size, image_quality) = ask.image_variant;
    let who = PriceFor {
        tenant_id: key.tenant_id,
        image_size,
        image_quality,
        at_cost: hub.mode().charges_at_cost(),
    };
    let mut catalog = hub.catalog().snapshot();
    let mut candidates = catalog.candidates_for(ask.model, who);
    // Never refuse a model from a stale catalog: another writer may have just
    // added it (one query, on the refusal path only).
    if candidates.is_empty() && hub.catalog().refresh_if_changed().await? {
        catalog = hub.catalog().snapshot();
        candidates = catalog.candidates_for(ask.model, who);
    }
    if candidates.is_empty() {
        // Check the key first, so an unknown model is never a way to probe keys.
        hub.call_tenant(key.tenant_id, TenantOp::Read { auth })
            .await?;
        return Err(PipelineError::ModelNotFound(crate::catalog::UnknownModel {
            model: ask.model.to_string(),
            suggestions: catalog.closest_ids(ask.model),
        }));
    }
    let price = hold_price(&candidates);
    let primary = &candidates[0].priced;
    let request_id = RequestId::new_random();
    let max_tokens = price.output_cap(ask.max_tokens).saturating_mul(ask.choices);
    let reserve = TenantCommand::ReserveCredits {
        request_id,
        key_id: key.key_id,
        model: primary.model.clone(),
        capability: ask.capability,
        ingress: ask.ingress,
        app: caller.app,
        end_user: caller.end_user,
        price,
        price_version: primary.price_version,
        prompt_bytes: ask.prompt_bytes,
        max_tokens: Some(max_tokens),
        images: ask.images,
        instance_id: hub.instance_id(),
        expires_at: hub.now() + Duration::from_millis(hub.limits().hold_ttl_ms),
        enforce_credit: hub.mode().enforces_credit(),
        at: hub.now(),
    };
    let hold = price.hold_for(ask.prompt_bytes, Some(max_tokens), ask.images);
    let reply = hub
        .call_tenant(
            key.tenant_id,
            TenantOp::Execute {
                auth,
                command: reserve,
                request_id: Some(request_id),
                actor: ChangedBy::Key { key_id: key.key_id },
            },
        )
        .await
        .map_err(|e| advice_per_choice(e, ask.choices))?;
    hub.router().earn();
    let spend_limit = (hub.mode().enforces_credit() && hub.limits().stream_credit_cutoff)
        .then(|| reply.balance.available + hold);
    let billing = Billing {
        hub: hub.clone(),
        key,
        request_id,
        prompt_bytes: ask.prompt_bytes,
        started: Instant::now(),
        spend_limit,
        requested_output_cap: ask.max_tokens,
    };
    Ok(Admitted {
        billing,
        candidates,
    })
}

/// A 402's advice counts the output tokens of all choices together; a client
/// sets `max_tokens` per choice, so the advice it gets is per choice.
fn advice_per_choice(mut e: ActorError, choices: u32) -> ActorError {
    if let ActorError::Refused(TenantError::InsufficientCredits {
        advice: Some(advice),
        ..
    }) = &mut e
    {
        advice.output_tokens_that_fit /= u64::from(choices.max(1));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::OutputCapAdvice;

    fn short_of_credit(output_tokens_that_fit: u64) -> ActorError {
        ActorError::Refused(TenantError::InsufficientCredits {
            available: "0.1".into(),
            required: "1".into(),
            advice: Some(OutputCapAdvice {
                output_tokens_that_fit,
                default_max_tokens: 4096,
            }),
        })
    }

    fn tokens_that_fit(e: &ActorError) -> Option<u64> {
        match e {
            ActorError::Refused(TenantError::InsufficientCredits { advice, .. }) => {
                advice.map(|a| a.output_tokens_that_fit)
            }
            _ => None,
        }
    }

    #[test]
    fn a_402s_advice_is_per_choice() {
        assert_eq!(
            tokens_that_fit(&advice_per_choice(short_of_credit(90), 3)),
            Some(30)
        );
        assert_eq!(
            tokens_that_fit(&advice_per_choice(short_of_credit(2), 3)),
            Some(0)
        );
        // No choices named counts as one.
        assert_eq!(
            tokens_that_fit(&advice_per_choice(short_of_credit(7), 0)),
            Some(7)
        );
    }
}
