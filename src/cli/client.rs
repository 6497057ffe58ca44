//! Calling a server as a caller: the flags that say where and as whom ([`Conn`]), the channel,
//! the Admin client, the key in each call's metadata, failed calls as people read them, and
//! every page of a list.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use rolegate::{
    grpc::pb::{self, admin_client::AdminClient},
    tls::client::{ClientTls, ClientTlsArgs},
};
use tonic::{
    Request,
    transport::{Channel, Endpoint},
};

use super::output::{Output, Shown, print_all, print_revision};

/// Where to connect and as whom.
#[derive(Args, Clone, Debug)]
pub(crate) struct Conn {
    /// The server's gRPC address: HOST:PORT (https:// with TLS options, else http://), a URL,
    /// or unix:PATH (a Unix socket).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub(crate) addr: String,
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
    /// The caller's API key, `<prefix>.<secret>`.
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    pub(crate) key: String,
    /// How to print: text (tables) for people, json for scripts; `table` is accepted for text.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// The key `check` and `bench` send to be judged: `--key` or `ROLEGATE_CHECK_KEY`, never the
/// caller's key of the Admin commands, and no built-in default.
pub(crate) fn key_to_check(key: Option<String>) -> anyhow::Result<String> {
    if let Some(key) = key {
        return Ok(key);
    }
    let mut message = "no key to check: give --key or set ROLEGATE_CHECK_KEY".to_owned();
    if std::env::var_os("ROLEGATE_API_KEY").is_some() {
        message.push_str(
            " (ROLEGATE_API_KEY is the caller's key of the Admin commands and `watch`; it is never the key checked)",
        );
    }
    Err(anyhow::anyhow!(message))
}

/// The URL `addr` means: itself when it has a scheme; `HOST:PORT` alone is
/// `https://HOST:PORT` when TLS options are given, else `http://HOST:PORT`.
pub(crate) fn url(addr: &str, tls: &ClientTls) -> String {
    if addr.contains("://") {
        return addr.to_owned();
    }
    let tls_asked = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
    let scheme = if tls_asked { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// The server a command calls: its endpoint, reached over TCP, or over the Unix socket at a path
/// when `--addr` is `unix:PATH`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    endpoint: Endpoint,
    unix: Option<Arc<PathBuf>>,
}

impl Target {
    /// The server at `endpoint`, over TCP.
    pub(crate) fn tcp(endpoint: Endpoint) -> Self {
        Target {
            endpoint,
            unix: None,
        }
    }

    /// The same target with its endpoint's settings changed by `tune`.
    pub(crate) fn tune(self, tune: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        Target {
            endpoint: tune(self.endpoint),
            unix: self.unix,
        }
    }

    /// A new connection to the server.
    pub(crate) async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.unix {
            None => self.endpoint.connect().await,
            Some(path) => {
                self.endpoint
                    .connect_with_connector(UnixConnector(path.clone()))
                    .await
            }
        }
    }
}

/// Connects to the Unix socket at its path, whatever the URI (the endpoint's is a placeholder).
#[derive(Clone, Debug)]
struct UnixConnector(Arc<PathBuf>);

impl tonic::codegen::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The server at `--addr`: `unix:PATH` (a Unix socket, plaintext), or a URL or `HOST:PORT` (see
/// [`url`]) with the TLS of the client flags.
pub(crate) fn endpoint(addr: &str, tls: &ClientTlsArgs) -> anyhow::Result<Target> {
    let tls = ClientTls::from(tls.clone());
    if let Some(path) = addr.strip_prefix("unix:") {
        anyhow::ensure!(
            !path.is_empty(),
            "--addr unix: needs a path, as in unix:/run/rolegate/grpc.sock"
        );
        anyhow::ensure!(
            tls.is_empty(),
            "--addr {addr}: TLS options were given, but a Unix socket is plaintext (rolegate serves TLS on TCP only)"
        );
        // The URI only names the :authority of the calls; the connector ignores it.
        let endpoint = Endpoint::from_static("http://localhost");
        return Ok(Target {
            endpoint,
            unix: Some(Arc::new(PathBuf::from(path))),
        });
    }
    let endpoint = rolegate::tls::client::endpoint(&url(addr, &tls), &tls)?;
    if endpoint.uri().scheme_str() == Some("http")
        && let Some(authority) = endpoint.uri().authority()
    {
        let _ = PLAINTEXT_SERVER.set(authority.to_string());
    }
    Ok(Target::tcp(endpoint))
}

/// A channel to the server of `conn`: 5 s to connect, 30 s a call.
pub(crate) async fn channel(conn: &Conn) -> anyhow::Result<Channel> {
    endpoint(&conn.addr, &conn.tls)?
        .tune(|e| {
            e.timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(5))
        })
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.addr))
}

/// An Admin client on a new [`channel`].
pub(crate) async fn admin(conn: &Conn) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(conn).await?))
}

/// One Admin call with the caller's key: its answer, or its failure as people read it
/// ([`failed`]). `rpc` makes the call on the client it is given.
pub(crate) async fn send<Req, Resp, Fut>(
    conn: &Conn,
    message: Req,
    rpc: impl FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
) -> anyhow::Result<Resp>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let client = admin(conn).await?;
    Ok(rpc(client, call(conn, message)?)
        .await
        .map_err(failed)?
        .into_inner())
}

/// `message` as a call with the caller's key in the `authorization: ApiKey` metadata.
pub(crate) fn call<T>(conn: &Conn, message: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    let value = format!("ApiKey {}", conn.key)
        .parse()
        .context("--key has characters that cannot be sent")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// A failed Admin call as people read it: the code, the message and each field violation, and
/// what to do when the address is rolegate's HTTP port.
pub(crate) fn failed(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            // A problem the message already states (a policy document's, located; a new key's)
            // is said once.
            if !status.message().contains(&v.description) {
                text.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
    }
    with_hint(text, &status)
}

/// A failed `check` or `watch` call as people read it, with what to do when the address is
/// rolegate's HTTP port.
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    with_hint(format!("{}: {}", status.code(), status.message()), &status)
}

fn with_hint(mut text: String, status: &tonic::Status) -> anyhow::Error {
    if looks_like_http1(status) {
        text.push_str(&format!("\n{HTTP_PORT_HINT}"));
    }
    anyhow::anyhow!(text)
}

/// What to do when `--addr` names rolegate's HTTP port.
const HTTP_PORT_HINT: &str = "this looks like rolegate's HTTP port, which does not speak gRPC: \
     use the gRPC port (serve --grpc-listen, 127.0.0.1:50051 by default) as --addr";

/// The `HOST:PORT` of the plaintext server this command called, for [`looks_like_http1`]; set by
/// [`endpoint`] (every command calls one server).
static PLAINTEXT_SERVER: OnceLock<String> = OnceLock::new();

/// Whether the call that failed with `status` went to an HTTP/1 server, as rolegate's HTTP port
/// is. Such a server closes the connection on the HTTP/2 preface, which the client sees as a
/// transport failure (a broken pipe, a cancelled call) like any server that went away; so on
/// such a failure only, and for a plaintext address only, the server is asked `GET /` in HTTP/1
/// and the hint given when its answer is an HTTP/1 response. A status a server sent never
/// matches.
fn looks_like_http1(status: &tonic::Status) -> bool {
    let transport = matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    ) && (std::error::Error::source(status).is_some()
        || status.message() == "operation was canceled");
    match PLAINTEXT_SERVER.get() {
        Some(server) if transport => answers_http1(server),
        _ => false,
    }
}

/// Whether the server at `authority` answers an HTTP/1.1 request in HTTP/1 (within a second).
fn answers_http1(authority: &str) -> bool {
    use std::{
        io::{Read, Write},
        net::{TcpStream, ToSocketAddrs},
    };
    let within = Duration::from_secs(1);
    let Some(addr) = authority.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(within));
    let _ = tcp.set_write_timeout(Some(within));
    let request = format!("GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if tcp.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 7];
    tcp.read_exact(&mut head).is_ok() && &head == b"HTTP/1."
}

/// Every item of a paged list call: `page(token)` fetches one page (of the largest size the
/// server gives) and its next token; pages are asked for until the server says there are none.
pub(crate) async fn all_pages<T, F, Fut>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// Lists every object of an unfiltered list call and prints them: `rpc` asks for one page,
/// `items` takes a page's objects and next page token.
pub(crate) async fn list<Page, T, Fut>(
    conn: &Conn,
    rpc: impl Fn(AdminClient<Channel>, Request<pb::ListRequest>) -> Fut,
    items: impl Fn(Page) -> (Vec<T>, String),
) -> anyhow::Result<()>
where
    T: Shown,
    Fut: Future<Output = Result<tonic::Response<Page>, tonic::Status>>,
{
    let client = admin(conn).await?;
    let (rpc, items) = (&rpc, &items);
    let all = all_pages(|token| {
        let asked = call(conn, list_page(token)).map(|request| rpc(client.clone(), request));
        async move {
            let page = asked?.await.map_err(failed)?;
            Ok(items(page.into_inner()))
        }
    })
    .await?;
    print_all(conn.output, &all);
    Ok(())
}

/// Shows the object `id`: `rpc` gets it, `object` takes it out of the answer.
pub(crate) async fn get<Resp, T, Fut>(
    conn: &Conn,
    id: String,
    rpc: impl FnOnce(AdminClient<Channel>, Request<pb::GetRequest>) -> Fut,
    object: impl FnOnce(Resp) -> Option<T>,
) -> anyhow::Result<()>
where
    T: Shown,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let answer = send(conn, pb::GetRequest { id }, rpc).await?;
    print_all(conn.output, &Vec::from_iter(object(answer)));
    Ok(())
}

/// Deletes the `what` (team, user, ...) `id` through `rpc` and prints the revision.
pub(crate) async fn delete<Fut>(
    conn: &Conn,
    what: &str,
    id: String,
    rpc: impl FnOnce(AdminClient<Channel>, Request<pb::DeleteRequest>) -> Fut,
) -> anyhow::Result<()>
where
    Fut: Future<Output = Result<tonic::Response<pb::WriteResponse>, tonic::Status>>,
{
    let shown = format!("deleted {what} {id}");
    let r = send(conn, pb::DeleteRequest { id }, rpc).await?;
    print_revision(conn.output, &shown, r.revision);
    Ok(())
}

/// The page request of [`all_pages`].
pub(crate) fn list_page(token: String) -> pb::ListRequest {
    pb::ListRequest {
        page_size: 1000,
        page_token: token,
    }
}
