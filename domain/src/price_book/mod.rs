//! The price book: what each model costs the operator (the provider's rates), what
//! it is sold for, and the margins that turn one into the other, per tenant or plan.
//!
//! It is an event-sourced aggregate of its own (one stream, id [`PRICE_BOOK_ID`]),
//! so every price a request was ever charged at can be found again: a model's
//! price changes only by a new `ModelPriced` event with the next version, and a
//! charge records the version, the cost rates, the sell rates and the margin it
//! used (in the tenant's events). Old charges never change when prices do.
//!
//! Sell rates are either given directly or derived from the cost with a margin in
//! basis points, the first that is set of: the tenant's margin, its plan's margin,
//! the default margin, 0. A derived rate is rounded up to the whole pico-credit per
//! token (or per image), so the hub never sells below cost + margin; the rounded
//! rate is what the request records, so a replay never recomputes it.

mod commands;
mod events;
#[cfg(test)]
mod tests;

pub use commands::PriceBookCommand;
pub use events::{PriceBookEvent, PRICE_BOOK_EVENT_VERSION};

use crate::ids::{ModelId, TenantId};
use crate::money::Rate;
pub use crate::pricing::MarginSource;
use crate::pricing::{ChargeTerms, ModelPrice, Rates, MAX_OUTPUT_TOKENS_LIMIT};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The one price book's aggregate id.
pub const PRICE_BOOK_ID: &str = "default";
/// Basis points in one whole (100%).
pub const BPS_PER_WHOLE: u32 = 10_000;
/// Largest margin accepted: 1000% (bounds a mistyped margin's damage).
pub const MARGIN_BPS_MAX: u32 = 100_000;
/// Per-image price entries one model may have (sizes × qualities).
pub const IMAGE_PRICES_MAX: usize = 32;
/// Fallback models one model may list.
pub const FALLBACKS_MAX: usize = 4;
/// Characters of a plan name, a size or a quality.
pub const NAME_MAX_CHARS: usize = 64;
/// Characters of a model alias: longer than any provider's model name.
pub const ALIAS_MAX_CHARS: usize = 128;
/// Aliases the book may hold: every one is listed in `/v1/models`.
pub const ALIASES_MAX: usize = 1_000;

/// The price of one generated image of a given size and quality. `None` in
/// `size` or `quality` matches any value of the request (the more named fields,
/// the more specific the entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePrice {
    pub size: Option<String>,
    pub quality: Option<String>,
    /// What the provider charges per image, pico-credits.
    pub cost: Rate,
    /// The sell price given directly; `None`: the cost with the margin.
    pub sell: Option<Rate>,
}

/// A model's price as the operator sets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPriceSpec {
    /// The provider's rates (`image`: per image when no `images` entry matches).
    pub cost: Rates,
    /// Sell rates given directly; `None`: derived from `cost` with the margin.
    pub sell: Option<Rates>,
    pub images: Vec<ImagePrice>,
    pub max_output_tokens: u32,
    /// Model ids tried, in order, when this one fails.
    pub fallbacks: Vec<String>,
}

/// Who a margin applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum MarginScope {
    /// Every tenant without a margin of its own or of its plan.
    Default,
    Plan {
        plan: String,
    },
    Tenant {
        tenant_id: TenantId,
    },
}

/// One version of a model's price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    pub version: i64,
    pub spec: ModelPriceSpec,
    pub at: DateTime<Utc>,
}

/// What one request of one tenant pays for one model, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub price_version: i64,
    /// Sell rates (what the tenant is charged) and the output cap.
    pub price: ModelPrice,
    pub cost: Rates,
    /// The margin applied; `None` when the sell rates were given directly.
    pub margin_bps: Option<u32>,
    pub margin_source: MarginSource,
}

impl Quote {
    /// What a charge at this quote records besides its sell rates.
    pub fn terms(&self) -> ChargeTerms {
        ChargeTerms {
            cost_rates: self.cost,
            margin_bps: self.margin_bps,
            margin_source: self.margin_source,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceBook {
    /// Every version of every model's price, oldest first.
    pub models: BTreeMap<ModelId, Vec<PriceVersion>>,
    pub default_margin_bps: Option<u32>,
    pub plan_margins_bps: BTreeMap<String, u32>,
    pub tenant_margins_bps: BTreeMap<TenantId, u32>,
    pub tenant_plans: BTreeMap<TenantId, String>,
    /// Bare model names apps send (`gpt-4o-mini`) and the model each stands for.
    #[serde(default)]
    pub aliases: BTreeMap<String, ModelId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceBookError {
    #[error("{0}")]
    Invalid(String),
    #[error("no model alias {0:?}")]
    UnknownAlias(String),
    #[error("the price book already has version {current} of {model}; an import must be newer")]
    StaleImport { model: String, current: i64 },
}

impl Rate {
    /// This rate with `margin_bps` added, rounded up to the whole pico-credit.
    pub fn with_margin(self, margin_bps: u32) -> Rate {
        let whole = BPS_PER_WHOLE as i128;
        let marked_up = self.pico_per_token() * (whole + margin_bps as i128);
        Rate::from_pico_per_token(
            marked_up.div_euclid(whole) + i128::from(marked_up.rem_euclid(whole) != 0),
        )
    }
}

impl Rates {
    /// Every rate with `margin_bps` added (each rounded up on its own).
    pub fn with_margin(&self, margin_bps: u32) -> Rates {
        Rates {
            input: self.input.with_margin(margin_bps),
            output: self.output.with_margin(margin_bps),
            cache_read: self.cache_read.with_margin(margin_bps),
            cache_write: self.cache_write.with_margin(margin_bps),
            image: self.image.with_margin(margin_bps),
        }
    }
}

impl ImagePrice {
    fn matches(&self, size: Option<&str>, quality: Option<&str>) -> bool {
        let fits = |named: &Option<String>, asked: Option<&str>| {
            named.as_deref().is_none_or(|n| Some(n) == asked)
        };
        fits(&self.size, size) && fits(&self.quality, quality)
    }

    fn specificity(&self) -> u8 {
        u8::from(self.size.is_some()) * 2 + u8::from(self.quality.is_some())
    }
}

impl ModelPriceSpec {
    /// The image price entry that fits a request best: among the entries that
    /// match, the one naming the most (size counts before quality).
    pub fn image_price(&self, size: Option<&str>, quality: Option<&str>) -> Option<&ImagePrice> {
        self.images
            .iter()
            .filter(|p| p.matches(size, quality))
            .max_by_key(|p| p.specificity())
    }

    fn validate(&self, model: &ModelId) -> Result<(), PriceBookError> {
        let invalid = |m: String| Err(PriceBookError::Invalid(m));
        if self.max_output_tokens == 0 || self.max_output_tokens > MAX_OUTPUT_TOKENS_LIMIT {
            return invalid(format!(
                "max_output_tokens must be 1 to {MAX_OUTPUT_TOKENS_LIMIT}"
            ));
        }
        if self.fallbacks.len() > FALLBACKS_MAX {
            return invalid(format!("at most {FALLBACKS_MAX} fallbacks"));
        }
        for fallback in &self.fallbacks {
            let id = ModelId::parse(fallback)
                .map_err(|e| PriceBookError::Invalid(format!("fallbacks: {e}")))?;
            if &id == model {
                return invalid("a model cannot be its own fallback".into());
            }
        }
        if self.images.len() > IMAGE_PRICES_MAX {
            return invalid(format!("at most {IMAGE_PRICES_MAX} image prices"));
        }
        for (i, price) in self.images.iter().enumerate() {
            for name in [&price.size, &price.quality].into_iter().flatten() {
                if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
                    return invalid(format!(
                        "image sizes and qualities are 1 to {NAME_MAX_CHARS} characters"
                    ));
                }
            }
            if self.images[..i]
                .iter()
                .any(|p| p.size == price.size && p.quality == price.quality)
            {
                return invalid("two image prices for the same size and quality".into());
            }
        }
        let rates = std::iter::once(&self.cost).chain(self.sell.as_ref());
        let negative = rates
            .flat_map(|r| [r.input, r.output, r.cache_read, r.cache_write, r.image])
            .chain(
                self.images
                    .iter()
                    .flat_map(|p| std::iter::once(p.cost).chain(p.sell)),
            )
            .any(|r| r.pico_per_token() < 0);
        if negative {
            return invalid("prices cannot be negative".into());
        }
        Ok(())
    }
}

fn validate_name(what: &str, name: &str) -> Result<(), PriceBookError> {
    if name.trim().is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(PriceBookError::Invalid(format!(
            "{what} must be 1 to {NAME_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

/// An alias is a bare name: no `/` (that would be a `provider/model` id), no
/// blanks or control characters.
fn validate_alias(alias: &str) -> Result<(), PriceBookError> {
    let fine = |c: char| !c.is_whitespace() && !c.is_control() && c != '/';
    if alias.is_empty() || alias.chars().count() > ALIAS_MAX_CHARS || !alias.chars().all(fine) {
        return Err(PriceBookError::Invalid(format!(
            "an alias is 1 to {ALIAS_MAX_CHARS} characters without `/` or blanks (a bare model name such as gpt-4o-mini)"
        )));
    }
    Ok(())
}

impl PriceBook {
    pub fn current(&self, model: &ModelId) -> Option<&PriceVersion> {
        self.models.get(model).and_then(|versions| versions.last())
    }

    /// The margin that applies to a tenant (`None`: a tenant with no margin or
    /// plan of its own), and where it came from.
    pub fn margin_for(&self, tenant_id: Option<TenantId>) -> (u32, MarginSource) {
        if let Some(bps) = tenant_id.and_then(|t| self.tenant_margins_bps.get(&t)) {
            return (*bps, MarginSource::Tenant);
        }
        let plan_margin = tenant_id
            .and_then(|t| self.tenant_plans.get(&t))
            .and_then(|plan| self.plan_margins_bps.get(plan));
        if let Some(bps) = plan_margin {
            return (*bps, MarginSource::Plan);
        }
        match self.default_margin_bps {
            Some(bps) => (bps, MarginSource::Default),
            None => (0, MarginSource::None),
        }
    }

    /// What `tenant_id` pays for `model` now (`None`: a tenant with no margin or
    /// plan of its own). `image`: the request's size and quality (image requests).
    /// `at_cost`: charge the provider's cost (the `enterprise` mode).
    pub fn quote(
        &self,
        model: &ModelId,
        tenant_id: Option<TenantId>,
        image: (Option<&str>, Option<&str>),
        at_cost: bool,
    ) -> Option<Quote> {
        let current = self.current(model)?;
        let spec = &current.spec;
        let mut cost = spec.cost;
        let image_price = spec.image_price(image.0, image.1);
        if let Some(p) = image_price {
            cost.image = p.cost;
        }
        let (sell, margin_bps, margin_source) = if at_cost {
            (cost, Some(0), MarginSource::AtCost)
        } else if let Some(direct) = spec.sell {
            let mut sell = direct;
            if let Some(p) = image_price {
                // An image entry without its own sell price follows the margin rule.
                let (bps, _) = self.margin_for(tenant_id);
                sell.image = p.sell.unwrap_or_else(|| p.cost.with_margin(bps));
            }
            (sell, None, MarginSource::DirectSellPrice)
        } else {
            let (bps, source) = self.margin_for(tenant_id);
            let mut sell = cost.with_margin(bps);
            if let Some(direct) = image_price.and_then(|p| p.sell) {
                sell.image = direct;
            }
            (sell, Some(bps), source)
        };
        Some(Quote {
            price_version: current.version,
            price: ModelPrice {
                rates: sell,
                max_output_tokens: spec.max_output_tokens,
            },
            cost,
            margin_bps,
            margin_source,
        })
    }

    pub fn decide(&self, command: PriceBookCommand) -> Result<Vec<PriceBookEvent>, PriceBookError> {
        match command {
            PriceBookCommand::SetModelPrice { model, spec, at } => {
                spec.validate(&model)?;
                let current = self.current(&model);
                if current.is_some_and(|c| c.spec == spec) {
                    // The same price again is not a new version.
                    return Ok(Vec::new());
                }
                let version = current.map_or(1, |c| c.version + 1);
                Ok(vec![PriceBookEvent::ModelPriced {
                    model,
                    version,
                    spec,
                    at,
                }])
            }
            PriceBookCommand::ImportModelPrice {
                model,
                version,
                spec,
                at,
            } => {
                spec.validate(&model)?;
                if let Some(current) = self.current(&model) {
                    if current.version >= version {
                        return Err(PriceBookError::StaleImport {
                            model: model.to_string(),
                            current: current.version,
                        });
                    }
                }
                Ok(vec![PriceBookEvent::ModelPriced {
                    model,
                    version,
                    spec,
                    at,
                }])
            }
            PriceBookCommand::SetMargin {
                scope,
                margin_bps,
                at,
            } => {
                if let MarginScope::Plan { plan } = &scope {
                    validate_name("a plan name", plan)?;
                }
                if margin_bps.is_some_and(|bps| bps > MARGIN_BPS_MAX) {
                    return Err(PriceBookError::Invalid(format!(
                        "margin_bps must be 0 to {MARGIN_BPS_MAX}"
                    )));
                }
                if self.margin_of(&scope) == margin_bps {
                    return Ok(Vec::new());
                }
                Ok(vec![PriceBookEvent::MarginSet {
                    scope,
                    margin_bps,
                    at,
                }])
            }
            PriceBookCommand::SetTenantPlan {
                tenant_id,
                plan,
                at,
            } => {
                if let Some(plan) = &plan {
                    validate_name("a plan name", plan)?;
                }
                if self.tenant_plans.get(&tenant_id) == plan.as_ref() {
                    return Ok(Vec::new());
                }
                Ok(vec![PriceBookEvent::TenantPlanSet {
                    tenant_id,
                    plan,
                    at,
                }])
            }
            PriceBookCommand::SetModelAlias { alias, model, at } => {
                self.decide_alias(alias, model, at)
            }
            PriceBookCommand::RemoveModelAlias { alias, at } => {
                self.decide_alias_removal(alias, at)
            }
        }
    }

    fn decide_alias(
        &self,
        alias: String,
        model: ModelId,
        at: DateTime<Utc>,
    ) -> Result<Vec<PriceBookEvent>, PriceBookError> {
        validate_alias(&alias)?;
        if self.current(&model).is_none() {
            return Err(PriceBookError::Invalid(format!(
                "{model} has no price: an alias must name a priced model"
            )));
        }
        if self.aliases.get(&alias) == Some(&model) {
            return Ok(Vec::new());
        }
        if !self.aliases.contains_key(&alias) && self.aliases.len() >= ALIASES_MAX {
            return Err(PriceBookError::Invalid(format!(
                "at most {ALIASES_MAX} aliases"
            )));
        }
        Ok(vec![PriceBookEvent::ModelAliasSet { alias, model, at }])
    }

    fn decide_alias_removal(
        &self,
        alias: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<PriceBookEvent>, PriceBookError> {
        if !self.aliases.contains_key(&alias) {
            return Err(PriceBookError::UnknownAlias(alias));
        }
        Ok(vec![PriceBookEvent::ModelAliasRemoved { alias, at }])
    }

    /// The model a requested name stands for: itself, or the model its alias names.
    pub fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, ModelId::as_str)
    }

    fn margin_of(&self, scope: &MarginScope) -> Option<u32> {
        match scope {
            MarginScope::Default => self.default_margin_bps,
            MarginScope::Plan { plan } => self.plan_margins_bps.get(plan).copied(),
            MarginScope::Tenant { tenant_id } => self.tenant_margins_bps.get(tenant_id).copied(),
        }
    }

    pub fn apply_event(&mut self, event: PriceBookEvent) {
        match event {
            PriceBookEvent::ModelPriced {
                model,
                version,
                spec,
                at,
            } => {
                self.models
                    .entry(model)
                    .or_default()
                    .push(PriceVersion { version, spec, at });
            }
            PriceBookEvent::MarginSet {
                scope, margin_bps, ..
            } => match (scope, margin_bps) {
                (MarginScope::Default, bps) => self.default_margin_bps = bps,
                (MarginScope::Plan { plan }, Some(bps)) => {
                    self.plan_margins_bps.insert(plan, bps);
                }
                (MarginScope::Plan { plan }, None) => {
                    self.plan_margins_bps.remove(&plan);
                }
                (MarginScope::Tenant { tenant_id }, Some(bps)) => {
                    self.tenant_margins_bps.insert(tenant_id, bps);
                }
                (MarginScope::Tenant { tenant_id }, None) => {
                    self.tenant_margins_bps.remove(&tenant_id);
                }
            },
            PriceBookEvent::TenantPlanSet {
                tenant_id, plan, ..
            } => match plan {
                Some(plan) => {
                    self.tenant_plans.insert(tenant_id, plan);
                }
                None => {
                    self.tenant_plans.remove(&tenant_id);
                }
            },
            PriceBookEvent::ModelAliasSet { alias, model, .. } => {
                self.aliases.insert(alias, model);
            }
            PriceBookEvent::ModelAliasRemoved { alias, .. } => {
                self.aliases.remove(&alias);
            }
        }
    }
}

impl Aggregate for PriceBook {
    const TYPE: &'static str = "PriceBook";
    type Command = PriceBookCommand;
    type Event = PriceBookEvent;
    type Error = PriceBookError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(event);
    }
}
