//! The size of a model call and of its upstream answer is bounded
//! (`Limits::embeddings_inputs_per_call_max`, `upstream_*_max_bytes`): a call
//! past a per-call limit is refused before any upstream call, an answer past
//! its byte limit is cut off as it arrives (502 `upstream_answer_too_large`),
//! and the hub never holds an answer of unbounded size in memory.

use crate::helpers::*;
use crate::mock_anthropic::{self, MockAnthropic};
use crate::mock_bedrock::{self, MockBedrock};
use crate::mock_gemini::{self, MockGemini};
use crate::mock_openai::MockUpstream;
use crate::on_both_stores;
use crate::process::HubEnv;
use serde_json::{json, Value};
use std::time::Duration;

/// A tenant with 10 credits and a member key, and the mock's models priced.
async fn tenant_with_key(app: &TestApp) -> (String, String) {
    app.setup_provider(&[
        ("text-embedding-3-small", "1", "0", None),
        ("huge-answer", "1", "2", None),
        ("endless-stream", "1", "2", None),
    ])
    .await;
    let (tenant, key) = app.tenant_with_key("10", "member").await;
    (tenant, key)
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn too_many_embedding_inputs_are_refused_before_the_upstream_is_called(kind: StoreKind) {
    // The default body limit, so that 100,000 inputs fit in one body.
    let app = spawn_app_with(kind, |s| s.limits.max_request_body_bytes = 8 * 1024 * 1024).await;
    let (tenant, key) = tenant_with_key(&app).await;
    let max = app.settings.limits.embeddings_inputs_per_call_max;
    assert_eq!(max, 2_048, "OpenAI's own limit");
    let model = "mock/text-embedding-3-small";
    let many: Vec<&str> = vec!["hello"; 100_000];
    let response = app
        .post(
            &key,
            "/v1/embeddings",
            &json!({"model": model, "input": many}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("100000") && message.contains("2048"),
        "{message}"
    );

    // Token arrays count one input each, and the AIGNE v2 path has the same bound.
    let tokens: Vec<Vec<u32>> = vec![vec![15339]; max + 1];
    let response = app
        .post(
            &key,
            "/v1/embeddings",
            &json!({"model": model, "input": tokens}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let aigne =
        json!({"input": {"input": vec!["hello"; max + 1], "modelOptions": {"model": model}}});
    let response = app.post(&key, "/api/v2/embeddings", &aigne).await;
    assert_eq!(response.status(), 400);

    assert!(app.mock.requests().is_empty(), "the upstream was called");
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], "0");
    assert_eq!(balance["held"], "0");

    // Exactly the limit is served.
    let response = app
        .post(
            &key,
            "/v1/embeddings",
            &json!({"model": model, "input": vec!["hello"; max]}),
        )
        .await;
    assert_eq!(response.status(), 200);
}
on_both_stores!(
    too_many_embedding_inputs_are_refused_before_the_upstream_is_called,
    too_many_embedding_inputs_are_refused_before_the_upstream_is_called
);

async fn an_oversized_answer_is_cut_off_with_502_and_the_hold_released(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.limits.upstream_embeddings_answer_max_bytes = 1024 * 1024;
        s.limits.upstream_images_answer_max_bytes = 1024 * 1024;
        s.limits.upstream_chat_answer_max_bytes = 1024 * 1024;
    })
    .await;
    let (tenant, key) = tenant_with_key(&app).await;
    let calls = [
        (
            "/v1/embeddings",
            json!({"model": "mock/huge-answer", "input": "hello"}),
        ),
        (
            "/v1/images/generations",
            json!({"model": "mock/huge-answer", "prompt": "a cat"}),
        ),
        ("/v1/chat/completions", chat_body("huge-answer", false)),
    ];
    for (path, body) in calls {
        let response = app.post(&key, path, &body).await;
        assert_eq!(response.status(), 502, "{path}");
        assert_eq!(
            error_code(response).await,
            "upstream_answer_too_large",
            "{path}"
        );
    }
    // One upstream call each: an answer too large is not asked for again.
    assert_eq!(app.mock.requests().len(), 3);
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    assert_eq!(balance["spent"], "0");
    assert_eq!(balance["available"], "10");
}
on_both_stores!(
    an_oversized_answer_is_cut_off_with_502_and_the_hold_released,
    an_oversized_answer_is_cut_off_with_502_and_the_hold_released
);

async fn a_stream_that_never_stops_is_cut_off_and_what_was_sent_is_settled(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.limits.upstream_stream_answer_max_bytes = 256 * 1024;
    })
    .await;
    let (tenant, key) = tenant_with_key(&app).await;
    let response = app.chat(&key, &chat_body("endless-stream", true)).await;
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("the hub ends a stream that never stops")
        .unwrap();
    assert!(text.contains("more "), "text was relayed first");
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["code"], "upstream_answer_too_large");
    assert!(text.len() < 2 * 256 * 1024, "relayed {} bytes", text.len());

    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    assert_ne!(balance["spent"], "0", "the text sent is charged");
}
on_both_stores!(
    a_stream_that_never_stops_is_cut_off_and_what_was_sent_is_settled,
    a_stream_that_never_stops_is_cut_off_and_what_was_sent_is_settled
);

async fn anthropic_answers_are_bounded_on_every_path(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.limits.upstream_chat_answer_max_bytes = 1024 * 1024;
        s.limits.upstream_stream_answer_max_bytes = 256 * 1024;
    })
    .await;
    let anthropic = MockAnthropic::start();
    let (tenant, key) = huge_and_endless(
        &app,
        json!({"name": "anth", "kind": "anthropic", "base_url": anthropic.base_url,
            "api_key": mock_anthropic::MOCK_API_KEY}),
    )
    .await;
    let messages = |model: &str, stream: bool| {
        app.client
            .post(format!("{}/v1/messages", app.address))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "max_tokens": 100, "stream": stream,
                "messages": [{"role": "user", "content": "Say hello"}]}))
            .send()
    };
    let read = |response: reqwest::Response| async {
        tokio::time::timeout(Duration::from_secs(20), response.text())
            .await
            .expect("the hub ends an answer past its limit")
            .unwrap()
    };

    // JSON, passed through and translated.
    let response = messages("anth/huge-answer", false).await.unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger than the limit"));
    let mut openai_in = chat_body("huge-answer", false);
    openai_in["model"] = json!("anth/huge-answer");
    let response = app.chat(&key, &openai_in).await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_answer_too_large");

    // Streams, passed through and translated: cut off with an error at the end.
    let text = read(messages("anth/endless-stream", true).await.unwrap()).await;
    assert!(text.contains("more "));
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error"), "{last}");
    assert!(last.contains("larger than the limit"), "{last}");
    let mut openai_in = chat_body("endless-stream", true);
    openai_in["model"] = json!("anth/endless-stream");
    let text = read(app.chat(&key, &openai_in).await).await;
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["code"], "upstream_answer_too_large");

    assert_eq!(anthropic.requests().len(), 4);
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    assert_ne!(balance["spent"], "0", "the streamed text is charged");
}
on_both_stores!(
    anthropic_answers_are_bounded_on_every_path,
    anthropic_answers_are_bounded_on_every_path
);

async fn gemini_answers_are_bounded(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.limits.upstream_chat_answer_max_bytes = 1024 * 1024;
        s.limits.upstream_embeddings_answer_max_bytes = 1024 * 1024;
        s.limits.upstream_stream_answer_max_bytes = 256 * 1024;
    })
    .await;
    let gemini = MockGemini::start();
    let (tenant, key) = huge_and_endless(
        &app,
        json!({"name": "gem", "kind": "gemini", "base_url": gemini.base_url,
            "api_key": mock_gemini::MOCK_GEMINI_KEY}),
    )
    .await;

    let mut chat = chat_body("huge-answer", false);
    chat["model"] = json!("gem/huge-answer");
    let response = app.chat(&key, &chat).await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_answer_too_large");
    let embed = json!({"model": "gem/huge-answer", "input": "hello"});
    let response = app.post(&key, "/v1/embeddings", &embed).await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_answer_too_large");

    let mut chat = chat_body("endless-stream", true);
    chat["model"] = json!("gem/endless-stream");
    let response = app.chat(&key, &chat).await;
    let text = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("the hub ends a stream that never stops")
        .unwrap();
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["code"], "upstream_answer_too_large");

    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    assert_ne!(balance["spent"], "0", "the streamed text is charged");
}
on_both_stores!(gemini_answers_are_bounded, gemini_answers_are_bounded);

async fn the_calls_of_one_bedrock_titan_embeddings_request_share_one_answer_limit(kind: StoreKind) {
    // Titan embeds one text per call; each answer (1,536 numbers) is under the
    // limit, ten of them are not.
    let app = spawn_app_with(kind, |s| {
        s.limits.upstream_embeddings_answer_max_bytes = 20 * 1024;
    })
    .await;
    let bedrock = MockBedrock::start();
    app.add_provider(
        json!({"name": "br", "kind": "bedrock", "region": mock_bedrock::MOCK_REGION,
            "access_key_id": mock_bedrock::MOCK_ACCESS_KEY_ID,
            "secret_access_key": mock_bedrock::MOCK_SECRET_ACCESS_KEY,
            "base_url": bedrock.base_url}),
    )
    .await;
    let model = "amazon.titan-embed-text-v1";
    app.set_price(
        &format!("br/{model}"),
        json!({"input_per_mtok": "1", "output_per_mtok": "0"}),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("10", "member").await;
    let one = json!({"model": format!("br/{model}"), "input": "hello"});
    assert_eq!(app.post(&key, "/v1/embeddings", &one).await.status(), 200);
    let ten = json!({"model": format!("br/{model}"), "input": vec!["hello"; 10]});
    let response = app.post(&key, "/v1/embeddings", &ten).await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_answer_too_large");
    assert_eq!(app.balance(&tenant).await["held"], "0");
}
on_both_stores!(
    the_calls_of_one_bedrock_titan_embeddings_request_share_one_answer_limit,
    the_calls_of_one_bedrock_titan_embeddings_request_share_one_answer_limit
);

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

async fn the_hub_stays_under_100_mb_while_upstreams_send_500_mb_answers(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::new(temp.path(), database_url_for(kind).await);
    let mock = MockUpstream::start();
    // The real binary with its default limits.
    let hub = env.start().await;
    let (_, key) = hub
        .setup(&env, &mock.base_url, &["huge-answer"], "10")
        .await;
    let client = reqwest::Client::new();
    let idle = peak_rss_bytes(hub.child.id());
    let calls = [
        (
            "/v1/embeddings",
            json!({"model": "mock/huge-answer", "input": "hello"}),
        ),
        (
            "/v1/images/generations",
            json!({"model": "mock/huge-answer", "prompt": "a cat"}),
        ),
        ("/v1/chat/completions", chat_body("huge-answer", false)),
    ];
    for (path, body) in calls {
        // Bounded, so that a hub that buffers the answer fails on memory below,
        // not by running out the test's time.
        let response = client
            .post(format!("{}{path}", hub.address))
            .bearer_auth(&key)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let peak = peak_rss_bytes(hub.child.id());
        println!(
            "{path}: the hub's resident memory peaked at {} MB ({} MB before the calls)",
            peak / 1_000_000,
            idle / 1_000_000
        );
        assert!(
            peak < 100_000_000,
            "{path}: the hub's resident memory peaked at {} MB",
            peak / 1_000_000
        );
        let response = response.unwrap();
        assert_eq!(response.status(), 502, "{path}");
        assert_eq!(
            error_code(response).await,
            "upstream_answer_too_large",
            "{path}"
        );
    }
}
on_both_stores!(
    the_hub_stays_under_100_mb_while_upstreams_send_500_mb_answers,
    the_hub_stays_under_100_mb_while_upstreams_send_500_mb_answers
);

#[test]
fn a_bedrock_event_stream_message_past_the_event_limit_is_refused_before_it_is_read() {
    use aigne_hub::providers::bedrock::EventStreamParser;
    use aigne_hub::providers::UpstreamError;
    let mut parser = EventStreamParser::new(1024);
    // The prelude announces a message of 1025 bytes.
    let prelude = 1025u32.to_be_bytes();
    assert!(matches!(
        parser.push(&prelude),
        Err(UpstreamError::AnswerTooLarge { limit_bytes: 1024 })
    ));
}

/// Adds `provider`, prices its mock's `huge-answer` and `endless-stream` models,
/// and returns a tenant with 10 credits and a member key.
async fn huge_and_endless(app: &TestApp, provider: Value) -> (String, String) {
    let name = provider["name"].as_str().unwrap().to_string();
    app.add_provider(provider).await;
    for model in ["huge-answer", "endless-stream"] {
        app.set_price(
            &format!("{name}/{model}"),
            json!({"input_per_mtok": "1", "output_per_mtok": "2", "max_output_tokens": 1000}),
        )
        .await;
    }
    let (tenant, key) = app.tenant_with_key("10", "member").await;
    (tenant, key)
}
