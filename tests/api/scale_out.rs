//! Several hub processes on one PostgreSQL database: each tenant's stream still
//! has one writer at a time (optimistic concurrency, reload and retry on
//! conflict), so no credit is spent twice however requests are spread.

use crate::helpers::*;
use aigne_hub::startup::Application;
use domain::tenant::TenantEvent;
use domain::Credits;
use serde_json::json;

#[actix_web::test]
async fn two_hubs_on_one_database_never_overspend() {
    const REQUESTS: usize = 40;
    const AFFORDABLE: usize = 20;
    let first = spawn_app(StoreKind::Postgres).await;
    // Each request costs exactly its hold: 100 output tokens at 1 credit/Mtok.
    first
        .setup_provider(&[("exact-hold", "0", "1", Some(100))])
        .await;
    let (tenant, key) = first.tenant_with_key("0.002", "member").await;

    // A second process: same database, same master key (read from the data dir).
    let second = Application::build(first.settings.clone())
        .await
        .expect("second hub starts");
    let second_address = format!("http://127.0.0.1:{}", second.port());
    let second_handle = second.server_handle();
    let second_hub = second.hub();
    actix_web::rt::spawn(second.run_until_stopped());

    let mut body = chat_body("exact-hold", false);
    body["max_tokens"] = json!(100);
    let calls = (0..REQUESTS).map(|i| {
        let address = if i % 2 == 0 {
            first.address.clone()
        } else {
            second_address.clone()
        };
        let (client, key, body) = (first.client.clone(), key.clone(), body.clone());
        async move {
            client
                .post(format!("{address}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses: Vec<u16> = futures_util::future::join_all(calls).await;
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

    // The log, folded, is the truth both processes wrote to.
    let mut spent = Credits::ZERO;
    let mut open_holds = 0i64;
    for e in tenant_events(&first, &tenant).await {
        match e.event {
            TenantEvent::UsageSettled { cost_pico, .. } => {
                spent = spent + cost_pico;
                open_holds -= 1;
            }
            TenantEvent::CreditsReserved { .. } => open_holds += 1,
            TenantEvent::HoldReleased { .. } => open_holds -= 1,
            _ => {}
        }
    }
    assert_eq!(spent.to_decimal_string(), "0.002");
    assert_eq!(open_holds, 0);
    second_handle.stop(false).await;
    second_hub.shutdown_tenants();
}
