//! The CheckRequest Envoy sends for a proxied request (pseudo-headers, the usual request headers,
//! peers), as `rolegate bench --mode ext-authz` drives it. Self-contained (it needs only
//! `envoy_types`), so that the ext_authz benchmarks and tests can include this file with
//! `#[path]` and judge the very request the load tool sends.

use std::collections::HashMap;

use envoy_types::{
    ext_authz::v3::pb::CheckRequest,
    pb::envoy::{
        config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
        service::auth::v3::{AttributeContext, attribute_context},
    },
};

fn peer(ip: &str, port: u32) -> attribute_context::Peer {
    attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// A CheckRequest shaped like Envoy's for `method path` with `Authorization: ApiKey <key>`.
pub(crate) fn envoy_like_request(key: &str, method: &str, path: &str) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", "app.internal:10000"),
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("user-agent", "rolegate-bench/1"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "8a5f7c1e-4a1b-4b7e-9d0c-2f9b6c1d3e4f"),
        ("authorization", &format!("ApiKey {key}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.0.0.7", 53124)),
            destination: Some(peer("10.0.0.9", 10000)),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    id: "1234567890".into(),
                    method: method.into(),
                    headers,
                    path: path.into(),
                    host: "app.internal:10000".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    size: 0,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}
