//! The no-op Authorizer the baseline runs against: the cost of tonic itself.

use std::net::SocketAddr;

use rolegate::grpc::{
    pb::{
        self,
        authorizer_server::{Authorizer, AuthorizerServer},
    },
    watch::{BatchedStream, WatchStream},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// An Authorizer that answers every call with an empty response: the cost of tonic itself.
#[derive(Clone, Copy, Default)]
struct NoopAuthorizer;

#[tonic::async_trait]
impl Authorizer for NoopAuthorizer {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the no-op server has no Watch"))
    }

    type WatchBatchedStream = BatchedStream;

    async fn watch_batched(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchBatchedStream>, Status> {
        Err(Status::unimplemented("the no-op server has no Watch"))
    }

    async fn check(
        &self,
        _: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(pb::CheckResponse::default()))
    }

    async fn check_batch(
        &self,
        _: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        Ok(Response::new(pb::CheckBatchResponse::default()))
    }
}

/// The connections `listener` accepts, with TCP_NODELAY on: tonic's `tcp_nodelay` applies only
/// to listeners it binds itself, not to `serve_with_incoming`, and without it a small answer
/// written while the previous one is unacknowledged waits for the peer's (delayed) ACK.
pub(crate) fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        conn.and_then(|c| c.set_nodelay(true).map(|()| c))
    })
}

/// Starts the no-op service on an ephemeral loopback port; returns its address.
pub(crate) async fn start_noop_server() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizerServer::new(NoopAuthorizer))
            .serve_with_incoming(nodelay_incoming(listener)),
    );
    Ok(addr)
}
