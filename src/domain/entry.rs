//! What one decision needs, precomputed when bindings change: a [`KeyEntry`] per key, pointing at
//! the [`Requestor`] shared by all keys of one user or project, whose [`GrantSet`] is the union of
//! the grants of every active key (rule 3 of catalog.md: the wider scope wins).

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use super::{Catalog, KeySpec, Scope};

/// Who is asking: the user behind a team key, or the project behind a project key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestorId {
    User(Arc<str>),
    Project(Arc<str>),
}

impl RequestorId {
    /// The requestor of a key (rule 2).
    pub fn of(key: &KeySpec) -> Option<RequestorId> {
        match (&key.user, &key.project) {
            (Some(user), _) => Some(RequestorId::User(user.clone())),
            (None, Some(project)) => Some(RequestorId::Project(project.clone())),
            (None, None) => None,
        }
    }

    /// The user id, for user requestors.
    pub fn user(&self) -> Option<&Arc<str>> {
        match self {
            RequestorId::User(id) => Some(id),
            RequestorId::Project(_) => None,
        }
    }
}

/// Everything the requestor holds for one entitlement, merged over its active keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntitlementGrants {
    pub all: bool,
    /// Teams covered by TEAM grants: the teams of the keys that carry them. Sorted, no repeats.
    pub teams: Arc<[Arc<str>]>,
    pub own: bool,
}

impl EntitlementGrants {
    /// The widest scope held.
    pub fn widest(&self) -> Scope {
        if self.all {
            Scope::All
        } else if !self.teams.is_empty() {
            Scope::Team
        } else {
            Scope::Own
        }
    }

    /// Whether a TEAM grant covers `team`.
    pub fn covers_team(&self, team: &str) -> bool {
        self.teams.binary_search_by(|t| (**t).cmp(team)).is_ok()
    }
}

/// The effective grants of a requestor, by entitlement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantSet {
    by_entitlement: HashMap<Arc<str>, EntitlementGrants>,
}

/// One active key's contribution to its requestor's grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub team: Arc<str>,
    pub roles: Arc<[Arc<str>]>,
    pub expires_at: Option<i64>,
}

impl GrantSet {
    /// The union of the grants of `members`, each with TEAM_ROLE added.
    pub fn build<'a>(catalog: &Catalog, members: impl IntoIterator<Item = &'a Member>) -> Self {
        // Per entitlement: (ALL held, teams of TEAM grants, OWN held).
        type Acc = (bool, Vec<Arc<str>>, bool);
        let mut acc: HashMap<Arc<str>, Acc> = HashMap::new();
        for member in members {
            let bound = member.roles.iter().filter_map(|r| catalog.role(r));
            for role in std::iter::once(catalog.team_role()).chain(bound) {
                for grant in &role.grants {
                    let slot = acc.entry(grant.entitlement.clone()).or_default();
                    match grant.scope {
                        Scope::All => slot.0 = true,
                        Scope::Team => slot.1.push(member.team.clone()),
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
                (
                    ent,
                    EntitlementGrants {
                        all,
                        teams: teams.into(),
                        own,
                    },
                )
            })
            .collect();
        GrantSet { by_entitlement }
    }

    /// What is held for `entitlement`, if anything.
    pub fn get(&self, entitlement: &str) -> Option<&EntitlementGrants> {
        self.by_entitlement.get(entitlement)
    }

    /// Every entitlement held, with its grants.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &EntitlementGrants)> {
        self.by_entitlement.iter()
    }
}

/// Shares identical grant sets between requestors: with a million keys, most users hold the same
/// roles in the same team, so a handful of sets serve them all.
#[derive(Default)]
pub struct GrantInterner {
    sets: HashMap<Signature, Arc<GrantSet>>,
}

/// What a grant set depends on: the (team, roles) of each active key, sorted.
type Signature = Vec<(Arc<str>, Arc<[Arc<str>]>)>;

impl GrantInterner {
    /// The grant set of `members`, shared with every requestor whose active keys carry the same
    /// roles in the same teams.
    pub fn intern(&mut self, catalog: &Catalog, members: &[Member]) -> Arc<GrantSet> {
        let mut signature: Vec<_> = members
            .iter()
            .map(|m| (m.team.clone(), m.roles.clone()))
            .collect();
        signature.sort();
        signature.dedup();
        self.sets
            .entry(signature)
            .or_insert_with(|| Arc::new(GrantSet::build(catalog, members)))
            .clone()
    }

    /// Drops the sets no requestor uses any more.
    pub fn prune(&mut self) {
        self.sets.retain(|_, set| Arc::strong_count(set) > 1);
    }
}

/// A user or project, with the grants of all its active keys merged.
#[derive(Debug)]
pub struct Requestor {
    pub id: RequestorId,
    /// False when the user is inactive: every key of the requestor is then unauthenticated.
    pub active: bool,
    /// The union over `members`, valid until `valid_until`.
    pub grants: Arc<GrantSet>,
    /// The active keys that contributed to `grants`.
    pub members: Box<[Member]>,
    /// The earliest expiry among `members`: from then on the union is recomputed on the fly
    /// without the expired keys (until the next rebuild drops them).
    pub valid_until: Option<i64>,
    /// Every key of the requestor, whatever its status: the owners that an OWN grant covers.
    /// Sorted.
    pub owned_key_prefixes: Arc<[Arc<str>]>,
    pub catalog: Arc<Catalog>,
}

impl Requestor {
    /// Builds a requestor from its active members and all its key prefixes.
    pub fn new(
        id: RequestorId,
        active: bool,
        members: Vec<Member>,
        mut owned_key_prefixes: Vec<Arc<str>>,
        catalog: Arc<Catalog>,
        interner: &mut GrantInterner,
    ) -> Self {
        owned_key_prefixes.sort();
        owned_key_prefixes.dedup();
        let grants = interner.intern(&catalog, &members);
        let valid_until = members.iter().filter_map(|m| m.expires_at).min();
        Requestor {
            id,
            active,
            grants,
            members: members.into_boxed_slice(),
            valid_until,
            owned_key_prefixes: owned_key_prefixes.into(),
            catalog,
        }
    }

    /// The grants in force at `now` (unix seconds): the precomputed union, or, once a member has
    /// expired, the union of the members still valid.
    pub fn grants_at(&self, now: i64) -> Cow<'_, GrantSet> {
        match self.valid_until {
            Some(until) if now >= until => Cow::Owned(GrantSet::build(
                &self.catalog,
                self.members
                    .iter()
                    .filter(|m| m.expires_at.is_none_or(|e| now < e)),
            )),
            _ => Cow::Borrowed(&self.grants),
        }
    }

    /// Whether `prefix` is one of the requestor's keys.
    pub fn owns_key(&self, prefix: &str) -> bool {
        self.owned_key_prefixes
            .binary_search_by(|p| (**p).cmp(prefix))
            .is_ok()
    }
}

/// The cache's value for one key prefix: the key, its team's state and its requestor.
#[derive(Debug)]
pub struct KeyEntry {
    pub spec: Arc<KeySpec>,
    /// The key's team (a project key's is its project's).
    pub team: Arc<str>,
    pub team_active: bool,
    pub requestor: Arc<Requestor>,
}

/// Builds the requestor `id` from the model and the cache entries of all its keys
/// (`prefixes`). A key contributes grants when it is active, unexpired at `now` and its team is
/// active (rule 3).
pub fn build_requestor(
    model: &super::Model,
    catalog: &Arc<Catalog>,
    id: &RequestorId,
    prefixes: &[Arc<str>],
    now: i64,
    interner: &mut GrantInterner,
) -> Vec<Arc<KeyEntry>> {
    let active = match id {
        RequestorId::User(user) => model.users.get(user).is_some_and(|u| u.active),
        RequestorId::Project(project) => model.projects.contains_key(project),
    };
    let keys: Vec<(&Arc<KeySpec>, Arc<str>, bool)> = prefixes
        .iter()
        .filter_map(|p| model.keys.get(p))
        .filter_map(|spec| {
            let team = model.key_team(spec)?.clone();
            let team_active = model.teams.get(&team).is_some_and(|t| t.active);
            Some((spec, team, team_active))
        })
        .collect();
    let members = keys
        .iter()
        .filter(|(spec, _, team_active)| {
            *team_active
                && spec.status == super::KeyStatus::Active
                && spec.expires_at.is_none_or(|at| now < at)
        })
        .map(|(spec, team, _)| Member {
            team: team.clone(),
            roles: spec.roles.clone(),
            expires_at: spec.expires_at,
        })
        .collect();
    let owned = keys
        .iter()
        .map(|(spec, _, _)| spec.prefix.clone())
        .collect();
    let requestor = Arc::new(Requestor::new(
        id.clone(),
        active,
        members,
        owned,
        catalog.clone(),
        interner,
    ));
    keys.into_iter()
        .map(|(spec, team, team_active)| {
            Arc::new(KeyEntry {
                spec: spec.clone(),
                team,
                team_active,
                requestor: requestor.clone(),
            })
        })
        .collect()
}
