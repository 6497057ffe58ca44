//! Several rolegate instances on one real etcd (started by the tests on loopback; skipped with a
//! message when etcd is not installed, failed with `ROLEGATE_REQUIRE_TOOLS=1`):
//!
//! - one revision line: a write through one instance is seen at its revision on the other,
//!   with etcd's revision moved on by keys outside the prefix in between;
//! - conflicting writes on two instances at once never both commit, and an escalation raced
//!   against a role change never commits;
//! - a compaction past an instance's revision (its connection to etcd cut meanwhile): the right
//!   state, and a reset for its own Watch subscribers;
//! - etcd killed: both instances answer from their last state and report it, then catch up;
//! - a three-member cluster loses a member: reads and writes go on;
//! - an Apply beyond etcd's transaction limit is refused whole; an instance killed during a
//!   large Apply leaves all of it or none;
//! - etcd's authentication, and etcd over mutual TLS; a follower of two hubs fails over without a
//!   snapshot.

mod common;

use std::time::Duration;

use common::{
    BOOTSTRAP, Origin, TestServer, call, check_at,
    etcd::{Etcd, MemberTls},
    example_with_bootstrap, keys,
    pki::Ca,
};
use rolegate::{
    grpc::pb::{self, Reason, watch_event::Event},
    tls::client::ClientTls,
};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::Code;

/// An instance on `endpoints`, under the default prefix.
async fn instance(endpoints: &str) -> TestServer {
    TestServer::with(Origin::Etcd {
        endpoints: endpoints.to_owned(),
        prefix: "/rolegate/".into(),
    })
    .config(|c| c.max_revision_wait = Duration::from_secs(10))
    .start()
    .await
}

/// Applies the example policy through `server`; returns the revision.
async fn seed(server: &TestServer) -> u64 {
    let apply = pb::ApplyRequest {
        document: example_with_bootstrap(),
        prune: true,
        ..Default::default()
    };
    let mut admin = server.admin().await;
    admin
        .apply(call(BOOTSTRAP, apply))
        .await
        .expect("apply")
        .into_inner()
        .revision
}

/// Sets the status of `prefix` through `server`; returns the revision.
async fn set_status(server: &TestServer, prefix: &str, status: &str) -> u64 {
    let update = pb::UpdateKeyRequest {
        prefix: prefix.into(),
        status: Some(status.into()),
        ..Default::default()
    };
    let mut admin = server.admin().await;
    admin
        .update_key(call(BOOTSTRAP, update))
        .await
        .expect("update the key")
        .into_inner()
        .revision
}

/// Waits (bounded) until `server` has applied `revision`.
async fn wait_revision(server: &TestServer, revision: u64) {
    for _ in 0..600 {
        if server.status().await["revision"].as_u64() >= Some(revision) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("revision {revision} never applied");
}

/// Waits (bounded) until `/status` of `server` satisfies `f`.
async fn wait_status(server: &TestServer, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..600 {
        let status = server.status().await;
        if f(&status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {what}: {}", server.status().await);
}

/// A TCP relay in front of an etcd member, which the test can cut (every connection dropped,
/// new ones refused) and restore, to take one instance away from etcd while others stay.
struct Relay {
    url: String,
    open: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = watch::Sender::new(true);
        let state = open.subscribe();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue;
                }
                let target = target.clone();
                let mut state = state.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Relay { url, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// Two instances started at once on an empty prefix: one bootstraps it, both serve it. A write
/// through A returns revision R; a Check on B with `min_revision` R waits for it and answers at
/// R, though etcd's revisions moved on meanwhile through keys outside the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_is_seen_at_its_revision_on_the_other() {
    let Some(etcd) = Etcd::start("etcd::a_write_on_one_instance").await else {
        return;
    };
    let endpoints = etcd.endpoints();
    let (a, b) = tokio::join!(instance(&endpoints), instance(&endpoints));
    let base = seed(&a).await;
    wait_revision(&b, base).await;
    assert_eq!(
        a.status().await["revision"],
        b.status().await["revision"],
        "one state, one revision"
    );

    // Revisions outside the prefix: gaps in rolegate's revisions.
    let outside = etcd.put("/elsewhere/x", "1").await;
    assert!(outside as u64 > base);
    let devin = keys::prefix(keys::DEVIN_DEVELOPER);
    let revoked = set_status(&a, devin, "inactive").await;
    assert!(revoked as i64 > outside, "{revoked} after {outside}");
    let r = b
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "",
            "",
            revoked,
        ))
        .await;
    assert_eq!(
        (r.allowed, r.reason(), r.revision),
        (false, Reason::KeyInactive, revoked)
    );
    let b_status = b.status().await;
    assert_eq!(b_status["revision"], revoked, "{b_status}");
    assert_eq!(b_status["origin"]["kind"], "etcd");

    // A Watch of A resumes on B from the same revision: same history, same revisions.
    let history = a.status().await["watch"]["history"].clone();
    assert_eq!(history, b_status["watch"]["history"]);
    etcd.put("/elsewhere/x", "2").await;
    let restored = set_status(&b, devin, "active").await;
    wait_revision(&a, restored).await;
    let resume = pb::WatchRequest {
        start_revision: revoked,
        history: history.as_str().unwrap().to_owned(),
        ..Default::default()
    };
    for server in [&a, &b] {
        let mut stream = server.watch(keys::ARIA_AUDITOR, resume.clone()).await;
        let mut seen = Vec::new();
        while seen.last() != Some(&restored) {
            let ev = next_event(&mut stream).await;
            assert!(
                !matches!(ev.event, Some(Event::Reset(_))),
                "no reset: {ev:?}"
            );
            if ev.end_of_revision {
                seen.push(ev.revision);
            }
        }
        assert_eq!(seen, [revoked, restored]);
    }
}

/// The same key created through both instances at once, over and over: exactly one creation
/// commits each time, and the key authenticates with the winner's secret only. Re-keying one key
/// through both at once: both writes are serialized, and only the last secret works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_on_two_instances_never_both_commit() {
    let Some(etcd) = Etcd::start("etcd::conflicting_writes").await else {
        return;
    };
    let a = instance(&etcd.endpoints()).await;
    let b = instance(&etcd.endpoints()).await;
    let base = seed(&a).await;
    wait_revision(&b, base).await;
    for round in 0..8 {
        let prefix = format!("RaceKey{round:013}");
        let create = |user: &str, team: &str| pb::CreateKeyRequest {
            prefix: prefix.clone(),
            key_type: pb::KeyType::Team.into(),
            user: user.into(),
            team: team.into(),
            roles: vec!["DEVELOPER".into()],
            ..Default::default()
        };
        let (mut admin_a, mut admin_b) = (a.admin().await, b.admin().await);
        let (ra, rb) = tokio::join!(
            admin_a.create_key(call(BOOTSTRAP, create("devin", "acme"))),
            admin_b.create_key(call(BOOTSTRAP, create("gus", "globex"))),
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w.into_inner(), l),
            (ra, rb) => panic!("round {round}: exactly one creation commits: {ra:?} {rb:?}"),
        };
        // Judged again on the state with the winner's key: the prefix is taken.
        assert!(
            loser.code() == Code::InvalidArgument && loser.message().contains("already taken"),
            "{loser:?}"
        );
        for server in [&a, &b] {
            let r = server
                .check(check_at(
                    &winner.api_key,
                    "jobs.read",
                    "",
                    "",
                    winner.revision,
                ))
                .await;
            assert!(r.principal.is_some(), "round {round}: {r:?}");
            assert_eq!(
                r.principal.unwrap().user_id,
                winner.key.as_ref().unwrap().user
            );
        }
    }

    let devin = keys::prefix(keys::DEVIN_DEVELOPER);
    let (mut admin_a, mut admin_b) = (a.admin().await, b.admin().await);
    let rekey = || pb::GetRequest { id: devin.into() };
    let (ra, rb) = tokio::join!(
        admin_a.replace_key_secret(call(BOOTSTRAP, rekey())),
        admin_b.replace_key_secret(call(BOOTSTRAP, rekey())),
    );
    let (ra, rb) = (ra.expect("A").into_inner(), rb.expect("B").into_inner());
    assert_ne!(ra.revision, rb.revision, "two writes, two revisions");
    let (old, last) = if ra.revision < rb.revision {
        (ra, rb)
    } else {
        (rb, ra)
    };
    for server in [&a, &b] {
        let r = server
            .check(check_at(&last.api_key, "jobs.read", "", "", last.revision))
            .await;
        assert_eq!(r.reason(), Reason::Allowed, "{r:?}");
        let r = server
            .check(check_at(&old.api_key, "jobs.read", "", "", last.revision))
            .await;
        assert_eq!(r.reason(), Reason::WrongSecret, "{r:?}");
    }
}

/// An escalation raced against a role change, on two instances at once: an account admin binds
/// a custom role (TEAM grants, which it may hand out) through A while the owner widens that role
/// to ALL through B. The writes are serialized: the binding commits only if it was judged before
/// the role was widened, and is refused as an escalation after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_raced_against_a_role_change_never_commits() {
    let Some(etcd) = Etcd::start("etcd::an_escalation_raced").await else {
        return;
    };
    let a = instance(&etcd.endpoints()).await;
    let b = instance(&etcd.endpoints()).await;
    let base = seed(&a).await;
    wait_revision(&b, base).await;
    let role = |id: &str, scope: &str| pb::Role {
        id: id.into(),
        r#type: "user".into(),
        grants: vec![pb::Grant {
            entitlement: "models.read".into(),
            scope: scope.into(),
        }],
        prebuilt: false,
    };
    let mut outcomes = Vec::new();
    for round in 0..6 {
        let id = format!("RACE_{round}");
        let made = a
            .admin()
            .await
            .create_role(call(
                keys::OLIVIA_OWNER,
                pb::RoleRequest {
                    role: Some(role(&id, "TEAM")),
                },
            ))
            .await
            .expect("create the role")
            .into_inner();
        wait_revision(&b, made.revision).await;
        let bind = pb::CreateKeyRequest {
            prefix: format!("AdamRaceKey{round:09}"),
            key_type: pb::KeyType::Team.into(),
            user: "devin".into(),
            team: "acme".into(),
            roles: vec![id.clone()],
            ..Default::default()
        };
        let widen = pb::RoleRequest {
            role: Some(role(&id, "ALL")),
        };
        let (mut admin_a, mut admin_b) = (a.admin().await, b.admin().await);
        let (bound, widened) = tokio::join!(
            admin_a.create_key(call(keys::ADAM_ADMIN, bind)),
            admin_b.update_role(call(keys::OLIVIA_OWNER, widen)),
        );
        let widened = widened.expect("the owner widens the role").into_inner();
        match bound {
            Ok(bound) => {
                let bound = bound.into_inner();
                assert!(
                    bound.revision < widened.revision,
                    "round {round}: bound at {} after the role was widened at {}",
                    bound.revision,
                    widened.revision
                );
                outcomes.push("bound first");
            }
            Err(refused) => {
                assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
                outcomes.push("refused after the widening");
            }
        }
    }
    eprintln!("escalation race outcomes: {outcomes:?}");
}

/// B is cut off from etcd while A writes and etcd compacts its history past B's revision. When
/// B is back, it reads the state again: it serves the right state, and its own Watch subscriber
/// gets a reset rather than a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_past_an_instance_ends_in_the_right_state_and_a_reset() {
    let Some(etcd) = Etcd::start("etcd::a_compaction_past_an_instance").await else {
        return;
    };
    let relay = Relay::start(&etcd.url(0)).await;
    let a = instance(&etcd.endpoints()).await;
    let base = seed(&a).await;
    let b = instance(&relay.url).await;
    wait_revision(&b, base).await;
    let mut stream = b
        .watch(
            keys::ARIA_AUDITOR,
            pb::WatchRequest {
                start_revision: 0,
                ..Default::default()
            },
        )
        .await;

    relay.cut();
    wait_status(&b, "disconnected", |s| {
        s["origin"]["etcd"]["connected"] == false
    })
    .await;
    let devin = keys::prefix(keys::DEVIN_DEVELOPER);
    let gus = keys::prefix(keys::GUS_DEVELOPER);
    set_status(&a, devin, "inactive").await;
    let last = set_status(&a, gus, "inactive").await;
    etcd.compact().await;
    // While cut off, B answers from its last state.
    let r = b
        .check(check_at(keys::DEVIN_DEVELOPER, "jobs.read", "", "", 0))
        .await;
    assert_eq!(r.reason(), Reason::Allowed, "{r:?}");

    relay.restore();
    wait_status(&b, "re-read after the compaction", |s| {
        s["origin"]["etcd"]["resyncs"].as_u64() >= Some(1)
    })
    .await;
    let r = b
        .check(check_at(keys::GUS_DEVELOPER, "jobs.read", "", "", last))
        .await;
    assert_eq!(r.reason(), Reason::KeyInactive, "{r:?}");
    let r = b
        .check(check_at(keys::DEVIN_DEVELOPER, "jobs.read", "", "", last))
        .await;
    assert_eq!(r.reason(), Reason::KeyInactive, "{r:?}");
    assert_eq!(
        a.status().await["counts"],
        b.status().await["counts"],
        "the same state"
    );
    let ev = next_event(&mut stream).await;
    assert!(
        matches!(ev.event, Some(Event::Reset(_))),
        "the subscriber is reset: {ev:?}"
    );
}

/// etcd killed: both instances keep answering from their last state and report it on /status
/// (one with --max-staleness goes not ready); writes are refused as unavailable. etcd back:
/// both reconnect and catch up with a write made after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_instances_answer_from_the_last_state_and_catch_up() {
    let Some(mut etcd) = Etcd::start("etcd::etcd_killed").await else {
        return;
    };
    let a = instance(&etcd.endpoints()).await;
    let b = TestServer::with(Origin::Etcd {
        endpoints: etcd.endpoints(),
        prefix: "/rolegate/".into(),
    })
    .config(|c| c.max_staleness = Some(Duration::from_secs(3)))
    .start()
    .await;
    let base = seed(&a).await;
    wait_revision(&b, base).await;

    etcd.kill(0);
    for server in [&a, &b] {
        wait_status(server, "disconnected", |s| {
            s["origin"]["etcd"]["connected"] == false
        })
        .await;
        let r = server
            .check(check_at(keys::DEVIN_DEVELOPER, "jobs.read", "", "", 0))
            .await;
        assert_eq!((r.reason(), r.revision), (Reason::Allowed, base), "{r:?}");
    }
    wait_status(&b, "stale", |s| s["origin"]["etcd"]["stale"] == true).await;
    let (code, body) = b.http_get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no contact with etcd"), "{body}");
    let status = a.status().await;
    assert!(
        status["origin"]["etcd"]["staleness_ms"].as_u64() > Some(0),
        "{status}"
    );
    // The same on /metrics, for alerts.
    let (_, metrics) = a.http_get("/metrics").await;
    assert!(
        metrics.contains("\nrolegate_etcd_connected 0\n"),
        "{metrics}"
    );
    let stale: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rolegate_etcd_staleness_seconds "))
        .expect("the staleness gauge")
        .parse()
        .unwrap();
    assert!(stale > 0.0, "{metrics}");
    let update = pb::UpdateKeyRequest {
        prefix: keys::prefix(keys::DEVIN_DEVELOPER).into(),
        status: Some("inactive".into()),
        ..Default::default()
    };
    let refused = a
        .admin()
        .await
        .update_key(call(BOOTSTRAP, update))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    etcd.restart(0).await;
    wait_status(&b, "ready again", |s| s["ready"] == true).await;
    let revoked = set_status(&a, keys::prefix(keys::DEVIN_DEVELOPER), "inactive").await;
    let r = b
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "",
            "",
            revoked,
        ))
        .await;
    assert_eq!(r.reason(), Reason::KeyInactive, "{r:?}");
    let (_, metrics) = a.http_get("/metrics").await;
    assert!(
        metrics.contains("\nrolegate_etcd_connected 1\n"),
        "{metrics}"
    );
    // etcd still had the revisions: both resumed their watch, neither read everything again.
    for server in [&a, &b] {
        let status = server.status().await;
        let etcd = &status["origin"]["etcd"];
        assert_eq!(etcd["resyncs"], 0, "{status}");
        assert!(etcd["connects"].as_u64() >= Some(2), "{status}");
    }
}

/// A three-member cluster: one member killed (the one each instance's endpoint list starts
/// with), reads and writes go on through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_loses_a_member_and_goes_on() {
    let Some(mut etcd) = Etcd::cluster(3, "etcd::a_three_member_cluster").await else {
        return;
    };
    let a = instance(&etcd.endpoints()).await;
    let b = instance(&etcd.endpoints()).await;
    let base = seed(&a).await;
    wait_revision(&b, base).await;
    etcd.kill(0);
    let mut revoked = None;
    // The first write may meet the dead member or a leader election: it is refused as
    // unavailable, never half done; a retry goes through.
    for _ in 0..20 {
        let update = pb::UpdateKeyRequest {
            prefix: keys::prefix(keys::DEVIN_DEVELOPER).into(),
            status: Some("inactive".into()),
            ..Default::default()
        };
        match a.admin().await.update_key(call(BOOTSTRAP, update)).await {
            Ok(done) => {
                revoked = Some(done.into_inner().revision);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let revoked = revoked.expect("a write goes through on two members of three");
    let r = b
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "",
            "",
            revoked,
        ))
        .await;
    assert_eq!(r.reason(), Reason::KeyInactive, "{r:?}");
}

/// An Apply larger than one etcd transaction may be (etcd's default of 128 operations) is
/// refused whole, naming the setting to raise; nothing of it is written. The same Apply on a
/// cluster with the setting raised commits as one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_beyond_the_transaction_limit_is_refused_whole_naming_the_setting() {
    let Some(small) = Etcd::with_max_txn_ops(128, "etcd::an_apply_beyond").await else {
        return;
    };
    let mut document = example_with_bootstrap();
    document = document.replacen(
        "teams:\n",
        &format!(
            "teams:\n{}",
            (0..200)
                .map(|i| format!("  - {{ id: t{i:03}, name: Team {i}, status: active }}\n"))
                .collect::<String>()
        ),
        1,
    );
    let apply = || pb::ApplyRequest {
        document: document.clone(),
        prune: true,
        ..Default::default()
    };
    let a = instance(&small.endpoints()).await;
    let before = a.status().await["revision"].clone();
    let refused = a
        .admin()
        .await
        .apply(call(BOOTSTRAP, apply()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("--max-txn-ops"), "{refused:?}");
    let status = a.status().await;
    assert_eq!(status["revision"], before, "nothing written: {status}");
    assert_eq!(status["counts"]["teams"], 1, "{status}");

    let Some(large) = Etcd::start("etcd::an_apply_beyond").await else {
        return;
    };
    let b = instance(&large.endpoints()).await;
    let done = b
        .admin()
        .await
        .apply(call(BOOTSTRAP, apply()))
        .await
        .expect("apply")
        .into_inner();
    let status = b.status().await;
    assert_eq!(status["revision"], done.revision, "{status}");
    assert_eq!(status["counts"]["teams"], 203, "{status}");
}

/// etcd with authentication on: an instance with the user and password reads and writes; one
/// with a wrong password does not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_authentication_takes_the_user_and_password() {
    let Some(etcd) = Etcd::start("etcd::etcd_with_authentication").await else {
        return;
    };
    let Some(etcdctl) = common::require_tool(
        "etcdctl",
        "ROLEGATE_ETCDCTL_BIN",
        "etcd::etcd_with_authentication",
    ) else {
        return;
    };
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "rolegate:s3cret"],
        &["role", "add", "rolegate"],
        &[
            "role",
            "grant-permission",
            "rolegate",
            "--prefix=true",
            "readwrite",
            "/rolegate/",
        ],
        &["user", "grant-role", "rolegate", "rolegate"],
        &["auth", "enable"],
    ] {
        let out = std::process::Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.url(0)])
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    let with_user = |password: &str| {
        let password = password.to_owned();
        TestServer::with(Origin::Etcd {
            endpoints: etcd.endpoints(),
            prefix: "/rolegate/".into(),
        })
        .config(move |c| {
            c.etcd.etcd_user = Some("rolegate".into());
            c.etcd.etcd_password = Some(password);
        })
    };
    let a = with_user("s3cret").start().await;
    let base = seed(&a).await;
    // The watch, authenticated too, brought the write back.
    let r = a
        .check(check_at(keys::DEVIN_DEVELOPER, "jobs.read", "", "", base))
        .await;
    assert_eq!((r.reason(), r.revision), (Reason::Allowed, base), "{r:?}");

    let wrong = with_user("wrong").no_wait().start().await;
    let err = wrong.join().await.unwrap_err().to_string();
    assert!(err.contains("authentication"), "{err}");
    assert!(!err.contains("wrong"), "the password is not shown: {err}");
}

/// etcd serving its clients over mutual TLS: an instance given the CA and a client certificate
/// signed by it reads and writes; one without a client certificate, or trusting another CA,
/// does not start and says which member it could not reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_mutual_tls_takes_the_ca_and_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca = Ca::new("etcd test CA");
    let member = ca.server("etcd", 1);
    let client = ca.client("rolegate");
    let client = ClientTls {
        ca: Some(file("ca.pem", &ca.pem)),
        cert: Some(file("client.pem", &client.cert_pem)),
        key: Some(file("client.key", &client.key_pem)),
    };
    let other_ca = file("other-ca.pem", &Ca::new("another CA").pem);
    let tls = MemberTls {
        cert: file("etcd.pem", &member.cert_pem),
        key: file("etcd.key", &member.key_pem),
        client_ca: dir.path().join("ca.pem"),
        client: client.clone(),
    };
    let Some(etcd) = Etcd::with_tls(tls, "etcd::etcd_over_mutual_tls").await else {
        return;
    };
    assert!(etcd.endpoints().starts_with("https://"));
    let with_tls = |tls: ClientTls| {
        TestServer::with(Origin::Etcd {
            endpoints: etcd.endpoints(),
            prefix: "/rolegate/".into(),
        })
        .config(move |c| {
            c.etcd.etcd_ca = tls.ca;
            c.etcd.etcd_cert = tls.cert;
            c.etcd.etcd_key = tls.key;
        })
    };
    let a = with_tls(client.clone()).start().await;
    let base = seed(&a).await;
    // The watch, over TLS too, brought the write back.
    let r = a
        .check(check_at(keys::DEVIN_DEVELOPER, "jobs.read", "", "", base))
        .await;
    assert_eq!((r.reason(), r.revision), (Reason::Allowed, base), "{r:?}");

    let refused = [
        ClientTls {
            cert: None,
            key: None,
            ..client.clone()
        },
        ClientTls {
            ca: Some(other_ca),
            ..client
        },
    ];
    for tls in refused {
        let server = with_tls(tls.clone()).no_wait().start().await;
        let err = server.join().await.unwrap_err().to_string();
        assert!(err.contains(&etcd.url(0)), "{tls:?}: {err}");
    }
}

/// A follower of two hubs on one etcd: the hub it uses stops; it resumes on the other from its
/// revision, without a snapshot, and goes on applying the writes made there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_two_hubs_fails_over_without_a_snapshot() {
    let Some(etcd) = Etcd::start("etcd::a_follower_of_two_hubs").await else {
        return;
    };
    let a = instance(&etcd.endpoints()).await;
    let b = instance(&etcd.endpoints()).await;
    let base = seed(&a).await;
    wait_revision(&b, base).await;
    // Past B's start, so that B's change log holds what the follower resumes from.
    let devin = keys::prefix(keys::DEVIN_DEVELOPER);
    let first = set_status(&a, devin, "inactive").await;
    wait_revision(&b, first).await;
    let follower = TestServer::with(Origin::Upstream(format!("{},{}", a.url(), b.url())))
        .start()
        .await;
    wait_revision(&follower, first).await;
    a.stop().await.expect("hub A stops");

    let restored = set_status(&b, devin, "active").await;
    let r = follower
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "",
            "",
            restored,
        ))
        .await;
    assert_eq!(
        (r.reason(), r.revision),
        (Reason::Allowed, restored),
        "{r:?}"
    );
    let status = follower.status().await;
    let upstream = &status["origin"]["upstream"];
    assert_eq!(
        upstream["snapshots"], 1,
        "resumed, no second snapshot: {status}"
    );
    assert!(upstream["connects"].as_u64() >= Some(2), "{status}");
}

/// `kill -9` of an instance while it commits a large Apply, at a few moments after the call was
/// sent (each on its own prefix): etcd holds all of it or none of it, a new instance serves
/// exactly that, and an acknowledged Apply is all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_a_large_apply_leaves_all_or_none_of_it() {
    let Some(etcd) = Etcd::start("etcd::an_instance_killed_during").await else {
        return;
    };
    let teams: String = (0..2000)
        .map(|i| format!("  - {{ id: t{i:04}, name: Team {i}, status: active }}\n"))
        .collect();
    let document = example_with_bootstrap().replacen("teams:\n", &format!("teams:\n{teams}"), 1);
    let mut outcomes = Vec::new();
    for (round, after_ms) in [0u64, 5, 20, 100, 200, 400, 800, 1600]
        .into_iter()
        .enumerate()
    {
        let prefix = format!("/kill{round}/");
        let (mut child, url) = common::spawn_on_etcd(&etcd.endpoints(), &prefix);
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let apply = pb::ApplyRequest {
            document: document.clone(),
            prune: true,
            ..Default::default()
        };
        let sent = tokio::spawn(async move { admin.apply(call(BOOTSTRAP, apply)).await });
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        child.kill().expect("kill -9");
        let _ = child.wait();
        let answer = sent.await.expect("the call task");

        let fresh = TestServer::with(Origin::Etcd {
            endpoints: etcd.endpoints(),
            prefix,
        })
        .start()
        .await;
        let teams = fresh.status().await["counts"]["teams"].as_u64().unwrap();
        assert!(
            teams == 1 || teams == 2003,
            "round {round}: all or nothing, got {teams} teams (answer: {answer:?})"
        );
        if answer.is_ok() {
            assert_eq!(
                teams, 2003,
                "round {round}: an acknowledged Apply is all there"
            );
        }
        outcomes.push((after_ms, teams == 2003, answer.is_ok()));
    }
    eprintln!("killed after ms, committed, acknowledged: {outcomes:?}");
}

/// The next event that is not a bookmark.
async fn next_event(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("an event in time")
            .expect("the stream is healthy")
            .expect("the stream stays open");
        if !matches!(ev.event, Some(Event::Bookmark(_))) {
            return ev;
        }
    }
}

/// Concurrent writers through one instance share etcd transactions: a writer whose write went
/// out in another's transaction is answered at once, not after queuing for the next, so 16
/// writers keep going to etcd together instead of one transaction per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_through_one_instance_share_transactions() {
    const WRITERS: usize = 16;
    const EACH: usize = 20;
    let Some(etcd) = Etcd::start("etcd::concurrent_writers_share").await else {
        return;
    };
    let a = instance(&etcd.endpoints()).await;
    seed(&a).await;
    let far = 4_102_444_800; // 2100-01-01
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut admin = a.admin().await;
        writers.push(tokio::spawn(async move {
            let mut revisions = Vec::with_capacity(EACH);
            for n in 0..EACH {
                let update = pb::UpdateKeyRequest {
                    prefix: keys::prefix(keys::GUS_DEVELOPER).into(),
                    expires_at: Some(far + (w * EACH + n) as i64),
                    ..Default::default()
                };
                let written = admin
                    .update_key(call(BOOTSTRAP, update))
                    .await
                    .expect("every write commits")
                    .into_inner();
                revisions.push(written.revision);
            }
            revisions
        }));
    }
    let mut revisions = Vec::new();
    for w in writers {
        revisions.extend(w.await.expect("a writer"));
    }
    let total = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert!(
        revisions.len() * 2 <= total,
        "{total} writes went to etcd in {} transactions: writers did not share them",
        revisions.len()
    );
    // Every instance sees the last revision's state.
    let last = *revisions.last().unwrap();
    let r = a
        .check(check_at(keys::GUS_DEVELOPER, "jobs.read", "", "", last))
        .await;
    assert!(r.principal.is_some(), "{r:?}");
}
