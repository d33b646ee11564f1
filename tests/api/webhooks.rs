//! Payment webhooks and the credit lifecycle through HTTP: signatures (secret
//! rotation, staleness), permanent idempotency of payment events, refunds that
//! turn a balance negative, and grants that expire.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::on_both_stores;
use aigne_hub::config::WebhookSettings;
use chrono::Utc;
use domain::tenant::TenantEvent;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

const SECRET: &str = "whsec_test_current";

fn with_secrets(secrets: &'static [&'static str]) -> impl FnOnce(&mut aigne_hub::config::Settings) {
    move |settings| {
        settings.limits.webhooks = WebhookSettings {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..WebhookSettings::default()
        }
    }
}

/// `hex(HMAC-SHA256(secret, t + "." + body))`.
fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `t=<now>,v1=<sig by each secret>`.
fn header(secrets: &[&str], t: i64, body: &str) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(&format!(",v1={}", sign(secret, t, body)));
    }
    header
}

async fn post(app: &TestApp, body: &str, signature: Option<String>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/webhooks/payments", app.address))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        request = request.header("AIGNE-Hub-Signature", signature);
    }
    request.send().await.unwrap()
}

/// Posts `body` signed now with `SECRET`; returns status and JSON.
async fn deliver(app: &TestApp, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let response = post(
        app,
        &body,
        Some(header(&[SECRET], Utc::now().timestamp(), &body)),
    )
    .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn succeeded(id: &str, tenant: &str, amount: &str, payment_id: &str) -> Value {
    json!({"id": id, "type": "payment.succeeded", "tenant_id": tenant, "amount": amount, "payment_id": payment_id})
}

fn refunded(id: &str, tenant: &str, amount: &str, payment_id: &str) -> Value {
    json!({"id": id, "type": "payment.refunded", "tenant_id": tenant, "amount": amount, "payment_id": payment_id})
}

fn assert_ledger_identity(b: &Value) {
    let c = |field: &str| {
        let raw = b[field].as_str().unwrap();
        let (negative, digits) = match raw.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, raw),
        };
        let v = domain::Credits::parse(digits).unwrap();
        if negative {
            -v
        } else {
            v
        }
    };
    assert_eq!(
        c("granted") - c("spent") - c("expired") - c("revoked") - c("held"),
        c("available"),
        "{b}"
    );
}

async fn good_signature_grants_once_across_duplicate_deliveries(kind: StoreKind) {
    let app = spawn_app_with(kind, with_secrets(&[SECRET])).await;
    let tenant = app.create_tenant("0").await;
    let event = succeeded("evt_1", &tenant, "2.5", "pay_1");

    let (status, body) = deliver(&app, &event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["received"], true);
    assert_eq!(body["duplicate"], false);
    assert_eq!(body["available"], "2.5");
    for _ in 0..3 {
        let (status, body) = deliver(&app, &event).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["received"], &body["duplicate"]),
            (&json!(true), &json!(true))
        );
    }
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["granted"], "2.5");
    assert_eq!(balance["available"], "2.5");
    assert_ledger_identity(&balance);

    // Same id, another body: refused, whatever changed.
    let (status, body) = deliver(&app, &succeeded("evt_1", &tenant, "3", "pay_1")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // Forever: after a restart (state from the store) the id is still known.
    let app = app.restart().await;
    let (status, body) = deliver(&app, &event).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    let grants: Vec<_> = tenant_events(&app, &tenant)
        .await
        .into_iter()
        .filter(|e| matches!(e.event, TenantEvent::CreditsGranted { .. }))
        .collect();
    assert_eq!(grants.len(), 1);
    assert_eq!(
        grants[0].metadata.actor,
        Some(domain::ChangedBy::PaymentWebhook),
        "the grant names the payment webhook as who made it"
    );
    match &grants[0].event {
        TenantEvent::CreditsGranted {
            payment: Some(payment),
            expires_at: None,
            ..
        } => {
            assert_eq!(payment.payment_event_id, "evt_1");
            assert_eq!(payment.payment_id, "pay_1");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(app.balance(&tenant).await["granted"], "2.5");
}
on_both_stores!(
    good_signature_grants_once_across_duplicate_deliveries,
    good_signature_grants_once_across_duplicate_deliveries
);

async fn bad_or_missing_signature_is_401(kind: StoreKind) {
    let app = spawn_app_with(kind, with_secrets(&[SECRET])).await;
    let tenant = app.create_tenant("0").await;
    let body = succeeded("evt_1", &tenant, "1", "pay_1").to_string();
    let now = Utc::now().timestamp();

    let cases = [
        Some(header(&["not-the-secret"], now, &body)),
        // Signed over another body.
        Some(header(&[SECRET], now, "{}")),
        Some(format!("t={now},v1=zz")),
        Some("garbage".to_string()),
        Some(format!("t={now}")),
        None,
    ];
    for signature in cases {
        let response = post(&app, &body, signature.clone()).await;
        assert_eq!(response.status(), 401, "{signature:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_signature", "{error}");
    }
    assert_eq!(app.balance(&tenant).await["granted"], "0");
}
on_both_stores!(
    bad_or_missing_signature_is_401,
    bad_or_missing_signature_is_401
);

async fn stale_timestamp_is_401(kind: StoreKind) {
    let app = spawn_app_with(kind, with_secrets(&[SECRET])).await;
    let tenant = app.create_tenant("0").await;
    let body = succeeded("evt_1", &tenant, "1", "pay_1").to_string();
    let now = Utc::now().timestamp();
    for t in [now - 400, now + 400] {
        let response = post(&app, &body, Some(header(&[SECRET], t, &body))).await;
        assert_eq!(response.status(), 401);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("timestamp"),
            "{error}"
        );
    }
    assert_eq!(app.balance(&tenant).await["granted"], "0");
    // Within the tolerance (300 s), a late delivery is fine.
    let response = post(&app, &body, Some(header(&[SECRET], now - 200, &body))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.balance(&tenant).await["granted"], "1");
}
on_both_stores!(stale_timestamp_is_401, stale_timestamp_is_401);

async fn rotated_secrets_are_accepted(kind: StoreKind) {
    // While rotating, the hub knows both secrets; a sender may sign with either,
    // or with both (two v1 values).
    let app = spawn_app_with(kind, with_secrets(&["whsec_old", "whsec_new"])).await;
    let tenant = app.create_tenant("0").await;
    let now = Utc::now().timestamp();
    let signers: [&[&str]; 4] = [
        &["whsec_old"],
        &["whsec_new"],
        &["whsec_unknown", "whsec_new"],
        &["whsec_new", "whsec_old"],
    ];
    for (n, secrets) in signers.iter().enumerate() {
        let body = succeeded(&format!("evt_{n}"), &tenant, "1", &format!("pay_{n}")).to_string();
        let response = post(&app, &body, Some(header(secrets, now, &body))).await;
        assert_eq!(response.status(), 200, "{secrets:?}");
    }
    let body = succeeded("evt_x", &tenant, "1", "pay_x").to_string();
    let response = post(&app, &body, Some(header(&["whsec_unknown"], now, &body))).await;
    assert_eq!(response.status(), 401);
    assert_eq!(app.balance(&tenant).await["granted"], "4");

    // The same rotation, configured the way an operator does: a comma-separated list.
    assert_eq!(
        WebhookSettings::parse_secrets(" whsec_old , whsec_new ,"),
        vec!["whsec_old".to_string(), "whsec_new".to_string()]
    );
}
on_both_stores!(rotated_secrets_are_accepted, rotated_secrets_are_accepted);

async fn without_a_secret_the_endpoint_is_503(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let tenant = app.create_tenant("0").await;
    let body = succeeded("evt_1", &tenant, "1", "pay_1").to_string();
    let response = post(
        &app,
        &body,
        Some(header(&[SECRET], Utc::now().timestamp(), &body)),
    )
    .await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "webhooks_not_configured");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("AIGNE_HUB_WEBHOOK_SECRET"));
}
on_both_stores!(
    without_a_secret_the_endpoint_is_503,
    without_a_secret_the_endpoint_is_503
);

async fn bad_bodies_are_400_and_unknown_tenants_404(kind: StoreKind) {
    let app = spawn_app_with(kind, with_secrets(&[SECRET])).await;
    let tenant = app.create_tenant("0").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, _) = deliver(&app, &succeeded("evt_1", &unknown, "1", "pay_1")).await;
    assert_eq!(status, 404);
    for bad in [
        json!({"id": "evt_2", "type": "payment.succeeded", "tenant_id": tenant}),
        json!({"id": "evt_2", "type": "payment.disputed", "tenant_id": tenant, "amount": "1"}),
        json!({"id": "evt_2", "type": "payment.refunded", "tenant_id": tenant, "amount": "1"}),
        succeeded("evt_2", &tenant, "-1", "pay_2"),
        succeeded("evt_2", &tenant, "0", "pay_2"),
        succeeded("evt_2", &tenant, "1.0000000000001", "pay_2"),
        succeeded("", &tenant, "1", "pay_2"),
    ] {
        let (status, body) = deliver(&app, &bad).await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }
    let garbage = "not json";
    let response = post(
        &app,
        garbage,
        Some(header(&[SECRET], Utc::now().timestamp(), garbage)),
    )
    .await;
    assert_eq!(response.status(), 400);
    // A refund of a payment the tenant never received: 409, the sender retries.
    let (status, _) = deliver(&app, &refunded("evt_3", &tenant, "1", "pay_never")).await;
    assert_eq!(status, 409);
    assert_eq!(app.balance(&tenant).await["granted"], "0");
}
on_both_stores!(
    bad_bodies_are_400_and_unknown_tenants_404,
    bad_bodies_are_400_and_unknown_tenants_404
);

async fn a_refund_revokes_credit_and_then_model_requests_get_402(kind: StoreKind) {
    let app = spawn_app_with(kind, with_secrets(&[SECRET])).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("0", "member").await;
    let (status, _) = deliver(&app, &succeeded("evt_1", &tenant, "1", "pay_1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.chat(&key, &chat_body("gpt-mock", false)).await.status(),
        200
    );

    // The whole payment is refunded after some of it was spent.
    let (status, body) = deliver(&app, &refunded("evt_2", &tenant, "1", "pay_1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], false);
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["revoked"], "1");
    assert_eq!(balance["spent"], "0.000072");
    assert_eq!(balance["available"], "-0.000072");
    assert_ledger_identity(&balance);

    let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 402);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "insufficient_credits");

    // A redelivered refund revokes nothing more; a second refund of the same
    // payment revokes nothing past the payment's amount.
    let (status, body) = deliver(&app, &refunded("evt_2", &tenant, "1", "pay_1")).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)));
    let (status, _) = deliver(&app, &refunded("evt_3", &tenant, "1", "pay_1")).await;
    assert_eq!(status, 200);
    assert_eq!(app.balance(&tenant).await["revoked"], "1");

    let revocations: Vec<_> = tenant_events(&app, &tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::CreditsRevoked {
                payment_id,
                amount_pico,
                ..
            } => Some((payment_id, amount_pico.to_decimal_string())),
            _ => None,
        })
        .collect();
    assert_eq!(
        revocations,
        vec![("pay_1".into(), "1".into()), ("pay_1".into(), "0".into())]
    );
    // Payments come back as credit: the tenant can call models again.
    let (status, _) = deliver(&app, &succeeded("evt_4", &tenant, "1", "pay_2")).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.chat(&key, &chat_body("gpt-mock", false)).await.status(),
        200
    );
}
on_both_stores!(
    a_refund_revokes_credit_and_then_model_requests_get_402,
    a_refund_revokes_credit_and_then_model_requests_get_402
);

async fn grant(
    app: &TestApp,
    tenant: &str,
    key: &str,
    amount: &str,
    expires_at: Option<String>,
) -> reqwest::Response {
    app.admin(
        Method::POST,
        &format!("/admin/v1/tenants/{tenant}/credits"),
        Some(json!({"amount": amount, "idempotency_key": key, "reason": "promo", "expires_at": expires_at})),
    )
    .await
}

async fn an_expiring_grant_expires_and_the_balance_shows_it(kind: StoreKind) {
    // The passes are driven by hand here, not by the maintenance loop.
    let app = spawn_app_with(kind, |settings| {
        settings.limits.credit_expiry_interval_ms = 3_600_000;
    })
    .await;
    let tenant = app.create_tenant("1").await;
    // Time to expiry passes on the hub's business clock, moved by the test.
    let expires_at = app.hub.now() + chrono::TimeDelta::hours(1);
    let response = grant(&app, &tenant, "promo-1", "2", Some(expires_at.to_rfc3339())).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["expires_at"], expires_at.to_rfc3339());

    let balance = app.balance(&tenant).await;
    assert_eq!(balance["granted"], "3");
    assert_eq!(balance["available"], "3");
    assert_eq!(balance["expired"], "0");
    assert_eq!(balance["revoked"], "0");
    assert_eq!(balance["expiring_soon"], "2", "{balance}");

    // Nothing is due yet: the pass expires nothing.
    app.projections_caught_up().await;
    assert_eq!(app.hub.expire_due_credits().await.unwrap(), 0);

    app.hub
        .clock()
        .advance(expires_at - app.hub.now() + chrono::TimeDelta::seconds(1));
    // The pass finds the tenant through the balances projection, which may trail
    // the log for a moment (on PostgreSQL, while older transactions of the
    // cluster are open): run the pass until it expires something.
    let expired_lots = wait_for(
        Duration::from_secs(30),
        "the pass expires a lot",
        || async {
            app.projections_caught_up().await;
            let expired = app.hub.expire_due_credits().await.unwrap();
            (expired > 0).then_some(expired)
        },
    )
    .await;
    assert_eq!(expired_lots, 1);
    let balance = app.balance(&tenant).await;
    assert_eq!(balance["expired"], "2", "{balance}");
    assert_eq!(balance["available"], "1");
    assert_eq!(balance["expiring_soon"], "0");
    assert_ledger_identity(&balance);
    let expired: Vec<_> = tenant_events(&app, &tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::CreditsExpired {
                grant_id,
                amount_pico,
                at,
            } => Some((grant_id, amount_pico.to_decimal_string(), at)),
            _ => None,
        })
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].0.as_str(), expired[0].1.as_str()),
        ("promo-1", "2")
    );
    assert!(expired[0].2 >= expires_at);
    // A second pass finds nothing; the projection agrees with a replay.
    app.projections_caught_up().await;
    assert_eq!(app.hub.expire_due_credits().await.unwrap(), 0);
    let report = aigne_hub::replay::replay_all(app.store().as_ref())
        .await
        .unwrap();
    assert!(report.all_identical, "{report:?}");

    // A retried grant is still the same grant after its expiry; an expiry in the
    // past or not a time is refused.
    let response = grant(&app, &tenant, "promo-1", "2", Some(expires_at.to_rfc3339())).await;
    assert_eq!(response.status(), 200);
    let past = (app.hub.now() - chrono::TimeDelta::seconds(5)).to_rfc3339();
    assert_eq!(
        grant(&app, &tenant, "promo-2", "1", Some(past))
            .await
            .status(),
        400
    );
    assert_eq!(
        grant(&app, &tenant, "promo-3", "1", Some("tomorrow".into()))
            .await
            .status(),
        400
    );
    assert_eq!(app.balance(&tenant).await["granted"], "3");
}
on_both_stores!(
    an_expiring_grant_expires_and_the_balance_shows_it,
    an_expiring_grant_expires_and_the_balance_shows_it
);

async fn the_maintenance_loop_expires_due_credit(kind: StoreKind) {
    let app = spawn_app_with(kind, |settings| {
        settings.limits.credit_expiry_interval_ms = 100;
    })
    .await;
    let (tenant, billing) = app.tenant_with_key("0", "billing").await;
    let expires_at = app.hub.now() + chrono::TimeDelta::hours(1);
    assert_eq!(
        grant(&app, &tenant, "promo", "1", Some(expires_at.to_rfc3339()))
            .await
            .status(),
        200
    );
    let read = || async {
        app.get(&billing, "/v1/billing/balance")
            .await
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = read().await;
    assert_eq!(before["expiring_soon"], "1", "{before}");
    assert_eq!(before["expired"], "0", "{before}");
    // Past the expiry on the business clock: the loop's next pass expires it.
    app.hub
        .clock()
        .advance(expires_at - app.hub.now() + chrono::TimeDelta::seconds(1));
    // Generous: the pass reads the balances projection, which may trail the log
    // while other tests hold transactions open on the same PostgreSQL server.
    let balance = wait_for(
        Duration::from_secs(30),
        "the loop expires the lot",
        || async {
            let balance = read().await;
            (balance["expired"] == "1").then_some(balance)
        },
    )
    .await;
    assert_eq!(balance["expired"], "1", "{balance}");
    assert_eq!(balance["available"], "0");
    assert_eq!(balance["expiring_soon"], "0");
}
on_both_stores!(
    the_maintenance_loop_expires_due_credit,
    the_maintenance_loop_expires_due_credit
);

/// Runs the `aigne-hub` CLI; returns whether it succeeded and the JSON it printed.
fn cli(env: &crate::process::HubEnv, args: &[&str]) -> (bool, Value) {
    let output = env.command().args(args).output().unwrap();
    if output.status.success() {
        return (true, serde_json::from_slice(&output.stdout).unwrap());
    }
    // A failure is the last line of stderr, after the logs.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    (false, serde_json::from_str(last).unwrap_or(Value::Null))
}

async fn the_cli_grants_with_an_expiry(kind: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = database_url_for(kind).await;
    let env = crate::process::HubEnv::new(temp.path(), database_url);
    // Only `serve` creates a store (and its master key); the CLI then uses it.
    drop(env.start().await);
    let (ok, created) = cli(&env, &["tenant", "create", "--name", "acme"]);
    assert!(ok, "{created}");
    let tenant = created["tenant_id"].as_str().unwrap().to_string();
    let expires_at = (Utc::now() + chrono::TimeDelta::days(2)).to_rfc3339();
    let grant = |key: &str, expiry: &str| {
        cli(
            &env,
            &[
                "credits",
                "grant",
                "--tenant",
                &tenant,
                "--amount",
                "3",
                "--idempotency-key",
                key,
                "--reason",
                "promo",
                "--expires-at",
                expiry,
            ],
        )
    };
    let (ok, granted) = grant("promo-1", &expires_at);
    assert!(ok, "{granted}");
    assert_eq!(granted["expires_at"], expires_at);
    let (ok, error) = grant("promo-2", "next week");
    assert!(!ok);
    assert!(
        error["error"].as_str().unwrap().contains("--expires-at"),
        "{error}"
    );

    let (ok, balance) = cli(&env, &["balance", "--tenant", &tenant]);
    assert!(ok, "{balance}");
    assert_eq!(balance["granted"], "3");
    assert_eq!(balance["expiring_soon"], "3", "{balance}");
    assert_eq!(balance["expired"], "0");
}
on_both_stores!(the_cli_grants_with_an_expiry, the_cli_grants_with_an_expiry);

async fn an_event_id_answered_as_a_duplicate_cannot_be_reused(kind: StoreKind) {
    let app = spawn_app_with(kind, with_secrets(&[SECRET])).await;
    let tenant = app.create_tenant("0").await;
    let (status, body) = deliver(&app, &succeeded("evt_1", &tenant, "1", "pay_1")).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
    // The same payment under another event id: credited once, answered duplicate.
    let (status, body) = deliver(&app, &succeeded("evt_2", &tenant, "1", "pay_1")).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");

    // The attack: that event id again with another payment and amount.
    let app = app.restart().await;
    let (status, body) = deliver(&app, &succeeded("evt_2", &tenant, "500", "pay_2")).await;
    assert_eq!(status, 409, "the id is remembered: {body}");
    let (status, body) = deliver(&app, &refunded("evt_2", &tenant, "1", "pay_1")).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = deliver(&app, &succeeded("evt_2", &tenant, "1", "pay_1")).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    let balance = app.balance(&tenant).await;
    assert_eq!(
        (balance["granted"].as_str(), balance["revoked"].as_str()),
        (Some("1"), Some("0"))
    );
}
on_both_stores!(
    an_event_id_answered_as_a_duplicate_cannot_be_reused,
    an_event_id_answered_as_a_duplicate_cannot_be_reused
);
