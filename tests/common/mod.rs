//! Shared helpers of the integration tests: a real server on ephemeral loopback ports, the
//! example policy and its development keys, and the rule for tests that need outside tools.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rolegate::{
    app::{self, AppError, Listeners},
    config::ServeConfig,
    grpc::pb::{self, authorizer_client::AuthorizerClient},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// Development keys of `deploy/examples/policy.yaml` (examples only).
pub mod keys {
    pub const OLIVIA_OWNER: &str = "OliviaOwnerKey000001.dev-only-oliviaowner";
    pub const ADAM_ADMIN: &str = "AdamAdminKey00000001.dev-only-adamadminke";
    pub const DANA_SCIENTIST: &str = "DanaScienceKey000001.dev-only-danascience";
    pub const DANA_GLOBEX_ADMIN: &str = "DanaGlobexAdmin00001.dev-only-danaglobexa";
    pub const DEVIN_DEVELOPER: &str = "DevinDevKey000000001.dev-only-devindevkey";
    pub const DEVIN_OLD_INACTIVE: &str = "DevinOldKey000000001.dev-only-devinoldkey";
    pub const ARIA_AUDITOR: &str = "AriaAuditKey00000001.dev-only-ariaauditke";
    pub const GUS_DEVELOPER: &str = "GusDevKey00000000001.dev-only-gusdevkey00";
    pub const FRAUD_PROJECT: &str = "FraudProjectKey00001.dev-only-fraudprojec";
    /// A project key with the FOLLOWER role: Watch with secret hashes (`serve --upstream`).
    pub const FOLLOWER: &str = "FollowerKey000000001.dev-only-followerkey";
    pub const RITA_REVIEWER: &str = "RitaReviewKey0000001.dev-only-ritareviewe";

    /// The public prefix of a key.
    pub fn prefix(key: &str) -> &str {
        key.split_once('.').map_or(key, |(p, _)| p)
    }
}

/// The example policy shipped in `deploy/examples/policy.yaml`.
pub fn example_policy() -> String {
    std::fs::read_to_string(repo_path("deploy/examples/policy.yaml")).expect("example policy")
}

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A rolegate server running in this process on ephemeral loopback ports.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub policy_path: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestServer {
    /// Starts a server on `policy` (written to a temporary file), reloading every 50 ms.
    pub async fn start(policy: &str) -> Self {
        Self::start_with(policy, |_| {}).await
    }

    /// Like [`TestServer::start`], with a chance to change the configuration.
    pub async fn start_with(policy: &str, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy).expect("write policy");
        let mut config = ServeConfig::for_policy(&policy_path);
        config.reload_interval = Duration::from_millis(50);
        tweak(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let grpc_addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app::run(
            config,
            Listeners {
                grpc,
                http,
                probe: None,
            },
            async {
                let _ = rx.await;
            },
        ));
        let server = TestServer {
            grpc_addr,
            http_addr,
            policy_path,
            _dir: dir,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        server.wait_ready().await;
        server
    }

    /// Waits (bounded) until `/readyz` answers 200: the policy is loaded and the ports serve.
    async fn wait_ready(&self) {
        wait_until_ready(self.http_addr, Duration::from_secs(5)).await;
    }

    /// A client of the Authorizer service.
    pub async fn client(&self) -> AuthorizerClient<Channel> {
        AuthorizerClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect")
    }

    /// A channel to the gRPC port, for other services (health, reflection).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// Replaces the policy file atomically (write a new file, rename it over the old one).
    pub fn write_policy(&self, text: &str) {
        let tmp = self.policy_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.policy_path).unwrap();
    }

    /// Asks the server to stop and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
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

/// A check request with a resource.
pub fn check(key: &str, entitlement: &str, team: &str, owner_key: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: key.into(),
        entitlement: entitlement.into(),
        resource: Some(pb::Resource {
            team_id: team.into(),
            owner_key_prefix: owner_key.into(),
            owner_user_id: String::new(),
        }),
        min_revision: 0,
    }
}

/// Waits until the server whose HTTP port is `http` answers `/readyz` with 200 (its state is
/// loaded and its ports serve); panics after `within`.
pub async fn wait_until_ready(http: SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if http_get(http, "/readyz")
            .await
            .is_ok_and(|(code, _)| code == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server on {http} did not become ready within {within:?}");
}

/// A minimal HTTP/1.1 GET over a fresh connection: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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

/// Whether tests must fail, rather than skip, when an outside tool is missing. The README's
/// test command (`scripts/test.sh`) installs the tools and sets this.
pub fn tools_required() -> bool {
    std::env::var("ROLEGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Finds an outside tool: the environment variable `env_var` if set, else `name` on PATH.
/// Missing: a visible skip message (written straight to stderr, past the test harness's output
/// capture) and `None`, or a failure when [`tools_required`].
pub fn require_tool(name: &str, env_var: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os(env_var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            !tools_required(),
            "{test}: {name} is required (ROLEGATE_REQUIRE_TOOLS=1) but was not found; set {env_var} or put it on PATH"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {name} not found (set {env_var} or run scripts/test.sh, which installs it)"
        );
    }
    found
}

/// For a test that needs something of the machine other than a tool (e.g. root, to mount a
/// tmpfs): the same rule as [`require_tool`] — a visible skip message, or a failure when
/// [`tools_required`]. `why` says what was tried and how it failed.
pub fn skip_without(what: &str, why: &str, test: &str) {
    assert!(
        !tools_required(),
        "{test}: {what} is required (ROLEGATE_REQUIRE_TOOLS=1) but unavailable: {why}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs {what}: {why}");
}
