//! Prices of a model and the arithmetic of holds and charges.
//!
//! A hold must be a safe upper bound of what a request can cost, so that a tenant
//! can never spend credit it does not have; the charge is what the upstream
//! reports. Both are exact integer products (see docs/money.md).

use crate::money::{Credits, Rate};
use serde::{Deserialize, Serialize};

/// Output cap assumed for a model whose price does not name one.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;
/// Largest output cap accepted for a model (bounds the worst-case hold).
pub const MAX_OUTPUT_TOKENS_LIMIT: u32 = 1_000_000;
/// Bytes of chat framing (role markers, reply priming) added to every hold so that a
/// tiny prompt, which tokenizes to more tokens than it has bytes, is still covered.
pub const PROMPT_OVERHEAD_BYTES: u64 = 64;
/// Bytes per token assumed when usage must be estimated from text (only when the
/// upstream never reported usage, e.g. the client left mid-stream).
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

/// What each kind of token costs, per token. Recorded in every reservation and
/// settlement, so a charge never depends on a price table that may change later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    #[serde(rename = "input_pico_per_token")]
    pub input: Rate,
    #[serde(rename = "output_pico_per_token")]
    pub output: Rate,
    /// Prompt tokens read from the provider's cache.
    #[serde(rename = "cache_read_pico_per_token")]
    pub cache_read: Rate,
    /// Prompt tokens written to the provider's cache.
    #[serde(rename = "cache_write_pico_per_token")]
    pub cache_write: Rate,
    /// Per generated image (image models).
    #[serde(rename = "image_pico_per_image", default)]
    pub image: Rate,
}

impl Rates {
    /// Rates where cache reads and writes cost the same as input.
    pub fn flat(input: Rate, output: Rate) -> Self {
        Rates {
            input,
            output,
            cache_read: input,
            cache_write: input,
            image: Rate::default(),
        }
    }

    /// The dearest rate any prompt token can be billed at.
    pub fn max_prompt_rate(&self) -> Rate {
        self.input.max(self.cache_read).max(self.cache_write)
    }

    /// The charge for reported usage: each kind of token at its own rate. Exact.
    pub fn cost_of(&self, usage: &Usage) -> Credits {
        self.input.cost_of(usage.input_tokens)
            + self.cache_read.cost_of(usage.cache_read_tokens)
            + self.cache_write.cost_of(usage.cache_write_tokens)
            + self.output.cost_of(usage.output_tokens)
            + self.image.cost_of(usage.images)
    }
}

/// Where a charge's margin came from (recorded so a charge explains itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarginSource {
    /// The tenant's own margin.
    Tenant,
    /// The margin of the tenant's plan.
    Plan,
    /// The price book's default margin.
    Default,
    /// No margin set anywhere: sold at cost.
    None,
    /// The sell rates were given directly; no margin was applied.
    DirectSellPrice,
    /// The `enterprise` mode charges the provider's cost.
    AtCost,
}

/// What a charge was made at besides its sell rates: the provider's cost rates and
/// the margin between them. Recorded in every settlement, so analytics can show
/// provider cost and margin without a price table that may have changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeTerms {
    pub cost_rates: Rates,
    /// The margin applied to the cost; `None` when the sell rates were given directly.
    pub margin_bps: Option<u32>,
    pub margin_source: MarginSource,
}

impl ChargeTerms {
    /// Sell rates given directly, whose cost is taken to be the same: how every
    /// charge was made before the price book had cost rates.
    pub fn sold_directly(rates: Rates) -> Self {
        ChargeTerms {
            cost_rates: rates,
            margin_bps: None,
            margin_source: MarginSource::DirectSellPrice,
        }
    }
}

/// What one model costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub rates: Rates,
    pub max_output_tokens: u32,
}

impl ModelPrice {
    /// The hold for one request: every prompt byte priced as a prompt token at the
    /// dearest prompt rate (a token is at least one byte) plus the most output the
    /// request may produce. A safe upper bound, exact, so no rounding is needed.
    pub fn hold_for(
        &self,
        prompt_bytes: u64,
        requested_max_tokens: Option<u32>,
        images: u32,
    ) -> Credits {
        let output_tokens = requested_max_tokens.unwrap_or(self.max_output_tokens);
        self.rates
            .max_prompt_rate()
            .cost_of(prompt_bytes + PROMPT_OVERHEAD_BYTES)
            + self.rates.output.cost_of(output_tokens as u64)
            + self.rates.image.cost_of(images as u64)
    }

    /// The output cap of one request (per choice): the smallest cap the client
    /// named, never above this model's; this model's when the client named none.
    /// The hub holds for it and sends the upstream exactly it.
    pub fn output_cap(&self, requested: Option<u32>) -> u32 {
        requested.map_or(self.max_output_tokens, |r| r.min(self.max_output_tokens))
    }

    /// The most output tokens a hold within `budget` can cover for this prompt and
    /// these images: the inverse of [`ModelPrice::hold_for`], rounded down. 0 when
    /// not even the prompt fits; `u64::MAX` when output costs nothing.
    pub fn output_tokens_within(&self, budget: Credits, prompt_bytes: u64, images: u32) -> u64 {
        let left = budget - self.hold_for(prompt_bytes, Some(0), images);
        if left.is_negative() {
            return 0;
        }
        match self.rates.output.pico_per_token() {
            rate if rate <= 0 => u64::MAX,
            rate => u64::try_from(left.pico() / rate).unwrap_or(u64::MAX),
        }
    }
}

/// How a chat request refused for credit could still get through: a smaller
/// output cap, when one would fit (the 402 says so, see docs/billing.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputCapAdvice {
    /// The most output tokens (all choices together) the available credit holds for.
    pub output_tokens_that_fit: u64,
    /// The cap a request that names none is held for: the model's `max_output_tokens`.
    pub default_max_tokens: u32,
}

/// Token usage of one request as the upstream reported it (or as estimated,
/// flagged), normalized: the prompt is `input_tokens + cache_read_tokens +
/// cache_write_tokens`, with no kind counted twice, whatever the provider's own
/// convention (OpenAI counts cached tokens inside `prompt_tokens`; Anthropic does
/// not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens neither read from nor written to a cache.
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// All generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Of `output_tokens`, how many were reasoning ("thinking") tokens.
    pub reasoning_tokens: u64,
    /// True when the upstream never reported usage and these are estimates from text.
    pub estimated: bool,
    /// Images generated (image models).
    #[serde(default)]
    pub images: u64,
}

impl Usage {
    /// Estimates usage from byte counts when the upstream gave none: one token per
    /// [`ESTIMATE_BYTES_PER_TOKEN`] bytes, rounded up.
    pub fn estimate(prompt_bytes: u64, output_bytes: u64) -> Self {
        Usage {
            input_tokens: prompt_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN),
            output_tokens: output_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN),
            estimated: true,
            ..Usage::default()
        }
    }

    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// What a request asks of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Chat,
    Embeddings,
    Images,
}

/// The wire protocol a request came in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ingress {
    /// OpenAI-compatible `/v1/...`.
    Openai,
    /// Anthropic Messages `/v1/messages`.
    Anthropic,
    /// AIGNE Hub's v2 protocol `/api/v2/...`.
    AigneV2,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> ModelPrice {
        ModelPrice {
            rates: Rates::flat(
                Rate::parse_per_million("0.15").unwrap(),
                Rate::parse_per_million("0.6").unwrap(),
            ),
            max_output_tokens: 1000,
        }
    }

    #[test]
    fn hold_covers_prompt_bytes_and_output_cap() {
        let p = price();
        // (36 + 64) bytes * 150_000 + 1000 tokens * 600_000
        assert_eq!(
            p.hold_for(36, None, 0).pico(),
            100 * 150_000 + 1000 * 600_000
        );
        assert_eq!(
            p.hold_for(36, Some(10), 0).pico(),
            100 * 150_000 + 10 * 600_000
        );
    }

    #[test]
    fn the_output_cap_is_the_smallest_of_the_clients_and_the_models() {
        let p = price();
        assert_eq!(p.output_cap(None), 1000);
        assert_eq!(p.output_cap(Some(10)), 10);
        assert_eq!(p.output_cap(Some(5000)), 1000);
    }

    #[test]
    fn output_tokens_within_a_budget_is_the_inverse_of_the_hold() {
        let p = price();
        let hold = p.hold_for(36, Some(10), 0);
        assert_eq!(p.output_tokens_within(hold, 36, 0), 10);
        assert_eq!(
            p.output_tokens_within(hold - Credits::from_pico(1), 36, 0),
            9
        );
        // Not even the prompt fits.
        let prompt_only = p.hold_for(36, Some(0), 0);
        assert_eq!(
            p.output_tokens_within(prompt_only - Credits::from_pico(1), 36, 0),
            0
        );
        let mut free_output = p;
        free_output.rates.output = Rate::default();
        assert_eq!(free_output.output_tokens_within(hold, 36, 0), u64::MAX);
    }

    #[test]
    fn hold_prices_prompt_bytes_at_the_dearest_prompt_rate() {
        let mut p = price();
        p.rates.cache_write = Rate::parse_per_million("0.3").unwrap();
        assert_eq!(p.hold_for(36, Some(0), 0).pico(), 100 * 300_000);
    }

    #[test]
    fn cost_prices_each_kind_of_token_at_its_own_rate() {
        let rates = Rates {
            input: Rate::from_pico_per_token(10),
            output: Rate::from_pico_per_token(100),
            cache_read: Rate::from_pico_per_token(1),
            cache_write: Rate::from_pico_per_token(20),
            image: Rate::from_pico_per_token(1000),
        };
        let usage = Usage {
            input_tokens: 12,
            cache_read_tokens: 5,
            cache_write_tokens: 3,
            output_tokens: 7,
            reasoning_tokens: 2,
            estimated: false,
            images: 2,
        };
        assert_eq!(
            rates.cost_of(&usage).pico(),
            12 * 10 + 5 + 3 * 20 + 7 * 100 + 2 * 1000
        );
        assert_eq!(usage.prompt_tokens(), 20);
    }

    #[test]
    fn estimates_round_up() {
        let u = Usage::estimate(9, 1);
        assert_eq!((u.input_tokens, u.output_tokens, u.estimated), (3, 1, true));
    }
}
