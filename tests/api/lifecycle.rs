//! The billing issue's "Done when", end to end: one tenant's whole life on the
//! hub's business clock — creation with initial credits, operator grants (one
//! that never expires, one that expires soon), a signed payment top-up, calls
//! across models and capabilities (chat JSON and SSE, embeddings, an image), the
//! expiry of what is left of the expiring lot, a refund, a month boundary past
//! the invoice grace window, more calls — and then every figure checked with
//! exact integer arithmetic (pico-credits) against what the test computed from
//! prices, mock usage, grants, the expiry and the refund: the balance, the
//! explanations, usage analytics, invoices, a replay of every projection, the
//! audit chain and an offline export, tampering, and tenant isolation.

use crate::helpers::*;
use crate::mock_openai::{
    CACHED_TOKENS, COMPLETION_TOKENS, EMBEDDING_PROMPT_TOKENS, PROMPT_TOKENS,
};
use crate::on_both_stores;
use aigne_hub::audit::{verify_export, verify_store, ChainBreak};
use aigne_hub::config::WebhookSettings;
use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use domain::tenant::TenantEvent;
use domain::Credits;
use hmac::{Hmac, Mac};
use projections::invoices::{self, round_half_even};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SECRET: &str = "whsec_lifecycle";

/// Chat models: (model, input credits per million tokens, output per million).
const GPT: (&str, &str, &str) = ("gpt-mock", "1", "2");
/// Charges that are not whole micro-credits, so that invoice lines round.
const ODD: (&str, &str, &str) = ("odd-mock", "1.2345", "2.5");
/// Embeddings: (model, input credits per million tokens).
const EMBED: (&str, &str) = ("text-embedding-3-small", "0.13");
/// Images: (model, credits per image).
const IMAGE: (&str, &str) = ("gpt-image-1", "0.04");

const INITIAL: &str = "1";
/// The idempotency key of the grant `CreateTenant` makes (domain/src/tenant/aggregate.rs).
const INITIAL_KEY: &str = "initial-credits";
const STANDING: &str = "2";
const STANDING_KEY: &str = "ops-standing";
const PROMO: &str = "0.1";
const PROMO_KEY: &str = "promo-soon";
const PAYMENT: &str = "3";
const PAYMENT_ID: &str = "pay_lifecycle_1";
const REFUND: &str = "1.5";

/// A decimal credit string (possibly negative) in pico-credits.
fn pico_of(text: &str) -> i128 {
    match text.strip_prefix('-') {
        Some(digits) => -Credits::parse(digits).unwrap().pico(),
        None => Credits::parse(text).unwrap().pico(),
    }
}

fn pico(value: &Value) -> i128 {
    pico_of(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {value}")),
    )
}

/// A price in credits per million tokens as pico-credits per token (exact:
/// prices have at most 6 decimals).
fn per_token(price_per_mtok: &str) -> i128 {
    let p = pico_of(price_per_mtok);
    assert_eq!(
        p % 1_000_000,
        0,
        "{price_per_mtok} is not whole pico per token"
    );
    p / 1_000_000
}

fn with_webhooks_and_manual_expiry(settings: &mut aigne_hub::config::Settings) {
    settings.limits.webhooks = WebhookSettings {
        secrets: vec![SECRET.to_string()],
        ..WebhookSettings::default()
    };
    // Expiry passes are driven by hand here, never by the maintenance loop.
    settings.limits.credit_expiry_interval_ms = 3_600_000;
}

/// `AIGNE-Hub-Signature: t=<now>,v1=<hex(HMAC-SHA256(secret, t.body))>` (wall time:
/// signatures describe transport, not business time).
fn signature(body: &str) -> String {
    let t = Utc::now().timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(app: &TestApp, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let response = app
        .client
        .post(format!("{}/webhooks/payments", app.address))
        .header("content-type", "application/json")
        .header("AIGNE-Hub-Signature", signature(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// What one model call should have been charged, from the prices and the mock's usage.
#[derive(Clone, Debug)]
struct Call {
    request_id: String,
    model: String,
    capability: &'static str,
    input: u64,
    cache_read: u64,
    output: u64,
    images: u64,
    /// Pico-credits per token (per image for `image_rate`).
    input_rate: i128,
    output_rate: i128,
    image_rate: i128,
    cost: i128,
}

enum Ask {
    Chat(&'static (&'static str, &'static str, &'static str), bool),
    Embedding,
    Image,
}

/// Makes one call and returns what it should cost.
async fn call(app: &TestApp, key: &str, ask: Ask) -> Call {
    let (path, body, mut expected) = match ask {
        Ask::Chat((model, input, output), stream) => {
            let (input_rate, output_rate) = (per_token(input), per_token(output));
            let (fresh, cached) = (PROMPT_TOKENS - CACHED_TOKENS, CACHED_TOKENS);
            let expected = Call {
                request_id: String::new(),
                model: format!("mock/{model}"),
                capability: "chat",
                input: fresh,
                // Cache reads cost the input rate unless priced apart.
                cache_read: cached,
                output: COMPLETION_TOKENS,
                images: 0,
                input_rate,
                output_rate,
                image_rate: 0,
                cost: (fresh + cached) as i128 * input_rate
                    + COMPLETION_TOKENS as i128 * output_rate,
            };
            ("/v1/chat/completions", chat_body(model, stream), expected)
        }
        Ask::Embedding => {
            let rate = per_token(EMBED.1);
            let expected = Call {
                request_id: String::new(),
                model: format!("mock/{}", EMBED.0),
                capability: "embeddings",
                input: EMBEDDING_PROMPT_TOKENS,
                cache_read: 0,
                output: 0,
                images: 0,
                input_rate: rate,
                output_rate: 0,
                image_rate: 0,
                cost: EMBEDDING_PROMPT_TOKENS as i128 * rate,
            };
            let body = json!({"model": format!("mock/{}", EMBED.0), "input": ["a", "b"]});
            ("/v1/embeddings", body, expected)
        }
        Ask::Image => {
            let per_image = pico_of(IMAGE.1);
            let expected = Call {
                request_id: String::new(),
                model: format!("mock/{}", IMAGE.0),
                capability: "images",
                input: 0,
                cache_read: 0,
                output: 0,
                images: 1,
                input_rate: 0,
                output_rate: 0,
                image_rate: per_image,
                cost: per_image,
            };
            let body = json!({"model": format!("mock/{}", IMAGE.0), "prompt": "a cat", "n": 1, "response_format": "b64_json"});
            ("/v1/images/generations", body, expected)
        }
    };
    let response = app.post(key, path, &body).await;
    let status = response.status();
    expected.request_id = response
        .headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("{path}: no x-request-id"))
        .to_str()
        .unwrap()
        .to_string();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{path} {body}: {text}");
    if body["stream"] == true {
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
    expected
}

/// The whole life of a tenant; see the module's documentation.
async fn a_tenants_whole_life_adds_up(kind: StoreKind) {
    let app = spawn_app_with(kind, with_webhooks_and_manual_expiry).await;
    let settings = app.settings.limits.invoice_settings();
    let period_end = |at: DateTime<Utc>| -> DateTime<Utc> {
        instant(invoices::next_period_start(settings.period_start(at)))
    };
    // Steps 1–6 must fall in one billing period: if this one ends within two
    // days, live them in the next one.
    let now = app.hub.now();
    if period_end(now) - now < TimeDelta::days(2) {
        app.hub
            .clock()
            .advance(period_end(now) - now + TimeDelta::days(1));
    }
    let first_period = settings.period_start(app.hub.now());

    // ---- 1. The tenant, its keys, its prices --------------------------------
    app.setup_provider(&[
        (GPT.0, GPT.1, GPT.2, Some(1000)),
        (ODD.0, ODD.1, ODD.2, Some(1000)),
        (EMBED.0, EMBED.1, "0", None),
    ])
    .await;
    app.admin_json(
        Method::PUT,
        &format!("/admin/v1/prices/mock/{}", IMAGE.0),
        Some(json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": IMAGE.1})),
    )
    .await;
    let (tenant, admin) = app.tenant_with_key(INITIAL, "admin").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let auditor = app.issue_key(&tenant, "auditor").await;
    let member = app.issue_key(&tenant, "member").await;

    // ---- 2. Operator grants: one standing, one expiring within the hour -----
    let grant = |key: &'static str, amount: &'static str, expires_at: Option<String>| {
        let app = &app;
        let tenant = tenant.clone();
        async move {
            app.admin_json(
                Method::POST,
                &format!("/admin/v1/tenants/{tenant}/credits"),
                Some(json!({"amount": amount, "idempotency_key": key, "reason": "lifecycle", "expires_at": expires_at})),
            )
            .await
        }
    };
    let standing = grant(STANDING_KEY, STANDING, None).await;
    assert_eq!(standing["expires_at"], Value::Null, "{standing}");
    let promo_expires_at = (app.hub.now() + TimeDelta::hours(1)).trunc_subsecs(0);
    let promo = grant(PROMO_KEY, PROMO, Some(promo_expires_at.to_rfc3339())).await;
    assert_eq!(
        DateTime::parse_from_rfc3339(promo["expires_at"].as_str().unwrap()).unwrap(),
        promo_expires_at,
        "{promo}"
    );
    let balance = app.balance(&tenant).await;
    assert_eq!(
        pico(&balance["granted"]),
        pico_of(INITIAL) + pico_of(STANDING) + pico_of(PROMO)
    );
    assert_eq!(pico(&balance["expiring_soon"]), pico_of(PROMO), "{balance}");

    // ---- 3. A top-up through the signed payment webhook ---------------------
    let paid = json!({"id": "evt_pay_1", "type": "payment.succeeded", "tenant_id": tenant, "amount": PAYMENT, "payment_id": PAYMENT_ID});
    let (status, body) = deliver(&app, &paid).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
    let granted = pico_of(INITIAL) + pico_of(STANDING) + pico_of(PROMO) + pico_of(PAYMENT);
    assert_eq!(pico(&body["available"]), granted, "{body}");
    let (status, body) = deliver(&app, &paid).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");

    // ---- 4. Calls across models and capabilities, before the expiry --------
    let mut calls: Vec<Call> = Vec::new();
    for ask in [
        Ask::Chat(&GPT, false),
        Ask::Chat(&GPT, true),
        Ask::Chat(&ODD, false),
        Ask::Chat(&ODD, true),
        Ask::Embedding,
        Ask::Image,
    ] {
        calls.push(call(&app, &member, ask).await);
    }
    let spent_before_expiry: i128 = calls.iter().map(|c| c.cost).sum();
    assert!(
        spent_before_expiry < pico_of(PROMO),
        "the calls before the expiry must leave some of the expiring lot"
    );
    // Burn order: the lot that expires first pays first.
    let balance = app.balance(&tenant).await;
    assert_eq!(pico(&balance["spent"]), spent_before_expiry, "{balance}");
    assert_eq!(pico(&balance["held"]), 0, "{balance}");
    assert_eq!(
        pico(&balance["expiring_soon"]),
        pico_of(PROMO) - spent_before_expiry,
        "settlements burn the expiring lot first: {balance}"
    );
    let left_of_promo = pico_of(PROMO) - spent_before_expiry;

    // ---- 5. The expiry: past the lot's expiry on the business clock ---------
    app.hub
        .clock()
        .advance(promo_expires_at - app.hub.now() + TimeDelta::minutes(1));
    // The pass finds the tenant through the balances projection, which may
    // trail the log for a moment: run it until it expires something.
    let lots_expired = poll_for(Duration::from_secs(5), || async {
        app.projections_caught_up().await;
        let expired = app.hub.expire_due_credits().await.unwrap();
        (expired > 0).then_some(expired)
    })
    .await
    .unwrap_or(0);
    // The pass picks the tenants with a lot due on the business clock, the same
    // clock that stamps the `ExpireCredits` it sends.
    assert_eq!(
        lots_expired,
        1,
        "the expiry pass must expire the lot once the business clock ({}) is past its \
         expiry ({promo_expires_at})",
        app.hub.now()
    );
    let expiries: Vec<(String, i128, DateTime<Utc>)> = tenant_events(&app, &tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::CreditsExpired {
                grant_id,
                amount_pico,
                at,
            } => Some((grant_id, amount_pico.pico(), at)),
            _ => None,
        })
        .collect();
    assert_eq!(expiries.len(), 1, "{expiries:?}");
    assert_eq!(expiries[0].0, PROMO_KEY);
    assert_eq!(
        expiries[0].1, left_of_promo,
        "exactly what was left of the lot"
    );
    assert!(expiries[0].2 >= promo_expires_at, "{expiries:?}");
    let balance = app.balance(&tenant).await;
    assert_eq!(pico(&balance["expired"]), left_of_promo, "{balance}");
    assert_eq!(pico(&balance["expiring_soon"]), 0, "{balance}");
    // A call after the expiry, still in the first period: standing credit pays.
    calls.push(call(&app, &member, Ask::Chat(&GPT, false)).await);

    // ---- 6. A refund revokes credit -----------------------------------------
    let refund = json!({"id": "evt_refund_1", "type": "payment.refunded", "tenant_id": tenant, "amount": REFUND, "payment_id": PAYMENT_ID});
    let (status, body) = deliver(&app, &refund).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
    let revocations: Vec<(String, i128, i128)> = tenant_events(&app, &tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::CreditsRevoked {
                payment_id,
                requested_pico,
                amount_pico,
                ..
            } => Some((payment_id, requested_pico.pico(), amount_pico.pico())),
            _ => None,
        })
        .collect();
    assert_eq!(
        revocations,
        vec![(PAYMENT_ID.to_string(), pico_of(REFUND), pico_of(REFUND))]
    );
    assert!(
        settings.period_start(app.hub.now()) == first_period,
        "steps 1–6 stay in one period"
    );

    // ---- 7. A month boundary, past the grace window; more calls ------------
    let target =
        period_end(app.hub.now()) + TimeDelta::seconds(settings.grace_secs) + TimeDelta::hours(1);
    app.hub.clock().advance(target - app.hub.now());
    let second_period = settings.period_start(app.hub.now());
    assert_eq!(second_period, invoices::next_period_start(first_period));
    let first_in_second_period = calls.len();
    for ask in [
        Ask::Chat(&GPT, false),
        Ask::Chat(&ODD, true),
        Ask::Embedding,
        Ask::Image,
    ] {
        calls.push(call(&app, &member, ask).await);
    }

    // ---- Every call explained, at the prices and usage computed above -------
    let mut explained: Vec<Value> = Vec::new();
    for c in &calls {
        let e = app
            .get_json(&billing, &format!("/v1/billing/requests/{}", c.request_id))
            .await;
        assert_eq!(e["status"], "settled", "{e}");
        assert_eq!(e["model"], c.model.as_str(), "{e}");
        assert_eq!(e["charged_model"], c.model.as_str(), "{e}");
        assert_eq!(e["capability"], c.capability, "{e}");
        assert_eq!(e["provider"], "mock", "{e}");
        let usage = &e["usage"];
        assert_eq!(
            (
                usage["input_tokens"].as_u64(),
                usage["cache_read_tokens"].as_u64(),
                usage["cache_write_tokens"].as_u64(),
                usage["output_tokens"].as_u64(),
                usage["images"].as_u64(),
                usage["estimated"].as_bool(),
            ),
            (
                Some(c.input),
                Some(c.cache_read),
                Some(0),
                Some(c.output),
                Some(c.images),
                Some(false)
            ),
            "{e}"
        );
        assert_eq!(pico(&e["cost"]), c.cost, "{c:?}: {e}");
        assert_eq!(pico(&e["overshoot"]), 0, "{e}");
        let mut sum = 0;
        for line in e["arithmetic"].as_array().unwrap() {
            let quantity = line["quantity"].as_u64().unwrap() as i128;
            let rate = match line["kind"].as_str().unwrap() {
                "image" => pico(&line["rate_per_image"]),
                _ => per_token(line["rate_per_mtok"].as_str().unwrap()),
            };
            let expected_rate = match line["kind"].as_str().unwrap() {
                "input" | "cache_read" | "cache_write" => c.input_rate,
                "output" => c.output_rate,
                "image" => c.image_rate,
                other => panic!("unknown kind {other}"),
            };
            assert_eq!(rate, expected_rate, "{line}");
            assert_eq!(pico(&line["amount"]), quantity * rate, "{line}");
            sum += pico(&line["amount"]);
        }
        assert_eq!(sum, c.cost, "the arithmetic adds up to the cost: {e}");
        explained.push(e);
    }
    let at = |v: &Value| -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    for (i, e) in explained.iter().enumerate() {
        let expected = if i < first_in_second_period {
            first_period
        } else {
            second_period
        };
        assert_eq!(
            settings.period_start(at(&e["reserved_at"])),
            expected,
            "{e}"
        );
        assert_eq!(settings.period_start(at(&e["closed_at"])), expected, "{e}");
    }

    // ---- The balance identity, figure by figure ----------------------------
    let spent: i128 = calls.iter().map(|c| c.cost).sum();
    let explained_spent: i128 = explained.iter().map(|e| pico(&e["cost"])).sum();
    assert_eq!(explained_spent, spent);
    let expired = left_of_promo;
    let revoked = pico_of(REFUND);
    let available = granted - spent - expired - revoked;
    let live = app.balance(&tenant).await;
    let mine = app.get_json(&billing, "/v1/billing/balance").await;
    for balance in [&live, &mine] {
        assert_eq!(pico(&balance["granted"]), granted, "{balance}");
        assert_eq!(pico(&balance["spent"]), spent, "{balance}");
        assert_eq!(pico(&balance["expired"]), expired, "{balance}");
        assert_eq!(pico(&balance["revoked"]), revoked, "{balance}");
        assert_eq!(pico(&balance["held"]), 0, "{balance}");
        assert_eq!(pico(&balance["available"]), available, "{balance}");
        assert_eq!(
            pico(&balance["granted"])
                - pico(&balance["spent"])
                - pico(&balance["expired"])
                - pico(&balance["revoked"])
                - pico(&balance["held"]),
            pico(&balance["available"]),
            "{balance}"
        );
        assert_eq!(pico(&balance["expiring_soon"]), 0, "{balance}");
    }
    assert_eq!(live, mine);

    // ---- Usage analytics agree with the per-request costs ------------------
    let today = app.hub.now().date_naive();
    let range = format!("from={first_period}&to={today}");
    // The projections follow the log a moment behind (on PostgreSQL, until older
    // transactions of the cluster end): wait for every request and invoice line.
    let expected_lines = expected_invoice_lines(&calls, &explained, &settings);
    let caught_up = || async {
        app.projections_caught_up().await;
        let totals = app
            .get_json(&billing, &format!("/v1/billing/usage?group_by=&{range}"))
            .await;
        let list = app.get_json(&billing, "/v1/billing/invoices").await;
        let lines: usize = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["lines"].as_array().unwrap().len())
            .sum();
        let expected: usize = expected_lines.values().map(BTreeMap::len).sum();
        totals["data"][0]["requests"].as_u64() == Some(calls.len() as u64) && lines == expected
    };
    wait_until(
        Duration::from_secs(15),
        "the projections caught up",
        caught_up,
    )
    .await;

    let usage = app
        .get_json(
            &billing,
            &format!("/v1/billing/usage?group_by=model,day&{range}"),
        )
        .await;
    let mut expected_usage: BTreeMap<(String, String), [i128; 8]> = BTreeMap::new();
    for (c, e) in calls.iter().zip(&explained) {
        let day = at(&e["closed_at"]).date_naive().to_string();
        let row = expected_usage.entry((c.model.clone(), day)).or_default();
        for (slot, add) in row.iter_mut().zip([
            1,
            c.input as i128,
            c.cache_read as i128,
            0,
            c.output as i128,
            0,
            c.images as i128,
            c.cost,
        ]) {
            *slot += add;
        }
    }
    let usage_figures = |r: &Value| -> [i128; 8] {
        let n = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f} in {r}")) as i128;
        assert_eq!(r["successes"], r["requests"], "{r}");
        assert_eq!(r["failures"], 0, "{r}");
        [
            n("requests"),
            n("input_tokens"),
            n("cache_read_tokens"),
            n("cache_write_tokens"),
            n("output_tokens"),
            n("reasoning_tokens"),
            n("images"),
            pico(&r["amount"]),
        ]
    };
    let got: BTreeMap<(String, String), [i128; 8]> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["model"].as_str().unwrap().to_string(),
                    r["day"].as_str().unwrap().to_string(),
                ),
                usage_figures(r),
            )
        })
        .collect();
    assert_eq!(got, expected_usage, "{usage}");
    assert_eq!(
        app.get_json(
            &auditor,
            &format!("/v1/billing/usage?group_by=model,day&{range}")
        )
        .await["data"],
        usage["data"]
    );
    let by_capability = app
        .get_json(
            &billing,
            &format!("/v1/billing/usage?group_by=capability&{range}"),
        )
        .await;
    let mut expected_capabilities: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for c in &calls {
        let entry = expected_capabilities
            .entry(c.capability.to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += c.cost;
    }
    let got: BTreeMap<String, (u64, i128)> = by_capability["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["capability"].as_str().unwrap().to_string(),
                (r["requests"].as_u64().unwrap(), pico(&r["amount"])),
            )
        })
        .collect();
    assert_eq!(got, expected_capabilities, "{by_capability}");
    let totals = app
        .get_json(&billing, &format!("/v1/billing/usage?group_by=&{range}"))
        .await;
    assert_eq!(totals["data"].as_array().unwrap().len(), 1, "{totals}");
    assert_eq!(totals["data"][0]["requests"], calls.len() as u64);
    assert_eq!(pico(&totals["data"][0]["amount"]), spent, "{totals}");

    // ---- Invoices: last period finalized, this one a draft; lines add up ----
    let list = app.get_json(&billing, "/v1/billing/invoices").await;
    let tenant_id: domain::TenantId = tenant.parse().unwrap();
    let first_id = invoices::invoice_id(tenant_id, first_period);
    let second_id = invoices::invoice_id(tenant_id, second_period);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![second_id.as_str(), first_id.as_str()],
        "newest first"
    );
    let (second, first) = (&list["data"][0], &list["data"][1]);
    assert_eq!(first["status"], "finalized", "{first}");
    assert_eq!(second["status"], "draft", "{second}");
    for (invoice, start) in [(first, first_period), (second, second_period)] {
        let end = instant(invoices::next_period_start(start));
        assert_eq!(at(&invoice["period_start"]), instant(start));
        assert_eq!(at(&invoice["period_end"]), end);
        assert_eq!(
            at(&invoice["finalizes_at"]),
            end + TimeDelta::seconds(settings.grace_secs)
        );
        assert_eq!(invoice["grace_secs"], settings.grace_secs);
        assert_eq!(invoice["anchor_day"], settings.anchor_day);
    }
    let mut invoiced_exact = 0;
    let mut invoiced_total = 0;
    for (invoice, start) in [(first, first_period), (second, second_period)] {
        let mut got: BTreeMap<(String, String, String, String), (u64, i128)> = BTreeMap::new();
        let mut total = 0;
        for line in invoice["lines"].as_array().unwrap() {
            assert!(line.get("adjustment_for").is_none(), "{line}");
            let exact = pico(&line["exact_amount"]);
            let rounded = pico(&line["amount"]);
            assert_eq!(
                rounded,
                round_half_even(Credits::from_pico(exact)).pico(),
                "rounded half-even per line: {line}"
            );
            assert!((rounded - exact).abs() * 2 <= invoices::PRESENTATION_UNIT_PICO);
            total += rounded;
            invoiced_exact += exact;
            let key = (
                line["model"].as_str().unwrap().to_string(),
                line["capability"].as_str().unwrap().to_string(),
                line["kind"].as_str().unwrap().to_string(),
                line["unit_price"].as_str().unwrap().to_string(),
            );
            let previous = got.insert(key, (line["quantity"].as_u64().unwrap(), exact));
            assert!(
                previous.is_none(),
                "one line per model, kind and price: {invoice}"
            );
        }
        assert_eq!(got, expected_lines[&start], "{invoice}");
        assert_eq!(
            pico(&invoice["total"]),
            total,
            "the total is the sum of the lines"
        );
        invoiced_total += total;
        for key in [&billing, &auditor, &admin] {
            let one = app
                .get_json(
                    key,
                    &format!("/v1/billing/invoices/{}", invoice["id"].as_str().unwrap()),
                )
                .await;
            assert_eq!(&one, invoice);
        }
    }
    assert_eq!(
        invoiced_exact, spent,
        "the exact lines are what the ledger spent"
    );
    let line_count: usize = expected_lines.values().map(BTreeMap::len).sum();
    assert!(
        (invoiced_total - spent).abs() * 2 <= invoices::PRESENTATION_UNIT_PICO * line_count as i128
    );
    // Credit movements, for information, in the period they happened.
    let credit_entries = |invoice: &Value| -> BTreeSet<(String, String, i128)> {
        invoice["credits_applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["kind"].as_str().unwrap().to_string(),
                    c["reference"].as_str().unwrap().to_string(),
                    pico(&c["amount"]),
                )
            })
            .collect()
    };
    let expected_credits: BTreeSet<(String, String, i128)> = [
        ("grant", INITIAL_KEY, pico_of(INITIAL)),
        ("grant", STANDING_KEY, pico_of(STANDING)),
        ("grant", PROMO_KEY, pico_of(PROMO)),
        ("payment", PAYMENT_ID, pico_of(PAYMENT)),
        ("expiry", PROMO_KEY, -expired),
        ("revocation", PAYMENT_ID, -revoked),
    ]
    .into_iter()
    .map(|(k, r, a)| (k.to_string(), r.to_string(), a))
    .collect();
    assert_eq!(credit_entries(first), expected_credits, "{first}");
    assert_eq!(first["credits_applied"].as_array().unwrap().len(), 6);
    assert!(credit_entries(second).is_empty(), "{second}");

    // ---- Replay: every projection rebuilt from the log equals the live one --
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");
    assert!(report.chains_intact, "{report:?}");
    let names: Vec<&str> = report
        .projections
        .iter()
        .map(|p| p.comparison.projection.as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "balances",
            projections::analytics::NAME,
            settings.projection_name().as_str(),
            projections::tenants::Tenants::NAME,
            projections::tenants::TenantKeys::NAME,
        ]
    );
    for p in &report.projections {
        let c = &p.comparison;
        assert!(c.identical, "{c:?}");
        assert_eq!(c.live_hash, c.replayed_hash, "{c:?}");
        assert_eq!(c.live_rows, c.replayed_rows, "{c:?}");
        assert!(c.differing_keys.is_empty(), "{c:?}");
        assert!(c.live_rows > 0, "{c:?}");
        assert_eq!(p.events, report.raw_read.events, "{p:?}");
    }

    // ---- Audit: the chain verifies; the export verifies offline ------------
    let stored = tenant_events(&app, &tenant).await;
    let chain = &verify_store(app.store().as_ref(), Some(tenant_id))
        .await
        .unwrap()[0];
    assert_eq!(chain.first_break, None, "{chain:?}");
    assert_eq!(chain.unchained_prefix, 0);
    assert_eq!(chain.events, stored.len());
    assert_eq!(
        chain.head,
        stored.last().unwrap().metadata.hash,
        "{chain:?}"
    );
    assert!(verify_store(app.store().as_ref(), None)
        .await
        .unwrap()
        .iter()
        .all(|r| r.first_break.is_none()));

    let file = export(&app, &auditor).await;
    let check = verify_export(&file, &app.settings.limits).unwrap();
    assert_eq!(check.chain.first_break, None, "{:?}", check.chain);
    assert_eq!(check.chain.events, stored.len());
    assert_eq!(check.chain.head, chain.head);
    let offline = check
        .balance
        .expect("an intact export recomputes the balance");
    for field in [
        "granted",
        "spent",
        "expired",
        "revoked",
        "held",
        "available",
        "expiring_soon",
    ] {
        assert_eq!(offline[field], live[field], "{field}: {offline} vs {live}");
    }
    // The same file through the binary, with no database it could reach.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.json");
    std::fs::write(&path, &file).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aigne-hub"))
        .args(["audit", "verify", "--export"])
        .arg(&path)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("AIGNE_HUB_DATA_DIR", dir.path().join("no-data"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["balance"], offline);
    // The invoices, recomputed from the exported events alone, are the hub's.
    let recomputed = invoices_from_export(&file, tenant_id, app.hub.now());
    assert_eq!(
        recomputed, list["data"],
        "invoices recomputed from the export"
    );
    // The offline check recomputes the same invoices itself, and prints them.
    assert_eq!(
        check.invoices.as_ref(),
        Some(&list["data"]),
        "offline invoices"
    );
    assert_eq!(
        printed["invoices"], list["data"],
        "invoices printed offline"
    );

    // ---- Isolation: another tenant sees none of this -----------------------
    let (other, other_admin) = app.tenant_with_key("1", "admin").await;
    let other_billing = app.issue_key(&other, "billing").await;
    for key in [&other_admin, &other_billing] {
        for c in &calls {
            let response = app
                .get(key, &format!("/v1/billing/requests/{}", c.request_id))
                .await;
            assert_eq!(response.status(), 404, "{}", c.request_id);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{body}");
        }
        for id in [&first_id, &second_id] {
            let response = app.get(key, &format!("/v1/billing/invoices/{id}")).await;
            assert_eq!(response.status(), 404, "{id}");
        }
        let theirs = app.get_json(key, "/v1/billing/invoices").await;
        for invoice in theirs["data"].as_array().unwrap() {
            assert_eq!(invoice["tenant_id"], other.as_str(), "{theirs}");
            assert!(invoice["lines"].as_array().unwrap().is_empty(), "{theirs}");
        }
    }
    // (And the first tenant's keys still read their own.)
    assert_eq!(
        app.get(&billing, &format!("/v1/billing/invoices/{first_id}"))
            .await
            .status(),
        200
    );

    // ---- Tampering: one byte of one stored event ---------------------------
    let expired_at = stored
        .iter()
        .find(|e| matches!(e.event, TenantEvent::CreditsExpired { .. }))
        .unwrap()
        .sequence;
    flip_one_amount_digit(&app, &tenant, expired_at).await;
    let broken = &verify_store(app.store().as_ref(), Some(tenant_id))
        .await
        .unwrap()[0];
    assert_eq!(
        broken.first_break,
        Some(ChainBreak::Hash {
            sequence: expired_at
        }),
        "{broken:?}"
    );
    assert_eq!(broken.head, None);
    let all = verify_store(app.store().as_ref(), None).await.unwrap();
    let broken_tenants: Vec<&str> = all
        .iter()
        .filter(|r| r.first_break.is_some())
        .map(|r| r.tenant_id.as_str())
        .collect();
    assert_eq!(broken_tenants, vec![tenant.as_str()], "{all:?}");
    let tampered_export = export(&app, &auditor).await;
    assert_ne!(tampered_export, file);
    let check = verify_export(&tampered_export, &app.settings.limits).unwrap();
    assert_eq!(
        check.chain.first_break,
        Some(ChainBreak::Hash {
            sequence: expired_at
        })
    );
    assert!(check.balance.is_none(), "no figures from a broken chain");
    // A replay of the tampered log no longer matches what the hub recorded.
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(!report.all_identical, "{report:?}");
    // And the replay names the broken chain itself, at the altered event.
    assert!(!report.chains_intact, "{report:?}");
    assert_eq!(report.broken_chains.len(), 1, "{report:?}");
    assert_eq!(report.broken_chains[0].tenant_id, tenant);
    assert_eq!(
        report.broken_chains[0]
            .first_break
            .as_ref()
            .map(|b| b.sequence()),
        Some(expired_at),
        "{report:?}"
    );
    let balances = &report.projections[0].comparison;
    assert!(!balances.identical, "{balances:?}");
    assert_ne!(balances.live_hash, balances.replayed_hash);
    assert_eq!(
        balances.differing_keys,
        vec![tenant.clone()],
        "{balances:?}"
    );
    let invoices_replayed = &report.projections[2].comparison;
    assert!(!invoices_replayed.identical, "{invoices_replayed:?}");
    assert_eq!(
        invoices_replayed.differing_keys,
        vec![invoices::period_key(tenant_id, first_period)],
        "{invoices_replayed:?}"
    );
}
on_both_stores!(a_tenants_whole_life_adds_up, a_tenants_whole_life_adds_up);

fn instant(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

/// `(model, capability, kind, unit price) → (quantity, exact pico)`.
type InvoiceLines = BTreeMap<(String, String, String, String), (u64, i128)>;

/// Per period (of the reservation), the invoice lines the explained calls make.
fn expected_invoice_lines(
    calls: &[Call],
    explained: &[Value],
    settings: &invoices::Settings,
) -> BTreeMap<NaiveDate, InvoiceLines> {
    let mut out: BTreeMap<NaiveDate, BTreeMap<_, (u64, i128)>> = BTreeMap::new();
    for (c, e) in calls.iter().zip(explained) {
        let reserved_at = DateTime::parse_from_rfc3339(e["reserved_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        let period = out.entry(settings.period_start(reserved_at)).or_default();
        for line in e["arithmetic"].as_array().unwrap() {
            let quantity = line["quantity"].as_u64().unwrap();
            if quantity == 0 {
                continue;
            }
            let kind = line["kind"].as_str().unwrap().to_string();
            let unit_price = match kind.as_str() {
                "image" => line["rate_per_image"].as_str().unwrap(),
                _ => line["rate_per_mtok"].as_str().unwrap(),
            };
            let entry = period
                .entry((
                    c.model.clone(),
                    c.capability.to_string(),
                    kind,
                    unit_price.to_string(),
                ))
                .or_default();
            entry.0 += quantity;
            entry.1 += pico(&line["amount"]);
        }
    }
    out
}

/// Every page of the tenant's audit export, as an auditor saves them.
async fn export(app: &TestApp, key: &str) -> String {
    let mut file = String::new();
    let mut after = 0;
    loop {
        let page = app
            .get_json(key, &format!("/v1/audit/events?after={after}&limit=7"))
            .await;
        file.push_str(&page.to_string());
        file.push('\n');
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return file,
        }
    }
}

/// The tenant's invoices folded from an export's events alone (the invoices
/// projection's own fold, no database), presented at `now`, newest first.
fn invoices_from_export(file: &str, tenant: domain::TenantId, now: DateTime<Utc>) -> Value {
    let mut events = Vec::new();
    for page in serde_json::Deserializer::from_str(file).into_iter::<Value>() {
        let page = page.unwrap();
        for raw in page["data"].as_array().unwrap() {
            let raw: aigne_hub::audit::RawEvent = serde_json::from_value(raw.clone()).unwrap();
            let sequence = raw.sequence;
            let (event, metadata) = aigne_hub::store::decode_raw(raw).unwrap();
            events.push((sequence, event, metadata));
        }
    }
    let logged: Vec<projections::LoggedEvent<'_>> = events
        .iter()
        .map(|(sequence, event, metadata)| projections::LoggedEvent {
            tenant_id: tenant,
            sequence: *sequence,
            event,
            recorded_at: metadata.recorded_at,
        })
        .collect();
    let mut rows = BTreeMap::new();
    // The test apps cut invoices with the default settings.
    let settings = aigne_hub::config::Limits::default().invoice_settings();
    invoices::fold(&settings, &mut rows, logged);
    let mut views: Vec<invoices::InvoiceView> = rows
        .values()
        .filter_map(|row| invoices::view(tenant, row, now))
        .collect();
    views.sort_by(|a, b| b.period_start.cmp(&a.period_start));
    serde_json::to_value(views).unwrap()
}

/// Changes one digit of the `amount_pico` of event `sequence` as stored, behind
/// the hub's back (one byte of the stored JSON).
async fn flip_one_amount_digit(app: &TestApp, tenant: &str, sequence: usize) {
    use sqlx::Connection;
    let flip = |payload: String| -> String {
        // The first digit of the amount, however the store spaced the JSON.
        let key = payload
            .find("\"amount_pico\"")
            .expect("an amount to change");
        let mut bytes = payload.into_bytes();
        let at = key + bytes[key..].iter().position(u8::is_ascii_digit).unwrap();
        bytes[at] = if bytes[at] == b'9' {
            b'8'
        } else {
            bytes[at] + 1
        };
        String::from_utf8(bytes).unwrap()
    };
    let select = "SELECT payload FROM events WHERE aggregate_type = 'Tenant' AND aggregate_id = $1 AND sequence = $2";
    let sequence = sequence as i64;
    match app.store_kind {
        StoreKind::Postgres => {
            let url = app.settings.database_url.as_deref().unwrap();
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let (payload,): (String,) =
                sqlx::query_as(&select.replace("SELECT payload", "SELECT payload::text"))
                    .bind(tenant)
                    .bind(sequence)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            let done = sqlx::query("UPDATE events SET payload = $1::json WHERE aggregate_type = 'Tenant' AND aggregate_id = $2 AND sequence = $3")
                .bind(flip(payload))
                .bind(tenant)
                .bind(sequence)
                .execute(&mut conn)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1);
        }
        StoreKind::Sqlite => {
            let path = app.settings.data_dir.join("aigne-hub.sqlite");
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let (payload,): (String,) = sqlx::query_as(select)
                .bind(tenant)
                .bind(sequence)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let done = sqlx::query("UPDATE events SET payload = $1 WHERE aggregate_type = 'Tenant' AND aggregate_id = $2 AND sequence = $3")
                .bind(flip(payload))
                .bind(tenant)
                .bind(sequence)
                .execute(&mut conn)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1);
        }
    }
}
