//! A first load (a change set into a state with no keys) skips the search for the keys of the
//! teams it changes: every key it leaves was put by it. These check that the entries still come
//! out of the teams as loaded, whatever the order of the changes, and that a later team change
//! still reaches keys loaded before it.

use super::*;
use crate::domain::{
    Team,
    model::tests::{model, project_key, team_key},
};

/// The answer for a key of the fixtures (secret `<prefix>-secret`): AUDITOR keys ask for
/// `jobs.read`, the project key (SYSTEM_KEY) for `models.read` in its team.
fn reason(state: &State, prefix: &str) -> Reason {
    let key = format!("{prefix}.{prefix}-secret");
    let (entitlement, team) = if prefix.starts_with("Fraud") {
        ("models.read", "acme")
    } else {
        ("jobs.read", "")
    };
    let resource = ResourceRef {
        team_id: team,
        ..Default::default()
    };
    state
        .check(&key, entitlement, resource, unix_now())
        .decision
        .reason
}

#[test]
fn a_first_load_builds_every_entry_from_the_teams_it_loads() {
    let mut m = model(vec![
        team_key("AliceAcme1", "alice", "acme", &["AUDITOR"]),
        team_key("BobGlobex1", "bob", "globex", &["AUDITOR"]),
        project_key("FraudKey01", "fraud", &["PROJECT"]),
    ]);
    m.teams.get_mut("globex").unwrap().active = false;
    let mut changes = Model::default().diff(&m);
    // A team changed after the keys in the same set: acme (the team of AliceAcme1 and of the
    // fraud project) goes inactive last.
    changes.push(Change::PutTeam(Team {
        id: "acme".into(),
        name: "Acme".into(),
        active: false,
    }));
    let state = State::new();
    state
        .apply(ChangeSet {
            revision: 1,
            changes,
        })
        .unwrap();
    assert_eq!(reason(&state, "AliceAcme1"), Reason::TeamInactive);
    assert_eq!(reason(&state, "BobGlobex1"), Reason::TeamInactive);
    assert_eq!(reason(&state, "FraudKey01"), Reason::TeamInactive);
    assert_eq!(state.counts().keys, 3);

    // Once keys are loaded, a team change alone reaches every key in the team.
    state
        .apply(ChangeSet {
            revision: 2,
            changes: vec![Change::PutTeam(Team {
                id: "acme".into(),
                name: "Acme".into(),
                active: true,
            })],
        })
        .unwrap();
    assert_eq!(reason(&state, "AliceAcme1"), Reason::Allowed);
    assert_eq!(reason(&state, "FraudKey01"), Reason::Allowed);
    assert_eq!(reason(&state, "BobGlobex1"), Reason::TeamInactive);
}

/// A first load large enough to rebuild its requestors on several threads yields the same cache
/// as loading the same model in change sets small enough for one thread: every key's entry and
/// requestor (status, members with their grants, owned keys) alike.
#[test]
fn a_parallel_rebuild_builds_what_a_sequential_one_does() {
    const USERS: usize = 40_000;
    let roles = [
        &["AUDITOR"][..],
        &["DEVELOPER"],
        &["DATA_SCIENTIST", "AUDITOR"],
    ];
    let mut keys = Vec::new();
    for i in 0..USERS {
        let (user, team) = (format!("user{i}"), ["acme", "globex"][i % 2]);
        keys.push(team_key(&format!("Key{i:06}a"), &user, team, roles[i % 3]));
        if i % 5 == 0 {
            // A second key in the other team, with other roles: the wider scope across keys.
            let other = ["globex", "acme"][i % 2];
            keys.push(team_key(
                &format!("Key{i:06}b"),
                &user,
                other,
                roles[(i + 1) % 3],
            ));
        }
    }
    let mut m = model(keys);
    for i in 0..USERS {
        let mut u = crate::domain::model::tests::user(&format!("user{i}"));
        u.active = i % 7 != 0;
        m.users.put(Arc::new(u));
    }
    m.teams.get_mut("globex").unwrap().active = false;
    let changes = Model::default().diff(&m);
    assert!(changes.len() > PARALLEL_REBUILD_MIN * 2);

    let parallel = State::new();
    parallel
        .apply(ChangeSet {
            revision: 1,
            changes: changes.clone(),
        })
        .unwrap();
    let sequential = State::new();
    for (i, chunk) in changes.chunks(PARALLEL_REBUILD_MIN / 4).enumerate() {
        sequential
            .apply(ChangeSet {
                revision: i as u64 + 1,
                changes: chunk.to_vec(),
            })
            .unwrap();
    }

    assert_eq!(parallel.counts(), sequential.counts());
    for spec in m.keys.values() {
        let (p, s) = (
            parallel.lookup(&spec.prefix).expect("in the parallel load"),
            sequential
                .lookup(&spec.prefix)
                .expect("in the sequential load"),
        );
        assert_eq!((&p.spec, &p.team), (&s.spec, &s.team), "{}", spec.prefix);
        let (pr, sr) = (&p.requestor, &s.requestor);
        assert_eq!(
            (&pr.id, pr.active, &pr.members, &pr.owned_key_prefixes),
            (&sr.id, sr.active, &sr.members, &sr.owned_key_prefixes),
            "{}",
            spec.prefix
        );
        // Keys of one requestor share it, in both.
        let first = &pr.owned_key_prefixes[0];
        let sibling = parallel.lookup(first).expect("owned key");
        assert!(Arc::ptr_eq(&sibling.requestor, pr), "{}", spec.prefix);
    }
}
