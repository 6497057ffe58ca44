//! Shared builders of test models, and the model's own tests.

use super::*;
use crate::domain::{RoleType, key::SecretHash};

pub(crate) fn team(id: &str) -> Team {
    Team {
        id: id.into(),
        name: id.to_uppercase(),
        active: true,
    }
}

pub(crate) fn user(id: &str) -> User {
    User {
        id: id.into(),
        name: id.into(),
        active: true,
        teams: TeamList::default(),
    }
}

pub(crate) fn team_key(prefix: &str, user: &str, team: &str, roles: &[&str]) -> KeySpec {
    KeySpec {
        prefix: prefix.into(),
        secret_hash: SecretHash::of_secret(&format!("{prefix}-secret")),
        key_type: KeyType::Team,
        owner: user.into(),
        team: Some(team.into()),
        roles: canonical_roles(roles.iter().copied()),
        status: KeyStatus::Active,
        expires_at: Expiry::NEVER,
    }
}

pub(crate) fn project_key(prefix: &str, project: &str, roles: &[&str]) -> KeySpec {
    KeySpec {
        prefix: prefix.into(),
        secret_hash: SecretHash::of_secret(&format!("{prefix}-secret")),
        key_type: KeyType::Project,
        owner: project.into(),
        team: None,
        roles: canonical_roles(roles.iter().copied()),
        status: KeyStatus::Active,
        expires_at: Expiry::NEVER,
    }
}

pub(crate) fn model(keys: Vec<KeySpec>) -> Model {
    let mut m = Model::default();
    for t in ["acme", "globex"] {
        m.teams.insert(t.into(), team(t));
    }
    for u in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        m.users.insert(u.into(), Arc::new(user(u)));
    }
    m.projects.insert(
        "fraud".into(),
        Project {
            id: "fraud".into(),
            team: "acme".into(),
            name: "Fraud".into(),
        },
    );
    for k in keys {
        m.keys.insert(k.prefix.clone(), Arc::new(k));
    }
    m
}

fn messages(m: &Model) -> Vec<String> {
    m.validate().iter().map(|v| v.to_string()).collect()
}

/// A user and its reference counts fill an 80-byte block; a million keys have ~600,000 users.
#[test]
fn a_user_is_56_bytes() {
    assert_eq!(std::mem::size_of::<User>(), 56);
}

/// A binding and its two reference counts fill a 128-byte allocation: a million keys hold a
/// million of these.
#[test]
fn a_key_binding_is_112_bytes() {
    assert_eq!(std::mem::size_of::<KeySpec>(), 112);
}

#[test]
fn an_owner_matches_the_key_type() {
    use KeyType::{Project, Team};
    assert_eq!(KeySpec::owner_of(Team, Some("alice"), None), Ok("alice"));
    assert_eq!(KeySpec::owner_of(Project, None, Some("fraud")), Ok("fraud"));
    let field = |t, u, p| KeySpec::owner_of(t, u, p).map_err(|e| e.field);
    assert_eq!(field(Team, None, None), Err("user"));
    assert_eq!(field(Team, Some("alice"), Some("fraud")), Err("project"));
    assert_eq!(field(Project, None, None), Err("project"));
    assert_eq!(field(Project, Some("alice"), Some("fraud")), Err("user"));
    let key = project_key("FraudKey01", "fraud", &["PROJECT"]);
    assert_eq!(key.project().map(|p| &**p), Some("fraud"));
    assert_eq!(key.user(), None);
}

#[test]
fn a_valid_model_has_no_violations() {
    let m = model(vec![
        team_key("AliceKey01", "alice", "acme", &["DATA_SCIENTIST"]),
        project_key("FraudKey01", "fraud", &["PROJECT"]),
    ]);
    assert_eq!(messages(&m), Vec::<String>::new());
    assert_eq!(
        m.key_team(&m.keys["FraudKey01"]).map(|t| &**t),
        Some("acme")
    );
}

#[test]
fn role_types_must_match_key_types() {
    let m = model(vec![
        team_key("AliceKey01", "alice", "acme", &["SYSTEM_KEY"]),
        project_key("FraudKey01", "fraud", &["DATA_SCIENTIST"]),
    ]);
    let got = messages(&m);
    assert!(
        got.iter()
            .any(|e| e.contains("key AliceKey01 (roles): role SYSTEM_KEY is a system role")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.contains("key FraudKey01 (roles): role DATA_SCIENTIST is a user role")),
        "{got:?}"
    );
}

#[test]
fn dangling_references_are_reported() {
    let mut m = model(vec![
        team_key("AliceKey01", "nobody", "acme", &["DEVELOPER"]),
        team_key("BobKey0001", "bob", "nowhere", &["NO_SUCH_ROLE"]),
        project_key("FraudKey01", "missing", &["SYSTEM_KEY"]),
    ]);
    Arc::make_mut(m.users.get_mut("carol").unwrap()).teams = ["ghost".into()].into();
    let got = messages(&m);
    for want in [
        "key AliceKey01 (user): user nobody does not exist",
        "key BobKey0001 (team): team nowhere does not exist",
        "key BobKey0001 (roles): role NO_SUCH_ROLE does not exist",
        "key FraudKey01 (project): project missing does not exist",
        "user carol (teams): team ghost does not exist",
    ] {
        assert!(got.iter().any(|e| e == want), "missing {want:?} in {got:?}");
    }
}

#[test]
fn keys_must_be_in_a_team_of_their_user() {
    let mut m = model(vec![team_key(
        "AliceKey01",
        "alice",
        "globex",
        &["DEVELOPER"],
    )]);
    Arc::make_mut(m.users.get_mut("alice").unwrap()).teams = ["acme".into()].into();
    assert_eq!(
        messages(&m),
        vec!["key AliceKey01 (team): user alice is not a member of team globex"]
    );
}

#[test]
fn custom_roles_must_use_known_entitlements() {
    let mut m = model(vec![]);
    m.catalog.put_role(Arc::new(Role {
        id: "REVIEWER".into(),
        role_type: RoleType::User,
        grants: vec![crate::domain::Grant {
            entitlement: "reports.export".into(),
            scope: crate::domain::Scope::Team,
        }],
        prebuilt: false,
    }));
    assert_eq!(m.validate().len(), 1);
    m.catalog.add_entitlement("reports.export");
    assert!(m.validate().is_empty());
}

#[test]
fn diff_then_apply_reaches_the_new_model() {
    let old = model(vec![
        team_key("AliceKey01", "alice", "acme", &["DEVELOPER"]),
        team_key("BobKey0001", "bob", "acme", &["DEVELOPER"]),
    ]);
    let mut new = model(vec![
        team_key("AliceKey01", "alice", "acme", &["ACCOUNT_ADMIN"]),
        team_key("CarolKey01", "carol", "globex", &["AUDITOR"]),
    ]);
    new.teams.remove("globex");
    new.teams.insert("initech".into(), team("initech"));
    new.keys.remove("CarolKey01");
    new.catalog.add_entitlement("reports.export");
    let changes = old.diff(&new);
    let mut applied = old.clone();
    for c in &changes {
        applied.apply(c);
    }
    assert_eq!(applied, new);
    assert!(changes.contains(&Change::RemoveKey("BobKey0001".into())));
    assert!(changes.contains(&Change::RemoveTeam("globex".into())));
    assert!(old.diff(&old).is_empty(), "no change, no event");
    // Only the edited key changes, not a reload of everything.
    let one = changes
        .iter()
        .filter(|c| matches!(c, Change::PutKey(_)))
        .count();
    assert_eq!(one, 1);
}

fn route(method: &str, path: &str, entitlement: &str) -> RouteSpec {
    RouteSpec {
        method: method.into(),
        path: path.into(),
        entitlement: entitlement.into(),
        team: None,
        owner_key: None,
        owner_user: None,
    }
}

#[test]
fn a_route_table_is_put_and_reset_as_a_whole_by_diff_and_apply() {
    let old = model(vec![]);
    let mut new = old.clone();
    new.catalog.add_entitlement("reports.export");
    new.routes = Some(Arc::from(vec![route("GET", "/reports", "reports.export")]));
    let changes = old.diff(&new);
    let at = |want: fn(&Change) -> bool| changes.iter().position(want).unwrap();
    assert!(
        at(|c| matches!(c, Change::PutEntitlement(_))) < at(|c| matches!(c, Change::PutRoutes(_))),
        "the entitlement exists before the table naming it: {changes:?}"
    );
    let mut applied = old.clone();
    for c in &changes {
        applied.apply(c);
    }
    assert_eq!(applied, new);
    assert!(new.diff(&new).is_empty(), "an equal table is no change");
    // Back to the default table: the table goes before the entitlement it named.
    let back = new.diff(&old);
    assert_eq!(
        back,
        vec![
            Change::ResetRoutes,
            Change::RemoveEntitlement("reports.export".into())
        ]
    );
    assert_eq!(Change::ResetRoutes.object().to_string(), "routes");
    // An empty table is a table (every request unmatched), not the default.
    let mut empty = old.clone();
    empty.routes = Some(Arc::from(Vec::new()));
    assert_eq!(
        old.diff(&empty),
        vec![Change::PutRoutes(Arc::from(Vec::new()))]
    );
}

#[test]
fn routes_must_name_known_entitlements_and_match_distinct_requests() {
    let mut m = model(vec![]);
    m.routes = Some(Arc::from(vec![
        route("GET", "/a/{x}", "jobs.read"),
        route("GET", "/a/{y}", "jobs.read"),
        route("GET", "/b", "reports.export"),
        route("get", "/c/*/d", "jobs.read"),
    ]));
    assert_eq!(
        messages(&m),
        vec![
            "routes[1] (path): matches the same requests as routes[0]",
            "routes[2] (entitlement): reports.export is not in the catalog (add it under entitlements:)",
            "routes[3] (method): method is an upper-case HTTP method or *",
            "routes[3] (path): path: '*' may only be the last segment",
        ]
    );
    m.routes = None;
    assert!(
        m.validate().is_empty(),
        "the default table is not validated against the catalog"
    );
}
