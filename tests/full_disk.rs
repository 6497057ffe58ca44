//! A disk that fills, with the real binary on a real full filesystem: `rolegate serve
//! --data-dir` runs on a small tmpfs mounted for the test, Admin writes are made until the disk
//! is full, and then:
//! - the write that does not fit is refused with Unavailable and a clear message, no panic, no
//!   hang (every call is bounded by a timeout);
//! - the server keeps answering Checks (keys created before the disk filled stay allowed), gRPC
//!   health stays SERVING, `/readyz` ready, and `/status` shows the last acknowledged revision;
//! - nothing of a refused write is anywhere: not served, not on disk after a restart;
//! - growing the filesystem (`mount -o remount,size=…`) lets writes through again without a
//!   restart;
//! - after SIGKILL on the full disk, a restart on it still full serves exactly the acknowledged
//!   writes (or exits with a clear error, never hangs), and after growing it and restarting
//!   again every acknowledged write is present, no refused one, and revisions continue.
//!
//! Mounting needs root. Without it the tests skip with a visible message, or fail when
//! `ROLEGATE_REQUIRE_TOOLS=1` (scripts/test.sh), like the tests needing an outside tool.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{BOOTSTRAP, call, check_at, example_with_bootstrap, store_command};
use rolegate::grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// The bound on every call: a write refused because the disk is full must be refused, not left
/// hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The filesystem the store starts on. A fresh store takes about 72 KiB and each created key
/// a few hundred bytes of record, log and undo plus redb's page churn, so a few hundred key
/// creations fill it.
const SMALL_KIB: u64 = 320;
/// How many writes are tried after the first refused one (all must be refused while full).
const REFUSED_TRIES: usize = 10;
/// More writes than can fit at `SMALL_KIB`: reaching it means the disk never filled.
const MAX_WRITES: usize = 20_000;

/// Awaits `fut` or fails the test after [`CALL_TIMEOUT`].
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?} (a hang)"))
}

/// A tmpfs mounted on a fresh temporary directory; unmounted when dropped (also when the test
/// fails), after which the directory is removed.
struct Tmpfs {
    mount: PathBuf,
    umount: PathBuf,
    dir: PathBuf,
    // Dropped after `Drop::drop` has unmounted: removes the (then empty) mount point.
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB, or `None` after the skip-or-fail rule when this machine
    /// cannot (no `mount`, not root).
    fn mount(kib: u64, test: &str) -> Option<Tmpfs> {
        let mount = common::require_tool("mount", "ROLEGATE_MOUNT", test)?;
        let umount = common::require_tool("umount", "ROLEGATE_UMOUNT", test)?;
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("disk");
        std::fs::create_dir(&dir).expect("mount point");
        let out = Command::new(&mount)
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            common::skip_without(
                "mounting a tmpfs (root)",
                &format!(
                    "`mount -t tmpfs` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                test,
            );
            return None;
        }
        Some(Tmpfs {
            mount,
            umount,
            dir,
            _tmp: tmp,
        })
    }

    /// Grows (or shrinks) the mounted filesystem in place; the files on it stay.
    fn resize(&self, kib: u64) {
        let out = Command::new(&self.mount)
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount to {kib}k: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// (size, used) in KiB, as `df` would say.
    fn usage(&self) -> String {
        let out = Command::new("df")
            .args(["-k", "--output=size,used,avail"])
            .arg(&self.dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines().last().unwrap_or("").trim().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new(&self.umount)
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file on it (a server that outlived its guard): detach it
            // now so that no mount is left behind; the kernel frees it when the last file closes.
            let _ = Command::new(&self.umount).arg("-l").arg(&self.dir).status();
        }
    }
}

/// The real binary serving a data directory, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    grpc: String,
    http: std::net::SocketAddr,
    /// Every line the server logged (JSON), for what it said about the refused writes.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn spawn(dir: &Path) -> Server {
        Self::try_spawn(dir).unwrap_or_else(|(status, log)| {
            panic!("the server did not start ({status}); it logged:\n{log}")
        })
    }

    /// Starts the server; when it exits before serving: its exit status and what it logged.
    fn try_spawn(dir: &Path) -> Result<Server, (std::process::ExitStatus, String)> {
        let mut child = store_command(dir).spawn().expect("spawn rolegate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && let (Some(grpc), Some(http)) = (
                            v.get("grpc").and_then(|a| a.as_str()),
                            v.get("http").and_then(|a| a.as_str()),
                        )
                    {
                        let _ = tx.send((grpc.to_owned(), http.to_owned()));
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        // The reader drops its sender at the end of the output: the process has exited.
        let (grpc, http) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addrs) => addrs,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait");
                return Err((status, log.lock().unwrap().join("\n")));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server neither served nor exited within 30 s (a hang); it logged:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Ok(Server {
            child,
            grpc: format!("http://{grpc}"),
            http: http.parse().expect("HTTP address"),
            log,
        })
    }

    async fn channel(&self) -> Channel {
        bounded(
            "connect",
            Channel::from_shared(self.grpc.clone()).unwrap().connect(),
        )
        .await
        .expect("connect")
    }

    /// Stops the process with SIGKILL: nothing is flushed or closed on the way out.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL"); // std's kill sends SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// The log lines that contain `needle`.
    fn logged(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key the server acknowledged: its prefix, the whole key, and the revision it committed.
#[derive(Clone, Debug)]
struct Acked {
    prefix: String,
    api_key: String,
    revision: u64,
}

/// What a run of writes did: the acknowledged ones and the prefixes of the refused ones.
#[derive(Default, Debug)]
struct Outcome {
    acked: Vec<Acked>,
    refused: Vec<String>,
    /// The outcomes from the first refusal on, in order: `+` acknowledged, `-` refused.
    trail: String,
    /// The message of the first refusal.
    first_refusal: Option<String>,
}

/// A DEVELOPER key for devin in acme with the given prefix.
fn new_key(prefix: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        prefix: prefix.into(),
        key_type: pb::KeyType::Team as i32,
        user: "devin".into(),
        team: "acme".into(),
        project: String::new(),
        roles: vec!["DEVELOPER".into()],
        expires_at: 0,
    }
}

/// Creates keys `{tag}{n}` one after another until one is refused, then tries
/// [`REFUSED_TRIES`] more. Every refusal must be Unavailable with a message saying the write
/// was not committed for lack of space.
async fn create_until_full(admin: &mut AdminClient<Channel>, tag: &str) -> Outcome {
    let mut out = Outcome::default();
    for n in 0..MAX_WRITES {
        let prefix = format!("{tag}{n:0width$}", width = 20 - tag.len());
        let result = bounded(
            "CreateKey",
            admin.create_key(call(BOOTSTRAP, new_key(&prefix))),
        )
        .await;
        match result {
            Ok(created) => {
                let created = created.into_inner();
                assert_eq!(created.key.as_ref().unwrap().prefix, prefix);
                out.acked.push(Acked {
                    prefix,
                    api_key: created.api_key,
                    revision: created.revision,
                });
                if out.first_refusal.is_some() {
                    out.trail.push('+');
                }
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "a write on a full disk is refused with Unavailable: {status:?}"
                );
                let message = status.message();
                assert!(
                    message.contains("not committed")
                        && message.to_lowercase().contains("no space left"),
                    "the refusal says the write was not committed for lack of space: {message:?}"
                );
                out.first_refusal.get_or_insert_with(|| message.to_owned());
                out.refused.push(prefix);
                out.trail.push('-');
                if out.refused.len() > REFUSED_TRIES {
                    return out;
                }
            }
        }
    }
    panic!("{MAX_WRITES} writes fit on a {SMALL_KIB} KiB disk: it never filled");
}

/// Every key prefix the server lists (all pages) and the revision it answered at.
async fn listed_keys(admin: &mut AdminClient<Channel>) -> (BTreeSet<String>, u64) {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    let mut revision = 0;
    loop {
        let page = bounded(
            "ListKeys",
            admin.list_keys(call(
                BOOTSTRAP,
                pb::ListKeysRequest {
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
            )),
        )
        .await
        .expect("ListKeys")
        .into_inner();
        revision = revision.max(page.revision);
        out.extend(page.keys.into_iter().map(|k| k.prefix));
        if page.next_page_token.is_empty() {
            return (out, revision);
        }
        token = page.next_page_token;
    }
}

/// Every acknowledged key is served and allowed (at least at `revision`), and every refused
/// prefix is unknown to GetKey.
async fn assert_served(server: &Server, acked: &[Acked], refused: &[String], revision: u64) {
    let channel = server.channel().await;
    let mut authz = AuthorizerClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    for a in acked {
        let answer = bounded(
            "Check",
            authz.check(check_at(&a.api_key, "models.read", "acme", "", revision)),
        )
        .await
        .unwrap_or_else(|s| panic!("Check with {} fails: {s:?}", a.prefix))
        .into_inner();
        assert!(
            answer.allowed,
            "{} (acknowledged at revision {}) is allowed models.read in acme: {answer:?}",
            a.prefix, a.revision
        );
    }
    for prefix in refused {
        let got = bounded(
            "GetKey",
            admin.get_key(call(BOOTSTRAP, pb::GetRequest { id: prefix.clone() })),
        )
        .await;
        assert_eq!(
            got.as_ref().map_err(|s| s.code()).err(),
            Some(Code::NotFound),
            "the refused key {prefix} does not exist: {got:?}"
        );
    }
    let (listed, _) = listed_keys(&mut admin).await;
    for a in acked {
        assert!(listed.contains(&a.prefix), "{} is listed", a.prefix);
    }
    for prefix in refused {
        assert!(
            !listed.contains(prefix),
            "the refused {prefix} is not listed"
        );
    }
}

/// The server still answers as a server should while its disk is full: Checks of the keys made
/// before, gRPC health SERVING, `/readyz` ready, `/status` at the last acknowledged revision.
async fn assert_still_serving(server: &Server, acked: &[Acked], revision: u64) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let serving = bounded(
        "health Check",
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health Check")
    .into_inner();
    assert_eq!(serving.status, ServingStatus::Serving as i32);
    let (code, body) = bounded("/readyz", common::http_get(server.http, "/readyz"))
        .await
        .expect("/readyz");
    assert_eq!(code, 200, "ready while the disk is full: {body}");
    let (code, body) = bounded("/status", common::http_get(server.http, "/status"))
        .await
        .expect("/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["origin"]["kind"], "embedded", "{status}");
    // The last write was refused: /status says why until a commit succeeds.
    let last_error = status["origin"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("cannot commit") && last_error.contains("No space left on device"),
        "/status shows the failed commit: {status}"
    );
    assert!(
        status["origin"]["failed_reloads"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(
        status["revision"], revision,
        "a refused write takes no revision: {status}"
    );
    // The seeded example has 11 keys, the store's bootstrap key one more.
    assert_eq!(
        status["counts"]["keys"],
        12 + acked.len(),
        "exactly the acknowledged keys are served: {status}"
    );
    assert_served(server, acked, &[], revision).await;
}

/// Starts a server on `disk`, seeds the example policy; returns it with its Admin client.
async fn seeded(disk: &Tmpfs) -> (Server, AdminClient<Channel>, u64) {
    let server = Server::spawn(&disk.data_dir());
    let mut admin = AdminClient::new(server.channel().await);
    let seeded = bounded(
        "Apply",
        admin.apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: example_with_bootstrap(),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        )),
    )
    .await
    .expect("the seed fits on the disk")
    .into_inner()
    .revision;
    (server, admin, seeded)
}

/// The disk fills, writes are refused while the server keeps answering; the filesystem is
/// grown under the running server and writes go through again, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_growing_it_lets_them_through_without_a_restart() {
    let test = "a_full_disk_refuses_writes_and_growing_it_lets_them_through_without_a_restart";
    let Some(disk) = Tmpfs::mount(SMALL_KIB, test) else {
        return;
    };
    let (server, mut admin, seeded) = seeded(&disk).await;
    let full = create_until_full(&mut admin, "FullDiskA").await;
    let last = full.acked.last().map_or(seeded, |a| a.revision);
    eprintln!(
        "{SMALL_KIB} KiB tmpfs (size used avail: {}): {} keys acknowledged (revisions {}..={last}), {} refused; from the first refusal on: {}; first refusal: {:?}",
        disk.usage(),
        full.acked.len(),
        seeded + 1,
        full.refused.len(),
        full.trail,
        full.first_refusal.as_deref().unwrap_or_default(),
    );
    assert!(
        full.acked.len() >= 50,
        "the disk filled with the writes, not at start ({} acknowledged)",
        full.acked.len()
    );
    assert!(
        full.acked
            .windows(2)
            .all(|w| w[1].revision == w[0].revision + 1),
        "one revision per acknowledged write"
    );
    assert!(
        !server.logged("store commit failed").is_empty(),
        "the server logs the failed commit"
    );
    assert_still_serving(&server, &full.acked, last).await;

    // Grown under the running server: the next write goes through and takes the next revision.
    disk.resize(SMALL_KIB * 4);
    let mut after = Vec::new();
    for n in 0..20 {
        let prefix = format!("FullDiskGrown{n:07}");
        let created = bounded(
            "CreateKey",
            admin.create_key(call(BOOTSTRAP, new_key(&prefix))),
        )
        .await
        .unwrap_or_else(|s| panic!("{prefix} after growing the disk: {s:?}"))
        .into_inner();
        after.push(Acked {
            prefix,
            api_key: created.api_key,
            revision: created.revision,
        });
    }
    assert_eq!(
        after[0].revision,
        last + 1,
        "the refused writes took no revision"
    );
    let mut acked = full.acked.clone();
    acked.extend(after);
    assert_served(&server, &acked, &full.refused, last + 20).await;
    let (_, body) = bounded("/status", common::http_get(server.http, "/status"))
        .await
        .expect("/status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    assert!(
        status["origin"]["last_error"].is_null(),
        "a successful commit clears the error: {status}"
    );
    assert_eq!(status["revision"], last + 20, "{status}");
    assert!(
        server.logged("panicked").is_empty(),
        "no panic: {:?}",
        server.logged("panicked")
    );
}

/// The disk fills; the server is killed (SIGKILL) while it is full; the filesystem is grown and
/// the server restarted on the same directory: every acknowledged write is there, no refused one,
/// and revisions continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_on_a_full_disk_a_restart_has_every_acknowledged_write_and_no_refused_one() {
    let test =
        "after_sigkill_on_a_full_disk_a_restart_has_every_acknowledged_write_and_no_refused_one";
    let Some(disk) = Tmpfs::mount(SMALL_KIB, test) else {
        return;
    };
    let (server, mut admin, seeded) = seeded(&disk).await;
    let full = create_until_full(&mut admin, "FullDiskB").await;
    let last = full.acked.last().map_or(seeded, |a| a.revision);
    assert!(full.acked.len() >= 50, "{} acknowledged", full.acked.len());
    assert_still_serving(&server, &full.acked, last).await;
    drop(admin);
    server.kill();

    // Restarted on the still-full disk, the server must serve exactly the acknowledged writes,
    // or exit with a clear error; never hang or serve a half state. (Here it serves: reopening
    // lets redb reuse the pages of the refused transactions, and the start's write fits.)
    match Server::try_spawn(&disk.data_dir()) {
        Ok(server) => {
            let mut admin = AdminClient::new(server.channel().await);
            let (_, revision) = listed_keys(&mut admin).await;
            assert_eq!(revision, last, "restarted on the full disk");
            assert_served(&server, &full.acked, &full.refused, last).await;
            eprintln!("restarted on the still-full disk: serving at revision {revision}");
            server.kill();
        }
        Err((status, log)) => {
            assert!(
                !status.success() && log.contains("No space left on device"),
                "a start on a full disk that fails says why ({status}):\n{log}"
            );
            eprintln!("restarted on the still-full disk: refused to start ({status})");
        }
    }

    disk.resize(SMALL_KIB * 4);
    let server = Server::spawn(&disk.data_dir());
    let mut admin = AdminClient::new(server.channel().await);
    let (listed, revision) = listed_keys(&mut admin).await;
    assert_eq!(
        revision, last,
        "the restart is at the last acknowledged revision"
    );
    assert_eq!(listed.len(), 12 + full.acked.len(), "{listed:?}");
    assert_served(&server, &full.acked, &full.refused, last).await;
    eprintln!(
        "after SIGKILL on the full disk and a restart on it grown to {} KiB: revision {revision}, {} acknowledged keys present, {} refused absent",
        SMALL_KIB * 4,
        full.acked.len(),
        full.refused.len()
    );
    let next = bounded(
        "CreateKey",
        admin.create_key(call(BOOTSTRAP, new_key("FullDiskRestarted01"))),
    )
    .await
    .expect("a write after the restart")
    .into_inner();
    assert_eq!(next.revision, last + 1, "revisions continue");
}
