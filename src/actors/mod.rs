//! Per-tenant actors: one single writer per tenant stream.
//!
//! Every command for a tenant goes through its actor, which holds the tenant's
//! state in memory, decides commands in arrival order and commits their events
//! before answering. Requests of different tenants never wait on each other; a
//! tenant's requests are serialized, which is what makes "never spend credit you
//! do not have" hold under any concurrency.

mod error;
pub(crate) mod registry;
pub(crate) mod tenant;

pub(crate) use error::ActorError;
pub(crate) use registry::TenantRegistry;
pub(crate) use tenant::{Auth, KeyState, ProjectState, TenantOp, TenantReply};
