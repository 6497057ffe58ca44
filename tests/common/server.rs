//! [`TestServer`]: a rolegate server running in this process (`app::run`) on loopback
//! listeners bound to port 0, on any [`Origin`]: a policy file, the embedded store, or a follower
//! of another server.
//!
//! ```ignore
//! let file = TestServer::policy(&example_policy()).await;
//! let store = TestServer::store().await; // bootstrap key: BOOTSTRAP
//! let follower = TestServer::follower(&store).await; // presents keys::FOLLOWER
//! let tuned = TestServer::with(Origin::policy(&text))
//!     .config(|c| c.max_message_bytes = 4096)
//!     .start()
//!     .await;
//! ```
//!
//! `start` waits until `/readyz` answers 200 (the state is loaded; a follower has its first
//! snapshot) unless told not to. Dropping a server asks it to stop; [`TestServer::stop`] also
//! waits for `run` to return and gives its result.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rolegate::{
    app::{self, AppError, Listeners},
    config::ServeConfig,
    grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{
    admin::{bootstrap_hash, call},
    http_get, keys,
};

/// How long a server may take to become ready: generous, for a debug build on a busy machine
/// (a bound, not a delay).
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// Where a test server's state comes from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A policy file holding this text, written into the server's own temporary directory as
    /// `policy.yaml`; reloaded every 50 ms.
    Policy(String),
    /// The policy file at this path, which the test owns (to rewrite it, or to start another
    /// server on it); reloaded every 50 ms.
    PolicyAt(PathBuf),
    /// The embedded store in a fresh temporary data directory, started with the bootstrap key
    /// [`super::BOOTSTRAP`].
    Store,
    /// The embedded store in this data directory (created when missing, kept when the server
    /// stops, so that a restart finds it), bootstrap key [`super::BOOTSTRAP`].
    StoreAt(PathBuf),
    /// A follower of the hub at this URL (`http://` or `https://`), presenting
    /// [`keys::FOLLOWER`].
    Upstream(String),
    /// The etcd origin on these endpoints (comma-separated) under this prefix, bootstrap key
    /// [`super::BOOTSTRAP`].
    Etcd { endpoints: String, prefix: String },
}

impl Origin {
    /// [`Origin::Policy`] of `text`.
    pub fn policy(text: &str) -> Origin {
        Origin::Policy(text.to_owned())
    }

    /// [`Origin::Upstream`]: a follower of `hub`.
    pub fn follow(hub: &TestServer) -> Origin {
        Origin::Upstream(hub.url())
    }
}

/// A change of the configuration, made before the server starts.
type Tweak<'a> = Box<dyn FnOnce(&mut ServeConfig) + 'a>;

/// How a [`TestServer`] is to be started; from [`TestServer::with`].
#[must_use = "a server starts only with .start().await"]
pub struct Start<'a> {
    origin: Origin,
    tweaks: Vec<Tweak<'a>>,
    grpc_port: u16,
    probe: bool,
    wait_ready: bool,
}

impl<'a> Start<'a> {
    /// Changes the configuration (after the origin's settings; tweaks apply in order).
    pub fn config(mut self, tweak: impl FnOnce(&mut ServeConfig) + 'a) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Binds the gRPC port to `port` rather than an ephemeral one (a server restarted where a
    /// follower expects its hub).
    pub fn grpc_port(mut self, port: u16) -> Self {
        self.grpc_port = port;
        self
    }

    /// Also binds a probe listener (`--probe-listen`): [`TestServer::probe_addr`].
    pub fn probe(mut self) -> Self {
        self.probe = true;
        self
    }

    /// Returns as soon as `run` is spawned, without waiting for readiness (a follower without
    /// its hub, a server that should fail to start, a TLS server judged over TLS).
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts the server.
    pub async fn start(self) -> TestServer {
        let mut dir = None;
        let mut temp = || {
            dir.insert(tempfile::tempdir().expect("temp dir"))
                .path()
                .to_owned()
        };
        let (mut config, policy_path, data_dir) = match self.origin {
            Origin::Policy(text) => {
                let path = temp().join("policy.yaml");
                std::fs::write(&path, text).expect("write the policy");
                (policy_config(&path), Some(path), None)
            }
            Origin::PolicyAt(path) => (policy_config(&path), Some(path), None),
            Origin::Store => {
                let data = temp().join("data");
                (store_config(&data), None, Some(data))
            }
            Origin::StoreAt(data) => (store_config(&data), None, Some(data)),
            Origin::Upstream(url) => (ServeConfig::for_upstream(url, keys::FOLLOWER), None, None),
            Origin::Etcd { endpoints, prefix } => {
                let mut config = ServeConfig::for_etcd(&endpoints, &prefix);
                config.bootstrap_key_sha256 = Some(bootstrap_hash());
                (config, None, None)
            }
        };
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let grpc = bind(self.grpc_port).await;
        let http = bind(0).await;
        let probe = match self.probe {
            true => Some(bind(0).await),
            false => None,
        };
        let grpc_addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let probe_addr = probe.as_ref().map(|p| p.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app::run(
            config,
            Listeners {
                grpc: grpc.into(),
                http: http.into(),
                probe,
            },
            async {
                let _ = rx.await;
            },
        ));
        let mut server = TestServer {
            grpc_addr,
            http_addr,
            probe_addr,
            policy_path,
            data_dir,
            _dir: dir,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        if self.wait_ready {
            server.wait_ready().await;
        }
        server
    }
}

fn policy_config(path: &Path) -> ServeConfig {
    let mut config = ServeConfig::for_policy(path);
    config.reload_interval = Duration::from_millis(50);
    config
}

fn store_config(data: &Path) -> ServeConfig {
    let mut config = ServeConfig::for_data_dir(data);
    config.bootstrap_key_sha256 = Some(bootstrap_hash());
    config
}

async fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"))
}

/// A rolegate server running in this process.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The probe listener, when started with [`Start::probe`].
    pub probe_addr: Option<SocketAddr>,
    policy_path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestServer {
    /// A server on `origin`, to be tuned and started.
    pub fn with<'a>(origin: Origin) -> Start<'a> {
        Start {
            origin,
            tweaks: Vec::new(),
            grpc_port: 0,
            probe: false,
            wait_ready: true,
        }
    }

    /// A server on a policy file holding `text`, once ready.
    pub async fn policy(text: &str) -> TestServer {
        Self::with(Origin::policy(text)).start().await
    }

    /// A server on a fresh embedded store (only the bootstrap key), once ready.
    pub async fn store() -> TestServer {
        Self::with(Origin::Store).start().await
    }

    /// A server on the embedded store in `data_dir`, once ready.
    pub async fn store_at(data_dir: PathBuf) -> TestServer {
        Self::with(Origin::StoreAt(data_dir)).start().await
    }

    /// A follower of `hub`, once it has its first snapshot.
    pub async fn follower(hub: &TestServer) -> TestServer {
        Self::with(Origin::follow(hub)).start().await
    }

    /// Waits (bounded by [`READY_WITHIN`]) until `/readyz` answers 200; panics with the error
    /// when `run` returns first.
    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        while tokio::time::Instant::now() < deadline {
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let result = self.handle.take().unwrap().await.expect("server task");
                panic!("the server stopped before it was ready: {result:?}");
            }
            if http_get(self.http_addr, "/readyz")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the server on {} did not become ready within {READY_WITHIN:?}",
            self.http_addr
        );
    }

    /// The gRPC port's URL, `http://127.0.0.1:PORT` (what a follower or the CLI dials).
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A channel to the gRPC port (retried briefly: a server started without waiting may not
    /// accept yet).
    pub async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(channel) = endpoint.connect().await {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("cannot connect to {}", self.url());
    }

    /// A client of the Authorizer service (Check, CheckBatch, Watch).
    pub async fn authorizer(&self) -> AuthorizerClient<Channel> {
        AuthorizerClient::new(self.channel().await)
    }

    /// A client of the Admin service (callers go through [`super::call`]).
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// A Watch stream opened with `key` in `authorization: ApiKey` metadata; panics when
    /// refused.
    pub async fn watch(&self, key: &str, request: pb::WatchRequest) -> Streaming<pb::WatchEvent> {
        self.authorizer()
            .await
            .watch(call(key, request))
            .await
            .expect("the Watch is accepted")
            .into_inner()
    }

    /// One Check; panics on an RPC error (a denial is an answer).
    pub async fn check(&self, request: pb::CheckRequest) -> pb::CheckResponse {
        self.authorizer()
            .await
            .check(request)
            .await
            .expect("check")
            .into_inner()
    }

    /// A GET on the HTTP port: (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.http_get("/status").await;
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// The gRPC health of the server (`""`) and of `rolegate.v1.Authorizer`, in that order.
    pub async fn health(&self) -> [ServingStatus; 2] {
        let mut health = HealthClient::new(self.channel().await);
        let mut seen = [ServingStatus::Unknown; 2];
        for (i, service) in ["", "rolegate.v1.Authorizer"].into_iter().enumerate() {
            seen[i] = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status();
        }
        seen
    }

    /// The policy file of a server on [`Origin::Policy`] or [`Origin::PolicyAt`].
    pub fn policy_path(&self) -> &Path {
        self.policy_path
            .as_deref()
            .expect("a server on a policy file")
    }

    /// Replaces the policy file atomically (a new file renamed over the old one).
    pub fn write_policy(&self, text: &str) {
        let path = self.policy_path();
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).expect("create the policy");
        file.write_all(text.as_bytes()).expect("write the policy");
        file.sync_all().expect("sync the policy");
        std::fs::rename(&tmp, path).expect("rename the policy into place");
    }

    /// The data directory of a server on [`Origin::Store`] or [`Origin::StoreAt`].
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .expect("a server on the embedded store")
    }

    /// Asks the server to stop and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.expect("server task")
    }

    /// Waits for `run` to return by itself (a server that fails to start), without asking it to
    /// stop.
    pub async fn join(mut self) -> Result<(), AppError> {
        self.handle.take().unwrap().await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
