//! The AIGNE Hub v2 protocol (`/api/v2/...`, see docs/aigne.md): the shapes the
//! `@aigne/aigne-hub` client needs, and each trap of the original hub avoided.
//! The real client is driven in `aigne_client.rs`.

use crate::helpers::*;
use crate::mock_openai::{
    CACHED_TOKENS, COMPLETION_TOKENS, EMBEDDING_PROMPT_TOKENS, PROMPT_TOKENS,
};
use crate::on_both_stores;
use actix_web::{web, HttpResponse};
use domain::tenant::{AttemptOutcome, TenantEvent};
use domain::{Capability, Credits, Ingress};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const CLIENT_DID: &str = "@aigne/aigne-hub:test-host";

/// Pico-credits of one `gpt-mock` answer at 1 and 2 credits per million tokens.
const MOCK_CHAT_PICO: i128 =
    (PROMPT_TOKENS as i128) * 1_000_000 + (COMPLETION_TOKENS as i128) * 2_000_000;

pub async fn post_v2(app: &TestApp, key: &str, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}{path}", app.address))
        .bearer_auth(key)
        .header("x-aigne-hub-client-did", CLIENT_DID)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A chat call as the client 0.10.16 sends it.
pub fn chat_call(model: &str, streaming: Option<bool>) -> Value {
    let mut options = json!({"userContext": {}, "memories": []});
    if let Some(s) = streaming {
        options["streaming"] = json!(s);
    }
    json!({
        "input": {
            "messages": [{"role": "user", "content": "Say hello"}],
            "modelOptions": {"model": model, "parallelToolCalls": true,
                "cacheConfig": {"autoBreakpoints": {"lastMessage": true}}},
            "outputFileType": "url",
        },
        "agent": "$CHAT_MODEL",
        "options": options,
    })
}

/// One server-sent event: its name (if any) and its data.
#[derive(Debug)]
pub struct Event {
    pub name: Option<String>,
    pub data: Value,
}

pub fn parse_sse(text: &str) -> Vec<Event> {
    assert!(
        text.ends_with("\n\n"),
        "every frame ends with a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|frame| {
            let mut name = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(
                        serde_json::from_str(d)
                            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {d:?}")),
                    );
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            Event {
                name,
                data: data.expect("every frame has data"),
            }
        })
        .collect()
}

/// What the client makes of a stream: text deltas appended, `json` deltas
/// merged by shallow assignment (as `@aigne/core`'s `AgentResponseStreamParser`).
pub fn merge_like_the_client(events: &[Event]) -> Value {
    let mut out = serde_json::Map::new();
    for event in events {
        assert!(event.name.is_none(), "unexpected event {event:?}");
        if let Some(text) = event.data.pointer("/delta/text").and_then(Value::as_object) {
            for (key, piece) in text {
                let joined = out
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
                    + piece.as_str().unwrap();
                out.insert(key.clone(), json!(joined));
            }
        }
        if let Some(parts) = event.data.pointer("/delta/json").and_then(Value::as_object) {
            for (key, value) in parts {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

fn credits(pico: i128) -> String {
    Credits::from_pico(pico).to_decimal_string()
}

fn reservations(
    events: &[aigne_hub::store::StoredEvent],
) -> Vec<(Ingress, Option<String>, Capability)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::CreditsReserved {
                ingress,
                app,
                capability,
                ..
            } => Some((*ingress, app.clone(), *capability)),
            _ => None,
        })
        .collect()
}

fn attempt_outcomes(events: &[aigne_hub::store::StoredEvent]) -> Vec<(String, AttemptOutcome)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::UpstreamAttempted { model, outcome, .. } => {
                Some((model.to_string(), outcome.clone()))
            }
            _ => None,
        })
        .collect()
}

fn assert_usage_is_numbers(usage: &Value, cost_pico: i128) {
    assert_eq!(usage["inputTokens"], json!(PROMPT_TOKENS), "{usage}");
    assert_eq!(usage["outputTokens"], json!(COMPLETION_TOKENS), "{usage}");
    assert_eq!(
        usage["cacheReadInputTokens"],
        json!(CACHED_TOKENS),
        "{usage}"
    );
    assert!(
        usage["aigneHubCredits"].is_number(),
        "a JSON number: {usage}"
    );
    assert_eq!(
        usage["aigneHubCredits"].as_f64().unwrap(),
        credits(cost_pico).parse::<f64>().unwrap(),
        "the charge, in credits"
    );
    assert_eq!(usage["creditPrefix"], "$", "{usage}");
}

async fn discovery_and_catalogue_need_no_key(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[
        ("gpt-mock", "0.15", "0.6", Some(1000)),
        ("text-embedding-3-small", "0.02", "0", None),
    ])
    .await;
    app.set_price(
        "mock/gpt-image-1",
        json!({"input_per_mtok": "5", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.address)).send();

    let blocklet: Value = get("/__blocklet__.js?type=json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        blocklet["componentMountPoints"][0],
        json!({"title": "AIGNE Hub", "name": "ai-kit", "did": "z8ia3xzq2tMq8CRHfaXj1BTYJyYnEcHbqP8cJ", "mountPoint": "/", "status": "running"})
    );

    let chat: Value = get("/api/ai/models?type=chat")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        chat,
        json!([{
            "key": "mock/gpt-mock", "model": "gpt-mock", "type": "chat", "provider": "mock",
            "providerDisplayName": "mock",
            "input_credits_per_token": "0.00000015", "output_credits_per_token": "0.0000006",
            "modelMetadata": {"maxTokens": 1000}, "status": {"available": true},
        }])
    );
    let images: Value = get("/api/ai/models?type=image")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["model"], "gpt-image-1");
    assert_eq!(images[0]["output_credits_per_token"], "0.04", "per image");
    let embedding: Value = get("/api/ai/models?type=embedding")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embedding[0]["input_credits_per_token"], "0.00000002");
    let all: Value = get("/api/ai/models").await.unwrap().json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    for model in all.as_array().unwrap() {
        assert!(model["input_credits_per_token"].is_string(), "{model}");
        assert!(model["output_credits_per_token"].is_string(), "{model}");
    }

    let status: Value = get("/api/v2/status").await.unwrap().json().await.unwrap();
    assert_eq!(status, json!({"available": true}));
    let status: Value = get("/api/v2/status?model=mock/gpt-mock")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status, json!({"available": true}));
    let status: Value = get("/api/v2/status?model=mock/nope")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["available"], false);
    assert!(status["error"].as_str().unwrap().contains("mock/nope"));

    // With a key, the tenant's credit counts.
    let (_, key) = app.tenant_with_key("0", "member").await;
    let status: Value = app.get(&key, "/api/v2/status").await.json().await.unwrap();
    assert_eq!(status["available"], false);
    assert!(status["error"].as_str().unwrap().contains("credits grant"));
    let bad_key = app.get("aih_nope", "/api/v2/status").await;
    assert_eq!(bad_key.status(), 401);
}
on_both_stores!(
    discovery_and_catalogue_need_no_key,
    discovery_and_catalogue_need_no_key
);

async fn chat_answers_in_the_clients_shape_and_is_billed_like_openai(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let mut call = chat_call("mock/gpt-mock", None);
    call["input"]["somethingNewer"] = json!({"ignored": true});
    call["input"]["modelOptions"]["temperature"] = json!(0.5);
    // Only `options.streaming` decides: an SSE `Accept` changes nothing.
    let response = app
        .client
        .post(format!("{}/api/v2/chat", app.address))
        .bearer_auth(&key)
        .header("x-aigne-hub-client-did", CLIENT_DID)
        .header("accept", "text/event-stream")
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["text"], "Hello there");
    assert_eq!(answer["model"], "gpt-mock");
    assert_eq!(answer["modelWithProvider"], "mock/gpt-mock");
    assert_usage_is_numbers(&answer["usage"], MOCK_CHAT_PICO);
    let upstream = &app.mock.requests()[0];
    assert_eq!(upstream["model"], "gpt-mock");
    assert_eq!(upstream["temperature"], 0.5);
    assert_eq!(
        upstream["messages"],
        json!([{"role": "user", "content": "Say hello"}])
    );
    assert!(upstream.get("cacheConfig").is_none() && upstream.get("somethingNewer").is_none());

    // Same ledger as /v1: one hold, one settlement at the model's rates, with
    // the ingress and the calling app recorded.
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], credits(MOCK_CHAT_PICO));
    assert_eq!(balance["held"], "0");
    let events = tenant_events(&app, &tenant).await;
    assert_eq!(
        reservations(&events),
        vec![(
            Ingress::AigneV2,
            Some(CLIENT_DID.to_string()),
            Capability::Chat
        )]
    );
    let settled: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::UsageSettled {
                request_id,
                cost_pico,
                ..
            } => Some((request_id.to_string(), *cost_pico)),
            _ => None,
        })
        .collect();
    assert_eq!(
        settled,
        vec![(request_id, Credits::from_pico(MOCK_CHAT_PICO))]
    );
}
on_both_stores!(
    chat_answers_in_the_clients_shape_and_is_billed_like_openai,
    chat_answers_in_the_clients_shape_and_is_billed_like_openai
);

async fn streams_are_unnamed_data_frames_with_complete_usage_last(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    // No `Accept: text/event-stream`: the client sends none.
    let response = post_v2(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("mock/gpt-mock", Some(true)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("[DONE]"),
        "the client fails on [DONE]: {text}"
    );
    let events = parse_sse(&text);
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|e| e.data.pointer("/delta/text/text").and_then(Value::as_str))
        .collect();
    assert_eq!(pieces, ["Hel", "lo ", "there"]);
    // The last frame alone carries the whole usage: a shallow merge keeps it.
    let last = &events.last().unwrap().data["delta"]["json"];
    assert_usage_is_numbers(&last["usage"], MOCK_CHAT_PICO);
    assert_eq!(last["modelWithProvider"], "mock/gpt-mock");
    let merged = merge_like_the_client(&events);
    assert_eq!(merged["text"], "Hello there");
    assert_usage_is_numbers(&merged["usage"], MOCK_CHAT_PICO);
    for event in &events[..events.len() - 1] {
        assert!(
            event.data.pointer("/delta/json/usage").is_none(),
            "{:?}",
            event
        );
    }
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], credits(MOCK_CHAT_PICO));
    assert_eq!(balance["held"], "0");
    assert_eq!(
        reservations(&tenant_events(&app, &tenant).await)[0].0,
        Ingress::AigneV2
    );

    // `streaming: false` (or anything but `true`) is JSON.
    for streaming in [json!(false), json!("true"), json!(1)] {
        let mut call = chat_call("mock/gpt-mock", None);
        call["options"]["streaming"] = streaming.clone();
        let response = post_v2(&app, &key, "/api/v2/chat", &call).await;
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "streaming = {streaming}"
        );
    }
}
on_both_stores!(
    streams_are_unnamed_data_frames_with_complete_usage_last,
    streams_are_unnamed_data_frames_with_complete_usage_last
);

async fn tool_call_arguments_are_objects_both_ways(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("conf-tools", "1", "2", None)]).await;
    let (_, key) = app.tenant_with_key("1", "member").await;
    let mut call = chat_call("mock/conf-tools", None);
    call["input"]["messages"] = json!([
        {"role": "system", "content": "You check the weather."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "agent", "toolCalls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "toolCallId": "call_0", "content": "{\"temp\":20}"},
        {"role": "user", "content": "And Paris?"}
    ]);
    call["input"]["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    call["input"]["toolChoice"] = json!("auto");

    let answer: Value = post_v2(&app, &key, "/api/v2/chat", &call)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["toolCalls"],
        json!([{"id": "call_mock1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
    );
    assert!(answer.get("text").is_none(), "{answer}");
    let upstream = &app.mock.requests()[0];
    assert_eq!(upstream["messages"][2]["role"], "assistant");
    assert_eq!(
        upstream["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Rome\"}",
        "OpenAI takes a JSON string"
    );
    assert_eq!(upstream["messages"][3]["tool_call_id"], "call_0");
    assert_eq!(upstream["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(upstream["parallel_tool_calls"], true);

    // Streamed: the calls arrive complete, in one frame.
    call["options"]["streaming"] = json!(true);
    let events = parse_sse(
        &post_v2(&app, &key, "/api/v2/chat", &call)
            .await
            .text()
            .await
            .unwrap(),
    );
    let merged = merge_like_the_client(&events);
    assert_eq!(merged["toolCalls"], answer["toolCalls"]);
    let with_calls = events
        .iter()
        .filter(|e| e.data.pointer("/delta/json/toolCalls").is_some())
        .count();
    assert_eq!(with_calls, 1);
}
on_both_stores!(
    tool_call_arguments_are_objects_both_ways,
    tool_call_arguments_are_objects_both_ways
);

async fn errors_have_the_clients_shape(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", Some(1000))])
        .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let call = chat_call("mock/gpt-mock", None);

    let check = |body: &Value| {
        assert!(body["error"]["message"].is_string(), "{body}");
        assert!(body["error"]["type"].is_string(), "{body}");
    };
    let response = post_v2(&app, "aih_wrong", "/api/v2/chat", &call).await;
    assert_eq!(response.status(), 401);
    check(&response.json().await.unwrap());

    let (_, poor_key) = app.tenant_with_key("0.0001", "member").await;
    let response = post_v2(&app, &poor_key, "/api/v2/chat", &call).await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "NOT_ENOUGH");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("0.0001 available") && message.contains("add credits"),
        "says how to top up: {message}"
    );
    let response = post_v2(
        &app,
        &poor_key,
        "/api/v2/image",
        &json!({"input": {"prompt": "a cat", "modelOptions": {"model": "mock/gpt-mock"}}}),
    )
    .await;
    assert_eq!(response.status(), 402, "same 402 on every v2 call");

    let response = post_v2(&app, &key, "/api/v2/chat", &chat_call("mock/unknown", None)).await;
    assert_eq!(response.status(), 404);
    check(&response.json().await.unwrap());

    let mut bad = call.clone();
    bad["input"]["messages"][0]["role"] = json!("robot");
    let response = post_v2(&app, &key, "/api/v2/chat", &bad).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("input.messages[0].role"));

    let billing_key = app.issue_key(&tenant, "billing").await;
    let response = post_v2(&app, &billing_key, "/api/v2/chat", &call).await;
    assert_eq!(response.status(), 403);

    let balance = app.balance(&tenant).await;
    assert_charged_nothing(&balance);
    assert!(
        app.mock.requests().is_empty(),
        "nothing reached the upstream"
    );
}
on_both_stores!(errors_have_the_clients_shape, errors_have_the_clients_shape);

async fn a_failing_provider_gets_the_same_retries_fallbacks_and_events(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[
        ("gpt-mock", "1", "2", None),
        ("die-mid-stream", "1", "2", None),
    ])
    .await;
    app.set_price(
        "mock/fail-503",
        json!({"input_per_mtok": "1", "output_per_mtok": "2", "fallbacks": ["mock/gpt-mock"]}),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    for streaming in [None, Some(true)] {
        let response = post_v2(
            &app,
            &key,
            "/api/v2/chat",
            &chat_call("mock/fail-503", streaming),
        )
        .await;
        assert_eq!(response.status(), 200);
        let answer = match streaming {
            None => response.json::<Value>().await.unwrap(),
            Some(_) => merge_like_the_client(&parse_sse(&response.text().await.unwrap())),
        };
        assert_eq!(answer["text"], "Hello there");
        assert_eq!(
            answer["modelWithProvider"], "mock/gpt-mock",
            "the fallback answered"
        );
    }
    let events = tenant_events(&app, &tenant).await;
    let outcomes = attempt_outcomes(&events);
    // Per call: the model failed, was retried and failed, then the fallback answered.
    assert_eq!(outcomes.len(), 6, "{outcomes:?}");
    for call in outcomes.chunks(3) {
        assert_eq!(call[0].0, "mock/fail-503");
        assert!(matches!(
            call[0].1,
            AttemptOutcome::Failed {
                status: Some(503),
                ..
            }
        ));
        assert!(matches!(
            call[1].1,
            AttemptOutcome::Failed {
                status: Some(503),
                ..
            }
        ));
        assert_eq!(call[2].0, "mock/gpt-mock");
        assert!(matches!(call[2].1, AttemptOutcome::Succeeded));
    }
    assert_eq!(
        app.balance(&tenant).await["spent"],
        credits(2 * MOCK_CHAT_PICO)
    );

    // A stream that breaks after text: the error event, and what was sent is billed.
    let text = post_v2(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("mock/die-mid-stream", Some(true)),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = parse_sse(&text);
    let last = events.last().unwrap();
    assert_eq!(last.name.as_deref(), Some("error"), "{text}");
    assert!(
        last.data["message"].as_str().unwrap().contains("upstream"),
        "{text}"
    );
    assert!(events[0].data.pointer("/delta/text/text").is_some());
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    assert_ne!(
        balance["spent"],
        credits(2 * MOCK_CHAT_PICO),
        "the broken stream is billed"
    );
}
on_both_stores!(
    a_failing_provider_gets_the_same_retries_fallbacks_and_events,
    a_failing_provider_gets_the_same_retries_fallbacks_and_events
);

async fn images_are_urls_the_hub_serves_without_a_key(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[]).await;
    app.set_price(
        "mock/gpt-image-1",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let image_call = |file_type: &str, format: &str| {
        json!({"input": {"prompt": "a cat", "outputFileType": file_type, "n": 2,
            "modelOptions": {"model": "mock/gpt-image-1", "responseFormat": format}},
            "agent": "$CHAT_MODEL", "options": {"streaming": false, "userContext": {}}})
    };

    let response = post_v2(&app, &key, "/api/v2/image", &image_call("url", "b64_json")).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["modelWithProvider"], "mock/gpt-image-1");
    assert_eq!(answer["usage"]["aigneHubCredits"].as_f64(), Some(0.08));
    assert_eq!(answer["usage"]["creditPrefix"], "$");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let url = images[0]["url"].as_str().unwrap();
    assert_eq!(images[0]["type"], "url");
    assert_eq!(images[0]["mimeType"], "image/png");
    let prefix = format!("{}/api/v2/images/", app.address);
    assert!(url.starts_with(&prefix), "absolute, on the hub: {url}");
    assert!(url.len() >= prefix.len() + 43, "an unguessable id: {url}");
    assert_ne!(images[0]["url"], images[1]["url"]);
    // Fetchable without a key.
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.headers()["content-type"], "image/png");
    assert!(fetched.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    assert_eq!(&fetched.bytes().await.unwrap()[..], b"\x89PNG\r\n\x1a\n");
    let missing = reqwest::get(format!("{prefix}{}", "x".repeat(43)))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // `file`: inline base64. An upstream URL is passed on as it is.
    let answer: Value = post_v2(&app, &key, "/api/v2/image", &image_call("file", "b64_json"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["images"][0],
        json!({"type": "file", "data": "iVBORw0KGgo=", "mimeType": "image/png"})
    );
    let answer: Value = post_v2(&app, &key, "/api/v2/image", &image_call("url", "url"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["images"][1]["url"], "https://images.example/1.png");

    let requests = app.mock.requests();
    assert_eq!(requests[0]["model"], "gpt-image-1");
    assert_eq!(requests[0]["n"], 2);
    assert_eq!(requests[0]["prompt"], "a cat");
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], "0.24", "6 images at 0.04");
    assert_eq!(balance["held"], "0");
    let events = tenant_events(&app, &tenant).await;
    assert!(reservations(&events).iter().all(|r| *r
        == (
            Ingress::AigneV2,
            Some(CLIENT_DID.to_string()),
            Capability::Images
        )));

    let edit = json!({"input": {"prompt": "a cat", "image": [{"type": "url", "url": "https://x/y.png"}], "modelOptions": {"model": "mock/gpt-image-1"}}});
    assert_eq!(
        post_v2(&app, &key, "/api/v2/image", &edit).await.status(),
        400
    );
}
on_both_stores!(
    images_are_urls_the_hub_serves_without_a_key,
    images_are_urls_the_hub_serves_without_a_key
);

async fn embeddings_are_billed_by_input_tokens(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("text-embedding-3-small", "1", "0", None)])
        .await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    let call = json!({"input": {"input": ["a", "b"], "modelOptions": {"model": "mock/text-embedding-3-small"}}});
    let answer: Value = post_v2(&app, &key, "/api/v2/embeddings", &call)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(answer["embeddings"][0], json!([0.0023, -0.0093, 0.0158]));
    assert_eq!(answer["data"][1]["index"], 1);
    assert_eq!(
        answer["usage"]["inputTokens"],
        json!(EMBEDDING_PROMPT_TOKENS)
    );
    assert_eq!(answer["usage"]["outputTokens"], json!(0));
    let cost = EMBEDDING_PROMPT_TOKENS as i128 * 1_000_000;
    assert_eq!(
        answer["usage"]["aigneHubCredits"].as_f64().unwrap(),
        credits(cost).parse::<f64>().unwrap()
    );
    // The older flat shape works too.
    let flat = json!({"model": "mock/text-embedding-3-small", "input": "a"});
    assert_eq!(
        post_v2(&app, &key, "/api/v2/embeddings", &flat)
            .await
            .status(),
        200
    );
    assert_eq!(app.balance(&tenant).await["spent"], credits(2 * cost));
    let bad =
        json!({"input": {"input": [], "modelOptions": {"model": "mock/text-embedding-3-small"}}});
    assert_eq!(
        post_v2(&app, &key, "/api/v2/embeddings", &bad)
            .await
            .status(),
        400
    );
}
on_both_stores!(
    embeddings_are_billed_by_input_tokens,
    embeddings_are_billed_by_input_tokens
);

async fn the_credit_prefix_is_a_setting(kind: StoreKind) {
    for (prefix, expected) in [(Some("€"), json!("€")), (None, Value::Null)] {
        let mut app = spawn_app(kind).await;
        app.settings.aigne.credit_prefix = prefix.map(str::to_string);
        let app = app.restart().await;
        app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
        let (_, key) = app.tenant_with_key("1", "member").await;
        let answer: Value = post_v2(
            &app,
            &key,
            "/api/v2/chat",
            &chat_call("mock/gpt-mock", None),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(answer["usage"]["creditPrefix"], expected);
        let info: Value = app.get(&key, "/api/user/info").await.json().await.unwrap();
        assert_eq!(info["creditPrefix"], expected);
    }
}
on_both_stores!(
    the_credit_prefix_is_a_setting,
    the_credit_prefix_is_a_setting
);

// ---------------------------------------------------------------------------
// Slow calls: a mock upstream that takes its time.

/// How long the slow mock takes to answer.
pub const SLOW_MS: u64 = 1_000;

/// An OpenAI-shaped upstream that answers after [`SLOW_MS`]: `slow-chat`
/// answers, `slow-fail` fails with 503 after 400 ms, images come as base64.
pub fn start_slow_upstream() -> String {
    async fn chat(body: web::Json<Value>) -> HttpResponse {
        if body["model"] == "slow-fail" {
            tokio::time::sleep(Duration::from_millis(400)).await;
            return HttpResponse::ServiceUnavailable().json(
                json!({"error": {"message": "slow upstream overloaded", "type": "server_error"}}),
            );
        }
        tokio::time::sleep(Duration::from_millis(SLOW_MS)).await;
        let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
        if body["stream"] == true {
            let chunk = |delta: Value, usage: Value| {
                let chunk = json!({"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                    "choices": if usage.is_null() { json!([{"index": 0, "delta": delta, "finish_reason": null}]) } else { json!([]) },
                    "usage": usage});
                format!("data: {chunk}\n\n")
            };
            let frames = chunk(
                json!({"role": "assistant", "content": "Slow hello"}),
                Value::Null,
            ) + &chunk(json!({}), usage)
                + "data: [DONE]\n\n";
            return HttpResponse::Ok()
                .content_type("text/event-stream")
                .body(frames);
        }
        HttpResponse::Ok().json(json!({
            "id": "chatcmpl-slow", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Slow hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
    async fn images() -> HttpResponse {
        tokio::time::sleep(Duration::from_millis(SLOW_MS)).await;
        HttpResponse::Ok().json(json!({"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]}))
    }
    let port = serve_mock(|routes| {
        routes
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/images/generations", web::post().to(images));
    });
    format!("http://127.0.0.1:{port}/v1")
}

/// Adds the slow mock as provider `slow`, with `slow/gpt-image-1` at 0.04 an
/// image and `slow/slow-chat`, `slow/slow-fail` at 1 and 2 credits per Mtok.
pub async fn setup_slow_provider(app: &TestApp) {
    app.add_provider(json!({"name": "slow", "kind": "openai", "base_url": start_slow_upstream(), "api_key": "sk-slow"}))
    .await;
    app.set_price(
        "slow/gpt-image-1",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    for model in ["slow-chat", "slow-fail"] {
        app.set_price(
            &format!("slow/{model}"),
            json!({"input_per_mtok": "1", "output_per_mtok": "2", "max_output_tokens": 100}),
        )
        .await;
    }
}

/// Sends a call; returns when its headers and its whole body arrived, and the body.
async fn timed(
    app: &TestApp,
    key: &str,
    path: &str,
    body: &Value,
) -> (Duration, Duration, u16, Value) {
    let started = Instant::now();
    let response = post_v2(app, key, path, body).await;
    let headers_after = started.elapsed();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (headers_after, started.elapsed(), status, body)
}

async fn slow_calls_get_their_headers_at_once_and_one_charge(kind: StoreKind) {
    let mut app = spawn_app(kind).await;
    app.settings.limits.aigne_headers_after_ms = 200;
    let app = app.restart().await;
    setup_slow_provider(&app).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    // An image that takes 1 s: status and headers after 200 ms, the body after 1 s.
    let call = json!({"input": {"prompt": "a slow cat", "outputFileType": "url", "modelOptions": {"model": "slow/gpt-image-1"}},
        "agent": "$CHAT_MODEL", "options": {"streaming": false, "userContext": {}}});
    let (headers_after, body_after, status, answer) =
        timed(&app, &key, "/api/v2/image", &call).await;
    assert_eq!(status, 200);
    assert!(
        headers_after < Duration::from_millis(SLOW_MS - 300),
        "headers after {headers_after:?}"
    );
    assert!(
        body_after >= Duration::from_millis(SLOW_MS),
        "body after {body_after:?}"
    );
    assert_eq!(answer["images"][0]["type"], "url", "{answer}");
    assert_eq!(answer["usage"]["aigneHubCredits"].as_f64(), Some(0.04));
    // One call, one charge, one upstream try.
    let balance = app.balance(&tenant).await;
    assert_eq!(
        (balance["spent"].as_str(), balance["held"].as_str()),
        (Some("0.04"), Some("0"))
    );
    assert_eq!(
        attempt_outcomes(&tenant_events(&app, &tenant).await).len(),
        1
    );

    // The same for a slow chat, JSON and streamed.
    let (headers_after, _, _, answer) = timed(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("slow/slow-chat", None),
    )
    .await;
    assert!(
        headers_after < Duration::from_millis(SLOW_MS - 300),
        "headers after {headers_after:?}"
    );
    assert_eq!(answer["text"], "Slow hello");
    assert_eq!(answer["usage"]["inputTokens"], 10);
    let started = Instant::now();
    let response = post_v2(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("slow/slow-chat", Some(true)),
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(SLOW_MS - 300));
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let merged = merge_like_the_client(&parse_sse(&response.text().await.unwrap()));
    assert_eq!(merged["text"], "Slow hello");
    assert_eq!(merged["usage"]["outputTokens"], 5);

    // A hold is visible as pending credit while a call is in flight.
    let in_flight = {
        let (address, key) = (app.address.clone(), key.clone());
        actix_web::rt::spawn(async move {
            reqwest::Client::new()
                .post(format!("{address}/api/v2/chat"))
                .bearer_auth(key)
                .json(&chat_call("slow/slow-chat", None))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
    };
    // Only while the slow call is in flight.
    let in_flight_ms = Duration::from_millis(SLOW_MS - 200);
    let pending = poll_for(in_flight_ms, || async {
        let pending = user_info(&app, &key).await["creditBalance"]["pendingCredit"].clone();
        (pending != "0").then_some(pending)
    })
    .await;
    assert!(pending.is_some(), "the call's hold shows as pending credit");
    in_flight.await.unwrap();
    let info = user_info(&app, &key).await;
    assert_eq!(info["creditBalance"]["pendingCredit"], "0", "{info}");
    let slow_chat_pico: i128 = 10 * 1_000_000 + 5 * 2_000_000;
    let spent = 40_000_000_000 + 3 * slow_chat_pico;
    assert_eq!(
        info["creditBalance"]["balance"],
        credits(1_000_000_000_000 - spent)
    );
    assert_eq!(info["creditBalance"]["total"], "1");

    // A call that fails after its headers went: the error is in the body (with a
    // `creditPrefix` the client refuses, so it fails with the message) and
    // nothing is charged.
    let (headers_after, _, status, body) = timed(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("slow/slow-fail", None),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers_after < Duration::from_millis(700),
        "{headers_after:?}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upstream answered 503 (server_error)"),
        "{body}"
    );
    assert!(body["usage"]["creditPrefix"]
        .as_str()
        .unwrap()
        .contains("upstream answered 503 (server_error)"));
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], credits(spent));
    assert_eq!(balance["held"], "0");
    // Streamed, it is the stream's error event.
    let text = post_v2(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("slow/slow-fail", Some(true)),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0].name.as_deref(), Some("error"));
    assert!(events[0].data["message"]
        .as_str()
        .unwrap()
        .contains("upstream answered 503 (server_error)"));

    // Calls answered in time keep their real status.
    app.setup_provider(&[]).await;
    app.set_price(
        "mock/fail-400",
        json!({"input_per_mtok": "1", "output_per_mtok": "2"}),
    )
    .await;
    let response = post_v2(
        &app,
        &key,
        "/api/v2/chat",
        &chat_call("mock/fail-400", None),
    )
    .await;
    assert_eq!(response.status(), 400);
}
on_both_stores!(
    slow_calls_get_their_headers_at_once_and_one_charge,
    slow_calls_get_their_headers_at_once_and_one_charge
);

pub async fn user_info(app: &TestApp, key: &str) -> Value {
    let response = app.get(key, "/api/user/info").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn user_info_shows_the_tenants_credit(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("12.5").await;
    for role in ["member", "billing", "auditor", "admin"] {
        let key = app.issue_key(&tenant, role).await;
        let info = user_info(&app, &key).await;
        assert_eq!(info["user"]["did"], tenant);
        assert_eq!(info["user"]["fullName"], "acme");
        assert_eq!(
            info["creditBalance"],
            json!({"balance": "12.5", "total": "12.5", "pendingCredit": "0", "spent": "0"}),
            "{role}"
        );
        assert_eq!(info["enableCredit"], true);
    }
    let response = app
        .client
        .get(format!("{}/api/user/info", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}
on_both_stores!(
    user_info_shows_the_tenants_credit,
    user_info_shows_the_tenants_credit
);
