//! The official OpenAI Python SDK works against the hub unchanged: chat, streams
//! with usage, tool calls, embeddings, images, model listing and typed errors.
//!
//! The SDK is installed (pinned) into a virtualenv under `target/` on first use;
//! the test fails, never skips, if Python or the package index is unavailable.

use crate::helpers::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

/// The SDK version the hub is checked against.
const OPENAI_SDK_VERSION: &str = "3.57.0";

fn sdk_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("openai-sdk-{OPENAI_SDK_VERSION}"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(".installed");
    if !ready.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the SDK test");
        assert!(status.success(), "creating the virtualenv failed");
        let status = Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("openai=={OPENAI_SDK_VERSION}"),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "installing the OpenAI SDK failed");
        std::fs::write(&ready, OPENAI_SDK_VERSION).unwrap();
    }
    python
}

#[actix_web::test]
async fn the_official_openai_python_sdk_works_unchanged() {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let app = spawn_app(StoreKind::Sqlite).await;
    app.setup_provider(&[
        ("gpt-mock", "1", "2", None),
        ("conf-tools", "1", "2", None),
        ("text-embedding-3-small", "1", "0", None),
    ])
    .await;
    app.set_price(
        "mock/gpt-image-1",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    let (tenant, key) = app.tenant_with_key("5", "member").await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_client.py");
    let (address, key_env) = (format!("{}/v1", app.address), key.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("HUB_BASE_URL", address)
            .env("HUB_KEY", key_env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(out["chat"]["content"], "Hello there");
    assert_eq!(out["chat"]["finish_reason"], "stop");
    assert_eq!(out["chat"]["prompt_tokens"], 12);
    assert_eq!(out["chat"]["completion_tokens"], 30);
    assert!(out["chat"]["request_id"]
        .as_str()
        .is_some_and(|id| id.len() == 36));
    assert_eq!(out["stream"]["text"], "Hello there");
    assert_eq!(
        out["stream"]["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 30})
    );
    assert_eq!(
        out["tools"],
        json!({"name": "get_weather", "arguments": {"city": "Paris"}})
    );
    assert_eq!(out["embeddings"]["count"], 2);
    assert_eq!(out["embeddings"]["prompt_tokens"], 8);
    assert_eq!(out["images"]["count"], 2);
    assert!(out["models"]
        .as_array()
        .unwrap()
        .contains(&json!("mock/gpt-mock")));
    assert_eq!(
        out["bad_key"],
        json!({"status": 401, "code": "invalid_api_key"})
    );
    assert_eq!(
        out["unknown_model"],
        json!({"status": 404, "code": "model_not_found"})
    );

    // Everything the SDK did was billed: 3 chats, embeddings, 2 images.
    let balance = app.balance(&tenant).await;
    let chat = 12 * 1_000_000 + 30 * 2_000_000;
    let expected = domain::Credits::from_pico(3 * chat + 8 * 1_000_000 + 2 * 40_000_000_000);
    assert_eq!(balance["spent"], expected.to_decimal_string(), "{out}");
    assert_eq!(balance["held"], "0");
}
