//! Real etcd servers for the tests of the etcd origin: one member or a cluster on loopback, each
//! in its own temporary data directory on free ports, killed and restarted at will.
//!
//! The binary is `ROLEGATE_ETCD_BIN` or `etcd` on PATH; without it [`Etcd::start`] returns
//! `None` after a visible skip message (a failure with `ROLEGATE_REQUIRE_TOOLS=1`).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use rolegate::{
    origin::etcd::pb::etcdserverpb::{
        CompactionRequest, PutRequest, StatusRequest, kv_client::KvClient,
        maintenance_client::MaintenanceClient,
    },
    tls::client::{ClientTls, endpoint},
};

use super::require_tool;

/// How long a member may take to answer after it is started (a bound, not a delay).
const UP_WITHIN: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One member: its name, ports and data directory.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// `--max-txn-ops` of every member.
    max_txn_ops: u32,
    /// Client TLS of every member, when it serves `https://`.
    tls: Option<MemberTls>,
}

/// The files of members that serve their clients over TLS and require a client certificate
/// signed by `client_ca`; `client` is what the test's own calls present.
pub struct MemberTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub client: ClientTls,
}

impl Etcd {
    /// A single-member etcd, once it answers; `None` (skipped) when etcd is not installed.
    pub async fn start(test: &str) -> Option<Etcd> {
        Self::cluster(1, test).await
    }

    /// A cluster of `n` members, once each answers.
    pub async fn cluster(n: usize, test: &str) -> Option<Etcd> {
        Self::cluster_with(n, 10_000, test).await
    }

    /// A single-member etcd whose transactions hold at most `max_txn_ops` operations (etcd's
    /// default is 128).
    pub async fn with_max_txn_ops(max_txn_ops: u32, test: &str) -> Option<Etcd> {
        Self::cluster_with(1, max_txn_ops, test).await
    }

    /// A single-member etcd serving its clients over mutual TLS.
    pub async fn with_tls(tls: MemberTls, test: &str) -> Option<Etcd> {
        Self::cluster_with_tls(1, 10_000, Some(tls), test).await
    }

    async fn cluster_with(n: usize, max_txn_ops: u32, test: &str) -> Option<Etcd> {
        Self::cluster_with_tls(n, max_txn_ops, None, test).await
    }

    async fn cluster_with_tls(
        n: usize,
        max_txn_ops: u32,
        tls: Option<MemberTls>,
        test: &str,
    ) -> Option<Etcd> {
        let bin = require_tool("etcd", "ROLEGATE_ETCD_BIN", test)?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            bin,
            dir: tempfile::tempdir().expect("temp dir"),
            members,
            initial_cluster,
            max_txn_ops,
            tls,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_up(i).await;
        }
        Some(etcd)
    }

    fn spawn(&mut self, i: usize) {
        let data = self.dir.path().join(&self.members[i].name);
        let client = self.url(i);
        let m = &mut self.members[i];
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "rolegate-test"])
            .args(["--initial-cluster-state", "new"])
            // Big applies in one transaction (docs/etcd.md).
            .args(["--max-txn-ops", &self.max_txn_ops.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    /// Waits until member `i` answers a status call.
    async fn wait_up(&self, i: usize) {
        let url = self.url(i);
        let deadline = tokio::time::Instant::now() + UP_WITHIN;
        loop {
            if let Ok(channel) = self.channel(&url).await
                && MaintenanceClient::new(channel.clone())
                    .status(StatusRequest {})
                    .await
                    .is_ok()
                // A member of a cluster answers Status before there is a leader: write once.
                && KvClient::new(channel)
                    .put(PutRequest {
                        key: b"/test/up".to_vec(),
                        value: b"1".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd member {i} did not come up at {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection to the member at `url`, over TLS when the members serve it.
    async fn channel(&self, url: &str) -> Result<tonic::transport::Channel, String> {
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.client.clone())
            .unwrap_or_default();
        let endpoint = endpoint(url, &tls).map_err(|e| e.to_string())?;
        endpoint.connect().await.map_err(|e| e.to_string())
    }

    /// The client URL of member `i`.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client)
    }

    /// Every member's client URL, comma-separated (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and ports, once it answers.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_up(i).await;
    }

    /// A put of `key` (outside rolegate's prefix, to move etcd's revision on).
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let mut kv = KvClient::connect(self.url(0)).await.expect("connect");
        let r = kv
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner();
        r.header.expect("header").revision
    }

    /// Compacts etcd's history up to its current revision; returns it.
    pub async fn compact(&self) -> i64 {
        let revision = self.put("/test/compact", "x").await;
        let mut kv = KvClient::connect(self.url(0)).await.expect("connect");
        kv.compact(CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .expect("compact");
        revision
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
