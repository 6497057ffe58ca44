//! What bounds a connection to either port ([`ConnLimits`]), and the HTTP port's server: HTTP/1.1
//! with a header-read timeout, over TLS when the server has a certificate.
//!
//! The HTTP port is served with hyper directly rather than `axum::serve`, which sets no timer:
//! there, a client that connects and sends nothing (or half a request line) holds a connection
//! for ever.

use std::{future::Future, io, pin::pin, sync::Arc, time::Duration};

use axum::Router;
use clap::Args;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch, time::Instant};

use crate::tls::server::{ServerTls, handshake};

/// `rolegate serve` flags that bound each connection.
#[derive(Clone, Debug, Args)]
pub struct ConnLimits {
    /// The most calls (HTTP/2 streams) one connection to the gRPC port may have open at once;
    /// the server announces it, and a stream past it is refused (REFUSED_STREAM). Clients
    /// queue their calls or open another connection.
    #[arg(long, env = "ROLEGATE_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// How long a new connection has to complete its TLS handshake and, on the gRPC port, send
    /// the HTTP/2 connection preface; it is closed when it has not.
    #[arg(long, env = "ROLEGATE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How long the HTTP port waits for a request's headers, which is also how long a kept-alive
    /// connection may stay idle between requests; the connection is closed after that.
    #[arg(long, env = "ROLEGATE_HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Duration,

    /// How often the gRPC port sends an HTTP/2 PING on a connection; a peer that has not
    /// answered within 20 s is disconnected, so dead peers do not hold streams. 0s: no pings.
    #[arg(long, env = "ROLEGATE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) http2_keepalive_interval: Duration,
}

/// How long a PING may go unanswered before the connection is closed.
pub(crate) const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_concurrent_streams: 100,
            handshake_timeout: Duration::from_secs(10),
            http_header_read_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
        }
    }
}

impl ConnLimits {
    /// The PING interval, `None` when pings are off.
    pub(crate) fn keepalive_interval(&self) -> Option<Duration> {
        (!self.http2_keepalive_interval.is_zero()).then_some(self.http2_keepalive_interval)
    }
}

/// Serves `router` on `listener` (HTTP/1.1; TLS when `tls` is given) until `shutdown`
/// resolves, then stops accepting, lets each connection finish its request, and returns once
/// every connection is closed.
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerTls>>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut shutdown = pin!(shutdown);
    // Raised to tell every connection to finish.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection holds a receiver; `closed()` resolves when the last one is gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "HTTP port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let deadline = Instant::now() + limits.handshake_timeout;
        let acceptor = tls.as_ref().map(|tls| tls.http_acceptor());
        let (router, mut stop, open) = (router.clone(), stop_rx.clone(), open_rx.clone());
        let header_timeout = limits.http_header_read_timeout;
        tokio::spawn(async move {
            let _open = open;
            match acceptor {
                None => serve_connection(TokioIo::new(tcp), router, header_timeout, stop).await,
                Some(acceptor) => {
                    let stream = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        done = handshake(acceptor, tcp, deadline) => match done {
                            Ok(stream) => stream,
                            Err(err) => {
                                tracing::debug!(%peer, error = %err, "HTTP port: TLS handshake failed");
                                return;
                            }
                        },
                    };
                    serve_connection(TokioIo::new(stream), router, header_timeout, stop).await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// Serves one connection until it closes; when `stop` is raised, finishes the request in
/// progress and closes.
async fn serve_connection<IO>(
    io: TokioIo<IO>,
    router: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut conn = pin!(builder.serve_connection(io, TowerToHyperService::new(router)));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "HTTP port: connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
