//! rolegate: an authorization sidecar.
//!
//! API-key-to-role bindings live in a concurrent in-memory cache ([`state::State`]); a pure
//! decision function ([`domain::decide`]) answers "may this key do this, on this data?"; origins
//! ([`origin`]) feed the cache with revisioned change sets; front ends ([`grpc`], [`http`])
//! translate their wire formats into the same decision.

pub mod app;
pub mod authz;
pub mod bench;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod origin;
pub mod state;
pub mod tls;
