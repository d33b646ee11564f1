//! Amazon Bedrock (Converse API) through the conformance suite against the mock
//! Bedrock runtime, plus focused tests of the request and response translation,
//! SigV4 signing and the event-stream decoding.

use crate::conformance::{self, sse_data, Fixture, Setup};
use crate::conformance_suite;
use crate::helpers::*;
use crate::mock_bedrock::*;
use crate::on_both_stores;
use aigne_hub::providers::bedrock::{
    converse_path, converse_stream, converse_to_openai_response, finish_reason,
    openai_to_converse_request, sigv4_headers, usage_from_converse, ByteStream,
    ConverseStreamTranslator, EventStreamParser, EVENT_STREAM_MESSAGE_MAX_BYTES,
};
use aigne_hub::providers::{StreamItem, UpstreamError};
use bytes::Bytes;
use domain::tenant::TenantEvent;
use domain::Usage;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// What the mock reports for `conf-text`, normalized: `inputTokens` already
/// excludes the cache reads and writes.
fn text_usage() -> Usage {
    Usage {
        input_tokens: TEXT_INPUT_TOKENS,
        cache_read_tokens: TEXT_CACHE_READ_TOKENS,
        cache_write_tokens: TEXT_CACHE_WRITE_TOKENS,
        output_tokens: TEXT_OUTPUT_TOKENS,
        ..Usage::default()
    }
}

fn tools_usage() -> Usage {
    Usage {
        input_tokens: TOOLS_INPUT_TOKENS,
        output_tokens: TOOLS_OUTPUT_TOKENS,
        ..Usage::default()
    }
}

fn provider_body(mock: &MockBedrock, secret: &str) -> Value {
    json!({
        "kind": "bedrock",
        "region": MOCK_REGION,
        "access_key_id": MOCK_ACCESS_KEY_ID,
        "secret_access_key": secret,
        "base_url": mock.base_url,
    })
}

fn fixture() -> Fixture {
    let mock = MockBedrock::start();
    Fixture {
        provider: provider_body(&mock, MOCK_SECRET_ACCESS_KEY),
        text_usage: text_usage(),
        tools_usage: tools_usage(),
        _mock: Box::new(mock),
    }
}

conformance_suite!(bedrock, fixture());

// ---------------------------------------------------------------------------
// Request translation

#[test]
fn openai_request_becomes_converse() {
    let request = json!({
        "model": "anthropic.claude-3-haiku-20240307-v1:0",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 50,
        "max_completion_tokens": 20,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "stream": true,
        "user": "someone"
    });
    let converse = openai_to_converse_request(&request).unwrap();
    assert_eq!(
        converse,
        json!({
            "system": [{"text": "Be brief."}, {"text": "Answer in French."}],
            "messages": [
                {"role": "user", "content": [
                    {"text": "What is this, and the weather?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
                ]},
                {"role": "assistant", "content": [
                    {"text": "Checking."},
                    {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "get_time", "input": {}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"json": {"temp_c": 21}}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"text": "12:00"}]}},
                    {"text": "Thanks"}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 20, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [
                    {"toolSpec": {"name": "get_weather", "description": "Current weather",
                        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}},
                    {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
                ],
                "toolChoice": {"tool": {"name": "get_weather"}}
            }
        })
    );
}

#[test]
fn tool_choice_and_limits_map() {
    let base = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "max_tokens": 7,
        "stop": ["a", "b"]
    });
    let with = |choice: Value| {
        let mut r = base.clone();
        r["tool_choice"] = choice;
        openai_to_converse_request(&r).unwrap()
    };
    assert_eq!(
        with(json!("auto"))["toolConfig"]["toolChoice"],
        json!({"auto": {}})
    );
    assert_eq!(
        with(json!("required"))["toolConfig"]["toolChoice"],
        json!({"any": {}})
    );
    assert!(with(json!("none")).get("toolConfig").is_none());
    let converse = openai_to_converse_request(&base).unwrap();
    assert!(converse["toolConfig"].get("toolChoice").is_none());
    assert_eq!(
        converse["inferenceConfig"],
        json!({"maxTokens": 7, "stopSequences": ["a", "b"]})
    );
    assert!(converse.get("system").is_none());
    assert!(
        converse.get("model").is_none(),
        "the model id goes in the path"
    );
}

#[test]
fn inputs_bedrock_cannot_take_are_refused() {
    let remote_image = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    assert!(matches!(
        openai_to_converse_request(&remote_image),
        Err(UpstreamError::Unsupported { .. })
    ));
    let bad_arguments = json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1"}}]}]});
    assert!(matches!(
        openai_to_converse_request(&bad_arguments),
        Err(UpstreamError::Unsupported { .. })
    ));
}

#[test]
fn model_ids_are_one_encoded_path_segment() {
    assert_eq!(
        converse_path("anthropic.claude-3-haiku-20240307-v1:0", false),
        "model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    );
    assert_eq!(
        converse_path(
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
            true
        ),
        "model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-2-1b-instruct-v1%3A0/converse-stream"
    );
}

#[test]
fn sigv4_authorization_has_the_bedrock_scope() {
    // 2015-08-30T12:36:00Z, the date of AWS's own SigV4 examples.
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
    let headers = sigv4_headers(
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        b"{}",
        MOCK_ACCESS_KEY_ID,
        MOCK_SECRET_ACCESS_KEY,
        "us-east-1",
        time,
    )
    .unwrap();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
    };
    assert_eq!(get("x-amz-date"), "20150830T123600Z");
    let authorization = get("authorization");
    let prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date, Signature=";
    assert!(authorization.starts_with(prefix), "{authorization}");
    let signature = &authorization[prefix.len()..];
    assert_eq!(signature.len(), 64);
    assert!(signature.bytes().all(|b| b.is_ascii_hexdigit()));
}

// ---------------------------------------------------------------------------
// Response translation

#[test]
fn converse_answer_becomes_chat_completion() {
    let body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "User wants weather.", "signature": "sig"}}},
            {"text": "Let me check."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 21, "cacheReadInputTokens": 6, "cacheWriteInputTokens": 1},
        "metrics": {"latencyMs": 10}
    });
    let outcome = converse_to_openai_response(&body, "model-x", "chatcmpl-r1").unwrap();
    let b = &outcome.body;
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["id"], "chatcmpl-r1");
    assert_eq!(b["model"], "model-x");
    let message = &b["choices"][0]["message"];
    assert_eq!(message["content"], "Let me check.");
    assert_eq!(message["reasoning_content"], "User wants weather.");
    assert_eq!(message["tool_calls"][0]["id"], "tooluse_1");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    assert_eq!(b["choices"][0]["finish_reason"], "tool_calls");
    let usage = outcome.usage.unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            usage.output_tokens
        ),
        (10, 6, 1, 4)
    );
    assert_eq!(b["usage"]["prompt_tokens"], 17);
    assert_eq!(b["usage"]["completion_tokens"], 4);
    assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 6);

    assert!(matches!(
        converse_to_openai_response(&json!({"stopReason": "end_turn"}), "m", "i"),
        Err(UpstreamError::Protocol(_))
    ));
    assert!(usage_from_converse(&json!({"outputTokens": 3})).is_none());
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        assert_eq!(finish_reason(stop), finish, "{stop}");
    }
}

// ---------------------------------------------------------------------------
// Event-stream decoding

fn decode_all(parser: &mut EventStreamParser) -> Vec<aws_smithy_types::event_stream::Message> {
    let mut out = Vec::new();
    while let Some(m) = parser.next_message().unwrap() {
        out.push(m);
    }
    out
}

#[test]
fn frames_split_anywhere_are_reassembled() {
    let frames = text_frames(&["Hel".into(), "lo ".into(), "there".into()]);
    let all: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
    // One byte at a time: through preludes, headers, payloads and CRCs.
    let mut parser = EventStreamParser::default();
    let mut messages = Vec::new();
    for byte in &all {
        parser.push(std::slice::from_ref(byte)).unwrap();
        messages.extend(decode_all(&mut parser));
    }
    assert_eq!(messages.len(), frames.len());
    assert!(!parser.has_partial());
    // Everything in one chunk.
    let mut parser = EventStreamParser::default();
    parser.push(&all).unwrap();
    assert_eq!(decode_all(&mut parser).len(), frames.len());
    // A partial frame is reported as such.
    let mut parser = EventStreamParser::default();
    parser.push(&all[..all.len() - 3]).unwrap();
    assert_eq!(decode_all(&mut parser).len(), frames.len() - 1);
    assert!(parser.has_partial());
}

#[test]
fn a_bad_crc_or_length_is_an_error() {
    let good = event_frame(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": "x"}}),
    );
    // Message CRC (last 4 bytes).
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let mut parser = EventStreamParser::default();
    parser.push(&bad).unwrap();
    assert!(matches!(
        parser.next_message(),
        Err(UpstreamError::Protocol(m)) if m.contains("bad event-stream message")
    ));
    // Prelude CRC (bytes 8..12).
    let mut bad = good.to_vec();
    bad[9] ^= 0x01;
    let mut parser = EventStreamParser::default();
    parser.push(&bad).unwrap();
    assert!(parser.next_message().is_err());
    // A payload byte flipped.
    let mut bad = good.to_vec();
    bad[good.len() - 8] ^= 0x01;
    let mut parser = EventStreamParser::default();
    parser.push(&bad).unwrap();
    assert!(parser.next_message().is_err());
    // A length past the limit is refused before anything is buffered for it.
    let mut parser = EventStreamParser::default();
    let huge = (EVENT_STREAM_MESSAGE_MAX_BYTES as u32 + 1).to_be_bytes();
    assert!(parser.push(&huge).is_err());
    let mut parser = EventStreamParser::default();
    assert!(parser.push(&[0, 0, 0, 3]).is_err());
}

#[test]
fn events_translate_to_openai_items() {
    let mut translator = ConverseStreamTranslator::new("chatcmpl-x", "m");
    let mut parser = EventStreamParser::default();
    for f in tool_frames() {
        parser.push(&f).unwrap();
    }
    let mut items = Vec::new();
    for m in decode_all(&mut parser) {
        items.extend(translator.items_for(&m).unwrap());
    }
    assert!(translator.stopped());
    let chunks: Vec<&Value> = items
        .iter()
        .filter_map(|i| match i {
            StreamItem::Chunk(c) => Some(c),
            _ => None,
        })
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-x");
        assert!(c.get("usage").is_none());
        assert_eq!(c["choices"][0]["index"], 0);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["content"],
        "Let me check the weather."
    );
    // The tool block is Converse block 1 but OpenAI tool call 0.
    assert_eq!(
        chunks[2]["choices"][0]["delta"]["tool_calls"],
        json!([{"index": 0, "id": "tooluse_mock1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}])
    );
    let arguments: String = chunks[3..5]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        items.last(),
        Some(&StreamItem::Usage(tools_usage())),
        "metadata usage comes last"
    );

    // An exception message is an error with the status Bedrock documents.
    let mut parser = EventStreamParser::default();
    parser
        .push(&exception_frame("throttlingException", "slow down"))
        .unwrap();
    let m = parser.next_message().unwrap().unwrap();
    match translator.items_for(&m) {
        Err(UpstreamError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 429);
            assert!(message.contains("slow down"), "{message}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

fn chunked(bytes: Vec<u8>, sizes: &[usize]) -> ByteStream {
    let mut pieces = Vec::new();
    let mut rest = &bytes[..];
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        pieces.push(Ok(Bytes::copy_from_slice(&rest[..n])));
        rest = &rest[n..];
        i += 1;
    }
    Box::pin(futures_util::stream::iter(pieces))
}

async fn collect(
    stream: aigne_hub::providers::ChatStream,
) -> Vec<Result<StreamItem, UpstreamError>> {
    stream.collect().await
}

#[actix_web::test]
async fn stream_decodes_frames_split_across_chunks() {
    let all: Vec<u8> = text_frames(&["Hel".into(), "lo ".into(), "there".into()])
        .iter()
        .flat_map(|f| f.to_vec())
        .collect();
    let stream = converse_stream(
        chunked(all, &[5, 1, 37, 200, 3]),
        ConverseStreamTranslator::new("id", "m"),
        Duration::from_secs(1),
    );
    let items: Vec<StreamItem> = collect(stream)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let text: String = items
        .iter()
        .filter_map(|i| match i {
            StreamItem::Chunk(c) => c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Hello there");
    assert!(items
        .iter()
        .any(|i| matches!(i, StreamItem::Chunk(c) if c["choices"][0]["finish_reason"] == "stop")));
    assert_eq!(items.last(), Some(&StreamItem::Usage(text_usage())));
}

#[actix_web::test]
async fn stream_errors_end_the_stream() {
    // A bad CRC after some text: the text, then one error, then nothing.
    let mut bytes: Vec<u8> = text_frames(&["Hel".into(), "lo".into()])
        .iter()
        .take(2)
        .flat_map(|f| f.to_vec())
        .collect();
    let mut bad = event_frame("contentBlockDelta", json!({"delta": {"text": "x"}})).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    bytes.extend(bad);
    let items = collect(converse_stream(
        chunked(bytes, &[7]),
        ConverseStreamTranslator::new("id", "m"),
        Duration::from_secs(1),
    ))
    .await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[..2].iter().all(Result::is_ok));
    assert!(matches!(items[2], Err(UpstreamError::Protocol(_))));

    // A clean end without messageStop is not a complete answer.
    let frames = text_frames(&["Hel".into()]);
    let bytes: Vec<u8> = frames[..frames.len() - 2]
        .iter()
        .flat_map(|f| f.to_vec())
        .collect();
    let items = collect(converse_stream(
        chunked(bytes, &[1000]),
        ConverseStreamTranslator::new("id", "m"),
        Duration::from_secs(1),
    ))
    .await;
    assert!(
        matches!(items.last(), Some(Err(UpstreamError::Protocol(m))) if m.contains("messageStop"))
    );

    // A truncated frame at the end.
    let bytes = text_frames(&["Hel".into()])[0].slice(..10).to_vec();
    let items = collect(converse_stream(
        chunked(bytes, &[1000]),
        ConverseStreamTranslator::new("id", "m"),
        Duration::from_secs(1),
    ))
    .await;
    assert!(
        matches!(items.last(), Some(Err(UpstreamError::Protocol(m))) if m.contains("mid-message"))
    );

    // Silence longer than the idle timeout.
    let first = text_frames(&["Hel".into()])[0].clone();
    let silent: ByteStream = Box::pin(
        futures_util::stream::iter(vec![Ok(first)]).chain(futures_util::stream::pending()),
    );
    let items = collect(converse_stream(
        silent,
        ConverseStreamTranslator::new("id", "m"),
        Duration::from_millis(50),
    ))
    .await;
    assert!(matches!(items.last(), Some(Err(UpstreamError::Timeout))));
}

// ---------------------------------------------------------------------------
// Through the hub, against the mock

/// The conformance setup with extra mock models priced under provider `conf`.
async fn setup_with(kind: StoreKind, models: &[&str]) -> (Setup, MockBedrock) {
    let mock = MockBedrock::start();
    let fixture = Fixture {
        provider: provider_body(&mock, MOCK_SECRET_ACCESS_KEY),
        text_usage: text_usage(),
        tools_usage: tools_usage(),
        _mock: Box::new(mock.clone()),
    };
    let s = conformance::setup(kind, fixture).await;
    for model in models {
        s.app
            .set_price(&format!("conf/{model}"), json!({"input_per_mtok": "1", "output_per_mtok": "2", "cache_read_per_mtok": "0.5", "cache_write_per_mtok": "1.25", "max_output_tokens": 1000}))
            .await;
    }
    (s, mock)
}

fn stream_request(model: &str) -> Value {
    json!({"model": format!("conf/{model}"), "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 100, "stream": true})
}

async fn settled(s: &Setup) -> Vec<Usage> {
    tenant_events(&s.app, &s.tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::UsageSettled { usage, .. } => Some(usage),
            _ => None,
        })
        .collect()
}

on_both_stores!(
    requests_are_signed_translated_and_encoded,
    |kind| async move {
        let model = "anthropic.claude-3-haiku-20240307-v1:0";
        let (s, mock) = setup_with(kind, &[model]).await;
        let body = json!({
            "model": format!("conf/{model}"),
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "max_tokens": 100,
            "temperature": 0.2
        });
        let response = s.app.chat(&s.key, &body).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "Hello there");
        assert_eq!(answer["id"], "chatcmpl-mock-request-1");
        assert_eq!(answer["model"], model);
        let requests = mock.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(
            r.path,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        assert_eq!(r.model_id, model);
        assert!(!r.stream);
        assert_eq!(r.body["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            r.body["messages"][2],
            json!({"role": "user", "content": [{"toolResult": {"toolUseId": "c1", "content": [{"text": "sunny"}]}}]})
        );
        assert_eq!(r.body["inferenceConfig"]["maxTokens"], 100);
        assert_eq!(
            r.body["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "get_weather"
        );
        assert!(mock.rejections().is_empty());

        // The stream goes to converse-stream, asking for the event-stream type.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let text = s.app.chat(&s.key, &streamed).await.text().await.unwrap();
        assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
        let r = &mock.requests()[1];
        assert!(r.stream);
        assert_eq!(
            r.path,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
        );
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "accept" && v == "application/vnd.amazon.eventstream"));
    }
);

on_both_stores!(
    a_wrong_secret_is_refused_by_the_upstream,
    |kind| async move {
        let mock = MockBedrock::start();
        let app = spawn_app(kind).await;
        let mut provider = provider_body(&mock, "not-the-right-secret-at-all");
        provider["name"] = json!("conf");
        app.add_provider(provider).await;
        app.set_price(
            "conf/conf-text",
            json!({"input_per_mtok": "1", "output_per_mtok": "2"}),
        )
        .await;
        let (tenant, key) = app.tenant_with_key("10", "member").await;
        for stream in [false, true] {
            let mut body = stream_request("conf-text");
            body["stream"] = json!(stream);
            let response = app.chat(&key, &body).await;
            assert_eq!(response.status(), 502);
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body["error"]["code"], "provider_credential_rejected",
                "{body}"
            );
        }
        // The hub may stop using a rejected credential after the first refusal, so
        // only the first request is sure to reach the mock.
        let rejections = mock.rejections();
        assert!(!rejections.is_empty());
        assert!(mock.requests().is_empty(), "nothing was accepted");
        assert!(
            rejections
                .iter()
                .all(|r| r.contains("signature does not match")),
            "{rejections:?}"
        );
        let balance = app.balance(&tenant).await;
        assert_charged_nothing(&balance);
    }
);

on_both_stores!(
    frames_split_over_tcp_writes_stream_whole,
    |kind| async move {
        let (s, _mock) = setup_with(kind, &["split-frames"]).await;
        let response = s.app.chat(&s.key, &stream_request("split-frames")).await;
        assert_eq!(response.status(), 200);
        let frames = sse_data(&response.text().await.unwrap());
        assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
        let text: String = frames[..frames.len() - 1]
            .iter()
            .map(|f| serde_json::from_str::<Value>(f).unwrap())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, "Hello there");
        assert_eq!(settled(&s).await, vec![text_usage()]);
    }
);

/// Streams that break after some text end with an error frame, are never
/// `[DONE]`, and are billed once (estimated: no usage arrived).
async fn broken_stream(kind: StoreKind, model: &str, expected_code: &str) {
    let (s, _mock) = setup_with(kind, &[model]).await;
    let text = s
        .app
        .chat(&s.key, &stream_request(model))
        .await
        .text()
        .await
        .unwrap();
    let frames = sse_data(&text);
    assert!(!frames.iter().any(|f| f == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], expected_code, "{last}");
    let first: Value = serde_json::from_str(&frames[1]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "Hel");
    s.app.wait_until_nothing_held(&s.tenant).await;
    let usage = settled(&s).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert!(usage[0].estimated);
}

on_both_stores!(a_bad_crc_mid_stream_is_an_error, |kind| async move {
    broken_stream(kind, "bad-crc", "upstream_error").await
});

on_both_stores!(a_stream_exception_maps_its_status, |kind| async move {
    broken_stream(kind, "stream-exception", "rate_limited").await
});

on_both_stores!(
    a_stream_without_message_stop_is_incomplete,
    |kind| async move {
        let (s, _mock) = setup_with(kind, &["no-stop"]).await;
        let text = s
            .app
            .chat(&s.key, &stream_request("no-stop"))
            .await
            .text()
            .await
            .unwrap();
        let frames = sse_data(&text);
        assert!(!frames.iter().any(|f| f == "[DONE]"), "{text}");
        let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
        assert!(last["error"]["message"].is_string(), "{last}");
    }
);

// ---------------------------------------------------------------------------
// InvokeModel: embeddings and images (through the hub: provider_capabilities.rs)

mod invoke_model {
    use super::*;
    use aigne_hub::crypto::Secret;
    use aigne_hub::providers::bedrock::{
        cohere_embed_request, embedding_family, invoke_path, is_text_image_model,
        openai_to_text_image_request, text_image_to_openai, titan_embed_request, EmbeddingFamily,
    };
    use aigne_hub::providers::{
        api_for, Credential, Provider, ProviderKind, Upstream, UpstreamCall,
    };

    #[test]
    fn the_body_family_follows_the_model_id() {
        use EmbeddingFamily::*;
        for (id, family) in [
            ("amazon.titan-embed-text-v2:0", Some(Titan)),
            ("amazon.titan-embed-text-v1", Some(Titan)),
            ("cohere.embed-english-v3", Some(Cohere)),
            ("us.cohere.embed-v4:0", Some(Cohere)),
            ("meta.llama3-8b-instruct-v1:0", None),
            ("amazon.nova-canvas-v1:0", None),
        ] {
            assert_eq!(embedding_family(id), family, "{id}");
        }
        assert!(is_text_image_model("amazon.titan-image-generator-v2:0"));
        assert!(is_text_image_model("amazon.nova-canvas-v1:0"));
        assert!(!is_text_image_model("stability.sd3-5-large-v1:0"));
        assert_eq!(
            invoke_path("cohere.embed-v4:0"),
            "model/cohere.embed-v4%3A0/invoke"
        );
    }

    #[test]
    fn embedding_requests_translate_per_family() {
        let request = json!({"model": "m", "input": ["x"], "dimensions": 512, "normalize": false, "encoding_format": "float"});
        assert_eq!(
            titan_embed_request("amazon.titan-embed-text-v2:0", "hello", &request),
            json!({"inputText": "hello", "dimensions": 512, "normalize": false})
        );
        assert_eq!(
            titan_embed_request("amazon.titan-embed-image-v1", "hello", &request),
            json!({"inputText": "hello", "embeddingConfig": {"outputEmbeddingLength": 512}})
        );
        let texts = vec!["a".to_string(), "b".to_string()];
        let plain = json!({"model": "m", "input": ["a", "b"]});
        assert_eq!(
            cohere_embed_request("cohere.embed-english-v3", &texts, &plain).unwrap(),
            json!({"texts": ["a", "b"], "input_type": "search_document"})
        );
        let asked = json!({"model": "m", "input": ["a"], "input_type": "classification", "truncate": "END", "dimensions": 256});
        assert_eq!(
            cohere_embed_request("cohere.embed-v4:0", &texts, &asked).unwrap(),
            json!({"texts": ["a", "b"], "input_type": "classification", "truncate": "END", "output_dimension": 256})
        );
        assert!(matches!(
            cohere_embed_request("cohere.embed-english-v3", &texts, &asked),
            Err(UpstreamError::Unsupported { .. })
        ));
    }

    #[test]
    fn image_requests_translate_to_text_image() {
        let body = openai_to_text_image_request(&json!({
            "model": "m", "prompt": "a cat", "n": 3, "size": "1024x576", "quality": "standard",
            "response_format": "url", "style": "vivid", "user": "u1"
        }))
        .unwrap();
        assert_eq!(
            body,
            json!({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a cat"},
                "imageGenerationConfig": {"numberOfImages": 3, "width": 1024, "height": 576, "quality": "standard"}})
        );
        let body = openai_to_text_image_request(
            &json!({"prompt": "a cat", "size": "auto", "quality": "high"}),
        )
        .unwrap();
        assert_eq!(
            body["imageGenerationConfig"],
            json!({"numberOfImages": 1, "quality": "premium"})
        );
        for bad in [
            json!({"prompt": "a cat", "size": "big"}),
            json!({"prompt": "a cat", "quality": "ultra"}),
            json!({"prompt": ""}),
        ] {
            assert!(
                matches!(
                    openai_to_text_image_request(&bad),
                    Err(UpstreamError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn image_answers_become_openai_images() {
        let jpeg = "/9j/4AAQSkZJRg==";
        let outcome = text_image_to_openai(
            &json!({"images": [jpeg, PNG_1X1_BASE64]}),
            &json!({"response_format": "url"}),
        )
        .unwrap();
        assert_eq!(outcome.images, 2);
        assert_eq!(
            outcome.body["data"],
            json!([
                {"url": format!("data:image/jpeg;base64,{jpeg}")},
                {"url": format!("data:image/png;base64,{PNG_1X1_BASE64}")},
            ])
        );
        // A refusal inside a 200 answer is the upstream refusing the request.
        match text_image_to_openai(
            &json!({"images": [], "error": "This request has been blocked by our content filters."}),
            &json!({}),
        ) {
            Err(UpstreamError::Status {
                status, message, ..
            }) => {
                assert_eq!(status, 400);
                assert!(message.contains("content filters"));
            }
            other => panic!("expected a refusal, got {:?}", other.map(|o| o.body)),
        }
        assert!(matches!(
            text_image_to_openai(&json!({}), &json!({})),
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[actix_web::test]
    async fn cohere_embed_v4_answers_by_type_and_token_arrays_are_refused() {
        let mock = MockBedrock::start();
        let http = Upstream::new(&test_limits()).unwrap();
        let provider = Provider {
            provider_id: "prov-bedrock".into(),
            name: "bedrock".into(),
            kind: ProviderKind::Bedrock,
            base_url: mock.base_url.clone(),
            region: Some(MOCK_REGION.into()),
            credential_id: "cred-bedrock".into(),
            credential: Credential::Aws {
                access_key_id: MOCK_ACCESS_KEY_ID.into(),
                secret_access_key: Secret::new(MOCK_SECRET_ACCESS_KEY.into()),
            },
        };
        let call = UpstreamCall {
            http: &http,
            provider: &provider,
        };
        let api = api_for(ProviderKind::Bedrock);
        let outcome = api
            .embeddings(
                &call,
                &json!({"model": "cohere.embed-v4:0", "input": ["hello", "hi"], "dimensions": 4}),
            )
            .await
            .unwrap();
        assert_eq!(
            outcome.body["data"],
            json!([
                {"object": "embedding", "index": 0, "embedding": [5.0, 0.5, -0.25, 0.125]},
                {"object": "embedding", "index": 1, "embedding": [2.0, 0.5, -0.25, 0.125]},
            ])
        );
        let usage = outcome.usage.unwrap();
        assert!(usage.estimated, "no header: estimated");
        assert_eq!(usage.input_tokens, 2, "7 bytes at 4 bytes a token");
        assert_eq!(
            mock.requests()[0].body,
            json!({"texts": ["hello", "hi"], "input_type": "search_document", "output_dimension": 4})
        );
        let refused = api
            .embeddings(
                &call,
                &json!({"model": "amazon.titan-embed-text-v2:0", "input": [[1, 2, 3]]}),
            )
            .await;
        assert!(matches!(refused, Err(UpstreamError::Unsupported { .. })));
        assert_eq!(mock.requests().len(), 1, "refused before any call");
    }
}
