//! Watch against a real gRPC server on a loopback socket: the six guarantees checked by an
//! oracle against the recorded history of random changes (Admin API writes and policy edits on
//! the embedded store) with random disconnects and resumes;
//! a slow subscriber; 1,000 concurrent watchers; bad requests and keys that may not watch.
//! (A change seen on Watch and by a Check at its revision, on every origin: tests/origins.rs.)

mod common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use compact_str::CompactString;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use rolegate::{
    domain::{
        Expiry, Grant, KeySpec, KeyStatus, KeyType, Model, Project, Role, RoleType, Scope,
        SecretHash, Team, TeamList, User, model::Change, model::canonical_roles,
    },
    grpc::{
        AuthorizerService,
        admin::AdminService,
        authorizer::AuthorizerLimits,
        pb::{
            self, admin_client::AdminClient, admin_server::AdminServer,
            authorizer_client::AuthorizerClient, authorizer_server::AuthorizerServer,
            watch_event::Event,
        },
        watch::change_of,
    },
    origin::embedded::{Bootstrap, EmbeddedOrigin},
    state::{ChangeSet, State, changelog::LogLimits},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Streaming, transport::Channel};

const OWNER_KEY: &str = "OwnerKey0001.owner-secret";
/// A project key with the FOLLOWER role: Watch with secret hashes.
const FOLLOWER_KEY: &str = "Follower0001.follower-secret";
/// Keys no random edit touches: the owner's (the caller of every write) and the follower's (the
/// subscribers' key).
const KEPT_KEYS: [&str; 2] = ["OwnerKey0001", "Follower0001"];

/// Serves `state` on an ephemeral loopback port with the real Authorizer service.
async fn serve_state(state: Arc<State>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizerServer::new(AuthorizerService::new(
                state,
                AuthorizerLimits::default(),
            )))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn client(url: &str) -> AuthorizerClient<Channel> {
    AuthorizerClient::connect(url.to_owned()).await.unwrap()
}

fn key(prefix: &str, user: &str, team: &str, roles: &[&str], status: KeyStatus) -> KeySpec {
    KeySpec {
        prefix: prefix.into(),
        secret_hash: SecretHash::of_secret(&format!("{prefix}-secret")),
        key_type: KeyType::Team,
        owner: user.into(),
        team: Some(team.into()),
        roles: canonical_roles(roles.iter().copied()),
        status,
        expires_at: Expiry::NEVER,
    }
}

/// The follower's project and key (FOLLOWER: the reads and keys.replicate at ALL), in team t0,
/// which no random edit deactivates.
fn follower_project_and_key() -> (Project, KeySpec) {
    let project = Project {
        id: "followers".into(),
        team: "t0".into(),
        name: "Followers".into(),
    };
    let key = KeySpec {
        key_type: KeyType::Project,
        owner: "followers".into(),
        team: None,
        roles: canonical_roles(["FOLLOWER"]),
        secret_hash: SecretHash::of_secret("follower-secret"),
        ..key("Follower0001", "x", "x", &[], KeyStatus::Active)
    };
    (project, key)
}

/// Three teams, six users, two projects, the owner's key (SYSTEM_OWNER) and the follower's.
fn base_model() -> Model {
    let mut m = Model::default();
    for t in ["t0", "t1", "t2"] {
        m.teams.insert(
            t.into(),
            Team {
                id: t.into(),
                name: t.to_uppercase(),
                active: true,
            },
        );
    }
    for u in ["u0", "u1", "u2", "u3", "u4", "u5"] {
        m.users.insert(
            u.into(),
            Arc::new(User {
                id: u.into(),
                name: u.into(),
                active: true,
                teams: TeamList::default(),
            }),
        );
    }
    m.projects.insert(
        "p0".into(),
        Project {
            id: "p0".into(),
            team: "t1".into(),
            name: "P0".into(),
        },
    );
    let mut owner = key(
        "OwnerKey0001",
        "u0",
        "t0",
        &["SYSTEM_OWNER"],
        KeyStatus::Active,
    );
    owner.secret_hash = SecretHash::of_secret("owner-secret");
    m.keys.insert(owner.prefix.clone(), Arc::new(owner));
    let (project, follower) = follower_project_and_key();
    m.projects.insert(project.id.clone(), project);
    m.keys.insert(follower.prefix.clone(), Arc::new(follower));
    m
}

const ROLES: &[&str] = &["DEVELOPER", "DATA_SCIENTIST", "AUDITOR", "ACCOUNT_ADMIN"];

/// One random edit of the kinds a policy file edit makes; never touches the owner's or the
/// follower's key, or team t0.
fn mutate(m: &mut Model, rng: &mut StdRng, n: u64) {
    let others: Vec<CompactString> = m
        .keys
        .keys()
        .filter(|k| !KEPT_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    match rng.random_range(0..8) {
        0 | 1 => {
            let prefix = format!("Key{:05}", rng.random_range(0..40));
            let user = format!("u{}", rng.random_range(1..6));
            let team = ["t0", "t1", "t2"].choose(rng).unwrap();
            let roles: Vec<&str> = ROLES
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.4))
                .collect();
            let k = key(&prefix, &user, team, &roles, KeyStatus::Active);
            m.keys.insert(k.prefix.clone(), Arc::new(k));
        }
        2 if !others.is_empty() => {
            m.keys.remove(others.choose(rng).unwrap().as_str());
        }
        3 if !others.is_empty() => {
            let p = others.choose(rng).unwrap().clone();
            let mut k = (*m.keys[p.as_str()]).clone();
            k.status = if k.status == KeyStatus::Active {
                KeyStatus::Inactive
            } else {
                KeyStatus::Active
            };
            m.keys.insert(p, Arc::new(k));
        }
        4 => {
            let t = ["t1", "t2"].choose(rng).unwrap();
            let team = m.teams.get_mut(*t).unwrap();
            team.active = !team.active;
        }
        5 => {
            let scope = [Scope::Own, Scope::Team, Scope::All]
                .choose(rng)
                .copied()
                .unwrap();
            m.catalog.put_role(Arc::new(Role {
                id: "REVIEWER".into(),
                role_type: RoleType::User,
                grants: vec![Grant {
                    entitlement: "jobs.read".into(),
                    scope,
                }],
                prebuilt: false,
            }));
        }
        6 => {
            let prefix = format!("Proj{:04}", rng.random_range(0..5));
            let k = KeySpec {
                key_type: KeyType::Project,
                owner: "p0".into(),
                team: None,
                roles: canonical_roles(["SYSTEM_KEY"]),
                ..key(&prefix, "x", "x", &[], KeyStatus::Active)
            };
            m.keys.insert(k.prefix.clone(), Arc::new(k));
        }
        _ => {
            let u = format!("u{}", rng.random_range(1..6));
            Arc::make_mut(m.users.get_mut(u.as_str()).unwrap()).name =
                format!("renamed {n}").into();
        }
    }
}

/// Applies the difference to `model` as the next revision (as the policy-file origin does).
/// Returns None when the edit changed nothing.
fn commit(state: &State, model: &Model) -> Option<u64> {
    let changes = state.model().diff(model);
    if changes.is_empty() {
        return None;
    }
    assert!(model.validate().is_empty(), "{:?}", model.validate());
    let revision = state.revision() + 1;
    state.apply(ChangeSet { revision, changes }).unwrap();
    Some(revision)
}

fn watch_request(start: u64, snapshot: bool, history: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        start_revision: start,
        snapshot,
        history: history.into(),
        include_secret_hashes: true,
        api_key: FOLLOWER_KEY.into(),
        bookmark_interval_ms: 20,
        ..Default::default()
    }
}

/// What one subscriber saw, session by session, and what it built from it.
#[derive(Default)]
struct Record {
    /// Every event of every session, with the session number.
    events: Vec<(usize, pb::WatchEvent)>,
    /// The model after each revision it completed (snapshot or change), by revision.
    built: Vec<(u64, Model)>,
    /// (revision of each bookmark, last completed revision when it came).
    bookmarks: Vec<(u64, u64)>,
    resets: usize,
    sessions: usize,
}

/// A subscriber that disconnects at random and resumes from its last complete revision,
/// re-snapshotting after a reset, until it has reached `until`.
async fn subscriber(url: String, seed: u64, until: u64) -> Record {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rec = Record::default();
    let mut model: Option<Model> = None;
    let mut last = 0u64;
    let mut history = String::new();
    let mut c = client(&url).await;
    while last < until {
        rec.sessions += 1;
        let session = rec.sessions;
        let resume = model.is_some();
        let req = if resume {
            watch_request(last + 1, false, &history)
        } else {
            watch_request(0, true, "")
        };
        let mut stream: Streaming<pb::WatchEvent> = c.watch(req).await.unwrap().into_inner();
        let mut snap: Option<Model> = (!resume).then(Model::default);
        let mut pending: Vec<rolegate::domain::model::Change> = Vec::new();
        // Disconnect after a random number of events (or run to the end).
        let budget = rng.random_range(1..60);
        let mut seen = 0;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .expect("an event or a bookmark within the timeout")
                .expect("stream ok")
                .expect("stream open");
            rec.events.push((session, ev.clone()));
            seen += 1;
            match &ev.event {
                Some(Event::Reset(_)) => {
                    rec.resets += 1;
                    model = None;
                    break;
                }
                Some(Event::SnapshotEnd(_)) => {
                    let m = snap.take().expect("snapshot end after a snapshot");
                    history = ev.history.clone();
                    last = ev.revision;
                    rec.built.push((last, m.clone()));
                    model = Some(m);
                }
                Some(Event::Bookmark(_)) => {
                    history = ev.history.clone();
                    rec.bookmarks.push((ev.revision, last));
                }
                _ => {
                    let change = change_of(&ev).unwrap();
                    if let Some(s) = snap.as_mut() {
                        s.apply(change.as_ref().unwrap());
                    } else if let Some(ch) = change {
                        pending.push(ch);
                    }
                    if snap.is_none() && ev.end_of_revision {
                        let m = model.as_mut().unwrap();
                        for ch in pending.drain(..) {
                            m.apply(&ch);
                        }
                        last = ev.revision;
                        rec.built.push((last, m.clone()));
                    }
                }
            }
            if last >= until || (seen >= budget && snap.is_none()) {
                break;
            }
        }
        // Dropping the stream mid-revision throws the partial revision away.
        drop(stream);
        if rng.random_bool(0.3) {
            c = client(&url).await;
        }
        // Now and then stay away long enough for the short log to move past the position,
        // so that the resume is answered with a reset and bridged by a snapshot.
        if rng.random_bool(0.08) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        }
    }
    rec
}

/// The oracle: checks one subscriber's record against the committed history.
fn check_guarantees(name: &str, rec: &Record, history: &BTreeMap<u64, Model>) {
    // Atomic + ordered within each session: revisions never go down, and a revision's events
    // are contiguous, closed by an end marker before the next revision begins.
    let mut by_session: BTreeMap<usize, Vec<&pb::WatchEvent>> = BTreeMap::new();
    for (s, ev) in &rec.events {
        by_session.entry(*s).or_default().push(ev);
    }
    for (s, evs) in &by_session {
        for pair in evs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.revision >= a.revision,
                "{name} session {s}: ordered: {} after {}",
                b.revision,
                a.revision
            );
            let a_is_control = matches!(a.event, Some(Event::Bookmark(_)) | Some(Event::Reset(_)));
            if b.revision > a.revision && !a_is_control {
                assert!(
                    a.end_of_revision,
                    "{name} session {s}: atomic: revision {} not closed before {}",
                    a.revision, b.revision
                );
            }
            if a.end_of_revision && !a_is_control && !matches!(b.event, Some(Event::Bookmark(_))) {
                assert!(
                    b.revision > a.revision,
                    "{name} session {s}: atomic: revision {} continues after its end marker",
                    a.revision
                );
            }
        }
    }
    // Unique + resumable: the completed revisions strictly increase across sessions (nothing
    // twice), and after a snapshot at R, each next one is the next committed revision.
    let mut prev: Option<u64> = None;
    for (rev, model) in &rec.built {
        let want = history
            .get(rev)
            .unwrap_or_else(|| panic!("{name}: revision {rev} was never committed"));
        // Reliable: what was built equals the committed state (so nothing in between was lost).
        assert!(
            model == want,
            "{name}: the state built at revision {rev} differs from the committed one"
        );
        if let Some(p) = prev {
            assert!(
                *rev > p,
                "{name}: unique: revision {rev} completed again after {p}"
            );
        }
        prev = Some(*rev);
    }
    // Resumable without a gap: between consecutive completions, no committed revision is
    // skipped unless a snapshot (after a reset) bridged it.
    let snapshots: Vec<u64> = rec
        .events
        .iter()
        .filter(|(_, e)| matches!(e.event, Some(Event::SnapshotEnd(_))))
        .map(|(_, e)| e.revision)
        .collect();
    for pair in rec.built.windows(2) {
        let (a, b) = (pair[0].0, pair[1].0);
        let next_committed = *history.range(a + 1..).next().unwrap().0;
        assert!(
            b == next_committed || snapshots.contains(&b),
            "{name}: reliable: after {a} came {b}, but {next_committed} was committed first"
        );
    }
    // Bookmarkable: a bookmark at R comes only once everything up to R was complete.
    for (at, completed) in &rec.bookmarks {
        let newest_committed_by_then = *history.range(..=at).next_back().unwrap().0;
        assert_eq!(
            *completed, newest_committed_by_then,
            "{name}: bookmark at {at} arrived with only {completed} complete"
        );
    }
}

/// Serves `state`, fed by the embedded store in `dir` (bootstrap key: the owner's), with the
/// real Authorizer and Admin services on an ephemeral loopback port.
async fn serve_store(state: Arc<State>, dir: &std::path::Path) -> (String, Arc<EmbeddedOrigin>) {
    let bootstrap = Bootstrap {
        prefix: "OwnerKey0001".into(),
        secret_sha256: Some(SecretHash::of_secret("owner-secret").to_hex()),
        seed: None,
    };
    let started = EmbeddedOrigin::start(dir, state.clone(), &bootstrap).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizerServer::new(AuthorizerService::new(
                state.clone(),
                AuthorizerLimits::default(),
            )))
            .add_service(AdminServer::new(AdminService::new(
                state,
                started.origin.clone(),
            )))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), started.origin)
}

/// The model as a policy document (what a GitOps edit of the file would hold).
fn policy_yaml(m: &Model) -> String {
    let scope = |s: Scope| match s {
        Scope::Own => "OWN",
        Scope::Team => "TEAM",
        Scope::All => "ALL",
    };
    let active = |a: bool| if a { "active" } else { "inactive" };
    let entitlements: Vec<String> = m
        .catalog
        .added_entitlements()
        .iter()
        .map(|e| format!("{{ id: {e} }}"))
        .collect();
    let roles: Vec<String> = m
        .catalog
        .roles()
        .filter(|r| !r.prebuilt)
        .map(|r| {
            let grants: Vec<String> = r
                .grants
                .iter()
                .map(|g| {
                    format!(
                        "{{ entitlement: {}, scope: {} }}",
                        g.entitlement,
                        scope(g.scope)
                    )
                })
                .collect();
            format!(
                "{{ id: {}, type: {}, grants: [{}] }}",
                r.id,
                r.role_type.as_str(),
                grants.join(", ")
            )
        })
        .collect();
    let teams: Vec<String> = m
        .teams
        .values()
        .map(|t| {
            format!(
                "{{ id: {}, name: \"{}\", status: {} }}",
                t.id,
                t.name,
                active(t.active)
            )
        })
        .collect();
    let users: Vec<String> = m
        .users
        .values()
        .map(|u| {
            let teams: Vec<&str> = u.teams.iter().map(|t| &**t).collect();
            format!(
                "{{ id: {}, name: \"{}\", status: {}, teams: [{}] }}",
                u.id,
                u.name,
                active(u.active),
                teams.join(", ")
            )
        })
        .collect();
    let projects: Vec<String> = m
        .projects
        .values()
        .map(|p| format!("{{ id: {}, team: {}, name: \"{}\" }}", p.id, p.team, p.name))
        .collect();
    let keys: Vec<String> = m
        .keys
        .values()
        .map(|k| {
            let roles: Vec<&str> = k.roles.iter().map(|r| &**r).collect();
            let owner = match k.key_type {
                KeyType::Team => format!(
                    "type: team, user: {}, team: {}",
                    k.owner,
                    k.team.as_deref().unwrap_or_default()
                ),
                KeyType::Project => format!("type: project, project: {}", k.owner),
            };
            format!(
                "{{ prefix: {}, secret_sha256: {}, {owner}, roles: [{}], status: {} }}",
                k.prefix,
                k.secret_hash.to_hex(),
                roles.join(", "),
                k.status.as_str()
            )
        })
        .collect();
    let mut out = String::from("version: 1\n");
    for (name, items) in [
        ("entitlements", entitlements),
        ("roles", roles),
        ("teams", teams),
        ("users", users),
        ("projects", projects),
        ("keys", keys),
    ] {
        out.push_str(&format!("{name}: [\n"));
        for item in items {
            out.push_str(&format!("  {item},\n"));
        }
        out.push_str("]\n");
    }
    out
}

/// An `authorization: ApiKey` request from the owner.
fn as_owner<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("ApiKey {OWNER_KEY}").parse().unwrap(),
    );
    req
}

/// One random Admin API write (or, with `policy`, a policy edit sent as a whole document through
/// `Apply`). Returns the kind of write and its committed revision, or the refusal.
async fn admin_write(
    admin: &mut AdminClient<Channel>,
    current: &Model,
    rng: &mut StdRng,
    n: u64,
) -> (&'static str, Result<u64, tonic::Status>) {
    let others: Vec<CompactString> = current
        .keys
        .keys()
        .filter(|k| !KEPT_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    let some_key = others.choose(rng).map(|k| k.to_string());
    let roles = |rng: &mut StdRng| -> Vec<String> {
        ROLES
            .iter()
            .filter(|_| rng.random_bool(0.4))
            .map(|r| r.to_string())
            .collect()
    };
    let kind = rng.random_range(0..9);
    match (kind, some_key) {
        (0 | 1, _) | (_, None) => {
            let req = pb::CreateKeyRequest {
                prefix: format!("AdmKey{:04}{n}", rng.random_range(0..100)),
                key_type: pb::KeyType::Team as i32,
                user: format!("u{}", rng.random_range(1..6)),
                team: ["t0", "t1", "t2"].choose(rng).unwrap().to_string(),
                roles: roles(rng),
                ..Default::default()
            };
            let r = admin.create_key(as_owner(req)).await;
            ("CreateKey", r.map(|r| r.into_inner().revision))
        }
        (2, Some(prefix)) => {
            let status = ["active", "inactive"].choose(rng).unwrap().to_string();
            let req = pb::UpdateKeyRequest {
                prefix,
                status: Some(status),
                ..Default::default()
            };
            let r = admin.update_key(as_owner(req)).await;
            ("UpdateKey status", r.map(|r| r.into_inner().revision))
        }
        (3, Some(prefix)) => {
            let req = pb::UpdateKeyRequest {
                prefix,
                replace_roles: true,
                roles: roles(rng),
                ..Default::default()
            };
            let r = admin.update_key(as_owner(req)).await;
            ("UpdateKey roles", r.map(|r| r.into_inner().revision))
        }
        (4, Some(prefix)) => {
            let r = admin
                .delete_key(as_owner(pb::DeleteRequest { id: prefix }))
                .await;
            ("DeleteKey", r.map(|r| r.into_inner().revision))
        }
        (5, Some(prefix)) => {
            let r = admin
                .replace_key_secret(as_owner(pb::GetRequest { id: prefix }))
                .await;
            ("ReplaceKeySecret", r.map(|r| r.into_inner().revision))
        }
        (6, _) => {
            let id = ["t1", "t2"].choose(rng).unwrap();
            let team = &current.teams[*id];
            let req = pb::UpdateTeamRequest {
                id: id.to_string(),
                name: None,
                active: Some(!team.active),
            };
            let r = admin.update_team(as_owner(req)).await;
            ("UpdateTeam", r.map(|r| r.into_inner().revision))
        }
        (7, _) => {
            let id = format!("u{}", rng.random_range(1..6));
            let req = pb::UpdateUserRequest {
                id,
                name: Some(format!("admin-renamed {n}")),
                active: Some(true),
                ..Default::default()
            };
            let r = admin.update_user(as_owner(req)).await;
            ("UpdateUser", r.map(|r| r.into_inner().revision))
        }
        _ => {
            let scope = ["OWN", "TEAM", "ALL"].choose(rng).unwrap().to_string();
            let role = pb::Role {
                id: "AUDIT_LITE".into(),
                r#type: "user".into(),
                grants: vec![pb::Grant {
                    entitlement: "jobs.read".into(),
                    scope,
                }],
                prebuilt: false,
            };
            let exists = current.catalog.role("AUDIT_LITE").is_some();
            let req = pb::RoleRequest { role: Some(role) };
            if exists {
                let r = admin.update_role(as_owner(req)).await;
                ("UpdateRole", r.map(|r| r.into_inner().revision))
            } else {
                let r = admin.create_role(as_owner(req)).await;
                ("CreateRole", r.map(|r| r.into_inner().revision))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_six_guarantees_under_random_edits_disconnects_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    // A short log, so that some resumes land before it and must reset.
    state.change_log().set_limits(LogLimits {
        max_revisions: 12,
        ..Default::default()
    });
    let (url, _origin) = serve_store(state.clone(), dir.path()).await;
    let mut admin = AdminClient::connect(url.clone()).await.unwrap();
    // The committed history: the state right after each write (this test is the only writer,
    // and a write returns once its revision is applied).
    let mut history = BTreeMap::new();
    history.insert(state.revision(), state.model());
    // The base world, as a policy document next to the bootstrap key.
    let mut seed = state.model();
    let base = base_model();
    seed.teams.extend(base.teams);
    seed.users.extend(base.users);
    seed.projects.extend(base.projects);
    let (_, follower) = follower_project_and_key();
    seed.keys
        .insert(follower.prefix.clone(), Arc::new(follower));
    let r = admin
        .apply(as_owner(pb::ApplyRequest {
            document: policy_yaml(&seed),
            dry_run: false,
            prune: true,
            name: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    history.insert(r.revision, state.model());
    let first = r.revision;

    const REVISIONS: u64 = 250;
    let until = first + REVISIONS;
    let subs: Vec<_> = (0..6)
        .map(|i| tokio::spawn(subscriber(url.clone(), 100 + i, until)))
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut n = 0;
    let mut writes: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    while state.revision() < until {
        n += 1;
        let current = state.model();
        let (kind, outcome) = if rng.random_bool(0.4) {
            // A policy edit: one to three random edits of the whole document, applied as one.
            let mut edited = current.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut edited, &mut rng, n);
            }
            let r = admin
                .apply(as_owner(pb::ApplyRequest {
                    document: policy_yaml(&edited),
                    dry_run: false,
                    prune: true,
                    name: String::new(),
                }))
                .await;
            ("Apply (policy edit)", r.map(|r| r.into_inner().revision))
        } else {
            admin_write(&mut admin, &current, &mut rng, n).await
        };
        let tally = writes.entry(kind).or_default();
        match outcome {
            Ok(rev) if rev > *history.keys().next_back().unwrap() => {
                tally.0 += 1;
                assert_eq!(rev, state.revision(), "{kind}: one write, one revision");
                history.insert(rev, state.model());
            }
            Ok(_) => {} // nothing changed
            Err(status) => {
                // A write the model refuses (e.g. roles a key type may not hold) commits nothing.
                assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound
                    ),
                    "{kind}: {status:?}"
                );
                tally.1 += 1;
                assert_eq!(
                    state.revision(),
                    *history.keys().next_back().unwrap(),
                    "{kind}: refused, yet the revision moved"
                );
            }
        }
        if rng.random_bool(0.2) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..40))).await;
        }
    }
    eprintln!("oracle writes (committed, refused): {writes:?}");
    for kind in [
        "Apply (policy edit)",
        "CreateKey",
        "UpdateKey status",
        "UpdateKey roles",
        "DeleteKey",
        "ReplaceKeySecret",
        "UpdateTeam",
        "UpdateUser",
    ] {
        assert!(
            writes.get(kind).is_some_and(|(ok, _)| *ok > 0),
            "{kind} was committed at least once: {writes:?}"
        );
    }
    let mut resets = 0;
    let mut sessions = 0;
    for (i, s) in subs.into_iter().enumerate() {
        let rec = s.await.unwrap();
        check_guarantees(&format!("subscriber {i}"), &rec, &history);
        assert_eq!(rec.built.last().unwrap().0, until);
        assert!(!rec.bookmarks.is_empty() || rec.sessions > 0);
        resets += rec.resets;
        sessions += rec.sessions;
    }
    assert!(
        sessions > 12,
        "the subscribers disconnected and resumed ({sessions} sessions)"
    );
    assert!(
        resets > 0,
        "some resumes were reset and bridged by a snapshot"
    );
    eprintln!(
        "oracle: {} revisions, {sessions} sessions, {resets} resets",
        history.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_blocks_nobody_and_gets_a_reset() {
    const REVISIONS: u64 = 3000;
    let state = Arc::new(State::new());
    state.change_log().set_limits(LogLimits {
        max_revisions: 8,
        max_bytes: 1 << 20,
        subscriber_buffer: 4,
        ..Default::default()
    });
    let model = base_model();
    commit(&state, &model).unwrap();
    let url = serve_state(state.clone()).await;

    // The slow one never reads until the end.
    let mut slow = client(&url)
        .await
        .watch(pb::WatchRequest {
            bookmark_interval_ms: 0,
            ..watch_request(0, false, "")
        })
        .await
        .unwrap()
        .into_inner();
    let mut fast = client(&url)
        .await
        .watch(watch_request(0, false, ""))
        .await
        .unwrap()
        .into_inner();
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0u64);
    let fast_task = tokio::spawn(async move {
        let mut revisions = Vec::new();
        while let Some(ev) = fast.message().await.unwrap() {
            if matches!(ev.event, Some(Event::Reset(_))) {
                panic!("the fast subscriber was reset");
            }
            if ev.end_of_revision && !matches!(ev.event, Some(Event::Bookmark(_))) {
                revisions.push(ev.revision);
                seen_tx.send_replace(ev.revision);
                if ev.revision > REVISIONS {
                    break;
                }
            }
        }
        revisions
    });
    // Big revisions (20 keys each, ~8 MB in all), so that the slow stream's socket and HTTP/2
    // windows (megabytes in tonic) fill up.
    let mut rng = StdRng::seed_from_u64(3);
    for n in 0..REVISIONS {
        let changes = (0..20)
            .map(|i| {
                let prefix = format!("Bulk{:06}", (n * 20 + i) % 400);
                let roles: Vec<&str> = ROLES
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                Change::PutKey(Arc::new(key(
                    &prefix,
                    "u1",
                    "t1",
                    &roles,
                    KeyStatus::Active,
                )))
            })
            .collect();
        let rev = state.revision() + 1;
        state
            .apply(ChangeSet {
                revision: rev,
                changes,
            })
            .unwrap();
        // The writer paces itself on the fast subscriber only; the slow one never holds it up.
        tokio::time::timeout(Duration::from_secs(20), seen_rx.wait_for(|s| *s >= rev))
            .await
            .expect("the fast subscriber keeps up")
            .unwrap();
    }
    let fast_revisions = fast_task.await.unwrap();
    assert_eq!(
        fast_revisions,
        (2..=REVISIONS + 1).collect::<Vec<_>>(),
        "the fast subscriber saw every revision once, in order"
    );

    // The slow one: whatever it was sent is contiguous from revision 2, then a reset, then the end.
    let mut got = Vec::new();
    let reset = loop {
        assert!(
            got.len() as u64 <= REVISIONS,
            "the slow subscriber was never reset"
        );
        let ev = tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("the slow stream ends")
            .unwrap()
            .expect("a reset before the end");
        if let Some(Event::Reset(r)) = &ev.event {
            break r.clone();
        }
        if ev.end_of_revision {
            got.push(ev.revision);
        }
    };
    eprintln!("slow test: slow got {} revisions then {reset:?}", got.len());
    assert_eq!(
        got,
        (2..2 + got.len() as u64).collect::<Vec<_>>(),
        "no skip before the reset"
    );
    assert!(
        (got.len() as u64) < REVISIONS,
        "the slow subscriber fell behind ({} revisions)",
        got.len()
    );
    assert!(reset.oldest_kept > 2 + got.len() as u64, "{reset:?}");
    assert!(
        slow.message().await.unwrap().is_none(),
        "the stream ends after the reset"
    );
    let status = state.change_log().status();
    assert_eq!(status.slow_resets, 1, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_all_see_every_change() {
    let state = Arc::new(State::new());
    let mut model = base_model();
    commit(&state, &model).unwrap();
    let url = serve_state(state.clone()).await;
    const WATCHERS: usize = 1000;
    const CHANGES: u64 = 20;
    // 100 streams per HTTP/2 connection.
    let mut channels = Vec::new();
    for _ in 0..WATCHERS / 100 {
        channels.push(client(&url).await);
    }
    let mut streams = Vec::new();
    for i in 0..WATCHERS {
        let mut c = channels[i % channels.len()].clone();
        let req = pb::WatchRequest {
            start_revision: 2,
            api_key: OWNER_KEY.into(),
            ..Default::default()
        };
        streams.push(c.watch(req).await.unwrap().into_inner());
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut revs = Vec::new();
                while let Some(ev) = s.message().await.unwrap() {
                    if ev.end_of_revision {
                        revs.push(ev.revision);
                    }
                    if revs.len() as u64 == CHANGES {
                        break;
                    }
                }
                revs
            })
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    let mut n = 0;
    while state.revision() < 1 + CHANGES {
        n += 1;
        mutate(&mut model, &mut rng, n);
        commit(&state, &model);
    }
    let want: Vec<u64> = (2..2 + CHANGES).collect();
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, want);
    }
    assert_eq!(state.change_log().status().slow_resets, 0);
}

#[tokio::test]
async fn bad_watch_requests_get_clear_answers() {
    let state = Arc::new(State::new());
    let url = serve_state(state.clone()).await;
    let mut c = client(&url).await;
    let owner = |req: pb::WatchRequest| pb::WatchRequest {
        api_key: OWNER_KEY.into(),
        ..req
    };
    let err = c.watch(owner(Default::default())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "not loaded yet: {err:?}");

    let model = base_model();
    commit(&state, &model).unwrap();
    // The revision is told only to a key that may watch.
    let future = pb::WatchRequest {
        start_revision: 9,
        ..Default::default()
    };
    let err = c.watch(future.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains("revision 1"), "{err:?}");
    let err = c.watch(owner(future)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.message().contains("start_revision 9") && err.message().contains("revision 1"),
        "{err:?}"
    );

    let err = c
        .watch(owner(pb::WatchRequest {
            snapshot: true,
            start_revision: 1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Keys: none, malformed or unknown are unauthenticated; a developer's key may not watch at
    // all; secrets need keys.replicate, which the owner's SYSTEM_OWNER key does not hold.
    let mut m2 = model.clone();
    let dev = key("DevKey0001", "u1", "t1", &["DEVELOPER"], KeyStatus::Active);
    m2.keys.insert(dev.prefix.clone(), Arc::new(dev));
    commit(&state, &m2).unwrap();
    for (api_key, secrets, code, says) in [
        ("", false, Code::Unauthenticated, "needs the caller's key"),
        ("nonsense", false, Code::Unauthenticated, "malformed"),
        (
            "NoSuchKey01.x",
            false,
            Code::Unauthenticated,
            "no API key has this prefix",
        ),
        (
            "OwnerKey0001.wrong",
            false,
            Code::Unauthenticated,
            "secret does not match",
        ),
        (
            "DevKey0001.DevKey0001-secret",
            false,
            Code::PermissionDenied,
            "accounts.read at ALL",
        ),
        (OWNER_KEY, true, Code::PermissionDenied, "keys.replicate"),
    ] {
        let err = c
            .watch(pb::WatchRequest {
                snapshot: true,
                include_secret_hashes: secrets,
                api_key: api_key.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{api_key}: {err:?}");
        assert!(err.message().contains(says), "{api_key}: {err:?}");
    }
    // The key in metadata and in the request must agree.
    let mut two = tonic::Request::new(owner(pb::WatchRequest::default()));
    two.metadata_mut().insert(
        "authorization",
        format!("ApiKey {FOLLOWER_KEY}").parse().unwrap(),
    );
    let err = c.watch(two).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut bad = tonic::Request::new(pb::WatchRequest::default());
    bad.metadata_mut().insert(
        "authorization",
        format!("Bearer {OWNER_KEY}").parse().unwrap(),
    );
    let err = c.watch(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Without the flag, no hash travels; unknown filter values match nothing.
    let mut s = c
        .watch(owner(pb::WatchRequest {
            snapshot: true,
            team_ids: vec!["no-such-team".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(Event::SnapshotEnd(_))),
        "{first:?}"
    );
    let mut s = c
        .watch(owner(pb::WatchRequest {
            snapshot: true,
            kinds: vec![pb::EventKind::Key as i32],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut keys = 0;
    loop {
        let ev = s.message().await.unwrap().unwrap();
        match ev.event {
            Some(Event::KeyUpserted(k)) => {
                assert!(k.secret_sha256.is_empty(), "a hash leaked: {k:?}");
                keys += 1;
            }
            Some(Event::SnapshotEnd(_)) => break,
            other => panic!("a filtered-out event came: {other:?}"),
        }
    }
    assert_eq!(keys, 3);

    // A revision no longer kept, and another history: a reset, never a silent gap.
    state.change_log().set_limits(LogLimits {
        max_revisions: 1,
        ..Default::default()
    });
    let mut m3 = m2.clone();
    m3.teams.get_mut("t2").unwrap().active = false;
    commit(&state, &m3).unwrap();
    for req in [
        pb::WatchRequest {
            start_revision: 1,
            ..Default::default()
        },
        pb::WatchRequest {
            start_revision: 3,
            history: "0000000000000000".into(),
            ..Default::default()
        },
    ] {
        let mut s = c.watch(owner(req)).await.unwrap().into_inner();
        let ev = s.message().await.unwrap().unwrap();
        assert!(matches!(ev.event, Some(Event::Reset(_))), "{ev:?}");
        assert!(s.message().await.unwrap().is_none());
    }
}

#[tokio::test]
async fn grants_events_name_only_requestors_whose_grants_changed() {
    let state = Arc::new(State::new());
    let mut model = base_model();
    let k1 = key("AliceKey01", "u1", "t1", &["DEVELOPER"], KeyStatus::Active);
    let k2 = key("BobKey0001", "u2", "t1", &["AUDITOR"], KeyStatus::Active);
    for k in [k1, k2] {
        model.keys.insert(k.prefix.clone(), Arc::new(k));
    }
    commit(&state, &model).unwrap();
    let url = serve_state(state.clone()).await;
    let mut s = client(&url)
        .await
        .watch(pb::WatchRequest {
            api_key: OWNER_KEY.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Promote alice: one key event, one grants event for u1, nothing about u2.
    let k1 = key(
        "AliceKey01",
        "u1",
        "t1",
        &["ACCOUNT_ADMIN"],
        KeyStatus::Active,
    );
    model.keys.insert(k1.prefix.clone(), Arc::new(k1));
    commit(&state, &model).unwrap();
    // Rename bob: a user event, no grants event.
    Arc::make_mut(model.users.get_mut("u2").unwrap()).name = "Bob B.".into();
    commit(&state, &model).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = s.message().await.unwrap().unwrap();
        let kind = match ev.event.unwrap() {
            Event::KeyUpserted(k) => format!("key {}", k.prefix),
            Event::GrantsChanged(g) => format!("grants {}", g.user_id),
            Event::UserChanged(u) => format!("user {}", u.id),
            other => format!("{other:?}"),
        };
        got.push((ev.revision, kind, ev.end_of_revision));
    }
    assert_eq!(
        got,
        [
            (2, "key AliceKey01".to_owned(), false),
            (2, "grants u1".to_owned(), true),
            (3, "user u2".to_owned(), true),
        ]
    );
}
