//! Runs the real `aigne-hub` binary as a child process, for tests that kill it or
//! read its logs.

use crate::helpers::{free_port, poll_for, TestDatabase};
use crate::mock_openai::MOCK_API_KEY;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The login name the CLI runs under in tests.
pub const CLI_TEST_USER: &str = "ops-alice";

pub struct HubEnv {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub operator_token: String,
    pub log_path: PathBuf,
    /// The database this environment owns, if any: dropped with it.
    _database: Option<TestDatabase>,
}

pub struct HubProcess {
    pub child: Child,
    pub address: String,
}

impl HubEnv {
    /// An environment that owns `database`: it goes with the environment.
    pub fn new(dir: &Path, database: TestDatabase) -> Self {
        let mut env = Self::sharing(dir, database.url());
        env._database = Some(database);
        env
    }

    /// An environment on a database it does not own (a test app's), or on
    /// the SQLite file in `dir` for `None`.
    pub fn sharing(dir: &Path, database_url: Option<String>) -> Self {
        Self {
            data_dir: dir.join("data"),
            database_url,
            operator_token: format!("op-{}", uuid::Uuid::new_v4()),
            log_path: dir.join("hub.log"),
            _database: None,
        }
    }

    /// Runs one CLI command, with `stdin` as its input, to success; returns
    /// its output.
    pub fn run_ok(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aigne-hub"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // The login name CLI changes are recorded with (`metadata.actor`).
            .env("USER", CLI_TEST_USER)
            .env("AIGNE_HUB_DATA_DIR", &self.data_dir)
            .env("AIGNE_HUB_OPERATOR_TOKEN", &self.operator_token)
            .env("RUST_LOG", "debug");
        if let Some(url) = &self.database_url {
            command.env("DATABASE_URL", url);
        }
        command
    }

    /// Starts `aigne-hub serve` and waits until it answers.
    pub async fn start(&self) -> HubProcess {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut child = self
            .command()
            .arg("serve")
            .env("AIGNE_HUB_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let healthy = || async {
            let answer = client.get(format!("{address}/healthz")).send().await;
            answer.is_ok_and(|r| r.status() == 200).then_some(())
        };
        if poll_for(Duration::from_secs(10), healthy).await.is_some() {
            return HubProcess { child, address };
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the hub did not start; log:\n{}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        );
    }
}

impl HubProcess {
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn terminate(&mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }

    pub async fn admin(
        &self,
        env: &HubEnv,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Value {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(&env.operator_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Provider `mock` at `base_url`, priced models, one tenant with a member key.
    pub async fn setup(
        &self,
        env: &HubEnv,
        base_url: &str,
        models: &[&str],
        credits: &str,
    ) -> (String, String) {
        use reqwest::Method;
        self.admin(env, Method::POST, "/admin/v1/providers", json!({"name": "mock", "kind": "openai", "base_url": base_url, "api_key": MOCK_API_KEY}))
            .await;
        for model in models {
            self.admin(
                env,
                Method::PUT,
                &format!("/admin/v1/prices/mock/{model}"),
                json!({"input_per_mtok": "1", "output_per_mtok": "2"}),
            )
            .await;
        }
        let tenant = self
            .admin(
                env,
                Method::POST,
                "/admin/v1/tenants",
                json!({"name": "t", "initial_credits": credits}),
            )
            .await;
        let tenant = tenant["tenant_id"].as_str().unwrap().to_string();
        let key = self
            .admin(
                env,
                Method::POST,
                &format!("/admin/v1/tenants/{tenant}/keys"),
                json!({"name": "k", "role": "member"}),
            )
            .await;
        (tenant, key["key"].as_str().unwrap().to_string())
    }

    pub async fn balance(&self, env: &HubEnv, tenant: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/admin/v1/tenants/{tenant}/balance",
                self.address
            ))
            .bearer_auth(&env.operator_token)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
