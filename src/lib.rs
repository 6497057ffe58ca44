//! rolegate: an authorization sidecar.
pub mod domain;
pub mod state;
