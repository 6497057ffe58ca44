//! A property test of the escalation rule: random small worlds, random sequences of Admin
//! commands (and whole-document applies) by random callers, run through the Admin core the
//! writable origins run. After each accepted command, an oracle written from the rule's
//! definitions (docs/security.md), independently of the implementation, checks that:
//!
//! 1. every credential the caller obtained (a key created, moved, re-keyed or reactivated)
//!    belongs to a requestor within the caller's administration, unless it re-keyed its own;
//! 2. no requestor outside the caller's administration was changed (the caller's own requestor
//!    only by self-service: deactivating, deleting, re-keying or shortening its own keys, or
//!    renaming itself);
//! 3. no grant at ALL appeared that the caller could not hand out (hold at ALL, or hold the bind
//!    right, `roles.update` at ALL);
//! 4. a usable SYSTEM_OWNER key remains when one existed;
//!
//! and, the other way round, that a team admin's command giving a member of its team a role
//! without ALL grants is never refused by the rule.
//!
//! `ROLEGATE_PROPTEST_CASES` sets the number of cases (default 10,000 each).

use std::{collections::BTreeSet, sync::Arc};

use proptest::prelude::*;
use rolegate::domain::{
    Expiry, IndexedModel, KeySpec, KeyStatus, KeyType, Model, Project, Role, RoleType, Scope,
    SecretHash, Team, TeamList, User,
    admin::{Command, WriteError, execute, plan},
    model::canonical_roles,
};

const NOW: i64 = 1_800_000_000;
const TEAMS: [&str; 3] = ["t0", "t1", "t2"];
const USERS: [&str; 6] = ["u0", "u1", "u2", "u3", "u4", "u5"];
const PROJECTS: [(&str, &str); 2] = [("p0", "t0"), ("p1", "t1")];
/// User roles a key may be given, by bit.
const ROLES: [&str; 7] = [
    "SYSTEM_OWNER",
    "ACCOUNT_ADMIN",
    "DEVELOPER",
    "DATA_SCIENTIST",
    "AUDITOR",
    "KEY_ADMIN",
    "WIDE_READER",
];
/// Entitlements the custom roles are made of.
const ENTS: [&str; 8] = [
    "keys.update",
    "keys.create",
    "users.update",
    "jobs.read",
    "models.deploy",
    "roles.update",
    "accounts.update",
    "drift.read",
];
const SCOPES: [Scope; 3] = [Scope::Own, Scope::Team, Scope::All];

// ---- the oracle: the rule's definitions, written again -----------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Req {
    User(String),
    Project(String),
}

fn req_of(k: &KeySpec) -> Req {
    match k.key_type {
        KeyType::Team => Req::User(k.owner.to_string()),
        KeyType::Project => Req::Project(k.owner.to_string()),
    }
}

fn team_of(m: &Model, k: &KeySpec) -> Option<String> {
    match k.key_type {
        KeyType::Team => k.team.as_ref().map(|t| t.to_string()),
        KeyType::Project => m.projects.get(&*k.owner).map(|p| p.team.to_string()),
    }
}

fn usable(m: &Model, k: &KeySpec) -> bool {
    k.status == KeyStatus::Active
        && !k.expires_at.is_reached(NOW)
        && team_of(m, k).is_some_and(|t| m.teams.get(t.as_str()).is_some_and(|t| t.active))
        && match k.key_type {
            KeyType::Team => m.users.get(&*k.owner).is_some_and(|u| u.active),
            KeyType::Project => m.projects.contains_key(&*k.owner),
        }
}

fn keys_of<'m>(m: &'m Model, r: &Req) -> Vec<&'m Arc<KeySpec>> {
    m.keys.values().filter(|k| req_of(k) == *r).collect()
}

/// (entitlement, scope, team the grant is anchored to) for every grant of `k`'s roles.
fn grants_of_key(m: &Model, k: &KeySpec) -> Vec<(String, Scope, String)> {
    let team = team_of(m, k).unwrap_or_default();
    let roles = std::iter::once(m.catalog.team_role().clone())
        .chain(k.roles.iter().filter_map(|r| m.catalog.role(r).cloned()));
    roles
        .flat_map(|role| role.grants.clone())
        .map(|g| (g.entitlement.to_string(), g.scope, team.clone()))
        .collect()
}

/// The effective grants of a requestor: over its usable keys.
fn effective(m: &Model, r: &Req) -> BTreeSet<(String, Scope, String)> {
    keys_of(m, r)
        .into_iter()
        .filter(|k| usable(m, k))
        .flat_map(|k| grants_of_key(m, k))
        .collect()
}

/// The entitlements a requestor has at ALL through its usable keys.
fn effective_all(m: &Model, r: &Req) -> BTreeSet<String> {
    effective(m, r)
        .into_iter()
        .filter(|(_, s, _)| *s == Scope::All)
        .map(|(e, _, _)| e)
        .collect()
}

struct Caller {
    req: Req,
    grants: BTreeSet<(String, Scope, String)>,
}

impl Caller {
    fn of(m: &Model, prefix: &str) -> Self {
        let req = req_of(&m.keys[prefix]);
        Caller {
            grants: effective(m, &req),
            req,
        }
    }
    fn all(&self, e: &str) -> bool {
        self.grants
            .iter()
            .any(|(g, s, _)| g == e && *s == Scope::All)
    }
    fn team(&self, e: &str, t: &str) -> bool {
        self.all(e)
            || self
                .grants
                .contains(&(e.to_string(), Scope::Team, t.to_string()))
    }
    fn administers(&self, t: &str) -> bool {
        self.team("keys.update", t) || self.team("keys.create", t)
    }
    fn hands_out(&self, e: &str) -> bool {
        self.all(e) || self.all("roles.update")
    }
    /// The requestor lives within the caller's administration in `m`: every team of every key
    /// (any status) administered; every ALL grant of every key (any status) handed out.
    fn within(&self, m: &Model, r: &Req) -> bool {
        keys_of(m, r).into_iter().all(|k| {
            team_of(m, k).is_none_or(|t| self.administers(&t))
                && grants_of_key(m, k)
                    .iter()
                    .all(|(e, s, _)| *s != Scope::All || self.hands_out(e))
        })
    }
}

fn owner_remains(m: &Model) -> bool {
    m.keys
        .values()
        .any(|k| usable(m, k) && k.roles.iter().any(|r| &**r == "SYSTEM_OWNER"))
}

/// The requestors whose standing differs between `a` and `b`.
fn changed_requestors(a: &Model, b: &Model) -> BTreeSet<Req> {
    let mut out = BTreeSet::new();
    let prefixes: BTreeSet<&str> = a
        .keys
        .keys()
        .chain(b.keys.keys())
        .map(|p| p.as_str())
        .collect();
    for p in prefixes {
        let (ka, kb) = (a.keys.get(p), b.keys.get(p));
        let differs = match (ka, kb) {
            (Some(x), Some(y)) => {
                x != y || team_of(a, x) != team_of(b, y) || usable(a, x) != usable(b, y)
            }
            _ => true,
        };
        if differs {
            out.extend(ka.map(|k| req_of(k)));
            out.extend(kb.map(|k| req_of(k)));
        }
    }
    for u in USERS {
        if a.users.get(u) != b.users.get(u) {
            out.insert(Req::User(u.into()));
        }
    }
    for (p, _) in PROJECTS {
        if a.projects.get(p) != b.projects.get(p) {
            out.insert(Req::Project(p.into()));
        }
    }
    // A changed role changes every holder.
    for k in a.keys.values() {
        let role_changed = std::iter::once("TEAM_ROLE")
            .chain(k.roles.iter().map(|r| &**r))
            .any(|r| a.catalog.role(r) != b.catalog.role(r));
        if role_changed {
            out.insert(req_of(k));
        }
    }
    out
}

/// Whether the change to the caller's own requestor is only self-service.
fn self_service_only(a: &Model, b: &Model, me: &Req) -> bool {
    let expiry = |k: &KeySpec| k.expires_at.unix().unwrap_or(i64::MAX);
    let keys_ok = keys_of(b, me)
        .into_iter()
        .all(|kb| match a.keys.get(kb.prefix.as_str()) {
            None => false,
            Some(ka) => {
                ka.roles == kb.roles
                    && expiry(kb) <= expiry(ka)
                    && !(ka.status != KeyStatus::Active && kb.status == KeyStatus::Active)
                    && ka.team == kb.team
            }
        });
    let user_ok = match me {
        Req::User(u) => match (a.users.get(u.as_str()), b.users.get(u.as_str())) {
            (Some(x), Some(y)) => x.active == y.active && x.teams == y.teams,
            (x, y) => x == y,
        },
        Req::Project(p) => a.projects.get(p.as_str()) == b.projects.get(p.as_str()),
    };
    keys_ok && user_ok
}

/// Checks the four properties for an accepted write by the key `caller` from `a` to `b`.
fn check_accepted(a: &Model, b: &Model, caller: &str) -> Result<(), String> {
    let c = Caller::of(a, caller);
    // 1. Credentials obtained.
    for kb in b.keys.values() {
        let ka = a.keys.get(kb.prefix.as_str());
        let reactivated =
            |ka: &KeySpec| ka.status != KeyStatus::Active && kb.status == KeyStatus::Active;
        let obtained = match ka {
            None => true,
            Some(ka) => {
                req_of(ka) != req_of(kb) || ka.secret_hash != kb.secret_hash || reactivated(ka)
            }
        };
        if !obtained {
            continue;
        }
        let r = req_of(kb);
        let own_rekey = r == c.req && ka.is_some_and(|ka| req_of(ka) == r && !reactivated(ka));
        if !own_rekey && !c.within(b, &r) {
            return Err(format!(
                "{caller} obtained key {} of {r:?}, outside its administration",
                kb.prefix
            ));
        }
    }
    // 2. Requestors changed.
    for r in changed_requestors(a, b) {
        if r == c.req {
            if !c.within(a, &r) && !self_service_only(a, b, &r) {
                return Err(format!(
                    "{caller} changed its own {r:?} beyond self-service"
                ));
            }
        } else if !c.within(a, &r) {
            return Err(format!(
                "{caller} changed {r:?}, outside its administration"
            ));
        }
    }
    // 3. No new ALL grant the caller could not hand out.
    let requestors: BTreeSet<Req> = b.keys.values().map(|k| req_of(k)).collect();
    for r in requestors {
        let before = effective_all(a, &r);
        for e in effective_all(b, &r).difference(&before) {
            if !c.hands_out(e) {
                return Err(format!(
                    "{r:?} gained {e} at ALL, which {caller} cannot hand out"
                ));
            }
        }
    }
    // 4. Never locked out.
    if owner_remains(a) && !owner_remains(b) {
        return Err(format!("{caller} left no usable SYSTEM_OWNER key"));
    }
    Ok(())
}

// ---- random worlds and commands ------------------------------------------------------------

#[derive(Clone, Debug)]
struct KeyDesc {
    user: usize,
    team: usize,
    roles: u8,
    status: u8,
    expiry: u8,
    project: Option<usize>,
}

impl KeyDesc {
    fn team_key(user: usize, team: usize, roles: u8) -> Self {
        KeyDesc {
            user,
            team,
            roles,
            status: 0,
            expiry: 0,
            project: None,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    CreateKey(KeyDesc),
    UpdateKey {
        key: usize,
        status: Option<u8>,
        roles: Option<u8>,
        expiry: Option<u8>,
    },
    ReKey(usize),
    DeleteKey(usize),
    UpdateUser {
        user: usize,
        active: Option<bool>,
        rename: bool,
        teams: Option<u8>,
    },
    UpdateTeam {
        team: usize,
        active: Option<bool>,
    },
    MoveProject {
        project: usize,
        team: usize,
    },
    PutRole {
        custom: usize,
        grants: Vec<(usize, usize)>,
    },
    Apply(Vec<Op>),
}

fn key_desc() -> impl Strategy<Value = KeyDesc> {
    (
        0..USERS.len(),
        0..TEAMS.len(),
        any::<u8>(),
        0u8..6,
        0u8..5,
        prop::option::weighted(0.2, 0..PROJECTS.len()),
    )
        .prop_map(|(user, team, roles, status, expiry, project)| KeyDesc {
            user,
            team,
            roles,
            status,
            expiry,
            project,
        })
}

fn simple_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => key_desc().prop_map(Op::CreateKey),
        4 => (
            any::<usize>(),
            prop::option::of(0u8..6),
            prop::option::of(any::<u8>()),
            prop::option::of(0u8..5)
        )
            .prop_map(|(key, status, roles, expiry)| Op::UpdateKey {
                key,
                status,
                roles,
                expiry
            }),
        2 => any::<usize>().prop_map(Op::ReKey),
        2 => any::<usize>().prop_map(Op::DeleteKey),
        2 => (
            0..USERS.len(),
            prop::option::of(any::<bool>()),
            any::<bool>(),
            prop::option::weighted(0.2, any::<u8>())
        )
            .prop_map(|(user, active, rename, teams)| Op::UpdateUser {
                user,
                active,
                rename,
                teams
            }),
        1 => (0..TEAMS.len(), prop::option::of(any::<bool>()))
            .prop_map(|(team, active)| Op::UpdateTeam { team, active }),
        1 => (0..PROJECTS.len(), 0..TEAMS.len())
            .prop_map(|(project, team)| Op::MoveProject { project, team }),
        1 => (0usize..2, prop::collection::vec((0..ENTS.len(), 0..SCOPES.len()), 0..3))
            .prop_map(|(custom, grants)| Op::PutRole { custom, grants }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => simple_op(),
        1 => prop::collection::vec(simple_op(), 1..4).prop_map(Op::Apply),
    ]
}

fn expiry(code: u8) -> Expiry {
    match code {
        1 => Expiry::at(NOW - 10).unwrap(),
        2 => Expiry::at(NOW + 100).unwrap(),
        3 => Expiry::at(NOW + 10_000).unwrap(),
        _ => Expiry::NEVER,
    }
}

fn status(code: u8) -> KeyStatus {
    match code {
        1 => KeyStatus::Inactive,
        2 => KeyStatus::Pending,
        3 => KeyStatus::Deleted,
        _ => KeyStatus::Active,
    }
}

fn roles(bits: u8) -> Arc<[Arc<str>]> {
    // The owner role is rare: it is bit 0 only when bit 7 is set too.
    let bits = if bits & 0x80 == 0 { bits & !1 } else { bits };
    canonical_roles(
        ROLES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, r)| *r),
    )
}

fn spec(prefix: &str, d: &KeyDesc) -> KeySpec {
    let (key_type, owner, team, roles) = match d.project {
        Some(p) => (
            KeyType::Project,
            PROJECTS[p].0,
            None,
            canonical_roles(["SYSTEM_KEY"]),
        ),
        None => (
            KeyType::Team,
            USERS[d.user],
            Some(Arc::from(TEAMS[d.team])),
            roles(d.roles),
        ),
    };
    KeySpec {
        prefix: prefix.into(),
        secret_hash: SecretHash::of_secret(prefix),
        key_type,
        owner: owner.into(),
        team,
        roles,
        status: status(d.status),
        expires_at: expiry(d.expiry),
    }
}

fn custom_role(custom: usize, grants: &[(usize, usize)]) -> Role {
    Role {
        id: ["KEY_ADMIN", "WIDE_READER"][custom].into(),
        role_type: RoleType::User,
        grants: grants
            .iter()
            .map(|(e, s)| rolegate::domain::Grant {
                entitlement: ENTS[*e].into(),
                scope: SCOPES[*s],
            })
            .collect(),
        prebuilt: false,
    }
}

fn world(keys: &[KeyDesc], inactive_team: bool, inactive_user: Option<usize>) -> Model {
    let mut m = Model::default();
    for (i, t) in TEAMS.iter().enumerate() {
        m.teams.insert(
            (*t).into(),
            Team {
                id: (*t).into(),
                name: t.to_uppercase(),
                active: !(inactive_team && i == 2),
            },
        );
    }
    for (i, u) in USERS.iter().enumerate() {
        m.users.insert(
            (*u).into(),
            Arc::new(User {
                id: (*u).into(),
                name: (*u).into(),
                active: inactive_user != Some(i),
                teams: TeamList::default(),
            }),
        );
    }
    for (p, t) in PROJECTS {
        m.projects.insert(
            p.into(),
            Project {
                id: p.into(),
                team: t.into(),
                name: String::new(),
            },
        );
    }
    // KEY_ADMIN: keys.update and keys.create at TEAM; WIDE_READER: jobs.read at ALL.
    m.catalog
        .put_role(Arc::new(custom_role(0, &[(0, 1), (1, 1)])));
    m.catalog.put_role(Arc::new(custom_role(1, &[(3, 2)])));
    // The bootstrap owner: u0 in t0.
    let owner = spec("Boot0000", &KeyDesc::team_key(0, 0, 0x81));
    m.keys.insert(owner.prefix.clone(), Arc::new(owner));
    for (i, d) in keys.iter().enumerate() {
        let k = spec(&format!("Key{i:05}"), d);
        m.keys.insert(k.prefix.clone(), Arc::new(k));
    }
    m
}

/// The key at `index` among the current keys, in prefix order.
fn nth_key(m: &Model, index: usize) -> Option<String> {
    let mut prefixes: Vec<&str> = m.keys.keys().map(|p| p.as_str()).collect();
    prefixes.sort();
    (!prefixes.is_empty()).then(|| prefixes[index % prefixes.len()].to_owned())
}

/// The command an operation asks for, on model `m`.
fn command(m: &IndexedModel, op: &Op, fresh: &mut usize) -> Option<Command> {
    Some(match op {
        Op::CreateKey(d) => {
            *fresh += 1;
            Command::CreateKey(Arc::new(spec(&format!("New{fresh:05}"), d)))
        }
        Op::UpdateKey {
            key,
            status: s,
            roles: r,
            expiry: e,
        } => {
            let prefix = nth_key(m, *key)?;
            let project = m.keys[prefix.as_str()].key_type == KeyType::Project;
            Command::UpdateKey {
                prefix: prefix.into(),
                status: s.map(status),
                roles: r.filter(|_| !project).map(roles),
                expires_at: e.map(expiry),
            }
        }
        Op::ReKey(key) => Command::ReplaceKeySecret {
            prefix: nth_key(m, *key)?.into(),
            hash: SecretHash::of_secret("rekeyed"),
        },
        Op::DeleteKey(key) => Command::DeleteKey(nth_key(m, *key)?.into()),
        Op::UpdateUser {
            user,
            active,
            rename,
            teams,
        } => Command::UpdateUser {
            id: USERS[*user].into(),
            name: rename.then(|| "renamed".into()),
            active: *active,
            teams: teams.map(|bits| {
                TEAMS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, t)| Arc::from(*t))
                    .collect()
            }),
        },
        Op::UpdateTeam { team, active } => Command::UpdateTeam {
            id: TEAMS[*team].into(),
            name: None,
            active: *active,
        },
        Op::MoveProject { project, team } => Command::UpdateProject {
            id: PROJECTS[*project].0.into(),
            team: Some(TEAMS[*team].into()),
            name: None,
        },
        Op::PutRole { custom, grants } => {
            Command::UpdateRole(Arc::new(custom_role(*custom, grants)))
        }
        Op::Apply(ops) => {
            // The document: the model with each operation's changes made directly.
            let mut target = m.clone();
            for op in ops {
                let Some(cmd) = command(&target, op, fresh) else {
                    continue;
                };
                if let Ok(changes) = plan("", &cmd, &target) {
                    for c in &changes {
                        target.apply(c);
                    }
                }
            }
            Command::Apply {
                document: Box::new(target.model().clone()),
                prune: true,
            }
        }
    })
}

fn cases() -> u32 {
    std::env::var("ROLEGATE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn accepted_writes_never_escalate(
        keys in prop::collection::vec(key_desc(), 2..8),
        inactive_team in any::<bool>(),
        inactive_user in prop::option::weighted(0.2, 1..USERS.len()),
        steps in prop::collection::vec((any::<usize>(), op()), 1..5),
    ) {
        let base = world(&keys, inactive_team, inactive_user);
        // A world that breaks the model's rules is not a state a store can hold.
        prop_assume!(base.validate().is_empty());
        let mut model = IndexedModel::from(base);
        let mut fresh = 0;
        for (caller, op) in &steps {
            let caller = nth_key(&model, *caller).expect("the bootstrap key at least");
            let Some(cmd) = command(&model, op, &mut fresh) else { continue };
            let before = model.model().clone();
            match execute(&caller, &cmd, &mut model, NOW) {
                Ok(_) => {
                    if let Err(why) = check_accepted(&before, model.model(), &caller) {
                        prop_assert!(false, "{}\ncommand: {:?}", why, cmd);
                    }
                }
                Err(e) => {
                    prop_assert!(model.model() == &before, "a refused write changed the model: {:?}", e);
                }
            }
        }
    }

    #[test]
    fn a_team_admin_may_give_a_member_any_role_without_all_grants(
        keys in prop::collection::vec(key_desc(), 2..8),
        admin_team in 0..TEAMS.len(),
        member in 1..USERS.len(),
        give_bits in any::<u8>(),
        on_existing in any::<bool>(),
    ) {
        let mut base = world(&keys, false, None);
        // The admin: a usable ACCOUNT_ADMIN key of u0 in the team.
        let admin = spec("Admin000", &KeyDesc::team_key(0, admin_team, 0x02));
        base.keys.insert(admin.prefix.clone(), Arc::new(admin));
        prop_assume!(base.validate().is_empty());
        let a = Caller::of(&base, "Admin000");
        let member_req = Req::User(USERS[member].into());
        // A member of the admin's team: within its administration.
        prop_assume!(a.within(&base, &member_req));
        // Roles without ALL grants: DEVELOPER, DATA_SCIENTIST, ACCOUNT_ADMIN, KEY_ADMIN.
        let pool = ["DEVELOPER", "DATA_SCIENTIST", "ACCOUNT_ADMIN", "KEY_ADMIN"];
        let give: Vec<&str> = pool
            .iter()
            .enumerate()
            .filter(|(i, _)| give_bits & (1 << i) != 0)
            .map(|(_, r)| *r)
            .collect();
        let team = TEAMS[admin_team];
        let existing = base
            .keys
            .values()
            .find(|k| req_of(k) == member_req && k.team.as_deref() == Some(team))
            .map(|k| k.prefix.clone());
        let cmd = match (&existing, on_existing) {
            (Some(prefix), true) => {
                let had = &base.keys[prefix.as_str()].roles;
                Command::UpdateKey {
                    prefix: prefix.clone(),
                    status: None,
                    roles: Some(canonical_roles(had.iter().map(|r| &**r).chain(give.iter().copied()))),
                    expires_at: None,
                }
            }
            _ => Command::CreateKey(Arc::new(KeySpec {
                roles: canonical_roles(give.iter().copied()),
                ..spec("Member01", &KeyDesc::team_key(member, admin_team, 0))
            })),
        };
        let mut model = IndexedModel::from(base);
        let result = execute("Admin000", &cmd, &mut model, NOW);
        prop_assert!(
            !matches!(
                result,
                Err(WriteError::PermissionDenied(_) | WriteError::FailedPrecondition(_) | WriteError::Unauthenticated(_))
            ),
            "refused: {:?}\ncommand: {:?}", result, cmd
        );
    }
}

/// The oracle itself: it must catch what the rule exists to stop.
#[test]
fn the_oracle_flags_an_escalation() {
    let a = world(&[KeyDesc::team_key(1, 0, 0x02)], false, None);
    assert!(a.validate().is_empty());
    // The team admin's key made into an owner's, as if a write had done it unchecked.
    let mut b = a.clone();
    let mut k = (*b.keys["Key00000"]).clone();
    k.roles = canonical_roles(["SYSTEM_OWNER"]);
    b.keys.insert(k.prefix.clone(), Arc::new(k));
    assert!(check_accepted(&a, &b, "Key00000").is_err());
    // The bootstrap owner's key re-keyed by the team admin.
    let mut c = a.clone();
    let mut boot = (*c.keys["Boot0000"]).clone();
    boot.secret_hash = SecretHash::of_secret("taken");
    c.keys.insert(boot.prefix.clone(), Arc::new(boot));
    assert!(check_accepted(&a, &c, "Key00000").is_err());
    // The last owner key removed by the owner.
    let mut d = a.clone();
    d.keys.remove("Boot0000");
    assert!(check_accepted(&a, &d, "Boot0000").is_err());
    // A change within the team admin's own team passes.
    let mut e = a.clone();
    let mut u = (*e.users["u1"]).clone();
    u.name = "renamed".into();
    e.users.insert("u1".into(), Arc::new(u));
    assert!(check_accepted(&a, &e, "Key00000").is_ok());
}
