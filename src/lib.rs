//! aigne-hub: a multi-tenant AI gateway whose every billing figure is replayable.
//!
//! See docs/ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod actors;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod hub;
pub mod ingress;
pub mod notify;
pub(crate) mod pipeline;
pub mod prices;
pub mod projector;
pub mod providers;
pub mod replay;
pub mod routes;
pub mod routing;
pub mod startup;
// The store's modules are being narrowed to `pub(crate)` (issue 13, "Narrow
// doors"); until then their internal `pub` items are allowed here.
#[allow(unreachable_pub)]
pub mod store;
