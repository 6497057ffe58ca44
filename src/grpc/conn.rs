//! Accepted gRPC connections, tuned for small unary answers: TCP_NODELAY on (tonic sets it only
//! on listeners it binds itself), and reported as not supporting vectored writes, so that h2
//! copies DATA frames up to 1 KiB into its write buffer (with vectored I/O it chains anything
//! over 256 bytes and sends the response in two writes — an ext_authz answer with its headers
//! and metadata is ~600 bytes — which doubled the syscalls and loopback packets per call).
//!
//! Each connection must also deliver the HTTP/2 client preface (and, with TLS, complete its
//! handshake first) within the handshake timeout of being accepted: hyper waits for the
//! preface for ever, so without it a peer that connects and sends nothing holds a connection
//! and its task until it goes away.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixStream},
    sync::{Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::transport::server::{Connected, TcpConnectInfo, UdsConnectInfo};

use crate::tls::server::{ServerTls, handshake};

/// The HTTP/2 client connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// How many accepted TLS connections may be in their handshake at once; past it, accepting
/// waits (the kernel's backlog holds the rest).
const MAX_HANDSHAKES: usize = 1024;

/// An accepted connection of the gRPC port: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub(crate) struct GrpcConn<S = TcpStream> {
    io: S,
    /// Until the client's preface has been read: when it must have been.
    preface: Option<Preface>,
}

#[derive(Debug)]
struct Preface {
    deadline: Pin<Box<Sleep>>,
    /// Bytes of the preface not read yet.
    missing: usize,
}

impl GrpcConn<TcpStream> {
    /// A plaintext connection, accepted now, whose preface must arrive within `timeout`.
    pub(crate) fn new(stream: TcpStream, timeout: Duration) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(GrpcConn::with_deadline(stream, Instant::now() + timeout))
    }
}

impl<S> GrpcConn<S> {
    fn with_deadline(io: S, deadline: Instant) -> Self {
        GrpcConn {
            io,
            preface: Some(Preface {
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                missing: PREFACE_LEN,
            }),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GrpcConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(preface) = &mut this.preface else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read >= preface.missing {
                    this.preface = None;
                } else {
                    preface.missing -= read;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match preface.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            failed => failed,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GrpcConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for GrpcConn<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl Connected for GrpcConn<TlsStream<TcpStream>> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.get_ref().0.connect_info()
    }
}

impl Connected for GrpcConn<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of a Unix socket (plaintext); its file is removed when the stream is dropped.
pub(crate) fn unix_incoming(
    socket: crate::listen::UnixSocket,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<GrpcConn<UnixStream>>> {
    let crate::listen::UnixSocket { listener, file } = socket;
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        move |conn| {
            let _file = &file;
            conn.map(|stream| GrpcConn::with_deadline(stream, Instant::now() + handshake_timeout))
        },
    )
}

/// The plaintext connections of `listener`.
pub(crate) fn plain_incoming(
    listener: TcpListener,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<GrpcConn>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        move |conn| conn.and_then(|tcp| GrpcConn::new(tcp, handshake_timeout)),
    )
}

/// The TLS connections of `listener`: each accepted connection's handshake runs in a task of
/// its own (a slow client delays no one else) and must complete within `handshake_timeout`;
/// the connections that made it are yielded. Accepting stops when the stream is dropped.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<GrpcConn<TlsStream<TcpStream>>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = tx.closed() => return,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %err, "gRPC port: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let deadline = Instant::now() + handshake_timeout;
            let (tx, acceptor) = (tx.clone(), tls.grpc_acceptor());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %err, "gRPC port: cannot set TCP_NODELAY");
                }
                match handshake(acceptor, tcp, deadline).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(GrpcConn::with_deadline(stream, deadline))).await;
                    }
                    Err(err) => {
                        tracing::debug!(%peer, error = %err, "gRPC port: TLS handshake failed");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
