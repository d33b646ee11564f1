//! Given/when/then tests of the price book's rules.

use super::*;
use crate::money::Rate;
use chrono::TimeZone;
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use uuid::Uuid;

type BookTest = TestFramework<PriceBook>;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap()
}
fn model() -> ModelId {
    ModelId::parse("openai/gpt-4o-mini").unwrap()
}
fn tenant(n: u128) -> TenantId {
    TenantId(Uuid::from_u128(n))
}
fn per_mtok(s: &str) -> Rate {
    Rate::parse_per_million(s).unwrap()
}
/// 1 credit per million input tokens, 2 per million output tokens: 1 and 2 pico a token... times 10^6.
fn spec() -> ModelPriceSpec {
    ModelPriceSpec {
        cost: Rates::flat(per_mtok("1"), per_mtok("2")),
        sell: None,
        images: Vec::new(),
        max_output_tokens: 100,
        fallbacks: Vec::new(),
    }
}
fn priced(version: i64, spec: ModelPriceSpec) -> PriceBookEvent {
    PriceBookEvent::ModelPriced {
        model: model(),
        version,
        spec,
        at: at(version),
    }
}
fn margin(scope: MarginScope, bps: Option<u32>) -> PriceBookEvent {
    PriceBookEvent::MarginSet {
        scope,
        margin_bps: bps,
        at: at(50),
    }
}
fn book(events: Vec<PriceBookEvent>) -> PriceBook {
    let mut book = PriceBook::default();
    for e in events {
        book.apply_event(e);
    }
    book
}

#[test]
fn a_first_price_is_version_one_and_a_change_the_next_version() {
    BookTest::with(())
        .given_no_previous_events()
        .when(PriceBookCommand::SetModelPrice {
            model: model(),
            spec: spec(),
            at: at(1),
        })
        .then_expect_events(vec![priced(1, spec())]);
    let mut dearer = spec();
    dearer.cost.output = per_mtok("3");
    BookTest::with(())
        .given(vec![priced(1, spec())])
        .when(PriceBookCommand::SetModelPrice {
            model: model(),
            spec: dearer.clone(),
            at: at(2),
        })
        .then_expect_events(vec![priced(2, dearer)]);
}

#[test]
fn the_same_price_again_is_not_a_new_version() {
    BookTest::with(())
        .given(vec![priced(1, spec())])
        .when(PriceBookCommand::SetModelPrice {
            model: model(),
            spec: spec(),
            at: at(9),
        })
        .then_expect_events(vec![]);
}

#[test]
fn an_import_keeps_its_version_and_must_be_newer() {
    BookTest::with(())
        .given_no_previous_events()
        .when(PriceBookCommand::ImportModelPrice {
            model: model(),
            version: 7,
            spec: spec(),
            at: at(7),
        })
        .then_expect_events(vec![priced(7, spec())]);
    BookTest::with(())
        .given(vec![priced(7, spec())])
        .when(PriceBookCommand::ImportModelPrice {
            model: model(),
            version: 7,
            spec: spec(),
            at: at(8),
        })
        .then_expect_error(PriceBookError::StaleImport {
            model: model().to_string(),
            current: 7,
        });
}

#[test]
fn bad_prices_are_refused_with_the_reason() {
    let refused = |spec: ModelPriceSpec, needle: &str| {
        let err = PriceBook::default()
            .decide(PriceBookCommand::SetModelPrice {
                model: model(),
                spec,
                at: at(1),
            })
            .unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    };
    let mut s = spec();
    s.max_output_tokens = 0;
    refused(s, "max_output_tokens");
    let mut s = spec();
    s.fallbacks = vec![model().to_string()];
    refused(s, "own fallback");
    let mut s = spec();
    s.cost.input = Rate::from_pico_per_token(-1);
    refused(s, "negative");
    let mut s = spec();
    let image = ImagePrice {
        size: Some("1024x1024".into()),
        quality: None,
        cost: per_mtok("1"),
        sell: None,
    };
    s.images = vec![image.clone(), image];
    refused(s, "same size and quality");
}

#[test]
fn margins_are_bounded_and_setting_the_same_margin_is_nothing() {
    BookTest::with(())
        .given_no_previous_events()
        .when(PriceBookCommand::SetMargin {
            scope: MarginScope::Default,
            margin_bps: Some(MARGIN_BPS_MAX + 1),
            at: at(1),
        })
        .then_expect_error(PriceBookError::Invalid(format!(
            "margin_bps must be 0 to {MARGIN_BPS_MAX}"
        )));
    BookTest::with(())
        .given(vec![margin(MarginScope::Default, Some(2_000))])
        .when(PriceBookCommand::SetMargin {
            scope: MarginScope::Default,
            margin_bps: Some(2_000),
            at: at(60),
        })
        .then_expect_events(vec![]);
}

#[test]
fn a_derived_sell_rate_is_the_cost_plus_margin_rounded_up_to_the_pico() {
    // 1 pico a token + 25% = 1.25 → 2 (never below cost + margin).
    assert_eq!(
        Rate::from_pico_per_token(1).with_margin(2_500),
        Rate::from_pico_per_token(2)
    );
    // Exact when it divides: 1,000,000 + 25% = 1,250,000.
    assert_eq!(per_mtok("1").with_margin(2_500), per_mtok("1.25"));
    assert_eq!(per_mtok("1").with_margin(0), per_mtok("1"));
    assert_eq!(
        Rate::from_pico_per_token(0).with_margin(MARGIN_BPS_MAX),
        Rate::from_pico_per_token(0)
    );
}

#[test]
fn the_tenant_margin_wins_over_its_plan_which_wins_over_the_default() {
    let (a, b, c, d) = (tenant(1), tenant(2), tenant(3), tenant(4));
    let book = book(vec![
        priced(1, spec()),
        margin(MarginScope::Default, Some(1_000)),
        margin(MarginScope::Plan { plan: "pro".into() }, Some(500)),
        margin(MarginScope::Tenant { tenant_id: a }, Some(2_500)),
        PriceBookEvent::TenantPlanSet {
            tenant_id: a,
            plan: Some("pro".into()),
            at: at(51),
        },
        PriceBookEvent::TenantPlanSet {
            tenant_id: b,
            plan: Some("pro".into()),
            at: at(51),
        },
        PriceBookEvent::TenantPlanSet {
            tenant_id: d,
            plan: Some("free".into()),
            at: at(51),
        },
    ]);
    let quote = |t| book.quote(&model(), Some(t), (None, None), false).unwrap();
    assert_eq!(
        (quote(a).margin_bps, quote(a).margin_source),
        (Some(2_500), MarginSource::Tenant)
    );
    assert_eq!(quote(a).price.rates.input, per_mtok("1.25"));
    assert_eq!(
        (quote(b).margin_bps, quote(b).margin_source),
        (Some(500), MarginSource::Plan)
    );
    assert_eq!(quote(b).price.rates.output, per_mtok("2.1"));
    assert_eq!(
        (quote(c).margin_bps, quote(c).margin_source),
        (Some(1_000), MarginSource::Default)
    );
    // A plan without a margin of its own falls through to the default.
    assert_eq!(quote(d).margin_source, MarginSource::Default);
    assert_eq!(
        quote(c).cost,
        spec().cost,
        "the cost is the provider's, whatever the margin"
    );
    assert_eq!(quote(c).price_version, 1);
}

#[test]
fn clearing_a_margin_falls_back_and_no_margin_at_all_sells_at_cost() {
    let a = tenant(1);
    let book = book(vec![
        priced(1, spec()),
        margin(MarginScope::Tenant { tenant_id: a }, Some(2_500)),
        margin(MarginScope::Tenant { tenant_id: a }, None),
    ]);
    let quote = book.quote(&model(), Some(a), (None, None), false).unwrap();
    assert_eq!(
        (quote.margin_bps, quote.margin_source),
        (Some(0), MarginSource::None)
    );
    assert_eq!(quote.price.rates, spec().cost);
}

#[test]
fn a_direct_sell_price_ignores_the_margin_and_the_enterprise_mode_charges_cost() {
    let mut s = spec();
    s.sell = Some(Rates::flat(per_mtok("3"), per_mtok("9")));
    let book = book(vec![
        priced(1, s.clone()),
        margin(MarginScope::Default, Some(5_000)),
    ]);
    let quote = book
        .quote(&model(), Some(tenant(1)), (None, None), false)
        .unwrap();
    assert_eq!(quote.price.rates, s.sell.unwrap());
    assert_eq!(
        (quote.margin_bps, quote.margin_source),
        (None, MarginSource::DirectSellPrice)
    );
    let at_cost = book
        .quote(&model(), Some(tenant(1)), (None, None), true)
        .unwrap();
    assert_eq!(at_cost.price.rates, s.cost);
    assert_eq!(at_cost.margin_source, MarginSource::AtCost);
}

#[test]
fn an_image_is_priced_by_the_most_specific_entry_that_fits() {
    let credits = |s: &str| Rate::from_pico_per_token(crate::Credits::parse(s).unwrap().pico());
    let mut s = spec();
    s.cost.image = credits("0.04");
    s.images = vec![
        ImagePrice {
            size: Some("1024x1024".into()),
            quality: None,
            cost: credits("0.05"),
            sell: None,
        },
        ImagePrice {
            size: Some("1024x1024".into()),
            quality: Some("hd".into()),
            cost: credits("0.08"),
            sell: Some(credits("0.1")),
        },
        ImagePrice {
            size: None,
            quality: Some("hd".into()),
            cost: credits("0.09"),
            sell: None,
        },
    ];
    let book = book(vec![
        priced(1, s),
        margin(MarginScope::Default, Some(5_000)),
    ]);
    let image = |size, quality| {
        let q = book
            .quote(&model(), Some(tenant(1)), (size, quality), false)
            .unwrap();
        (q.cost.image, q.price.rates.image)
    };
    assert_eq!(
        image(Some("1024x1024"), Some("hd")),
        (credits("0.08"), credits("0.1"))
    );
    assert_eq!(
        image(Some("1024x1024"), Some("standard")),
        (credits("0.05"), credits("0.075"))
    );
    assert_eq!(
        image(Some("512x512"), Some("hd")),
        (credits("0.09"), credits("0.135"))
    );
    // Nothing fits: the model's default per-image cost.
    assert_eq!(
        image(Some("512x512"), None),
        (credits("0.04"), credits("0.06"))
    );
}

#[test]
fn the_history_keeps_every_version() {
    let mut dearer = spec();
    dearer.cost.input = per_mtok("5");
    let book = book(vec![priced(1, spec()), priced(2, dearer.clone())]);
    let versions: Vec<_> = book.models[&model()]
        .iter()
        .map(|v| (v.version, v.spec.cost.input))
        .collect();
    assert_eq!(versions, vec![(1, per_mtok("1")), (2, per_mtok("5"))]);
    assert_eq!(
        book.quote(&model(), Some(tenant(1)), (None, None), false)
            .unwrap()
            .price_version,
        2
    );
}

#[test]
fn events_round_trip_through_json() {
    for event in [
        priced(1, spec()),
        margin(MarginScope::Plan { plan: "pro".into() }, Some(10)),
        margin(
            MarginScope::Tenant {
                tenant_id: tenant(1),
            },
            None,
        ),
        PriceBookEvent::TenantPlanSet {
            tenant_id: tenant(1),
            plan: None,
            at: at(3),
        },
    ] {
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            serde_json::from_value::<PriceBookEvent>(json).unwrap(),
            event
        );
    }
}

fn alias_set(alias: &str) -> PriceBookEvent {
    PriceBookEvent::ModelAliasSet {
        alias: alias.into(),
        model: model(),
        at: at(60),
    }
}

#[test]
fn an_alias_names_a_priced_model_and_resolves_to_it() {
    BookTest::with(())
        .given(vec![priced(1, spec())])
        .when(PriceBookCommand::SetModelAlias {
            alias: "gpt-4o-mini".into(),
            model: model(),
            at: at(60),
        })
        .then_expect_events(vec![alias_set("gpt-4o-mini")]);
    let book = book(vec![priced(1, spec()), alias_set("gpt-4o-mini")]);
    assert_eq!(book.resolve("gpt-4o-mini"), "openai/gpt-4o-mini");
    assert_eq!(book.resolve("openai/gpt-4o-mini"), "openai/gpt-4o-mini");
    assert_eq!(book.resolve("gpt-5"), "gpt-5");
}

#[test]
fn an_alias_must_be_a_bare_name_of_a_priced_model() {
    let refuse = |given: Vec<PriceBookEvent>, alias: &str| {
        let refused = book(given).decide(PriceBookCommand::SetModelAlias {
            alias: alias.into(),
            model: model(),
            at: at(60),
        });
        assert!(
            matches!(refused, Err(PriceBookError::Invalid(_))),
            "{alias}: {refused:?}"
        );
    };
    refuse(Vec::new(), "gpt-4o-mini");
    for bad in [
        "",
        "openai/gpt-4o-mini",
        "gpt 4o",
        &"x".repeat(ALIAS_MAX_CHARS + 1),
    ] {
        refuse(vec![priced(1, spec())], bad);
    }
}

#[test]
fn setting_the_same_alias_again_is_nothing_and_removing_it_unresolves_it() {
    BookTest::with(())
        .given(vec![priced(1, spec()), alias_set("mini")])
        .when(PriceBookCommand::SetModelAlias {
            alias: "mini".into(),
            model: model(),
            at: at(61),
        })
        .then_expect_events(Vec::new());
    BookTest::with(())
        .given(vec![priced(1, spec()), alias_set("mini")])
        .when(PriceBookCommand::RemoveModelAlias {
            alias: "mini".into(),
            at: at(62),
        })
        .then_expect_events(vec![PriceBookEvent::ModelAliasRemoved {
            alias: "mini".into(),
            at: at(62),
        }]);
    BookTest::with(())
        .given(vec![priced(1, spec())])
        .when(PriceBookCommand::RemoveModelAlias {
            alias: "mini".into(),
            at: at(62),
        })
        .then_expect_error(PriceBookError::UnknownAlias("mini".into()));
    let removed = PriceBookEvent::ModelAliasRemoved {
        alias: "mini".into(),
        at: at(62),
    };
    let book = book(vec![priced(1, spec()), alias_set("mini"), removed]);
    assert_eq!(book.resolve("mini"), "mini");
}

#[test]
fn alias_events_replay_from_their_stored_json() {
    // As stored: the event's JSON, decoded on every load of the book.
    let stored = [
        serde_json::to_value(priced(1, spec())).unwrap(),
        serde_json::json!({"ModelAliasSet": {"alias": "mini", "model": "openai/gpt-4o-mini", "at": "2026-01-01T00:01:00Z"}}),
        serde_json::json!({"ModelAliasSet": {"alias": "old", "model": "openai/gpt-4o-mini", "at": "2026-01-01T00:01:00Z"}}),
        serde_json::json!({"ModelAliasRemoved": {"alias": "old", "at": "2026-01-01T00:01:02Z"}}),
    ];
    let events: Vec<PriceBookEvent> = stored
        .into_iter()
        .map(|json| serde_json::from_value(json).unwrap())
        .collect();
    assert_eq!(events[1], alias_set("mini"));
    assert_eq!(events[1].event_type(), "ModelAliasSet");
    assert_eq!(events[3].event_type(), "ModelAliasRemoved");
    let book = book(events);
    assert_eq!(book.aliases.len(), 1);
    assert_eq!(book.resolve("mini"), "openai/gpt-4o-mini");
    // A book saved before aliases existed still loads.
    let mut old = serde_json::to_value(PriceBook::default()).unwrap();
    old.as_object_mut().unwrap().remove("aliases");
    assert!(serde_json::from_value::<PriceBook>(old)
        .unwrap()
        .aliases
        .is_empty());
}
