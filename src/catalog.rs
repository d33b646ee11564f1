//! Providers and model prices, cached in memory for the request path.
//!
//! The tables are the truth; each process reloads them after its own writes and
//! every `catalog_refresh_ms` to pick up other processes' changes. A request reads
//! one immutable snapshot, so a price change never splits a request in two.

use crate::crypto::{provider_binding, SecretBox};
use crate::providers::{Credential, Provider, ProviderKind};
use crate::store::{PriceRow, Store, StoreError};
use domain::{ModelId, ModelPrice, Rate, Rates};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug)]
pub struct PricedModel {
    pub model: ModelId,
    pub price: ModelPrice,
    pub price_version: i64,
    pub updated_at: String,
}

#[derive(Default)]
pub struct CatalogData {
    pub providers: BTreeMap<String, Provider>,
    pub models: BTreeMap<String, PricedModel>,
}

impl CatalogData {
    /// A model is callable when it has a price and its provider exists.
    pub fn route(&self, model: &str) -> Option<(PricedModel, Provider)> {
        let priced = self.models.get(model)?;
        let provider = self.providers.get(priced.model.provider())?;
        Some((priced.clone(), provider.clone()))
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
        for row in self.store.list_providers().await? {
            let Ok(kind) = row.kind.parse::<ProviderKind>() else {
                tracing::warn!(provider = %row.name, kind = %row.kind, "provider of an unknown kind skipped");
                continue;
            };
            let opened = self.secrets.open(
                &row.secret_ciphertext,
                &provider_binding(&row.provider_id, None),
            );
            let credential = opened
                .ok()
                .and_then(|plain| serde_json::from_str::<Credential>(plain.expose()).ok());
            let Some(credential) = credential else {
                tracing::error!(provider = %row.name, "provider credential cannot be opened; provider skipped");
                continue;
            };
            data.providers.insert(
                row.name.clone(),
                Provider {
                    provider_id: row.provider_id,
                    name: row.name,
                    kind,
                    base_url: row.base_url,
                    region: row.region,
                    credential,
                },
            );
        }
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
