//! Usage analytics (`GET /v1/billing/usage`): the `analytics` projection read
//! through the API, against the ledger.

use crate::billing::{mock_answer_cost, GPT_MOCK};
use crate::helpers::*;
use crate::mock_openai::{CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::on_both_stores;
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use domain::Credits;
use serde_json::Value;

/// A second priced model: 3 credits per million input tokens, 4 per million output.
const OTHER_MOCK: (&str, &str, &str, Option<u32>) = ("other-mock", "3", "4", Some(1000));

fn other_answer_cost() -> Credits {
    Credits::from_pico((PROMPT_TOKENS * 3_000_000 + COMPLETION_TOKENS * 4_000_000) as i128)
}

async fn get(app: &TestApp, key: &str, query: &str, csv: bool) -> reqwest::Response {
    let path = format!("/v1/billing/usage?{query}");
    if csv {
        app.get_csv(key, &path).await
    } else {
        app.get(key, &path).await
    }
}

async fn get_json(app: &TestApp, key: &str, query: &str) -> Value {
    app.get_json(key, &format!("/v1/billing/usage?{query}"))
        .await
}

fn total_requests(body: &Value) -> u64 {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum()
}

/// Waits until the projection shows `requests` finished requests (on PostgreSQL
/// the log is readable once every older transaction in the cluster has ended).
async fn usage_with(app: &TestApp, key: &str, query: &str, requests: u64) -> Value {
    let what = format!("usage shows {requests} requests");
    wait_for(WAIT_DEADLINE, &what, || async {
        app.projections_caught_up().await;
        let body = get_json(app, key, query).await;
        (total_requests(&body) == requests).then_some(body)
    })
    .await
}

fn pico(amount: &Value) -> Credits {
    let text = amount.as_str().unwrap();
    // Credits::parse takes at most 12 decimals: exactly pico-credits.
    Credits::parse(text).unwrap()
}

async fn usage_equals_the_ledger(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK, OTHER_MOCK, ("fail-503", "1", "2", None)])
        .await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let auditor = app.issue_key(&tenant, "auditor").await;
    for _ in 0..3 {
        let r = app.chat(&member, &chat_body("gpt-mock", false)).await;
        assert_eq!(r.status(), 200);
    }
    for stream in [false, true] {
        let r = app.chat(&member, &chat_body("other-mock", stream)).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(
        app.chat(&member, &chat_body("fail-503", false))
            .await
            .status(),
        502
    );
    // Another tenant's call must not show.
    let (other, other_member) = app.tenant_with_key("1", "member").await;
    let other_admin = app.issue_key(&other, "admin").await;
    assert_eq!(
        app.chat(&other_member, &chat_body("gpt-mock", false))
            .await
            .status(),
        200
    );

    let body = usage_with(&app, &billing, "group_by=model,day", 6).await;
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{body}");
    let day = rows[0]["day"].as_str().unwrap().to_string();
    assert!(rows.iter().all(|r| r["day"] == day.as_str()));
    let models: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        vec!["mock/fail-503", "mock/gpt-mock", "mock/other-mock"]
    );
    let figures = |r: &Value| -> Vec<u64> {
        [
            "requests",
            "successes",
            "failures",
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "images",
        ]
        .iter()
        .map(|f| r[*f].as_u64().unwrap_or_else(|| panic!("{f} in {r}")))
        .collect()
    };
    let input = PROMPT_TOKENS - CACHED_TOKENS;
    assert_eq!(figures(&rows[0]), vec![1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(rows[0]["amount"], "0");
    assert_eq!(rows[0]["latency_p50_ms"], Value::Null);
    assert_eq!(
        figures(&rows[1]),
        vec![
            3,
            3,
            0,
            3 * input,
            3 * CACHED_TOKENS,
            0,
            3 * COMPLETION_TOKENS,
            0,
            0
        ]
    );
    let gpt = mock_answer_cost() + mock_answer_cost() + mock_answer_cost();
    assert_eq!(rows[1]["amount"], gpt.to_decimal_string());
    assert!(rows[1]["latency_p50_ms"].is_u64());
    assert!(rows[1]["latency_p95_ms"].as_u64() >= rows[1]["latency_p50_ms"].as_u64());
    assert_eq!(
        figures(&rows[2]),
        vec![
            2,
            2,
            0,
            2 * input,
            2 * CACHED_TOKENS,
            0,
            2 * COMPLETION_TOKENS,
            0,
            0
        ]
    );
    assert_eq!(
        rows[2]["amount"],
        (other_answer_cost() + other_answer_cost()).to_decimal_string()
    );
    // The amounts add up to what the ledger spent.
    let total = rows
        .iter()
        .fold(Credits::ZERO, |sum, r| sum + pico(&r["amount"]));
    assert_eq!(
        app.balance(&tenant).await["spent"],
        total.to_decimal_string()
    );

    // The auditor and the operator read the same; the other tenant sees only its own.
    assert_eq!(
        get_json(&app, &auditor, "group_by=model,day").await["data"],
        body["data"]
    );
    let operator: Value = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant}/usage?group_by=model,day"),
            None,
        )
        .await;
    assert_eq!(operator["data"], body["data"]);
    let theirs = usage_with(&app, &other_admin, "group_by=model", 1).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1);
    assert_eq!(theirs["data"][0]["model"], "mock/gpt-mock");
    assert_eq!(
        theirs["data"][0]["amount"],
        mock_answer_cost().to_decimal_string()
    );

    // CSV: the same rows, with a header.
    let response = get(&app, &billing, "group_by=model,day", true).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = response.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "model,day,requests,successes,failures,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,reasoning_tokens,images,amount,provider_cost,margin,latency_p50_ms,latency_p95_ms"
    );
    assert_eq!(lines.len(), 4);
    for (line, row) in lines[1..].iter().zip(rows) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], row["model"]);
        assert_eq!(cells[1], row["day"]);
        let numbers: Vec<u64> = cells[2..11].iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(numbers, figures(row));
        assert_eq!(cells[11], row["amount"]);
        assert_eq!(cells[12], row["provider_cost"]);
        assert_eq!(cells[13], row["margin"]);
        let latency = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
        assert_eq!(cells[14], latency(&row["latency_p50_ms"]));
        assert_eq!(cells[15], latency(&row["latency_p95_ms"]));
    }

    // A zone whose date differs from UTC's now: the calls move to that day.
    let hourly = get_json(&app, &billing, "group_by=hour").await;
    assert_eq!(total_requests(&hourly), 6);
    for row in hourly["data"].as_array().unwrap() {
        let hour = DateTime::parse_from_rfc3339(row["hour"].as_str().unwrap()).unwrap();
        assert_eq!(hour.offset().local_minus_utc(), 0);
        let (tz, shift) = if hour.with_timezone(&Utc).hour() >= 12 {
            ("Etc/GMT-14", TimeDelta::hours(14)) // UTC+14
        } else {
            ("Etc/GMT%2B12", TimeDelta::hours(-12)) // UTC−12
        };
        let expected = (hour.with_timezone(&Utc) + shift)
            .format("%Y-%m-%d")
            .to_string();
        assert_ne!(expected, hour.format("%Y-%m-%d").to_string());
        let shifted = get_json(&app, &billing, &format!("group_by=day&tz={tz}")).await;
        let days: Vec<&str> = shifted["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["day"].as_str().unwrap())
            .collect();
        assert!(days.contains(&expected.as_str()), "{tz}: {shifted}");
        // The same with a fixed offset.
        let offset = if shift > TimeDelta::zero() {
            "%2B14:00"
        } else {
            "-12:00"
        };
        let fixed = get_json(&app, &billing, &format!("group_by=day&tz={offset}")).await;
        assert_eq!(fixed["data"], shifted["data"]);
    }
    // A range that ends before the calls has none of them.
    let before = get_json(&app, &billing, "from=2020-01-01&to=2020-01-31").await;
    assert_eq!(before["data"], serde_json::json!([]));

    // Replay rebuilds the analytics projection byte for byte.
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");
    let analytics = &report.projections[1];
    assert_eq!(
        analytics.comparison.projection,
        projections::analytics::NAME
    );
    assert!(analytics.comparison.live_rows >= 4, "{analytics:?}");
    assert_eq!(
        analytics.comparison.live_hash,
        analytics.comparison.replayed_hash
    );
}
on_both_stores!(usage_equals_the_ledger, usage_equals_the_ledger);

async fn usage_refuses_members_and_bad_queries(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let admin = app.issue_key(&tenant, "admin").await;
    assert_eq!(get(&app, &member, "", false).await.status(), 403);
    assert_eq!(get(&app, "aih_bad", "", false).await.status(), 401);
    let bad = [
        ("group_by=model,tenant", "group_by"),
        ("group_by=day,day", "twice"),
        ("tz=Mars/Olympus", "tz"),
        ("tz=%2B25:00", "tz"),
        ("from=yesterday", "from"),
        ("from=2026-02-01&to=2026-01-01", "before"),
        ("from=2025-01-01&to=2026-01-01", "93 days"),
        ("colour=blue", "query"),
    ];
    for (query, word) in bad {
        let response = get(&app, &admin, query, false).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(word), "{query}: {message}");
    }
    // An empty group_by is one row of totals, as documented: with no usage yet,
    // a row of zeros (no latency without a successful request).
    let body = get_json(&app, &admin, "group_by=").await;
    assert_eq!(body["group_by"], serde_json::json!([]));
    assert_eq!(
        body["data"],
        serde_json::json!([{
            "requests": 0, "successes": 0, "failures": 0,
            "input_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "output_tokens": 0, "reasoning_tokens": 0, "images": 0,
            "amount": "0", "provider_cost": "0", "margin": "0",
            "latency_p50_ms": null, "latency_p95_ms": null,
        }]),
        "{body}"
    );
    let csv = get(&app, &admin, "group_by=", true)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 2, "a header and the totals: {csv}");
    assert!(csv.ends_with("\r\n0,0,0,0,0,0,0,0,0,0,0,0,,\r\n"), "{csv}");
    let unknown = app
        .admin(
            reqwest::Method::GET,
            "/admin/v1/tenants/00000000-0000-0000-0000-000000000000/usage",
            None,
        )
        .await;
    assert_eq!(unknown.status(), 404);
}
on_both_stores!(
    usage_refuses_members_and_bad_queries,
    usage_refuses_members_and_bad_queries
);

async fn a_formula_in_a_csv_cell_is_neutralised(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let formula = "=HYPERLINK(\"http://evil.example\",\"click\")";
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(&member)
        .header("x-aigne-hub-client-did", formula)
        .json(&chat_body("gpt-mock", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    usage_with(&app, &billing, "group_by=app", 1).await;

    let text = get(&app, &billing, "group_by=app", true)
        .await
        .text()
        .await
        .unwrap();
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with("\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\","),
        "a spreadsheet reads it as text: {row}"
    );
    // Figures stay numbers: the amount is not quoted.
    let amount = mock_answer_cost().to_decimal_string();
    assert!(row.contains(&format!(",{amount},")), "{row}");
}
on_both_stores!(
    a_formula_in_a_csv_cell_is_neutralised,
    a_formula_in_a_csv_cell_is_neutralised
);
