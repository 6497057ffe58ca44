//! The store's mechanics: durable writes, a failing disk, the change log rebuilt after a
//! restart.

use super::*;
use crate::domain::model::tests::{model, team_key};
use redb::Database;
use store::UNDO;

pub(super) fn bootstrap() -> Bootstrap {
    Bootstrap {
        prefix: "BootstrapKey01".into(),
        secret_sha256: None,
        seed: None,
    }
}

/// The real file backend, with writes and syncs that fail while `failing` is set (a full or
/// failing disk).
#[derive(Debug)]
struct FailingDisk {
    file: redb::backends::FileBackend,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl FailingDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
}

#[tokio::test]
async fn a_failing_disk_refuses_the_write_with_nothing_half_done() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let disk = failing.clone();
    let opened = Store::open_with(
        dir.path(),
        Box::new(move |path, _| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| redb::DatabaseError::Storage(e.into()))?;
            redb::Builder::new().create_with_backend(FailingDisk {
                file: redb::backends::FileBackend::new(file)?,
                failing: disk.clone(),
            })
        }),
    )
    .unwrap();
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start_on(
        opened,
        dir.path(),
        state.clone(),
        &bootstrap(),
        crate::origin::DEFAULT_HISTORY_REVISIONS,
    )
    .unwrap();
    let team = |id: &str| {
        let id: Arc<str> = id.into();
        Box::new(move |_m: &Model| {
            Ok(vec![Change::PutTeam(Team {
                id,
                name: "T".into(),
                active: true,
            })])
        }) as Edit
    };
    failing.store(true, Ordering::SeqCst);
    let err = started.origin.write(team("lost")).await.unwrap_err();
    assert!(
        matches!(err, WriteError::Unavailable(ref m) if m.contains("no space")),
        "{err:?}"
    );
    assert_eq!(state.revision(), 1, "nothing applied");
    assert!(!state.model().teams.contains_key("lost"));
    let shown = started.origin.reload_status();
    assert!(
        shown
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no space")),
        "/status shows the failed commit: {shown:?}"
    );
    assert_eq!(shown.failed_reloads, 1);
    // The disk recovers: the next write takes the next revision and nothing of the failed
    // one appears.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(started.origin.write(team("kept")).await.unwrap(), 2);
    let shown = started.origin.reload_status();
    assert_eq!(shown.last_error, None, "cleared by the next commit");
    assert_eq!(shown.failed_reloads, 1, "the count stays");
    drop(started);
    let (_, m, revision) = Store::open(dir.path()).unwrap();
    assert_eq!(revision, 2);
    assert!(m.teams.contains_key("kept") && !m.teams.contains_key("lost"));
}

/// The kept revisions of a state's change log, in a comparable form.
fn logged(state: &State) -> Vec<String> {
    use crate::state::changelog::Read;
    let log = state.change_log();
    let Read::Entries(entries) = log.read(log.oldest_kept(), state.revision()) else {
        panic!("the oldest kept revision is readable")
    };
    entries
        .iter()
        .map(|e| {
            let changes: Vec<_> = e
                .changes
                .iter()
                .map(|c| (&c.change, &c.team, &c.user, c.existed))
                .collect();
            format!("{} {changes:?} {:?}", e.revision, e.grants_changed)
        })
        .collect()
}

/// An edit adding the fixture's teams, users, projects and the given keys to the model.
fn add(keys: Vec<KeySpec>) -> Edit {
    Box::new(move |m: &Model| {
        let fixture = model(keys);
        let mut target = m.clone();
        target.teams.extend(fixture.teams);
        target.users.extend(fixture.users);
        target.projects.extend(fixture.projects);
        target.keys.extend(fixture.keys);
        Ok(m.diff(&target))
    })
}

/// Writes of every kind that the change log describes differently: new and changed keys,
/// a changed role (every holder rebuilt), a removed key, a deactivated team.
pub(super) async fn varied_writes(origin: &EmbeddedOrigin) -> u64 {
    origin.write(add(vec![])).await.unwrap();
    origin
        .write(add(vec![team_key(
            "AliceKey01",
            "alice",
            "acme",
            &["DEVELOPER"],
        )]))
        .await
        .unwrap();
    origin
        .write(add(vec![team_key(
            "AliceKey01",
            "alice",
            "acme",
            &["ACCOUNT_ADMIN"],
        )]))
        .await
        .unwrap();
    origin
        .write(add(vec![team_key(
            "BobKey0001",
            "bob",
            "globex",
            &["DEVELOPER"],
        )]))
        .await
        .unwrap();
    origin
        .write(Box::new(|m: &Model| {
            let mut dev = (**m.catalog.role("DEVELOPER").unwrap()).clone();
            dev.grants.push(crate::domain::Grant {
                entitlement: "models.deploy".into(),
                scope: crate::domain::Scope::Team,
            });
            Ok(vec![Change::PutRole(Arc::new(dev))])
        }))
        .await
        .unwrap();
    origin
        .write(Box::new(|_m: &Model| {
            Ok(vec![Change::RemoveKey("AliceKey01".into())])
        }))
        .await
        .unwrap();
    origin
        .write(Box::new(|m: &Model| {
            let mut globex = m.teams["globex"].clone();
            globex.active = false;
            Ok(vec![Change::PutTeam(globex)])
        }))
        .await
        .unwrap();
    origin
        .write(Box::new(|_m: &Model| {
            Ok(vec![
                Change::PutEntitlement("reports.export".into()),
                Change::PutRole(Arc::new(crate::domain::Role {
                    id: "REPORTER".into(),
                    role_type: crate::domain::RoleType::User,
                    grants: vec![crate::domain::Grant {
                        entitlement: "reports.export".into(),
                        scope: crate::domain::Scope::Team,
                    }],
                    prebuilt: false,
                })),
            ])
        }))
        .await
        .unwrap();
    origin
        .write(Box::new(|_m: &Model| {
            Ok(vec![
                Change::RemoveRole("REPORTER".into()),
                Change::RemoveEntitlement("reports.export".into()),
            ])
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_history_id_is_made_once_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = Store::open(dir.path()).unwrap();
    let first = store.history().unwrap();
    assert_eq!(first.len(), 16, "{first}");
    drop(store);
    let (store, _, _) = Store::open(dir.path()).unwrap();
    assert_eq!(store.history().unwrap(), first, "kept across reopening");
    drop(store);
    let other = tempfile::tempdir().unwrap();
    let (store, _, _) = Store::open(other.path()).unwrap();
    assert_ne!(
        store.history().unwrap(),
        first,
        "another store, another history"
    );

    // A served store shows its history on the change log, before and after a restart.
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(&*state.change_log().history(), first);
    drop(started);
    let state = Arc::new(State::new());
    let _started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(&*state.change_log().history(), first);
}

#[tokio::test]
async fn a_restart_rebuilds_the_change_log_as_it_was_logged() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    let head = varied_writes(&started.origin).await;
    assert_eq!(head, 10);
    let live = logged(&state);
    assert_eq!(live.len(), 10, "revisions 1..=10 logged while serving");
    assert!(
        live.iter().any(|e| e.contains("User(\"bob\")")),
        "some revision changed grants: {live:#?}"
    );
    drop(started);
    let (store, _, _) = Store::open(dir.path()).unwrap();
    let window = store.replay_window(head, 100).unwrap();
    assert_eq!(window.len(), 10);
    assert!(
        window.iter().all(|r| r.grants_changed.is_some()),
        "the stopped writer recorded every revision's changed grants"
    );
    drop(store);

    // The restart replays every kept revision and adds none: the same log, the same head.
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(state.revision(), head);
    assert_eq!(state.change_log().oldest_kept(), 1);
    assert_eq!(logged(&state), live);
    let next = started
        .origin
        .write(add(vec![team_key("CarolKey01", "carol", "acme", &[])]))
        .await
        .unwrap();
    assert_eq!(next, head + 1);
    let mut after = live.clone();
    after.push(logged(&state).pop().unwrap());
    assert_eq!(logged(&state), after);
    drop(started);

    // With a shorter log only its newest revisions are kept, and those exactly as before.
    let state = Arc::new(State::new());
    state
        .change_log()
        .set_limits(crate::state::changelog::LogLimits {
            max_revisions: 3,
            ..Default::default()
        });
    let _started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(state.revision(), head + 1);
    assert_eq!(state.change_log().oldest_kept(), head - 1);
    assert_eq!(logged(&state), after[after.len() - 3..]);
    assert!(matches!(
        state.change_log().read(head - 2, head + 1),
        crate::state::changelog::Read::Compacted { oldest_kept } if oldest_kept == head - 1
    ));
}

#[tokio::test]
async fn undo_records_that_do_not_lead_to_the_stored_state_replay_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let started = EmbeddedOrigin::start(dir.path(), Arc::new(State::new()), &bootstrap()).unwrap();
    let head = varied_writes(&started.origin).await;
    drop(started);
    // Damage an undo record: it now puts a team that never existed.
    let db = Database::create(dir.path().join("rolegate.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    let phantom = Change::PutTeam(Team {
        id: "phantom".into(),
        name: "P".into(),
        active: true,
    });
    txn.open_table(UNDO)
        .unwrap()
        .insert(head - 2, record::encode_changes(&[phantom]).as_slice())
        .unwrap();
    txn.commit().unwrap();
    drop(db);

    let state = Arc::new(State::new());
    state
        .change_log()
        .set_limits(crate::state::changelog::LogLimits {
            max_revisions: 3,
            ..Default::default()
        });
    let _started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(state.revision(), head);
    let served = state.model();
    assert!(!served.teams["globex"].active, "the stored state is served");
    assert!(!served.teams.contains_key("phantom"));
    assert_eq!(
        state.change_log().oldest_kept(),
        head + 1,
        "no revision is replayed: resumes before now are reset, never given wrong events"
    );
}

/// Which requestors' grants a revision changed depends on the clock (an expired key grants
/// nothing): after a restart, the change log has the sets computed when the revisions were
/// first applied, not a replay's.
#[tokio::test]
async fn a_restart_keeps_the_changed_grants_as_first_computed() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    started.origin.write(add(vec![])).await.unwrap();
    let expires_at = crate::state::unix_now() + 1;
    let key = |roles: &[&str]| {
        let mut k = team_key("AliceKey01", "alice", "acme", roles);
        k.expires_at = Expiry::at(expires_at).unwrap();
        k
    };
    started
        .origin
        .write(add(vec![key(&["DEVELOPER"])]))
        .await
        .unwrap();
    let promoted = started
        .origin
        .write(add(vec![key(&["ACCOUNT_ADMIN"])]))
        .await
        .unwrap();
    let live = logged(&state);
    assert!(
        live.last().unwrap().ends_with("[User(\"alice\")]"),
        "promoting a live key changes its holder's grants: {live:#?}"
    );
    drop(started);
    while crate::state::unix_now() <= expires_at {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(state.revision(), promoted);
    assert_eq!(logged(&state), live);
    drop(started);
    // What a replay alone computes now that the key has expired: no grants changed.
    let replayed = State::new();
    let (store, _, _) = Store::open(dir.path()).unwrap();
    for r in store.replay_window(promoted, usize::MAX).unwrap() {
        replayed
            .apply(ChangeSet {
                revision: r.revision,
                changes: r.changes,
            })
            .unwrap();
    }
    assert!(
        logged(&replayed).last().unwrap().ends_with(" []"),
        "a replay after the expiry would differ: {:#?}",
        logged(&replayed)
    );
}

/// What a restart costs for rebuilding the change log: `ROLEGATE_REPLAY_REVISIONS`
/// single-key revisions (default 300; four keys per user) are written by 16 concurrent
/// writers, then the store
/// is started twice, with the default log (every revision replayed) and with a log of one
/// revision (nothing but the load); the times are printed (docs/performance.md has the measured
/// numbers) and the replayed log must hold every revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cost_of_replaying_the_kept_revisions() {
    let n: u64 = std::env::var("ROLEGATE_REPLAY_REVISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let started = EmbeddedOrigin::start(dir.path(), Arc::new(State::new()), &bootstrap()).unwrap();
    started.origin.write(add(vec![])).await.unwrap();
    started
        .origin
        .write(Box::new(move |_m: &Model| {
            Ok((0..n.div_ceil(4))
                .map(|u| {
                    Change::PutUser(Arc::new(User {
                        id: format!("user{u}").into(),
                        name: "replay".into(),
                        active: true,
                        teams: ["acme".into()].into(),
                    }))
                })
                .collect())
        }))
        .await
        .unwrap();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let origin = started.origin.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(16) {
                    let prefix = format!("Replay{i:08}");
                    let user = format!("user{}", i / 4);
                    let key = team_key(&prefix, &user, "acme", &["DEVELOPER"]);
                    origin
                        .write(Box::new(move |_m: &Model| {
                            Ok(vec![Change::PutKey(Arc::new(key))])
                        }))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    drop(started);
    let head = n + 3;

    let timed = |max_revisions: usize| {
        let state = Arc::new(State::new());
        state
            .change_log()
            .set_limits(crate::state::changelog::LogLimits {
                max_revisions,
                ..Default::default()
            });
        let t0 = std::time::Instant::now();
        let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
        let took = t0.elapsed();
        drop(started);
        (state, took)
    };
    let (replayed, with_log) = timed(crate::state::changelog::LogLimits::default().max_revisions);
    let (_, load_only) = timed(1);
    eprintln!(
        "{n} keys in {head} revisions: start with every revision replayed {with_log:?}, \
         start with only the load {load_only:?}"
    );
    assert_eq!(replayed.revision(), head);
    assert_eq!(
        replayed.change_log().status().kept_revisions as u64,
        head.min(10_000)
    );
}

/// The route table is kept by the store, undone like any object, and after a restart shown
/// as installed at the revision that wrote it, even when the change log no longer keeps it.
#[tokio::test]
async fn the_route_table_survives_a_restart_with_the_revision_that_installed_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    started.origin.write(add(vec![])).await.unwrap();
    let table: Arc<[crate::domain::RouteSpec]> = Arc::from(vec![crate::domain::RouteSpec {
        method: "GET".into(),
        path: "/api/reports/{teamId}".into(),
        entitlement: "jobs.read".into(),
        team: Some(crate::domain::ValueSource::Path("teamId".into())),
        owner_key: None,
        owner_user: None,
    }]);
    let put = table.clone();
    let installed = started
        .origin
        .write(Box::new(move |_m: &Model| Ok(vec![Change::PutRoutes(put)])))
        .await
        .unwrap();
    assert_eq!(state.routes().revision, installed);
    // A table naming an entitlement the catalog lacks is refused like a role's grant.
    let bad = started
        .origin
        .write(Box::new(|_m: &Model| {
            let spec = crate::domain::RouteSpec {
                method: "GET".into(),
                path: "/x".into(),
                entitlement: "reports.archive".into(),
                team: None,
                owner_key: None,
                owner_user: None,
            };
            Ok(vec![Change::PutRoutes(Arc::from(vec![spec]))])
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, WriteError::Invalid(v) if v[0].object == crate::domain::model::ObjectRef::Route(0)),
        "{bad:?}"
    );
    for i in 0..4 {
        started
            .origin
            .write(add(vec![team_key(
                &format!("LaterKey0{i}"),
                "alice",
                "acme",
                &[],
            )]))
            .await
            .unwrap();
    }
    let head = state.revision();
    drop(started);

    let state = Arc::new(State::new());
    state
        .change_log()
        .set_limits(crate::state::changelog::LogLimits {
            max_revisions: 2,
            ..Default::default()
        });
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    assert_eq!(state.revision(), head);
    assert!(state.change_log().oldest_kept() > installed, "not replayed");
    assert_eq!(state.model().routes.as_deref(), Some(&*table));
    assert_eq!(state.routes().revision, installed);
    assert_eq!(state.routes_revision(), installed);

    // Back to the default table: the record is gone, and so is the table after a restart.
    started
        .origin
        .write(Box::new(|_m: &Model| Ok(vec![Change::ResetRoutes])))
        .await
        .unwrap();
    drop(started);
    let (_, m, _) = Store::open(dir.path()).unwrap();
    assert_eq!(m.routes, None);
}

#[test]
fn undo_restores_the_model() {
    let original = model(vec![team_key(
        "AliceKey01",
        "alice",
        "acme",
        &["DEVELOPER"],
    )]);
    let mut m = IndexedModel::from(original.clone());
    let target = model(vec![team_key("BobKey0001", "bob", "globex", &["AUDITOR"])]);
    let mut changes = original.diff(&target);
    changes.push(Change::PutEntitlement("reports.export".into()));
    changes.push(Change::RemoveRole("AUDITOR".into()));
    changes.push(Change::PutRoutes(Arc::from(Vec::new())));
    let undo = m.apply_with_undo(&changes);
    assert!(m != original);
    for c in &undo {
        m.apply(c);
    }
    assert!(m == original);
}

#[tokio::test]
async fn writes_are_durable_and_revisions_continue_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::new());
    let started = EmbeddedOrigin::start(dir.path(), state.clone(), &bootstrap()).unwrap();
    let key = started
        .bootstrap_key
        .clone()
        .expect("a generated bootstrap key");
    assert!(key.starts_with("BootstrapKey01."));
    assert_eq!(state.revision(), 1);
    let rev = started
        .origin
        .write(Box::new(|_m: &Model| {
            Ok(vec![Change::PutTeam(Team {
                id: "acme".into(),
                name: "Acme".into(),
                active: true,
            })])
        }))
        .await
        .unwrap();
    assert_eq!(rev, 2);
    let bad = started
        .origin
        .write(Box::new(|_m: &Model| {
            Ok(vec![Change::RemoveTeam("system".into())])
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(bad, WriteError::Invalid(ref v) if !v.is_empty()),
        "{bad:?}"
    );
    assert!(state.model().teams.contains_key("system"));
    let log = started.origin.store().changes_since(0).unwrap().unwrap();
    assert_eq!(
        log.iter().map(|s| s.revision).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Dropping the origin stops its writer and releases the file.
    drop(started);
    let (_, m, revision) = Store::open(dir.path()).unwrap();
    assert_eq!(revision, 2);
    assert_eq!(m, state.model());
    // The loaded objects share their ids: the bootstrap key's user and team are the
    // user's and the team's own strings, not copies.
    let key = &m.keys["BootstrapKey01"];
    let owner = m.users.get(&*key.owner).unwrap();
    assert!(Arc::ptr_eq(&key.owner, &owner.id));
    let team = key.team.as_ref().unwrap();
    assert!(Arc::ptr_eq(team, &m.teams[&**team].id));
}

fn entry_at(revision: u64) -> crate::domain::history::HistoryEntry {
    crate::domain::history::HistoryEntry {
        revision,
        caller: "BootstrapKey01".into(),
        caller_user: Some("bootstrap".into()),
        action: "UpdateTeam".into(),
        unix_ms: 1_700_000_000_000,
        teams: vec!["acme".into()],
        beyond_teams: false,
    }
}

/// The history is committed with its revision, read back a number of revisions at a time, and
/// pruned past the kept number by the commit that goes beyond it.
#[test]
fn the_history_is_committed_with_its_revision_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, revision) = Store::open(dir.path()).unwrap();
    assert_eq!(revision, 0);
    for r in 1..=5u64 {
        let team = Change::PutTeam(Team {
            id: "acme".into(),
            name: format!("Acme {r}"),
            active: true,
        });
        store
            .commit(&[(r, &[team], &[])], &[], &[entry_at(r)], 3)
            .unwrap();
    }
    let revisions = |after, limit| -> Vec<u64> {
        store
            .history_after(after, limit)
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect()
    };
    assert_eq!(revisions(0, 100), [3, 4, 5], "the last 3 kept");
    assert_eq!(revisions(3, 100), [4, 5]);
    assert_eq!(revisions(0, 1), [3]);
    assert_eq!(revisions(5, 100), Vec::<u64>::new());
    assert_eq!(store.history_after(0, 1).unwrap()[0], entry_at(3));
}

/// What recording the history adds to a durable commit of one write: single-write commits with
/// their history entry against the same commits without it, alternated, in one run. Prints the
/// ratio (docs/performance.md has the measured figures); asserts only that both kinds commit.
/// `ROLEGATE_HISTORY_COMMITS` sets the commits of each kind (default 200).
#[test]
fn recording_the_history_costs_a_durable_commit_little() {
    let n: u64 = std::env::var("ROLEGATE_HISTORY_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = Store::open(dir.path()).unwrap();
    let (mut with, mut without) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for r in 1..=2 * n {
        let key = Change::PutKey(Arc::new(team_key(
            &format!("Key{r:08}"),
            "alice",
            "acme",
            &["DEVELOPER"],
        )));
        let history = if r % 2 == 0 {
            vec![entry_at(r)]
        } else {
            Vec::new()
        };
        let t0 = std::time::Instant::now();
        store
            .commit(&[(r, &[key], &[])], &[], &history, 10_000)
            .unwrap();
        let took = t0.elapsed();
        if history.is_empty() {
            without += took;
        } else {
            with += took;
        }
    }
    assert_eq!(store.history_after(0, usize::MAX).unwrap().len() as u64, n);
    eprintln!(
        "{n} durable single-write commits each: with the history entry {:?} per commit, without \
         {:?}; ratio {:.3}",
        with / n as u32,
        without / n as u32,
        with.as_secs_f64() / without.as_secs_f64()
    );
}
