//! rolegate: an authorization sidecar.
//!
//! API-key-to-role bindings live in a concurrent in-memory cache ([`state::State`]); a pure
//! decision function ([`domain::decide`]) answers "may this key do this, on this data?"; origins
//! ([`origin`]) feed the cache with revisioned change sets; front ends (gRPC in [`grpc`], and the
//! HTTP port) translate their wire formats into the same decision.
//!
//! # The library's API
//!
//! The crate is built for the `rolegate` binary, whose command-line interface is the product's
//! interface. What the library exports is what the binary, the integration tests, the
//! benchmarks and the examples need, and nothing else; everything else is `pub(crate)`:
//!
//! - [`app::run`] with [`app::Listeners`] and [`config::ServeConfig`]: a whole server on given
//!   listeners, stopped by a future (what `rolegate serve` runs and the tests start in-process).
//! - [`grpc::pb`]: the generated types, servers and clients of `rolegate.v1` (`Authorizer`,
//!   `Admin`, `Watch`), and [`tls::client`]: the client channel with the same TLS flags as
//!   the binary.
//! - [`domain`]: the model, the catalog, key parsing and hashing, the decision, and the Admin
//!   core with the escalation rule (the property tests drive [`domain::admin::execute`]).
//! - [`state::State`] and [`authz::Authz`]: the cache and the proxy decision path, for the
//!   benchmarks; [`origin::policy_file`]: parsing a policy file (`rolegate validate`).
//!
//! These follow the binary's version; there is no promise of stability to other crates.

pub mod app;
pub mod authz;
pub mod config;
pub mod domain;
pub mod grpc;
mod http;
mod listen;
pub mod origin;
pub mod state;
pub mod telemetry;
pub mod tls;

// The unit tests of the ext_authz front end decide the request the binary's load tool sends.
#[cfg(test)]
#[path = "cli/bench/envoy_request.rs"]
mod envoy_request;
