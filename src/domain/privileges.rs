//! Who can do what: the entitlements each requestor gains and loses between two models (from
//! the escalation rule's effective grants), and every key that holds an entitlement.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::{
    IndexedModel, KeySpec, KeyType, Model, RequestorId, Scope,
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

/// One key whose roles carry a grant of the entitlement asked about, borrowed from the model it
/// was found in: listing a million holders copies no id and counts no reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder<'m> {
    /// The key; its owner is the requestor.
    pub key: &'m KeySpec,
    pub scope: Scope,
    /// The team a TEAM grant covers (the key's team).
    pub team: Option<&'m str>,
    /// The role that grants it.
    pub role: &'m str,
}

impl<'m> Holder<'m> {
    /// The key's prefix.
    pub fn prefix(&self) -> &'m str {
        &self.key.prefix
    }

    /// `user` or `project`: what the requestor is.
    pub fn requestor_kind(&self) -> &'static str {
        match self.key.key_type {
            KeyType::Team => "user",
            KeyType::Project => "project",
        }
    }

    /// The requestor's id: the key's user or project.
    pub fn requestor_id(&self) -> &'m str {
        &self.key.owner
    }

    /// `user dana`, `project fraud-detector`.
    pub fn requestor_name(&self) -> String {
        format!("{} {}", self.requestor_kind(), self.requestor_id())
    }
}

/// The answer to who-can: the first holders in order (all of them when no limit cut the list),
/// and how many there are in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders<'m> {
    pub first: Vec<Holder<'m>>,
    pub total: usize,
}

/// The entitlement asked about is not in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the entitlement {0} is not in the catalog")]
pub struct NotInCatalog(pub String);

/// What one role list (by its shared allocation) grants of the entitlement: the scope bits, and
/// the role granting each scope.
struct ListGrants<'m> {
    bits: u8,
    roles: [&'m str; 3],
}

/// A holder with the first 16 bytes of its prefix as a number, big-endian and zero-padded: the
/// sort compares numbers held in the record and reads the prefix behind the key only to break
/// a tie. Zero is the smallest byte, so two heads that differ order as the prefixes do.
struct Ranked<'m> {
    head: u128,
    holder: Holder<'m>,
}

impl<'m> Ranked<'m> {
    fn new(holder: Holder<'m>) -> Self {
        let mut head = [0u8; 16];
        let prefix = holder.key.prefix.as_bytes();
        let n = prefix.len().min(16);
        head[..n].copy_from_slice(&prefix[..n]);
        Ranked {
            head: u128::from_be_bytes(head),
            holder,
        }
    }
}

/// By prefix, then scope, widest first.
fn in_order(a: &Ranked<'_>, b: &Ranked<'_>) -> std::cmp::Ordering {
    a.head
        .cmp(&b.head)
        .then_with(|| a.holder.key.prefix.cmp(&b.holder.key.prefix))
        .then_with(|| b.holder.scope.cmp(&a.holder.scope))
}

/// Every key of `model` that carries a grant of `entitlement` usable at `now` (the key active,
/// unexpired, in an active team, of an active user or existing project: a member of its
/// requestor, so every active key of that requestor acts with the grant), with the scope. With
/// `team`, only the grants that reach that team's data: ALL, TEAM over it, OWN on its keys.
/// The first `limit` in order (by key prefix, then scope, widest first), and the total.
///
/// One pass over the keys; what a role list grants is worked out once per distinct list (the
/// parsers and the store share one allocation per list), and the team and requestor are looked
/// up only for keys that carry a grant. Holders borrow from the model, and a limit below the
/// total sorts only the holders it keeps (after a linear selection of them).
pub fn who_can<'m>(
    model: &'m Model,
    entitlement: &str,
    team: Option<&str>,
    now: i64,
    limit: usize,
) -> Result<Holders<'m>, NotInCatalog> {
    let catalog = &model.catalog;
    let id = catalog
        .entitlement_id(entitlement)
        .ok_or_else(|| NotInCatalog(entitlement.to_owned()))?;
    let mut interner = GrantInterner::default();
    let mut lists: HashMap<*const [Arc<str>], ListGrants<'m>, foldhash::fast::RandomState> =
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
                    return "";
                }
                let bound = spec.roles.iter().filter_map(|r| catalog.role(r));
                std::iter::once(catalog.team_role())
                    .chain(bound)
                    .find(|r| {
                        r.grants
                            .iter()
                            .any(|g| *g.entitlement == *entitlement && g.scope == scope)
                    })
                    .map_or("", |r| &*r.id)
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
        for (i, (bit, scope)) in SCOPES.into_iter().enumerate() {
            if list.bits & bit == 0 || (!in_team && scope != Scope::All) {
                continue;
            }
            out.push(Ranked::new(Holder {
                key: spec,
                scope,
                team: (scope == Scope::Team).then_some(&**key_team),
                role: list.roles[i],
            }));
        }
    }
    // The requestor is looked up last, for the holders only: following the user map's slot to
    // each user took most of the pass. When the holders outnumber the users, a set of the
    // active users' ids by address answers most of them from one table: where the origin
    // shares one allocation per id (the policy file, the embedded store), a key's owner is its
    // user's id. An owner not found there is looked up by its id.
    let by_address: HashSet<*const u8, foldhash::fast::RandomState> =
        if out.len() > model.users.len() / 2 {
            let active = model.users.values().filter(|u| u.active);
            active.map(|u| u.id.as_ptr()).collect()
        } else {
            HashSet::default()
        };
    out.retain(|r| {
        let key = r.holder.key;
        match key.key_type {
            KeyType::Team => {
                by_address.contains(&key.owner.as_ptr())
                    || model.users.get(&key.owner).is_some_and(|u| u.active)
            }
            KeyType::Project => model.projects.contains_key(&key.owner),
        }
    });
    let total = out.len();
    if limit < total {
        out.select_nth_unstable_by(limit, in_order);
        out.truncate(limit);
    }
    out.sort_unstable_by(in_order);
    Ok(Holders {
        first: out.into_iter().map(|r| r.holder).collect(),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sort's numeric heads order holders as their prefixes and scopes do, past the 16
    /// bytes the head holds and where one prefix begins another.
    #[test]
    fn heads_order_as_the_prefixes() {
        let prefixes = [
            "AdamAdminKey00000001",
            "AdamAdminKey00000002",
            "AdamAdminKey0000000",
            "AdamAdminKey000000",
            "AdamAdminKey000",
            "Adam",
            "A",
            "B",
            "a",
            "AdamAdminKey0000000100000000000000000001",
            "AdamAdminKey0000000100000000000000000000",
            "zzzzzzzzzzzzzzzz",
            "zzzzzzzzzzzzzzzzz",
        ];
        let specs: Vec<KeySpec> = prefixes
            .iter()
            .map(|p| KeySpec {
                secret_hash: crate::domain::SecretHash::of_secret("secret"),
                expires_at: crate::domain::Expiry::NEVER,
                status: crate::domain::KeyStatus::Active,
                key_type: KeyType::Team,
                prefix: (*p).into(),
                owner: Arc::from("u"),
                team: None,
                roles: Arc::from([]),
            })
            .collect();
        let mut ranked: Vec<Ranked<'_>> = specs
            .iter()
            .flat_map(|key| {
                [Scope::Own, Scope::All, Scope::Team].map(|scope| {
                    Ranked::new(Holder {
                        key,
                        scope,
                        team: None,
                        role: "",
                    })
                })
            })
            .collect();
        ranked.sort_unstable_by(in_order);
        let got: Vec<(&str, Scope)> = ranked
            .iter()
            .map(|r| (r.holder.prefix(), r.holder.scope))
            .collect();
        let mut want: Vec<(&str, Scope)> = got.clone();
        want.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
        assert_eq!(got, want);
        assert_eq!(got.len(), prefixes.len() * 3);
    }
}
