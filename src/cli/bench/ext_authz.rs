//! `rolegate bench --mode ext-authz`: drives `envoy.service.auth.v3.Authorization/Check` with
//! the CheckRequests Envoy sends ([`super::envoy_request`]), against rolegate and, for the
//! baseline, against a no-op Authorization service in this process.

use std::net::SocketAddr;

use envoy_types::{
    ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse},
    pb::{envoy::service::auth::v3::authorization_client::AuthorizationClient, google::rpc},
};
use tonic::{Request, Response, Status, transport::Channel};

use super::load::{Caller, LoadReport, LoadShape, drive};

/// Runs a load of `request` and reports on it; `allowed` counts OK-status answers.
pub(crate) async fn run_load(
    shape: &LoadShape,
    request: CheckRequest,
) -> Result<LoadReport, tonic::transport::Error> {
    drive(shape, move |channel| ExtAuthzCaller {
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
struct NoopAuthorization;

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
pub(crate) async fn start_noop_server() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(NoopAuthorization))
            .serve_with_incoming(super::noop::nodelay_incoming(listener)),
    );
    Ok(addr)
}
