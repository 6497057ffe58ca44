//! The escalation rule's examples, each run through [`execute`] on a model like the example
//! policy's: acme and globex, Adam administering acme, Olivia and the bootstrap user owning the
//! platform.

use std::sync::Arc;

use super::*;
use crate::domain::{
    KeyType, RoleType,
    model::tests::{team, team_key},
};

const NOW: i64 = 1_800_000_000;

const OLIVIA: &str = "OliviaOwnerKey01";
const BOOT: &str = "BootstrapKey0001";
const ADAM: &str = "AdamAdminKey0001";
const DANA: &str = "DanaScienceKey01";
const DANA_GLOBEX: &str = "DanaGlobexKey001";
const DEVIN: &str = "DevinDevKey00001";
const DEVIN_2: &str = "DevinDevKey00002";
const DEVIN_OLD: &str = "DevinOldKey00001";
const GUS: &str = "GusDevKey0000001";
const ARIA: &str = "AriaAuditKey0001";

fn user(id: &str, teams: &[&str]) -> Arc<User> {
    Arc::new(User {
        id: id.into(),
        name: id.into(),
        active: true,
        teams: teams.iter().map(|t| Arc::from(*t)).collect(),
    })
}

fn world() -> IndexedModel {
    let mut m = Model::default();
    for t in ["acme", "globex", "system"] {
        m.teams.insert(t.into(), team(t));
    }
    for (u, teams) in [
        ("olivia", &["acme"][..]),
        ("adam", &["acme"]),
        ("dana", &["acme", "globex"]),
        ("devin", &["acme"]),
        ("gus", &["globex"]),
        ("aria", &["globex"]),
        ("bootstrap", &[]),
    ] {
        m.users.insert(u.into(), user(u, teams));
    }
    m.projects.insert(
        "fraud".into(),
        Project {
            id: "fraud".into(),
            team: "acme".into(),
            name: "Fraud".into(),
        },
    );
    let mut old = team_key(DEVIN_OLD, "devin", "acme", &["DEVELOPER"]);
    old.status = KeyStatus::Inactive;
    for k in [
        team_key(OLIVIA, "olivia", "acme", &["SYSTEM_OWNER"]),
        team_key(BOOT, "bootstrap", "system", &["SYSTEM_OWNER"]),
        team_key(ADAM, "adam", "acme", &["ACCOUNT_ADMIN"]),
        team_key(DANA, "dana", "acme", &["DATA_SCIENTIST"]),
        team_key(DANA_GLOBEX, "dana", "globex", &["ACCOUNT_ADMIN"]),
        team_key(DEVIN, "devin", "acme", &["DEVELOPER"]),
        team_key(DEVIN_2, "devin", "acme", &["DEVELOPER"]),
        old,
        team_key(GUS, "gus", "globex", &["DEVELOPER"]),
        team_key(ARIA, "aria", "globex", &["AUDITOR"]),
    ] {
        m.keys.insert(k.prefix.clone(), Arc::new(k));
    }
    assert!(m.validate().is_empty(), "{:?}", m.validate());
    IndexedModel::from(m)
}

fn new_key(prefix: &str, user: &str, team: &str, roles: &[&str]) -> Command {
    Command::CreateKey(Arc::new(team_key(prefix, user, team, roles)))
}

fn set_status(prefix: &str, status: KeyStatus) -> Command {
    Command::UpdateKey {
        prefix: prefix.into(),
        status: Some(status),
        roles: None,
        expires_at: None,
    }
}

fn set_roles(prefix: &str, roles: &[&str]) -> Command {
    Command::UpdateKey {
        prefix: prefix.into(),
        status: None,
        roles: Some(crate::domain::model::canonical_roles(roles.iter().copied())),
        expires_at: None,
    }
}

fn set_expiry(prefix: &str, at: Option<i64>) -> Command {
    Command::UpdateKey {
        prefix: prefix.into(),
        status: None,
        roles: None,
        expires_at: Some(Expiry::from_unix(at).unwrap()),
    }
}

fn rekey(prefix: &str) -> Command {
    Command::ReplaceKeySecret {
        prefix: prefix.into(),
        hash: SecretHash::of_secret("a-new-secret"),
    }
}

fn user_status(id: &str, active: bool) -> Command {
    Command::UpdateUser {
        id: id.into(),
        name: None,
        active: Some(active),
        teams: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Allowed,
    /// PermissionDenied: the escalation rule.
    Escalation,
    /// FailedPrecondition: the lock-out rule.
    LockOut,
}

fn outcome(result: &Result<(Vec<Change>, Vec<Change>), WriteError>) -> Option<Want> {
    match result {
        Ok(_) => Some(Want::Allowed),
        Err(WriteError::PermissionDenied(m)) if m.starts_with("escalation refused") => {
            Some(Want::Escalation)
        }
        Err(WriteError::FailedPrecondition(m)) if m.starts_with("lock-out refused") => {
            Some(Want::LockOut)
        }
        Err(_) => None,
    }
}

/// Runs each case on a fresh copy of `model`; a refused write leaves it as it was.
fn run_cases(model: &IndexedModel, cases: &[(&str, &str, Command, Want)]) {
    let mut failures = Vec::new();
    for (name, caller, command, want) in cases {
        let mut m = model.clone();
        let result = execute(caller, command, &mut m, NOW);
        if outcome(&result) != Some(*want) {
            failures.push(format!("{name}: want {want:?}, got {result:?}"));
        }
        if result.is_err() && m != *model.model() {
            failures.push(format!("{name}: a refused write changed the model"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_team_admin_administers_its_team_and_nothing_beyond() {
    use Want::*;
    let w = world();
    run_cases(
        &w,
        &[
            (
                "CreateKey for Devin, DEVELOPER",
                ADAM,
                new_key("DevinNewKey0001", "devin", "acme", &["DEVELOPER"]),
                Allowed,
            ),
            (
                "CreateKey for Devin, DATA_SCIENTIST",
                ADAM,
                new_key("DevinNewKey0001", "devin", "acme", &["DATA_SCIENTIST"]),
                Allowed,
            ),
            (
                "CreateKey for Dana, who also holds a key in globex",
                ADAM,
                new_key("DanaNewKey00001", "dana", "acme", &["DATA_SCIENTIST"]),
                Escalation,
            ),
            (
                "CreateKey for Olivia, no roles",
                ADAM,
                new_key("OliviaNewKey001", "olivia", "acme", &[]),
                Escalation,
            ),
            (
                "ReplaceKeySecret of Olivia's key",
                ADAM,
                rekey(OLIVIA),
                Escalation,
            ),
            (
                "Deactivate Olivia's key",
                ADAM,
                set_status(OLIVIA, KeyStatus::Inactive),
                Escalation,
            ),
            (
                "Strip Olivia's key",
                ADAM,
                set_roles(OLIVIA, &[]),
                Escalation,
            ),
            (
                "DeleteKey Olivia's key",
                ADAM,
                Command::DeleteKey(OLIVIA.into()),
                Escalation,
            ),
            (
                "Deactivate the user olivia",
                ADAM,
                user_status("olivia", false),
                Escalation,
            ),
            (
                "CreateKey for the bootstrap user in acme",
                ADAM,
                new_key("BootInAcme00001", "bootstrap", "acme", &[]),
                Escalation,
            ),
            (
                "Own key + SYSTEM_OWNER",
                ADAM,
                set_roles(ADAM, &["ACCOUNT_ADMIN", "SYSTEM_OWNER"]),
                Escalation,
            ),
            (
                "Bind AUDITOR to Devin's key",
                ADAM,
                set_roles(DEVIN, &["AUDITOR"]),
                Escalation,
            ),
            (
                "Bind ACCOUNT_ADMIN to Gus's key (globex)",
                ADAM,
                set_roles(GUS, &["ACCOUNT_ADMIN"]),
                Escalation,
            ),
            (
                "Deactivate Devin's key",
                ADAM,
                set_status(DEVIN, KeyStatus::Inactive),
                Allowed,
            ),
            (
                "Reactivate Devin's old key",
                ADAM,
                set_status(DEVIN_OLD, KeyStatus::Active),
                Allowed,
            ),
            ("Re-key Devin's key", ADAM, rekey(DEVIN), Allowed),
            (
                "Deactivate the team acme (Olivia's key is in it)",
                ADAM,
                Command::UpdateTeam {
                    id: "acme".into(),
                    name: None,
                    active: Some(false),
                },
                Escalation,
            ),
            (
                "Rename the team acme",
                ADAM,
                Command::UpdateTeam {
                    id: "acme".into(),
                    name: Some("Acme 2".into()),
                    active: None,
                },
                Allowed,
            ),
            (
                "Add globex to Devin's teams",
                ADAM,
                Command::UpdateUser {
                    id: "devin".into(),
                    name: None,
                    active: None,
                    teams: Some(vec![Arc::from("acme"), Arc::from("globex")].into()),
                },
                Escalation,
            ),
            (
                "Define a role",
                ADAM,
                Command::CreateRole(Arc::new(Role {
                    id: "HELPER".into(),
                    role_type: RoleType::User,
                    grants: vec![],
                    prebuilt: false,
                })),
                Escalation,
            ),
        ],
    );
}

#[test]
fn a_requestor_living_in_one_team_is_within_its_admins_reach() {
    // Without her globex key, Dana lives in acme only.
    let mut w = world();
    w.apply(&Change::RemoveKey(DANA_GLOBEX.into()));
    run_cases(
        &w,
        &[(
            "CreateKey for Dana (DATA_SCIENTIST in acme only)",
            ADAM,
            new_key("DanaNewKey00001", "dana", "acme", &["DATA_SCIENTIST"]),
            Want::Allowed,
        )],
    );
}

#[test]
fn a_key_holder_manages_its_own_keys_only_downwards() {
    use Want::*;
    let w = world();
    run_cases(
        &w,
        &[
            (
                "ReplaceKeySecret of his own key",
                DEVIN,
                rekey(DEVIN),
                Allowed,
            ),
            (
                "Deactivate his own other key",
                DEVIN,
                set_status(DEVIN_2, KeyStatus::Inactive),
                Allowed,
            ),
            (
                "Delete his own other key",
                DEVIN,
                Command::DeleteKey(DEVIN_2.into()),
                Allowed,
            ),
            (
                "Shorten his own key's expiry",
                DEVIN,
                set_expiry(DEVIN, Some(NOW + 3600)),
                Allowed,
            ),
            (
                "Reactivate his own key that an admin deactivated",
                DEVIN,
                set_status(DEVIN_OLD, KeyStatus::Active),
                Escalation,
            ),
            (
                "Add DATA_SCIENTIST to his own key",
                DEVIN,
                set_roles(DEVIN, &["DEVELOPER", "DATA_SCIENTIST"]),
                Escalation,
            ),
            (
                "Deactivate Gus's key",
                DEVIN,
                set_status(GUS, KeyStatus::Inactive),
                Escalation,
            ),
            (
                "Rename himself",
                DEVIN,
                Command::UpdateUser {
                    id: "devin".into(),
                    name: Some("Devin D.".into()),
                    active: None,
                    teams: None,
                },
                Allowed,
            ),
            (
                "Deactivate himself",
                DEVIN,
                user_status("devin", false),
                Escalation,
            ),
        ],
    );
    // An expiry, once set, may be shortened but not extended or cleared by its holder.
    let mut m = w.clone();
    execute(DEVIN, &set_expiry(DEVIN, Some(NOW + 3600)), &mut m, NOW).unwrap();
    run_cases(
        &m,
        &[
            (
                "Extend his own key's expiry",
                DEVIN,
                set_expiry(DEVIN, Some(NOW + 7200)),
                Escalation,
            ),
            (
                "Clear his own key's expiry",
                DEVIN,
                set_expiry(DEVIN, None),
                Escalation,
            ),
        ],
    );
}

#[test]
fn an_owner_administers_everything_but_never_the_last_owner_key() {
    use Want::*;
    let mut w = world();
    run_cases(
        &w,
        &[
            (
                "Bind ACCOUNT_ADMIN to Gus's key (globex)",
                OLIVIA,
                set_roles(GUS, &["ACCOUNT_ADMIN"]),
                Allowed,
            ),
            (
                "Bind AUDITOR (its ALL grants include one no owner holds: the bind right)",
                OLIVIA,
                set_roles(DEVIN, &["AUDITOR"]),
                Allowed,
            ),
            (
                "Create a project (a team's administration covers its projects)",
                OLIVIA,
                Command::CreateProject(Project {
                    id: "new-project".into(),
                    team: "globex".into(),
                    name: String::new(),
                }),
                Allowed,
            ),
            (
                "Take a grant from SYSTEM_OWNER",
                OLIVIA,
                Command::Apply {
                    document: Box::new({
                        let mut target = w.model().clone();
                        let mut owner = (**target.catalog.role("SYSTEM_OWNER").unwrap()).clone();
                        owner.grants.pop();
                        target.catalog.put_role(Arc::new(owner));
                        target
                    }),
                    prune: true,
                },
                LockOut,
            ),
        ],
    );
    // Deactivate the bootstrap key while her own stays active: allowed.
    execute(OLIVIA, &set_status(BOOT, KeyStatus::Inactive), &mut w, NOW).unwrap();
    run_cases(
        &w,
        &[
            (
                "DeleteKey of her own key, the last active owner key",
                OLIVIA,
                Command::DeleteKey(OLIVIA.into()),
                LockOut,
            ),
            (
                "Her own key's roles → DEVELOPER",
                OLIVIA,
                set_roles(OLIVIA, &["DEVELOPER"]),
                LockOut,
            ),
            (
                "Deactivate her own key",
                OLIVIA,
                set_status(OLIVIA, KeyStatus::Inactive),
                LockOut,
            ),
            (
                "Deactivate her own user",
                OLIVIA,
                user_status("olivia", false),
                LockOut,
            ),
            (
                "Deactivate the team of the last owner key",
                OLIVIA,
                Command::UpdateTeam {
                    id: "acme".into(),
                    name: None,
                    active: Some(false),
                },
                LockOut,
            ),
            (
                "Let the last owner key expire",
                OLIVIA,
                set_expiry(OLIVIA, Some(NOW - 1)),
                LockOut,
            ),
            (
                "Reactivate the bootstrap key, then she may go",
                OLIVIA,
                set_status(BOOT, KeyStatus::Active),
                Allowed,
            ),
        ],
    );
}

#[test]
fn an_apply_is_judged_as_one_change_on_every_requestor_it_touches() {
    use Want::*;
    let w = world();
    let with = |edit: &dyn Fn(&mut Model)| {
        let mut target = w.model().clone();
        edit(&mut target);
        Command::Apply {
            document: Box::new(target),
            prune: true,
        }
    };
    run_cases(
        &w,
        &[
            (
                "A document that only renames Devin",
                ADAM,
                with(&|m| {
                    let mut u = (*m.users["devin"]).clone();
                    u.name = "Devin D.".into();
                    m.users.insert("devin".into(), Arc::new(u));
                }),
                Allowed,
            ),
            (
                "A document that moves Olivia's owner key to Devin",
                ADAM,
                with(&|m| {
                    let mut k = (*m.keys[OLIVIA]).clone();
                    k.owner = "devin".into();
                    m.keys.insert(k.prefix.clone(), Arc::new(k));
                }),
                Escalation,
            ),
            (
                "A document that gives Devin a key with no roles in globex",
                ADAM,
                with(&|m| {
                    let mut u = (*m.users["devin"]).clone();
                    u.teams = vec![Arc::from("acme"), Arc::from("globex")].into();
                    m.users.insert("devin".into(), Arc::new(u));
                    let k = team_key("DevinGlobex0001", "devin", "globex", &[]);
                    m.keys.insert(k.prefix.clone(), Arc::new(k));
                }),
                Escalation,
            ),
            (
                "A document that deletes Gus's key, by an owner",
                OLIVIA,
                with(&|m| {
                    m.keys.remove(GUS);
                }),
                Allowed,
            ),
        ],
    );
}

#[test]
fn refused_writes_are_refused_before_anything_is_applied() {
    let w = world();
    // Not found and invalid writes are reported as such, whoever asks.
    let mut m = w.clone();
    assert!(matches!(
        execute(
            ADAM,
            &set_status("NoSuchKey0001", KeyStatus::Inactive),
            &mut m,
            NOW
        ),
        Err(WriteError::NotFound(_))
    ));
    assert!(matches!(
        execute(
            OLIVIA,
            &new_key("GusInAcme000001", "gus", "acme", &[]),
            &mut m,
            NOW
        ),
        Err(WriteError::Invalid(_))
    ));
    // A caller whose key cannot act is unauthenticated, even for a write that changes nothing.
    let mut gone = w.clone();
    gone.apply(&Change::PutKey(Arc::new({
        let mut k = (*w.model().keys[ADAM]).clone();
        k.status = KeyStatus::Inactive;
        k
    })));
    assert!(matches!(
        execute(ADAM, &set_status(DEVIN, KeyStatus::Active), &mut gone, NOW),
        Err(WriteError::Unauthenticated(_))
    ));
    // A write that changes nothing still needs the administration of its object.
    assert!(matches!(
        execute(DEVIN, &set_status(OLIVIA, KeyStatus::Active), &mut m, NOW),
        Err(WriteError::PermissionDenied(_))
    ));
    assert!(m == *w.model());
}

#[test]
fn project_keys_follow_their_projects_team() {
    use Want::*;
    let w = world();
    let project_key = |roles: &[&str]| {
        Command::CreateKey(Arc::new(KeySpec {
            key_type: KeyType::Project,
            team: None,
            ..team_key("FraudKey0000001", "fraud", "acme", roles)
        }))
    };
    run_cases(
        &w,
        &[
            (
                "A SYSTEM_KEY key for a project of acme",
                ADAM,
                project_key(&["SYSTEM_KEY"]),
                Allowed,
            ),
            (
                "A project key for a project of acme, by globex's admin",
                DANA_GLOBEX,
                project_key(&["SYSTEM_KEY"]),
                Escalation,
            ),
            (
                "Move the project to globex",
                ADAM,
                Command::UpdateProject {
                    id: "fraud".into(),
                    team: Some("globex".into()),
                    name: None,
                },
                Escalation,
            ),
        ],
    );
}
