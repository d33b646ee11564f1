//! Tamper evidence: each tenant's events are hash-chained as they are committed.
//! `audit verify` names the first broken sequence of a changed, removed or
//! reordered event, and an export from `GET /v1/audit/events` verifies offline,
//! with no database, recomputing the tenant's balance.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::on_both_stores;
use aigne_hub::audit::{verify_store, ChainBreak, GENESIS_HASH};
use domain::TenantId;
use serde_json::{json, Value};
use std::time::Duration;

/// A tenant with a key, its initial grant and two billed calls: 7+ events.
async fn busy_tenant(app: &TestApp) -> (TenantId, String) {
    let (tenant, key) = app.tenant_with_key("1", "admin").await;
    for _ in 0..2 {
        let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
        assert_eq!(response.status(), 200);
    }
    (tenant.parse().unwrap(), key)
}

/// Runs one statement against the hub's database, bypassing the hub.
pub(crate) async fn tamper(app: &TestApp, sql: &str, tenant: TenantId) {
    use sqlx::Connection;
    let tenant = tenant.to_string();
    match app.store_kind {
        StoreKind::Postgres => {
            let url = app.settings.database_url.as_deref().unwrap();
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let done = sqlx::query(sql)
                .bind(&tenant)
                .execute(&mut conn)
                .await
                .unwrap();
            assert!(done.rows_affected() >= 1, "{sql} changed nothing");
        }
        StoreKind::Sqlite => {
            let path = app.settings.data_dir.join("aigne-hub.sqlite");
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let done = sqlx::query(sql)
                .bind(&tenant)
                .execute(&mut conn)
                .await
                .unwrap();
            assert!(done.rows_affected() >= 1, "{sql} changed nothing");
        }
    }
}

async fn first_break(app: &TestApp, tenant: TenantId) -> Option<ChainBreak> {
    let reports = verify_store(app.store().as_ref(), Some(tenant))
        .await
        .unwrap();
    reports[0].first_break.clone()
}

async fn tampering_is_found_at_its_sequence(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (changed, _) = busy_tenant(&app).await;
    let (removed, _) = busy_tenant(&app).await;
    let (reordered, _) = busy_tenant(&app).await;
    let (untouched, _) = busy_tenant(&app).await;

    for tenant in [changed, removed, reordered, untouched] {
        let report = &verify_store(app.store().as_ref(), Some(tenant))
            .await
            .unwrap()[0];
        assert_eq!(report.first_break, None, "{report:?}");
        assert!(report.events >= 7, "{report:?}");
        assert_eq!(report.unchained_prefix, 0, "every event is chained");
    }

    // One byte of event 3's payload: the first letter of its type's key.
    let flip = match kind {
        StoreKind::Postgres => {
            r#"UPDATE events SET payload = ('{"X' || substr(payload::text, 4))::json
               WHERE aggregate_type = 'Tenant' AND aggregate_id = $1 AND sequence = 3"#
        }
        StoreKind::Sqlite => {
            r#"UPDATE events SET payload = '{"X' || substr(payload, 4)
               WHERE aggregate_type = 'Tenant' AND aggregate_id = $1 AND sequence = 3"#
        }
    };
    tamper(&app, flip, changed).await;
    assert_eq!(
        first_break(&app, changed).await,
        Some(ChainBreak::Hash { sequence: 3 })
    );

    tamper(
        &app,
        "DELETE FROM events WHERE aggregate_type = 'Tenant' AND aggregate_id = $1 AND sequence = 4",
        removed,
    )
    .await;
    assert_eq!(
        first_break(&app, removed).await,
        Some(ChainBreak::Sequence {
            expected: 4,
            found: 5
        })
    );

    // Events 2 and 5 trade places.
    for (from, to) in [(2, 1_000_002), (5, 2), (1_000_002, 5)] {
        tamper(
            &app,
            &format!("UPDATE events SET sequence = {to} WHERE aggregate_type = 'Tenant' AND aggregate_id = $1 AND sequence = {from}"),
            reordered,
        )
        .await;
    }
    assert_eq!(
        first_break(&app, reordered).await,
        Some(ChainBreak::PrevHash { sequence: 2 })
    );

    // Checking every tenant reports exactly the three broken ones.
    let all = verify_store(app.store().as_ref(), None).await.unwrap();
    let broken: Vec<String> = all
        .iter()
        .filter(|r| r.first_break.is_some())
        .map(|r| r.tenant_id.clone())
        .collect();
    assert_eq!(broken.len(), 3, "{all:?}");
    assert!(!broken.contains(&untouched.to_string()));
}
on_both_stores!(
    tampering_is_found_at_its_sequence,
    tampering_is_found_at_its_sequence
);

/// Every page of a tenant's export, as the auditor downloads them, concatenated.
async fn export(app: &TestApp, key: &str) -> String {
    let mut file = String::new();
    let mut after = 0;
    loop {
        let response = app
            .get(key, &format!("/v1/audit/events?after={after}&limit=3"))
            .await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        file.push_str(&page.to_string());
        file.push('\n');
        match page["next_after"].as_u64() {
            Some(next) => after = next as usize,
            None => return file,
        }
    }
}

async fn an_export_verifies_offline_and_recomputes_the_balance(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, _) = busy_tenant(&app).await;
    let (other, _) = busy_tenant(&app).await;
    let auditor = app.issue_key(&tenant.to_string(), "auditor").await;

    // Only the caller's own tenant, only for admin and auditor keys.
    let page: Value = app
        .get(&auditor, "/v1/audit/events")
        .await
        .json()
        .await
        .unwrap();
    let events = page["data"].as_array().unwrap();
    assert!(events.len() >= 8);
    assert!(events.iter().all(|e| e["tenant_id"] == tenant.to_string()));
    assert_eq!(events[0]["metadata"]["prev_hash"], GENESIS_HASH);
    assert_eq!(
        events[1]["metadata"]["prev_hash"],
        events[0]["metadata"]["hash"]
    );
    let member = app.issue_key(&tenant.to_string(), "member").await;
    assert_eq!(app.get(&member, "/v1/audit/events").await.status(), 403);
    assert_eq!(
        app.get(&auditor, "/v1/audit/events?limit=0").await.status(),
        400
    );
    assert_eq!(
        app.get(&auditor, "/v1/audit/events?after=x").await.status(),
        400
    );
    let admin_page = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{other}/audit/events"),
            None,
        )
        .await;
    assert!(admin_page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["tenant_id"] == other.to_string()));

    // Offline, through the binary, with no database it could reach.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.json");
    let file = export(&app, &auditor).await;
    std::fs::write(&path, &file).unwrap();
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aigne-hub"))
            .args(["audit", "verify", "--export"])
            .arg(path)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("AIGNE_HUB_DATA_DIR", dir.path().join("no-data"))
            .output()
            .unwrap()
    };
    let output = run(&path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let check: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(check["chain"]["first_break"], Value::Null);
    let live = app.balance(&tenant.to_string()).await;
    for field in [
        "granted",
        "spent",
        "held",
        "available",
        "expired",
        "revoked",
    ] {
        assert_eq!(
            check["balance"][field], live[field],
            "{field}: {check} vs {live}"
        );
    }
    assert!(
        !dir.path().join("no-data").exists(),
        "offline means no data dir either"
    );

    // The same file with one spent amount lowered fails, naming the event.
    let tampered = file.replacen("\"cost_pico\":\"", "\"cost_pico\":\"1", 1);
    assert_ne!(
        tampered, file,
        "the export holds a settlement to tamper with"
    );
    std::fs::write(&path, &tampered).unwrap();
    let output = run(&path);
    assert!(!output.status.success());
    let check: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(check["chain"]["first_break"]["kind"], "hash");
    assert_eq!(check["balance"], Value::Null);
}
on_both_stores!(
    an_export_verifies_offline_and_recomputes_the_balance,
    an_export_verifies_offline_and_recomputes_the_balance
);

async fn the_chain_continues_across_a_restart(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, key) = busy_tenant(&app).await;
    let app = app.restart().await;
    let response = app.chat(&key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let report = &verify_store(app.store().as_ref(), Some(tenant))
        .await
        .unwrap()[0];
    assert_eq!(report.first_break, None, "{report:?}");
    assert!(report.events >= 10);
    assert_eq!(report.unchained_prefix, 0);
}
on_both_stores!(
    the_chain_continues_across_a_restart,
    the_chain_continues_across_a_restart
);

/// A tenant loaded from a snapshot with no event after it still knows its
/// chain's head (it is read from the snapshot's last event), so the next event
/// links to the right one.
async fn the_chain_head_survives_a_snapshot_with_nothing_after_it(kind: StoreKind) {
    use aigne_hub::store::{chain, Durability};

    let temp = tempfile::tempdir().unwrap();
    let database = database_url_for(kind).await;
    let url = database.url();
    let store = aigne_hub::store::open(url.as_deref(), temp.path())
        .await
        .unwrap();
    let tenant = TenantId::new_random();
    let meta = plain_metadata(tenant);
    let mut events = vec![(tenant_created(tenant), meta.clone())];
    for n in 0..2 {
        events.push((pico_grant(n), meta.clone()));
    }
    let head = chain(tenant, 1, None, &mut events).unwrap();
    store
        .append(tenant, 1, &events, Durability::Durable)
        .await
        .unwrap();
    let loaded = store.load_tenant(tenant).await.unwrap();
    store.save_snapshot(tenant, 3, &loaded.state).await.unwrap();

    let reloaded = store.load_tenant(tenant).await.unwrap();
    assert_eq!(reloaded.version, 3);
    assert_eq!(
        reloaded.events_since_snapshot, 0,
        "loaded from the snapshot"
    );
    assert_eq!(reloaded.chain_head, head);
    assert!(head.is_some());
}
on_both_stores!(
    the_chain_head_survives_a_snapshot_with_nothing_after_it,
    the_chain_head_survives_a_snapshot_with_nothing_after_it
);

/// The `metadata.actor` of each exported event, by event type, in log order.
async fn actors_by_type(app: &TestApp, auditor: &str) -> Vec<(String, Value)> {
    let page: Value = app
        .get(auditor, "/v1/audit/events?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let kind = e["payload"].as_object().unwrap().keys().next().unwrap();
            (kind.clone(), e["metadata"]["actor"].clone())
        })
        .collect()
}

async fn every_event_names_who_made_it(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[GPT_MOCK]).await;
    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let member_id = key_id_of(&member);
    let response = app.chat(&member, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let expiring = json!({"amount": "0.5", "idempotency_key": "promo", "reason": "promo",
        "expires_at": (app.hub.now() + chrono::TimeDelta::hours(1)).to_rfc3339()});
    app.admin_json(
        reqwest::Method::POST,
        &format!("/admin/v1/tenants/{tenant}/credits"),
        Some(expiring),
    )
    .await;
    // The hub's own change: the expiry pass, once the lot is due.
    app.hub.clock().advance(chrono::TimeDelta::hours(2));
    let expired = poll_for(Duration::from_secs(5), || async {
        app.projections_caught_up().await;
        let expired = app.hub.expire_due_credits().await.unwrap();
        (expired > 0).then_some(expired)
    })
    .await;
    assert_eq!(expired, Some(1));

    let auditor = app.issue_key(&tenant, "auditor").await;
    let actors = actors_by_type(&app, &auditor).await;
    let operator = json!({"kind": "operator_api"});
    let key = json!({"kind": "key", "key_id": member_id});
    let expected = [
        ("TenantCreated", &operator),
        ("CreditsGranted", &operator),
        ("ApiKeyIssued", &operator),
        ("CreditsReserved", &key),
        ("UpstreamAttempted", &key),
        ("UsageSettled", &key),
        ("CreditsGranted", &operator),
        ("CreditsExpired", &json!({"kind": "hub"})),
        ("ApiKeyIssued", &operator),
    ];
    let actual: Vec<(&str, &Value)> = actors.iter().map(|(t, a)| (t.as_str(), a)).collect();
    assert_eq!(actual, expected, "{actors:?}");

    // Price book changes name theirs too.
    let book = app
        .admin_json(reqwest::Method::GET, "/admin/v1/price-book/events", None)
        .await;
    let book = book["data"].as_array().unwrap();
    assert!(!book.is_empty());
    assert!(book.iter().all(|e| e["actor"] == operator), "{book:?}");
}

/// The id of a key, from its text (`prefix_tenant_key_secret`).
fn key_id_of(key: &str) -> String {
    let simple = key.split('_').nth(2).unwrap();
    uuid::Uuid::parse_str(simple).unwrap().to_string()
}
on_both_stores!(every_event_names_who_made_it, every_event_names_who_made_it);
