//! rolegate: an authorization sidecar.
//!
//! API-key-to-role bindings live in a concurrent in-memory cache ([`state::State`]); a pure
//! decision function ([`domain::decide`]) answers "may this key do this, on this data?"; origins
//! ([`origin`]) feed the cache with revisioned change sets; front ends ([`grpc`], [`http`])
//! translate their wire formats into the same decision.

pub mod app;
pub mod authz;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod origin;
pub mod state;
pub mod tls;

// The unit tests of the ext_authz front end decide the request the binary's load tool sends.
#[cfg(test)]
#[path = "cli/bench/envoy_request.rs"]
mod envoy_request;
