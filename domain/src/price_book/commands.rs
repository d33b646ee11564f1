//! What the operator can do to the price book. Commands carry their time, so
//! deciding them needs no clock.

use super::{MarginScope, ModelPriceSpec};
use crate::ids::{ModelId, TenantId};
use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq)]
pub enum PriceBookCommand {
    /// A new price for a model: the next version (nothing if it equals the current one).
    SetModelPrice {
        model: ModelId,
        spec: ModelPriceSpec,
        at: DateTime<Utc>,
    },
    /// A price from before the price book (the old price table), kept at its
    /// version so that charges recorded at that version find it in the history.
    ImportModelPrice {
        model: ModelId,
        version: i64,
        spec: ModelPriceSpec,
        at: DateTime<Utc>,
    },
    /// Sets (`Some`) or clears (`None`) a margin.
    SetMargin {
        scope: MarginScope,
        margin_bps: Option<u32>,
        at: DateTime<Utc>,
    },
    /// Puts a tenant on a plan (`None`: on none).
    SetTenantPlan {
        tenant_id: TenantId,
        plan: Option<String>,
        at: DateTime<Utc>,
    },
    /// Makes a bare model name stand for a priced `provider/model`.
    SetModelAlias {
        alias: String,
        model: ModelId,
        at: DateTime<Utc>,
    },
    RemoveModelAlias {
        alias: String,
        at: DateTime<Utc>,
    },
}
