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

use crate::telemetry::grpc::GrpcMetrics;

/// The encoded file descriptor sets of the services the gRPC port serves besides reflection:
/// `rolegate.v1`, health and Envoy's `Authorization`. Reflection lists them.
pub(crate) const SERVED_DESCRIPTOR_SETS: [&[u8]; 3] = [
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    pb::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET,
];

/// The gRPC metrics of the port: every method of the served services and of reflection (both
/// versions).
pub(crate) fn port_metrics() -> GrpcMetrics {
    let mut sets = SERVED_DESCRIPTOR_SETS.to_vec();
    sets.push(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
    sets.push(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    GrpcMetrics::new(&sets)
}

#[cfg(test)]
mod tests {
    use super::port_metrics;

    #[test]
    fn every_served_method_is_named_in_the_metrics() {
        let m = port_metrics();
        for (path, service, kind) in [
            (
                "/rolegate.v1.Authorizer/Check",
                "rolegate.v1.Authorizer",
                "unary",
            ),
            (
                "/rolegate.v1.Authorizer/Watch",
                "rolegate.v1.Authorizer",
                "server_stream",
            ),
            ("/rolegate.v1.Admin/Apply", "rolegate.v1.Admin", "unary"),
            (
                "/envoy.service.auth.v3.Authorization/Check",
                "envoy.service.auth.v3.Authorization",
                "unary",
            ),
            (
                "/grpc.health.v1.Health/Watch",
                "grpc.health.v1.Health",
                "server_stream",
            ),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1.ServerReflection",
                "bidi_stream",
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1alpha.ServerReflection",
                "bidi_stream",
            ),
        ] {
            let info = &m.methods[m.method(path)];
            assert_eq!(
                (info.service.as_str(), info.kind),
                (service, kind),
                "{path}"
            );
        }
    }
}
