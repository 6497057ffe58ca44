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
