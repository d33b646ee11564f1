//! Suspending, resuming and closing a tenant: a suspended tenant's model
//! requests are refused on every ingress at no cost while its reads and its open
//! holds go on; a closed tenant serves only the operator's and its auditors'
//! reads, and its credit left is forfeited or refunded by an event of its own.

use crate::aigne::{chat_call, post_v2};
use crate::helpers::*;
use crate::on_both_stores;
use crate::process::HubEnv;
use domain::tenant::{RemainingCredit, TenantEvent};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const REASON: &str = "unpaid invoice INV-7";
/// Longest a test waits for the CLI's change to reach the serving process.
const CHANGE_VISIBLE: Duration = Duration::from_millis(2_000);

async fn lifecycle(app: &TestApp, tenant: &str, action: &str, body: Value) -> (u16, Value) {
    let response = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/{action}"),
            Some(body),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn count(events: &[aigne_hub::store::StoredEvent], kind: fn(&TenantEvent) -> bool) -> usize {
    events.iter().filter(|e| kind(&e.event)).count()
}

async fn a_suspended_tenant_is_refused_on_every_ingress_at_no_cost(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[
        ("gpt-mock", "1", "2", None),
        ("text-embedding-3-small", "0.13", "0", None),
    ])
    .await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let auditor = app.issue_key(&tenant, "auditor").await;
    let answered = app.chat(&member, &chat_body("gpt-mock", false)).await;
    assert_eq!(answered.status(), 200);
    let earlier_request = request_id(&answered);
    let before = app.wait_until_nothing_held(&tenant).await;

    let (status, body) = lifecycle(&app, &tenant, "suspend", json!({"reason": REASON})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"tenant_id": tenant, "status": "suspended", "reason": REASON, "changed": true})
    );
    // A second suspension records nothing and keeps the first reason.
    let (status, again) = lifecycle(&app, &tenant, "suspend", json!({"reason": "another"})).await;
    assert_eq!(status, 200);
    assert_eq!(again["changed"], false);
    assert_eq!(again["reason"], REASON);
    let events = tenant_events(&app, &tenant).await;
    assert_eq!(
        count(&events, |e| matches!(
            e,
            TenantEvent::TenantSuspended { .. }
        )),
        1
    );

    let refused_openai = |(status, body): (u16, Value)| {
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "tenant_suspended", "{body}");
        assert_eq!(body["error"]["type"], "permission_error", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(REASON),
            "{body}"
        );
    };
    refused_openai(status_and_body(app.chat(&member, &chat_body("gpt-mock", false)).await).await);
    refused_openai(status_and_body(app.chat(&member, &chat_body("gpt-mock", true)).await).await);
    let embeddings = json!({"model": "mock/text-embedding-3-small", "input": ["a"]});
    refused_openai(status_and_body(app.post(&member, "/v1/embeddings", &embeddings).await).await);
    // Anthropic's shape: its type, with the hub's code beside it.
    let messages = json!({"model": "mock/gpt-mock", "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let (status, body) = status_and_body(app.post(&member, "/v1/messages", &messages).await).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert_eq!(body["error"]["code"], "tenant_suspended", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(REASON));
    // AIGNE's shape: the message its client throws, and the code.
    for streaming in [None, Some(true)] {
        let call = chat_call("mock/gpt-mock", streaming);
        let (status, body) =
            status_and_body(post_v2(&app, &member, "/api/v2/chat", &call).await).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "tenant_suspended", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(REASON));
    }
    let availability = app.get_json(&member, "/api/v2/status").await;
    assert_eq!(availability["available"], false, "{availability}");
    assert!(availability["error"].as_str().unwrap().contains(REASON));

    // Refused before any hold: nothing was held, nothing charged, no request.
    let events_after = tenant_events(&app, &tenant).await;
    assert_eq!(
        count(&events_after, |e| matches!(
            e,
            TenantEvent::CreditsReserved { .. }
        )),
        1,
        "only the call before the suspension placed a hold"
    );
    assert_eq!(app.balance(&tenant).await, before);

    // Reads go on.
    let balance = app.get_json(&billing, "/v1/billing/balance").await;
    assert_eq!(balance["available"], before["available"]);
    app.get_json(&billing, "/v1/billing/usage").await;
    app.get_json(&billing, "/v1/billing/invoices").await;
    app.get_json(&auditor, "/v1/audit/events").await;
    app.get_json(&member, "/v1/models").await;
    let explained = app
        .get_json(&billing, &format!("/v1/billing/requests/{earlier_request}"))
        .await;
    assert_eq!(
        explained["request_id"],
        earlier_request.as_str(),
        "{explained}"
    );

    let (status, body) = lifecycle(&app, &tenant, "resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"tenant_id": tenant, "status": "active", "changed": true})
    );
    let (_, again) = lifecycle(&app, &tenant, "resume", json!({})).await;
    assert_eq!(
        again["changed"], false,
        "resuming an active tenant is a no-op"
    );
    assert_eq!(
        app.chat(&member, &chat_body("gpt-mock", false))
            .await
            .status(),
        200
    );
    let availability = app.get_json(&member, "/api/v2/status").await;
    assert_eq!(availability["available"], true, "{availability}");
    app.wait_until_nothing_held(&tenant).await;
    replay_equals_live(&app).await;
}
on_both_stores!(
    a_suspended_tenant_is_refused_on_every_ingress_at_no_cost,
    a_suspended_tenant_is_refused_on_every_ingress_at_no_cost
);

async fn an_open_stream_settles_after_suspension_and_close_waits_for_it(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[
        ("gpt-mock", "1", "2", None),
        ("slow-stream", "1", "2", None),
    ])
    .await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let auditor = app.issue_key(&tenant, "auditor").await;

    let mut stream = app.chat(&member, &chat_body("slow-stream", true)).await;
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap().expect("the stream started");

    // Its hold is open: the tenant cannot close yet.
    let close = json!({"reason": "contract ended", "remaining": "forfeit"});
    let (status, body) = lifecycle(&app, &tenant, "close", close.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 open hold"),
        "{body}"
    );
    let (status, _) = lifecycle(&app, &tenant, "suspend", json!({"reason": REASON})).await;
    assert_eq!(status, 200);

    // The stream admitted before the suspension runs to its end and is charged.
    let mut text = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let settled = app.wait_until_nothing_held(&tenant).await;
    assert_ne!(settled["spent"], "0", "{settled}");
    let left = settled["available"].as_str().unwrap().to_string();

    let (status, body) = lifecycle(&app, &tenant, "close", close.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"tenant_id": tenant, "status": "closed", "reason": "contract ended",
            "changed": true, "remaining": "forfeited", "amount": left})
    );
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["available"], "0", "{balance}");
    assert_eq!(balance["closed_out"], left.as_str(), "{balance}");
    let events = tenant_events(&app, &tenant).await;
    let closed_out: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::CreditsClosedOut {
                disposition,
                amount_pico,
                ..
            } => Some((*disposition, amount_pico.to_decimal_string())),
            _ => None,
        })
        .collect();
    assert_eq!(closed_out, vec![(RemainingCredit::Forfeited, left.clone())]);

    // Only the operator and the auditors read a closed tenant.
    let refused_closed = |(status, body): (u16, Value)| {
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "tenant_closed", "{body}");
    };
    refused_closed(status_and_body(app.chat(&member, &chat_body("gpt-mock", false)).await).await);
    refused_closed(status_and_body(app.get(&member, "/v1/models").await).await);
    refused_closed(status_and_body(app.get(&billing, "/v1/billing/balance").await).await);
    let audited = app.get_json(&auditor, "/v1/billing/balance").await;
    assert_eq!(audited["available"], "0");
    assert_eq!(audited["closed_out"], left.as_str());
    let export = app.get_json(&auditor, "/v1/audit/events").await;
    assert_eq!(export["next_after"], Value::Null, "one page holds it all");
    assert!(export.to_string().contains("CreditsClosedOut"), "{export}");
    // The export alone, offline, verifies and gives the same balance.
    let check = aigne_hub::audit::verify_export(&export.to_string(), &app.settings.limits).unwrap();
    assert_eq!(check.chain.first_break, None, "{:?}", check.chain);
    let offline = check
        .balance
        .expect("an intact export recomputes the balance");
    for field in ["granted", "spent", "closed_out", "available"] {
        assert_eq!(offline[field], audited[field], "{field}: {offline}");
    }
    let availability = app.get_json(&auditor, "/api/v2/status").await;
    assert_eq!(availability["available"], false);

    // Nothing changes a closed tenant.
    for (action, body) in [
        ("suspend", json!({"reason": "r"})),
        ("resume", json!({})),
        ("close", close.clone()),
    ] {
        let (status, body) = lifecycle(&app, &tenant, action, body).await;
        assert_eq!(status, 409, "{action}: {body}");
    }
    let grant = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/credits"),
            Some(json!({"amount": "1", "idempotency_key": "late", "reason": "r"})),
        )
        .await;
    assert_eq!(grant.status(), 409);
    let key = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "late", "role": "admin"})),
        )
        .await;
    assert_eq!(key.status(), 409);

    // The invoice shows the forfeit beside the grant; replay equals live.
    app.projections_caught_up().await;
    let invoices = app
        .admin_json(
            Method::GET,
            &format!("/admin/v1/tenants/{tenant}/invoices"),
            None,
        )
        .await;
    let credits = invoices["data"][0]["credits_applied"].as_array().unwrap();
    let forfeit = credits
        .iter()
        .find(|c| c["kind"] == "forfeit")
        .unwrap_or_else(|| panic!("no forfeit entry: {invoices}"));
    assert_eq!(forfeit["amount"], format!("-{left}"));
    replay_equals_live(&app).await;
}
on_both_stores!(
    an_open_stream_settles_after_suspension_and_close_waits_for_it,
    an_open_stream_settles_after_suspension_and_close_waits_for_it
);

async fn lifecycle_routes_check_their_input(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("2").await;
    // An unknown or malformed tenant is 404.
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-a-tenant"] {
        let (status, body) = lifecycle(&app, id, "suspend", json!({"reason": "r"})).await;
        assert_eq!(status, 404, "{body}");
        let (status, _) = lifecycle(&app, id, "resume", json!({})).await;
        assert_eq!(status, 404);
    }
    // Bad bodies are 400s that say what is wrong.
    let bad = [
        ("suspend", json!({}), "reason"),
        ("suspend", json!({"reason": ""}), "reason"),
        ("suspend", json!({"reason": "x".repeat(501)}), "500"),
        ("suspend", json!({"reason": "r", "extra": 1}), "extra"),
        ("close", json!({"reason": "r"}), "remaining"),
        (
            "close",
            json!({"reason": "r", "remaining": "keep"}),
            "forfeit",
        ),
        ("resume", json!({"reason": "r"}), "reason"),
    ];
    for (action, body, says) in bad {
        let (status, answer) = lifecycle(&app, &tenant, action, body.clone()).await;
        assert_eq!(status, 400, "{action} {body}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{action} {body}: {answer}"
        );
    }
    // Resuming needs no body at all; the operator token is required.
    let response = app
        .client
        .post(format!("{}/admin/v1/tenants/{tenant}/resume", app.address))
        .bearer_auth(&app.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .client
        .post(format!("{}/admin/v1/tenants/{tenant}/suspend", app.address))
        .json(&json!({"reason": "r"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // A refund is recorded as such.
    let (status, body) = lifecycle(
        &app,
        &tenant,
        "close",
        json!({"reason": "moved away", "remaining": "refund"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining"], "refunded");
    assert_eq!(body["amount"], "2");
    assert_eq!(app.balance(&tenant).await["available"], "0");
}
on_both_stores!(
    lifecycle_routes_check_their_input,
    lifecycle_routes_check_their_input
);

/// The CLI, on the same data dir and database as `app`.
fn cli_env(app: &TestApp) -> HubEnv {
    let dir = app.settings.data_dir.parent().unwrap();
    HubEnv::sharing(dir, app.settings.database_url.clone())
}

fn cli(env: &HubEnv, args: &[&str]) -> Value {
    serde_json::from_slice(&env.run_ok(args, None).stdout).unwrap()
}

async fn the_cli_suspends_resumes_and_closes(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[("gpt-mock", "1", "2", None)]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let body = chat_body("gpt-mock", false);
    assert_eq!(app.chat(&member, &body).await.status(), 200);
    app.wait_until_nothing_held(&tenant).await;
    let env = cli_env(&app);
    let help = env.command().args(["tenant", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["suspend", "resume", "close"] {
        assert!(
            help.contains(command),
            "`tenant --help` lacks {command}:\n{help}"
        );
    }

    let printed = cli(&env, &["tenant", "suspend", &tenant, "--reason", REASON]);
    assert_eq!(printed["status"], "suspended");
    assert_eq!(printed["reason"], REASON);
    // The serving process learns of another writer's change within moments.
    wait_until(
        CHANGE_VISIBLE,
        "the suspension reached the server",
        || async { app.chat(&member, &body).await.status() == 403 },
    )
    .await;

    let printed = cli(&env, &["tenant", "resume", &tenant]);
    assert_eq!(printed["status"], "active");
    // A refusal is never made from a stale view: the very next call is admitted.
    let response = app.chat(&member, &body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    app.wait_until_nothing_held(&tenant).await;

    let left = app.balance(&tenant).await["available"]
        .as_str()
        .unwrap()
        .to_string();
    let printed = cli(
        &env,
        &[
            "tenant",
            "close",
            &tenant,
            "--reason",
            "contract ended",
            "--remaining",
            "refund",
        ],
    );
    assert_eq!(printed["status"], "closed");
    assert_eq!(printed["remaining"], "refunded");
    assert_eq!(printed["amount"], left.as_str());
    let output = env
        .command()
        .args([
            "tenant",
            "close",
            &tenant,
            "--reason",
            "r",
            "--remaining",
            "keep",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("forfeit"));
    wait_until(CHANGE_VISIBLE, "the closing reached the server", || async {
        app.chat(&member, &body).await.status() == 403
    })
    .await;
    replay_equals_live(&app).await;
}
on_both_stores!(
    the_cli_suspends_resumes_and_closes,
    the_cli_suspends_resumes_and_closes
);
