//! The aigne-hub domain: what a tenant may do with its credit, decided without I/O.
//!
//! Everything here is pure so that the same rules run live (inside a tenant
//! actor), in tests (cqrs-es `TestFramework`) and in replay (projections fold the
//! same events). Money is integer pico-credits (see [`money`]); there is no
//! floating point anywhere in this crate (enforced by `clippy::float_arithmetic`).
#![deny(clippy::float_arithmetic)]

pub mod changed_by;
pub mod ids;
pub mod money;
pub mod price_book;
pub mod pricing;
pub mod roles;
pub mod tenant;

pub use changed_by::ChangedBy;
pub use ids::{InstanceId, KeyId, ModelId, ProjectId, RequestId, TenantId};
pub use money::{Credits, MoneyError, Rate};
pub use pricing::{
    Capability, ChargeTerms, Ingress, MarginSource, ModelPrice, OutputCapAdvice, Rates, Usage,
};
pub use roles::{Permission, Role};
