//! An OpenAI-compatible upstream whose answers a test steers, and which counts
//! every call it receives: for tests of what the hub does when an upstream fails,
//! stalls or answers late.
//!
//! The model name picks a behaviour:
//! - `gated`: waits until the test opens the gate ([`ScriptedUpstream::open_gate`]),
//!   then answers a chat completion with [`PROMPT_TOKENS`] and
//!   [`COMPLETION_TOKENS`] of usage;
//! - `fail-…`: answers 503;
//! - `stall-body`: sends the response headers and the start of a JSON body, then
//!   stalls for [`STALL`];
//! - `stall-stream`: sends the response headers and one stream chunk, then stalls
//!   for [`STALL`];
//! - any model on `/v1/images/generations`: `n` base64 images.

use crate::helpers::{serve_mock, wait_until, WAIT_DEADLINE};
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const SCRIPTED_API_KEY: &str = "sk-scripted-upstream-3b8e1d";
pub const PROMPT_TOKENS: u64 = 10;
pub const COMPLETION_TOKENS: u64 = 20;
/// How long a stalling answer stalls: far longer than the timeouts under test.
pub const STALL: Duration = Duration::from_secs(30);

/// What the handlers share with the test: the calls seen and the gate.
struct Script {
    /// `(path, model)` of every call, in arrival order.
    seen: Mutex<Vec<(String, String)>>,
    gate: Semaphore,
}

impl Script {
    fn record(&self, path: &str, body: &Value) -> String {
        let model = body["model"].as_str().unwrap_or_default().to_string();
        let mut seen = self.seen.lock().unwrap();
        seen.push((path.to_string(), model.clone()));
        model
    }
}

#[derive(Clone)]
pub struct ScriptedUpstream {
    pub base_url: String,
    script: Arc<Script>,
}

impl ScriptedUpstream {
    pub fn start() -> Self {
        let script = Arc::new(Script {
            seen: Mutex::default(),
            gate: Semaphore::new(0),
        });
        let data = web::Data::from(script.clone());
        let port = serve_mock(move |routes| {
            routes
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/images/generations", web::post().to(images));
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            script,
        }
    }

    /// The models of the calls received, in arrival order.
    pub fn models_called(&self) -> Vec<String> {
        let seen = self.script.seen.lock().unwrap();
        seen.iter().map(|(_, model)| model.clone()).collect()
    }

    pub fn calls(&self) -> usize {
        self.script.seen.lock().unwrap().len()
    }

    /// Lets one `gated` call answer.
    pub fn open_gate(&self) {
        self.script.gate.add_permits(1);
    }

    /// Waits until `count` calls arrived (fails the test after 10 s).
    pub async fn until_calls(&self, count: usize) {
        let what = format!("{count} upstream calls");
        wait_until(WAIT_DEADLINE, &what, || async { self.calls() >= count }).await;
    }
}

fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
    })
}

/// `first`, then nothing for [`STALL`].
fn stalling(content_type: &str, first: String) -> HttpResponse {
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) })
            .chain(futures_util::stream::once(async {
                tokio::time::sleep(STALL).await;
                Err(std::io::Error::other("stalled"))
            }));
    HttpResponse::Ok()
        .content_type(content_type.to_string())
        .streaming(stream)
}

async fn chat(script: web::Data<Script>, body: web::Json<Value>) -> HttpResponse {
    let model = script.record("/v1/chat/completions", &body);
    if model.starts_with("fail-") {
        return HttpResponse::ServiceUnavailable().json(
            json!({"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}}),
        );
    }
    match model.as_str() {
        "gated" => {
            script
                .gate
                .acquire()
                .await
                .expect("the gate stays open")
                .forget();
            HttpResponse::Ok().json(completion(&model))
        }
        "stall-body" => stalling("application/json", "{\"id\": \"chatcmpl-scripted\",".into()),
        "stall-stream" => {
            let chunk = json!({
                "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}],
            });
            stalling("text/event-stream", format!("data: {chunk}\n\n"))
        }
        other => HttpResponse::BadRequest().json(
            json!({"error": {"message": format!("no script for {other}"), "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    }
}

async fn images(script: web::Data<Script>, body: web::Json<Value>) -> HttpResponse {
    script.record("/v1/images/generations", &body);
    let n = body["n"].as_u64().unwrap_or(1);
    let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": "aW1hZ2U="})).collect();
    HttpResponse::Ok().json(json!({"created": 1_700_000_000, "data": data}))
}

/// Adds the scripted upstream to `app` as provider `scripted`.
pub async fn add_scripted_provider(app: &crate::helpers::TestApp, upstream: &ScriptedUpstream) {
    app.add_provider(json!({"name": "scripted", "kind": "openai", "base_url": upstream.base_url, "api_key": SCRIPTED_API_KEY}))
    .await;
}

/// Prices `scripted/<model>` with `price` (the admin API's price body).
pub async fn price(app: &crate::helpers::TestApp, model: &str, price: Value) -> reqwest::Response {
    app.admin(
        reqwest::Method::PUT,
        &format!("/admin/v1/prices/scripted/{model}"),
        Some(price),
    )
    .await
}
