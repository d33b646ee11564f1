//! The capability matrix beyond chat (docs/providers.md): embeddings and images
//! per provider kind, through the hub's OpenAI endpoints (`POST /v1/embeddings`,
//! `POST /v1/images/generations`) against mocks that speak each provider's own
//! wire format, on both stores. Every success is billed exactly: the balance
//! after is the balance before minus the cost of the usage the mock reported
//! (or of the image count), and the settled usage is that usage.

use crate::helpers::*;
use crate::mock_bedrock::{
    cohere_token_count, titan_token_count, MockBedrock, MOCK_ACCESS_KEY_ID, MOCK_REGION,
    MOCK_SECRET_ACCESS_KEY, PNG_1X1_BASE64,
};
use crate::mock_gemini::{MockGemini, IMAGEN_PNG_BASE64, MOCK_GEMINI_KEY};
use crate::mock_openai::{
    ollama_prompt_eval_count, ARK_EMBEDDING_PROMPT_TOKENS, MOCK_API_KEY,
    OPENROUTER_EMBEDDING_PROMPT_TOKENS,
};
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::{Credits, Rate, Usage};
use serde_json::{json, Value};

/// The price of every embeddings model here, in credits per million input tokens.
const EMBEDDING_PRICE: &str = "0.13";
/// The price of every image model here, in credits per image.
const IMAGE_PRICE: &str = "0.04";

fn embedding_cost(usage: &Usage) -> Credits {
    Rate::parse_per_million(EMBEDDING_PRICE)
        .unwrap()
        .cost_of(usage.input_tokens)
}

fn image_cost(images: u64) -> Credits {
    Credits::from_pico(Credits::parse(IMAGE_PRICE).unwrap().pico() * images as i128)
}

fn tokens(input_tokens: u64) -> Usage {
    Usage {
        input_tokens,
        ..Usage::default()
    }
}

fn estimated(input_tokens: u64) -> Usage {
    Usage {
        input_tokens,
        estimated: true,
        ..Usage::default()
    }
}

fn images(images: u64) -> Usage {
    Usage {
        images,
        ..Usage::default()
    }
}

/// A hub with one tenant and key, ready to price models of its providers.
struct Hub {
    app: TestApp,
    tenant: String,
    key: String,
}

impl Hub {
    async fn start(kind: StoreKind) -> Hub {
        let app = spawn_app(kind).await;
        let (tenant, key) = app.tenant_with_key("100", "member").await;
        Hub { app, tenant, key }
    }

    async fn provider(&self, body: Value) {
        self.app.add_provider(body).await;
    }

    async fn embedding_model(&self, model: &str) {
        let price = json!({"input_per_mtok": EMBEDDING_PRICE, "output_per_mtok": "0"});
        self.app.set_price(model, price).await;
    }

    async fn image_model(&self, model: &str) {
        let price =
            json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": IMAGE_PRICE});
        self.app.set_price(model, price).await;
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.app.post(&self.key, path, body).await
    }

    async fn available(&self) -> Credits {
        let balance = self.app.balance(&self.tenant).await;
        assert_eq!(balance["held"], "0", "{balance}");
        Credits::parse(balance["available"].as_str().unwrap()).unwrap()
    }

    async fn events(&self) -> Vec<TenantEvent> {
        tenant_events(&self.app, &self.tenant)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    async fn attempts(&self) -> usize {
        self.events()
            .await
            .iter()
            .filter(|e| matches!(e, TenantEvent::UpstreamAttempted { .. }))
            .count()
    }

    /// Posts `body`, expects 200, and checks the bill: one more settlement, of
    /// exactly `usage`, costing exactly `cost`, taken from the balance.
    async fn billed(&self, path: &str, body: &Value, usage: Usage, cost: Credits) -> Value {
        let before = self.available().await;
        let settled_before = self.settlements().await.len();
        let response = self.post(path, body).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{answer}");
        let settled = self.settlements().await;
        assert_eq!(settled.len(), settled_before + 1, "{settled:?}");
        let (settled_usage, settled_cost) = settled.last().unwrap();
        assert_eq!(*settled_usage, usage, "the settled usage is the upstream's");
        assert_eq!(*settled_cost, cost);
        let after = self.available().await;
        assert_eq!(
            after,
            before - cost,
            "balance after = before - exact cost ({} - {})",
            before.to_decimal_string(),
            cost.to_decimal_string()
        );
        answer
    }

    async fn settlements(&self) -> Vec<(Usage, Credits)> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e {
                TenantEvent::UsageSettled {
                    usage, cost_pico, ..
                } => Some((usage, cost_pico)),
                _ => None,
            })
            .collect()
    }
}

fn bedrock_provider(mock: &MockBedrock) -> Value {
    json!({
        "name": "bed",
        "kind": "bedrock",
        "region": MOCK_REGION,
        "access_key_id": MOCK_ACCESS_KEY_ID,
        "secret_access_key": MOCK_SECRET_ACCESS_KEY,
        "base_url": mock.base_url,
    })
}

fn gemini_provider(mock: &MockGemini) -> Value {
    json!({"name": "gem", "kind": "gemini", "base_url": mock.base_url, "api_key": MOCK_GEMINI_KEY})
}

fn ollama_provider(app: &TestApp) -> Value {
    json!({"name": "oll", "kind": "ollama", "base_url": app.mock.root_url(), "api_key": MOCK_API_KEY})
}

fn floats_of_base64(b64: &str) -> Vec<f32> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------
// Bedrock embeddings (InvokeModel)

on_both_stores!(
    bedrock_titan_embeddings_are_billed_from_their_token_counts,
    |kind| async move {
        let mock = MockBedrock::start();
        let hub = Hub::start(kind).await;
        hub.provider(bedrock_provider(&mock)).await;
        let model = "amazon.titan-embed-text-v2:0";
        hub.embedding_model(&format!("bed/{model}")).await;

        let texts = ["hello world", "the quick brown fox"];
        let usage = tokens(texts.iter().map(|t| titan_token_count(t)).sum());
        let body = json!({"model": format!("bed/{model}"), "input": texts, "dimensions": 256});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        assert_eq!(answer["object"], "list");
        assert_eq!(answer["model"], model);
        assert_eq!(answer["usage"]["prompt_tokens"], usage.input_tokens);
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(data[i]["object"], "embedding");
            assert_eq!(data[i]["index"], i);
            let vector = data[i]["embedding"].as_array().unwrap();
            assert_eq!(vector.len(), 256);
            assert_eq!(vector[0], text.len() as f64, "input order is kept");
        }

        // One signed InvokeModel call per input, Titan's body, nothing else.
        assert!(mock.rejections().is_empty(), "{:?}", mock.rejections());
        let requests = mock.requests();
        assert_eq!(requests.len(), 2);
        let mut bodies: Vec<Value> = requests.iter().map(|r| r.body.clone()).collect();
        bodies.sort_by_key(|b| b["inputText"].as_str().unwrap().to_string());
        assert_eq!(
            bodies,
            vec![
                json!({"inputText": "hello world", "dimensions": 256}),
                json!({"inputText": "the quick brown fox", "dimensions": 256}),
            ]
        );
        for r in &requests {
            assert_eq!(r.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
            assert_eq!(r.model_id, model);
            assert!(r
                .headers
                .iter()
                .any(|(k, v)| k == "accept" && v == "application/json"));
            assert!(r
                .headers
                .iter()
                .any(|(k, v)| k == "authorization" && v.starts_with("AWS4-HMAC-SHA256 ")));
        }

        // base64 encoding: little-endian f32s, as OpenAI encodes them.
        let usage = tokens(titan_token_count("abc"));
        let body =
            json!({"model": format!("bed/{model}"), "input": "abc", "encoding_format": "base64"});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        let floats = floats_of_base64(answer["data"][0]["embedding"].as_str().unwrap());
        assert_eq!(floats.len(), 1024);
        assert_eq!(floats[..3], [3.0, 0.5, -0.25]);
    }
);

on_both_stores!(
    bedrock_cohere_embeddings_are_estimated_unless_bedrock_counts_the_tokens,
    |kind| async move {
        let mock = MockBedrock::start();
        let hub = Hub::start(kind).await;
        hub.provider(bedrock_provider(&mock)).await;
        let model = "cohere.embed-english-v3";
        hub.embedding_model(&format!("bed/{model}")).await;

        // The body reports no tokens: an estimate (4 bytes a token), flagged.
        let texts = ["a document", "another document"];
        let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
        let usage = estimated(bytes.div_ceil(domain::pricing::ESTIMATE_BYTES_PER_TOKEN));
        let body = json!({"model": format!("bed/{model}"), "input": texts});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        assert_eq!(answer["data"].as_array().unwrap().len(), 2);
        assert_eq!(answer["data"][1]["embedding"][0], 16.0);
        assert_eq!(
            answer["data"][1]["embedding"].as_array().unwrap().len(),
            1024
        );
        assert_eq!(answer["usage"]["prompt_tokens"], usage.input_tokens);
        let requests = mock.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/model/cohere.embed-english-v3/invoke");
        assert_eq!(
            requests[0].body,
            json!({"texts": ["a document", "another document"], "input_type": "search_document"})
        );

        // When Bedrock sends its input token count header, that count is billed.
        // More than 96 texts take several calls; the order is kept.
        mock.send_token_count_headers();
        let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let usage = tokens(cohere_token_count(&refs[..96]) + cohere_token_count(&refs[96..]));
        let body =
            json!({"model": format!("bed/{model}"), "input": many, "input_type": "search_query"});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), 100);
        assert_eq!(data[99]["index"], 99);
        assert_eq!(data[99]["embedding"][0], 3.0, "t99 is three bytes");
        let requests = mock.requests();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[1].body["texts"].as_array().unwrap().len(), 96);
        assert_eq!(
            requests[2].body["texts"],
            json!(["t96", "t97", "t98", "t99"])
        );
        assert_eq!(requests[2].body["input_type"], "search_query");
        assert!(mock.rejections().is_empty());
    }
);

// ---------------------------------------------------------------------------
// Bedrock images (InvokeModel)

on_both_stores!(
    bedrock_titan_and_nova_images_are_billed_per_image,
    |kind| async move {
        let mock = MockBedrock::start();
        let hub = Hub::start(kind).await;
        hub.provider(bedrock_provider(&mock)).await;
        let titan = "amazon.titan-image-generator-v2:0";
        let nova = "amazon.nova-canvas-v1:0";
        hub.image_model(&format!("bed/{titan}")).await;
        hub.image_model(&format!("bed/{nova}")).await;

        let body = json!({"model": format!("bed/{titan}"), "prompt": "a cat", "n": 2,
            "size": "512x512", "quality": "hd", "response_format": "b64_json"});
        let answer = hub
            .billed("/v1/images/generations", &body, images(2), image_cost(2))
            .await;
        assert!(answer["created"].is_u64());
        assert_eq!(
            answer["data"],
            json!([{"b64_json": PNG_1X1_BASE64}, {"b64_json": PNG_1X1_BASE64}])
        );
        let requests = mock.requests();
        assert_eq!(
            requests[0].path,
            "/model/amazon.titan-image-generator-v2%3A0/invoke"
        );
        assert_eq!(
            requests[0].body,
            json!({
                "taskType": "TEXT_IMAGE",
                "textToImageParams": {"text": "a cat"},
                "imageGenerationConfig": {"numberOfImages": 2, "width": 512, "height": 512, "quality": "premium"},
            })
        );

        // Bedrock returns no URLs: "url" gets a data: URL of the image.
        let body =
            json!({"model": format!("bed/{nova}"), "prompt": "a dog", "response_format": "url"});
        let answer = hub
            .billed("/v1/images/generations", &body, images(1), image_cost(1))
            .await;
        assert_eq!(
            answer["data"],
            json!([{"url": format!("data:image/png;base64,{PNG_1X1_BASE64}")}])
        );
        let requests = mock.requests();
        assert_eq!(requests[1].path, "/model/amazon.nova-canvas-v1%3A0/invoke");
        assert_eq!(
            requests[1].body,
            json!({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a dog"}, "imageGenerationConfig": {"numberOfImages": 1}})
        );

        // Without a response_format: b64_json (what the AIGNE path stores and serves).
        let body = json!({"model": format!("bed/{nova}"), "prompt": "a bird", "n": 3});
        let answer = hub
            .billed("/v1/images/generations", &body, images(3), image_cost(3))
            .await;
        assert_eq!(answer["data"][2]["b64_json"], PNG_1X1_BASE64);
        assert!(mock.rejections().is_empty());
    }
);

// ---------------------------------------------------------------------------
// Gemini images (Imagen predict)

on_both_stores!(
    gemini_imagen_images_are_billed_per_image_returned,
    |kind| async move {
        let mock = MockGemini::start();
        let hub = Hub::start(kind).await;
        hub.provider(gemini_provider(&mock)).await;
        let model = "imagen-4.0-generate-001";
        hub.image_model(&format!("gem/{model}")).await;
        hub.image_model("gem/conf-filtered").await;

        let body = json!({"model": format!("gem/{model}"), "prompt": "a cat", "n": 2,
            "size": "1792x1024", "response_format": "b64_json"});
        let answer = hub
            .billed("/v1/images/generations", &body, images(2), image_cost(2))
            .await;
        assert_eq!(
            answer["data"],
            json!([{"b64_json": IMAGEN_PNG_BASE64}, {"b64_json": IMAGEN_PNG_BASE64}])
        );
        let requests = mock.requests();
        assert_eq!(
            requests[0].path,
            "/v1beta/models/imagen-4.0-generate-001:predict"
        );
        assert_eq!(requests[0].api_key.as_deref(), Some(MOCK_GEMINI_KEY));
        assert_eq!(requests[0].query, "");
        assert_eq!(
            requests[0].body,
            json!({"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}})
        );

        let body =
            json!({"model": format!("gem/{model}"), "prompt": "a dog", "response_format": "url"});
        let answer = hub
            .billed("/v1/images/generations", &body, images(1), image_cost(1))
            .await;
        assert_eq!(
            answer["data"],
            json!([{"url": format!("data:image/png;base64,{IMAGEN_PNG_BASE64}")}])
        );
        assert_eq!(
            mock.requests()[1].body,
            json!({"instances": [{"prompt": "a dog"}], "parameters": {"sampleCount": 1}})
        );

        // Images Google's filters withheld are not billed.
        let body = json!({"model": "gem/conf-filtered", "prompt": "a crowd", "n": 3});
        let answer = hub
            .billed("/v1/images/generations", &body, images(2), image_cost(2))
            .await;
        assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    }
);

// ---------------------------------------------------------------------------
// Ollama embeddings (native /api/embed)

on_both_stores!(
    ollama_embeddings_use_the_native_api_and_its_token_count,
    |kind| async move {
        let hub = Hub::start(kind).await;
        hub.provider(ollama_provider(&hub.app)).await;
        hub.embedding_model("oll/nomic-embed-text").await;

        let texts = ["hello world", "hi"];
        let usage = tokens(ollama_prompt_eval_count(&texts));
        let body = json!({"model": "oll/nomic-embed-text", "input": texts});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        assert_eq!(answer["model"], "nomic-embed-text");
        assert_eq!(answer["usage"]["prompt_tokens"], usage.input_tokens);
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 768);
        assert_eq!(data[1]["embedding"][0], 2.0);

        let usage = tokens(ollama_prompt_eval_count(&["one more text"]));
        let body =
            json!({"model": "oll/nomic-embed-text", "input": "one more text", "dimensions": 4});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        assert_eq!(
            answer["data"][0]["embedding"],
            json!([13.0, -0.5, 0.25, -0.5])
        );

        assert_eq!(hub.app.mock.paths(), vec!["/api/embed", "/api/embed"]);
        assert_eq!(
            hub.app.mock.requests(),
            vec![
                json!({"model": "nomic-embed-text", "input": ["hello world", "hi"]}),
                json!({"model": "nomic-embed-text", "input": ["one more text"], "dimensions": 4}),
            ]
        );
    }
);

// ---------------------------------------------------------------------------
// The OpenAI-format kinds: xAI images, OpenRouter embeddings, Doubao both

on_both_stores!(xai_images_are_billed_per_image, |kind| async move {
    let hub = Hub::start(kind).await;
    hub.provider(json!({"name": "xai", "kind": "xai", "base_url": hub.app.mock.base_url, "api_key": MOCK_API_KEY}))
        .await;
    hub.image_model("xai/grok-2-image-1212").await;
    let body = json!({"model": "xai/grok-2-image-1212", "prompt": "a cat", "n": 2, "response_format": "b64_json"});
    let answer = hub
        .billed("/v1/images/generations", &body, images(2), image_cost(2))
        .await;
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert!(answer["data"][0]["b64_json"].is_string());
    let body = json!({"model": "xai/grok-2-image-1212", "prompt": "a dog"});
    let answer = hub
        .billed("/v1/images/generations", &body, images(1), image_cost(1))
        .await;
    assert!(answer["data"][0]["url"].is_string(), "{answer}");
    assert_eq!(
        hub.app.mock.requests(),
        vec![
            json!({"model": "grok-2-image-1212", "prompt": "a cat", "n": 2, "response_format": "b64_json"}),
            json!({"model": "grok-2-image-1212", "prompt": "a dog"}),
        ]
    );
});

on_both_stores!(
    openrouter_embeddings_are_billed_by_input_tokens,
    |kind| async move {
        let hub = Hub::start(kind).await;
        let base_url = format!("{}/api/v1", hub.app.mock.root_url());
        hub.provider(json!({"name": "or", "kind": "openrouter", "base_url": base_url, "api_key": MOCK_API_KEY}))
            .await;
        hub.embedding_model("or/openai/text-embedding-3-small")
            .await;
        let usage = tokens(OPENROUTER_EMBEDDING_PROMPT_TOKENS);
        let body = json!({"model": "or/openai/text-embedding-3-small", "input": ["a", "b", "c"]});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        assert_eq!(answer["data"].as_array().unwrap().len(), 3);
        assert_eq!(answer["model"], "openai/text-embedding-3-small");
        assert_eq!(hub.app.mock.paths(), vec!["/api/v1/embeddings"]);
        assert_eq!(
            hub.app.mock.requests(),
            vec![json!({"model": "openai/text-embedding-3-small", "input": ["a", "b", "c"]})]
        );
    }
);

on_both_stores!(
    doubao_embeddings_and_images_use_the_ark_paths,
    |kind| async move {
        let hub = Hub::start(kind).await;
        // Ark's base URL ends in /api/v3; the paths below it are OpenAI's.
        let base_url = format!("{}/api/v3", hub.app.mock.root_url());
        hub.provider(
            json!({"name": "ark", "kind": "doubao", "base_url": base_url, "api_key": MOCK_API_KEY}),
        )
        .await;
        hub.embedding_model("ark/doubao-embedding-text-240715")
            .await;
        hub.image_model("ark/doubao-seedream-3-0-t2i-250415").await;

        let usage = tokens(ARK_EMBEDDING_PROMPT_TOKENS);
        let body =
            json!({"model": "ark/doubao-embedding-text-240715", "input": ["天很蓝", "海很深"]});
        let answer = hub
            .billed("/v1/embeddings", &body, usage, embedding_cost(&usage))
            .await;
        assert_eq!(answer["data"].as_array().unwrap().len(), 2);

        let body = json!({"model": "ark/doubao-seedream-3-0-t2i-250415", "prompt": "a cat",
            "size": "1024x1024", "response_format": "url"});
        let answer = hub
            .billed("/v1/images/generations", &body, images(1), image_cost(1))
            .await;
        assert!(answer["data"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://"));
        assert_eq!(
            hub.app.mock.paths(),
            vec!["/api/v3/embeddings", "/api/v3/images/generations"]
        );
        assert_eq!(
            hub.app.mock.requests()[1],
            json!({"model": "doubao-seedream-3-0-t2i-250415", "prompt": "a cat", "size": "1024x1024", "response_format": "url"})
        );
    }
);

// ---------------------------------------------------------------------------
// Errors of the new calls

on_both_stores!(
    upstream_errors_of_the_new_calls_map_and_cost_nothing,
    |kind| async move {
        let bedrock = MockBedrock::start();
        let gemini = MockGemini::start();
        let hub = Hub::start(kind).await;
        hub.provider(bedrock_provider(&bedrock)).await;
        hub.provider(gemini_provider(&gemini)).await;
        hub.provider(ollama_provider(&hub.app)).await;
        let before = hub.available().await;
        let cases: [(&str, &str, bool); 5] = [
            (
                "/v1/embeddings",
                "bed/amazon.titan-embed-text-v2-conf-status-",
                false,
            ),
            (
                "/v1/embeddings",
                "bed/cohere.embed-english-v3-conf-status-",
                false,
            ),
            (
                "/v1/images/generations",
                "bed/amazon.titan-image-generator-v2-conf-status-",
                true,
            ),
            ("/v1/images/generations", "gem/conf-status-", true),
            ("/v1/embeddings", "oll/conf-status-", false),
        ];
        // Every 429 comes last: it cools down the provider's one credential, and a
        // 5xx on a credential cooling down is not retried.
        for (upstream, status, code) in [
            (400, 400, "invalid_request"),
            (500, 502, "upstream_error"),
            (429, 429, "rate_limited"),
        ] {
            for (path, prefix, image) in cases {
                let model = format!("{prefix}{upstream}");
                let body = if image {
                    hub.image_model(&model).await;
                    json!({"model": model, "prompt": "a cat"})
                } else {
                    hub.embedding_model(&model).await;
                    json!({"model": model, "input": "hi"})
                };
                let attempts = hub.attempts().await;
                let response = hub.post(path, &body).await;
                assert_eq!(response.status(), status, "{model}");
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["error"]["code"], code, "{model}: {answer}");
                if upstream == 400 {
                    let message = answer["error"]["message"].as_str().unwrap();
                    assert!(
                        message.contains("upstream answered 400")
                            && !message.contains("mock 400 message"),
                        "the hub's words with the provider's status, not its text: {answer}"
                    );
                }
                // A 5xx is retried once (retries_per_candidate); a 400 is not, and
                // neither is a 429: the provider's one credential is then cooling
                // down and there is no other to retry with.
                let tries = if upstream == 500 { 2 } else { 1 };
                assert_eq!(hub.attempts().await - attempts, tries, "{model}");
            }
        }

        // Refused before any upstream call: a Bedrock model with no InvokeModel
        // body here, an Imagen size with no aspect ratio, every image filtered.
        hub.embedding_model("bed/meta.llama3-8b-instruct-v1:0")
            .await;
        hub.image_model("gem/imagen-4.0-generate-001").await;
        hub.image_model("gem/conf-all-filtered").await;
        for (path, body, says) in [
            (
                "/v1/embeddings",
                json!({"model": "bed/meta.llama3-8b-instruct-v1:0", "input": "hi"}),
                "bedrock does not offer embeddings with models other than",
            ),
            (
                "/v1/images/generations",
                json!({"model": "gem/imagen-4.0-generate-001", "prompt": "a cat", "size": "1536x1024"}),
                "aspect ratio",
            ),
            (
                "/v1/images/generations",
                json!({"model": "gem/conf-all-filtered", "prompt": "a cat"}),
                "Imagen returned no image",
            ),
        ] {
            let response = hub.post(path, &body).await;
            assert_eq!(response.status(), 400, "{body}");
            let answer: Value = response.json().await.unwrap();
            assert!(
                answer["error"]["message"].as_str().unwrap().contains(says),
                "{answer}"
            );
        }
        assert!(bedrock
            .requests()
            .iter()
            .all(|r| r.model_id.contains("conf-status-")));
        assert_eq!(hub.available().await, before, "failures cost nothing");
        assert!(hub.settlements().await.is_empty());
        assert!(bedrock.rejections().is_empty());
    }
);
