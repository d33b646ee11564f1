//! The real AIGNE client (`@aigne/aigne-hub` 0.10.16 with `@aigne/core` 1.72.0,
//! pinned by tests/aigne-client/package-lock.json) works against the hub
//! unchanged: catalogue, chat, stream, tool calls, an AIGNE agent, images, a
//! wrong key, missing credit, and a slow image and a slow failure with the
//! client's header timeout shortened.
//!
//! `npm ci` installs the client into tests/aigne-client/node_modules (ignored by
//! git) when the lock file changed since the last install. The test fails, never
//! skips, if Node or npm is unavailable.

use crate::aigne::{setup_slow_provider, SLOW_MS};
use crate::helpers::*;
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::{Credits, Ingress};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aigne-client")
}

/// Serializes installs between the tests of this process.
static INSTALL: Mutex<()> = Mutex::new(());

/// Runs `npm ci` unless node_modules was installed from this very lock file.
fn install_client() {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = client_dir();
    let npm = Command::new("npm")
        .arg("--version")
        .output()
        .expect("npm is needed for the AIGNE client test (Node 20 and npm)");
    assert!(npm.status.success(), "npm --version failed");
    let lock = std::fs::read(dir.join("package-lock.json")).expect("committed package-lock.json");
    let digest = hex::encode(Sha256::digest(&lock));
    let stamp = dir.join("node_modules").join(".installed-from-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(digest.as_str()) {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .expect("running npm ci");
    assert!(status.success(), "npm ci failed in {}", dir.display());
    std::fs::write(&stamp, digest).unwrap();
}

/// Runs a scenario of drive.mjs; returns its JSON (the last line of stdout).
async fn drive(scenario: &str, env: Vec<(&'static str, String)>) -> Value {
    let scenario = scenario.to_string();
    // The client keeps an observability SQLite file under $HOME/.aigne; runs of
    // this test in parallel (one per store) would lock each other out of one
    // shared file, so each run gets a home of its own.
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("drive.mjs")
            .arg(&scenario)
            .current_dir(client_dir())
            .envs(env)
            .env("HOME", home_path)
            .output()
            .expect("node is needed for the AIGNE client test")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "drive.mjs failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("drive.mjs printed no JSON ({e}): {stdout}"))
}

fn credits(pico: i128) -> f64 {
    Credits::from_pico(pico)
        .to_decimal_string()
        .parse()
        .unwrap()
}

async fn the_real_aigne_client_works_unchanged(kind: StoreKind) {
    tokio::task::spawn_blocking(install_client).await.unwrap();
    let mut app = spawn_app(kind).await;
    // Short enough for the slow scenario's shortened client timeout (600 ms).
    app.settings.limits.aigne_headers_after_ms = 200;
    let app = app.restart().await;
    app.setup_provider(&[("gpt-mock", "1", "2", None), ("conf-tools", "1", "2", None)])
        .await;
    app.set_price(
        "mock/gpt-image-1",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    setup_slow_provider(&app).await;
    let (tenant, key) = app.tenant_with_key("5", "member").await;
    let (poor, poor_key) = app.tenant_with_key("0.0001", "member").await;
    let env = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("AIGNE_HUB_API_URL", app.address.clone()),
            ("HUB_KEY", key.clone()),
            ("HUB_POOR_KEY", poor_key.clone()),
        ];
        env.extend(extra);
        env
    };

    let out = drive("basic", env(vec![])).await;
    let chat_pico: i128 = 12 * 1_000_000 + 30 * 2_000_000;
    let usage = json!({"inputTokens": 12, "outputTokens": 30, "cacheReadInputTokens": 4,
        "aigneHubCredits": credits(chat_pico), "creditPrefix": "$"});

    assert!(
        out["chatModels"]
            .as_array()
            .unwrap_or_else(|| panic!("the client listed no chat models: {out}"))
            .contains(
            &json!({"model": "gpt-mock", "provider": "mock", "input": "0.000001", "output": "0.000002"})
        ),
        "{out}"
    );
    assert!(
        out["imageModels"]
            .as_array()
            .unwrap()
            .contains(&json!("gpt-image-1")),
        "{out}"
    );
    assert_eq!(
        out["chat"],
        json!({"text": "Hello there", "model": "gpt-mock", "usage": usage}),
        "{out}"
    );
    assert_eq!(
        out["stream"]["deltas"],
        json!(["Hel", "lo ", "there"]),
        "{out}"
    );
    assert_eq!(out["stream"]["text"], "Hello there", "{out}");
    assert_eq!(out["stream"]["usage"], usage, "{out}");
    assert_eq!(
        out["tools"]["toolCalls"],
        json!([{"id": "call_mock1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        "{out}"
    );
    assert_eq!(out["agent"], json!({"message": "Hello there"}), "{out}");
    let image = &out["imageUrl"]["images"][0];
    assert_eq!(image["type"], "url", "{out}");
    assert!(
        image["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/api/v2/images/", app.address)),
        "{out}"
    );
    assert_eq!(
        out["imageUrl"]["usage"]["aigneHubCredits"],
        json!(0.04),
        "{out}"
    );
    assert_eq!(out["imageUrl"]["model"], "gpt-image-1", "{out}");
    assert_eq!(
        out["imageFile"]["images"][0],
        json!({"type": "file", "data": "iVBORw0KGgo=", "mimeType": "image/png"}),
        "the client fetched the hub's URL without a key: {out}"
    );
    assert_eq!(
        out["wrongKey"],
        json!({"error": "the bearer token is not a hub API key (they read aih_<tenant>_<key id>_<secret>, as `aigne-hub key issue` prints them)", "type": "authentication_error"}),
        "{out}"
    );
    assert_eq!(out["notEnough"]["type"], "NOT_ENOUGH", "{out}");
    assert!(
        out["notEnough"]["error"]
            .as_str()
            .unwrap()
            .contains("Ask the operator of this hub to add credits"),
        "{out}"
    );
    assert!(
        out["unknownModel"]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{out}"
    );

    // Chat, stream, tools and the agent: four chats; two images.
    let spent = 4 * chat_pico + 2 * 40_000_000_000;
    let balance = app.balance(&tenant).await;
    assert_eq!(
        balance["spent"],
        Credits::from_pico(spent).to_decimal_string()
    );
    assert_eq!(balance["held"], "0");
    let poor_balance = app.balance(&poor).await;
    assert_charged_nothing(&poor_balance);
    let events = tenant_events(&app, &tenant).await;
    let reserved: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::CreditsReserved { ingress, app, .. } => Some((*ingress, app.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(reserved.len(), 6);
    for (ingress, app) in reserved {
        assert_eq!(ingress, Ingress::AigneV2);
        assert!(
            app.as_deref()
                .is_some_and(|a| a.starts_with("@aigne/aigne-hub:")),
            "the calling app is recorded: {app:?}"
        );
    }

    // With the client's header timeout at 600 ms, an image that takes 1 s: the
    // hub sends its headers after 200 ms, so the client does not send it again.
    let out = drive("slow", env(vec![("TIMEOUT", "600".into())])).await;
    assert_eq!(
        out["slowImage"],
        json!({"images": 1, "usage": {"inputTokens": 0, "outputTokens": 0, "aigneHubCredits": 0.04, "creditPrefix": "$"}}),
        "{out}"
    );
    assert!(out["slowImageMs"].as_u64().unwrap() >= SLOW_MS, "{out}");
    assert!(
        out["slowFailure"]["error"]
            .as_str()
            .unwrap()
            .contains("upstream answered 503 (server_error)"),
        "a failure after the headers still reaches the caller: {out}"
    );
    let events = tenant_events(&app, &tenant).await;
    let slow_image_tries = events
        .iter()
        .filter(|e| {
            matches!(&e.event, TenantEvent::UpstreamAttempted { model, .. } if model.as_str() == "slow/gpt-image-1")
        })
        .count();
    assert_eq!(slow_image_tries, 1, "one call, generated once");
    let balance = app.balance(&tenant).await;
    assert_eq!(
        balance["spent"],
        Credits::from_pico(spent + 40_000_000_000).to_decimal_string(),
        "one call, one charge; the failure costs nothing"
    );
    assert_eq!(balance["held"], "0");
}
on_both_stores!(
    the_real_aigne_client_works_unchanged,
    the_real_aigne_client_works_unchanged
);
