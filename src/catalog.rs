//! Providers, their credentials and model prices, cached in memory for the
//! request path.
//!
//! The tables are the truth; each process reloads them after its own writes and
//! every `catalog_refresh_ms` to pick up other processes' changes. A request reads
//! one immutable snapshot, so a price change never splits a request in two.

use crate::crypto::{credential_binding, SecretBox};
use crate::providers::{Credential, Provider, ProviderKind};
use crate::store::{PriceRow, Store, StoreError};
use domain::{ModelId, ModelPrice, Rate, Rates};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Fallback candidates a model may list at most (bounds a request's attempts).
pub const FALLBACKS_MAX: usize = 4;

#[derive(Clone, Debug)]
pub struct PricedModel {
    pub model: ModelId,
    pub price: ModelPrice,
    pub price_version: i64,
    pub updated_at: String,
    /// Model ids tried in order when this one fails.
    pub fallbacks: Vec<String>,
}

/// One usable credential of a provider.
#[derive(Clone, Debug)]
pub struct CredentialEntry {
    pub credential_id: String,
    pub weight: u32,
    pub credential: Credential,
    pub disabled_reason: Option<String>,
}

/// A provider with all its credentials.
#[derive(Clone, Debug)]
pub struct ProviderEntry {
    pub provider_id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub region: Option<String>,
    pub credentials: Vec<CredentialEntry>,
}

impl ProviderEntry {
    /// The provider as one call sees it: with one chosen credential.
    pub fn with_credential(&self, credential: &CredentialEntry) -> Provider {
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
pub struct Candidate {
    pub priced: PricedModel,
    pub provider: ProviderEntry,
}

#[derive(Default)]
pub struct CatalogData {
    pub providers: BTreeMap<String, ProviderEntry>,
    pub models: BTreeMap<String, PricedModel>,
}

impl CatalogData {
    /// The model and then its fallbacks, each that has a price and a provider.
    /// Empty when the model itself cannot be served.
    pub fn candidates(&self, model: &str) -> Vec<Candidate> {
        let Some(first) = self.candidate(model) else {
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

pub struct Catalog {
    store: Arc<dyn Store>,
    secrets: Arc<SecretBox>,
    current: RwLock<Arc<CatalogData>>,
}

fn price_from_row(row: &PriceRow) -> Option<PricedModel> {
    let rate = |s: &str| s.parse::<i128>().ok().map(Rate::from_pico_per_token);
    let input = rate(&row.input_pico_per_token)?;
    let cache_rate = |s: &Option<String>| match s {
        None => Some(input),
        Some(s) => rate(s),
    };
    Some(PricedModel {
        model: ModelId::parse(&row.model).ok()?,
        price: ModelPrice {
            rates: Rates {
                input,
                output: rate(&row.output_pico_per_token)?,
                cache_read: cache_rate(&row.cache_read_pico_per_token)?,
                cache_write: cache_rate(&row.cache_write_pico_per_token)?,
                image: match &row.image_pico_per_image {
                    None => Rate::default(),
                    Some(s) => rate(s)?,
                },
            },
            max_output_tokens: u32::try_from(row.max_output_tokens).ok()?,
        },
        price_version: row.version,
        updated_at: row.updated_at.clone(),
        fallbacks: match &row.fallbacks {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).ok()?,
        },
    })
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>, secrets: Arc<SecretBox>) -> Self {
        Self {
            store,
            secrets,
            current: RwLock::new(Arc::default()),
        }
    }

    pub fn snapshot(&self) -> Arc<CatalogData> {
        self.current.read().expect("catalog lock poisoned").clone()
    }

    pub async fn refresh(&self) -> Result<(), StoreError> {
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
        for row in self.store.list_prices().await? {
            match price_from_row(&row) {
                Some(priced) => {
                    data.models.insert(row.model.clone(), priced);
                }
                None => {
                    tracing::error!(model = %row.model, "stored price is malformed; model skipped")
                }
            }
        }
        *self.current.write().expect("catalog lock poisoned") = Arc::new(data);
        Ok(())
    }
}
