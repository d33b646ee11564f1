//! Providers, their credentials and model prices, cached in memory for the
//! request path.
//!
//! Providers and credentials come from their tables; prices from the price book's
//! events (`domain::price_book`). Each process reloads them after its own writes,
//! when another writer's change is reported (`store::Change`: at once on
//! PostgreSQL), whenever the store's catalog version differs from the one loaded
//! (checked every `catalog_refresh_ms`, and before a model is refused as unknown:
//! see [`Catalog::refresh_if_changed`]). A request reads one immutable snapshot,
//! so a price change never splits a request in two.

use crate::crypto::{credential_binding, SecretBox};
use crate::providers::{Credential, Provider, ProviderKind};
use crate::store::{PriceRow, Store, StoreError};
use domain::price_book::{ImagePrice, ModelPriceSpec, PriceBook};
use domain::{ChargeTerms, ModelId, ModelPrice, Rate, Rates, TenantId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// A model the hub cannot serve, with the closest ids it can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnknownModel {
    pub model: String,
    pub suggestions: Vec<String>,
}

impl std::fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the model {:?} does not exist or has no price",
            self.model
        )?;
        if !self.suggestions.is_empty() {
            write!(f, "; did you mean {}?", self.suggestions.join(", "))?;
        }
        write!(f, "; list models with GET /v1/models")
    }
}

/// Fallback candidates a model may list at most (bounds a request's attempts).
pub(crate) const FALLBACKS_MAX: usize = domain::price_book::FALLBACKS_MAX;

/// A model with its price. In [`CatalogData::models`] the price is the one a
/// tenant without a margin or plan of its own pays; [`CatalogData::candidates_for`]
/// prices each model for the tenant asking.
#[derive(Clone, Debug)]
pub(crate) struct PricedModel {
    pub model: ModelId,
    /// Sell rates and output cap.
    pub price: ModelPrice,
    /// The provider's cost rates and the margin that led to `price`.
    pub terms: ChargeTerms,
    pub price_version: i64,
    /// Model ids tried in order when this one fails.
    pub fallbacks: Vec<String>,
}

/// One usable credential of a provider.
#[derive(Clone, Debug)]
pub(crate) struct CredentialEntry {
    pub credential_id: String,
    pub weight: u32,
    pub credential: Credential,
    pub disabled_reason: Option<String>,
}

/// A provider with all its credentials.
#[derive(Clone, Debug)]
pub(crate) struct ProviderEntry {
    pub provider_id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub region: Option<String>,
    pub credentials: Vec<CredentialEntry>,
}

impl ProviderEntry {
    /// The provider as one call sees it: with one chosen credential.
    pub(crate) fn with_credential(&self, credential: &CredentialEntry) -> Provider {
        Provider {
            provider_id: self.provider_id.clone(),
            name: self.name.clone(),
            kind: self.kind,
            base_url: self.base_url.clone(),
            region: self.region.clone(),
            credential_id: credential.credential_id.clone(),
            credential: credential.credential.clone(),
        }
    }
}

/// A model that can serve a request, with its provider.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub priced: PricedModel,
    pub provider: ProviderEntry,
}

/// How a request is priced: for which tenant, which image variant, and whether
/// at the provider's cost (the `enterprise` mode).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PriceFor<'a> {
    pub tenant_id: TenantId,
    pub image_size: Option<&'a str>,
    pub image_quality: Option<&'a str>,
    pub at_cost: bool,
}

#[derive(Default)]
pub(crate) struct CatalogData {
    pub providers: BTreeMap<String, ProviderEntry>,
    pub models: BTreeMap<String, PricedModel>,
    /// Every price, margin and plan, with their history.
    pub book: PriceBook,
}

impl CatalogData {
    /// Like [`Self::candidates`], each priced for `who`.
    pub(crate) fn candidates_for(&self, model: &str, who: PriceFor<'_>) -> Vec<Candidate> {
        let mut candidates = self.candidates(model);
        for c in &mut candidates {
            self.price_for(&mut c.priced, who);
        }
        candidates
    }

    /// A model as `who` pays for it.
    pub(crate) fn priced_for(&self, model: &ModelId, who: PriceFor<'_>) -> Option<PricedModel> {
        let mut priced = self.models.get(model.as_str())?.clone();
        self.price_for(&mut priced, who);
        Some(priced)
    }

    /// Re-prices `priced` (a model of this snapshot) for `who`, in place.
    fn price_for(&self, priced: &mut PricedModel, who: PriceFor<'_>) {
        let quote = self.book.quote(
            &priced.model,
            Some(who.tenant_id),
            (who.image_size, who.image_quality),
            who.at_cost,
        );
        if let Some(quote) = quote {
            priced.price = quote.price;
            priced.terms = quote.terms();
            priced.price_version = quote.price_version;
        }
    }

    /// The model and then its fallbacks, each that has a price and a provider.
    /// Empty when the model itself cannot be served. `model` may be an alias.
    pub(crate) fn candidates(&self, model: &str) -> Vec<Candidate> {
        let Some(first) = self.candidate(self.book.resolve(model)) else {
            return Vec::new();
        };
        let mut candidates = vec![first.clone()];
        for fallback in first.priced.fallbacks.iter().take(FALLBACKS_MAX) {
            if let Some(c) = self.candidate(fallback) {
                candidates.push(c);
            }
        }
        candidates
    }

    fn candidate(&self, model: &str) -> Option<Candidate> {
        let priced = self.models.get(model)?;
        let provider = self.providers.get(priced.model.provider())?;
        Some(Candidate {
            priced: priced.clone(),
            provider: provider.clone(),
        })
    }
}

pub(crate) struct Catalog {
    store: Arc<dyn Store>,
    secrets: Arc<SecretBox>,
    current: RwLock<Arc<CatalogData>>,
    /// The store's catalog version `current` was loaded at (read before the data,
    /// so a change during a load leaves it behind and is loaded next time).
    loaded_version: AtomicI64,
    /// One load at a time, so that an older load never replaces a newer one.
    loading: tokio::sync::Mutex<()>,
}

/// A row of the price table the hub kept before the price book, as a price book
/// spec: its rates were sold directly, so they are both the cost and the sell rates.
pub(crate) fn spec_from_row(row: &PriceRow) -> Option<ModelPriceSpec> {
    let rate = |s: &str| s.parse::<i128>().ok().map(Rate::from_pico_per_token);
    let input = rate(&row.input_pico_per_token)?;
    let cache_rate = |s: &Option<String>| match s {
        None => Some(input),
        Some(s) => rate(s),
    };
    let rates = Rates {
        input,
        output: rate(&row.output_pico_per_token)?,
        cache_read: cache_rate(&row.cache_read_pico_per_token)?,
        cache_write: cache_rate(&row.cache_write_pico_per_token)?,
        image: match &row.image_pico_per_image {
            None => Rate::default(),
            Some(s) => rate(s)?,
        },
    };
    Some(ModelPriceSpec {
        cost: rates,
        sell: Some(rates),
        images: Vec::<ImagePrice>::new(),
        max_output_tokens: u32::try_from(row.max_output_tokens).ok()?,
        fallbacks: match &row.fallbacks {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).ok()?,
        },
    })
}

impl Catalog {
    pub(crate) fn new(store: Arc<dyn Store>, secrets: Arc<SecretBox>) -> Self {
        Self {
            store,
            secrets,
            current: RwLock::new(Arc::default()),
            loaded_version: AtomicI64::new(-1),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads if another writer changed the catalog since the last load; true
    /// if it did. One query when nothing changed: cheap enough before every
    /// refusal and every `catalog_refresh_ms`.
    pub(crate) async fn refresh_if_changed(&self) -> Result<bool, StoreError> {
        let version = self.store.catalog_version().await?;
        if version == self.loaded_version.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.refresh().await?;
        Ok(true)
    }

    pub(crate) fn snapshot(&self) -> Arc<CatalogData> {
        self.current.read().expect("catalog lock poisoned").clone()
    }

    pub(crate) async fn refresh(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.loading.lock().await;
        let version = self.store.catalog_version().await?;
        let data = self.load().await?;
        *self.current.write().expect("catalog lock poisoned") = Arc::new(data);
        self.loaded_version.store(version, Ordering::Release);
        Ok(())
    }

    async fn load(&self) -> Result<CatalogData, StoreError> {
        let mut data = CatalogData::default();
        let mut by_id = BTreeMap::new();
        for row in self.store.list_providers().await? {
            let Ok(kind) = row.kind.parse::<ProviderKind>() else {
                tracing::warn!(provider = %row.name, kind = %row.kind, "provider of an unknown kind skipped");
                continue;
            };
            by_id.insert(
                row.provider_id.clone(),
                ProviderEntry {
                    provider_id: row.provider_id,
                    name: row.name,
                    kind,
                    base_url: row.base_url,
                    region: row.region,
                    credentials: Vec::new(),
                },
            );
        }
        for row in self.store.list_credentials().await? {
            let Some(provider) = by_id.get_mut(&row.provider_id) else {
                continue;
            };
            let binding = credential_binding(&row.provider_id, &row.credential_id, None);
            let opened = self.secrets.open(&row.secret_ciphertext, &binding);
            let credential = opened
                .ok()
                .and_then(|plain| serde_json::from_str::<Credential>(plain.expose()).ok());
            let Some(credential) = credential else {
                tracing::error!(provider = %provider.name, credential_id = %row.credential_id, "credential cannot be opened; skipped");
                continue;
            };
            provider.credentials.push(CredentialEntry {
                credential_id: row.credential_id,
                weight: u32::try_from(row.weight).unwrap_or(1),
                credential,
                disabled_reason: row.disabled_reason,
            });
        }
        data.providers = by_id.into_values().map(|p| (p.name.clone(), p)).collect();
        for stored in self.store.price_book_events().await? {
            data.book.apply_event(stored.event);
        }
        for (model, versions) in &data.book.models {
            let Some(current) = versions.last() else {
                continue;
            };
            // What a tenant with no margin or plan of its own pays.
            let Some(quote) = data.book.quote(model, None, (None, None), false) else {
                continue;
            };
            data.models.insert(
                model.to_string(),
                PricedModel {
                    model: model.clone(),
                    price: quote.price,
                    terms: quote.terms(),
                    price_version: current.version,
                    fallbacks: current.spec.fallbacks.clone(),
                },
            );
        }
        Ok(data)
    }
}

/// Suggestions offered for an unknown model at most.
const SUGGESTIONS_MAX: usize = 3;

impl CatalogData {
    /// The served model ids and aliases closest to `asked`, for a 404's advice.
    pub(crate) fn closest_ids(&self, asked: &str) -> Vec<String> {
        let known = self
            .models
            .values()
            .filter(|m| self.providers.contains_key(m.model.provider()))
            .map(|m| m.model.as_str())
            .chain(self.book.aliases.keys().map(String::as_str));
        closest_ids(asked, known)
    }
}

/// The ids closest to `asked`, fewest edits first: those whose model part (after
/// the provider) is within a few edits of it, or starts with it, or begins it.
fn closest_ids<'a>(asked: &str, known: impl Iterator<Item = &'a str>) -> Vec<String> {
    let asked = asked.to_ascii_lowercase();
    let asked_name = asked.rsplit('/').next().unwrap_or(&asked).to_string();
    // A third of the name's length, at least 2: typos, not other models.
    let max_edits = (asked_name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, String)> = known
        .filter_map(|id| {
            let lower = id.to_ascii_lowercase();
            let name = lower.rsplit('/').next().unwrap_or(&lower);
            let edits = edit_distance(&asked_name, name);
            let prefix = name.starts_with(&asked_name) || asked_name.starts_with(name);
            let score = (edits <= max_edits || prefix).then_some(edits)?;
            Some((score, id.to_string()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(SUGGESTIONS_MAX)
        .map(|(_, id)| id)
        .collect()
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_is_offered_the_closest_configured_ids() {
        let known = [
            "openai/gpt-4o-mini",
            "openai/gpt-4o",
            "anthropic/claude-sonnet-4-5",
            "gemini/gemini-2.5-flash",
            "mini",
        ];
        let closest = |asked: &str| closest_ids(asked, known.iter().copied());
        assert_eq!(closest("gpt-4o-mini")[0], "openai/gpt-4o-mini");
        assert_eq!(
            closest("claude-sonnet-4-5"),
            ["anthropic/claude-sonnet-4-5"]
        );
        assert_eq!(closest("claude-sonet-4-5"), ["anthropic/claude-sonnet-4-5"]);
        assert_eq!(closest("openai/gpt-4o-mnii")[0], "openai/gpt-4o-mini");
        assert_eq!(closest("GPT-4O"), ["openai/gpt-4o", "openai/gpt-4o-mini"]);
        assert!(closest("llama-3-70b").is_empty());
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("gpt-4o", "gpt-4o"), 0);
    }
}
