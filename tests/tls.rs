//! TLS and mutual TLS on both ports, with certificates made for each test (rcgen): Check and
//! the HTTP port over TLS; clients without a certificate, or with one from another CA, refused;
//! the CLI and the follower over `https://`; `https://` never dialled in plaintext; certificate
//! rotation; a real Envoy calling ext_authz over mutual TLS. And the connection bounds of both
//! ports: a client that sends nothing (or half a handshake) is disconnected, and streams past
//! the per-connection limit are refused.

mod common;
mod proxy;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use common::{
    Origin, TestServer, example_policy, http_get, keys,
    pki::{Ca, Leaf},
};
use rolegate::{
    app::AppError,
    config::ServeConfig,
    grpc::pb::{self, authorizer_client::AuthorizerClient},
    tls::{
        client::{ClientTls, UpstreamTlsArgs, endpoint},
        server::{Reload, ServerTls, ServerTlsArgs},
    },
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const BIN: &str = env!("CARGO_BIN_EXE_rolegate");

// ---------------------------------------------------------------------------------------------
// Certificates

/// The certificates of a test, written to files: a CA with a server and a client certificate,
/// and another CA with a client certificate of its own.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Leaf,
    client: Leaf,
    rogue_ca: Ca,
    rogue_client: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("rolegate test CA");
        let rogue_ca = Ca::new("another CA");
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            server: ca.server("rolegate", 1),
            client: ca.client("envoy"),
            rogue_client: rogue_ca.client("intruder"),
            ca,
            rogue_ca,
        };
        pki.write("ca.pem", &pki.ca.pem);
        pki.write("server.pem", &pki.server.cert_pem);
        pki.write("server.key", &pki.server.key_pem);
        pki.write("client.pem", &pki.client.cert_pem);
        pki.write("client.key", &pki.client.key_pem);
        pki.write("rogue-ca.pem", &pki.rogue_ca.pem);
        pki.write("rogue-client.pem", &pki.rogue_client.cert_pem);
        pki.write("rogue-client.key", &pki.rogue_client.key_pem);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    /// Replaces a file atomically, as cert-manager's secret volume does.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// The server flags: TLS, and mutual TLS with this PKI's CA when `mutual`.
    fn server_args(&self, mutual: bool) -> ServerTlsArgs {
        ServerTlsArgs {
            tls_cert: Some(self.path("server.pem")),
            tls_key: Some(self.path("server.key")),
            tls_client_ca: mutual.then(|| self.path("ca.pem")),
            tls_reload_interval: Duration::from_millis(50),
        }
    }

    /// What a client trusts and presents: the CA, and the client certificate `client` (a file
    /// name stem: "client" or "rogue-client").
    fn client_tls(&self, client: Option<&str>) -> ClientTls {
        ClientTls {
            ca: Some(self.path("ca.pem")),
            cert: client.map(|c| self.path(&format!("{c}.pem"))),
            key: client.map(|c| self.path(&format!("{c}.key"))),
        }
    }

    /// A rustls client config trusting this PKI's CA, presenting `client` if given.
    fn rustls_client(&self, client: Option<&Leaf>, alpn: &[u8]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der.clone()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(leaf.der.clone())],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A TLS connection to `addr` (server name `rolegate`).
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("rolegate").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The leaf certificate a new TLS connection to `addr` is served.
async fn served_certificate(addr: SocketAddr, config: Arc<ClientConfig>) -> Vec<u8> {
    let stream = tls_connect(addr, config).await.expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTP/1.1 GET over TLS: (status, body). A refused client certificate shows as an error
/// (with TLS 1.3 the server's refusal arrives after the client's side of the handshake).
async fn https_get(
    addr: SocketAddr,
    path: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<(u16, String)> {
    let mut stream = tls_connect(addr, config).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: rolegate\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// One Check through a fresh channel to `url`; any failure (connecting, TLS, the call) as text.
async fn try_check(
    url: &str,
    tls: &ClientTls,
    req: pb::CheckRequest,
) -> Result<pb::CheckResponse, String> {
    let channel = endpoint(url, tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    AuthorizerClient::new(channel)
        .check(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("call: {s:?}"))
}

fn dana_cancels_gus_job() -> pb::CheckRequest {
    common::check(
        keys::DANA_SCIENTIST,
        "jobs.cancel",
        "globex",
        "GusDevKey00000000001",
    )
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A server running in this process with TLS on both ports, serving the example policy.
struct TlsServer {
    grpc: SocketAddr,
    http: SocketAddr,
    server: TestServer,
}

impl TlsServer {
    /// Serves the example policy with `tls`, and waits until `/readyz` answers 200 over TLS
    /// (presenting `pki`'s client certificate).
    async fn start(pki: &Pki, tls: ServerTlsArgs) -> TlsServer {
        Self::start_with(pki, tls, |_| {}).await
    }

    async fn start_with(
        pki: &Pki,
        tls: ServerTlsArgs,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> TlsServer {
        let server = TestServer::with(Origin::policy(&example_policy()))
            .config(|c| c.tls = tls)
            .config(tweak)
            .no_wait()
            .start()
            .await;
        wait_ready_tls(server.http_addr, pki).await;
        TlsServer {
            grpc: server.grpc_addr,
            http: server.http_addr,
            server,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc.port())
    }

    fn policy(&self) -> &std::path::Path {
        self.server.policy_path()
    }

    async fn stop(self) {
        self.server.stop().await.expect("clean shutdown");
    }
}

/// Waits (bounded) until the HTTPS port at `http` answers `/readyz` with 200.
async fn wait_ready_tls(http: SocketAddr, pki: &Pki) {
    let config = pki.rustls_client(Some(&pki.client), b"http/1.1");
    for _ in 0..400 {
        if let Ok((200, _)) = https_get(http, "/readyz", config.clone()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the TLS server on {http} did not become ready");
}

/// Polls `cond` every 25 ms for up to 15 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut cond: F) {
    for _ in 0..600 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not within 15 s: {what}");
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn check_over_tls_and_the_http_port_over_tls() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, pki.server_args(false)).await;
    let url = server.url();

    let r = try_check(&url, &pki.client_tls(None), dana_cancels_gus_job())
        .await
        .unwrap();
    assert!(r.allowed, "{r:?}");
    let r = try_check(
        &url,
        &pki.client_tls(None),
        common::check(keys::ARIA_AUDITOR, "jobs.cancel", "acme", ""),
    )
    .await
    .unwrap();
    assert!(!r.allowed, "{r:?}");

    // The gRPC port negotiates h2, the HTTP port http/1.1.
    let stream = tls_connect(server.grpc, pki.rustls_client(None, b"h2"))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (code, body) = https_get(server.http, "/status", pki.rustls_client(None, b"http/1.1"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"revision\""), "{body}");

    // A client that does not trust the server's CA refuses it.
    let strangers = ClientTls {
        ca: Some(pki.path("rogue-ca.pem")),
        ..ClientTls::default()
    };
    let err = try_check(&url, &strangers, dana_cancels_gus_job())
        .await
        .unwrap_err();
    assert!(err.contains("connect"), "{err}");

    // Plaintext to the TLS ports gets no answer.
    let err = try_check(
        &format!("http://127.0.0.1:{}", server.grpc.port()),
        &ClientTls::default(),
        dana_cancels_gus_job(),
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    let plain = http_get(server.http, "/readyz").await;
    assert!(
        !matches!(plain, Ok((200, _))),
        "plaintext HTTP was answered: {plain:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, pki.server_args(true)).await;
    let url = server.url();

    let r = try_check(
        &url,
        &pki.client_tls(Some("client")),
        dana_cancels_gus_job(),
    )
    .await
    .unwrap();
    assert!(r.allowed, "{r:?}");

    for (who, tls) in [
        ("no client certificate", pki.client_tls(None)),
        (
            "a certificate of another CA",
            pki.client_tls(Some("rogue-client")),
        ),
    ] {
        let err = try_check(&url, &tls, dana_cancels_gus_job()).await;
        assert!(err.is_err(), "{who}: answered {err:?}");
    }

    let http_ok = https_get(
        server.http,
        "/readyz",
        pki.rustls_client(Some(&pki.client), b"http/1.1"),
    )
    .await
    .unwrap();
    assert_eq!(http_ok.0, 200);
    for (who, client) in [
        ("no client certificate", None),
        ("a certificate of another CA", Some(&pki.rogue_client)),
    ] {
        let got = https_get(
            server.http,
            "/readyz",
            pki.rustls_client(client, b"http/1.1"),
        )
        .await;
        assert!(
            !matches!(got, Ok((200, _))),
            "HTTP port, {who}: answered {got:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn https_to_a_plaintext_server_fails_and_is_never_sent_in_plaintext() {
    let server = TestServer::policy(&example_policy()).await;
    let pki = Pki::new();
    let url = format!("https://127.0.0.1:{}", server.grpc_addr.port());
    let err = try_check(&url, &pki.client_tls(None), dana_cancels_gus_job())
        .await
        .unwrap_err();
    assert!(err.contains("connect"), "{err}");

    // What the client sends first is a TLS ClientHello, not an HTTP/2 preface with the key.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first_bytes = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    });
    let _ = try_check(
        &format!("https://127.0.0.1:{}", addr.port()),
        &pki.client_tls(None),
        dana_cancels_gus_job(),
    )
    .await;
    let first = first_bytes.await.unwrap();
    assert_eq!(first[0], 0x16, "a TLS handshake record: {first:?}");
    let secret = keys::DANA_SCIENTIST.split_once('.').unwrap().1.as_bytes();
    assert!(!first.windows(secret.len()).any(|w| w == secret));
    assert!(!first.starts_with(b"PRI * HTTP/2.0"));
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, pki.server_args(false)).await;
    let h2 = pki.rustls_client(None, b"h2");
    let h1 = pki.rustls_client(None, b"http/1.1");
    assert_eq!(
        served_certificate(server.grpc, h2.clone()).await,
        pki.server.der
    );
    assert_eq!(
        served_certificate(server.http, h1.clone()).await,
        pki.server.der
    );

    // A channel made before the rotation.
    let channel = endpoint(&server.url(), &pki.client_tls(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut before = AuthorizerClient::new(channel);
    assert!(
        before
            .check(dana_cancels_gus_job())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // cert-manager renews: a new key and certificate (serial 2, another subject).
    let renewed = pki.ca.server("rolegate renewed", 2);
    pki.write("server.key", &renewed.key_pem);
    pki.write("server.pem", &renewed.cert_pem);
    eventually("the gRPC port serves the renewed certificate", async || {
        served_certificate(server.grpc, h2.clone()).await == renewed.der
    })
    .await;
    assert_eq!(
        served_certificate(server.http, h1.clone()).await,
        renewed.der
    );

    // The connection made before goes on with the old certificate; new ones work too.
    assert!(
        before
            .check(dana_cancels_gus_job())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let r = try_check(&server.url(), &pki.client_tls(None), dana_cancels_gus_job())
        .await
        .unwrap();
    assert!(r.allowed);
    server.stop().await;
}

/// The server side of a handshake over an in-memory pipe: whether the server accepted the
/// client, and the certificate it served.
async fn handshake_with(
    acceptor: tokio_rustls::TlsAcceptor,
    config: Arc<ClientConfig>,
) -> (bool, Option<Vec<u8>>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("rolegate").unwrap();
    let (server, client) = tokio::join!(
        acceptor.accept(server_io),
        tokio_rustls::TlsConnector::from(config).connect(name, client_io)
    );
    let served = client
        .ok()
        .and_then(|c| c.get_ref().1.peer_certificates().map(|p| p[0].to_vec()));
    (server.is_ok(), served)
}

#[tokio::test]
async fn broken_or_mismatched_files_keep_the_last_good_certificate() {
    let pki = Pki::new();
    let tls = ServerTls::load(&pki.server_args(true)).unwrap().unwrap();
    let good = pki.rustls_client(Some(&pki.client), b"h2");
    assert_eq!(
        handshake_with(tls.grpc_acceptor(), good.clone()).await,
        (true, Some(pki.server.der.clone()))
    );
    assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));

    // A certificate file that does not parse: refused, named, reported once.
    pki.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    match tls.reload_if_changed() {
        Reload::Failed(err) => assert!(err.to_string().contains("server.pem"), "{err}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));
    assert_eq!(
        handshake_with(tls.grpc_acceptor(), good.clone()).await.1,
        Some(pki.server.der.clone())
    );

    // Half a rotation: the new certificate with the old key.
    let renewed = pki.ca.server("rolegate renewed", 2);
    pki.write("server.pem", &renewed.cert_pem);
    match tls.reload_if_changed() {
        Reload::Failed(err) => assert!(err.to_string().contains("does not match"), "{err}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        handshake_with(tls.http_acceptor(), pki.rustls_client(None, b"http/1.1"))
            .await
            .1,
        Some(pki.server.der.clone())
    );

    // The key arrives: the pair is used.
    pki.write("server.key", &renewed.key_pem);
    assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
    assert_eq!(
        handshake_with(tls.grpc_acceptor(), good.clone()).await,
        (true, Some(renewed.der.clone()))
    );

    // The client CA is reloaded too: after it changes to the other CA, that CA's clients are
    // accepted and the first CA's are not.
    let rogue = pki.rustls_client(Some(&pki.rogue_client), b"h2");
    assert!(!handshake_with(tls.grpc_acceptor(), rogue.clone()).await.0);
    pki.write("ca.pem", &pki.rogue_ca.pem);
    assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
    assert!(handshake_with(tls.grpc_acceptor(), rogue).await.0);
    assert!(!handshake_with(tls.grpc_acceptor(), good).await.0);
}

#[tokio::test]
async fn a_server_whose_tls_files_are_unusable_does_not_start() {
    let pki = Pki::new();
    let cases = [
        (
            pki.path("missing.pem"),
            pki.path("server.key"),
            "missing.pem",
        ),
        (
            pki.path("server.pem"),
            pki.path("client.key"),
            "does not match",
        ),
        (
            pki.path("server.key"),
            pki.path("server.key"),
            "holds no certificate",
        ),
    ];
    for (cert, key, expected) in cases {
        let err = TestServer::with(Origin::policy(&example_policy()))
            .config(|c| {
                c.tls.tls_cert = Some(cert);
                c.tls.tls_key = Some(key);
            })
            .no_wait()
            .start()
            .await
            .join()
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Tls(_)), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Follow mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_follows_a_hub_over_mutual_tls() {
    let pki = Pki::new();
    let hub = TlsServer::start(&pki, pki.server_args(true)).await;

    // http:// with TLS options is refused at start.
    let err = TestServer::with(Origin::Upstream(format!(
        "http://127.0.0.1:{}",
        hub.grpc.port()
    )))
    .config(|c| {
        c.upstream_key = Some(keys::OLIVIA_OWNER.into());
        c.upstream_tls.upstream_ca = Some(pki.path("ca.pem"));
    })
    .no_wait()
    .start()
    .await
    .join()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("use https://"), "{err}");

    // Without a client certificate the hub refuses the follower, which says why.
    let refused = follower(
        &hub,
        UpstreamTlsArgs {
            upstream_ca: Some(pki.path("ca.pem")),
            ..UpstreamTlsArgs::default()
        },
    )
    .await;
    // The hub's alert reaches the follower with the first request, or races the connection's
    // close: one of the follower's retries reports it.
    eventually(
        "the refused follower reports the missing certificate",
        async || {
            upstream_status(refused.http_addr).await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("CertificateRequired"))
        },
    )
    .await;
    let status = upstream_status(refused.http_addr).await;
    assert_eq!(status["connected"], false);

    // With one, it serves the hub's state and follows its changes.
    let follower = follower(
        &hub,
        UpstreamTlsArgs {
            upstream_ca: Some(pki.path("ca.pem")),
            upstream_tls_cert: Some(pki.path("client.pem")),
            upstream_tls_key: Some(pki.path("client.key")),
        },
    )
    .await;
    let local = follower.url();
    eventually("the follower answers from the hub's state", async || {
        try_check(&local, &ClientTls::default(), dana_cancels_gus_job())
            .await
            .is_ok_and(|r| r.allowed)
    })
    .await;
    let policy = std::fs::read_to_string(hub.policy()).unwrap();
    let at = policy.find("prefix: DanaScienceKey000001").unwrap();
    let rel = policy[at..].find("status: active").unwrap();
    let mut changed = policy.clone();
    changed.replace_range(
        at + rel..at + rel + "status: active".len(),
        "status: inactive",
    );
    hub.server.write_policy(&changed);
    eventually("the hub's change reaches the follower", async || {
        try_check(&local, &ClientTls::default(), dana_cancels_gus_job())
            .await
            .is_ok_and(|r| !r.allowed)
    })
    .await;
    let status = upstream_status(follower.http_addr).await;
    assert_eq!(status["connected"], true, "{status}");
    drop(refused);
    follower.stop().await.expect("clean shutdown");
    hub.stop().await;
}

/// A follower of `hub` over `https://` with `tls`; not waited for (the hub may refuse it).
async fn follower(hub: &TlsServer, tls: UpstreamTlsArgs) -> TestServer {
    TestServer::with(Origin::Upstream(hub.url()))
        .config(|c| c.upstream_tls = tls)
        .no_wait()
        .start()
        .await
}

/// The follower's `/status` upstream section (null while its HTTP port does not answer).
async fn upstream_status(http: SocketAddr) -> serde_json::Value {
    let Ok((_, body)) = http_get(http, "/status").await else {
        return serde_json::Value::Null;
    };
    let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    status["origin"]["upstream"].clone()
}

// ---------------------------------------------------------------------------------------------
// The binary: serve, check, the Admin CLI and watch over https://

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rolegate(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_https_with_a_client_certificate() {
    let pki = Pki::new();
    let policy = common::repo_path("deploy/examples/policy.yaml");
    let (g, h) = (common::free_port(), common::free_port());
    let _server = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--policy"])
            .arg(&policy)
            .args(["--tls-cert", &pki.arg("server.pem")])
            .args(["--tls-key", &pki.arg("server.key")])
            .args(["--tls-client-ca", &pki.arg("ca.pem")])
            .env("ROLEGATE_GRPC_LISTEN", format!("127.0.0.1:{g}"))
            .env("ROLEGATE_HTTP_LISTEN", format!("127.0.0.1:{h}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready_tls(([127, 0, 0, 1], h).into(), &pki).await;
    let https = format!("https://127.0.0.1:{g}");
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let tls = ["--ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let check = |addr: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "check",
            "--addr",
            addr,
            "--key",
            keys::DANA_SCIENTIST,
            "--entitlement",
            "jobs.cancel",
            "--team",
            "globex",
            "--owner-key",
            "GusDevKey00000000001",
        ];
        args.extend_from_slice(extra);
        let (args, env): (Vec<String>, Vec<(String, String)>) = (
            args.iter().map(|s| s.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        rolegate(&args, &env)
    };

    let (code, out, err) = check(&https, &tls, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("allowed:  true"), "{out}");

    // The same from the environment.
    let (code, out, err) = check(
        &https,
        &[],
        &[
            ("ROLEGATE_CA", &ca),
            ("ROLEGATE_CLIENT_TLS_CERT", &cert),
            ("ROLEGATE_CLIENT_TLS_KEY", &key),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    // No client certificate: refused by the server. No --ca: the system's roots do not know
    // the test CA.
    let (code, out, err) = check(&https, &["--ca", &ca], &[]);
    assert_eq!(code, 2, "{out}{err}");
    let (code, out, err) = check(&https, &["--tls-cert", &cert, "--tls-key", &key], &[]);
    assert_eq!(code, 2, "{out}{err}");
    // HOST:PORT without a scheme, with TLS options: https.
    let (code, out, err) = check(&format!("127.0.0.1:{g}"), &tls, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("allowed:  true"), "{out}");
    // TLS options on an http:// address are refused before anything is sent.
    let (code, out, err) = check(&format!("http://127.0.0.1:{g}"), &tls, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("use https://"), "{err}");

    // The Admin CLI.
    let mut args = vec!["teams", "list", "--addr", &https, "--output", "json"];
    args.extend_from_slice(&tls);
    let (code, out, err) = rolegate(&args, &[("ROLEGATE_API_KEY", keys::OLIVIA_OWNER)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("globex"), "{out}");
    let mut args = vec!["teams", "list", "--addr", &https, "--ca", &ca];
    args.push("--output");
    args.push("json");
    let (code, out, err) = rolegate(&args, &[("ROLEGATE_API_KEY", keys::OLIVIA_OWNER)]);
    assert_eq!(code, 2, "{out}{err}");

    // watch.
    let mut args = vec!["watch", "--addr", &https, "--snapshot", "--count", "1"];
    args.extend_from_slice(&tls);
    let (code, out, err) = rolegate(&args, &[("ROLEGATE_API_KEY", keys::OLIVIA_OWNER)]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn serve_with_unusable_tls_files_exits_2_naming_the_file() {
    let pki = Pki::new();
    let policy = common::repo_path("deploy/examples/policy.yaml");
    let (g, h) = (common::free_port(), common::free_port());
    let (code, _, err) = rolegate(
        &[
            "serve",
            "--policy",
            policy.to_str().unwrap(),
            "--tls-cert",
            &pki.arg("nope.pem"),
            "--tls-key",
            &pki.arg("server.key"),
        ],
        &[
            ("ROLEGATE_GRPC_LISTEN", &format!("127.0.0.1:{g}")),
            ("ROLEGATE_HTTP_LISTEN", &format!("127.0.0.1:{h}")),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.pem"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Envoy ext_authz over mutual TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_calls_ext_authz_over_mutual_tls() {
    let Some(bin) = common::require_tool(
        "envoy",
        "ROLEGATE_ENVOY_BIN",
        "envoy_calls_ext_authz_over_mutual_tls",
    ) else {
        return;
    };
    let pki = Pki::new();
    let server = TlsServer::start(&pki, pki.server_args(true)).await;
    let app = proxy::EchoApp::start().await;
    let envoy = proxy::Envoy::start(
        &bin,
        "envoy-tls.yaml",
        app.addr.port(),
        &[
            (
                "port_value: 50051",
                format!("port_value: {}", server.grpc.port()),
            ),
            ("/etc/envoy/tls/ca.crt", pki.arg("ca.pem")),
            ("/etc/envoy/tls/tls.crt", pki.arg("client.pem")),
            ("/etc/envoy/tls/tls.key", pki.arg("client.key")),
        ],
    )
    .await;

    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let r = proxy::send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        envoy.proc.log()
    );
    assert_eq!(r.seen()["x-rolegate-key"], "DevinDevKey000000001");
    assert_eq!(r.seen()["x-rolegate-scope"], "OWN");

    let aria = format!("ApiKey {}", keys::ARIA_AUDITOR);
    let before = app.hits();
    let r = proxy::send(
        envoy.listen,
        "DELETE",
        "/api/jobs/j-1",
        &[("Authorization", aria.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(app.hits(), before);
    assert_eq!(envoy.counter("http.ingress.ext_authz.ok").await, 1);
    assert_eq!(envoy.counter("http.ingress.ext_authz.denied").await, 1);
    assert_eq!(envoy.counter("http.ingress.ext_authz.error").await, 0);
    drop(envoy);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_without_the_client_certificate_fails_closed() {
    let Some(bin) = common::require_tool(
        "envoy",
        "ROLEGATE_ENVOY_BIN",
        "envoy_without_the_client_certificate_fails_closed",
    ) else {
        return;
    };
    let pki = Pki::new();
    let server = TlsServer::start(&pki, pki.server_args(true)).await;
    let app = proxy::EchoApp::start().await;
    // Envoy presents the other CA's certificate: rolegate refuses the connection, and Envoy
    // answers 503 (in rolegate's JSON shape) without reaching the app.
    let envoy = proxy::Envoy::start(
        &bin,
        "envoy-tls.yaml",
        app.addr.port(),
        &[
            (
                "port_value: 50051",
                format!("port_value: {}", server.grpc.port()),
            ),
            ("/etc/envoy/tls/ca.crt", pki.arg("ca.pem")),
            ("/etc/envoy/tls/tls.crt", pki.arg("rogue-client.pem")),
            ("/etc/envoy/tls/tls.key", pki.arg("rogue-client.key")),
        ],
    )
    .await;
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let r = proxy::send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    proxy::unavailable_in_rolegate_s_shape(&r);
    assert_eq!(app.hits(), 0);
    drop(envoy);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connection bounds

/// Reads from `stream` until the server closes it (EOF or reset); panics if that takes more
/// than 20 s (the servers under test close after a fraction of a second).
async fn closed_by_server(stream: &mut TcpStream) {
    let read_all = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the server closed the silent connection");
}

fn short_timeouts(config: &mut ServeConfig) {
    config.limits.handshake_timeout = Duration::from_millis(300);
    config.limits.http_header_read_timeout = Duration::from_millis(300);
}

#[tokio::test]
async fn silent_and_half_sent_connections_are_closed() {
    let server = TestServer::with(Origin::policy(&example_policy()))
        .config(short_timeouts)
        .start()
        .await;
    // gRPC: connected, no preface; half a preface.
    let mut silent = TcpStream::connect(server.grpc_addr).await.unwrap();
    closed_by_server(&mut silent).await;
    let mut half = TcpStream::connect(server.grpc_addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_by_server(&mut half).await;
    // HTTP: connected, nothing; half a request line.
    let mut silent = TcpStream::connect(server.http_addr).await.unwrap();
    closed_by_server(&mut silent).await;
    let mut half = TcpStream::connect(server.http_addr).await.unwrap();
    half.write_all(b"GET /readyz HT").await.unwrap();
    closed_by_server(&mut half).await;
    // The ports still serve.
    assert_eq!(http_get(server.http_addr, "/readyz").await.unwrap().0, 200);
    let r = server
        .authorizer()
        .await
        .check(dana_cancels_gus_job())
        .await
        .unwrap();
    assert!(r.into_inner().allowed);
}

#[tokio::test]
async fn half_tls_handshakes_are_closed() {
    let pki = Pki::new();
    let server = TlsServer::start_with(&pki, pki.server_args(false), short_timeouts).await;
    // The first bytes of a ClientHello record, then nothing.
    let partial_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    for addr in [server.grpc, server.http] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        closed_by_server(&mut silent).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(&partial_hello).await.unwrap();
        closed_by_server(&mut half).await;
    }
    // A TLS connection that completes its handshake but sends no HTTP/2 preface.
    let mut tls = tls_connect(server.grpc, pki.rustls_client(None, b"h2"))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a TLS connection without a preface stayed open"
    );
    let r = try_check(&server.url(), &pki.client_tls(None), dana_cancels_gus_job())
        .await
        .unwrap();
    assert!(r.allowed);
    server.stop().await;
}

/// HTTP/2 frames, written and read by hand so that the client can do what a well-behaved
/// client library would not: open more streams than the server allows.
mod h2_frames {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    pub(super) const HEADERS: u8 = 0x1;
    pub(super) const RST_STREAM: u8 = 0x3;
    pub(super) const SETTINGS: u8 = 0x4;
    pub(super) const GOAWAY: u8 = 0x7;
    pub(super) const END_HEADERS: u8 = 0x4;
    pub(super) const ACK: u8 = 0x1;
    pub(super) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(super) const REFUSED_STREAM: u32 = 0x7;

    pub(super) struct Frame {
        pub(super) kind: u8,
        pub(super) flags: u8,
        pub(super) stream: u32,
        pub(super) payload: Vec<u8>,
    }

    pub(super) fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub(super) async fn read(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Frame> {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// An HPACK header block of literal fields (never indexed, no Huffman coding).
    pub(super) fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            assert!(name.len() < 127 && value.len() < 127);
            out.push(0x00);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    pub(super) async fn write(io: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
        io.write_all(bytes).await.unwrap();
    }
}

#[tokio::test]
async fn streams_past_the_per_connection_limit_are_refused() {
    use h2_frames::*;
    let server = TestServer::with(Origin::policy(&example_policy()))
        .config(|c| c.limits.max_concurrent_streams = 2)
        .start()
        .await;
    let mut conn = TcpStream::connect(server.grpc_addr).await.unwrap();
    write(&mut conn, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    write(&mut conn, &encode(SETTINGS, 0, 0, &[])).await;

    // The server announces the limit in its SETTINGS.
    let deadline = Duration::from_secs(20);
    let mut announced = None;
    let mut acked = false;
    tokio::time::timeout(deadline, async {
        while announced.is_none() || !acked {
            let f = read(&mut conn).await.unwrap();
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                for s in f.payload.chunks(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                        announced = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                    }
                }
                write(&mut conn, &encode(SETTINGS, ACK, 0, &[])).await;
                announced.get_or_insert(u32::MAX);
            } else if f.kind == SETTINGS {
                acked = true;
            }
        }
    })
    .await
    .expect("the server's SETTINGS");
    assert_eq!(announced, Some(2));

    // Three calls whose request bodies never come: two hold their streams, the third is
    // refused.
    let authority = server.grpc_addr.to_string();
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/rolegate.v1.Authorizer/Check"),
        (":authority", &authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut burst = Vec::new();
    for stream in [1, 3, 5] {
        burst.extend(encode(HEADERS, END_HEADERS, stream, &block));
    }
    write(&mut conn, &burst).await;
    let refused = tokio::time::timeout(deadline, async {
        loop {
            let f = read(&mut conn).await.unwrap();
            assert_ne!(f.kind, GOAWAY, "the server closed the connection instead");
            if f.kind == RST_STREAM {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                return (f.stream, code);
            }
        }
    })
    .await
    .expect("a RST_STREAM");
    assert_eq!(refused, (5, REFUSED_STREAM));
}
