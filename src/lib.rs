//! aigne-hub: a multi-tenant AI gateway whose every billing figure is replayable.
//!
//! See docs/ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod actors;
pub mod aigne;
pub mod audit;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod messages;
pub mod notify;
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
