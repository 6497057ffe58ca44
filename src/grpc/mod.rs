//! The gRPC front end: generated types ([`pb`]), wire ↔ domain conversions ([`convert`]), the
//! `rolegate.v1.Authorizer` service ([`authorizer`]) and the one place errors become a
//! [`tonic::Status`] ([`status`]).

pub mod admin;
pub mod authorizer;
pub(crate) mod conn;
pub(crate) mod convert;
pub mod ext_authz;
pub mod follow;
pub(crate) mod health;
pub(crate) mod routes;
pub(crate) mod status;
pub mod watch;

/// Code generated from `proto/` by `build.rs`.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("rolegate.v1");

    /// The file descriptor set of `proto/`, served by gRPC reflection.
    pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/rolegate_descriptor.bin"));

    /// The file descriptor set of Envoy's `envoy.service.auth.v3.Authorization` as rolegate
    /// serves it, for gRPC reflection (the code comes from the envoy-types crate).
    pub(crate) const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));
}

pub use authorizer::AuthorizerService;
