//! The Gemini API through the conformance suite against the Gemini mock, plus what
//! only Gemini has: the request translation as the upstream receives it, its
//! API-key header, its way of refusing a bad key, and batch embeddings.

use crate::conformance::{setup, sse_data, Fixture, Setup};
use crate::conformance_suite;
use crate::helpers::{assert_charged_nothing, test_limits, StoreKind};
use crate::mock_gemini::{MockGemini, MOCK_GEMINI_KEY, THOUGHT_SIGNATURE};
use aigne_hub::crypto::Secret;
use aigne_hub::providers::{
    api_for, Credential, Provider, ProviderKind, Upstream, UpstreamCall, UpstreamError,
};
use domain::Usage;
use serde_json::{json, Value};

/// `conf-text`, normalized: promptTokenCount 40 includes 16 cached; the 6
/// tool-use prompt tokens are input too (40 - 16 + 6 = 30); output is 9 candidate
/// tokens plus 5 thinking tokens.
fn text_usage() -> Usage {
    Usage {
        input_tokens: 30,
        cache_read_tokens: 16,
        output_tokens: 14,
        reasoning_tokens: 5,
        ..Usage::default()
    }
}

/// `conf-tools`: 52 prompt tokens of which 20 cached; 11 candidate + 7 thinking.
fn tools_usage() -> Usage {
    Usage {
        input_tokens: 32,
        cache_read_tokens: 20,
        output_tokens: 18,
        reasoning_tokens: 7,
        ..Usage::default()
    }
}

fn fixture_with_key(mock: MockGemini, api_key: &str) -> Fixture {
    Fixture {
        provider: json!({"kind": "gemini", "base_url": mock.base_url, "api_key": api_key}),
        text_usage: text_usage(),
        tools_usage: tools_usage(),
        _mock: Box::new(mock),
    }
}

fn fixture() -> Fixture {
    fixture_with_key(MockGemini::start(), MOCK_GEMINI_KEY)
}

conformance_suite!(gemini, fixture());

async fn setup_with(mock: &MockGemini, api_key: &str) -> Setup {
    setup(StoreKind::Sqlite, fixture_with_key(mock.clone(), api_key)).await
}

#[actix_web::test]
async fn the_upstream_receives_gemini_wire_format_with_the_key_in_a_header() {
    let mock = MockGemini::start();
    let s = setup_with(&mock, MOCK_GEMINI_KEY).await;
    let body = json!({
        "model": "conf/conf-text",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "max_tokens": 100,
        "max_completion_tokens": 80,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "response_format": {"type": "json_object"},
    });
    assert_eq!(s.app.chat(&s.key, &body).await.status(), 200);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = s.app.chat(&s.key, &streamed).await.text().await.unwrap();
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));

    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1beta/models/conf-text:generateContent");
    assert_eq!(requests[0].query, "");
    assert_eq!(
        requests[1].path,
        "/v1beta/models/conf-text:streamGenerateContent"
    );
    assert_eq!(requests[1].query, "alt=sse");
    for r in &requests {
        assert_eq!(r.api_key.as_deref(), Some(MOCK_GEMINI_KEY));
        assert!(!r.query.contains(MOCK_GEMINI_KEY) && !r.query.contains("key="));
        assert_eq!(
            r.body,
            json!({
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
                "generationConfig": {
                    "maxOutputTokens": 80,
                    "temperature": 0.2,
                    "topP": 0.9,
                    "stopSequences": ["END"],
                    "responseMimeType": "application/json",
                },
            })
        );
    }
}

#[actix_web::test]
async fn a_conversation_with_images_and_tool_results_is_accepted_upstream() {
    let mock = MockGemini::start();
    let s = setup_with(&mock, MOCK_GEMINI_KEY).await;
    // First turn: the model calls the tool; its id and signature come back to us.
    let first = json!({
        "model": "conf/conf-tools",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    });
    let answer: Value = s.app.chat(&s.key, &first).await.json().await.unwrap();
    let call = answer["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(
        call["extra_content"]["google"]["thought_signature"],
        THOUGHT_SIGNATURE
    );

    // Second turn: the whole conversation, with an image, goes back.
    let second = json!({
        "model": "conf/conf-text",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris? Here is a photo."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/paris.jpg"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature_c\": 21}"},
            {"role": "user", "content": "Thanks. And tomorrow?"},
        ],
        "tools": first["tools"],
        "tool_choice": "auto",
    });
    let response = s.app.chat(&s.key, &second).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let sent = &mock.requests()[1].body;
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [
                {"text": "Weather in Paris? Here is a photo."},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"fileUri": "https://example.com/paris.jpg", "mimeType": "image/jpeg"}},
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": THOUGHT_SIGNATURE},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temperature_c": 21}}},
                {"text": "Thanks. And tomorrow?"},
            ]},
        ])
    );
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        mock.requests()[0].body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
}

#[actix_web::test]
async fn a_key_google_rejects_is_a_provider_credential_error_and_costs_nothing() {
    let mock = MockGemini::start();
    let s = setup_with(&mock, "AIzaSy-not-the-right-key-0000").await;
    for stream in [false, true] {
        let body = json!({"model": "conf/conf-text", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
        let response = s.app.chat(&s.key, &body).await;
        assert_eq!(response.status(), 502, "stream: {stream}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "provider_credential_rejected",
            "{body}"
        );
    }
    let balance = s.app.balance(&s.tenant).await;
    assert_charged_nothing(&balance);
}

#[actix_web::test]
async fn a_stream_that_ends_before_a_finish_reason_is_an_error_not_a_completion() {
    let mock = MockGemini::start();
    let s = setup_with(&mock, MOCK_GEMINI_KEY).await;
    let price = json!({"input_per_mtok": "1", "output_per_mtok": "2", "max_output_tokens": 1000});
    s.app.set_price("conf/conf-cut-short", price).await;
    let body = json!({"model": "conf/conf-cut-short", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let text = s.app.chat(&s.key, &body).await.text().await.unwrap();
    let frames = sse_data(&text);
    assert!(!frames.iter().any(|f| f == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
}

fn gemini_provider(mock: &MockGemini, api_key: &str) -> Provider {
    Provider {
        provider_id: "prov-gemini".into(),
        name: "gemini".into(),
        kind: ProviderKind::Gemini,
        base_url: mock.base_url.clone(),
        region: None,
        credential_id: "cred-gemini".into(),
        credential: Credential::ApiKey {
            api_key: Secret::new(api_key.into()),
        },
    }
}

#[actix_web::test]
async fn embeddings_use_batch_embed_contents_and_report_no_usage() {
    let mock = MockGemini::start();
    let http = Upstream::new(&test_limits()).unwrap();
    let provider = gemini_provider(&mock, MOCK_GEMINI_KEY);
    let call = UpstreamCall {
        http: &http,
        provider: &provider,
    };
    let api = api_for(ProviderKind::Gemini);
    let outcome = api
        .embeddings(
            &call,
            &json!({"model": "gemini-embedding-001", "input": ["hello", "hi"], "dimensions": 4}),
        )
        .await
        .unwrap();
    assert!(
        outcome.usage.is_none(),
        "Gemini reports no usage; the gateway estimates"
    );
    let body = outcome.body;
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "gemini-embedding-001");
    assert_eq!(
        body["data"],
        json!([
            {"object": "embedding", "index": 0, "embedding": [5.0, 0.5, -0.25, 0.125]},
            {"object": "embedding", "index": 1, "embedding": [2.0, 0.5, -0.25, 0.125]},
        ])
    );
    assert!(body["usage"]["prompt_tokens"].is_u64() && body["usage"]["total_tokens"].is_u64());
    let request = &mock.requests()[0];
    assert_eq!(
        request.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(request.api_key.as_deref(), Some(MOCK_GEMINI_KEY));
    assert_eq!(
        request.body,
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 4},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 4},
        ]})
    );

    // base64: little-endian f32s, as OpenAI encodes them.
    let outcome = api
        .embeddings(
            &call,
            &json!({"model": "gemini-embedding-001", "input": "abc", "encoding_format": "base64"}),
        )
        .await
        .unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(outcome.body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, vec![3.0, 0.5, -0.25]);

    // Token arrays have no Gemini equivalent.
    let refused = api
        .embeddings(
            &call,
            &json!({"model": "gemini-embedding-001", "input": [[1, 2, 3]]}),
        )
        .await;
    assert!(matches!(refused, Err(UpstreamError::Unsupported { .. })));
}

#[actix_web::test]
async fn upstream_error_bodies_pass_googles_message_on() {
    let mock = MockGemini::start();
    let http = Upstream::new(&test_limits()).unwrap();
    let provider = gemini_provider(&mock, MOCK_GEMINI_KEY);
    let call = UpstreamCall {
        http: &http,
        provider: &provider,
    };
    let request =
        json!({"model": "conf-status-429", "messages": [{"role": "user", "content": "hi"}]});
    match api_for(ProviderKind::Gemini).chat(&call, &request).await {
        Err(UpstreamError::Status {
            status, message, ..
        }) => {
            assert_eq!((status, message.as_str()), (429, "mock 429 message"))
        }
        Err(other) => panic!("expected a status error, got {other:?}"),
        Ok(_) => panic!("expected a status error, got an answer"),
    }
    // A bad key: Google says 400 INVALID_ARGUMENT, the hub hears "credential rejected".
    let provider = gemini_provider(&mock, "AIzaSy-wrong");
    let call = UpstreamCall {
        http: &http,
        provider: &provider,
    };
    let request = json!({"model": "conf-text", "messages": [{"role": "user", "content": "hi"}]});
    match api_for(ProviderKind::Gemini).chat(&call, &request).await {
        Err(UpstreamError::Status { status, .. }) => assert_eq!(status, 401),
        Err(other) => panic!("expected a status error, got {other:?}"),
        Ok(_) => panic!("expected a status error, got an answer"),
    }
}

// ---------------------------------------------------------------------------
// Imagen (through the hub: provider_capabilities.rs)

mod imagen {
    use super::*;
    use aigne_hub::providers::gemini::{imagen_to_openai, openai_to_imagen_request};

    #[test]
    fn sizes_become_aspect_ratios() {
        for (size, ratio) in [
            ("1024x1024", Some("1:1")),
            ("1792x1024", Some("16:9")),
            ("1024x1792", Some("9:16")),
            ("768x1024", Some("3:4")),
            ("1024x768", Some("4:3")),
            ("auto", None),
        ] {
            let body = openai_to_imagen_request(&json!({"prompt": "a cat", "n": 4, "size": size}))
                .unwrap();
            let mut parameters = json!({"sampleCount": 4});
            if let Some(ratio) = ratio {
                parameters["aspectRatio"] = json!(ratio);
            }
            assert_eq!(
                body,
                json!({"instances": [{"prompt": "a cat"}], "parameters": parameters}),
                "{size}"
            );
        }
        for bad in [
            json!({"prompt": "a cat", "size": "1536x1024"}),
            json!({"prompt": "a cat", "size": "1024"}),
            json!({"prompt": ""}),
        ] {
            assert!(
                matches!(
                    openai_to_imagen_request(&bad),
                    Err(UpstreamError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn predictions_become_images_and_filtered_ones_are_left_out() {
        let answer = json!({"predictions": [
            {"bytesBase64Encoded": "/9j/AAAA", "mimeType": "image/jpeg", "prompt": "a fluffy cat"},
            {"raiFilteredReason": "filtered"},
            {"bytesBase64Encoded": "iVBORw0KGgo=", "mimeType": "image/png"},
        ]});
        let outcome = imagen_to_openai(&answer, &json!({"response_format": "url"})).unwrap();
        assert_eq!(outcome.images, 2);
        assert_eq!(
            outcome.body["data"],
            json!([
                {"url": "data:image/jpeg;base64,/9j/AAAA", "revised_prompt": "a fluffy cat"},
                {"url": "data:image/png;base64,iVBORw0KGgo="},
            ])
        );
        match imagen_to_openai(
            &json!({"predictions": [{"raiFilteredReason": "blocked: unsafe"}]}),
            &json!({}),
        ) {
            // Google's reason is its own text: the tenant gets the hub's words.
            Err(UpstreamError::Refused(message)) => {
                assert!(message.starts_with("Imagen returned no image"), "{message}")
            }
            other => panic!("expected a refusal, got {:?}", other.map(|o| o.body)),
        }
    }
}
