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

use std::{collections::BTreeSet, sync::Arc};

use compact_str::CompactString;

mod judge;
mod view;

use judge::Judge;
pub(crate) use view::{Overlay, View};

use super::{
    GrantSet, KeySpec, KeyStatus, RequestorId, Scope,
    model::{Change, ObjectRef},
};

/// The prebuilt role whose holders can always administer the store (the lock-out rule).
pub(crate) const OWNER_ROLE: &str = "SYSTEM_OWNER";

/// The bind right: a caller holding this entitlement at ALL may hand out any grant at ALL
/// without holding it (Kubernetes' `bind` verb). It is the right to redefine every role, so the
/// rule would protect nothing against its holder; and without it no one could hand out a role
/// whose ALL grants no user role unites (AUDITOR's `drift.read`, FOLLOWER's `keys.replicate`).
pub(crate) const BIND_RIGHT: &str = "roles.update";

/// Why a write is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
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
pub(crate) fn holds(
    caller: &GrantSet,
    entitlement: &str,
    scope: Scope,
    team: Option<&str>,
) -> bool {
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

/// The caller of a write, as the model before the write knows it.
pub(crate) struct Actor {
    pub(crate) prefix: CompactString,
    pub(crate) requestor: RequestorId,
    /// Its effective grants: the union over its usable keys (rule 3 of the model).
    pub(crate) grants: GrantSet,
}

impl Actor {
    /// The caller whose key is `prefix`, which must be usable in `view` at `now`.
    pub(crate) fn of(view: &impl View, prefix: &str, now: i64) -> Result<Actor, Refusal> {
        let key = view
            .key(prefix)
            .filter(|k| usable(view, k, now))
            .ok_or_else(|| {
                Refusal::Unauthenticated(format!(
                    "key {prefix} is not an active, unexpired key of an active team and user"
                ))
            })?;
        let requestor = RequestorId::of(key);
        let grants = effective_grants(view, &requestor, now);
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

/// The effective grants of `requestor` in `view` at `now`: the union over its usable keys of
/// their roles' grants and TEAM_ROLE, each TEAM grant over its key's team.
pub(crate) fn effective_grants(view: &impl View, requestor: &RequestorId, now: i64) -> GrantSet {
    let keys = view.keys_of(requestor);
    let live: Vec<(Arc<str>, &Arc<KeySpec>)> = keys
        .iter()
        .filter(|k| usable(view, k, now))
        .filter_map(|k| Some((view.key_team(k)?, k)))
        .collect();
    GrantSet::build(view.catalog(), live.iter().map(|(t, k)| (t, &k.roles[..])))
}

/// Whether a key can act at `now`: active, unexpired, its team active, its user active (or its
/// project present).
pub(crate) fn usable(view: &impl View, key: &KeySpec, now: i64) -> bool {
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
pub(crate) fn authorize(
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
pub(crate) fn authorize_unchanged(
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
