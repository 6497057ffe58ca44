//! The escalation rule: who may administer whom. Every write, whether one Admin call or a whole
//! `Apply`, is judged here, on the model as it was before the write and as it would be after it
//! (docs/security.md has the rule with its examples).
//!
//! Terms:
//! - a caller **administers** team T when it holds `keys.update` or `keys.create` at TEAM over T,
//!   or at ALL (for user records: `users.update` / `users.create`);
//! - a requestor's **teams** are the teams of all its keys, of every status; its **power** is
//!   every grant at ALL of the roles bound to any of its keys, of every status or expiry (a key
//!   that someone reactivates later must not hand a credential minted now more power);
//! - a requestor is **within** the caller's administration when the caller administers each
//!   of its teams and holds each entitlement of its power at ALL;
//! - "holds at ALL" when handing out grants also counts the bind right ([`BIND_RIGHT`] at ALL).
//!
//! The checks, per object changed: binding roles needs the team administered and every ALL grant
//! of the role held at ALL; minting a credential (create, re-key, reactivate, extend, move)
//! needs the requestor within the caller's administration **after** the write; acting against
//! a requestor (deactivate, strip, delete, re-key, shorten) needs it within **before**; defining
//! a role needs `roles.create`/`roles.update` and every ALL grant held at ALL, and touches every
//! holder of the role; a key holder may deactivate, delete, re-key and shorten its own keys
//! (self-service); and no write may leave the store without a usable SYSTEM_OWNER key.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use compact_str::CompactString;

use super::{
    Catalog, GrantSet, IndexedModel, KeySpec, KeyStatus, Project, RequestorId, Role, Scope, Team,
    User,
    catalog::TEAM_ROLE,
    model::{Change, ObjectRef},
};

/// The prebuilt role whose holders can always administer the store (the lock-out rule).
pub const OWNER_ROLE: &str = "SYSTEM_OWNER";

/// The bind right: a caller holding this entitlement at ALL may hand out any grant at ALL
/// without holding it (Kubernetes' `bind` verb). It is the right to redefine every role, so the
/// rule would protect nothing against its holder; and without it no one could hand out a role
/// whose ALL grants no user role unites (AUDITOR's `drift.read`, FOLLOWER's `keys.replicate`).
pub const BIND_RIGHT: &str = "roles.update";

/// Why a write is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller's key cannot act (unknown, inactive, expired, its team or user inactive).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller lacks the administration the write needs.
    #[error("{0}")]
    Denied(String),
    /// The write would leave nobody able to administer the store.
    #[error("{0}")]
    LockOut(String),
}

/// Whether `caller` holds `entitlement` at `scope` or wider over `team`:
/// - ALL needs ALL;
/// - TEAM needs ALL, or TEAM over `team` (over some team when no team is given);
/// - OWN needs any of ALL, TEAM over `team`, or OWN.
pub fn holds(caller: &GrantSet, entitlement: &str, scope: Scope, team: Option<&str>) -> bool {
    let Some(held) = caller.get(entitlement) else {
        return false;
    };
    let team_covered = match team {
        Some(team) => held.covers_team(team),
        None => !held.teams.is_empty(),
    };
    match scope {
        Scope::All => held.all,
        Scope::Team => held.all || team_covered,
        Scope::Own => held.all || team_covered || held.own,
    }
}

/// One side of a write: the model before it or after it.
pub trait View {
    fn catalog(&self) -> &Catalog;
    fn key(&self, prefix: &str) -> Option<&Arc<KeySpec>>;
    fn team(&self, id: &str) -> Option<&Team>;
    fn user(&self, id: &str) -> Option<&Arc<User>>;
    fn project(&self, id: &str) -> Option<&Project>;
    /// Every key of `requestor`, whatever its status.
    fn keys_of(&self, requestor: &RequestorId) -> Vec<Arc<KeySpec>>;
    /// Every key (a scan: only for changes to teams and roles, which touch many keys).
    fn each_key(&self, f: &mut dyn FnMut(&Arc<KeySpec>));

    /// The team a key acts in: its own, or its project's.
    fn key_team(&self, key: &KeySpec) -> Option<Arc<str>> {
        match key.key_type {
            super::KeyType::Team => key.team.clone(),
            super::KeyType::Project => self.project(&key.owner).map(|p| p.team.clone()),
        }
    }
}

impl View for IndexedModel {
    fn catalog(&self) -> &Catalog {
        &self.model().catalog
    }
    fn key(&self, prefix: &str) -> Option<&Arc<KeySpec>> {
        self.model().keys.get(prefix)
    }
    fn team(&self, id: &str) -> Option<&Team> {
        self.model().teams.get(id)
    }
    fn user(&self, id: &str) -> Option<&Arc<User>> {
        self.model().users.get(id)
    }
    fn project(&self, id: &str) -> Option<&Project> {
        self.model().projects.get(id)
    }
    fn keys_of(&self, requestor: &RequestorId) -> Vec<Arc<KeySpec>> {
        IndexedModel::keys_of(self, requestor).cloned().collect()
    }
    fn each_key(&self, f: &mut dyn FnMut(&Arc<KeySpec>)) {
        self.model().keys.values().for_each(f);
    }
}

/// A model with changes laid over it, without copying the model: what `base` would be after
/// `changes` (or, given a write's undo, what it was before).
pub struct Overlay<'m> {
    base: &'m IndexedModel,
    catalog: Cow<'m, Catalog>,
    keys: HashMap<CompactString, Option<Arc<KeySpec>>>,
    teams: HashMap<Arc<str>, Option<Team>>,
    users: HashMap<Arc<str>, Option<Arc<User>>>,
    projects: HashMap<Arc<str>, Option<Project>>,
}

impl<'m> Overlay<'m> {
    pub fn new(base: &'m IndexedModel, changes: &[Change]) -> Self {
        let touches_catalog = changes.iter().any(|c| {
            matches!(
                c,
                Change::PutRole(_)
                    | Change::RemoveRole(_)
                    | Change::PutEntitlement(_)
                    | Change::RemoveEntitlement(_)
            )
        });
        let mut overlay = Overlay {
            base,
            catalog: Cow::Borrowed(&base.model().catalog),
            keys: HashMap::new(),
            teams: HashMap::new(),
            users: HashMap::new(),
            projects: HashMap::new(),
        };
        if touches_catalog {
            let mut catalog = base.model().catalog.clone();
            for c in changes {
                match c {
                    Change::PutRole(role) => catalog.put_role(role.clone()),
                    Change::RemoveRole(id) => catalog.remove_role(id),
                    Change::PutEntitlement(id) => {
                        catalog.add_entitlement(id);
                    }
                    Change::RemoveEntitlement(id) => {
                        catalog.remove_entitlement(id);
                    }
                    _ => {}
                }
            }
            overlay.catalog = Cow::Owned(catalog);
        }
        for c in changes {
            match c {
                Change::PutKey(k) => {
                    overlay.keys.insert(k.prefix.clone(), Some(k.clone()));
                }
                Change::RemoveKey(p) => {
                    overlay.keys.insert(CompactString::from(&**p), None);
                }
                Change::PutTeam(t) => {
                    overlay.teams.insert(t.id.clone(), Some(t.clone()));
                }
                Change::RemoveTeam(id) => {
                    overlay.teams.insert(id.clone(), None);
                }
                Change::PutUser(u) => {
                    overlay.users.insert(u.id.clone(), Some(u.clone()));
                }
                Change::RemoveUser(id) => {
                    overlay.users.insert(id.clone(), None);
                }
                Change::PutProject(p) => {
                    overlay.projects.insert(p.id.clone(), Some(p.clone()));
                }
                Change::RemoveProject(id) => {
                    overlay.projects.insert(id.clone(), None);
                }
                Change::PutRole(_)
                | Change::RemoveRole(_)
                | Change::PutEntitlement(_)
                | Change::RemoveEntitlement(_)
                | Change::PutRoutes(_)
                | Change::ResetRoutes => {}
            }
        }
        overlay
    }
}

impl View for Overlay<'_> {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    fn key(&self, prefix: &str) -> Option<&Arc<KeySpec>> {
        match self.keys.get(prefix) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().keys.get(prefix),
        }
    }
    fn team(&self, id: &str) -> Option<&Team> {
        match self.teams.get(id) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().teams.get(id),
        }
    }
    fn user(&self, id: &str) -> Option<&Arc<User>> {
        match self.users.get(id) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().users.get(id),
        }
    }
    fn project(&self, id: &str) -> Option<&Project> {
        match self.projects.get(id) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().projects.get(id),
        }
    }
    fn keys_of(&self, requestor: &RequestorId) -> Vec<Arc<KeySpec>> {
        let mut out: Vec<Arc<KeySpec>> = self
            .base
            .keys_of(requestor)
            .filter(|k| !self.keys.contains_key(&k.prefix))
            .cloned()
            .collect();
        out.extend(
            self.keys
                .values()
                .flatten()
                .filter(|k| RequestorId::of(k) == *requestor)
                .cloned(),
        );
        out
    }
    fn each_key(&self, f: &mut dyn FnMut(&Arc<KeySpec>)) {
        for k in self.base.model().keys.values() {
            if !self.keys.contains_key(&k.prefix) {
                f(k);
            }
        }
        self.keys.values().flatten().for_each(f);
    }
}

/// The caller of a write, as the model before the write knows it.
pub struct Actor {
    pub prefix: CompactString,
    pub requestor: RequestorId,
    /// Its effective grants: the union over its usable keys (rule 3 of the model).
    pub grants: GrantSet,
}

impl Actor {
    /// The caller whose key is `prefix`, which must be usable in `view` at `now`.
    pub fn of(view: &impl View, prefix: &str, now: i64) -> Result<Actor, Refusal> {
        let key = view
            .key(prefix)
            .filter(|k| usable(view, k, now))
            .ok_or_else(|| {
                Refusal::Unauthenticated(format!(
                    "key {prefix} is not an active, unexpired key of an active team and user"
                ))
            })?;
        let requestor = RequestorId::of(key);
        let keys = view.keys_of(&requestor);
        let live: Vec<(Arc<str>, &Arc<KeySpec>)> = keys
            .iter()
            .filter(|k| usable(view, k, now))
            .filter_map(|k| Some((view.key_team(k)?, k)))
            .collect();
        let grants = GrantSet::build(view.catalog(), live.iter().map(|(t, k)| (t, &k.roles[..])));
        Ok(Actor {
            prefix: key.prefix.clone(),
            requestor,
            grants,
        })
    }

    fn holds(&self, entitlement: &str, scope: Scope, team: Option<&str>) -> bool {
        holds(&self.grants, entitlement, scope, team)
    }

    /// Whether the caller may hand out `entitlement` at ALL: it holds it at ALL, or it holds
    /// the bind right.
    fn may_hand_out_all(&self, entitlement: &str) -> bool {
        self.holds(entitlement, Scope::All, None) || self.holds(BIND_RIGHT, Scope::All, None)
    }

    /// Whether the caller administers `team` for keys.
    fn administers(&self, team: &str) -> bool {
        self.holds("keys.update", Scope::Team, Some(team))
            || self.holds("keys.create", Scope::Team, Some(team))
    }
}

/// Whether a key can act at `now`: active, unexpired, its team active, its user active (or its
/// project present).
fn usable(view: &impl View, key: &KeySpec, now: i64) -> bool {
    key.status == KeyStatus::Active
        && !key.expired_at(now)
        && view
            .key_team(key)
            .and_then(|t| view.team(&t).map(|t| t.active))
            .unwrap_or(false)
        && match key.key_type {
            super::KeyType::Team => view.user(&key.owner).is_some_and(|u| u.active),
            super::KeyType::Project => view.project(&key.owner).is_some(),
        }
}

/// Whether a key is a usable SYSTEM_OWNER key.
fn usable_owner(view: &impl View, key: &KeySpec, now: i64) -> bool {
    key.roles.iter().any(|r| &**r == OWNER_ROLE) && usable(view, key, now)
}

/// What a requestor could act with: its teams and its power (see the module's terms).
struct Reach {
    teams: BTreeSet<Arc<str>>,
    power: BTreeSet<Arc<str>>,
}

fn reach(view: &impl View, requestor: &RequestorId) -> Reach {
    let catalog = view.catalog();
    let mut out = Reach {
        teams: BTreeSet::new(),
        power: BTreeSet::new(),
    };
    for key in view.keys_of(requestor) {
        if let Some(team) = view.key_team(&key) {
            out.teams.insert(team);
        }
        let bound = key.roles.iter().filter_map(|r| catalog.role(r));
        for role in std::iter::once(catalog.team_role()).chain(bound) {
            for g in role.grants.iter().filter(|g| g.scope == Scope::All) {
                out.power.insert(g.entitlement.clone());
            }
        }
    }
    out
}

/// The team of a key whose team or project does not exist (a write the model's rules refuse):
/// no caller administers it below ALL.
fn no_team() -> Arc<str> {
    "(none)".into()
}

fn describe(requestor: &RequestorId) -> String {
    match requestor {
        RequestorId::User(u) => format!("user {u}"),
        RequestorId::Project(p) => format!("project {p}"),
    }
}

/// Judges one write: `changes` turn `before` into `after`; `caller` is the caller's key prefix.
pub fn authorize(
    caller: &str,
    before: &impl View,
    after: &impl View,
    changes: &[Change],
    now: i64,
) -> Result<(), Refusal> {
    let actor = Actor::of(before, caller, now)?;
    let mut judge = Judge {
        actor: &actor,
        before,
        after,
        now,
        acted: BTreeSet::new(),
        minted: BTreeSet::new(),
        owner_risk: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for change in changes {
        let object = change.object();
        if seen.insert(object.clone()) {
            judge.object(&object)?;
        }
    }
    judge.finish()
}

/// Judges a write that changes nothing (it asks for what already is): the caller needs the
/// administration of `object` it would need to change it, so that the answer tells an outsider
/// nothing about the object. `None` (an Apply equal to the state): only a usable key.
pub fn authorize_unchanged(
    caller: &str,
    view: &impl View,
    object: &Option<ObjectRef>,
    now: i64,
) -> Result<(), Refusal> {
    let actor = Actor::of(view, caller, now)?;
    let judge = Judge {
        actor: &actor,
        before: view,
        after: view,
        now,
        acted: BTreeSet::new(),
        minted: BTreeSet::new(),
        owner_risk: Vec::new(),
    };
    let Some(object) = object else {
        return Ok(());
    };
    match object {
        ObjectRef::Entitlement(_) => judge.at_all("roles.create", "add entitlements"),
        ObjectRef::Role(id) => judge.at_all("roles.update", &format!("change role {id}")),
        ObjectRef::Team(id) => judge.over_team("accounts.update", id, &format!("change team {id}")),
        ObjectRef::User(id) => {
            let requestor = RequestorId::User(id.clone());
            if actor.requestor == requestor {
                return Ok(());
            }
            let mut teams: BTreeSet<Arc<str>> = reach(view, &requestor).teams;
            if let Some(u) = view.user(id) {
                teams.extend(u.teams.iter().cloned());
            }
            let what = format!("change user {id}");
            if teams.is_empty() {
                judge.at_all("users.update", &what)?;
            }
            teams
                .iter()
                .try_for_each(|t| judge.over_team("users.update", t, &what))
        }
        ObjectRef::Project(id) => match view.project(id) {
            Some(p) => {
                judge.over_projects("projects.update", &p.team, &format!("change project {id}"))
            }
            None => judge.at_all("projects.update", &format!("change project {id}")),
        },
        ObjectRef::Key(prefix) => match view.key(prefix) {
            Some(k) if RequestorId::of(k) == actor.requestor => Ok(()),
            Some(k) => judge.over_team(
                "keys.update",
                &view.key_team(k).unwrap_or_else(no_team),
                &format!("change key {prefix}"),
            ),
            None => judge.at_all("keys.update", &format!("change key {prefix}")),
        },
        ObjectRef::Routes | ObjectRef::Route(_) => {
            judge.at_all("roles.update", "change the route table")
        }
    }
}

struct Judge<'a, B, A> {
    actor: &'a Actor,
    before: &'a B,
    after: &'a A,
    now: i64,
    /// Requestors acted against: each must be within the caller's administration before.
    acted: BTreeSet<RequestorId>,
    /// Requestors a credential was minted for: each must be within it after.
    minted: BTreeSet<RequestorId>,
    /// Keys that were usable SYSTEM_OWNER keys before the write and may not be after it.
    owner_risk: Vec<CompactString>,
}

impl<B: View, A: View> Judge<'_, B, A> {
    fn deny(&self, why: String) -> Refusal {
        Refusal::Denied(format!("key {} may not {why}", self.actor.prefix))
    }

    /// Requires `entitlement` at TEAM over `team` (or ALL).
    fn over_team(&self, entitlement: &str, team: &str, what: &str) -> Result<(), Refusal> {
        if self.actor.holds(entitlement, Scope::Team, Some(team)) {
            Ok(())
        } else {
            Err(self.deny(format!(
                "{what}: it needs {entitlement} at TEAM over team {team}, or at ALL"
            )))
        }
    }

    /// Requires `entitlement` at ALL.
    fn at_all(&self, entitlement: &str, what: &str) -> Result<(), Refusal> {
        if self.actor.holds(entitlement, Scope::All, None) {
            Ok(())
        } else {
            Err(self.deny(format!("{what}: it needs {entitlement} at ALL")))
        }
    }

    /// Requires every ALL grant of `role` (in `catalog`) to be one the caller may hand out.
    fn role_within(&self, role: &Role, what: &str) -> Result<(), Refusal> {
        for g in role.grants.iter().filter(|g| g.scope == Scope::All) {
            if !self.actor.may_hand_out_all(&g.entitlement) {
                return Err(self.deny(format!(
                    "{what}: role {} grants {} at ALL, which the caller does not hold at ALL",
                    role.id, g.entitlement
                )));
            }
        }
        Ok(())
    }

    fn object(&mut self, object: &ObjectRef) -> Result<(), Refusal> {
        match object {
            ObjectRef::Entitlement(id) => {
                let (b, a) = (
                    self.before.catalog().has_entitlement(id),
                    self.after.catalog().has_entitlement(id),
                );
                match (b, a) {
                    (false, true) => self.at_all("roles.create", &format!("add entitlement {id}")),
                    (true, false) => {
                        self.at_all("roles.update", &format!("remove entitlement {id}"))
                    }
                    _ => Ok(()),
                }
            }
            ObjectRef::Role(id) => self.role(id),
            ObjectRef::Team(id) => self.team(id),
            ObjectRef::User(id) => self.user(id),
            ObjectRef::Project(id) => self.project(id),
            ObjectRef::Key(prefix) => self.key(prefix),
            // The route table decides which entitlement every proxied request needs: changing it
            // is as wide as redefining the roles.
            ObjectRef::Routes | ObjectRef::Route(_) => {
                self.at_all("roles.update", "change the route table")
            }
        }
    }

    fn role(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.catalog().role(id).cloned();
        let after = self.after.catalog().role(id).cloned();
        if before == after {
            return Ok(());
        }
        let what = format!("define role {id}");
        match &before {
            None => self.at_all("roles.create", &what)?,
            Some(_) => self.at_all("roles.update", &what)?,
        }
        if let Some(role) = &after {
            self.role_within(role, &what)?;
        }
        // Lock-out: the owner role keeps every grant it has.
        if &**id == OWNER_ROLE {
            let kept = |g: &super::Grant| after.as_ref().is_some_and(|a| a.grants.contains(g));
            if let Some(lost) = before
                .iter()
                .flat_map(|b| b.grants.iter())
                .find(|g| !kept(g))
            {
                return Err(Refusal::LockOut(format!(
                    "the change would take {} at {} from {OWNER_ROLE}: the role that can always \
                     administer the store keeps its grants",
                    lost.entitlement, lost.scope
                )));
            }
        }
        // A change to a role's grants changes every holder: each must be administered.
        let every_key = &**id == TEAM_ROLE;
        let mut holders: Vec<Arc<KeySpec>> = Vec::new();
        self.before.each_key(&mut |k| {
            if every_key || k.roles.contains(id) {
                holders.push(k.clone());
            }
        });
        for key in holders {
            let team = self.before.key_team(&key).unwrap_or_else(no_team);
            if !self.actor.administers(&team) {
                return Err(self.deny(format!(
                    "{what}: key {} holds it and its team {team} is not administered by the caller",
                    key.prefix
                )));
            }
            self.acted.insert(RequestorId::of(&key));
        }
        Ok(())
    }

    fn keys_in_team(&self, team: &str) -> Vec<Arc<KeySpec>> {
        let mut out = Vec::new();
        self.before.each_key(&mut |k| {
            if self.before.key_team(k).is_some_and(|t| &*t == team) {
                out.push(k.clone());
            }
        });
        out
    }

    fn team(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.team(id).cloned();
        let after = self.after.team(id).cloned();
        let what = format!("change team {id}");
        match (&before, &after) {
            (None, None) => Ok(()),
            (None, Some(_)) => self.at_all("accounts.update", &format!("create team {id}")),
            (Some(b), a) => {
                match a {
                    None => self.at_all("accounts.update", &format!("delete team {id}"))?,
                    Some(_) => self.over_team("accounts.update", id, &what)?,
                }
                let active_after = a.as_ref().is_some_and(|a| a.active);
                if b.active != active_after {
                    // Every key of the team stops (or starts) acting: its holders are acted
                    // against (or get back their credentials).
                    for key in self.keys_in_team(id) {
                        let requestor = RequestorId::of(&key);
                        if b.active {
                            if usable_owner(self.before, &key, self.now) {
                                self.owner_risk.push(key.prefix.clone());
                            }
                            self.acted.insert(requestor);
                        } else {
                            self.minted.insert(requestor);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn user(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.user(id).cloned();
        let after = self.after.user(id).cloned();
        if before == after {
            return Ok(());
        }
        let requestor = RequestorId::User(id.clone());
        // Self-service: a user may rename itself.
        if let (Some(b), Some(a)) = (&before, &after)
            && self.actor.requestor == requestor
            && b.active == a.active
            && b.teams == a.teams
            && self.actor.holds("profile.update", Scope::Own, None)
        {
            return Ok(());
        }
        // The user's teams: listed before and after, and those of its keys.
        let mut teams: BTreeSet<Arc<str>> = BTreeSet::new();
        for u in before.iter().chain(after.iter()) {
            teams.extend(u.teams.iter().cloned());
        }
        teams.extend(reach(self.before, &requestor).teams);
        let entitlement = if before.is_none() {
            "users.create"
        } else {
            "users.update"
        };
        let what = match (&before, &after) {
            (None, _) => format!("create user {id}"),
            (_, None) => format!("delete user {id}"),
            _ => format!("change user {id}"),
        };
        if teams.is_empty() {
            self.at_all(entitlement, &what)?;
        }
        for team in &teams {
            self.over_team(entitlement, team, &what)?;
        }
        let active_before = before.as_ref().is_some_and(|u| u.active);
        let active_after = after.as_ref().is_some_and(|u| u.active);
        if active_before && !active_after {
            for key in self.before.keys_of(&requestor) {
                if usable_owner(self.before, &key, self.now) {
                    self.owner_risk.push(key.prefix.clone());
                }
            }
        } else if !active_before && active_after && before.is_some() {
            self.minted.insert(requestor.clone());
        }
        // Any change to an existing user (its name too) is a change to its requestor.
        if before.is_some() {
            self.acted.insert(requestor);
        }
        Ok(())
    }

    /// A team's projects are administered with `projects.create` / `projects.update` over the
    /// team, or with the team's own administration (`accounts.update` over it).
    fn over_projects(&self, entitlement: &str, team: &str, what: &str) -> Result<(), Refusal> {
        if self.actor.holds("accounts.update", Scope::Team, Some(team)) {
            return Ok(());
        }
        self.over_team(entitlement, team, what)
    }

    fn project(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.project(id).cloned();
        let after = self.after.project(id).cloned();
        if before == after {
            return Ok(());
        }
        let requestor = RequestorId::Project(id.clone());
        match (&before, &after) {
            (None, None) => {}
            (None, Some(a)) => {
                self.over_projects("projects.create", &a.team, &format!("create project {id}"))?
            }
            (Some(b), None) => {
                self.over_projects("projects.update", &b.team, &format!("delete project {id}"))?;
                self.acted.insert(requestor);
            }
            (Some(b), Some(a)) => {
                let what = format!("change project {id}");
                self.over_projects("projects.update", &b.team, &what)?;
                self.over_projects("projects.update", &a.team, &what)?;
                if a.team != b.team {
                    // Its keys move to another team: handed to whoever administers it.
                    self.minted.insert(requestor.clone());
                }
                self.acted.insert(requestor);
            }
        }
        Ok(())
    }

    fn key(&mut self, prefix: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.key(prefix).cloned();
        let after = self.after.key(prefix).cloned();
        if before == after {
            return Ok(());
        }
        if let Some(b) = &before
            && usable_owner(self.before, b, self.now)
        {
            self.owner_risk.push(b.prefix.clone());
        }
        let same_holder = match (&before, &after) {
            (Some(b), Some(a)) => {
                RequestorId::of(b) == RequestorId::of(a)
                    && self.before.key_team(b) == self.after.key_team(a)
                    && b.key_type == a.key_type
            }
            _ => false,
        };
        if same_holder {
            let (b, a) = (before.unwrap(), after.unwrap());
            return self.update_key(&b, &a);
        }
        if let Some(b) = &before {
            self.remove_key(b)?;
        }
        if let Some(a) = &after {
            self.create_key(a)?;
        }
        Ok(())
    }

    fn team_of_before(&self, key: &KeySpec) -> Arc<str> {
        self.before.key_team(key).unwrap_or_else(no_team)
    }

    fn remove_key(&mut self, b: &KeySpec) -> Result<(), Refusal> {
        let requestor = RequestorId::of(b);
        if requestor == self.actor.requestor && self.actor.holds("keys.update", Scope::Own, None) {
            return Ok(()); // self-service: deleting one's own key
        }
        let team = self.team_of_before(b);
        self.over_team("keys.update", &team, &format!("delete key {}", b.prefix))?;
        self.acted.insert(requestor);
        Ok(())
    }

    fn create_key(&mut self, a: &KeySpec) -> Result<(), Refusal> {
        let what = format!("create key {}", a.prefix);
        let team = self.after.key_team(a).unwrap_or_else(no_team);
        self.over_team("keys.create", &team, &what)?;
        self.bind(&a.roles, &[], &team, &what)?;
        self.minted.insert(RequestorId::of(a));
        Ok(())
    }

    /// Binding `roles` (those not in `had`) to a key of `team`.
    fn bind(
        &self,
        roles: &[Arc<str>],
        had: &[Arc<str>],
        team: &str,
        what: &str,
    ) -> Result<(), Refusal> {
        for id in roles.iter().filter(|r| !had.contains(r)) {
            // An unknown role is left to validation, which names it.
            if let Some(role) = self.after.catalog().role(id) {
                self.role_within(role, &format!("{what} (binding role {id} in team {team})"))?;
            }
        }
        Ok(())
    }

    fn update_key(&mut self, b: &KeySpec, a: &KeySpec) -> Result<(), Refusal> {
        let requestor = RequestorId::of(b);
        let expiry = |k: &KeySpec| k.expires_at.unix().unwrap_or(i64::MAX);
        let reactivated = b.status != KeyStatus::Active && a.status == KeyStatus::Active;
        let deactivated = b.status == KeyStatus::Active && a.status != KeyStatus::Active;
        let roles_changed = b.roles != a.roles;
        let extended = expiry(a) > expiry(b);
        let shortened = expiry(a) < expiry(b);
        let rekeyed = a.secret_hash != b.secret_hash;
        let what = format!("change key {}", b.prefix);

        // Self-service: deactivate, re-key or shorten one's own key (never widen it).
        if requestor == self.actor.requestor
            && !reactivated
            && !roles_changed
            && !extended
            && self.actor.holds("keys.update", Scope::Own, None)
        {
            return Ok(());
        }
        let team = self.team_of_before(b);
        self.over_team("keys.update", &team, &what)?;
        self.bind(&a.roles, &b.roles, &team, &what)?;
        let stripped = b.roles.iter().any(|r| !a.roles.contains(r));
        if deactivated || stripped || shortened || rekeyed || b.status != a.status {
            self.acted.insert(requestor.clone());
        }
        if reactivated || roles_changed || extended || rekeyed {
            self.minted.insert(requestor);
        }
        Ok(())
    }

    /// Whether `requestor` is within the caller's administration in `view`; why not, if not.
    fn within(&self, view: &impl View, requestor: &RequestorId) -> Result<(), String> {
        let Reach { teams, power } = reach(view, requestor);
        if let Some(team) = teams.iter().find(|t| !self.actor.administers(t)) {
            return Err(format!(
                "{} holds a key in team {team}, which the caller does not administer",
                describe(requestor)
            ));
        }
        if let Some(e) = power.iter().find(|e| !self.actor.may_hand_out_all(e)) {
            return Err(format!(
                "{} holds {e} at ALL, which the caller does not hold at ALL",
                describe(requestor)
            ));
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Refusal> {
        for requestor in &self.acted {
            self.within(self.before, requestor)
                .map_err(|why| self.deny(format!("act against {}: {why}", describe(requestor))))?;
        }
        for requestor in &self.minted {
            self.within(self.after, requestor).map_err(|why| {
                self.deny(format!(
                    "obtain a credential acting as {}: {why}",
                    describe(requestor)
                ))
            })?;
        }
        self.lock_out()
    }

    /// No write may leave the store without a usable SYSTEM_OWNER key.
    fn lock_out(&self) -> Result<(), Refusal> {
        let lost = self.owner_risk.iter().any(|p| {
            !self
                .after
                .key(p)
                .is_some_and(|k| usable_owner(self.after, k, self.now))
        });
        if !lost {
            return Ok(());
        }
        // The caller's own keys first: an owner usually keeps one.
        let own = self.after.keys_of(&self.actor.requestor);
        if own.iter().any(|k| usable_owner(self.after, k, self.now)) {
            return Ok(());
        }
        let mut remains = false;
        self.after.each_key(&mut |k| {
            remains = remains || usable_owner(self.after, k, self.now);
        });
        if remains {
            Ok(())
        } else {
            Err(Refusal::LockOut(format!(
                "the change would leave no active, unexpired {OWNER_ROLE} key of an active user \
                 and team, and nobody could administer the store; create or reactivate another \
                 {OWNER_ROLE} key first"
            )))
        }
    }
}
