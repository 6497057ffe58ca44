//! Helpers of the Admin API tests: a server on the embedded store (in this process, on
//! ephemeral ports), callers with `authorization: ApiKey` metadata, and the example policy seeded
//! through `Apply`.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use rolegate::{
    app::{self, AppError, Listeners},
    config::ServeConfig,
    domain::SecretHash,
    grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};

/// The bootstrap SYSTEM_OWNER key the tests start with (its hash is passed to the server).
pub const BOOTSTRAP: &str = "RolegateBootstrap01.test-only-bootstrap-secret";

/// A rolegate server on the embedded store.
pub struct StoreServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

/// The hash of the bootstrap key's secret.
pub fn bootstrap_hash() -> String {
    let (_, secret) = BOOTSTRAP.split_once('.').unwrap();
    SecretHash::of_secret(secret).to_hex()
}

impl StoreServer {
    /// Starts a server on `data_dir` (created when missing).
    pub async fn start(data_dir: PathBuf) -> Self {
        let mut config = ServeConfig::for_data_dir(&data_dir);
        config.bootstrap_key_sha256 = Some(bootstrap_hash());
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
        StoreServer {
            grpc_addr,
            http_addr,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn channel(&self) -> Channel {
        // The store opens before the gRPC port serves; retry the first connect briefly.
        for _ in 0..200 {
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.grpc_addr))
                .unwrap()
                .connect()
                .await
            {
                return ch;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the server did not start");
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn authorizer(&self) -> AuthorizerClient<Channel> {
        AuthorizerClient::new(self.channel().await)
    }

    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.expect("server task")
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request carrying `authorization: ApiKey <key>`.
pub fn call<T>(key: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("ApiKey {key}").parse().unwrap());
    req
}

/// The example policy with the bootstrap team, user and key added, so that applying it keeps
/// the caller.
pub fn example_with_bootstrap() -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/policy.yaml"),
    )
    .unwrap();
    let text = text.replacen(
        "\nteams:\n",
        "\nteams:\n  - { id: system, name: System }\n",
        1,
    );
    let text = text.replacen(
        "\nusers:\n",
        "\nusers:\n  - { id: bootstrap, name: Bootstrap operator }\n",
        1,
    );
    text.replacen(
        "\nkeys:\n",
        &format!(
            "\nkeys:\n  - {{ prefix: RolegateBootstrap01, secret_sha256: {}, type: team, user: bootstrap, team: system, roles: [SYSTEM_OWNER] }}\n",
            bootstrap_hash()
        ),
        1,
    )
}

/// Seeds the example policy through Apply; returns the committed revision.
pub async fn seed_example(admin: &mut AdminClient<Channel>) -> u64 {
    admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: example_with_bootstrap(),
                dry_run: false,
            },
        ))
        .await
        .expect("apply the example policy")
        .into_inner()
        .revision
}

/// A check of `key` for `entitlement` over `team`/`owner_key`, fresh at least at `revision`.
pub fn check_at(
    key: &str,
    entitlement: &str,
    team: &str,
    owner_key: &str,
    revision: u64,
) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: key.into(),
        entitlement: entitlement.into(),
        resource: Some(pb::Resource {
            team_id: team.into(),
            owner_key_prefix: owner_key.into(),
            owner_user_id: String::new(),
        }),
        min_revision: revision,
    }
}

/// The field violations of an InvalidArgument status: (field, description).
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// The command that runs the real `rolegate` binary serving the embedded store in `dir` on
/// ephemeral ports, with the bootstrap key of [`BOOTSTRAP`], logging JSON (info) to a piped
/// stderr, where the gRPC address is read from.
pub fn store_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rolegate"));
    command
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--log-format",
            "json",
            "--bootstrap-key-sha256",
            &bootstrap_hash(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// [`store_command`] with `extra` flags, started; returns the child and its gRPC address.
pub fn spawn_store(dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = store_command(dir)
        .args(extra)
        .spawn()
        .expect("spawn rolegate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v.get("grpc").and_then(|a| a.as_str())
            {
                let _ = tx.send(addr.to_owned());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs its gRPC address");
    (child, format!("http://{addr}"))
}
