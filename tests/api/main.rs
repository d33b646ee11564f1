//! HTTP-level tests: every test runs against a fresh PostgreSQL database and a
//! fresh SQLite file, with a mock upstream on 127.0.0.1.

// Shared fixtures are `pub` for the test modules; this crate has no outside.
#![allow(unreachable_pub)]

mod helpers;
mod mock_anthropic;
mod mock_bedrock;
mod mock_gemini;
mod mock_openai;
mod process;
mod provider_capabilities;
mod providers_anthropic;
mod providers_bedrock;
mod providers_gemini;
mod providers_openai_family;
mod routing;
mod scale_out;
mod scripted_upstream;

mod access;
mod aigne;
mod aigne_client;
mod answer_limits;
mod attempt_caps;
mod audit;
mod billing;
mod cli;
mod cli_first_contact;
mod conformance;
mod crash;
mod edges;
mod end_users;
mod errors;
mod explain;
mod first_contact;
mod freshness;
mod hold_expiry;
mod invoices;
mod key_scopes;
mod lifecycle;
mod log_order;
mod lost_hold;
mod messages;
mod notify;
mod openai_endpoints;
mod openai_sdk;
mod output_caps;
mod price_book;
mod projects;
mod secrets;
mod self_service_keys;
mod stream_cutoff;
mod suspension;
mod sweep;
mod tenant_directory;
mod upstream_timeouts;
mod usage;
mod webhooks;
