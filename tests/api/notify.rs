//! Low-balance notifications: a threshold set by the operator, a crossing decided
//! by the tenant's aggregate, delivered at least once to a receiver this test
//! starts on 127.0.0.1, signed like the payment webhooks.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::on_both_stores;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use aigne_hub::notify::{NotifySettings, CHECKPOINT_NAME};
use aigne_hub::store::LogPosition;
use domain::tenant::TenantEvent;
use domain::Credits;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_low_balance_test";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Delivery {
    signature: String,
    body: String,
}

/// Records every delivery; answers 500 to the first `fail_first`, then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    handle: actix_web::dev::ServerHandle,
}

struct ReceiverState {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    fail_first: usize,
    seen: AtomicUsize,
}

async fn receive(
    state: web::Data<ReceiverState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let signature = req
        .headers()
        .get("AIGNE-Hub-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    state.deliveries.lock().unwrap().push(Delivery {
        signature,
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    if state.seen.fetch_add(1, Ordering::SeqCst) < state.fail_first {
        HttpResponse::InternalServerError().finish()
    } else {
        HttpResponse::Ok().json(json!({"received": true}))
    }
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let state = web::Data::new(ReceiverState {
            deliveries: deliveries.clone(),
            fail_first,
            seen: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/hooks/low-balance", web::post().to(receive))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hooks/low-balance"),
            deliveries,
            handle,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Waits until at least `n` deliveries arrived (fails the test after 10 s).
    async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let what = format!("{n} deliveries");
        wait_for(WAIT_DEADLINE, &what, || async {
            let got = self.deliveries();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Notifications to `receiver`, polled and retried quickly.
fn notifying(receiver: &Receiver) -> impl FnOnce(&mut aigne_hub::config::Settings) {
    let url = receiver.url.clone();
    move |settings| {
        settings.notify = NotifySettings {
            url: Some(url),
            secret: Some(SECRET.into()),
            poll_ms: 50,
            retry_base_delay_ms: 50,
            retry_max_delay_ms: 200,
        }
    }
}

async fn set_threshold(app: &TestApp, tenant: &str, threshold: Value) -> reqwest::Response {
    app.admin(
        Method::PUT,
        &format!("/admin/v1/tenants/{tenant}/low_balance"),
        Some(json!({ "threshold": threshold })),
    )
    .await
}

/// Checks the signature as a receiver would, and returns the body as JSON.
fn verified(delivery: &Delivery) -> Value {
    let (t, v1) = delivery
        .signature
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed signature {:?}", delivery.signature));
    let t: i64 = t.parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - t).abs() < 60,
        "signed now"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(delivery.body.as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap())
        .expect("the signature matches the body");
    serde_json::from_str(&delivery.body).unwrap()
}

/// The tenant's `LowBalanceCrossed` events: `(sequence, threshold, available)`.
async fn crossings(app: &TestApp, tenant: &str) -> Vec<(usize, Credits, Credits)> {
    tenant_events(app, tenant)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            TenantEvent::LowBalanceCrossed {
                threshold_pico,
                available_pico,
                ..
            } => Some((e.sequence, threshold_pico, available_pico)),
            _ => None,
        })
        .collect()
}

async fn chat_ok(app: &TestApp, key: &str) {
    let response = app.chat(key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
}

async fn one_notification_per_crossing_signed_with_the_right_amounts(kind: StoreKind) {
    let receiver = Receiver::start(0);
    let app = spawn_app_with(kind, notifying(&receiver)).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    let response = set_threshold(&app, &tenant, json!("0.99995")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["threshold"], "0.99995");
    assert_eq!(body["available"], "1");

    // One answer costs 0.000072: the first request takes available below the
    // threshold (its hold already does), the second keeps it there.
    chat_ok(&app, &key).await;
    chat_ok(&app, &key).await;
    let got = receiver.wait_for(1).await;
    // No second delivery may come: a check that nothing happens, so it waits a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries().len(), 1, "one crossing, one delivery");

    let crossed = crossings(&app, &tenant).await;
    assert_eq!(crossed.len(), 1);
    let (sequence, threshold, available) = crossed[0];
    assert_eq!(threshold, Credits::parse("0.99995").unwrap());
    assert!(available < threshold);
    let n = verified(&got[0]);
    assert_eq!(n["id"], format!("{tenant}:{sequence}"));
    assert_eq!(n["type"], "balance.low");
    assert_eq!(n["tenant_id"], tenant);
    assert_eq!(n["threshold"], "0.99995");
    assert_eq!(n["available"], available.to_decimal_string());
    assert!(n["at"].as_str().is_some());

    // A grant takes it back above (1.999856); a threshold just under that is
    // crossed by the next request: a second notification, with another id.
    app.admin_json(
        Method::POST,
        &format!("/admin/v1/tenants/{tenant}/credits"),
        Some(json!({"amount": "1", "idempotency_key": "top-up-1", "reason": "top-up"})),
    )
    .await;
    assert_eq!(
        set_threshold(&app, &tenant, json!("1.9998")).await.status(),
        200
    );
    chat_ok(&app, &key).await;
    let got = receiver.wait_for(2).await;
    let second = verified(&got[1]);
    assert_ne!(second["id"], n["id"]);
    assert_eq!(second["threshold"], "1.9998");
    let crossed = crossings(&app, &tenant).await;
    assert_eq!(crossed.len(), 2);
    assert_eq!(second["id"], format!("{tenant}:{}", crossed[1].0));
    assert_eq!(second["available"], crossed[1].2.to_decimal_string());
    // No third delivery may come: a check that nothing happens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries().len(), 2);
}
on_both_stores!(
    one_notification_per_crossing,
    one_notification_per_crossing_signed_with_the_right_amounts
);

async fn failed_deliveries_are_retried_and_a_restart_does_not_redeliver(kind: StoreKind) {
    let receiver = Receiver::start(2);
    let app = spawn_app_with(kind, notifying(&receiver)).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;
    assert_eq!(
        set_threshold(&app, &tenant, json!("0.99995"))
            .await
            .status(),
        200
    );
    chat_ok(&app, &key).await;

    // 500, 500, then 200: the same notification three times.
    let got = receiver.wait_for(3).await;
    let ids: Vec<Value> = got.iter().map(|d| verified(d)["id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let (sequence, _, _) = crossings(&app, &tenant).await[0];
    assert_eq!(ids[0], format!("{tenant}:{sequence}"));

    // Once the checkpoint is past the crossing, a restart does not deliver it again.
    let store = app.store();
    let log = store
        .read_log(LogPosition::default(), None, 10_000)
        .await
        .unwrap();
    let position = log
        .iter()
        .find(|e| matches!(e.event, TenantEvent::LowBalanceCrossed { .. }))
        .unwrap()
        .log_position;
    wait_until(
        WAIT_DEADLINE,
        "the checkpoint moves past a delivered page",
        || async { store.projection_checkpoint(CHECKPOINT_NAME).await.unwrap() >= position },
    )
    .await;
    let app = app.restart().await;
    chat_ok(&app, &key).await;
    // No delivery may come again: a check that nothing happens, so it waits a while.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.deliveries().len(),
        3,
        "{:?}",
        receiver.deliveries()
    );
}
on_both_stores!(
    retried_then_not_redelivered,
    failed_deliveries_are_retried_and_a_restart_does_not_redeliver
);

async fn without_a_url_nothing_is_sent_and_requests_still_work(kind: StoreKind) {
    let receiver = Receiver::start(0);
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = app.tenant_with_key("1", "member").await;

    // Bad thresholds and unknown tenants are refused.
    assert_eq!(
        set_threshold(&app, &tenant, json!("-1")).await.status(),
        400
    );
    assert_eq!(
        set_threshold(&app, &tenant, json!("abc")).await.status(),
        400
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        set_threshold(&app, &unknown, json!("1")).await.status(),
        404
    );

    assert_eq!(
        set_threshold(&app, &tenant, json!("0.99995"))
            .await
            .status(),
        200
    );
    chat_ok(&app, &key).await;
    chat_ok(&app, &key).await;
    // The crossing is recorded all the same, but nothing is sent and the
    // checkpoint does not move.
    let crossed = crossings(&app, &tenant).await;
    assert_eq!(crossed.len(), 1);
    assert_eq!(
        app.store()
            .projection_checkpoint(CHECKPOINT_NAME)
            .await
            .unwrap(),
        LogPosition::default()
    );
    // Once a URL is configured, that crossing is delivered: so it was neither sent
    // nor passed over while there was none.
    let mut app = app;
    notifying(&receiver)(&mut app.settings);
    let app = app.restart().await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        verified(&got[0])["id"],
        format!("{tenant}:{}", crossed[0].0)
    );
    chat_ok(&app, &key).await;
    // Turned off: `null`.
    let response = set_threshold(&app, &tenant, Value::Null).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["threshold"], Value::Null);
}
on_both_stores!(
    without_a_url,
    without_a_url_nothing_is_sent_and_requests_still_work
);
