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

// The unit tests of the ext_authz front end judge the request the load tool of the binary sends
// (src/cli/bench/envoy_request.rs); they name it `crate::bench::ext_authz::envoy_like_request`.
// Nothing of the load tool is part of the library.
#[cfg(test)]
#[path = "cli/bench/envoy_request.rs"]
mod envoy_request;
#[cfg(test)]
mod bench {
    pub(crate) mod ext_authz {
        pub(crate) use crate::envoy_request::envoy_like_request;
    }
}
