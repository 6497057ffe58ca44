use super::*;
use crate::domain::{
    KeyStatus,
    model::tests::{model, team_key},
};

fn load(state: &State, m: &Model, revision: u64) {
    let changes = state.model().diff(m);
    state.apply(ChangeSet { revision, changes }).unwrap();
}

fn allowed(state: &State, prefix: &str, ent: &str, team: &str) -> Reason {
    let key = format!("{prefix}.{prefix}-secret");
    let res = ResourceRef {
        team_id: team,
        ..Default::default()
    };
    state.check(&key, ent, res, unix_now()).decision.reason
}

#[test]
fn from_model_holds_the_model_at_its_revision_and_refuses_revision_0() {
    let m = model(vec![team_key("AliceAcme1", "alice", "acme", &["AUDITOR"])]);
    let state = State::from_model(&m, 5).unwrap();
    assert_eq!(state.revision(), 5);
    assert_eq!(state.model(), m);
    assert_eq!(
        allowed(&state, "AliceAcme1", "jobs.read", "globex"),
        Reason::Allowed
    );
    assert_eq!(
        State::from_model(&m, 0).err(),
        Some(StateError::StaleRevision {
            given: 0,
            applied: 0
        })
    );
}

#[test]
fn changes_reach_the_entries_of_every_key_of_the_requestor() {
    let state = State::new();
    assert!(!state.is_loaded());
    let mut m = model(vec![
        team_key("AliceAcme1", "alice", "acme", &["DEVELOPER"]),
        team_key("AliceGlobex", "alice", "globex", &["DEVELOPER"]),
    ]);
    load(&state, &m, 1);
    assert_eq!(state.revision(), 1);
    assert_eq!(
        allowed(&state, "AliceAcme1", "jobs.cancel", "globex"),
        Reason::OutOfScope
    );

    // Promoting the globex key changes what the acme key may do.
    m.keys.insert(
        "AliceGlobex".into(),
        Arc::new(team_key(
            "AliceGlobex",
            "alice",
            "globex",
            &["ACCOUNT_ADMIN"],
        )),
    );
    load(&state, &m, 2);
    assert_eq!(
        allowed(&state, "AliceAcme1", "jobs.cancel", "globex"),
        Reason::Allowed
    );

    // Deactivating the globex team takes it back.
    m.teams.get_mut("globex").unwrap().active = false;
    load(&state, &m, 3);
    assert_eq!(
        allowed(&state, "AliceAcme1", "jobs.cancel", "globex"),
        Reason::OutOfScope
    );
    assert_eq!(
        allowed(&state, "AliceGlobex", "jobs.read", ""),
        Reason::TeamInactive
    );

    // Removing a key removes it from the cache.
    m.keys.remove("AliceGlobex");
    load(&state, &m, 4);
    assert_eq!(
        allowed(&state, "AliceGlobex", "jobs.read", ""),
        Reason::UnknownKey
    );
    assert_eq!(state.counts().keys, 1);
}

#[test]
fn revisions_only_grow() {
    let state = State::new();
    let m = model(vec![]);
    load(&state, &m, 5);
    let err = state
        .apply(ChangeSet {
            revision: 5,
            changes: vec![],
        })
        .unwrap_err();
    assert_eq!(
        err,
        StateError::StaleRevision {
            given: 5,
            applied: 5
        }
    );
    assert_eq!(state.revision(), 5);
}

#[test]
fn role_changes_rebuild_every_holder() {
    let state = State::new();
    let mut m = model(vec![team_key(
        "CarolKey01",
        "carol",
        "acme",
        &["DEVELOPER"],
    )]);
    load(&state, &m, 1);
    assert_eq!(
        allowed(&state, "CarolKey01", "models.deploy", "acme"),
        Reason::NoGrant
    );
    let mut dev = (**m.catalog.role("DEVELOPER").unwrap()).clone();
    dev.grants.push(crate::domain::Grant {
        entitlement: "models.deploy".into(),
        scope: crate::domain::Scope::Team,
    });
    m.catalog.put_role(Arc::new(dev));
    load(&state, &m, 2);
    assert_eq!(
        allowed(&state, "CarolKey01", "models.deploy", "acme"),
        Reason::Allowed
    );
}

#[test]
fn status_changes_apply_at_once() {
    let state = State::new();
    let mut m = model(vec![team_key(
        "CarolKey01",
        "carol",
        "acme",
        &["DEVELOPER"],
    )]);
    load(&state, &m, 1);
    let mut revoked = team_key("CarolKey01", "carol", "acme", &["DEVELOPER"]);
    revoked.status = KeyStatus::Inactive;
    m.keys.insert("CarolKey01".into(), Arc::new(revoked));
    load(&state, &m, 2);
    assert_eq!(
        allowed(&state, "CarolKey01", "jobs.read", ""),
        Reason::KeyInactive
    );
}

#[test]
fn snapshot_views_are_shared_while_the_log_bridges_them() {
    let state = State::new();
    let mut m = model(vec![team_key(
        "CarolKey01",
        "carol",
        "acme",
        &["DEVELOPER"],
    )]);
    load(&state, &m, 1);
    let a = state.snapshot_view();
    assert!(Arc::ptr_eq(&a, &state.snapshot_view()));
    assert_eq!((a.revision, &a.model), (1, &m));
    // A later revision, still in the log: the same view (its streams replay revision 2).
    m.teams.get_mut("globex").unwrap().active = false;
    load(&state, &m, 2);
    let b = state.snapshot_view();
    assert!(Arc::ptr_eq(&a, &b));
    // Once nobody holds it, the next snapshot copies the model as it is now.
    drop((a, b));
    let c = state.snapshot_view();
    assert_eq!((c.revision, &c.model), (2, &m));
    // A log that no longer holds the revision after the view's: a new view.
    state.change_log().set_limits(changelog::LogLimits {
        max_revisions: 1,
        ..Default::default()
    });
    for revision in [3, 4] {
        m.teams.get_mut("globex").unwrap().active = revision % 2 == 0;
        load(&state, &m, revision);
    }
    let d = state.snapshot_view();
    assert!(!Arc::ptr_eq(&c, &d));
    assert_eq!((d.revision, &d.model), (4, &m));
    assert_eq!(*d.history, *state.change_log().history());
}

#[tokio::test]
async fn waiting_for_a_revision_ends_when_it_is_applied_or_at_the_timeout() {
    let state = Arc::new(State::new());
    let waiter = {
        let state = state.clone();
        tokio::spawn(async move { state.wait_for_revision(2, Duration::from_secs(30)).await })
    };
    load(&state, &model(vec![]), 1);
    load(
        &state,
        &model(vec![team_key("CarolKey01", "carol", "acme", &[])]),
        2,
    );
    assert_eq!(waiter.await.unwrap(), Ok(2));
    assert_eq!(
        state.wait_for_revision(9, Duration::from_millis(10)).await,
        Err(2)
    );
}
