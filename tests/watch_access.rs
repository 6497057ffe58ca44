//! Who may Watch, and what a Watch may cost, against real servers on loopback sockets:
//!
//! - Watch is authenticated and needs the reads at ALL scope; secret hashes need
//!   `keys.replicate` (the FOLLOWER role); a stream whose key is deactivated or loses its role
//!   (through the Admin API of the embedded store) ends before any later revision.
//! - At most `--watch-max-subscribers` streams (RESOURCE_EXHAUSTED beyond); a client that stops
//!   reading a snapshot holds up nobody else.
//! - Ignored by default (it starts the real binary on 50,000 keys and takes a while in a debug
//!   build): the resident memory that 200 stalled snapshot streams add, printed for docs/watch.md.

mod common;

use std::{process::Stdio, time::Duration};

use common::{BOOTSTRAP, Origin, TestServer, call, http_get, keys, seed_example};
use rolegate::{
    domain::SecretHash,
    grpc::pb::{self, authorizer_client::AuthorizerClient, watch_event::Event},
};
use tonic::{Code, Streaming};

/// A Watch request with `key` in `authorization: ApiKey` metadata.
fn watch_as(key: &str, req: pb::WatchRequest) -> tonic::Request<pb::WatchRequest> {
    call(key, req)
}

fn snapshot(secrets: bool) -> pb::WatchRequest {
    pb::WatchRequest {
        snapshot: true,
        include_secret_hashes: secrets,
        ..Default::default()
    }
}

/// Reads a stream up to its snapshot end: the key events, and the snapshot's revision.
async fn read_snapshot(s: &mut Streaming<pb::WatchEvent>) -> (Vec<pb::KeyUpserted>, u64) {
    let mut keys = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("the snapshot arrives in time")
            .expect("stream ok")
            .expect("stream open");
        match ev.event {
            Some(Event::KeyUpserted(k)) => keys.push(k),
            Some(Event::SnapshotEnd(_)) => return (keys, ev.revision),
            _ => {}
        }
    }
}

/// The next event or the status that ends the stream (bookmarks skipped).
async fn next_or_end(s: &mut Streaming<pb::WatchEvent>) -> Result<Option<pb::WatchEvent>, Code> {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("an event or the end in time");
        match got {
            Ok(Some(ev)) if matches!(ev.event, Some(Event::Bookmark(_))) => continue,
            Ok(other) => return Ok(other),
            Err(status) => return Err(status.code()),
        }
    }
}

#[tokio::test]
async fn watch_needs_a_key_that_reads_everything_and_only_followers_get_hashes() {
    let server = TestServer::policy(&common::example_policy()).await;
    let mut c = server.authorizer().await;

    // No key, a malformed one, a wrong secret, an inactive key: unauthenticated.
    let err = c.watch(snapshot(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    for bad in [
        "nonsense",
        "AriaAuditKey00000001.wrong-secret",
        keys::DEVIN_OLD_INACTIVE,
    ] {
        let err = c.watch(watch_as(bad, snapshot(false))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad}: {err:?}");
    }
    // Keys that cannot read everything: a developer, a team admin (TEAM scope only), a project
    // key with SYSTEM_KEY.
    for narrow in [keys::DEVIN_DEVELOPER, keys::ADAM_ADMIN, keys::FRAUD_PROJECT] {
        let err = c
            .watch(watch_as(narrow, snapshot(false)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{narrow}: {err:?}");
        assert!(err.message().contains("at ALL scope"), "{err:?}");
    }

    // The auditor and the owner watch, but never get a hash, and asking for them is refused.
    for reader in [keys::ARIA_AUDITOR, keys::OLIVIA_OWNER] {
        let err = c.watch(watch_as(reader, snapshot(true))).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{reader}: {err:?}");
        assert!(err.message().contains("keys.replicate"), "{err:?}");
        let mut s = c
            .watch(watch_as(reader, snapshot(false)))
            .await
            .unwrap()
            .into_inner();
        let (keys, _) = read_snapshot(&mut s).await;
        assert_eq!(keys.len(), 11, "{reader}");
        assert!(
            keys.iter().all(|k| k.secret_sha256.is_empty()),
            "{reader} got a hash"
        );
    }
    // The same through the request's api_key field.
    let mut s = c
        .watch(pb::WatchRequest {
            api_key: keys::ARIA_AUDITOR.into(),
            ..snapshot(false)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_snapshot(&mut s).await.0.len(), 11);

    // The follower's key gets every key's hash: the very hash of the policy file.
    let mut s = c
        .watch(watch_as(keys::FOLLOWER, snapshot(true)))
        .await
        .unwrap()
        .into_inner();
    let (got, _) = read_snapshot(&mut s).await;
    assert_eq!(got.len(), 11);
    let devin = got
        .iter()
        .find(|k| k.prefix == keys::prefix(keys::DEVIN_DEVELOPER))
        .unwrap();
    let secret = keys::DEVIN_DEVELOPER.split_once('.').unwrap().1;
    assert_eq!(devin.secret_sha256, SecretHash::of_secret(secret).to_hex());
    assert!(got.iter().all(|k| k.secret_sha256.len() == 64));
    server.stop().await.unwrap();
}

/// A follower key deactivated through the Admin API mid-stream: the stream ends with
/// UNAUTHENTICATED before any event of the deactivating revision or a later one; a key that
/// stays active but loses the FOLLOWER role ends with PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_key_loses_the_grant() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    seed_example(&mut admin).await;
    let mut authz = server.authorizer().await;

    // Two followers and an auditor watching, then live changes.
    let mut open = async |key: &str, secrets: bool| {
        let mut s = authz
            .watch(watch_as(key, snapshot(secrets)))
            .await
            .unwrap()
            .into_inner();
        let (keys, revision) = read_snapshot(&mut s).await;
        assert!(keys.iter().all(|k| k.secret_sha256.is_empty() != secrets));
        (s, revision)
    };
    let (mut deactivated, at) = open(keys::FOLLOWER, true).await;
    let (mut auditor, _) = open(keys::ARIA_AUDITOR, false).await;
    // A second FOLLOWER key (of the same project) that will lose its role.
    let created = admin
        .create_key(call(
            BOOTSTRAP,
            pb::CreateKeyRequest {
                prefix: "SecondFollower01".into(),
                key_type: pb::KeyType::Project as i32,
                project: "rolegate-followers".into(),
                roles: vec!["FOLLOWER".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (mut demoted, _) = open(&created.api_key, true).await;

    // The first follower key is deactivated, then devin's key changes.
    let update = |prefix: &str, status: &str| pb::UpdateKeyRequest {
        prefix: prefix.into(),
        status: Some(status.into()),
        ..Default::default()
    };
    let off = admin
        .update_key(call(
            BOOTSTRAP,
            update(keys::prefix(keys::FOLLOWER), "inactive"),
        ))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let later = admin
        .update_key(call(
            BOOTSTRAP,
            update(keys::prefix(keys::DEVIN_DEVELOPER), "inactive"),
        ))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(at < off && off < later);

    // The deactivated follower saw the revision that created the second key (it could see
    // that one), then its stream ended: nothing of `off` or later.
    let mut seen = Vec::new();
    let end = loop {
        match next_or_end(&mut deactivated).await {
            Ok(Some(ev)) => seen.push(ev.revision),
            Ok(None) => panic!("the stream ended without a status after {seen:?}"),
            Err(code) => break code,
        }
    };
    assert_eq!(end, Code::Unauthenticated, "after {seen:?}");
    assert!(
        seen.iter().all(|r| *r < off),
        "{seen:?} (deactivated at {off})"
    );

    // The auditor goes on: it sees the deactivation and devin's change.
    let mut revisions = Vec::new();
    while !revisions.contains(&later) {
        let ev = next_or_end(&mut auditor).await.unwrap().unwrap();
        if ev.end_of_revision {
            revisions.push(ev.revision);
        }
    }
    assert!(revisions.contains(&off), "{revisions:?}");

    // The second key keeps authenticating but loses the FOLLOWER role: permission denied,
    // with nothing of that revision sent.
    let demote = admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: "SecondFollower01".into(),
                replace_roles: true,
                roles: vec!["SYSTEM_KEY".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let end = loop {
        match next_or_end(&mut demoted).await {
            Ok(Some(ev)) => assert!(ev.revision < demote, "{ev:?} (demoted at {demote})"),
            Ok(None) => panic!("the stream ended without a status"),
            Err(code) => break code,
        }
    };
    assert_eq!(end, Code::PermissionDenied);
    // And a new stream with either key is refused the same way.
    let err = authz
        .watch(watch_as(keys::FOLLOWER, snapshot(true)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = authz
        .watch(watch_as(&created.api_key, snapshot(false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await.unwrap();
}

/// A key that expires while its stream is idle: the stream ends when the expiry passes, with no
/// revision needed to notice it.
#[tokio::test]
async fn a_stream_ends_when_its_key_expires() {
    let hash = SecretHash::of_secret("expiring-secret").to_hex();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let policy = common::example_policy().replacen(
        "\nkeys:\n",
        &format!(
            "\nkeys:\n  - {{ prefix: ExpiringFollower01, secret_sha256: {hash}, type: project, project: rolegate-followers, roles: [FOLLOWER], expires_at: \"{expires}\" }}\n"
        ),
        1,
    );
    let server = TestServer::policy(&policy).await;
    let mut c = server.authorizer().await;
    let mut s = c
        .watch(watch_as(
            "ExpiringFollower01.expiring-secret",
            pb::WatchRequest {
                include_secret_hashes: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("the stream ends once the key has expired")
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{err:?}");
    server.stop().await.unwrap();
}

async fn subscribers(server: &TestServer) -> u64 {
    let (_, body) = http_get(server.http_addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["watch"]["subscribers"].as_u64().unwrap()
}

#[tokio::test]
async fn subscribers_beyond_the_limit_are_refused_until_a_place_frees() {
    let server = TestServer::with(Origin::policy(&common::example_policy()))
        .config(|c| c.watch_max_subscribers = 2)
        .start()
        .await;
    let mut c = server.authorizer().await;
    let live = || watch_as(keys::ARIA_AUDITOR, pb::WatchRequest::default());
    let first = c.watch(live()).await.unwrap().into_inner();
    let _second = c.watch(live()).await.unwrap().into_inner();
    let err = c.watch(live()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("at most 2"), "{err:?}");
    // An unauthenticated caller learns nothing about the limit.
    let err = c.watch(pb::WatchRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A stream that ends gives its place back.
    drop(first);
    for _ in 0..400 {
        if subscribers(&server).await < 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(subscribers(&server).await, 1);
    let _third = c.watch(live()).await.unwrap().into_inner();
    let (_, body) = http_get(server.http_addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["watch"]["refused_busy"], 1, "{status}");
    assert_eq!(status["watch"]["max_subscribers"], 2, "{status}");
    server.stop().await.unwrap();
}

/// The example policy with `n` more keys (of 1,000 users), each with its own secret.
fn bulk_policy(n: usize) -> String {
    let mut text = common::example_policy();
    let user_count = n.div_ceil(10).clamp(1, 1000);
    let mut users = String::from("\nusers:\n");
    for u in 0..user_count {
        users.push_str(&format!(
            "  - {{ id: bulk{u:04}, name: Bulk {u}, teams: [acme] }}\n"
        ));
    }
    text = text.replacen("\nusers:\n", &users, 1);
    let mut keys_yaml = String::from("\nkeys:\n");
    for i in 0..n {
        let hash = SecretHash::of_secret(&format!("bulk-secret-{i}")).to_hex();
        keys_yaml.push_str(&format!(
            "  - {{ prefix: BulkKey{i:08}, secret_sha256: {hash}, type: team, user: bulk{:04}, team: acme, roles: [DEVELOPER] }}\n",
            i % user_count
        ));
    }
    text.replacen("\nkeys:\n", &keys_yaml, 1)
}

/// A client that stops reading a snapshot holds up no other subscriber and no writer: while it
/// waits (its HTTP/2 windows full), another client takes a whole snapshot and sees a change
/// applied after it; the stalled one, read at last, gets its whole snapshot and that change too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_snapshot_holds_up_nobody() {
    const BULK: usize = 3000;
    let policy = bulk_policy(BULK);
    let server = TestServer::policy(&policy).await;
    // Small windows, so that the stalled stream's 3,000 keys cannot all be in flight.
    let stalled_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap()
            .initial_stream_window_size(Some(16 * 1024))
            .initial_connection_window_size(Some(16 * 1024))
            .connect()
            .await
            .unwrap();
    let mut stalled = AuthorizerClient::new(stalled_channel)
        .watch(watch_as(keys::FOLLOWER, snapshot(true)))
        .await
        .unwrap()
        .into_inner();
    // Its first event is there: the snapshot has begun (and then it is not read).
    let first = stalled.message().await.unwrap().unwrap();
    assert!(first.event.is_some());

    let mut c = server.authorizer().await;
    let mut other = c
        .watch(watch_as(keys::ARIA_AUDITOR, snapshot(false)))
        .await
        .unwrap()
        .into_inner();
    let (got, at) = read_snapshot(&mut other).await;
    assert_eq!(got.len(), BULK + 11);
    // A write while the stalled stream waits: applied, and seen by the reading client.
    let revoked = policy.replacen(
        "prefix: DevinDevKey000000001\n    secret_sha256: df8bbf83baef2f851f440c09e2bcdbe719483f68c57b256e75c2d44e50fc9011\n    type: team\n    user: devin\n    team: acme\n    roles: [DEVELOPER]\n    status: active",
        "prefix: DevinDevKey000000001\n    secret_sha256: df8bbf83baef2f851f440c09e2bcdbe719483f68c57b256e75c2d44e50fc9011\n    type: team\n    user: devin\n    team: acme\n    roles: [DEVELOPER]\n    status: inactive",
        1,
    );
    assert_ne!(revoked, policy);
    server.write_policy(&revoked);
    let change = loop {
        let ev = next_or_end(&mut other).await.unwrap().unwrap();
        if let Some(Event::KeyUpserted(k)) = ev.event {
            break (ev.revision, k.prefix, k.status);
        }
    };
    assert!(change.0 > at);
    assert_eq!(change.1, keys::prefix(keys::DEVIN_DEVELOPER));
    assert_eq!(change.2, "inactive");
    let r = c
        .check(common::check(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "acme",
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason(), pb::Reason::KeyInactive);

    // The stalled client reads at last: a whole snapshot, then the change (no gap).
    let (mut keys_seen, snap_at) = read_snapshot(&mut stalled).await;
    if let Some(Event::KeyUpserted(k)) = first.event {
        keys_seen.push(k);
    }
    assert_eq!(keys_seen.len(), BULK + 11);
    assert!(keys_seen.iter().all(|k| k.secret_sha256.len() == 64));
    assert!(snap_at < change.0);
    loop {
        let ev = next_or_end(&mut stalled).await.unwrap().unwrap();
        if let Some(Event::KeyUpserted(k)) = ev.event {
            assert_eq!((ev.revision, k.prefix, k.status), change);
            break;
        }
    }
    server.stop().await.unwrap();
}

// ---- the measurement ---------------------------------------------------------------------------

/// Resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

async fn watch_status(http: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["watch"].clone()
}

/// 200 `Watch{snapshot}` streams opened on one connection and never read, against the real
/// binary serving 50,000 keys: the server's resident memory before and after, once every stream
/// has stopped sending. Run with
/// `cargo test --test watch_access -- --ignored --nocapture stalled_snapshot_streams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: starts the binary on 50,000 keys; prints the figures for docs/watch.md"]
async fn stalled_snapshot_streams_add_little_memory() {
    const KEYS: usize = 50_000;
    const STREAMS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, bulk_policy(KEYS - 11)).unwrap();
    for (who, key, secrets) in [
        ("FOLLOWER, with secret hashes", keys::FOLLOWER, true),
        ("AUDITOR, without hashes", keys::ARIA_AUDITOR, false),
    ] {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (grpc, http) = (free(), free());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
            .args(["serve", "--policy", policy.to_str().unwrap()])
            .env("ROLEGATE_GRPC_LISTEN", grpc.to_string())
            .env("ROLEGATE_HTTP_LISTEN", http.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        common::wait_until_ready(http, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_bytes(pid);

        // One connection, as a single misbehaving client would open them.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut streams = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            let mut c = AuthorizerClient::new(channel.clone());
            streams.push(
                c.watch(watch_as(key, snapshot(secrets)))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        // Settled: every stream open, and nothing more sent for a while.
        let mut last = u64::MAX;
        let mut still = 0;
        while still < 5 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let w = watch_status(http).await;
            let sent = w["events_sent"].as_u64().unwrap();
            let open = w["subscribers"].as_u64().unwrap();
            still = if sent == last && open == STREAMS as u64 {
                still + 1
            } else {
                0
            };
            last = sent;
        }
        let after = rss_bytes(pid);
        let added = after.saturating_sub(before);
        println!(
            "{STREAMS} stalled Watch{{snapshot}} streams on one connection, {who}, over {KEYS} keys: \
             server RSS {:.1} MB -> {:.1} MB: +{:.1} MB ({:.1} KB per stream); {last} events queued or sent in all",
            before as f64 / 1e6,
            after as f64 / 1e6,
            added as f64 / 1e6,
            added as f64 / 1e3 / STREAMS as f64,
        );
        drop(streams);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            added <= 50_000_000,
            "{STREAMS} stalled snapshot streams added {added} bytes"
        );
    }
}
