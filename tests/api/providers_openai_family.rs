//! The OpenAI-compatible kinds through the conformance suite, each against the
//! OpenAI mock (DeepSeek's reporting its cache hits its own way).

use crate::conformance::Fixture;
use crate::conformance_suite;
use crate::mock_openai::{
    MockUpstream, CACHED_TOKENS, COMPLETION_TOKENS, MOCK_API_KEY, PROMPT_TOKENS,
};
use domain::Usage;
use serde_json::json;

/// What the OpenAI mock reports, normalized: its 12 prompt tokens include 4 cached.
fn mock_usage() -> Usage {
    Usage {
        input_tokens: PROMPT_TOKENS - CACHED_TOKENS,
        cache_read_tokens: CACHED_TOKENS,
        output_tokens: COMPLETION_TOKENS,
        ..Usage::default()
    }
}

fn fixture(kind: &str, mock: MockUpstream) -> Fixture {
    // Ollama's base URL is the server root; the others include the API version.
    let base_url = if kind == "ollama" {
        mock.base_url.trim_end_matches("/v1").to_string()
    } else {
        mock.base_url.clone()
    };
    Fixture {
        provider: json!({"kind": kind, "base_url": base_url, "api_key": MOCK_API_KEY}),
        text_usage: mock_usage(),
        tools_usage: mock_usage(),
        _mock: Box::new(mock),
    }
}

conformance_suite!(openai, fixture("openai", MockUpstream::start()));
conformance_suite!(
    deepseek,
    fixture("deepseek", MockUpstream::start_deepseek())
);
conformance_suite!(xai, fixture("xai", MockUpstream::start()));
conformance_suite!(openrouter, fixture("openrouter", MockUpstream::start()));
conformance_suite!(doubao, fixture("doubao", MockUpstream::start()));
conformance_suite!(poe, fixture("poe", MockUpstream::start()));
conformance_suite!(ollama, fixture("ollama", MockUpstream::start()));
