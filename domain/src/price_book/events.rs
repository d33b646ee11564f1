//! The price book's events: append-only, like a tenant's.

use super::{MarginScope, ModelPriceSpec};
use crate::ids::{ModelId, TenantId};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

pub const PRICE_BOOK_EVENT_VERSION: &str = "1.0";

// Price changes are rare and read once per catalog refresh: a large variant
// costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PriceBookEvent {
    ModelPriced {
        model: ModelId,
        version: i64,
        spec: ModelPriceSpec,
        at: DateTime<Utc>,
    },
    MarginSet {
        #[serde(flatten)]
        scope: MarginScope,
        /// `None`: the margin is cleared.
        margin_bps: Option<u32>,
        at: DateTime<Utc>,
    },
    TenantPlanSet {
        tenant_id: TenantId,
        plan: Option<String>,
        at: DateTime<Utc>,
    },
    /// A bare model name (`gpt-4o-mini`) now stands for `model`.
    ModelAliasSet {
        alias: String,
        model: ModelId,
        at: DateTime<Utc>,
    },
    /// The bare name stands for nothing any more.
    ModelAliasRemoved { alias: String, at: DateTime<Utc> },
}

impl PriceBookEvent {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            PriceBookEvent::ModelPriced { at, .. }
            | PriceBookEvent::MarginSet { at, .. }
            | PriceBookEvent::TenantPlanSet { at, .. }
            | PriceBookEvent::ModelAliasSet { at, .. }
            | PriceBookEvent::ModelAliasRemoved { at, .. } => *at,
        }
    }
}

impl DomainEvent for PriceBookEvent {
    fn event_type(&self) -> String {
        match self {
            PriceBookEvent::ModelPriced { .. } => "ModelPriced",
            PriceBookEvent::MarginSet { .. } => "MarginSet",
            PriceBookEvent::TenantPlanSet { .. } => "TenantPlanSet",
            PriceBookEvent::ModelAliasSet { .. } => "ModelAliasSet",
            PriceBookEvent::ModelAliasRemoved { .. } => "ModelAliasRemoved",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        PRICE_BOOK_EVENT_VERSION.to_string()
    }
}
