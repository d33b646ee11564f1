//! A newcomer's first commands: the server's flags work without `serve`, a busy
//! address says how to pick another, and a command run away from the store says
//! where it looked instead of making an empty store.

use crate::helpers::{database_url_for, free_port, poll_for, StoreKind};
use crate::process::HubEnv;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Kills the child when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn answers_healthz(address: &str) -> bool {
    let client = reqwest::Client::new();
    let healthy = || async {
        let answer = client.get(format!("{address}/healthz")).send().await;
        answer.is_ok_and(|r| r.status() == 200).then_some(())
    };
    poll_for(Duration::from_secs(10), healthy).await.is_some()
}

async fn the_listen_flag_works_without_the_serve_command(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::new(temp.path(), database_url_for(kind).await);
    let address = format!("127.0.0.1:{}", free_port());
    let child = env
        .command()
        .args(["--listen", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    assert!(answers_healthz(&format!("http://{address}")).await);
}
crate::on_both_stores!(
    the_listen_flag_works_without_the_serve_command,
    the_listen_flag_works_without_the_serve_command
);

#[test]
fn a_busy_address_names_the_listen_flag_and_its_variable() {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::sharing(temp.path(), None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = env
        .command()
        .args(["serve", "--listen", &address])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&address) && last.contains("--listen") && last.contains("AIGNE_HUB_LISTEN"),
        "{last}"
    );
}

/// Runs a command with no store in its data dir.
fn run_without_store(env: &HubEnv, args: &[&str]) -> (bool, String) {
    let output = env
        .command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (output.status.success(), last)
}

async fn only_serve_creates_a_store(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::new(temp.path(), database_url_for(kind).await);
    let tenant = domain::TenantId::new_random().to_string();
    for args in [
        &["tenant", "create", "--name", "acme"][..],
        &["balance", "--tenant", &tenant][..],
        &[
            "key", "issue", "--tenant", &tenant, "--name", "a", "--role", "member",
        ][..],
        &["replay"][..],
    ] {
        let (ok, message) = run_without_store(&env, args);
        assert!(!ok, "{args:?} succeeded without a store");
        let looked_in = match kind {
            StoreKind::Sqlite => env.data_dir.join("aigne-hub.sqlite"),
            StoreKind::Postgres => env.data_dir.join("master.key"),
        };
        assert!(
            message.contains(&looked_in.display().to_string()) && message.contains("serve"),
            "{args:?}: {message}"
        );
    }
    assert!(
        !env.data_dir.exists(),
        "a command other than serve wrote into the data dir"
    );

    // Once `serve` has made the store, the same command works.
    drop(env.start().await);
    let output = env
        .command()
        .args(["tenant", "create", "--name", "acme"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
crate::on_both_stores!(only_serve_creates_a_store, only_serve_creates_a_store);

#[test]
fn help_describes_every_command() {
    let help = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_aigne-hub"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let top = help(&["--help"]);
    for word in [
        "serve",
        "tenant",
        "key",
        "credits",
        "price",
        "AIGNE_HUB_LISTEN",
        "--listen",
    ] {
        assert!(top.contains(word), "--help lacks {word}:\n{top}");
    }
    // Every subcommand line carries a description.
    let commands = top
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap();
    for line in commands.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.split_whitespace().count() > 1,
            "undescribed command: {line:?}"
        );
    }
}

/// Runs a command that must succeed; returns its JSON.
fn run_ok(env: &HubEnv, args: &[&str]) -> serde_json::Value {
    let output = env
        .command()
        .args(args)
        .env(
            "AIGNE_HUB_PROVIDER_API_KEY",
            crate::mock_openai::MOCK_API_KEY,
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn the_cli_sets_and_removes_a_model_alias(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::new(temp.path(), database_url_for(kind).await);
    drop(env.start().await);
    let mock = crate::mock_openai::MockUpstream::start();
    run_ok(
        &env,
        &[
            "provider",
            "add",
            "--name",
            "mock",
            "--kind",
            "openai",
            "--base-url",
            &mock.base_url,
        ],
    );
    run_ok(
        &env,
        &[
            "price",
            "set",
            "mock/gpt-mock",
            "--input",
            "1",
            "--output",
            "2",
        ],
    );
    let set = run_ok(&env, &["price", "alias", "gpt-mock", "mock/gpt-mock"]);
    assert_eq!(
        set,
        serde_json::json!({"alias": "gpt-mock", "model": "mock/gpt-mock"})
    );

    let hub = env.start().await;
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/admin/v1/aliases", hub.address))
        .bearer_auth(&env.operator_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"],
        serde_json::json!([{"alias": "gpt-mock", "model": "mock/gpt-mock"}])
    );
    drop(hub);
    let removed = run_ok(&env, &["price", "unalias", "gpt-mock"]);
    assert_eq!(removed["removed"], true);
}
crate::on_both_stores!(
    the_cli_sets_and_removes_a_model_alias,
    the_cli_sets_and_removes_a_model_alias
);
