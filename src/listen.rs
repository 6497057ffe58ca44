//! What bounds a connection to either port ([`ConnLimits`]), where a port listens ([`ListenAddr`]:
//! TCP, or a Unix domain socket, see [`Listener`]), and the HTTP port's server: HTTP/1.1 with a
//! header-read timeout, over TLS when the server has a certificate.
//!
//! The HTTP port is served with hyper directly rather than `axum::serve`, which sets no timer:
//! there, a client that connects and sends nothing (or half a request line) holds a connection
//! for ever.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::pin,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use axum::Router;
use clap::Args;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::watch,
    time::Instant,
};

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
    listener: Listener,
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
        let conn = tokio::select! {
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
            let (tcp, peer) = match conn {
                Accepted::Tcp(tcp, peer) => (tcp, peer),
                // No TLS on a Unix socket (refused at start): its file's permissions say who
                // may connect.
                Accepted::Unix(stream) => {
                    serve_connection(TokioIo::new(stream), router, header_timeout, stop).await;
                    return;
                }
            };
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

/// Where a port listens: `HOST:PORT` (TCP) or `unix:PATH` (a Unix domain socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, as in unix:/run/rolegate/grpc.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{text:?} is neither IP:PORT (as 127.0.0.1:50051) nor unix:PATH"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

/// The permissions of a socket file rolegate creates: its user and group may connect (connecting
/// needs write permission on the file), nobody else. A client in another container shares the
/// group (in Kubernetes, the pod's `fsGroup`).
pub(crate) const SOCKET_MODE: u32 = 0o660;

/// A bound port: a TCP listener, or a Unix domain socket whose file is removed when it is dropped.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl Listener {
    /// Binds `addr`. A Unix socket's file is created with [`SOCKET_MODE`]; a socket file left by
    /// a process that is gone is replaced, but nothing else: a path that is not a socket, or a
    /// socket some process still accepts on, is an error.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => Ok(Listener::Unix(UnixSocket::bind(path)?)),
        }
    }

    /// Where it listens (for logs).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(s) => Ok(ListenAddr::Unix(s.file.path.clone())),
        }
    }

    /// Whether this is a Unix domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Listener::Unix(_))
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(tcp, peer)| Accepted::Tcp(tcp, peer)),
            Listener::Unix(s) => s.listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// A connection accepted by a [`Listener`].
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

/// A Unix domain socket rolegate bound; its file is removed when this is dropped.
#[derive(Debug)]
pub struct UnixSocket {
    pub(crate) listener: UnixListener,
    pub(crate) file: SocketFile,
}

/// The file of a bound Unix socket, removed when this is dropped if it is still the file
/// rolegate created.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// The socket file's device and inode, to leave alone a file that replaced it.
    id: (u64, u64),
}

impl UnixSocket {
    fn bind(path: &Path) -> io::Result<Self> {
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)?;
        // Between bind and chmod the file has the umask's permissions: the directory is what
        // keeps others out (docs/operations.md).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(UnixSocket {
            listener,
            file: SocketFile {
                path: path.to_owned(),
                id: (meta.dev(), meta.ino()),
            },
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes way for a socket at `path`: nothing there is fine; a socket file nobody accepts on
/// (left by a process that was killed) is removed; anything else is an error saying what is
/// there.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.file_type().is_socket() {
        let kind = if meta.is_dir() {
            "a directory"
        } else if meta.file_type().is_symlink() {
            "a symbolic link"
        } else {
            "a file that is not a socket"
        };
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is {kind}; it is left alone: remove it or choose another path",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is serving on {}", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket file");
            std::fs::remove_file(path)
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_ip_and_port_or_a_unix_path() {
        assert_eq!(
            "127.0.0.1:50051".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp(([127, 0, 0, 1], 50051).into())
        );
        assert_eq!(
            "[::1]:8080".parse::<ListenAddr>().unwrap().to_string(),
            "[::1]:8080"
        );
        let unix: ListenAddr = "unix:/run/rolegate/grpc.sock".parse().unwrap();
        assert_eq!(unix, ListenAddr::Unix("/run/rolegate/grpc.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/rolegate/grpc.sock");
        for bad in ["unix:", "localhost:50051", "50051", "/run/grpc.sock", ""] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?}");
        }
    }
}
