//! Follow mode with two real `rolegate serve` processes: a hub on a policy file and a follower
//! (`--upstream`). A change on the hub reaches the follower; with the hub stopped the follower
//! keeps answering and reports its staleness; a change made while the hub was down arrives once
//! the hub is back, with no gap and no duplicate on the follower's own Watch.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{http_get, keys};
use rolegate::grpc::pb::{self, authorizer_client::AuthorizerClient, watch_event::Event};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_rolegate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    for _ in 0..400 {
        if http_get(p.http, "/readyz")
            .await
            .is_ok_and(|(c, _)| c == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("rolegate serve did not become ready");
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

/// Sets the status of the key with `prefix` in the policy text.
fn with_status(text: &str, prefix: &str, status: &str) -> String {
    let at = text.find(&format!("prefix: {prefix}")).unwrap();
    let rel = text[at..].find("status: ").unwrap();
    let start = at + rel + "status: ".len();
    let end = start + text[start..].find('\n').unwrap();
    format!("{}{status}{}", &text[..start], &text[end..])
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
    let (hub_grpc, hub_http) = (free_port(), free_port());
    let hub = spawn(&["--policy", policy.to_str().unwrap()], hub_grpc, hub_http);
    wait_ready(&hub).await;
    let follower = spawn(
        &[
            "--upstream",
            &hub.grpc,
            "--upstream-key",
            keys::OLIVIA_OWNER,
        ],
        free_port(),
        free_port(),
    );
    wait_ready(&follower).await;
    let mut fc = client(&follower.grpc).await;
    let mut hc = client(&hub.grpc).await;

    // The follower answers like the hub, at the hub's revision.
    let r = check(&mut fc, keys::DEVIN_DEVELOPER, 1).await;
    assert!(r.allowed && r.revision == 1, "{r:?}");

    // A watcher on the follower, from now on.
    let mut fw = fc
        .watch(pb::WatchRequest {
            bookmark_interval_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut hw = hc
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();

    // 1. Revoke devin's key on the hub: the hub's revision, used as min_revision on the
    //    follower, sees the revocation there.
    let revoked = with_status(&text, keys::prefix(keys::DEVIN_DEVELOPER), "inactive");
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
    let changed = with_status(
        &with_status(&text, keys::prefix(keys::ARIA_AUDITOR), "inactive"),
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
            keys::OLIVIA_OWNER,
        ],
        free_port(),
        free_port(),
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
