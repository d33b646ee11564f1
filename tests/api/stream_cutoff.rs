//! Mid-stream credit enforcement beyond `/v1/chat/completions` (docs/billing.md,
//! "Mid-stream enforcement"): `/v1/messages` streams, passed through from an
//! Anthropic upstream or translated from an OpenAI one, and the AIGNE protocol's
//! streamed chat. Every mock here ignores `max_tokens`, which is how a stream can
//! outrun its hold; the hub must end it where the tenant's credit runs out, in
//! the ingress's own framing, and bill exactly what was delivered.

use crate::aigne::{chat_call, parse_sse, post_v2};
use crate::helpers::*;
use crate::mock_anthropic::{self, MockAnthropic};
use crate::mock_openai;
use crate::on_both_stores;
use domain::pricing::ESTIMATE_BYTES_PER_TOKEN;
use domain::Credits;
use reqwest::Method;
use serde_json::{json, Value};

/// What every cut stream says, in the words of the chat cutoff.
const CUTOFF_MESSAGE: &str = "the stream was ended because the tenant's available credit would not cover more output; what was delivered is billed";

/// 1 pico-credit per prompt token of any kind, 0.001 credit (10^9 pico) per
/// output token, and a cap of one output token: the hold is nearly all that one
/// token, so a tenant with a few thousandths of a credit can pay for a couple of
/// tokens and no more.
const PICO_PER_PROMPT_TOKEN: u64 = 1;
const PICO_PER_OUTPUT_TOKEN: u64 = 1_000_000_000;

struct Setup {
    app: TestApp,
    _anthropic: MockAnthropic,
    tenant: String,
    key: String,
}

/// A hub (with `edit` applied to its settings) with an Anthropic provider `anth`
/// and an OpenAI one `mock`, every model priced dear, and a tenant with `credits`.
async fn setup(
    kind: StoreKind,
    credits: &str,
    edit: impl FnOnce(&mut aigne_hub::config::Settings),
) -> Setup {
    let app = spawn_app_with(kind, edit).await;
    let anthropic = MockAnthropic::start();
    for (name, kind, base_url, api_key) in [
        (
            "anth",
            "anthropic",
            anthropic.base_url.as_str(),
            mock_anthropic::MOCK_API_KEY,
        ),
        (
            "mock",
            "openai",
            app.mock.base_url.as_str(),
            mock_openai::MOCK_API_KEY,
        ),
    ] {
        app.add_provider(
            json!({"name": name, "kind": kind, "base_url": base_url, "api_key": api_key}),
        )
        .await;
    }
    for model in ["anth/conf-text", "mock/gpt-mock"] {
        app.set_price(
            model,
            json!({"input_per_mtok": "0.000001", "output_per_mtok": "1000",
                "cache_read_per_mtok": "0.000001", "cache_write_per_mtok": "0.000001",
                "max_output_tokens": 1}),
        )
        .await;
    }
    let (tenant, key) = app.tenant_with_key(credits, "member").await;
    Setup {
        app,
        _anthropic: anthropic,
        tenant,
        key,
    }
}

impl Setup {
    async fn messages(&self, body: &Value) -> reqwest::Response {
        self.messages_with(&self.key, body).await
    }

    async fn messages_with(&self, key: &str, body: &Value) -> reqwest::Response {
        self.app
            .client
            .post(format!("{}/v1/messages", self.app.address))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The operator's explanation of one request's charge.
    async fn explain(&self, request_id: &str) -> Value {
        self.app
            .admin_json(
                Method::GET,
                &format!("/admin/v1/tenants/{}/requests/{request_id}", self.tenant),
                None,
            )
            .await
    }

    /// The request was settled at `usage` for `cost`, and that is all the tenant
    /// spent: nothing held, and never more than the credit it had (the spend
    /// limit of a lone request is the whole available credit at admission).
    async fn assert_charged(&self, request_id: &str, usage: Value, cost: Credits, initial: &str) {
        let explained = self.explain(request_id).await;
        assert_eq!(explained["status"], "settled", "{explained}");
        assert_eq!(explained["usage"], usage, "{explained}");
        assert_eq!(explained["cost"], cost.to_decimal_string(), "{explained}");
        let balance = self.app.balance(&self.tenant).await;
        assert_eq!(balance["held"], "0", "{balance}");
        assert_eq!(balance["spent"], cost.to_decimal_string(), "{balance}");
        let available = Credits::parse(balance["available"].as_str().unwrap()).unwrap();
        assert_eq!(available, Credits::parse(initial).unwrap() - cost);
        assert!(available >= Credits::ZERO, "never below zero: {balance}");
    }
}

fn pico(p: u64) -> Credits {
    Credits::from_pico(p as i128)
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter_map(|(_, e)| e.pointer("/delta/text").and_then(Value::as_str))
        .collect()
}

fn messages_request(model: &str) -> Value {
    json!({"model": model, "max_tokens": 1, "stream": true,
        "messages": [{"role": "user", "content": "Say hello"}]})
}

/// Pass-through from Anthropic: the mock reports input and cache counts in
/// `message_start` (output 1) and the real output only in `message_delta`. The
/// credit pays for two output tokens: "Hel" and "lo " go out, "there" would make
/// three and is not sent; the open text block is closed and the stop is Anthropic's
/// `max_tokens`. The charge is the provider's input figures and the text's
/// estimate of the output (more than the provider's 1 so far), flagged.
async fn anthropic_passthrough_stream_is_cut(kind: StoreKind) {
    let s = setup(kind, "0.0025", |_| {}).await;
    let response = s.messages(&messages_request("anth/conf-text")).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let events = anthropic_events(&response.text().await.unwrap());
    assert_eq!(
        event_names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(text_of(&events), "Hello ");
    assert_eq!(
        events[5].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    let usage_json = json!({
        "input_tokens": mock_anthropic::TEXT_INPUT_TOKENS,
        "cache_creation_input_tokens": mock_anthropic::TEXT_CACHE_CREATION_TOKENS,
        "cache_read_input_tokens": mock_anthropic::TEXT_CACHE_READ_TOKENS,
        "output_tokens": 2,
    });
    assert_eq!(
        events[6].1,
        json!({"type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": usage_json,
            "aigne_hub": {"stopped": "insufficient_credits", "message": CUTOFF_MESSAGE}})
    );

    let prompt = mock_anthropic::TEXT_INPUT_TOKENS
        + mock_anthropic::TEXT_CACHE_CREATION_TOKENS
        + mock_anthropic::TEXT_CACHE_READ_TOKENS;
    s.assert_charged(
        &id,
        json!({
            "input_tokens": mock_anthropic::TEXT_INPUT_TOKENS,
            "cache_read_tokens": mock_anthropic::TEXT_CACHE_READ_TOKENS,
            "cache_write_tokens": mock_anthropic::TEXT_CACHE_CREATION_TOKENS,
            "output_tokens": 2,
            "reasoning_tokens": 0,
            "images": 0,
            "estimated": true,
        }),
        pico(prompt * PICO_PER_PROMPT_TOKEN + 2 * PICO_PER_OUTPUT_TOKEN),
        "0.0025",
    )
    .await;
}
on_both_stores!(
    anthropic_passthrough_stream_is_cut,
    anthropic_passthrough_stream_is_cut
);

/// Translated from OpenAI: the mock reports usage only after its last chunk, so
/// the charge of a cut stream is the hub's estimate (prompt from the body's size,
/// output from the text sent). The credit pays for one output token: "Hel" goes
/// out, "lo " is not translated nor sent.
async fn translated_stream_is_cut(kind: StoreKind) {
    let s = setup(kind, "0.0015", |_| {}).await;
    let body = messages_request("mock/gpt-mock");
    let prompt_bytes = serde_json::to_vec(&body).unwrap().len() as u64;
    let response = s.messages(&body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let events = anthropic_events(&response.text().await.unwrap());
    assert_eq!(
        event_names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(text_of(&events), "Hel");
    assert_eq!(
        events[4].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    let input_tokens = prompt_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN);
    assert_eq!(
        events[5].1,
        json!({"type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0, "output_tokens": 1},
            "aigne_hub": {"stopped": "insufficient_credits", "message": CUTOFF_MESSAGE}})
    );
    s.assert_charged(
        &id,
        json!({
            "input_tokens": input_tokens,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 1,
            "reasoning_tokens": 0,
            "images": 0,
            "estimated": true,
        }),
        pico(input_tokens * PICO_PER_PROMPT_TOKEN + PICO_PER_OUTPUT_TOKEN),
        "0.0015",
    )
    .await;
}
on_both_stores!(translated_stream_is_cut, translated_stream_is_cut);

/// The AIGNE protocol: unnamed `data:` frames, the text sent so far, then the
/// usual last `json` frame (model, usage with the charge) carrying why it ended;
/// no error event, no `[DONE]`.
async fn aigne_stream_is_cut(kind: StoreKind) {
    let s = setup(kind, "0.0015", |_| {}).await;
    let response = post_v2(
        &s.app,
        &s.key,
        "/api/v2/chat",
        &chat_call("mock/gpt-mock", Some(true)),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    let events = parse_sse(&text);
    assert!(events.iter().all(|e| e.name.is_none()), "{text}");
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0].data, json!({"delta": {"text": {"text": "Hel"}}}));
    let last = &events[1].data["delta"]["json"];
    assert_eq!(
        last["aigne_hub"],
        json!({"stopped": "insufficient_credits", "message": CUTOFF_MESSAGE}),
        "{last}"
    );
    assert_eq!(last["modelWithProvider"], "mock/gpt-mock");
    assert_eq!(last["usage"]["outputTokens"], 1, "{last}");

    // The prompt's estimate is the hub's (from the call and its translation): the
    // charge is whatever that is at the rates, plus the one token sent.
    let explained = s.explain(&id).await;
    let input_tokens = explained["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input_tokens > 0, "{explained}");
    assert_eq!(last["usage"]["inputTokens"], input_tokens, "{last}");
    let cost = pico(input_tokens * PICO_PER_PROMPT_TOKEN + PICO_PER_OUTPUT_TOKEN);
    assert_eq!(
        last["usage"]["aigneHubCredits"].as_f64().unwrap(),
        cost.to_decimal_string().parse::<f64>().unwrap(),
        "{last}"
    );
    s.assert_charged(
        &id,
        json!({
            "input_tokens": input_tokens,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 1,
            "reasoning_tokens": 0,
            "images": 0,
            "estimated": true,
        }),
        cost,
        "0.0015",
    )
    .await;
}
on_both_stores!(aigne_stream_is_cut, aigne_stream_is_cut);

/// `AIGNE_HUB_STREAM_CREDIT_CUTOFF=off`: the same streams run to their end and are
/// charged what the provider reported, more than the tenant had (the overshoot is
/// recorded, docs/billing.md). Each runs for a tenant of its own, as the first
/// would leave a shared one without credit for the next hold.
async fn streams_are_not_cut_when_the_cutoff_is_off(kind: StoreKind) {
    let s = setup(kind, "0.0015", |settings| {
        settings.limits.stream_credit_cutoff = false
    })
    .await;
    let anthropic_cost = pico(
        (mock_anthropic::TEXT_INPUT_TOKENS
            + mock_anthropic::TEXT_CACHE_CREATION_TOKENS
            + mock_anthropic::TEXT_CACHE_READ_TOKENS)
            * PICO_PER_PROMPT_TOKEN
            + mock_anthropic::TEXT_OUTPUT_TOKENS * PICO_PER_OUTPUT_TOKEN,
    );
    let openai_cost = pico(
        mock_openai::PROMPT_TOKENS * PICO_PER_PROMPT_TOKEN
            + mock_openai::COMPLETION_TOKENS * PICO_PER_OUTPUT_TOKEN,
    );

    for (model, cost) in [
        ("anth/conf-text", anthropic_cost),
        ("mock/gpt-mock", openai_cost),
    ] {
        let (tenant, key) = s.app.tenant_with_key("0.0015", "member").await;
        let response = s.messages_with(&key, &messages_request(model)).await;
        assert_eq!(response.status(), 200);
        let events = anthropic_events(&response.text().await.unwrap());
        assert_eq!(text_of(&events), "Hello there", "{model}");
        assert_eq!(
            event_names(&events).last(),
            Some(&"message_stop"),
            "{model}"
        );
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{delta}");
        assert!(delta.get("aigne_hub").is_none(), "{delta}");
        assert_overshot(&s.app, &tenant, cost).await;
    }

    let (tenant, key) = s.app.tenant_with_key("0.0015", "member").await;
    let response = post_v2(
        &s.app,
        &key,
        "/api/v2/chat",
        &chat_call("mock/gpt-mock", Some(true)),
    )
    .await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.unwrap());
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|e| e.data.pointer("/delta/text/text").and_then(Value::as_str))
        .collect();
    assert_eq!(pieces, ["Hel", "lo ", "there"]);
    let last = &events.last().unwrap().data["delta"]["json"];
    assert!(last.get("aigne_hub").is_none(), "{last}");
    assert_eq!(
        last["usage"]["outputTokens"],
        mock_openai::COMPLETION_TOKENS,
        "{last}"
    );
    assert_overshot(&s.app, &tenant, openai_cost).await;
}
on_both_stores!(
    streams_are_not_cut_when_the_cutoff_is_off,
    streams_are_not_cut_when_the_cutoff_is_off
);

/// The tenant was charged the provider's whole figures, past its credit.
async fn assert_overshot(app: &TestApp, tenant: &str, cost: Credits) {
    let balance = app.balance(tenant).await;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(balance["spent"], cost.to_decimal_string(), "{balance}");
    // Below zero, which `Credits::parse` (amounts to grant) refuses to read.
    let available = Credits::parse("0.0015").unwrap() - cost;
    assert!(available < Credits::ZERO);
    assert_eq!(
        balance["available"],
        available.to_decimal_string(),
        "{balance}"
    );
}
