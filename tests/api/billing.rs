//! Billing arithmetic through the HTTP API.

use crate::helpers::*;
use crate::mock_openai::{CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::on_both_stores;
use domain::tenant::TenantEvent;
use domain::Credits;
use reqwest::Method;
use serde_json::{json, Value};

/// Price of `mock/gpt-mock`: 1 credit per million input tokens, 2 per million output.
pub const GPT_MOCK: (&str, &str, &str, Option<u32>) = ("gpt-mock", "1", "2", Some(1000));

/// The exact cost of one mock answer at GPT_MOCK's price, in pico-credits.
pub fn mock_answer_cost() -> Credits {
    Credits::from_pico((PROMPT_TOKENS * 1_000_000 + COMPLETION_TOKENS * 2_000_000) as i128)
}

/// Every event of one tenant, straight from its stream.
async fn non_streaming_chat_is_billed_exactly(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(
        app.mock.requests()[0]["model"],
        "gpt-mock",
        "the provider prefix is stripped upstream"
    );

    let cost = mock_answer_cost();
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["granted"], "1");
    assert_eq!(balance["spent"], cost.to_decimal_string());
    assert_eq!(balance["spent"], "0.000072");
    assert_eq!(balance["held"], "0");
    assert_eq!(balance["available"], "0.999928");

    let events = tenant_events(&app, &tenant).await;
    let settled: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            TenantEvent::UsageSettled {
                request_id: r,
                usage,
                cost_pico,
                ..
            } => Some((r.to_string(), *usage, *cost_pico)),
            _ => None,
        })
        .collect();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].0, request_id);
    assert_eq!(
        (
            settled[0].1.input_tokens,
            settled[0].1.output_tokens,
            settled[0].1.cache_read_tokens
        ),
        (
            PROMPT_TOKENS - CACHED_TOKENS,
            COMPLETION_TOKENS,
            CACHED_TOKENS
        )
    );
    assert!(!settled[0].1.estimated);
    assert_eq!(settled[0].2, cost);
    let metadata = &events
        .iter()
        .find(|e| matches!(e.event, TenantEvent::UsageSettled { .. }))
        .unwrap()
        .metadata;
    assert_eq!(metadata.tenant_id.to_string(), tenant);
    assert_eq!(metadata.request_id.unwrap().to_string(), request_id);
}
on_both_stores!(
    non_streaming_chat_is_billed_exactly,
    non_streaming_chat_is_billed_exactly
);

async fn sse_data(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\n\n"), "every frame ends with a blank line");
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| f.strip_prefix("data: ").expect("data frame").to_string())
        .collect()
}

async fn streaming_chat_is_billed_and_hides_usage_unless_asked(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = app.chat(&key, &chat_body("gpt-mock", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers().contains_key("x-request-id"));
    let frames = sse_data(response).await;
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello there");
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage stripped when the client did not ask: {chunks:?}"
    );
    assert_eq!(
        app.mock.requests()[0]["stream_options"]["include_usage"],
        true,
        "usage always requested upstream"
    );
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], mock_answer_cost().to_decimal_string());
    assert_eq!(balance["held"], "0");

    // A client that asks for usage gets the usage chunk, unchanged.
    let mut body = chat_body("gpt-mock", true);
    body["stream_options"] = json!({"include_usage": true});
    let frames = sse_data(app.chat(&key, &body).await).await;
    let usage_chunk: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], COMPLETION_TOKENS);
    let balance = app.balance(&tenant).await;
    assert_eq!(
        balance["spent"],
        (mock_answer_cost() + mock_answer_cost()).to_decimal_string()
    );
}
on_both_stores!(
    streaming_chat_is_billed_and_hides_usage_unless_asked,
    streaming_chat_is_billed_and_hides_usage_unless_asked
);

async fn grant_is_idempotent(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("0").await;
    let path = format!("/admin/v1/tenants/{tenant}/credits");
    let grant = json!({"amount": "2.5", "idempotency_key": "invoice-42", "reason": "top-up"});
    let first = app
        .admin_json(Method::POST, &path, Some(grant.clone()))
        .await;
    let second = app
        .admin_json(Method::POST, &path, Some(grant.clone()))
        .await;
    assert_eq!(first, second, "a repeat returns the original result");
    assert_eq!(app.balance(&tenant).await["granted"], "2.5");

    let conflicting = app
        .admin(
            Method::POST,
            &path,
            Some(json!({"amount": "3", "idempotency_key": "invoice-42", "reason": "top-up"})),
        )
        .await;
    assert_eq!(conflicting.status(), 409);
    let body: Value = conflicting.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invoice-42"));
    assert_eq!(app.balance(&tenant).await["granted"], "2.5");

    let events = tenant_events(&app, &tenant).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.event, TenantEvent::CreditsGranted { .. }))
            .count(),
        1
    );
}
on_both_stores!(grant_is_idempotent, grant_is_idempotent);

async fn concurrent_requests_never_overspend(kind: StoreKind) {
    const REQUESTS: usize = 64;
    const AFFORDABLE: usize = 20;
    let app = spawn_app(kind).await;
    // Input is free and the mock reports exactly max_tokens output tokens, so each
    // request costs exactly its hold: 100 tokens * 1 credit/Mtok = 0.0001 credits.
    app.setup_provider(&[("exact-hold", "0", "1", Some(100))])
        .await;
    let (tenant, key) = app.tenant_with_key("0.002", "member").await;
    let billing_key = app.issue_key(&tenant, "billing").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (client, address, key, stop) = (
            app.client.clone(),
            app.address.clone(),
            billing_key.clone(),
            stop.clone(),
        );
        actix_web::rt::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let b: Value = client
                    .get(format!("{address}/v1/billing/balance"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let available = Credits::parse(b["available"].as_str().unwrap_or("-1"));
                assert!(
                    available.is_ok(),
                    "available balance must never be negative: {b}"
                );
                reads += 1;
            }
            reads
        })
    };
    let mut body = chat_body("exact-hold", false);
    body["max_tokens"] = json!(100);
    let calls = (0..REQUESTS).map(|_| app.chat(&key, &body));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = watcher.await.unwrap();
    assert!(reads > 0);

    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        AFFORDABLE,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 402).count(),
        REQUESTS - AFFORDABLE,
        "{statuses:?}"
    );
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["spent"], "0.002");
    assert_eq!(balance["available"], "0");
    assert_eq!(balance["held"], "0");
}
on_both_stores!(
    concurrent_requests_never_overspend,
    concurrent_requests_never_overspend
);

async fn restart_keeps_every_figure_and_replay_equals_live(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK, ("fail-503", "1", "2", None)])
        .await;
    let tenant = app.create_tenant("1").await;
    let other = app.create_tenant("3").await;
    let key = app.issue_key(&tenant, "member").await;
    for stream in [false, true, false] {
        let response = app.chat(&key, &chat_body("gpt-mock", stream)).await;
        assert_eq!(response.status(), 200);
        // Read to the end: a client that drops a stream early has left mid-stream.
        response.bytes().await.unwrap();
    }
    assert_eq!(
        app.chat(&key, &chat_body("fail-503", false)).await.status(),
        502
    );
    app.admin_json(
        Method::POST,
        &format!("/admin/v1/tenants/{other}/credits"),
        Some(json!({"amount": "0.5", "idempotency_key": "k", "reason": "bonus"})),
    )
    .await;
    let before = (app.balance(&tenant).await, app.balance(&other).await);
    assert_eq!(
        before.0["spent"],
        (mock_answer_cost() + mock_answer_cost() + mock_answer_cost()).to_decimal_string()
    );

    let app = app.restart().await;
    let after = (app.balance(&tenant).await, app.balance(&other).await);
    assert_eq!(before, after);
    // Prices and providers survive too: the same call still works and costs the same.
    assert_eq!(
        app.chat(&key, &chat_body("gpt-mock", false)).await.status(),
        200
    );

    // On PostgreSQL the log becomes readable once every older transaction in the
    // cluster has ended (other tests' too): wait until the projection has both tenants.
    let report = wait_for(WAIT_DEADLINE, "the projection has both tenants", || async {
        let report = aigne_hub::replay::replay_all(app.store().as_ref())
            .await
            .unwrap();
        (report.projections[0].comparison.live_rows == 2).then_some(report)
    })
    .await;
    assert!(report.all_identical, "{report:?}");
    let balances = &report.projections[0];
    assert_eq!(balances.comparison.live_rows, 2);
    assert!(balances.events > 10);

    // The projection row catches up with the live actor figures. (On PostgreSQL
    // it may trail while any transaction in the cluster is still open.)
    let live = app.balance(&tenant).await;
    let row: Value = wait_for(
        WAIT_DEADLINE,
        "the balances row has the live figures",
        || async {
            app.projections_caught_up().await;
            let rows = app.store().projection_rows("balances").await.unwrap();
            let row: Value =
                serde_json::from_str(&rows.iter().find(|(k, _)| *k == tenant).unwrap().1).unwrap();
            let spent = Credits::from_pico(row["spent"].as_str().unwrap().parse().unwrap());
            (spent.to_decimal_string() == live["spent"]).then_some(row)
        },
    )
    .await;
    assert_eq!(
        Credits::from_pico(row["spent"].as_str().unwrap().parse().unwrap()).to_decimal_string(),
        live["spent"]
    );

    // A tampered live projection is caught.
    let checkpoint = app.store().projection_checkpoint("balances").await.unwrap();
    let tampered = row.to_string().replace(row["spent"].as_str().unwrap(), "1");
    assert!(app
        .store()
        .commit_projection(
            "balances",
            checkpoint,
            checkpoint,
            &[(tenant.clone(), tampered)]
        )
        .await
        .unwrap());
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(!report.all_identical);
    assert_eq!(
        report.projections[0].comparison.differing_keys,
        vec![tenant]
    );
}
on_both_stores!(
    restart_keeps_every_figure_and_replay_equals_live,
    restart_keeps_every_figure_and_replay_equals_live
);

async fn roles_limit_what_a_key_can_do(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let auditor = app.issue_key(&tenant, "auditor").await;
    let admin = app.issue_key(&tenant, "admin").await;
    let balance = |key: String| {
        let (client, address) = (app.client.clone(), app.address.clone());
        async move {
            client
                .get(format!("{address}/v1/billing/balance"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(balance(member.clone()).await.status(), 403);
    for key in [billing.clone(), auditor.clone(), admin.clone()] {
        let response = balance(key).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"tenant_id": tenant, "granted": "1", "spent": "0", "expired": "0", "revoked": "0", "held": "0", "available": "1", "expiring_soon": "0"})
        );
    }
    assert_eq!(
        app.chat(&billing, &chat_body("gpt-mock", false))
            .await
            .status(),
        403
    );
    assert_eq!(
        app.chat(&auditor, &chat_body("gpt-mock", false))
            .await
            .status(),
        403
    );
    assert_eq!(
        app.chat(&admin, &chat_body("gpt-mock", false))
            .await
            .status(),
        200
    );

    // Models are listed for any valid key, with prices.
    let models: Value = app.get(&auditor, "/v1/models").await.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "mock/gpt-mock");
    assert_eq!(models["data"][0]["pricing"]["input_per_mtok"], "1");
    assert_eq!(models["data"][0]["pricing"]["output_per_mtok"], "2");
}
on_both_stores!(roles_limit_what_a_key_can_do, roles_limit_what_a_key_can_do);

/// `AIGNE_HUB_MODE=enterprise`: the same ledger and figures, but no request is
/// refused for want of credit (a team's costs are tracked, not capped).
async fn enterprise_mode_tracks_costs_without_refusing(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.mode = aigne_hub::config::DeploymentMode::Enterprise
    })
    .await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("0", "member").await;
    for _ in 0..2 {
        let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
        assert_eq!(response.status(), 200);
    }
    let balance = app.balance(&tenant).await;
    let spent = mock_answer_cost() + mock_answer_cost();
    assert_eq!(balance["spent"], spent.to_decimal_string());
    assert_eq!(balance["held"], "0");
    assert_eq!(
        balance["available"],
        (Credits::ZERO - spent).to_decimal_string(),
        "{balance}"
    );
}
on_both_stores!(
    enterprise_mode_tracks_costs_without_refusing,
    enterprise_mode_tracks_costs_without_refusing
);

/// Text deltas and the last chunk of an SSE body that ended with `[DONE]`.
fn stream_text_and_last_chunk(body: &str) -> (String, Value) {
    let frames: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(frames.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, chunks.last().cloned().unwrap())
}

/// An upstream that ignores `max_tokens` cannot make a stream cost more than the
/// tenant can pay: the hub ends it with `finish_reason: "length"` and bills what
/// was delivered. In the enterprise mode the same stream runs to its end.
async fn a_stream_ends_when_the_credit_would_run_out(kind: StoreKind) {
    // 0.001 credit per output token; input nearly free. The mock streams
    // "Hel" + "lo " + "there" whatever max_tokens says.
    let dear = ("gpt-dear", "0.000001", "1000", Some(1000));
    let mut body = chat_body("gpt-dear", true);
    body["max_tokens"] = json!(1);

    let app = spawn_app(kind).await;
    app.setup_provider(&[dear]).await;
    // Covers the hold (one output token) and half a token more.
    let (tenant, key) = app.tenant_with_key("0.0015", "member").await;
    let response = app.chat(&key, &body).await;
    assert_eq!(response.status(), 200);
    let (text, last) = stream_text_and_last_chunk(&response.text().await.unwrap());
    assert_eq!(text, "Hel", "the chunk that would overspend is not sent");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["aigne_hub"]["stopped"], "insufficient_credits");
    let settled = settlements(&app, &tenant)
        .await
        .into_iter()
        .next()
        .expect("the delivered part is settled");
    assert_eq!(settled.0.output_tokens, 1, "3 bytes delivered: one token");
    assert!(settled.0.estimated);
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["held"], "0");
    assert_eq!(balance["spent"], settled.1.to_decimal_string());
    assert!(
        !balance["available"].as_str().unwrap().starts_with('-'),
        "never below zero: {balance}"
    );

    let enterprise = spawn_app_with(kind, |s| {
        s.mode = aigne_hub::config::DeploymentMode::Enterprise
    })
    .await;
    enterprise.setup_provider(&[dear]).await;
    let (_, key) = enterprise.tenant_with_key("0.0015", "member").await;
    let response = enterprise.chat(&key, &body).await;
    let (text, last) = stream_text_and_last_chunk(&response.text().await.unwrap());
    assert_eq!(text, "Hello there");
    assert_ne!(last["choices"][0]["finish_reason"], "length");
}
on_both_stores!(
    a_stream_ends_when_the_credit_would_run_out,
    a_stream_ends_when_the_credit_would_run_out
);
