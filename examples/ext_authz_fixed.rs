//! An ext_authz server that answers every Check with the same allow, for `scripts/bench-envoy.sh`:
//! put in rolegate's place behind the same Envoy, it shows what the filter costs Envoy with a
//! server that does no work, so that the added latency splits into Envoy's part and rolegate's.
//!
//! `cargo run --release --example ext_authz_fixed -- [ok|headers]` prints `listening on ADDR`
//! (an ephemeral loopback port) and serves until killed.
//!
//! - `ok` (default): an OK status and nothing else — the no-op `Authorization` service of
//!   `rolegate bench --mode ext-authz --baseline`.
//! - `headers`: the shape of rolegate's allowed answer (eight `x-rolegate-*` headers, the
//!   credential header removed, the same eight values as `dynamic_metadata`), built once.

use std::net::SocketAddr;

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
        HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
    },
    pb::google::{
        protobuf::{Struct, Value, value::Kind},
        rpc,
    },
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct Fixed(CheckResponse);

#[tonic::async_trait]
impl Authorization for Fixed {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// The eight identity headers rolegate sets for `GET /api/jobs/job-1234` with the example
/// policy's DATA_SCIENTIST key (values of the same length and kind).
const HEADERS: [(&str, &str); 8] = [
    ("x-rolegate-key", "DanaScienceKey000001"),
    ("x-rolegate-user", "dana"),
    ("x-rolegate-team", "science"),
    ("x-rolegate-project", ""),
    ("x-rolegate-scope", "TEAM"),
    ("x-rolegate-filter-teams", "science"),
    ("x-rolegate-filter-owner-keys", ""),
    ("x-rolegate-revision", "1"),
];

fn with_headers() -> CheckResponse {
    #[allow(deprecated)]
    let headers = HEADERS
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: (*k).into(),
                value: (*v).into(),
                raw_value: Vec::new(),
            }),
            append: None,
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            keep_empty_value: false,
        })
        .collect();
    let fields = HEADERS
        .iter()
        .map(|(k, v)| {
            (
                k.trim_start_matches("x-rolegate-").replace('-', "_"),
                Value {
                    kind: Some(Kind::StringValue((*v).into())),
                },
            )
        })
        .collect();
    CheckResponse {
        status: Some(rpc::Status::default()),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: vec!["authorization".into()],
            ..Default::default()
        })),
    }
}

/// The connections `listener` accepts, with TCP_NODELAY on, as the no-op servers of `rolegate
/// bench` accept theirs: tonic's `tcp_nodelay` applies only to listeners it binds itself, and
/// without it a small answer written while the previous one is unacknowledged waits for the
/// peer's (delayed) ACK.
fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        conn.and_then(|c| c.set_nodelay(true).map(|()| c))
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    let answer = match std::env::args().nth(1).as_deref() {
        None | Some("ok") => CheckResponse {
            status: Some(rpc::Status::default()),
            ..Default::default()
        },
        Some("headers") => with_headers(),
        Some(other) => {
            eprintln!("unknown mode {other:?}: ok or headers");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Fixed(answer)))
        .serve_with_incoming(nodelay_incoming(listener))
        .await
        .map_err(std::io::Error::other)
}
