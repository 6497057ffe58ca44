//! Who can do what: the entitlements each requestor gains and loses between two models (from
//! the escalation rule's effective grants), and every key that holds an entitlement.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use compact_str::CompactString;

use super::{
    IndexedModel, KeyType, Model, RequestorId, Scope,
    entry::{GrantInterner, skipped},
    escalation::{effective_grants, usable},
    model::Change,
};

/// An entitlement a requestor gains or loses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PrivilegeChange {
    /// `user dana`, `project fraud-detector`.
    pub requestor: String,
    /// Gained (true) or lost.
    pub gained: bool,
    pub entitlement: String,
    pub scope: Scope,
    /// The team a TEAM grant covers; empty for OWN and ALL.
    pub team: String,
    /// A grant at ALL gained, or a key gained by a requestor holding grants at ALL.
    pub widens_to_all: bool,
    /// When set, the change is this key becoming usable (gained) or unusable (lost): it acts
    /// with every grant of its requestor (rule 3), `scope` the widest of them, and
    /// `entitlement` is empty.
    pub key: String,
}

impl std::fmt::Display for PrivilegeChange {
    /// `user dana: + keys.update TEAM over globex`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.gained { '+' } else { '-' };
        if !self.key.is_empty() {
            write!(
                f,
                "{}: {sign} key {} (acts with the requestor's grants, up to {})",
                self.requestor, self.key, self.scope
            )?;
            if self.widens_to_all {
                f.write_str("  [widens to ALL]")?;
            }
            return Ok(());
        }
        write!(
            f,
            "{}: {sign} {} {}",
            self.requestor, self.entitlement, self.scope
        )?;
        match self.scope {
            Scope::Team => write!(f, " over {}", self.team)?,
            Scope::Own => f.write_str(" over its own data")?,
            Scope::All => f.write_str(" over every team")?,
        }
        if self.widens_to_all {
            f.write_str("  [widens to ALL]")?;
        }
        Ok(())
    }
}

pub(crate) fn describe(requestor: &RequestorId) -> String {
    match requestor {
        RequestorId::User(u) => format!("user {u}"),
        RequestorId::Project(p) => format!("project {p}"),
    }
}

/// Each grant of a requestor's effective grants: (entitlement, scope, team of a TEAM grant).
type Flat = BTreeSet<(Arc<str>, Scope, Arc<str>)>;

fn flat(view: &IndexedModel, requestor: &RequestorId, now: i64) -> Flat {
    let empty: Arc<str> = Arc::from("");
    let mut out = Flat::new();
    for (ent, held) in effective_grants(view, requestor, now).iter() {
        if held.all {
            out.insert((ent.clone(), Scope::All, empty.clone()));
        }
        for team in held.teams.iter() {
            out.insert((ent.clone(), Scope::Team, team.clone()));
        }
        if held.own {
            out.insert((ent.clone(), Scope::Own, empty.clone()));
        }
    }
    out
}

/// The prefixes of the keys of `requestor` that can act at `now`.
fn usable_keys(view: &IndexedModel, requestor: &RequestorId, now: i64) -> BTreeSet<String> {
    view.keys_of(requestor)
        .filter(|k| usable(view, k, now))
        .map(|k| k.prefix.to_string())
        .collect()
}

/// The requestors whose effective grants may differ between `old` and `new`: those the changes
/// touch, or every one when a role, entitlement or team changed.
fn touched(old: &IndexedModel, new: &IndexedModel) -> BTreeSet<RequestorId> {
    let changes = old.model().diff(new.model());
    let everyone = changes.iter().any(|c| {
        matches!(
            c,
            Change::PutRole(_)
                | Change::RemoveRole(_)
                | Change::PutEntitlement(_)
                | Change::RemoveEntitlement(_)
                | Change::PutTeam(_)
                | Change::RemoveTeam(_)
        )
    });
    let mut out = BTreeSet::new();
    if everyone {
        for m in [old.model(), new.model()] {
            out.extend(m.keys.values().map(|k| RequestorId::of(k)));
        }
        return out;
    }
    for c in &changes {
        match c {
            Change::PutKey(k) => {
                out.insert(RequestorId::of(k));
                if let Some(before) = old.model().keys.get(k.prefix.as_str()) {
                    out.insert(RequestorId::of(before));
                }
            }
            Change::RemoveKey(p) => {
                if let Some(before) = old.model().keys.get(&**p) {
                    out.insert(RequestorId::of(before));
                }
            }
            Change::PutUser(u) => {
                out.insert(RequestorId::User(u.id.clone()));
            }
            Change::RemoveUser(id) => {
                out.insert(RequestorId::User(id.clone()));
            }
            Change::PutProject(p) => {
                out.insert(RequestorId::Project(p.id.clone()));
            }
            Change::RemoveProject(id) => {
                out.insert(RequestorId::Project(id.clone()));
            }
            _ => {}
        }
    }
    out
}

/// What each requestor gains and loses from `old` to `new` at `now`, sorted by requestor, losses
/// before gains.
pub fn privilege_diff(old: &IndexedModel, new: &IndexedModel, now: i64) -> Vec<PrivilegeChange> {
    let mut out = Vec::new();
    for requestor in touched(old, new) {
        let before = flat(old, &requestor, now);
        let after = flat(new, &requestor, now);
        let who = describe(&requestor);
        // A key that becomes usable is a credential acting with every grant of the requestor:
        // one for a requestor holding ALL grants widens to ALL even when no grant changes.
        let keys_before = usable_keys(old, &requestor, now);
        let keys_after = usable_keys(new, &requestor, now);
        let widest = |grants: &Flat| grants.iter().map(|(_, s, _)| *s).max();
        for (keys, other, gained, grants) in [
            (&keys_before, &keys_after, false, &before),
            (&keys_after, &keys_before, true, &after),
        ] {
            for key in keys.difference(other) {
                let Some(scope) = widest(grants) else {
                    continue;
                };
                out.push(PrivilegeChange {
                    requestor: who.clone(),
                    gained,
                    entitlement: String::new(),
                    scope,
                    team: String::new(),
                    widens_to_all: gained && scope == Scope::All,
                    key: key.clone(),
                });
            }
        }
        let change =
            |(ent, scope, team): &(Arc<str>, Scope, Arc<str>), gained: bool| PrivilegeChange {
                requestor: who.clone(),
                gained,
                entitlement: ent.to_string(),
                scope: *scope,
                team: team.to_string(),
                widens_to_all: gained && *scope == Scope::All,
                key: String::new(),
            };
        out.extend(before.difference(&after).map(|g| change(g, false)));
        out.extend(after.difference(&before).map(|g| change(g, true)));
    }
    out.sort_by(|a, b| {
        (
            &a.requestor,
            a.gained,
            &a.key,
            &a.entitlement,
            a.scope,
            &a.team,
        )
            .cmp(&(
                &b.requestor,
                b.gained,
                &b.key,
                &b.entitlement,
                b.scope,
                &b.team,
            ))
    });
    out
}

/// One key whose roles carry a grant of the entitlement asked about. Shares its ids with the
/// model: a million holders are a million small records, not four million strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub requestor: RequestorId,
    pub key: CompactString,
    pub scope: Scope,
    /// The team a TEAM grant covers (the key's team).
    pub team: Option<Arc<str>>,
    /// The role that grants it.
    pub role: Arc<str>,
}

impl Holder {
    /// `user dana`, `project fraud-detector`.
    pub fn requestor_name(&self) -> String {
        describe(&self.requestor)
    }
}

/// The entitlement asked about is not in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the entitlement {0} is not in the catalog")]
pub struct NotInCatalog(pub String);

/// What one role list (by its shared allocation) grants of the entitlement: the scope bits, and
/// the role granting each scope.
struct ListGrants {
    bits: u8,
    roles: [Option<Arc<str>>; 3],
}

/// Every key of `model` that carries a grant of `entitlement` usable at `now` (the key active,
/// unexpired, in an active team, of an active user or existing project: a member of its
/// requestor, so every active key of that requestor acts with the grant), with the scope. With
/// `team`, only the grants that reach that team's data: ALL, TEAM over it, OWN on its keys.
/// Sorted by key, then scope, widest first.
///
/// One pass over the keys; what a role list grants is worked out once per distinct list (the
/// parsers and the store share one allocation per list), and the team and requestor are looked
/// up only for keys that carry a grant.
pub fn who_can(
    model: &Model,
    entitlement: &str,
    team: Option<&str>,
    now: i64,
) -> Result<Vec<Holder>, NotInCatalog> {
    let catalog = &model.catalog;
    let id = catalog
        .entitlement_id(entitlement)
        .ok_or_else(|| NotInCatalog(entitlement.to_owned()))?;
    let mut interner = GrantInterner::default();
    let mut lists: HashMap<*const [Arc<str>], ListGrants, foldhash::fast::RandomState> =
        HashMap::default();
    let mut teams: HashMap<*const str, bool, foldhash::fast::RandomState> = HashMap::default();
    const SCOPES: [(u8, Scope); 3] = [
        (super::entry::bits::ALL, Scope::All),
        (super::entry::bits::TEAM, Scope::Team),
        (super::entry::bits::OWN, Scope::Own),
    ];
    let mut out = Vec::new();
    for spec in model.keys.values() {
        let list = lists.entry(Arc::as_ptr(&spec.roles)).or_insert_with(|| {
            let bits = interner.intern(catalog, &spec.roles).scopes(id);
            let roles = SCOPES.map(|(bit, scope)| {
                if bits & bit == 0 {
                    return None;
                }
                let bound = spec.roles.iter().filter_map(|r| catalog.role(r));
                std::iter::once(catalog.team_role())
                    .chain(bound)
                    .find(|r| {
                        r.grants
                            .iter()
                            .any(|g| *g.entitlement == *entitlement && g.scope == scope)
                    })
                    .map(|r| r.id.clone())
            });
            ListGrants { bits, roles }
        });
        if list.bits == 0 {
            continue;
        }
        let Some(key_team) = model.key_team(spec) else {
            continue;
        };
        let in_team = team.is_none_or(|t| **key_team == *t);
        if !in_team && list.bits & super::entry::bits::ALL == 0 {
            continue;
        }
        let team_active = *teams
            .entry(Arc::as_ptr(key_team))
            .or_insert_with(|| model.teams.get(&**key_team).is_some_and(|t| t.active));
        if skipped(spec, team_active, now).is_some() {
            continue;
        }
        let requestor_active = match spec.key_type {
            KeyType::Team => model.users.get(&spec.owner).is_some_and(|u| u.active),
            KeyType::Project => model.projects.contains_key(&spec.owner),
        };
        if !requestor_active {
            continue;
        }
        for (i, (bit, scope)) in SCOPES.into_iter().enumerate() {
            if list.bits & bit == 0 || (!in_team && scope != Scope::All) {
                continue;
            }
            out.push(Holder {
                requestor: RequestorId::of(spec),
                key: spec.prefix.clone(),
                scope,
                team: (scope == Scope::Team).then(|| key_team.clone()),
                role: list.roles[i].clone().unwrap_or_else(|| Arc::from("")),
            });
        }
    }
    // By key: prefixes are held inline, so a million holders sort without reading the ids
    // behind them (sorting by requestor first took most of the time).
    out.sort_unstable_by(|a, b| {
        (&a.key, std::cmp::Reverse(a.scope)).cmp(&(&b.key, std::cmp::Reverse(b.scope)))
    });
    Ok(out)
}
