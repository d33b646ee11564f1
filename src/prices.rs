//! The operator's side of the price book (`domain::price_book`): price specs as
//! the admin API and the CLI take them, and the commands that change the book.
//!
//! The book is one event stream shared by every hub process. A write loads it,
//! decides, and appends at the next sequence number; if another process appended
//! first, the append conflicts and the write is retried on the new state. Price
//! changes are rare and the book is small, so loading it whole is cheap.

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::store::{Store, StoreError};
use domain::price_book::{
    ImagePrice, MarginScope, ModelPriceSpec, PriceBook, PriceBookCommand, PriceBookError,
    PriceBookEvent,
};
use domain::pricing::DEFAULT_MAX_OUTPUT_TOKENS;
use domain::{ChangedBy, Credits, ModelId, Rate, Rates, TenantId};
use serde::Deserialize;

/// Times a price book write is retried after another process wrote first.
const PRICE_BOOK_WRITE_ATTEMPTS: usize = 5;

/// A model's price as the operator writes it: decimal strings, credits per million
/// tokens (per image for images). The top-level rates are the provider's cost;
/// the tenant pays `sell` when given, else the cost with the tenant's margin
/// (docs/billing.md, "Price book").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceSpec {
    pub input_per_mtok: String,
    pub output_per_mtok: String,
    /// Defaults to the input rate.
    pub cache_read_per_mtok: Option<String>,
    /// Defaults to the input rate.
    pub cache_write_per_mtok: Option<String>,
    /// Credits per generated image (image models) when no `images` entry fits.
    pub per_image: Option<String>,
    /// Sell rates given directly (no margin applies to them).
    pub sell: Option<SellSpec>,
    /// Per-image prices by size and quality.
    pub images: Option<Vec<ImagePriceSpec>>,
    /// Model ids to try, in order, when this one fails (429, 5xx, timeouts).
    pub fallbacks: Option<Vec<String>>,
    pub max_output_tokens: Option<u32>,
}

/// Sell rates given directly. Cache rates default to the sell input rate, the
/// per-image price to the cost's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SellSpec {
    pub input_per_mtok: String,
    pub output_per_mtok: String,
    pub cache_read_per_mtok: Option<String>,
    pub cache_write_per_mtok: Option<String>,
    pub per_image: Option<String>,
}

/// One image variant's price; an absent `size` or `quality` fits any.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImagePriceSpec {
    pub size: Option<String>,
    pub quality: Option<String>,
    /// The provider's cost per image, credits.
    pub per_image: String,
    /// The sell price per image given directly; absent: the cost with the margin.
    pub sell_per_image: Option<String>,
}

fn per_mtok(field: &str, raw: &str) -> Result<Rate, PriceError> {
    Rate::parse_per_million(raw).map_err(|e| PriceError::Invalid(format!("{field}: {e}")))
}

fn per_image(field: &str, raw: &str) -> Result<Rate, PriceError> {
    let credits = Credits::parse(raw).map_err(|e| PriceError::Invalid(format!("{field}: {e}")))?;
    if credits.is_negative() {
        return Err(PriceError::Invalid(format!(
            "{field}: prices cannot be negative"
        )));
    }
    Ok(Rate::from_pico_per_token(credits.pico()))
}

/// Parses one set of rates; `image_default` is the per-image rate when none is given.
fn rates(
    prefix: &str,
    input: &str,
    output: &str,
    cache_read: Option<&str>,
    cache_write: Option<&str>,
    image: Option<&str>,
    image_default: Rate,
) -> Result<Rates, PriceError> {
    let field = |name: &str| format!("{prefix}{name}");
    let input = per_mtok(&field("input_per_mtok"), input)?;
    let optional = |name: &str, raw: Option<&str>| -> Result<Rate, PriceError> {
        raw.map_or(Ok(input), |r| per_mtok(&field(name), r))
    };
    Ok(Rates {
        input,
        output: per_mtok(&field("output_per_mtok"), output)?,
        cache_read: optional("cache_read_per_mtok", cache_read)?,
        cache_write: optional("cache_write_per_mtok", cache_write)?,
        image: image.map_or(Ok(image_default), |r| per_image(&field("per_image"), r))?,
    })
}

impl PriceSpec {
    pub(crate) fn to_model_spec(&self) -> Result<ModelPriceSpec, PriceError> {
        let cost = rates(
            "",
            &self.input_per_mtok,
            &self.output_per_mtok,
            self.cache_read_per_mtok.as_deref(),
            self.cache_write_per_mtok.as_deref(),
            self.per_image.as_deref(),
            Rate::default(),
        )?;
        let sell = self
            .sell
            .as_ref()
            .map(|s| {
                rates(
                    "sell.",
                    &s.input_per_mtok,
                    &s.output_per_mtok,
                    s.cache_read_per_mtok.as_deref(),
                    s.cache_write_per_mtok.as_deref(),
                    s.per_image.as_deref(),
                    cost.image,
                )
            })
            .transpose()?;
        let images = self
            .images
            .iter()
            .flatten()
            .map(|i| {
                Ok(ImagePrice {
                    size: i.size.clone(),
                    quality: i.quality.clone(),
                    cost: per_image("images.per_image", &i.per_image)?,
                    sell: i
                        .sell_per_image
                        .as_deref()
                        .map(|r| per_image("images.sell_per_image", r))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>, PriceError>>()?;
        Ok(ModelPriceSpec {
            cost,
            sell,
            images,
            max_output_tokens: self.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
            fallbacks: self.fallbacks.clone().unwrap_or_default(),
        })
    }
}

/// Why a price book write was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PriceError {
    /// A price, rate or model id that does not parse.
    #[error("{0}")]
    Invalid(String),
    /// The price book's rules refused the command.
    #[error(transparent)]
    Book(#[from] PriceBookError),
    #[error("provider {0:?} does not exist; add it first (POST /admin/v1/providers or `aigne-hub provider add`)")]
    UnknownProvider(String),
    /// Other processes appended first on every attempt.
    #[error("the price book kept changing under this write; try again")]
    KeptChanging,
    /// The catalog, refreshed after the write, does not show the new price.
    #[error("price not visible after write")]
    NotVisible,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes to the price book: what a write needs (the store, the catalog it
/// refreshes, business time) and nothing more. `Hub::price_book` lends one.
pub(crate) struct PriceBookWriter<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) catalog: &'a Catalog,
    pub(crate) clock: &'a Clock,
    /// Who is writing: recorded beside each event it appends.
    pub(crate) actor: ChangedBy,
}

impl PriceBookWriter<'_> {
    /// Decides `command` on the current price book and appends what it decides;
    /// retried when another process wrote first. Refreshes the catalog after a write.
    pub(crate) async fn execute_price_book(
        &self,
        command: PriceBookCommand,
    ) -> Result<Vec<PriceBookEvent>, PriceError> {
        for _ in 0..PRICE_BOOK_WRITE_ATTEMPTS {
            let stored = self.store.price_book_events().await?;
            let next_sequence = stored.last().map_or(1, |s| s.sequence + 1);
            let mut book = PriceBook::default();
            for stored in stored {
                book.apply_event(stored.event);
            }
            let events = book.decide(command.clone())?;
            if events.is_empty() {
                return Ok(events);
            }
            match self
                .store
                .append_price_book(next_sequence, &events, chrono::Utc::now(), &self.actor)
                .await
            {
                Ok(()) => {
                    self.catalog.refresh().await?;
                    return Ok(events);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PriceError::KeptChanging)
    }

    /// Sets a model's price; returns its current price version (unchanged when the
    /// price is the same as before).
    pub(crate) async fn set_price(&self, model: &str, spec: &PriceSpec) -> Result<i64, PriceError> {
        let model = ModelId::parse(model).map_err(|e| PriceError::Invalid(e.to_string()))?;
        let spec = spec.to_model_spec()?;
        self.check_provider_exists(model.provider()).await?;
        self.execute_price_book(PriceBookCommand::SetModelPrice {
            model: model.clone(),
            spec,
            at: self.clock.now(),
        })
        .await?;
        let snapshot = self.catalog.snapshot();
        snapshot
            .book
            .current(&model)
            .map(|c| c.version)
            .ok_or(PriceError::NotVisible)
    }

    /// A price for a provider the hub does not have would never be served: the
    /// model would only ever answer "does not exist". Read from the store, not
    /// the catalog, so a provider another process just added counts.
    async fn check_provider_exists(&self, provider: &str) -> Result<(), PriceError> {
        let providers = self.store.list_providers().await?;
        if providers.iter().any(|p| p.name == provider) {
            return Ok(());
        }
        Err(PriceError::UnknownProvider(provider.to_string()))
    }

    /// Makes a bare name (`gpt-4o-mini`) stand for a priced `provider/model`.
    pub(crate) async fn set_alias(&self, alias: &str, model: &str) -> Result<(), PriceError> {
        let model =
            ModelId::parse(model).map_err(|e| PriceError::Invalid(format!("model: {e}")))?;
        self.execute_price_book(PriceBookCommand::SetModelAlias {
            alias: alias.to_string(),
            model,
            at: self.clock.now(),
        })
        .await
        .map(drop)
    }

    /// Removes an alias; 404 when there is none of that name.
    pub(crate) async fn remove_alias(&self, alias: &str) -> Result<(), PriceError> {
        self.execute_price_book(PriceBookCommand::RemoveModelAlias {
            alias: alias.to_string(),
            at: self.clock.now(),
        })
        .await
        .map(drop)
    }

    pub(crate) async fn set_margin(
        &self,
        scope: MarginScope,
        margin_bps: Option<u32>,
    ) -> Result<(), PriceError> {
        self.execute_price_book(PriceBookCommand::SetMargin {
            scope,
            margin_bps,
            at: self.clock.now(),
        })
        .await
        .map(drop)
    }

    pub(crate) async fn set_tenant_plan(
        &self,
        tenant_id: TenantId,
        plan: Option<String>,
    ) -> Result<(), PriceError> {
        self.execute_price_book(PriceBookCommand::SetTenantPlan {
            tenant_id,
            plan,
            at: self.clock.now(),
        })
        .await
        .map(drop)
    }

    /// Moves the price table of hubs from before the price book into it, once: when
    /// the book is empty and the table is not. Each price keeps its version, so
    /// charges recorded at it find it in the history.
    pub(crate) async fn import_price_table(&self) -> Result<usize, PriceError> {
        if !self.store.price_book_events().await?.is_empty() {
            return Ok(0);
        }
        let mut imported = 0;
        for row in self.store.list_prices().await? {
            let (Ok(model), Some(spec)) = (
                ModelId::parse(&row.model),
                crate::catalog::spec_from_row(&row),
            ) else {
                tracing::error!(model = %row.model, "stored price is malformed; not imported");
                continue;
            };
            let at = chrono::DateTime::parse_from_rfc3339(&row.updated_at)
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(|_| self.clock.now());
            let command = PriceBookCommand::ImportModelPrice {
                model,
                version: row.version,
                spec,
                at,
            };
            match self.execute_price_book(command).await {
                Ok(events) => imported += events.len(),
                // Another process is importing the same table: its import stands.
                Err(
                    PriceError::Book(PriceBookError::StaleImport { .. }) | PriceError::KeptChanging,
                ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(imported)
    }
}
