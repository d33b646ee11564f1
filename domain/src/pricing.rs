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

/// What one model costs, per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input_rate: Rate,
    pub output_rate: Rate,
    pub max_output_tokens: u32,
}

impl ModelPrice {
    /// The hold for one request: every prompt byte priced as an input token (a token
    /// is at least one byte) plus the most output the request may produce. A safe
    /// upper bound, exact, so no rounding is needed.
    pub fn hold_for(&self, prompt_bytes: u64, requested_max_tokens: Option<u32>) -> Credits {
        let output_tokens = requested_max_tokens.unwrap_or(self.max_output_tokens);
        self.input_rate
            .cost_of(prompt_bytes + PROMPT_OVERHEAD_BYTES)
            + self.output_rate.cost_of(output_tokens as u64)
    }

    /// The charge for reported usage. Cached input tokens are part of `input_tokens`
    /// (OpenAI's convention) and priced at the input rate.
    pub fn cost_of(&self, usage: &Usage) -> Credits {
        self.input_rate.cost_of(usage.input_tokens) + self.output_rate.cost_of(usage.output_tokens)
    }
}

/// Token usage of one request as the upstream reported it (or as estimated, flagged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, how many were read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Of `output_tokens`, how many were reasoning tokens.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// True when the upstream never reported usage and these are estimates from text.
    #[serde(default)]
    pub estimated: bool,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> ModelPrice {
        ModelPrice {
            input_rate: Rate::parse_per_million("0.15").unwrap(),
            output_rate: Rate::parse_per_million("0.6").unwrap(),
            max_output_tokens: 1000,
        }
    }

    #[test]
    fn hold_covers_prompt_bytes_and_output_cap() {
        let p = price();
        // (36 + 64) bytes * 150_000 + 1000 tokens * 600_000
        assert_eq!(p.hold_for(36, None).pico(), 100 * 150_000 + 1000 * 600_000);
        assert_eq!(
            p.hold_for(36, Some(10)).pico(),
            100 * 150_000 + 10 * 600_000
        );
    }

    #[test]
    fn cost_is_exact_product_of_usage_and_rates() {
        let usage = Usage {
            input_tokens: 12,
            output_tokens: 7,
            ..Usage::default()
        };
        assert_eq!(price().cost_of(&usage).pico(), 12 * 150_000 + 7 * 600_000);
    }

    #[test]
    fn estimates_round_up() {
        let u = Usage::estimate(9, 1);
        assert_eq!((u.input_tokens, u.output_tokens, u.estimated), (3, 1, true));
    }
}
