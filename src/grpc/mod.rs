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
}

pub use authorizer::AuthorizerService;
