//! Follow mode with two real `rolegate serve` processes: a hub on a policy file and a follower
//! (`--upstream`). A change on the hub reaches the follower; with the hub stopped the follower
//! keeps answering and reports its staleness; a change made while the hub was down arrives once
//! the hub is back, with no gap and no duplicate on the follower's own Watch. A hub killed in
//! the middle of a snapshot leaves the follower on its previous state until a whole snapshot
//! has arrived. In this process ([`TestServer`]): health is NOT_SERVING until the first snapshot,
//! and `--max-staleness` takes a follower out of service while its hub is gone or refuses it.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Origin, TestServer, http_get, keys, with_key_status};
use rolegate::grpc::pb::{self, authorizer_client::AuthorizerClient, watch_event::Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_rolegate");

/// A `rolegate serve` child process, stopped (SIGKILL) when dropped.
struct Proc {
    child: Child,
    grpc: String,
    http: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str], grpc: u16, http: u16) -> Proc {
    let child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("ROLEGATE_GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("ROLEGATE_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("ROLEGATE_RELOAD_INTERVAL", "50ms")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("FOLLOW_DEBUG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    Proc {
        child,
        grpc: format!("http://127.0.0.1:{grpc}"),
        http: ([127, 0, 0, 1], http).into(),
    }
}

async fn wait_ready(p: &Proc) {
    // Long enough for a debug build to load tens of thousands of keys.
    common::wait_until_ready(p.http, Duration::from_secs(60)).await;
}

/// Stops a process with SIGTERM and waits for it.
fn terminate(mut p: Proc) {
    let pid = p.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let _ = p.child.wait();
}

async fn client(url: &str) -> AuthorizerClient<Channel> {
    for _ in 0..200 {
        if let Ok(c) = AuthorizerClient::connect(url.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("cannot connect to {url}");
}

/// A Watch request carrying the platform owner's key (Watch needs the reads at ALL scope; the
/// test revokes the auditor's key on the way).
fn as_owner<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("ApiKey {}", keys::OLIVIA_OWNER).parse().unwrap(),
    );
    req
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The next complete revision on a stream: (revision, key prefixes with their status), skipping
/// bookmarks and grants events.
async fn next_revision(s: &mut tonic::Streaming<pb::WatchEvent>) -> (u64, Vec<String>) {
    let mut keys = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("a revision in time")
            .unwrap()
            .expect("the stream stays open");
        match &ev.event {
            Some(Event::Bookmark(_)) => continue,
            Some(Event::Reset(r)) => panic!("the follower's watcher was reset: {r:?}"),
            Some(Event::KeyUpserted(k)) => keys.push(format!("{}={}", k.prefix, k.status)),
            Some(Event::KeyRemoved(p)) => keys.push(format!("{p} removed")),
            _ => {}
        }
        if ev.end_of_revision {
            keys.sort();
            return (ev.revision, keys);
        }
    }
}

async fn check(
    c: &mut AuthorizerClient<Channel>,
    key: &str,
    min_revision: u64,
) -> pb::CheckResponse {
    // A collection call: allowed whenever the key holds any grant for jobs.read.
    let req = pb::CheckRequest {
        api_key: key.into(),
        entitlement: "jobs.read".into(),
        resource: None,
        min_revision,
    };
    let mut call = tonic::Request::new(req);
    call.set_timeout(Duration::from_secs(10));
    c.check(call).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_across_a_hub_restart_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let text = common::example_policy();
    write_atomically(&policy, &text);
    let (hub_grpc, hub_http) = (common::free_port(), common::free_port());
    let hub = spawn(&["--policy", policy.to_str().unwrap()], hub_grpc, hub_http);
    wait_ready(&hub).await;
    let follower = spawn(
        &["--upstream", &hub.grpc, "--upstream-key", keys::FOLLOWER],
        common::free_port(),
        common::free_port(),
    );
    wait_ready(&follower).await;
    let mut fc = client(&follower.grpc).await;
    let mut hc = client(&hub.grpc).await;

    // The follower answers like the hub, at the hub's revision.
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 1).await;
    assert!(r.allowed && r.revision == 1, "{r:?}");

    // A watcher on the follower, from now on.
    let mut fw = fc
        .watch(as_owner(pb::WatchRequest {
            bookmark_interval_ms: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut hw = hc
        .watch(as_owner(pb::WatchRequest::default()))
        .await
        .unwrap()
        .into_inner();

    // 1. Revoke devin's key on the hub: the hub's revision, used as min_revision on the
    //    follower, sees the revocation there.
    let revoked = with_key_status(&text, keys::prefix(keys::DEVIN_DEVELOPER), "inactive");
    write_atomically(&policy, &revoked);
    let (hub_rev, hub_keys) = next_revision(&mut hw).await;
    assert_eq!(hub_keys, ["DevinDevKey000000001=inactive"]);
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, hub_rev).await;
    assert_eq!(
        (r.allowed, r.reason(), r.revision),
        (false, pb::Reason::KeyInactive, hub_rev)
    );
    let (rev1, keys1) = next_revision(&mut fw).await;
    assert_eq!(
        (rev1, keys1),
        (hub_rev, hub_keys),
        "the follower re-serves the hub's revision"
    );

    // 2. Stop the hub: the follower keeps answering from its last state and says how stale.
    terminate(hub);
    let mut disconnected = false;
    for _ in 0..200 {
        let (code, body) = http_get(follower.http, "/readyz").await.unwrap();
        assert_eq!(code, 200, "a follower without its hub stays ready: {body}");
        if body.contains("disconnected") {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(disconnected, "the follower noticed the hub is gone");
    let (_, status) = http_get(follower.http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["origin"]["kind"], "upstream");
    assert_eq!(status["origin"]["upstream"]["connected"], false);
    assert!(
        status["origin"]["upstream"]["staleness_ms"]
            .as_i64()
            .is_some(),
        "{status}"
    );
    let r = check(&mut fc, keys::ARIA_AUDITOR, 0).await;
    assert!(r.allowed, "still answering: {r:?}");

    // 3. Change the policy while the hub is down (devin back, aria's key revoked), start it
    //    again on the same port (it starts over at revision 1, under a new history).
    let changed = with_key_status(
        &with_key_status(&text, keys::prefix(keys::ARIA_AUDITOR), "inactive"),
        keys::prefix(keys::DEVIN_DEVELOPER),
        "active",
    );
    write_atomically(&policy, &changed);
    let hub = spawn(&["--policy", policy.to_str().unwrap()], hub_grpc, hub_http);
    wait_ready(&hub).await;

    // The follower's watcher sees exactly the two changed keys, once, in one revision after
    // the last one it saw: no gap, no duplicate.
    let (rev2, keys2) = next_revision(&mut fw).await;
    assert!(rev2 > rev1, "{rev2} after {rev1}");
    assert_eq!(
        keys2,
        [
            "AriaAuditKey00000001=inactive",
            "DevinDevKey000000001=active"
        ]
    );
    let r = check(&mut fc, keys::ARIA_AUDITOR, rev2).await;
    assert_eq!(r.reason(), pb::Reason::KeyInactive);
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, rev2).await;
    assert!(r.allowed, "{r:?}");
    let (_, status) = http_get(follower.http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["origin"]["upstream"]["connected"], true, "{status}");

    // 4. A follower of the follower (chained) takes a snapshot from it and gets the same keys.
    let chained = spawn(
        &[
            "--upstream",
            &follower.grpc,
            "--upstream-key",
            keys::FOLLOWER,
        ],
        common::free_port(),
        common::free_port(),
    );
    wait_ready(&chained).await;
    let mut cc = client(&chained.grpc).await;
    let r = check(&mut cc, keys::ARIA_AUDITOR, rev2).await;
    assert_eq!((r.reason(), r.revision), (pb::Reason::KeyInactive, rev2));

    // 5. `rolegate watch` prints the follower's state as one JSON line per event.
    let out = Command::new(BIN)
        .args([
            "watch",
            "--addr",
            &follower.grpc,
            "--key",
            keys::OLIVIA_OWNER,
            "--snapshot",
            "--kind",
            "key",
            "--output",
            "json",
        ])
        .args([
            "--count",
            "2",
            "--key-prefix",
            keys::prefix(keys::ARIA_AUDITOR),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .take(2)
        .collect();
    assert_eq!(lines[0]["kind"], "key_upserted", "{stdout}");
    assert_eq!(lines[0]["event"]["status"], "inactive");
    assert_eq!(lines[1]["kind"], "snapshot_end");
    assert_eq!(lines[1]["revision"], rev2);
    let out = Command::new(BIN)
        .args([
            "watch",
            "--addr",
            &follower.grpc,
            "--key",
            keys::OLIVIA_OWNER,
            "--from",
            &(rev2 + 5).to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in the future"), "{stderr}");
    drop(hub);
}

/// A TCP relay between the follower and the hub, so that the test can hold a snapshot in
/// the middle: when a budget is armed, each new connection passes at most that many bytes from
/// the hub and then stops reading from it (the hub's writes block, mid-snapshot, on flow
/// control). `cut` drops every connection, passing on the hub's death to the follower.
struct Relay {
    addr: std::net::SocketAddr,
    hub: Arc<Mutex<std::net::SocketAddr>>,
    budget: Arc<Mutex<Option<usize>>>,
    /// Counts connections that used up their budget.
    stalled: tokio::sync::watch::Receiver<u32>,
    cut: tokio::sync::watch::Sender<u32>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Arc::new(Mutex::new(addr));
        let budget: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
        let (stalled_tx, stalled) = tokio::sync::watch::channel(0u32);
        let stalled_tx = Arc::new(stalled_tx);
        let (cut, cut_rx) = tokio::sync::watch::channel(0u32);
        let (hub2, budget2) = (hub.clone(), budget.clone());
        tokio::spawn(async move {
            loop {
                let Ok((follower, _)) = listener.accept().await else {
                    return;
                };
                let target = *hub2.lock().unwrap();
                let budget = *budget2.lock().unwrap();
                let (stalled_tx, mut cut_rx) = (stalled_tx.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let generation = *cut_rx.borrow_and_update();
                    let (mut fr, mut fw) = follower.into_split();
                    let (mut hr, mut hw) = upstream.into_split();
                    let up = tokio::io::copy(&mut fr, &mut hw);
                    let down = async {
                        let mut left = budget.unwrap_or(usize::MAX);
                        let mut buf = vec![0u8; 64 * 1024];
                        while left > 0 {
                            let want = buf.len().min(left);
                            let n = match hr.read(&mut buf[..want]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if fw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            left -= n;
                        }
                        stalled_tx.send_modify(|n| *n += 1);
                        std::future::pending::<()>().await;
                    };
                    tokio::select! {
                        _ = up => {}
                        () = down => {}
                        _ = cut_rx.wait_for(|g| *g > generation) => {}
                    }
                });
            }
        });
        Relay {
            addr,
            hub,
            budget,
            stalled,
            cut,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The example policy plus `n` keys of a bulk user, and devin's key revoked: a snapshot of some
/// megabytes that differs from the example in ways a Check can tell.
fn bulk_policy(n: usize) -> String {
    let text = with_key_status(
        &common::example_policy(),
        keys::prefix(keys::DEVIN_DEVELOPER),
        "inactive",
    );
    let text = text.replacen(
        "\nusers:\n",
        "\nusers:\n  - { id: bulk, name: Bulk user, teams: [acme] }\n",
        1,
    );
    let hash = rolegate::domain::SecretHash::of_secret("bulk-secret").to_hex();
    let mut keys_yaml = String::from("\nkeys:\n");
    for i in 0..n {
        keys_yaml.push_str(&format!(
            "  - {{ prefix: BulkKey{i:08}, secret_sha256: {hash}, type: team, user: bulk, team: acme, roles: [DEVELOPER] }}\n"
        ));
    }
    text.replacen("\nkeys:\n", &keys_yaml, 1)
}

async fn wait_status(
    p: &Proc,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let status = until_status_at(p.http, what, |s| ok(&s["origin"]["upstream"])).await;
    status["origin"]["upstream"].clone()
}

/// Waits (bounded) until `/status` at `http` satisfies `done`; returns it.
async fn until_status_at(
    http: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let status = async || {
        let (_, body) = http_get(http, "/status").await.unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    for _ in 0..1200 {
        let s = status().await;
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never reached: {what}: {}", status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_snapshot_leaves_the_follower_on_its_previous_state() {
    const BULK: usize = 30_000;
    let bulk_key = "BulkKey00000007.bulk-secret";
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.yaml");
    let big = dir.path().join("big.yaml");
    write_atomically(&small, &common::example_policy());
    write_atomically(&big, &bulk_policy(BULK));
    let relay = Relay::start().await;

    // 1. A hub on the example policy; the follower (through the relay) takes its snapshot.
    let (grpc, http) = (common::free_port(), common::free_port());
    *relay.hub.lock().unwrap() = ([127, 0, 0, 1], grpc).into();
    let hub = spawn(&["--policy", small.to_str().unwrap()], grpc, http);
    wait_ready(&hub).await;
    let follower = spawn(
        &["--upstream", &relay.url(), "--upstream-key", keys::FOLLOWER],
        common::free_port(),
        common::free_port(),
    );
    wait_ready(&follower).await;
    let mut fc = client(&follower.grpc).await;
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 1).await;
    assert!(r.allowed, "{r:?}");
    let old_revision = r.revision;
    let first = wait_status(&follower, "in sync", |s| s["snapshots"] == 1).await;
    assert_eq!(first["snapshot_in_progress"], false);

    // 2. The hub goes; a new one (a new history: the follower must re-snapshot) holds 30,000
    //    more keys. The relay lets each connection pass 2 MB from the hub, then holds it.
    terminate(hub);
    let hub_gone_ms = unix_ms();
    *relay.budget.lock().unwrap() = Some(2 * 1024 * 1024);
    let (grpc, http) = (common::free_port(), common::free_port());
    *relay.hub.lock().unwrap() = ([127, 0, 0, 1], grpc).into();
    let hub = spawn(&["--policy", big.to_str().unwrap()], grpc, http);
    wait_ready(&hub).await;
    let mut stalled = relay.stalled.clone();
    tokio::time::timeout(Duration::from_secs(60), stalled.wait_for(|n| *n >= 1))
        .await
        .expect("the snapshot reached the relay's budget")
        .unwrap();
    let mid = wait_status(&follower, "a snapshot staged in part", |s| {
        s["snapshot_in_progress"] == true && s["snapshot_objects_staged"].as_u64() > Some(0)
    })
    .await;
    let staged = mid["snapshot_objects_staged"].as_u64().unwrap();
    assert!(
        staged < BULK as u64,
        "only part of the snapshot arrived ({staged} objects): {mid}"
    );
    assert_eq!(mid["snapshots"], 1, "{mid}");
    assert!(
        mid["resets"].as_u64() >= Some(1),
        "the new history reset the watch: {mid}"
    );
    // Meanwhile: the previous state answers, unchanged, and the status says how stale it is.
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 0).await;
    assert!(r.allowed && r.revision == old_revision, "{r:?}");
    let r = check(&mut fc, bulk_key, 0).await;
    assert_eq!(r.reason(), pb::Reason::UnknownKey, "{r:?}");
    assert!(
        mid["in_sync_unix_ms"].as_i64() <= Some(hub_gone_ms),
        "not in sync since the first hub went: {mid}"
    );

    // 3. kill -9 the hub in the middle of that snapshot; the relay passes the broken
    //    connection on.
    let mut hub = hub;
    hub.child.kill().unwrap();
    hub.child.wait().unwrap();
    drop(hub);
    relay.cut.send_modify(|g| *g += 1);
    let after = wait_status(&follower, "the snapshot abandoned", |s| {
        s["snapshots_abandoned"].as_u64() >= Some(1) && s["snapshot_in_progress"] == false
    })
    .await;
    assert_eq!(after["snapshots"], 1, "{after}");
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 0).await;
    assert!(
        r.allowed && r.revision == old_revision,
        "still the previous state: {r:?}"
    );
    let r = check(&mut fc, bulk_key, 0).await;
    assert_eq!(r.reason(), pb::Reason::UnknownKey, "{r:?}");
    let (code, body) = http_get(follower.http, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, status) = http_get(follower.http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["revision"].as_u64(), Some(old_revision), "{status}");
    let upstream = &status["origin"]["upstream"];
    assert!(
        upstream["staleness_ms"].as_i64() >= Some(unix_ms() - hub_gone_ms - 1000),
        "stale since the first hub went: {upstream}"
    );

    // 4. The hub is back with the same policy and no relay budget: the follower converges.
    *relay.budget.lock().unwrap() = None;
    let (grpc, http) = (common::free_port(), common::free_port());
    *relay.hub.lock().unwrap() = ([127, 0, 0, 1], grpc).into();
    let hub = spawn(&["--policy", big.to_str().unwrap()], grpc, http);
    wait_ready(&hub).await;
    let done = wait_status(&follower, "the new snapshot applied", |s| {
        s["snapshots"] == 2
    })
    .await;
    assert_eq!(done["snapshot_in_progress"], false, "{done}");
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 0).await;
    assert_eq!(r.reason(), pb::Reason::KeyInactive, "{r:?}");
    assert!(r.revision > old_revision, "{r:?}");
    let r = check(&mut fc, bulk_key, 0).await;
    assert!(r.allowed, "{r:?}");
    let (_, status) = http_get(follower.http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let (_, hub_status) = http_get(hub.http, "/status").await.unwrap();
    let hub_status: serde_json::Value = serde_json::from_str(&hub_status).unwrap();
    assert_eq!(status["counts"], hub_status["counts"], "{status}");
    assert!(status["origin"]["upstream"]["staleness_ms"].as_i64() < Some(5_000));
}

fn unix_ms() -> i64 {
    rolegate::origin::upstream::unix_now_ms()
}

// ---- health and --max-staleness, with hub and follower in this process ----------------------

/// A hub in this process on the policy file `policy`, on the gRPC port `grpc` (where its
/// follower expects it), once ready.
async fn start_hub(policy: &std::path::Path, grpc: u16) -> TestServer {
    TestServer::with(Origin::PolicyAt(policy.to_owned()))
        .grpc_port(grpc)
        .start()
        .await
}

/// A follower in this process of the hub expected on `hub_grpc`, with `--max-staleness 3s`;
/// not waited for (its hub may not be there).
async fn start_follower(hub_grpc: u16) -> TestServer {
    TestServer::with(Origin::Upstream(format!("http://127.0.0.1:{hub_grpc}")))
        .config(|c| c.max_staleness = Some(Duration::from_secs(3)))
        .no_wait()
        .start()
        .await
}

/// Waits (bounded) until gRPC health reports `want` for both services; returns /readyz and
/// /status then.
async fn until_health(
    server: &TestServer,
    want: tonic_health::pb::health_check_response::ServingStatus,
) -> ((u16, String), serde_json::Value) {
    for _ in 0..1200 {
        if server.health().await == [want, want] {
            let readyz = server.http_get("/readyz").await;
            return (readyz, server.status().await);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "health never became {want:?}: {:?}",
        server.http_get("/status").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_only_after_its_first_snapshot() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    write_atomically(&policy, &common::example_policy());
    let hub_port = common::free_port();

    // No hub yet: not serving, and it says why.
    let follower = start_follower(hub_port).await;
    let ((code, body), status) = until_health(&follower, ServingStatus::NotServing).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no snapshot from the hub"), "{body}");
    assert_eq!(status["ready"], false);
    let why = status["not_ready"].as_str().unwrap_or_default();
    assert!(
        why.contains("no snapshot from the hub") && why.contains("cannot reach the hub"),
        "{status}"
    );
    let mut fc = follower.authorizer().await;
    let mut call = tonic::Request::new(pb::CheckRequest {
        api_key: keys::DEVIN_DEVELOPER.into(),
        entitlement: "jobs.read".into(),
        ..Default::default()
    });
    call.set_timeout(Duration::from_secs(5));
    let err = fc.check(call).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // The hub comes: after the snapshot, serving.
    let hub = start_hub(&policy, hub_port).await;
    let ((code, body), status) = until_health(&follower, ServingStatus::Serving).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status["ready"], true, "{status}");
    assert!(status.get("not_ready").is_none(), "{status}");
    assert_eq!(status["origin"]["upstream"]["snapshots"], 1, "{status}");
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 0).await;
    assert!(r.allowed, "{r:?}");
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_staleness_takes_a_follower_out_while_its_hub_is_gone_or_refuses() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let text = common::example_policy();
    write_atomically(&policy, &text);
    let hub_port = common::free_port();
    let hub = start_hub(&policy, hub_port).await;
    let follower = start_follower(hub_port).await;
    let (_, first) = until_health(&follower, ServingStatus::Serving).await;
    let mut fc = follower.authorizer().await;

    // 0. An idle hub is still heard from: its bookmarks move the last contact on, while the
    //    revision stays where it was.
    let contact = |s: &serde_json::Value| s["origin"]["upstream"]["last_contact_unix_ms"].as_i64();
    let since = contact(&first).unwrap();
    for _ in 0..1200 {
        let (_, now) = http_get(follower.http_addr, "/status").await.unwrap();
        let now: serde_json::Value = serde_json::from_str(&now).unwrap();
        if contact(&now) > Some(since + 1500) {
            assert_eq!(now["revision"], first["revision"], "idle: {now}");
            assert_eq!(now["ready"], true, "{now}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // 1. The hub stops. Once it has been silent for --max-staleness: NOT_SERVING and 503,
    //    and /status says for how long and the last error. Check still answers.
    hub.stop().await.unwrap();
    let ((code, body), status) = until_health(&follower, ServingStatus::NotServing).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no contact with the hub"), "{body}");
    let up = &status["origin"]["upstream"];
    assert_eq!(up["stale"], true, "{status}");
    assert_eq!(up["max_staleness_ms"], 3000, "{status}");
    assert!(up["since_contact_ms"].as_i64() >= Some(3000), "{status}");
    let why = status["not_ready"].as_str().unwrap_or_default();
    assert!(
        why.contains("more than --max-staleness 3s") && why.contains("cannot reach the hub"),
        "{status}"
    );
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 0).await;
    assert!(r.allowed, "the last state still answers: {r:?}");

    // 2. The hub is back: serving again.
    let hub = start_hub(&policy, hub_port).await;
    let ((code, body), status) = until_health(&follower, ServingStatus::Serving).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status["origin"]["upstream"]["stale"], false, "{status}");

    // 3. The hub comes back refusing the follower's key: not serving, with the refusal.
    hub.stop().await.unwrap();
    let refusing = with_key_status(&text, keys::prefix(keys::FOLLOWER), "inactive");
    write_atomically(&policy, &refusing);
    let hub = start_hub(&policy, hub_port).await;
    let (_, status) = until_health(&follower, ServingStatus::NotServing).await;
    let why = status["not_ready"].as_str().unwrap_or_default();
    assert!(
        why.contains("no contact with the hub") && why.contains("refused"),
        "{status}"
    );

    // 4. The key is accepted again (the hub reloads its policy): serving.
    write_atomically(&policy, &text);
    let ((code, body), _) = until_health(&follower, ServingStatus::Serving).await;
    assert_eq!(code, 200, "{body}");
    hub.stop().await.unwrap();
}

// ---- several hubs ---------------------------------------------------------------------------

/// A follower given two hubs that share one history (both follow the same root) fails over
/// when the hub it uses goes away, and resumes on the other from its revision: no second
/// snapshot, nothing missed, the change made meanwhile applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_two_hubs_fails_over_and_resumes_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let text = common::example_policy();
    write_atomically(&policy, &text);
    let root = start_hub(&policy, common::free_port()).await;
    let hub_a = TestServer::follower(&root).await;
    let hub_b = TestServer::follower(&root).await;
    let sidecar = TestServer::with(Origin::Upstream(format!("{},{}", hub_a.url(), hub_b.url())))
        .start()
        .await;
    let status = sidecar.status().await;
    let up = &status["origin"]["upstream"];
    assert_eq!(up["hub"], hub_a.url(), "the first hub first: {status}");
    assert_eq!(up["hubs"], serde_json::json!([hub_a.url(), hub_b.url()]));
    assert_eq!(up["snapshots"], 1, "{status}");
    let mut sc = sidecar.authorizer().await;
    assert!(check(&mut sc, keys::DEVIN_DEVELOPER, 0).await.allowed);

    // The hub in use goes away; meanwhile the root deactivates Devin's key.
    hub_a.stop().await.unwrap();
    write_atomically(
        &policy,
        &with_key_status(&text, keys::prefix(keys::DEVIN_DEVELOPER), "inactive"),
    );
    let root_revision =
        until_status_at(root.http_addr, "reloaded", |s| s["revision"] == 2).await["revision"]
            .as_u64()
            .unwrap();
    let status = until_status_at(
        sidecar.http_addr,
        "at the root's revision on the other hub",
        |s| s["revision"].as_u64() == Some(root_revision),
    )
    .await;
    let up = &status["origin"]["upstream"];
    assert_eq!(up["hub"], hub_b.url(), "failed over: {status}");
    assert!(up["fail_overs"].as_u64() >= Some(1), "{status}");
    assert_eq!(up["snapshots"], 1, "resumed, not re-snapshotted: {status}");
    assert_eq!(up["resets"], 0, "{status}");
    let r = check(&mut sc, keys::DEVIN_DEVELOPER, 0).await;
    assert!(
        !r.allowed,
        "the change made during the fail-over applies: {r:?}"
    );
    drop((hub_b, root));
}
