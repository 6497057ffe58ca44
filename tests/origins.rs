//! Behaviour written once and run against every origin of state: a policy file, the embedded
//! store (written through the Admin API), a follower (fed by the Watch of a hub on the
//! embedded store, written through the hub's Admin API) and etcd (written through the Admin
//! API).
//!
//! Each case is an async function of the origin. [`suite!`] at the end makes one
//! `#[tokio::test]` per (origin, case), named `<origin>::<case>`:
//! `cargo test --test origins follower::` runs every case on a follower,
//! `cargo test --test origins min_revision` one case on every origin.
//!
//! Every origin serves the same state: the example policy with the bootstrap key
//! ([`common::example_with_bootstrap`]), at a revision each origin reaches its own way
//! ([`Serving::base`]). Cases change it only through [`Serving::set_key_status`] and
//! [`Serving::replace_document`], which each origin carries out its own way and which return
//! the revision of the change.
//!
//! The etcd origin runs on a one-member etcd started for each case (skipped, with a message,
//! when etcd is not installed).
//!
//! A new origin: a variant of [`Kind`], its arms in [`Serving::start`], [`Serving::write`] and
//! [`Serving::routes_origin`] (and [`Kind`]'s names), and one line in [`suite!`]'s list.

mod common;

use std::time::{Duration, Instant};

use common::{
    BOOTSTRAP, Origin, TestServer, call, check, check_at,
    etcd::Etcd,
    example_with_bootstrap, keys,
    routes::{REPORTS_ROUTE, document_with_routes, enforced, wait_enforced},
    seed_example, with_key_status,
};
use rolegate::grpc::pb::{self, Reason, Scope, watch_event::Event};
use tokio::sync::Mutex;
use tonic::{Code, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;

/// How long a Check may wait for its `min_revision` on every server of the suite (short, so
/// that the bound can be seen; long enough for any change a case makes to arrive).
const MAX_REVISION_WAIT: Duration = Duration::from_secs(2);

/// The keys of the example policy with the bootstrap key, with their status.
const KEYS: [(&str, &str); 12] = [
    ("AdamAdminKey00000001", "active"),
    ("AriaAuditKey00000001", "active"),
    ("DanaGlobexAdmin00001", "active"),
    ("DanaScienceKey000001", "active"),
    ("DevinDevKey000000001", "active"),
    ("DevinOldKey000000001", "inactive"),
    ("FollowerKey000000001", "active"),
    ("FraudProjectKey00001", "active"),
    ("GusDevKey00000000001", "active"),
    ("OliviaOwnerKey000001", "active"),
    ("RitaReviewKey0000001", "active"),
    ("RolegateBootstrap01", "active"),
];

/// An origin of state.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `--policy FILE`: changed by rewriting the file.
    PolicyFile,
    /// `--data-dir DIR`: changed through the Admin API.
    Embedded,
    /// `--upstream URL` of a hub on the embedded store: changed through the hub's Admin API.
    Follower,
    /// `--etcd-endpoints URL` of a one-member etcd: changed through the Admin API.
    Etcd,
}

impl Kind {
    /// `origin.kind` on `/status`.
    fn status_kind(self) -> &'static str {
        match self {
            Kind::PolicyFile => "policy_file",
            Kind::Embedded => "embedded",
            Kind::Follower => "upstream",
            Kind::Etcd => "etcd",
        }
    }

    /// `source` of ListRoutes when the state holds a route table.
    fn routes_source(self) -> &'static str {
        match self {
            Kind::PolicyFile => "policy_file",
            Kind::Embedded => "store",
            Kind::Follower => "hub",
            Kind::Etcd => "etcd",
        }
    }

    /// Whether what the origin needs is there (etcd installed); if not, the case is skipped
    /// with a message (or fails with `ROLEGATE_REQUIRE_TOOLS=1`).
    fn available(self) -> bool {
        match self {
            Kind::Etcd => {
                common::require_tool("etcd", "ROLEGATE_ETCD_BIN", "origins::etcd").is_some()
            }
            _ => true,
        }
    }
}

/// A change of the state.
enum Write<'a> {
    /// The status of one key.
    KeyStatus(&'a str, &'a str),
    /// The whole state: this policy document.
    Document(&'a str),
}

/// How a [`Serving`]'s state is changed.
enum Writer {
    /// Rewrite the policy file: its text now, and the revision the last rewrite makes.
    File(Mutex<(String, u64)>),
    /// Write through the Admin API of the server under test.
    Admin,
    /// Write through the Admin API of the hub the server under test follows.
    Hub(TestServer),
}

/// A server on one origin serving the example policy (with the bootstrap key), and the way to
/// change its state.
struct Serving {
    kind: Kind,
    /// The server the cases ask.
    server: TestServer,
    writer: Writer,
    /// The revision at which the server serves the example policy.
    base: u64,
    /// The etcd the server uses (etcd only): stopped with the case.
    _etcd: Option<Etcd>,
}

impl Serving {
    async fn start(kind: Kind) -> Serving {
        let tuned =
            |origin| TestServer::with(origin).config(|c| c.max_revision_wait = MAX_REVISION_WAIT);
        let document = example_with_bootstrap();
        match kind {
            Kind::PolicyFile => Serving {
                kind,
                server: tuned(Origin::Policy(document.clone())).start().await,
                writer: Writer::File(Mutex::new((document, 1))),
                base: 1,
                _etcd: None,
            },
            Kind::Embedded => {
                let server = tuned(Origin::Store).start().await;
                let base = seed_example(&mut server.admin().await).await;
                Serving {
                    kind,
                    server,
                    writer: Writer::Admin,
                    base,
                    _etcd: None,
                }
            }
            Kind::Follower => {
                let hub = TestServer::store().await;
                let base = seed_example(&mut hub.admin().await).await;
                // Ready once it has its first snapshot, taken after the seed.
                let server = tuned(Origin::follow(&hub)).start().await;
                Serving {
                    kind,
                    server,
                    writer: Writer::Hub(hub),
                    base,
                    _etcd: None,
                }
            }
            Kind::Etcd => {
                let etcd = Etcd::start("origins::etcd")
                    .await
                    .expect("etcd is installed");
                let origin = Origin::Etcd {
                    endpoints: etcd.endpoints(),
                    prefix: "/rolegate/".into(),
                };
                let server = tuned(origin).start().await;
                let base = seed_example(&mut server.admin().await).await;
                Serving {
                    kind,
                    server,
                    writer: Writer::Admin,
                    base,
                    _etcd: Some(etcd),
                }
            }
        }
    }

    /// Sets the status of the key `prefix`; returns the revision of the change, which the
    /// server under test may not have applied yet (a Check with that `min_revision` waits for
    /// it).
    async fn set_key_status(&self, prefix: &str, status: &str) -> u64 {
        self.write(Write::KeyStatus(prefix, status)).await
    }

    /// Replaces the whole state with the policy document `text` (which must change something);
    /// returns the revision of the change, like [`Serving::set_key_status`].
    async fn replace_document(&self, text: &str) -> u64 {
        self.write(Write::Document(text)).await
    }

    /// Makes `change` the origin's way: the policy file rewritten; on the embedded store and on
    /// a follower's hub, UpdateKey or Apply through the Admin API.
    async fn write(&self, change: Write<'_>) -> u64 {
        let admin_server = match &self.writer {
            Writer::File(file) => {
                let mut file = file.lock().await;
                // One rewrite per revision: the last one applied before the next is written.
                self.wait_for_revision(file.1).await;
                file.0 = match change {
                    Write::KeyStatus(prefix, status) => with_key_status(&file.0, prefix, status),
                    Write::Document(text) => text.to_owned(),
                };
                file.1 += 1;
                self.server.write_policy(&file.0);
                return file.1;
            }
            Writer::Admin => &self.server,
            Writer::Hub(hub) => hub,
        };
        let mut admin = admin_server.admin().await;
        match change {
            Write::KeyStatus(prefix, status) => {
                let update = pb::UpdateKeyRequest {
                    prefix: prefix.into(),
                    status: Some(status.into()),
                    ..Default::default()
                };
                let done = admin.update_key(call(BOOTSTRAP, update)).await;
                done.expect("update the key").into_inner().revision
            }
            Write::Document(text) => {
                let apply = pb::ApplyRequest {
                    document: text.to_owned(),
                    dry_run: false,
                    prune: true,
                    name: String::new(),
                };
                let done = admin.apply(call(BOOTSTRAP, apply)).await;
                done.expect("apply the document").into_inner().revision
            }
        }
    }

    /// `origin` of ListRoutes when the state holds a route table: where the table came from.
    fn routes_origin(&self) -> String {
        match &self.writer {
            Writer::File(_) => self.server.policy_path().display().to_string(),
            Writer::Admin if matches!(self.kind, Kind::Etcd) => {
                format!(
                    "{} /rolegate/",
                    self._etcd.as_ref().expect("etcd").endpoints()
                )
            }
            Writer::Admin => self.server.data_dir().display().to_string(),
            Writer::Hub(hub) => hub.url(),
        }
    }

    /// Waits (bounded) until the server has applied `revision`.
    async fn wait_for_revision(&self, revision: u64) {
        for _ in 0..1200 {
            if self.server.status().await["revision"].as_u64() >= Some(revision) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{:?}: revision {revision} never applied", self.kind);
    }

    async fn check(&self, request: pb::CheckRequest) -> pb::CheckResponse {
        self.server.check(request).await
    }
}

/// What a check is expected to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allowed(Scope),
    Denied(Reason),
}

fn answer(r: &pb::CheckResponse) -> Expect {
    match r.allowed {
        true => Expect::Allowed(r.scope()),
        false => Expect::Denied(r.reason()),
    }
}

// ---- the cases ------------------------------------------------------------------------------

/// The decision rules on the example policy: OWN, TEAM and ALL scopes; the widest scope of all
/// of a user's keys wins; custom roles and entitlements; the principal and the filters.
async fn decision_rules(kind: Kind) {
    use Expect::{Allowed, Denied};
    let s = Serving::start(kind).await;
    let gus = keys::prefix(keys::GUS_DEVELOPER);
    let devin = keys::prefix(keys::DEVIN_DEVELOPER);
    let dana = keys::prefix(keys::DANA_SCIENTIST);
    let fraud = keys::prefix(keys::FRAUD_PROJECT);
    #[rustfmt::skip]
    let cases = [
        // dana's acme DATA_SCIENTIST key (OWN) cancels a globex job: her other key, globex's
        // ACCOUNT_ADMIN, gives her TEAM there, and the wider scope wins. In acme she stays at
        // OWN: her own job yes, devin's no.
        (keys::DANA_SCIENTIST, "jobs.cancel", "globex", gus, Allowed(Scope::Team)),
        (keys::DANA_SCIENTIST, "jobs.cancel", "acme", dana, Allowed(Scope::Own)),
        (keys::DANA_SCIENTIST, "jobs.cancel", "acme", devin, Denied(Reason::OutOfScope)),
        // A developer: OWN for jobs, TEAM for models, nothing outside the team.
        (keys::DEVIN_DEVELOPER, "jobs.cancel", "acme", devin, Allowed(Scope::Own)),
        (keys::DEVIN_DEVELOPER, "jobs.cancel", "acme", gus, Denied(Reason::OutOfScope)),
        (keys::DEVIN_DEVELOPER, "models.read", "acme", "", Allowed(Scope::Team)),
        (keys::DEVIN_DEVELOPER, "models.read", "globex", "", Denied(Reason::OutOfScope)),
        // An account admin: TEAM in its team only.
        (keys::ADAM_ADMIN, "jobs.cancel", "acme", devin, Allowed(Scope::Team)),
        (keys::ADAM_ADMIN, "jobs.cancel", "globex", gus, Denied(Reason::OutOfScope)),
        // The auditor reads everything and cancels nothing; the owner does anything.
        (keys::ARIA_AUDITOR, "jobs.read", "acme", devin, Allowed(Scope::All)),
        (keys::ARIA_AUDITOR, "jobs.cancel", "acme", devin, Denied(Reason::NoGrant)),
        (keys::OLIVIA_OWNER, "jobs.cancel", "globex", gus, Allowed(Scope::All)),
        // A project key: its own jobs, no users.
        (keys::FRAUD_PROJECT, "jobs.cancel", "acme", fraud, Allowed(Scope::Own)),
        (keys::FRAUD_PROJECT, "users.read", "acme", "", Denied(Reason::NoGrant)),
        // The policy's own role and entitlement.
        (keys::RITA_REVIEWER, "reports.export", "globex", "", Allowed(Scope::Team)),
        (keys::RITA_REVIEWER, "reports.export", "acme", "", Denied(Reason::OutOfScope)),
    ];
    for (key, entitlement, team, owner, expected) in cases {
        let r = s.check(check(key, entitlement, team, owner)).await;
        assert_eq!(
            answer(&r),
            expected,
            "{kind:?}: {} {entitlement} on {team}/{owner}: {r:?}",
            keys::prefix(key)
        );
        assert_eq!(r.revision, s.base, "{kind:?}: {r:?}");
    }

    // The principal of an answer.
    let r = s
        .check(check(keys::DANA_SCIENTIST, "jobs.cancel", "globex", gus))
        .await;
    assert_eq!(r.reason(), Reason::Allowed);
    let p = r.principal.expect("an authenticated key's principal");
    assert_eq!(
        (
            p.key_prefix.as_str(),
            p.user_id.as_str(),
            p.team_id.as_str()
        ),
        (dana, "dana", "acme")
    );
    assert_eq!(
        (p.roles.as_slice(), p.key_type()),
        (&["DATA_SCIENTIST".to_owned()][..], pb::KeyType::Team)
    );

    // A collection call below ALL: the filter a backend applies (devin's keys, his inactive
    // one included, and his user).
    let r = s
        .check(check(keys::DEVIN_DEVELOPER, "jobs.read", "", ""))
        .await;
    assert_eq!(answer(&r), Allowed(Scope::Own), "{kind:?}: {r:?}");
    assert_eq!(
        r.filter_owner_key_prefixes,
        [devin, keys::prefix(keys::DEVIN_OLD_INACTIVE)]
    );
    assert_eq!(r.filter_owner_user_id, "devin");
    assert!(r.filter_team_ids.is_empty(), "{r:?}");
    let r = s
        .check(check(keys::ARIA_AUDITOR, "jobs.read", "", ""))
        .await;
    assert_eq!(answer(&r), Allowed(Scope::All), "{kind:?}: {r:?}");
    assert!(
        r.filter_owner_key_prefixes.is_empty() && r.filter_team_ids.is_empty(),
        "ALL: no filter: {r:?}"
    );
}

/// Keys that do not authenticate are denied with their reason and reveal nothing; an unknown
/// entitlement is denied even to the owner.
async fn keys_that_do_not_authenticate_are_denied(kind: Kind) {
    let s = Serving::start(kind).await;
    let cases = [
        ("no-dot-at-all", Reason::MalformedKey),
        ("OliviaOwnerKey000001.", Reason::MalformedKey),
        ("NoSuchKeyPrefix00001.secret", Reason::UnknownKey),
        ("OliviaOwnerKey000001.wrong-secret", Reason::WrongSecret),
        // devin's old key is inactive, and grants nothing to his active one either (see the
        // filter in `decision_rules`: listed as his, allowing nothing of its own).
        (keys::DEVIN_OLD_INACTIVE, Reason::KeyInactive),
    ];
    for (key, reason) in cases {
        let r = s.check(check(key, "jobs.read", "acme", "")).await;
        assert_eq!(
            (r.allowed, r.reason()),
            (false, reason),
            "{kind:?}: {key:?}"
        );
        assert!(r.principal.is_none(), "{kind:?}: reveals nothing: {r:?}");
        assert!(!r.message.contains("wrong-secret"), "{r:?}");
    }
    let r = s
        .check(check(keys::OLIVIA_OWNER, "jobs.explode", "", ""))
        .await;
    assert_eq!((r.allowed, r.reason()), (false, Reason::UnknownEntitlement));
}

/// A change made the origin's way is seen by a Check carrying its revision as `min_revision`,
/// directly (a key made inactive) and through the rules (a key that gave a wider scope gone).
async fn a_change_is_seen_at_its_revision(kind: Kind) {
    let s = Serving::start(kind).await;
    let gus = keys::prefix(keys::GUS_DEVELOPER);

    let revoked = s
        .set_key_status(keys::prefix(keys::DEVIN_DEVELOPER), "inactive")
        .await;
    assert_eq!(revoked, s.base + 1, "{kind:?}: one change, one revision");
    let r = s
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
        (false, Reason::KeyInactive, revoked),
        "{kind:?}"
    );

    // dana's globex admin key goes: her science key is back to its own OWN scope, which does
    // not cover gus's job.
    let narrowed = s
        .set_key_status(keys::prefix(keys::DANA_GLOBEX_ADMIN), "inactive")
        .await;
    assert!(narrowed > revoked, "{kind:?}: {narrowed} after {revoked}");
    let r = s
        .check(check_at(
            keys::DANA_SCIENTIST,
            "jobs.cancel",
            "globex",
            gus,
            narrowed,
        ))
        .await;
    assert_eq!(
        (answer(&r), r.revision),
        (Expect::Denied(Reason::OutOfScope), narrowed),
        "{kind:?}: {r:?}"
    );

    // Back again: active, allowed.
    let restored = s
        .set_key_status(keys::prefix(keys::DEVIN_DEVELOPER), "active")
        .await;
    let r = s
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "",
            "",
            restored,
        ))
        .await;
    assert!(r.allowed && r.revision == restored, "{kind:?}: {r:?}");
    let status = s.server.status().await;
    assert_eq!(status["revision"], restored, "{kind:?}: {status}");
}

/// Reads a Watch stream up to the end of its snapshot: the keys with their status, and the
/// snapshot's revision.
async fn read_snapshot(stream: &mut Streaming<pb::WatchEvent>) -> (Vec<(String, String)>, u64) {
    let mut keys = Vec::new();
    loop {
        let ev = next_event(stream).await;
        match ev.event {
            Some(Event::KeyUpserted(k)) => keys.push((k.prefix, k.status)),
            Some(Event::SnapshotEnd(_)) => {
                keys.sort();
                return (keys, ev.revision);
            }
            _ => {}
        }
    }
}

/// The next event that is not a bookmark.
async fn next_event(stream: &mut Streaming<pb::WatchEvent>) -> pb::WatchEvent {
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

/// The events of one whole revision.
async fn read_revision(stream: &mut Streaming<pb::WatchEvent>) -> Vec<pb::WatchEvent> {
    let mut events = vec![next_event(stream).await];
    while !events.last().unwrap().end_of_revision {
        events.push(next_event(stream).await);
    }
    events
}

/// Watch: a snapshot of the whole state at the served revision, then each change as one
/// revision; a later Watch from that revision replays it.
async fn watch_gives_a_snapshot_then_each_change(kind: Kind) {
    let s = Serving::start(kind).await;
    let snapshot = pb::WatchRequest {
        snapshot: true,
        ..Default::default()
    };
    let mut stream = s.server.watch(keys::ARIA_AUDITOR, snapshot).await;
    let (got, revision) = read_snapshot(&mut stream).await;
    let expected: Vec<_> = KEYS
        .iter()
        .map(|(p, st)| (p.to_string(), st.to_string()))
        .collect();
    assert_eq!((got, revision), (expected, s.base), "{kind:?}");

    let devin = keys::prefix(keys::DEVIN_DEVELOPER);
    let changed = s.set_key_status(devin, "inactive").await;
    let live = read_revision(&mut stream).await;
    assert!(
        live.iter().all(|ev| ev.revision == changed),
        "{kind:?}: all of revision {changed}: {live:?}"
    );
    let keys_changed: Vec<_> = live
        .iter()
        .filter_map(|ev| match &ev.event {
            Some(Event::KeyUpserted(k)) => Some((k.prefix.as_str(), k.status.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(keys_changed, [(devin, "inactive")], "{kind:?}: {live:?}");

    // Resumed from that revision: the same events again.
    let from = pb::WatchRequest {
        start_revision: changed,
        ..Default::default()
    };
    let mut resumed = s.server.watch(keys::ARIA_AUDITOR, from).await;
    let replayed = read_revision(&mut resumed).await;
    assert_eq!(replayed, live, "{kind:?}: the replay is the live revision");
}

/// `min_revision`: a Check waits for a revision this server has not applied yet and answers
/// from it once it arrives; past the call's deadline (less 10%) or `--max-revision-wait` it
/// fails with UNAVAILABLE naming the revision wanted and the one it has. CheckBatch too.
async fn min_revision_waits_then_fails_in_time(kind: Kind) {
    let s = Serving::start(kind).await;
    let next = s.base + 1;
    let have = format!("revision {}", s.base);
    let want = format!("revision {next}");
    let mut client = s.server.authorizer().await;

    // Bounded by the deadline.
    let mut call = tonic::Request::new(check_at(keys::OLIVIA_OWNER, "jobs.read", "", "", next));
    call.set_timeout(Duration::from_millis(500));
    let err = client.check(call).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{kind:?}: {err:?}");
    assert!(
        err.message().contains(&want) && err.message().contains(&have),
        "{kind:?}: {}",
        err.message()
    );

    // Without a deadline: bounded by --max-revision-wait.
    let started = Instant::now();
    let err = client
        .check(check_at(keys::OLIVIA_OWNER, "jobs.read", "", "", next))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{kind:?}: {err:?}");
    assert!(
        waited >= MAX_REVISION_WAIT - Duration::from_millis(100)
            && waited < MAX_REVISION_WAIT + Duration::from_secs(3),
        "{kind:?}: gave up after {waited:?}"
    );

    // CheckBatch: the same rule for the whole batch.
    let mut batch = tonic::Request::new(pb::CheckBatchRequest {
        api_key: keys::OLIVIA_OWNER.into(),
        checks: vec![check("", "jobs.read", "", "")],
        min_revision: next,
    });
    batch.set_timeout(Duration::from_millis(500));
    let err = client.check_batch(batch).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{kind:?}: {err:?}");

    // A Check waiting when the change comes answers from it.
    let mut waiting = s.server.authorizer().await;
    let mut call = tonic::Request::new(check_at(keys::DEVIN_DEVELOPER, "jobs.read", "", "", next));
    call.set_timeout(Duration::from_secs(10));
    let in_flight = tokio::spawn(async move { waiting.check(call).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!in_flight.is_finished(), "{kind:?}: it waits");
    let changed = s
        .set_key_status(keys::prefix(keys::DEVIN_DEVELOPER), "inactive")
        .await;
    assert_eq!(changed, next);
    let r = in_flight.await.unwrap().expect("answered").into_inner();
    assert_eq!(
        (r.allowed, r.reason(), r.revision),
        (false, Reason::KeyInactive, next),
        "{kind:?}"
    );
}

/// The route table is part of the state: a table put the origin's way is enforced by the HTTP
/// auth endpoint and listed with where it came from; a document without one puts back the
/// built-in table.
async fn a_new_route_table_is_enforced_and_listed(kind: Kind) {
    let s = Serving::start(kind).await;
    let http = s.server.http_addr;
    let list = async || {
        let request = call(keys::ARIA_AUDITOR, pb::ListRoutesRequest {});
        let listed = s.server.admin().await.list_routes(request).await;
        listed.expect("list the routes").into_inner()
    };
    assert_eq!(enforced(http).await, "default", "{kind:?}");
    assert_eq!(list().await.source, "default", "{kind:?}");

    let put = s
        .replace_document(&document_with_routes(REPORTS_ROUTE))
        .await;
    s.wait_for_revision(put).await;
    wait_enforced(http, "reports").await;
    let listed = list().await;
    assert_eq!(
        (
            listed.source.as_str(),
            listed.origin,
            listed.routes_revision
        ),
        (kind.routes_source(), s.routes_origin(), put),
        "{kind:?}"
    );
    let routes: Vec<_> = listed
        .routes
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.entitlement.as_str()))
        .collect();
    assert_eq!(routes, [("GET", "/api/reports", "jobs.read")], "{kind:?}");

    let reset = s.replace_document(&example_with_bootstrap()).await;
    s.wait_for_revision(reset).await;
    wait_enforced(http, "default").await;
    assert_eq!(list().await.source, "default", "{kind:?}");
}

/// Ready on every channel, at the served revision, with the whole state counted.
async fn ready_and_reporting_its_revision(kind: Kind) {
    let s = Serving::start(kind).await;
    assert_eq!(
        s.server.health().await,
        [ServingStatus::Serving, ServingStatus::Serving],
        "{kind:?}"
    );
    let (code, body) = s.server.http_get("/readyz").await;
    assert_eq!(code, 200, "{kind:?}: {body}");
    let status = s.server.status().await;
    assert_eq!(status["ready"], true, "{kind:?}: {status}");
    assert_eq!(status["revision"], s.base, "{kind:?}: {status}");
    assert_eq!(status["counts"]["keys"], KEYS.len(), "{kind:?}: {status}");
    assert_eq!(
        status["origin"]["kind"],
        kind.status_kind(),
        "{kind:?}: {status}"
    );
}

// ---- cases × origins ------------------------------------------------------------------------

/// `suite!([case, ...] x [origin => Kind, ...])`: a module per origin holding one
/// `#[tokio::test]` per case, which calls the case with the origin's [`Kind`].
macro_rules! suite {
    ($cases:tt x [$($origin:ident => $kind:expr),+ $(,)?]) => {
        $( suite!(@origin $origin, $kind, $cases); )+
    };
    (@origin $origin:ident, $kind:expr, [$($case:ident),+ $(,)?]) => {
        mod $origin {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if !$kind.available() {
                        return;
                    }
                    super::$case($kind).await;
                }
            )+
        }
    };
}

suite!(
    [
        decision_rules,
        keys_that_do_not_authenticate_are_denied,
        a_change_is_seen_at_its_revision,
        watch_gives_a_snapshot_then_each_change,
        min_revision_waits_then_fails_in_time,
        a_new_route_table_is_enforced_and_listed,
        ready_and_reporting_its_revision,
    ] x [
        policy_file => Kind::PolicyFile,
        embedded => Kind::Embedded,
        follower => Kind::Follower,
        etcd => Kind::Etcd,
    ]
);
