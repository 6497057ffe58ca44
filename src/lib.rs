//! rolegate: an authorization sidecar.
pub mod domain;
pub mod origin;
pub mod state;
