//! The price book: cost and sell rates, margins per tenant, plan and by default,
//! versions and their history, per-image prices by size and quality, and the
//! import of the price table of hubs from before it.

use crate::helpers::*;
use crate::mock_openai::{COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::on_both_stores;
use domain::{Credits, Rate};
use reqwest::Method;
use serde_json::{json, Value};

/// The provider's cost of gpt-mock: 1 and 2 credits per million tokens.
const COST_IN: &str = "1";
const COST_OUT: &str = "2";

fn per_mtok(s: &str) -> Rate {
    Rate::parse_per_million(s).unwrap()
}

/// What one mock answer costs at these rates (cache reads cost the input rate).
fn answer_cost(input: Rate, output: Rate) -> Credits {
    input.cost_of(PROMPT_TOKENS) + output.cost_of(COMPLETION_TOKENS)
}

async fn put(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app
        .client
        .put(format!("{}{path}", app.address))
        .bearer_auth(&app.operator_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn put_ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = put(app, path, body).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

async fn operator_get(app: &TestApp, path: &str) -> Value {
    app.admin_json(Method::GET, path, None).await
}

/// Sends one chat and returns the explanation of its charge.
async fn charged(app: &TestApp, key: &str, billing_key: &str) -> Value {
    let response = app.chat(key, &chat_body("gpt-mock", false)).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let explained = app
        .get(billing_key, &format!("/v1/billing/requests/{request_id}"))
        .await;
    assert_eq!(explained.status(), 200);
    explained.json().await.unwrap()
}

async fn provider_with_cost(app: &TestApp) {
    app.setup_provider(&[("gpt-mock", COST_IN, COST_OUT, Some(1000))])
        .await;
}

async fn each_tenant_pays_its_own_margin_then_its_plans_then_the_default(kind: StoreKind) {
    let app = spawn_app(kind).await;
    provider_with_cost(&app).await;
    put_ok(
        &app,
        "/admin/v1/margins/default",
        json!({"margin_bps": 1000}),
    )
    .await;
    put_ok(
        &app,
        "/admin/v1/plans/pro/margin",
        json!({"margin_bps": 500}),
    )
    .await;

    let own = app.create_tenant("10").await;
    let on_plan = app.create_tenant("10").await;
    let plain = app.create_tenant("10").await;
    put_ok(
        &app,
        &format!("/admin/v1/tenants/{own}/margin"),
        json!({"margin_bps": 2500}),
    )
    .await;
    put_ok(
        &app,
        &format!("/admin/v1/tenants/{own}/plan"),
        json!({"plan": "pro"}),
    )
    .await;
    put_ok(
        &app,
        &format!("/admin/v1/tenants/{on_plan}/plan"),
        json!({"plan": "pro"}),
    )
    .await;

    // Sell rates worked out by hand, in pico-credits per token: the cost rates
    // (1_000_000 and 2_000_000) times (10_000 + margin_bps) / 10_000.
    for (tenant, bps, source, sell_in, sell_out) in [
        (&own, 2500u32, "tenant", 1_250_000, 2_500_000),
        (&on_plan, 500, "plan", 1_050_000, 2_100_000),
        (&plain, 1000, "default", 1_100_000, 2_200_000),
    ] {
        let member = app.issue_key(tenant, "member").await;
        let billing = app.issue_key(tenant, "billing").await;
        let before = credits_of(&app.balance(tenant).await["available"]);
        let body = charged(&app, &member, &billing).await;

        let sell_in = Rate::from_pico_per_token(sell_in);
        let sell_out = Rate::from_pico_per_token(sell_out);
        let expected = answer_cost(sell_in, sell_out);
        assert_eq!(credits_of(&body["cost"]), expected, "{body}");
        assert_eq!(body["margin"]["margin_bps"], bps, "{body}");
        assert_eq!(body["margin"]["source"], source, "{body}");
        assert_eq!(
            credits_of(&body["margin"]["provider_cost"]),
            answer_cost(per_mtok(COST_IN), per_mtok(COST_OUT)),
            "the provider's cost is the same whoever pays: {body}"
        );
        assert_eq!(
            body["rates"]["input_per_mtok"],
            sell_in.to_per_million_string()
        );
        let after = credits_of(&app.balance(tenant).await["available"]);
        assert_eq!(before - after, expected, "the balance moved by the charge");

        // The tenant's own model list shows what it pays, never the cost.
        let models: Value = app.get(&member, "/v1/models").await.json().await.unwrap();
        let pricing = &models["data"][0]["pricing"];
        assert_eq!(
            pricing["input_per_mtok"],
            sell_in.to_per_million_string(),
            "{models}"
        );
        assert_eq!(pricing["output_per_mtok"], sell_out.to_per_million_string());
        assert!(!models.to_string().contains("margin"), "{models}");
    }

    // Analytics show, per tenant, what it paid, what that cost the operator and
    // the margin between them.
    app.projections_caught_up().await;
    for (tenant, sell_in, sell_out) in [
        (&own, 1_250_000, 2_500_000),
        (&on_plan, 1_050_000, 2_100_000),
        (&plain, 1_100_000, 2_200_000),
    ] {
        let usage = operator_get(
            &app,
            &format!("/admin/v1/tenants/{tenant}/usage?group_by=model"),
        )
        .await;
        let row = &usage["data"][0];
        let cost = answer_cost(per_mtok(COST_IN), per_mtok(COST_OUT));
        let sold = answer_cost(
            Rate::from_pico_per_token(sell_in),
            Rate::from_pico_per_token(sell_out),
        );
        assert_eq!(credits_of(&row["amount"]), sold, "{usage}");
        assert_eq!(credits_of(&row["provider_cost"]), cost, "{usage}");
        assert_eq!(credits_of(&row["margin"]), sold - cost, "{usage}");
    }

    let margins = operator_get(&app, "/admin/v1/margins").await;
    assert_eq!(margins["default_margin_bps"], 1000);
    assert_eq!(margins["plans"]["pro"], 500);
    assert_eq!(margins["tenants"].as_array().unwrap().len(), 2, "{margins}");

    // Clearing the tenant's margin leaves its plan's.
    put_ok(
        &app,
        &format!("/admin/v1/tenants/{own}/margin"),
        json!({"margin_bps": null}),
    )
    .await;
    let member = app.issue_key(&own, "member").await;
    let billing = app.issue_key(&own, "billing").await;
    let body = charged(&app, &member, &billing).await;
    assert_eq!(body["margin"]["source"], "plan", "{body}");
}
on_both_stores!(
    margins_per_tenant_plan_and_default,
    each_tenant_pays_its_own_margin_then_its_plans_then_the_default
);

async fn a_new_price_is_a_new_version_and_old_charges_keep_theirs(kind: StoreKind) {
    let app = spawn_app(kind).await;
    provider_with_cost(&app).await;
    let (tenant, member) = app.tenant_with_key("10", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;

    let first = charged(&app, &member, &billing).await;
    assert_eq!(first["price_version"], 1);

    let answer = put_ok(
        &app,
        "/admin/v1/prices/mock/gpt-mock",
        json!({"input_per_mtok": "3", "output_per_mtok": "5", "max_output_tokens": 1000}),
    )
    .await;
    assert_eq!(answer["version"], 2, "{answer}");
    // The same price again is no new version.
    let again = put_ok(
        &app,
        "/admin/v1/prices/mock/gpt-mock",
        json!({"input_per_mtok": "3", "output_per_mtok": "5", "max_output_tokens": 1000}),
    )
    .await;
    assert_eq!(again["version"], 2, "{again}");

    let second = charged(&app, &member, &billing).await;
    assert_eq!(second["price_version"], 2);
    assert_eq!(
        credits_of(&second["cost"]),
        answer_cost(per_mtok("3"), per_mtok("5"))
    );

    // The first charge is explained as it was made.
    let request_id = first["request_id"].as_str().unwrap();
    let first_again: Value = app
        .get(&billing, &format!("/v1/billing/requests/{request_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first_again["price_version"], 1);
    assert_eq!(
        credits_of(&first_again["cost"]),
        answer_cost(per_mtok(COST_IN), per_mtok(COST_OUT))
    );

    let history = operator_get(&app, "/admin/v1/prices/mock/gpt-mock").await;
    let versions: Vec<_> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["cost"]["input_per_mtok"].clone(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![(2, json!("3")), (1, json!("1"))],
        "{history}"
    );

    let events = operator_get(&app, "/admin/v1/price-book/events").await;
    let kinds: Vec<_> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![json!("ModelPriced"), json!("ModelPriced")],
        "{events}"
    );
    assert_eq!(events["data"][1]["sequence"], 2);
}
on_both_stores!(
    price_versions_and_history,
    a_new_price_is_a_new_version_and_old_charges_keep_theirs
);

/// One call's explained charge, for a model with cost rates, direct sell rates
/// (4 / 7 per million) and a default margin of 90% all set.
async fn charged_at_a_direct_sell_price_with_a_margin(app: &TestApp) -> Value {
    app.setup_provider(&[]).await;
    put_ok(
        app,
        "/admin/v1/prices/mock/gpt-mock",
        json!({"input_per_mtok": COST_IN, "output_per_mtok": COST_OUT,
               "sell": {"input_per_mtok": "4", "output_per_mtok": "7"}}),
    )
    .await;
    put_ok(
        app,
        "/admin/v1/margins/default",
        json!({"margin_bps": 9000}),
    )
    .await;
    let (tenant, member) = app.tenant_with_key("10", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    charged(app, &member, &billing).await
}

async fn a_direct_sell_price_ignores_margins(kind: StoreKind) {
    let app = spawn_app(kind).await;
    let body = charged_at_a_direct_sell_price_with_a_margin(&app).await;
    assert_eq!(
        credits_of(&body["cost"]),
        answer_cost(per_mtok("4"), per_mtok("7")),
        "{body}"
    );
    assert_eq!(body["margin"]["source"], "direct_sell_price");
    assert_eq!(body["margin"]["margin_bps"], Value::Null);
    assert_eq!(
        credits_of(&body["margin"]["provider_cost"]),
        answer_cost(per_mtok(COST_IN), per_mtok(COST_OUT))
    );
}
on_both_stores!(direct_sell_price, a_direct_sell_price_ignores_margins);

async fn the_enterprise_mode_charges_the_providers_cost(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.mode = aigne_hub::config::DeploymentMode::Enterprise
    })
    .await;
    let body = charged_at_a_direct_sell_price_with_a_margin(&app).await;
    let cost = answer_cost(per_mtok(COST_IN), per_mtok(COST_OUT));
    assert_eq!(credits_of(&body["cost"]), cost, "{body}");
    assert_eq!(credits_of(&body["margin"]["provider_cost"]), cost);
    assert_eq!(body["margin"]["source"], "at_cost");
}
on_both_stores!(
    enterprise_at_cost,
    the_enterprise_mode_charges_the_providers_cost
);

async fn images_are_priced_by_size_and_quality(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[]).await;
    put_ok(
        &app,
        "/admin/v1/prices/mock/image-mock",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04",
        "images": [
            {"size": "1024x1024", "per_image": "0.05"},
            {"size": "1024x1024", "quality": "hd", "per_image": "0.08", "sell_per_image": "0.1"}
        ]}),
    )
    .await;
    put_ok(
        &app,
        "/admin/v1/margins/default",
        json!({"margin_bps": 5000}),
    )
    .await;
    let (tenant, member) = app.tenant_with_key("10", "member").await;
    let image_credits = |s: &str| Credits::parse(s).unwrap();
    for (size, quality, n, each) in [
        (Some("1024x1024"), Some("hd"), 2u64, image_credits("0.1")),
        // 0.05 + 50%.
        (
            Some("1024x1024"),
            Some("standard"),
            1,
            image_credits("0.075"),
        ),
        // Nothing fits 512x512: the default per-image cost 0.04 + 50%.
        (Some("512x512"), None, 3, image_credits("0.06")),
    ] {
        let before = credits_of(&app.balance(&tenant).await["available"]);
        let mut body = json!({"model": "mock/image-mock", "prompt": "a cat", "n": n});
        if let Some(size) = size {
            body["size"] = json!(size);
        }
        if let Some(quality) = quality {
            body["quality"] = json!(quality);
        }
        let response = app.post(&member, "/v1/images/generations", &body).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let after = credits_of(&app.balance(&tenant).await["available"]);
        let expected = Credits::from_pico(each.pico() * n as i128);
        assert_eq!(before - after, expected, "{size:?} {quality:?} × {n}");
    }

    // The AIGNE protocol's image calls are priced the same way.
    let before = credits_of(&app.balance(&tenant).await["available"]);
    let response = app
        .client
        .post(format!("{}/api/v2/image", app.address))
        .bearer_auth(&member)
        .json(&json!({"input": {"prompt": "a cat", "n": 2,
            "modelOptions": {"model": "mock/image-mock", "size": "1024x1024", "quality": "hd"}},
            "agent": "$CHAT_MODEL", "options": {"streaming": false, "userContext": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let after = credits_of(&app.balance(&tenant).await["available"]);
    assert_eq!(
        before - after,
        Credits::from_pico(image_credits("0.1").pico() * 2)
    );
}
on_both_stores!(image_prices, images_are_priced_by_size_and_quality);

async fn bad_price_book_writes_get_clear_errors(kind: StoreKind) {
    let app = spawn_app(kind).await;
    provider_with_cost(&app).await;
    let tenant = app.create_tenant("1").await;
    for (path, body, status, needle) in [
        (
            "/admin/v1/margins/default".to_string(),
            json!({"margin_bps": 100_001}),
            400,
            "margin_bps",
        ),
        (
            "/admin/v1/margins/default".to_string(),
            json!({"margin_bps": -1}),
            400,
            "invalid value: integer `-1`, expected u32",
        ),
        (
            "/admin/v1/margins/default".to_string(),
            json!({"margin": 1}),
            400,
            "margin",
        ),
        (
            "/admin/v1/plans/%20/margin".to_string(),
            json!({"margin_bps": 1}),
            400,
            "plan",
        ),
        (
            "/admin/v1/tenants/00000000-0000-0000-0000-000000000009/margin".to_string(),
            json!({"margin_bps": 1}),
            404,
            "tenant not found",
        ),
        (
            format!("/admin/v1/tenants/{tenant}/plan"),
            json!({"plan": ""}),
            400,
            "plan",
        ),
        (
            "/admin/v1/prices/mock/gpt-mock".to_string(),
            json!({"input_per_mtok": "1", "output_per_mtok": "1", "sell": {"input_per_mtok": "0.0000001", "output_per_mtok": "1"}}),
            400,
            "sell.input_per_mtok",
        ),
        (
            "/admin/v1/prices/mock/gpt-mock".to_string(),
            json!({"input_per_mtok": "1", "output_per_mtok": "1", "images": [{"size": "1x1", "per_image": "-1"}]}),
            400,
            "images.per_image",
        ),
    ] {
        let (got, answer) = put(&app, &path, body.clone()).await;
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{answer}"
        );
    }
    // Nothing above changed the price book.
    let events = operator_get(&app, "/admin/v1/price-book/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    // A tenant key is not the operator.
    let admin = app.issue_key(&tenant, "admin").await;
    let response = app
        .client
        .put(format!("{}/admin/v1/margins/default", app.address))
        .bearer_auth(&admin)
        .json(&json!({"margin_bps": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}
on_both_stores!(bad_writes, bad_price_book_writes_get_clear_errors);

async fn the_old_price_table_moves_into_the_price_book_at_start(kind: StoreKind) {
    let app = spawn_app(kind).await;
    app.setup_provider(&[]).await;
    // A price as hubs before the price book stored it, at its third version.
    let row = aigne_hub::store::PriceRow {
        model: "mock/gpt-mock".into(),
        input_pico_per_token: "1000000".into(),
        output_pico_per_token: "2000000".into(),
        cache_read_pico_per_token: None,
        cache_write_pico_per_token: None,
        image_pico_per_image: None,
        fallbacks: None,
        max_output_tokens: 1000,
        version: 0,
        updated_at: "2026-01-01T00:00:00+00:00".into(),
    };
    let store = app.store();
    for _ in 0..3 {
        store.upsert_price(&row).await.unwrap();
    }
    let app = app.restart().await;
    let history = operator_get(&app, "/admin/v1/prices/mock/gpt-mock").await;
    assert_eq!(history["data"].as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history["data"][0]["version"], 3, "{history}");
    assert_eq!(
        history["data"][0]["sell"]["input_per_mtok"], "1",
        "sold directly: {history}"
    );

    let (tenant, member) = app.tenant_with_key("1", "member").await;
    let billing = app.issue_key(&tenant, "billing").await;
    let body = charged(&app, &member, &billing).await;
    assert_eq!(body["price_version"], 3);
    assert_eq!(
        credits_of(&body["cost"]),
        answer_cost(per_mtok("1"), per_mtok("2"))
    );

    // A second start imports nothing more.
    let app = app.restart().await;
    let events = operator_get(&app, "/admin/v1/price-book/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
}
on_both_stores!(
    price_table_import,
    the_old_price_table_moves_into_the_price_book_at_start
);

async fn a_tenant_created_without_credits_gets_the_configured_initial_credits(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.limits.initial_credits = Credits::parse("2.5").unwrap();
    })
    .await;
    let body = app
        .admin_json(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": "fresh"})),
        )
        .await;
    let tenant = body["tenant_id"].as_str().unwrap().to_string();
    assert_eq!(app.balance(&tenant).await["granted"], "2.5");
    // An explicit amount, zero included, wins over the setting.
    let body = app
        .admin_json(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": "none", "initial_credits": "0"})),
        )
        .await;
    let tenant = body["tenant_id"].as_str().unwrap().to_string();
    assert_eq!(app.balance(&tenant).await["granted"], "0");
}
on_both_stores!(
    initial_credits_setting,
    a_tenant_created_without_credits_gets_the_configured_initial_credits
);
