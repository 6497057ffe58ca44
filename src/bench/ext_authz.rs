//! `rolegate bench --mode ext-authz`: drives `envoy.service.auth.v3.Authorization/Check` with
//! the CheckRequests Envoy sends (pseudo-headers, the usual request headers, peers), against
//! rolegate and, for the baseline, against a no-op Authorization service in this process.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use envoy_types::{
    ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse},
    pb::{
        envoy::{
            config::core::v3::{SocketAddress, address, socket_address::PortSpecifier},
            service::auth::v3::{
                AttributeContext, attribute_context, authorization_client::AuthorizationClient,
            },
        },
        google::rpc,
    },
};
use tonic::{Request, Response, Status, transport::Channel};

use super::{Caller, LoadReport, LoadShape, drive};

/// One ext_authz load run's parameters.
#[derive(Clone, Debug)]
pub struct ExtAuthzLoad {
    /// The server (built with [`crate::tls::client::endpoint`]).
    pub endpoint: tonic::transport::Endpoint,
    pub concurrency: usize,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub request: CheckRequest,
}

fn peer(ip: &str, port: u32) -> attribute_context::Peer {
    attribute_context::Peer {
        address: Some(envoy_types::pb::envoy::config::core::v3::Address {
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
pub fn envoy_like_request(key: &str, method: &str, path: &str) -> CheckRequest {
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

/// Runs the load and reports on it; `allowed` counts OK-status answers.
pub async fn run_load(spec: &ExtAuthzLoad) -> Result<LoadReport, tonic::transport::Error> {
    let shape = LoadShape {
        endpoint: spec.endpoint.clone(),
        concurrency: spec.concurrency,
        connections: spec.connections,
        duration: spec.duration,
        warmup: spec.warmup,
    };
    let request = spec.request.clone();
    drive(&shape, move |channel| ExtAuthzCaller {
        client: AuthorizationClient::new(channel),
        request: request.clone(),
    })
    .await
}

/// Calls `envoy.service.auth.v3.Authorization/Check`; allowed when the answer's status is OK.
struct ExtAuthzCaller {
    client: AuthorizationClient<Channel>,
    request: CheckRequest,
}

impl Caller for ExtAuthzCaller {
    async fn call(&mut self) -> Result<bool, Status> {
        let response = self.client.check(self.request.clone()).await?;
        Ok(response
            .get_ref()
            .status
            .as_ref()
            .is_some_and(|s| s.code == 0))
    }
}

/// An Authorization service that allows everything without looking: the cost of tonic and the
/// ext_authz messages themselves.
#[derive(Clone, Copy, Default)]
pub struct NoopAuthorization;

#[tonic::async_trait]
impl Authorization for NoopAuthorization {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            ..Default::default()
        }))
    }
}

/// Starts the no-op service on an ephemeral loopback port; returns its address.
pub async fn start_noop_server() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(NoopAuthorization))
            .serve_with_incoming(super::nodelay_incoming(listener)),
    );
    Ok(addr)
}
