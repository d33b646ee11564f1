//! aigne-hub: a multi-tenant AI gateway whose every billing figure is replayable.
//!
//! See docs/ARCHITECTURE.md for the bird's-eye view and the code map.

pub(crate) mod actors;
pub mod audit;
pub(crate) mod auth;
pub(crate) mod billing;
pub(crate) mod body;
pub(crate) mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub(crate) mod error;
pub mod hub;
pub(crate) mod ingress;
pub mod notify;
pub(crate) mod pipeline;
pub(crate) mod prices;
pub mod projector;
pub mod providers;
pub mod replay;
pub(crate) mod routes;
pub(crate) mod routing;
pub mod startup;
// The store's modules are being narrowed to `pub(crate)` (issue 13, "Narrow
// doors"); until then their internal `pub` items are allowed here.

pub mod store;
