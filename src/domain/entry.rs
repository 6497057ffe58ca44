//! What one decision needs, precomputed when bindings change: a [`KeyEntry`] per key, pointing at
//! the [`Requestor`] shared by all keys of one user or project, whose active keys' grants are
//! united at decision time (rule 3 of "How a check is decided" in the README: the wider scope wins).

use std::{collections::HashMap, sync::Arc};

use smallvec::SmallVec;

use compact_str::CompactString;

use super::{Catalog, KeySpec, KeyStatus, KeyType, Scope};

/// Who is asking: the user behind a team key, or the project behind a project key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestorId {
    User(Arc<str>),
    Project(Arc<str>),
}

impl RequestorId {
    /// The requestor of a key (rule 2).
    pub(crate) fn of(key: &KeySpec) -> RequestorId {
        match key.key_type {
            KeyType::Team => RequestorId::User(key.owner.clone()),
            KeyType::Project => RequestorId::Project(key.owner.clone()),
        }
    }

    /// The user id, for user requestors.
    pub(crate) fn user(&self) -> Option<&Arc<str>> {
        match self {
            RequestorId::User(id) => Some(id),
            RequestorId::Project(_) => None,
        }
    }
}

/// Everything the requestor holds for one entitlement, merged over its active keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntitlementGrants {
    pub(crate) all: bool,
    /// Teams covered by TEAM grants: the teams of the keys that carry them. Sorted, no repeats.
    pub(crate) teams: Arc<[Arc<str>]>,
    pub(crate) own: bool,
}

impl EntitlementGrants {
    /// Whether a TEAM grant covers `team`.
    pub(crate) fn covers_team(&self, team: &str) -> bool {
        self.teams.binary_search_by(|t| (**t).cmp(team)).is_ok()
    }
}

/// The effective grants of a requestor, by entitlement: a merged view built on demand (the
/// Admin API's no-escalation check uses it; decisions read [`Requestor::members`] directly).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantSet {
    by_entitlement: HashMap<Arc<str>, EntitlementGrants>,
}

impl GrantSet {
    /// The union of the grants of `members` (each with TEAM_ROLE) as `(team, roles)` pairs.
    pub(crate) fn build<'a>(
        catalog: &Catalog,
        members: impl IntoIterator<Item = (&'a Arc<str>, &'a [Arc<str>])>,
    ) -> Self {
        // Per entitlement: (ALL held, teams of TEAM grants, OWN held).
        type Acc = (bool, Vec<Arc<str>>, bool);
        let mut acc: HashMap<Arc<str>, Acc> = HashMap::new();
        for (team, roles) in members {
            let bound = roles.iter().filter_map(|r| catalog.role(r));
            for role in std::iter::once(catalog.team_role()).chain(bound) {
                for grant in &role.grants {
                    let slot = acc.entry(grant.entitlement.clone()).or_default();
                    match grant.scope {
                        Scope::All => slot.0 = true,
                        Scope::Team => slot.1.push(team.clone()),
                        Scope::Own => slot.2 = true,
                    }
                }
            }
        }
        let by_entitlement = acc
            .into_iter()
            .map(|(ent, (all, mut teams, own))| {
                teams.sort();
                teams.dedup();
                let teams = teams.into();
                (ent, EntitlementGrants { all, teams, own })
            })
            .collect();
        GrantSet { by_entitlement }
    }

    /// Every entitlement held, with what is held for it.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &EntitlementGrants)> {
        self.by_entitlement.iter()
    }

    /// What is held for `entitlement`, if anything.
    pub(crate) fn get(&self, entitlement: &str) -> Option<&EntitlementGrants> {
        self.by_entitlement.get(entitlement)
    }
}

/// Scope bits of one entitlement in [`RoleGrants`].
pub(crate) mod bits {
    pub(crate) const OWN: u8 = 1;
    pub(crate) const TEAM: u8 = 2;
    pub(crate) const ALL: u8 = 4;
}

/// What one combination of roles (plus TEAM_ROLE) grants, as scope bits indexed by entitlement
/// id. Independent of teams, so a handful of these serve a million keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RoleGrants {
    /// The bound roles this was built from (sorted, without TEAM_ROLE).
    roles: Arc<[Arc<str>]>,
    scopes: Box<[u8]>,
}

impl RoleGrants {
    fn build(catalog: &Catalog, roles: &Arc<[Arc<str>]>) -> Self {
        let mut scopes = vec![0u8; catalog.id_bound()].into_boxed_slice();
        let bound = roles.iter().filter_map(|r| catalog.role(r));
        for role in std::iter::once(catalog.team_role()).chain(bound) {
            for grant in &role.grants {
                if let Some(id) = catalog.entitlement_id(&grant.entitlement) {
                    scopes[id as usize] |= match grant.scope {
                        Scope::Own => bits::OWN,
                        Scope::Team => bits::TEAM,
                        Scope::All => bits::ALL,
                    };
                }
            }
        }
        RoleGrants {
            roles: roles.clone(),
            scopes,
        }
    }

    /// The bound roles these grants come from.
    pub(crate) fn roles(&self) -> &Arc<[Arc<str>]> {
        &self.roles
    }

    /// The scope bits held for entitlement `id`.
    pub(crate) fn scopes(&self, id: u16) -> u8 {
        self.scopes.get(id as usize).copied().unwrap_or(0)
    }
}

/// A team as a key sees it: its id and whether it is active.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TeamInfo {
    pub(crate) id: Arc<str>,
    pub(crate) active: bool,
}

/// The team's id.
impl std::ops::Deref for TeamInfo {
    type Target = str;

    fn deref(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for TeamInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// A team behind one thin pointer, shared by every key and member of the team: a [`Member`] is
/// then three words, a requestor with two members fits a 128-byte allocation, and a
/// [`KeyEntry`] three words (a 48-byte allocation with its reference counts).
pub(crate) type TeamRef = Arc<TeamInfo>;

/// Shares [`RoleGrants`] between every key bound to the same roles, and one [`TeamRef`] between
/// every key of a team.
#[derive(Clone, Default)]
pub(crate) struct GrantInterner {
    /// Looked up once per key built: hashed for speed (the role lists come from the origin).
    sets: HashMap<Arc<[Arc<str>]>, Arc<RoleGrants>, foldhash::fast::RandomState>,
    teams: HashMap<(Arc<str>, bool), TeamRef, foldhash::fast::RandomState>,
}

impl GrantInterner {
    /// The grants of `roles` (sorted, as in [`KeySpec::roles`]).
    pub(crate) fn intern(&mut self, catalog: &Catalog, roles: &Arc<[Arc<str>]>) -> Arc<RoleGrants> {
        if let Some(set) = self.sets.get(roles) {
            return set.clone();
        }
        let set = Arc::new(RoleGrants::build(catalog, roles));
        self.sets.insert(roles.clone(), set.clone());
        set
    }

    /// The shared reference to `team`, active or not.
    pub(crate) fn team(&mut self, team: &Arc<str>, active: bool) -> TeamRef {
        let key = (team.clone(), active);
        if let Some(shared) = self.teams.get(&key) {
            return shared.clone();
        }
        let shared = Arc::new(TeamInfo {
            id: team.clone(),
            active,
        });
        self.teams.insert(key, shared.clone());
        shared
    }

    /// Takes in the sets and teams of `other` (a copy that interned on another thread) that this
    /// one lacks.
    pub(crate) fn absorb(&mut self, other: GrantInterner) {
        for (roles, set) in other.sets {
            self.sets.entry(roles).or_insert(set);
        }
        for (team, shared) in other.teams {
            self.teams.entry(team).or_insert(shared);
        }
    }

    /// Drops the sets no key uses any more.
    pub(crate) fn prune(&mut self) {
        self.sets.retain(|_, set| Arc::strong_count(set) > 1);
        self.teams.retain(|_, shared| Arc::strong_count(shared) > 1);
    }
}

/// An expiry that never comes: `expires_at` of a key without one.
pub(crate) const NEVER: i64 = i64::MAX;

/// One active key's contribution to its requestor's grants. 24 bytes: a requestor keeps its
/// members inline, so that a decision reads them from the cache line it already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The team its TEAM grants cover.
    pub(crate) team: TeamRef,
    pub(crate) grants: Arc<RoleGrants>,
    /// From this instant on (unix seconds), the member no longer contributes; [`NEVER`] if the
    /// key does not expire.
    pub(crate) expires_at: i64,
}

impl Member {
    /// Whether the member still contributes at `now`.
    pub(crate) fn is_live(&self, now: i64) -> bool {
        now < self.expires_at
    }

    /// The roles bound to the member's key.
    pub(crate) fn roles(&self) -> &Arc<[Arc<str>]> {
        self.grants.roles()
    }
}

/// The members of a requestor: most have one or two keys, held without a separate allocation.
pub(crate) type Members = SmallVec<[Member; 2]>;

/// A user or project, with the active keys whose grants it unites (rule 3).
#[derive(Debug)]
pub struct Requestor {
    pub(crate) id: RequestorId,
    /// False when the user is inactive: every key of the requestor is then unauthenticated.
    pub(crate) active: bool,
    /// The active keys (active, in an active team, unexpired when built). A decision looks at
    /// each live member: a user has a few keys, so this beats a merged per-user map in both
    /// speed and memory.
    pub(crate) members: Members,
    /// Every key of the requestor, whatever its status: the owners that an OWN grant covers.
    /// Sorted; held inline (prefixes of up to 24 bytes), so an OWN check reads no other memory.
    pub(crate) owned_key_prefixes: Box<[CompactString]>,
    pub(crate) catalog: Arc<Catalog>,
}

impl super::idmap::HasId for Arc<Requestor> {
    type Id = RequestorId;

    fn id(&self) -> &RequestorId {
        &self.id
    }
}

impl Requestor {
    /// Builds a requestor from its active members and all its key prefixes.
    pub(crate) fn new(
        id: RequestorId,
        active: bool,
        mut members: Members,
        mut owned_key_prefixes: Vec<CompactString>,
        catalog: Arc<Catalog>,
    ) -> Self {
        owned_key_prefixes.sort();
        owned_key_prefixes.dedup();
        // Sorted by team, so a team filter lists each team once without a set (and the rest,
        // so that equal requestors have equal member lists).
        members.sort_by(|a, b| {
            (&*a.team, a.roles(), a.expires_at).cmp(&(&*b.team, b.roles(), b.expires_at))
        });
        Requestor {
            id,
            active,
            members,
            owned_key_prefixes: owned_key_prefixes.into(),
            catalog,
        }
    }

    /// Whether `prefix` is one of the requestor's keys.
    pub(crate) fn owns_key(&self, prefix: &str) -> bool {
        self.owned_key_prefixes
            .binary_search_by(|p| p.as_str().cmp(prefix))
            .is_ok()
    }
}

/// The cache's value for one key prefix: the key's binding (`spec`, shared with the model,
/// which holds what authenticating the key needs), then what the binding alone does not say:
/// which team it acts in (and whether that team is active), and its requestor. A check reads `spec`
/// and `requestor` through two independent pointers, so their cache misses overlap.
#[derive(Debug)]
pub struct KeyEntry {
    pub(crate) spec: Arc<KeySpec>,
    pub(crate) requestor: Arc<Requestor>,
    /// The key's team (a project key's is its project's), shared with its members.
    pub(crate) team: TeamRef,
}

/// Why a key of a requestor contributes no grants to it (rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skipped {
    /// Its status is not active.
    Inactive(KeyStatus),
    /// It is past its expiry.
    Expired,
    /// Its team is inactive.
    TeamInactive,
}

impl Skipped {
    /// How an explanation says it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Skipped::Inactive(_) => "inactive",
            Skipped::Expired => "expired",
            Skipped::TeamInactive => "team inactive",
        }
    }
}

/// Why the key `spec` (whose team is active or not) is not a member of its requestor at `now`,
/// or `None` when it is: the filter that builds [`Requestor::members`].
pub(crate) fn skipped(spec: &KeySpec, team_active: bool, now: i64) -> Option<Skipped> {
    if spec.status != KeyStatus::Active {
        Some(Skipped::Inactive(spec.status))
    } else if spec.expired_at(now) {
        Some(Skipped::Expired)
    } else if !team_active {
        Some(Skipped::TeamInactive)
    } else {
        None
    }
}

/// The cache entries of one requestor's keys.
pub(crate) type KeyEntries = SmallVec<[Arc<KeyEntry>; 2]>;

/// Builds the requestor `id` from the model and all its keys (`prefixes`), with the cache entry
/// of each key. A key contributes grants when it is active, unexpired at `now` and its team is
/// active (rule 3).
pub(crate) fn build_requestor(
    model: &super::Model,
    catalog: &Arc<Catalog>,
    id: &RequestorId,
    prefixes: &[CompactString],
    now: i64,
    interner: &mut GrantInterner,
) -> (Arc<Requestor>, KeyEntries) {
    let active = match id {
        RequestorId::User(user) => model.users.get(user).is_some_and(|u| u.active),
        RequestorId::Project(project) => model.projects.contains_key(project),
    };
    // On the stack, as the member list is inline: a first load builds a requestor per user,
    // and short-lived allocations between the long-lived ones would leave the heap's pages
    // partly empty once freed.
    let keys: SmallVec<[(&Arc<KeySpec>, TeamRef); 4]> = prefixes
        .iter()
        .filter_map(|p| model.keys.get(p))
        .filter_map(|spec| {
            let team = model.key_team(spec)?;
            let team_active = model.teams.get(team).is_some_and(|t| t.active);
            Some((spec, interner.team(team, team_active)))
        })
        .collect();
    let members = keys
        .iter()
        .filter(|(spec, team)| skipped(spec, team.active, now).is_none())
        .map(|(spec, team)| Member {
            team: team.clone(),
            grants: interner.intern(catalog, &spec.roles),
            expires_at: spec.expires_at.unix().unwrap_or(NEVER),
        })
        .collect();
    let owned = keys.iter().map(|(spec, _)| spec.prefix.clone()).collect();
    let requestor = Arc::new(Requestor::new(
        id.clone(),
        active,
        members,
        owned,
        catalog.clone(),
    ));
    let entries = keys
        .into_iter()
        .map(|(spec, team)| {
            Arc::new(KeyEntry {
                spec: spec.clone(),
                requestor: requestor.clone(),
                team,
            })
        })
        .collect();
    (requestor, entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the cold check path relies on: a key's entry and its requestor with two
    /// members fit in a few cache lines each, with nothing behind another pointer.
    #[test]
    fn hot_records_stay_small() {
        assert_eq!(std::mem::size_of::<Member>(), 24);
        assert!(
            std::mem::size_of::<KeyEntry>() <= 24,
            "{}",
            std::mem::size_of::<KeyEntry>()
        );
        assert!(
            std::mem::size_of::<Requestor>() <= 112,
            "{}",
            std::mem::size_of::<Requestor>()
        );
    }
}
