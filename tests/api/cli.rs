//! The CLI offers the operator's operations, printing JSON, on the same store the
//! server uses; provider secrets come from the environment or stdin, never argv.

use crate::helpers::{database_url_for, StoreKind};
use crate::mock_openai::{MockUpstream, MOCK_API_KEY};
use crate::process::{HubEnv, CLI_TEST_USER};
use serde_json::{json, Value};

fn run(env: &HubEnv, args: &[&str], stdin: Option<&str>) -> Value {
    let output = env.run_ok(args, stdin);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

async fn cli_runs_the_operator_workflow(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = database_url_for(kind).await;
    let env = HubEnv::new(temp.path(), database_url);
    let mock = MockUpstream::start();
    // Only `serve` creates a store (and its master key); the CLI then uses it.
    drop(env.start().await);

    let provider = run(
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
        Some(&format!("{MOCK_API_KEY}\n")),
    );
    assert_eq!(provider["name"], "mock");
    let price = run(
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
        None,
    );
    assert_eq!(price["version"], 1);
    let tenant = run(&env, &["tenant", "create", "--name", "acme"], None)["tenant_id"]
        .as_str()
        .unwrap()
        .to_string();
    let grant = [
        "credits",
        "grant",
        "--tenant",
        &tenant,
        "--amount",
        "0.5",
        "--idempotency-key",
        "inv-1",
        "--reason",
        "top-up",
    ];
    assert_eq!(run(&env, &grant, None)["amount"], "0.5");
    assert_eq!(
        run(&env, &grant, None)["amount"],
        "0.5",
        "a repeated grant is a no-op"
    );
    let key = run(
        &env,
        &[
            "key", "issue", "--tenant", &tenant, "--name", "app", "--role", "member",
        ],
        None,
    );
    let key = key["key"].as_str().unwrap().to_string();
    let auditor = run(
        &env,
        &[
            "key", "issue", "--tenant", &tenant, "--name", "audit", "--role", "auditor",
        ],
        None,
    );
    let auditor = auditor["key"].as_str().unwrap().to_string();

    // The server sees what the CLI wrote, and the provider key the CLI read from stdin works.
    let hub = env.start().await;
    let body = json!({"model": "mock/gpt-mock", "messages": [{"role": "user", "content": "hi"}]});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", hub.address))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Changes made through the CLI name the operator's login as who made them.
    let export: Value = reqwest::Client::new()
        .get(format!("{}/v1/audit/events", hub.address))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grant = export["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["payload"]["CreditsGranted"]["idempotency_key"] == "inv-1")
        .expect("the CLI's grant is exported");
    assert_eq!(
        grant["metadata"]["actor"],
        json!({"kind": "operator_cli", "os_user": CLI_TEST_USER})
    );
    let book: Value = reqwest::Client::new()
        .get(format!("{}/admin/v1/price-book/events", hub.address))
        .bearer_auth(&env.operator_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        book["data"][0]["actor"],
        json!({"kind": "operator_cli", "os_user": CLI_TEST_USER}),
        "{book}"
    );
    drop(hub);

    let balance = run(&env, &["balance", "--tenant", &tenant], None);
    assert_eq!(balance["granted"], "0.5");
    assert_eq!(balance["spent"], "0.000072");
    if let Some(url) = &env.database_url {
        crate::helpers::log_readable_up_to_now(url).await;
    }
    let report = run(&env, &["replay"], None);
    assert_eq!(report["all_identical"], true);
    assert_eq!(report["chains_intact"], true);
    assert_eq!(report["broken_chains"], serde_json::json!([]));
    // The raw read-and-decode rate of the same events, measured in the same run.
    assert_eq!(
        report["raw_read"]["events"],
        report["projections"][0]["events"]
    );
    assert!(report["raw_read"]["events_per_second"].as_u64().unwrap() > 0);
    assert!(
        report["projections"][0]["events_per_second"]
            .as_u64()
            .unwrap()
            > 0
    );
}
crate::on_both_stores!(
    cli_runs_the_operator_workflow,
    cli_runs_the_operator_workflow
);

async fn cli_lists_and_shows_tenants_and_keys(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = database_url_for(kind).await;
    let env = HubEnv::new(temp.path(), database_url);
    drop(env.start().await);

    let create = |name: &str| {
        run(&env, &["tenant", "create", "--name", name], None)["tenant_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let older = create("Older Corp");
    let newer = create("newer corp");
    let key = run(
        &env,
        &[
            "key", "issue", "--tenant", &newer, "--name", "app", "--role", "member",
        ],
        None,
    );
    let key_id = key["key_id"].as_str().unwrap();
    // aih_<tenant>_<key>_<secret>: the secret is base64url, so it may hold `_`.
    let secret = key["key"].as_str().unwrap().splitn(4, '_').nth(3).unwrap();

    // No server runs: the CLI brings the directory up to the log itself, as
    // far as the log is readable (on PostgreSQL, below every open transaction
    // on the server, other tests' included).
    if let Some(url) = &env.database_url {
        crate::helpers::log_readable_up_to_now(url).await;
    }
    let listed = run(&env, &["tenant", "list", "--query", "CORP"], None);
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![newer.as_str(), older.as_str()], "{listed}");
    let first = run(&env, &["tenant", "list", "--limit", "1"], None);
    assert_eq!(first["data"][0]["tenant_id"], newer);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = run(
        &env,
        &["tenant", "list", "--limit", "1", "--cursor", cursor],
        None,
    );
    assert_eq!(second["data"][0]["tenant_id"], older);
    assert_eq!(second["next_cursor"], Value::Null);

    let shown = run(&env, &["tenant", "show", &newer], None);
    assert_eq!(shown["name"], "newer corp");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["keys"], json!({"active": 1, "revoked": 0}));
    assert_eq!(shown["balance"]["tenant_id"], newer);

    let output = env.run_ok(&["key", "list", &newer], None);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains(secret), "{text}");
    let keys: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys["data"][0]["key_id"], key_id);
    assert_eq!(keys["data"][0]["role"], "member");

    // A bad status is refused, naming the statuses.
    let output = env
        .command()
        .args(["tenant", "list", "--status", "bogus"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("active"), "{error}");
}
crate::on_both_stores!(
    cli_lists_and_shows_tenants_and_keys,
    cli_lists_and_shows_tenants_and_keys
);

async fn cli_issues_shows_and_changes_key_scopes(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let env = HubEnv::new(temp.path(), database_url_for(kind).await);
    drop(env.start().await);
    let tenant = run(&env, &["tenant", "create", "--name", "acme"], None)["tenant_id"]
        .as_str()
        .unwrap()
        .to_string();
    let scopes = r#"{"models":["openai/*"],"budget":{"amount":"50","period":"month","timezone":"Asia/Shanghai"},"rpm":60}"#;
    let issued = run(
        &env,
        &[
            "key", "issue", "--tenant", &tenant, "--name", "app", "--role", "member", "--scopes",
            scopes,
        ],
        None,
    );
    assert!(issued["key"].as_str().unwrap().starts_with("aih_"));
    assert_eq!(issued["budget"]["remaining"], "50", "{issued}");
    assert_eq!(issued["budget"]["timezone"], "Asia/Shanghai");
    let key_id = issued["key_id"].as_str().unwrap().to_string();
    let changed = run(
        &env,
        &[
            "key",
            "set",
            "--tenant",
            &tenant,
            "--key-id",
            &key_id,
            "--scopes",
            r#"{"rpm":null,"max_concurrent":4}"#,
        ],
        None,
    );
    assert_eq!(changed["rpm"], Value::Null, "{changed}");
    assert_eq!(changed["max_concurrent"]["limit"], 4);
    let shown = run(
        &env,
        &["key", "show", "--tenant", &tenant, "--key-id", &key_id],
        None,
    );
    assert_eq!(shown["models"], json!(["openai/*"]));
    assert_eq!(shown["max_concurrent"], changed["max_concurrent"]);
    assert!(shown.get("key").is_none(), "the secret is shown once");
    // A bad scope is refused naming the field, and changes nothing.
    let refused = env
        .command()
        .args([
            "key",
            "set",
            "--tenant",
            &tenant,
            "--key-id",
            &key_id,
            "--scopes",
            r#"{"rpm":0}"#,
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rpm"));
}
crate::on_both_stores!(
    cli_issues_shows_and_changes_key_scopes,
    cli_issues_shows_and_changes_key_scopes
);
