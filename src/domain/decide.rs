//! The decision: authenticate the presented key against its [`KeyEntry`], then judge the
//! entitlement and resource with the requestor's grants (rules 3–7 of "How a check is decided" in the README). Pure: no I/O,
//! no locks, and no heap allocation on the allow path.

use std::sync::Arc;

use compact_str::CompactString;

use super::{
    ApiKey, KeyEntry, KeyStatus, MalformedKey, Requestor, Scope,
    entry::{Member, bits},
};

/// Why a request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Allowed,
    MalformedKey,
    UnknownKey,
    WrongSecret,
    KeyInactive,
    KeyExpired,
    TeamInactive,
    UserInactive,
    UnknownEntitlement,
    NoGrant,
    OutOfScope,
}

impl Reason {
    /// Denied because the key could not be authenticated (HTTP 401), as opposed to a key that is
    /// fine but lacks the grant (HTTP 403).
    pub(crate) fn is_unauthenticated(self) -> bool {
        matches!(
            self,
            Reason::MalformedKey
                | Reason::UnknownKey
                | Reason::WrongSecret
                | Reason::KeyInactive
                | Reason::KeyExpired
                | Reason::TeamInactive
                | Reason::UserInactive
        )
    }

    /// The reason's name in logs, denial bodies and `/status` (`no_grant`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::MalformedKey => "malformed_key",
            Reason::UnknownKey => "unknown_key",
            Reason::WrongSecret => "wrong_secret",
            Reason::KeyInactive => "key_inactive",
            Reason::KeyExpired => "key_expired",
            Reason::TeamInactive => "team_inactive",
            Reason::UserInactive => "user_inactive",
            Reason::UnknownEntitlement => "unknown_entitlement",
            Reason::NoGrant => "no_grant",
            Reason::OutOfScope => "out_of_scope",
        }
    }

    /// The reason as the gRPC API's `Reason` enum spells it, without its `REASON_` prefix
    /// (`NO_GRANT`): how logs name it.
    pub fn api_name(self) -> &'static str {
        match self {
            Reason::Allowed => "ALLOWED",
            Reason::MalformedKey => "MALFORMED_KEY",
            Reason::UnknownKey => "UNKNOWN_KEY",
            Reason::WrongSecret => "WRONG_SECRET",
            Reason::KeyInactive => "KEY_INACTIVE",
            Reason::KeyExpired => "KEY_EXPIRED",
            Reason::TeamInactive => "TEAM_INACTIVE",
            Reason::UserInactive => "USER_INACTIVE",
            Reason::UnknownEntitlement => "UNKNOWN_ENTITLEMENT",
            Reason::NoGrant => "NO_GRANT",
            Reason::OutOfScope => "OUT_OF_SCOPE",
        }
    }

    /// A short explanation for people; never contains a secret.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::MalformedKey => "the API key is malformed (expected <prefix>.<secret>)",
            Reason::UnknownKey => "no API key has this prefix",
            Reason::WrongSecret => "the API key's secret does not match",
            Reason::KeyInactive => "the API key is not active",
            Reason::KeyExpired => "the API key has expired",
            Reason::TeamInactive => "the API key's team is inactive",
            Reason::UserInactive => "the API key's user is inactive",
            Reason::UnknownEntitlement => "the entitlement is not in the catalog",
            Reason::NoGrant => "no role of the requestor grants the entitlement",
            Reason::OutOfScope => "the requestor's grants do not cover this resource",
        }
    }
}

impl From<MalformedKey> for Reason {
    fn from(_: MalformedKey) -> Self {
        Reason::MalformedKey
    }
}

/// The data a request touches; empty strings mean "not named". All empty: a collection call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceRef<'a> {
    pub team_id: &'a str,
    pub owner_key_prefix: &'a str,
    pub owner_user_id: &'a str,
}

impl ResourceRef<'_> {
    /// No resource named: the answer carries a filter instead.
    pub(crate) fn is_collection(&self) -> bool {
        self.team_id.is_empty() && self.owner_key_prefix.is_empty() && self.owner_user_id.is_empty()
    }
}

/// The outcome of [`decide`]. Filters are shared with the cache (cloning them bumps a counter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) reason: Reason,
    /// The widest scope that granted; `None` when denied.
    pub(crate) scope: Option<Scope>,
    /// For collection calls below ALL: the visible data is that of these teams…
    pub(crate) filter_team_ids: Option<TeamFilter>,
    /// …or owned by these keys…
    pub filter_owner_key_prefixes: Option<OwnerKeys>,
    /// …or owned by this user.
    pub(crate) filter_owner_user_id: Option<Arc<str>>,
}

impl Decision {
    /// A denial with no scope and no filter.
    pub(crate) fn denied(reason: Reason) -> Self {
        Decision {
            reason,
            scope: None,
            filter_team_ids: None,
            filter_owner_key_prefixes: None,
            filter_owner_user_id: None,
        }
    }

    fn allowed(scope: Scope) -> Self {
        Decision {
            scope: Some(scope),
            ..Decision::denied(Reason::Allowed)
        }
    }

    pub fn is_allowed(&self) -> bool {
        self.reason == Reason::Allowed
    }
}

/// Checks the presented key against its cache entry (rule 3: the presented key itself must be
/// active and unexpired). `now` is unix seconds.
///
/// The secret is checked before the status, so that only a holder of the secret learns whether
/// a key is inactive or expired. An unknown prefix costs the same work as a wrong secret: the
/// presented secret is hashed and compared, in constant time, with a hash no key has, so the time
/// an answer takes does not tell whether a prefix exists.
pub fn authenticate(entry: Option<&KeyEntry>, key: &ApiKey<'_>, now: i64) -> Result<(), Reason> {
    let presented = key.secret_hash();
    let Some(entry) = entry else {
        // The outcome is known already; `black_box` keeps the hashing and the comparison from
        // being optimised away, which would make an unknown prefix answer faster.
        std::hint::black_box(NO_KEY_HASH.matches(std::hint::black_box(&presented)));
        return Err(Reason::UnknownKey);
    };
    let spec = &*entry.spec;
    if !spec.secret_hash.matches(&presented) {
        return Err(Reason::WrongSecret);
    }
    usable(entry, now)
}

/// The checks of [`authenticate`] after the secret: the key is active and unexpired, its team
/// and its user active. Offline checks and explanations, given a prefix without a secret, make
/// only these.
#[inline]
pub(crate) fn usable(entry: &KeyEntry, now: i64) -> Result<(), Reason> {
    let spec = &*entry.spec;
    if spec.status != KeyStatus::Active {
        return Err(Reason::KeyInactive);
    }
    if spec.expired_at(now) {
        return Err(Reason::KeyExpired);
    }
    if !entry.team.active {
        return Err(Reason::TeamInactive);
    }
    if !entry.requestor.active {
        return Err(Reason::UserInactive);
    }
    Ok(())
}

/// What a presented secret is compared with when its prefix is unknown: a fixed value that is
/// not the hash of any secret rolegate knows (the comparison's result is ignored either way).
const NO_KEY_HASH: super::SecretHash = super::SecretHash([0x5a; 32]);

/// Decides whether the (already authenticated) key of `entry` may use `entitlement` on
/// `resource` at `now` (unix seconds).
pub fn decide(
    entry: &KeyEntry,
    entitlement: &str,
    resource: ResourceRef<'_>,
    now: i64,
) -> Decision {
    decide_presented(entry, "", entitlement, resource, now)
}

/// [`decide`] for the key presented as `prefix.…`, whose entry is `entry`: a resource owned by
/// that very key is recognised without reading the requestor's key list (most OWN checks are
/// about the caller's own data, and the list is cold memory in a large cache).
pub fn decide_presented(
    entry: &KeyEntry,
    prefix: &str,
    entitlement: &str,
    resource: ResourceRef<'_>,
    now: i64,
) -> Decision {
    decide_traced(entry, prefix, entitlement, resource, now, &mut NoTrace)
}

/// What [`decide_traced`] reports while it decides: each member (active key) of the requestor it
/// considered, and how the resource was or was not covered. The hot path passes [`NoTrace`],
/// whose empty methods compile away; an explanation records them ([`super::explain`]).
pub(crate) trait Trace {
    /// A member of the requestor: `live` false when its key expired since its entry was
    /// built; `scopes` the scope bits it holds for the entitlement (0 when not live).
    fn member(&mut self, member: &Member, live: bool, scopes: u8);
    /// How the decision came out once some grant was found.
    fn cover(&mut self, cover: Cover<'_>);
}

/// Records nothing: the trace of every served check.
pub(crate) struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn member(&mut self, _: &Member, _: bool, _: u8) {}
    #[inline(always)]
    fn cover(&mut self, _: Cover<'_>) {}
}

/// How the requestor's grants met the resource (rules 5 and 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cover<'a> {
    /// A collection call, allowed at the widest scope held.
    Collection(Scope),
    /// An ALL grant covers every resource.
    All,
    /// A TEAM grant of a member in the resource's team.
    Team(&'a str),
    /// An OWN grant, and the resource's owner key is one of the requestor's keys.
    OwnKey(&'a str),
    /// An OWN grant, and the resource's owner user is the requestor.
    OwnUser(&'a str),
    /// Nothing covers the resource: TEAM grants (if any) are over other teams, and an OWN grant
    /// (if any) does not reach its owner.
    Uncovered { team: bool, own: bool },
}

/// [`decide_presented`] reporting to `trace`: the one implementation of the decision rules,
/// for served checks and explanations alike.
#[inline]
pub(crate) fn decide_traced<T: Trace>(
    entry: &KeyEntry,
    prefix: &str,
    entitlement: &str,
    resource: ResourceRef<'_>,
    now: i64,
    trace: &mut T,
) -> Decision {
    let requestor = &*entry.requestor;
    // Rule 7: an entitlement outside the catalog is never allowed.
    let Some(id) = requestor.catalog.entitlement_id(entitlement) else {
        return Decision::denied(Reason::UnknownEntitlement);
    };

    // Rule 3: unite the grants of every live member (active key) of the requestor.
    let (mut all, mut own) = (false, false);
    let (mut team_grants, mut team_covers) = (0usize, false);
    for member in requestor.members.iter() {
        let live = member.is_live(now);
        if !live {
            trace.member(member, false, 0);
            continue;
        }
        let scopes = member.grants.scopes(id);
        trace.member(member, true, scopes);
        all |= scopes & bits::ALL != 0;
        own |= scopes & bits::OWN != 0;
        if scopes & bits::TEAM != 0 {
            team_grants += 1;
            team_covers |= !resource.team_id.is_empty() && **member.team == *resource.team_id;
        }
    }
    if !all && !own && team_grants == 0 {
        return Decision::denied(Reason::NoGrant);
    }

    if resource.is_collection() {
        // Rule 6: allowed at the widest scope held, with the filter the backend applies.
        let widest = if all {
            Scope::All
        } else if team_grants > 0 {
            Scope::Team
        } else {
            Scope::Own
        };
        trace.cover(Cover::Collection(widest));
        let mut decision = Decision::allowed(widest);
        if !all {
            if team_grants > 0 {
                decision.filter_team_ids = Some(TeamFilter {
                    requestor: entry.requestor.clone(),
                    entitlement: id,
                    now,
                });
            }
            if own {
                decision.filter_owner_key_prefixes = Some(OwnerKeys {
                    requestor: entry.requestor.clone(),
                });
                decision.filter_owner_user_id = requestor.id.user().cloned();
            }
        }
        return decision;
    }

    // Rule 5: the grant must cover the named resource; report the widest that does.
    if all {
        trace.cover(Cover::All);
        return Decision::allowed(Scope::All);
    }
    if team_covers {
        trace.cover(Cover::Team(resource.team_id));
        return Decision::allowed(Scope::Team);
    }
    if own {
        let owner = resource.owner_key_prefix;
        let owns_key = !owner.is_empty() && (owner == prefix || requestor.owns_key(owner));
        let is_user = !resource.owner_user_id.is_empty()
            && requestor
                .id
                .user()
                .is_some_and(|u| **u == *resource.owner_user_id);
        if owns_key {
            trace.cover(Cover::OwnKey(owner));
            return Decision::allowed(Scope::Own);
        }
        if is_user {
            trace.cover(Cover::OwnUser(resource.owner_user_id));
            return Decision::allowed(Scope::Own);
        }
    }
    trace.cover(Cover::Uncovered {
        team: team_grants > 0,
        own,
    });
    Decision::denied(Reason::OutOfScope)
}

/// The teams whose data a TEAM grant shows: the teams of the live members that hold the grant
/// at TEAM scope. Read from the shared requestor when iterated, so a decision never copies it.
#[derive(Clone, Debug)]
pub(crate) struct TeamFilter {
    requestor: Arc<Requestor>,
    entitlement: u16,
    now: i64,
}

impl TeamFilter {
    /// The team ids, sorted, each once.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        // Members are sorted by team, so repeats are neighbours.
        let mut previous: Option<&Arc<str>> = None;
        self.requestor
            .members
            .iter()
            .filter(|m| m.is_live(self.now) && m.grants.scopes(self.entitlement) & bits::TEAM != 0)
            .map(|m| &m.team.id)
            .filter(move |team| {
                let repeat = previous.is_some_and(|p| p == *team);
                previous = Some(team);
                !repeat
            })
    }
}

impl PartialEq for TeamFilter {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for TeamFilter {}

/// The keys whose data an OWN grant shows: all the requestor's keys, read from the shared
/// requestor, so a decision neither copies the list nor keeps a second reference count on it.
#[derive(Clone)]
pub struct OwnerKeys {
    requestor: Arc<Requestor>,
}

impl std::fmt::Debug for OwnerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The key prefixes, sorted.
impl std::ops::Deref for OwnerKeys {
    type Target = [CompactString];

    fn deref(&self) -> &[CompactString] {
        &self.requestor.owned_key_prefixes
    }
}

impl PartialEq for OwnerKeys {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for OwnerKeys {}

#[cfg(test)]
mod tests;
