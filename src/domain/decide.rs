//! The decision: authenticate the presented key against its [`KeyEntry`], then judge the
//! entitlement and resource with the requestor's grants (rules 3–7 of "How a check is decided" in the README). Pure: no I/O,
//! no locks, and no heap allocation on the allow path.

use std::sync::Arc;

use compact_str::CompactString;

use super::{ApiKey, KeyEntry, KeyStatus, MalformedKey, Requestor, Scope, entry::bits};

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
    let requestor = &*entry.requestor;
    // Rule 7: an entitlement outside the catalog is never allowed.
    let Some(id) = requestor.catalog.entitlement_id(entitlement) else {
        return Decision::denied(Reason::UnknownEntitlement);
    };

    // Rule 3: unite the grants of every live member (active key) of the requestor.
    let (mut all, mut own) = (false, false);
    let (mut team_grants, mut team_covers) = (0usize, false);
    for member in requestor.members.iter().filter(|m| m.is_live(now)) {
        let scopes = member.grants.scopes(id);
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
        return Decision::allowed(Scope::All);
    }
    if team_covers {
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
        if owns_key || is_user {
            return Decision::allowed(Scope::Own);
        }
    }
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
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::{
        Expiry, Grant, KeyStatus, Role, RoleType,
        entry::{GrantInterner, RequestorId, build_requestor},
        model::{
            Model,
            tests::{model, project_key, team_key},
        },
    };

    const NOW: i64 = 1_800_000_000;

    /// Builds every key's entry, as the cache does.
    fn entries(model: &Model) -> HashMap<String, Arc<KeyEntry>> {
        let catalog = Arc::new(model.catalog.clone());
        let mut by_requestor: HashMap<RequestorId, Vec<CompactString>> = HashMap::new();
        for spec in model.keys.values() {
            by_requestor
                .entry(RequestorId::of(spec))
                .or_default()
                .push(spec.prefix.clone());
        }
        let mut interner = GrantInterner::default();
        let mut out = HashMap::new();
        for (id, prefixes) in &by_requestor {
            let (_, built) = build_requestor(model, &catalog, id, prefixes, NOW, &mut interner);
            for e in built {
                out.insert(e.spec.prefix.to_string(), e);
            }
        }
        out
    }

    /// The example world of these tests: two teams, one user per role, alice with two keys.
    fn world() -> Model {
        let mut m = model(vec![
            // alice: DATA_SCIENTIST in acme and ACCOUNT_ADMIN in globex: two keys, one user.
            team_key("AliceAcme1", "alice", "acme", &["DATA_SCIENTIST"]),
            team_key("AliceGlobex", "alice", "globex", &["ACCOUNT_ADMIN"]),
            team_key("BobKey0001", "bob", "acme", &["ACCOUNT_ADMIN"]),
            team_key("CarolKey01", "carol", "acme", &["DEVELOPER"]),
            team_key("DaveKey001", "dave", "globex", &["AUDITOR"]),
            team_key("ErinKey001", "erin", "acme", &["SYSTEM_OWNER"]),
            team_key("FrankKey01", "frank", "globex", &["DEVELOPER"]),
            project_key("FraudKey01", "fraud", &["SYSTEM_KEY"]),
        ]);
        let mut inactive = team_key("CarolOld01", "carol", "acme", &["ACCOUNT_ADMIN"]);
        inactive.status = KeyStatus::Inactive;
        let mut expired = team_key("CarolExp01", "carol", "acme", &["SYSTEM_OWNER"]);
        expired.expires_at = Expiry::at(NOW - 1).unwrap();
        for k in [inactive, expired] {
            m.keys.insert(k.prefix.clone(), Arc::new(k));
        }
        m
    }

    fn check(
        entries: &HashMap<String, Arc<KeyEntry>>,
        key: &str,
        entitlement: &str,
        resource: ResourceRef<'_>,
    ) -> Decision {
        let parsed = match ApiKey::parse(key) {
            Ok(k) => k,
            Err(e) => return Decision::denied(e.into()),
        };
        let entry = entries.get(parsed.prefix);
        if let Err(reason) = authenticate(entry.map(|e| &**e), &parsed, NOW) {
            return Decision::denied(reason);
        }
        decide(entry.unwrap(), entitlement, resource, NOW)
    }

    fn teams(d: &Decision) -> Vec<String> {
        d.filter_team_ids
            .iter()
            .flat_map(|f| f.iter())
            .map(|t| t.to_string())
            .collect()
    }

    fn key(prefix: &str) -> String {
        format!("{prefix}.{prefix}-secret")
    }

    fn team(t: &str) -> ResourceRef<'_> {
        ResourceRef {
            team_id: t,
            ..Default::default()
        }
    }

    fn owned(t: &'static str, owner: &'static str) -> ResourceRef<'static> {
        ResourceRef {
            team_id: t,
            owner_key_prefix: owner,
            owner_user_id: "",
        }
    }

    use Reason::*;
    use Scope::*;

    /// (key prefix, entitlement, resource, expected reason, expected scope)
    type Case = (
        &'static str,
        &'static str,
        ResourceRef<'static>,
        Reason,
        Option<Scope>,
    );

    #[test]
    fn every_rule_of_the_catalog() {
        let e = entries(&world());
        let none = ResourceRef::default();
        let cases: Vec<Case> = vec![
            // SYSTEM_OWNER: ALL on its grants, everywhere.
            (
                "ErinKey001",
                "jobs.cancel",
                owned("globex", "FrankKey01"),
                Allowed,
                Some(All),
            ),
            (
                "ErinKey001",
                "users.create",
                team("globex"),
                Allowed,
                Some(All),
            ),
            ("ErinKey001", "models.deploy", team("acme"), NoGrant, None),
            // ACCOUNT_ADMIN: TEAM over its own team only.
            (
                "BobKey0001",
                "jobs.cancel",
                owned("acme", "CarolKey01"),
                Allowed,
                Some(Team),
            ),
            (
                "BobKey0001",
                "jobs.cancel",
                owned("globex", "FrankKey01"),
                OutOfScope,
                None,
            ),
            (
                "BobKey0001",
                "keys.create",
                team("acme"),
                Allowed,
                Some(Team),
            ),
            ("BobKey0001", "features.manage", team("acme"), NoGrant, None),
            // DATA_SCIENTIST: OWN for jobs, TEAM for models.read.
            (
                "AliceAcme1",
                "models.read",
                team("acme"),
                Allowed,
                Some(Team),
            ),
            (
                "AliceAcme1",
                "jobs.read",
                owned("acme", "AliceAcme1"),
                Allowed,
                Some(Own),
            ),
            (
                "CarolKey01",
                "jobs.read",
                owned("acme", "BobKey0001"),
                OutOfScope,
                None,
            ),
            // DEVELOPER: own jobs, not another's; no model deployment.
            (
                "CarolKey01",
                "jobs.cancel",
                owned("acme", "CarolKey01"),
                Allowed,
                Some(Own),
            ),
            ("CarolKey01", "models.deploy", team("acme"), NoGrant, None),
            ("FrankKey01", "models.read", team("acme"), OutOfScope, None),
            // An OWN grant is not a TEAM grant: naming only the team is not covered.
            ("CarolKey01", "jobs.read", team("acme"), OutOfScope, None),
            // AUDITOR: reads everywhere, never cancels.
            (
                "DaveKey001",
                "jobs.read",
                owned("acme", "CarolKey01"),
                Allowed,
                Some(All),
            ),
            ("DaveKey001", "audit.read", team("acme"), Allowed, Some(All)),
            (
                "DaveKey001",
                "jobs.cancel",
                owned("globex", "DaveKey001"),
                NoGrant,
                None,
            ),
            ("DaveKey001", "users.update", team("globex"), NoGrant, None),
            // Project keys: own jobs yes, other keys' jobs no, users never.
            (
                "FraudKey01",
                "jobs.create",
                owned("acme", "FraudKey01"),
                Allowed,
                Some(Own),
            ),
            (
                "FraudKey01",
                "jobs.read",
                owned("acme", "CarolKey01"),
                OutOfScope,
                None,
            ),
            (
                "FraudKey01",
                "models.read",
                team("acme"),
                Allowed,
                Some(Team),
            ),
            ("FraudKey01", "users.read", team("acme"), NoGrant, None),
            // TEAM_ROLE on every key: own profile and keys.
            (
                "FraudKey01",
                "keys.read",
                owned("", "FraudKey01"),
                Allowed,
                Some(Own),
            ),
            (
                "FrankKey01",
                "profile.read",
                ResourceRef {
                    owner_user_id: "frank",
                    ..none
                },
                Allowed,
                Some(Own),
            ),
            (
                "FrankKey01",
                "profile.update",
                ResourceRef {
                    owner_user_id: "alice",
                    ..none
                },
                OutOfScope,
                None,
            ),
            (
                "DaveKey001",
                "teams.switch",
                ResourceRef {
                    owner_user_id: "dave",
                    ..none
                },
                Allowed,
                Some(Own),
            ),
            // The wider scope wins across the keys of one user, including a TEAM grant carried
            // by a key of another team: alice's acme key cancels globex jobs through her
            // globex ACCOUNT_ADMIN key.
            (
                "AliceAcme1",
                "jobs.cancel",
                owned("globex", "FrankKey01"),
                Allowed,
                Some(Team),
            ),
            (
                "AliceGlobex",
                "jobs.cancel",
                owned("acme", "AliceAcme1"),
                Allowed,
                Some(Own),
            ),
            (
                "AliceGlobex",
                "jobs.cancel",
                owned("acme", "CarolKey01"),
                OutOfScope,
                None,
            ),
            // Inactive and expired keys grant nothing to their user's other keys.
            ("CarolKey01", "users.read", team("acme"), NoGrant, None),
            ("CarolKey01", "roles.create", none, NoGrant, None),
            // Authentication failures.
            ("CarolOld01", "jobs.read", none, KeyInactive, None),
            ("CarolExp01", "jobs.read", none, KeyExpired, None),
            ("NoSuchKey1", "jobs.read", none, UnknownKey, None),
            // Unknown entitlements are denied with their own reason, even for SYSTEM_OWNER.
            ("ErinKey001", "jobs.explode", none, UnknownEntitlement, None),
        ];
        for (prefix, ent, res, reason, scope) in cases {
            let d = check(&e, &key(prefix), ent, res);
            assert_eq!(
                (d.reason, d.scope),
                (reason, scope),
                "{prefix} {ent} {res:?}"
            );
        }
    }

    #[test]
    fn bad_secrets_and_malformed_keys_are_unauthenticated() {
        let e = entries(&world());
        let none = ResourceRef::default();
        assert_eq!(
            check(&e, "ErinKey001.wrong", "jobs.read", none).reason,
            WrongSecret
        );
        assert_eq!(
            check(&e, "ErinKey001", "jobs.read", none).reason,
            MalformedKey
        );
        assert_eq!(
            check(&e, "ErinKey001.", "jobs.read", none).reason,
            MalformedKey
        );
        assert!(WrongSecret.is_unauthenticated() && !OutOfScope.is_unauthenticated());
        // An unknown prefix is told apart only in rolegate's own answer: it hashes and compares
        // like a wrong secret, against a hash that no key has.
        assert_eq!(
            check(&e, "NoSuchKey001.wrong", "jobs.read", none).reason,
            UnknownKey
        );
        assert!(e.values().all(|k| k.spec.secret_hash != NO_KEY_HASH));
    }

    #[test]
    fn inactive_teams_and_users_lock_out_their_keys() {
        let mut m = world();
        m.teams.get_mut("globex").unwrap().active = false;
        Arc::make_mut(m.users.get_mut("carol").unwrap()).active = false;
        let e = entries(&m);
        let none = ResourceRef::default();
        assert_eq!(
            check(&e, &key("FrankKey01"), "jobs.read", none).reason,
            TeamInactive
        );
        assert_eq!(
            check(&e, &key("CarolKey01"), "jobs.read", none).reason,
            UserInactive
        );
        // alice's globex key no longer lends its TEAM grant to her acme key.
        let d = check(
            &e,
            &key("AliceAcme1"),
            "jobs.cancel",
            owned("globex", "FrankKey01"),
        );
        assert_eq!(d.reason, OutOfScope);
    }

    #[test]
    fn collection_calls_carry_the_filter_of_the_widest_scope() {
        let e = entries(&world());
        let none = ResourceRef::default();
        // ALL: no filter.
        let d = check(&e, &key("DaveKey001"), "jobs.read", none);
        assert_eq!(
            (d.scope, d.filter_team_ids, d.filter_owner_key_prefixes),
            (Some(All), None, None)
        );
        // TEAM: the team ids.
        let d = check(&e, &key("BobKey0001"), "jobs.read", none);
        assert_eq!(d.scope, Some(Team));
        assert_eq!(teams(&d), ["acme"]);
        assert_eq!(d.filter_owner_key_prefixes, None);
        // OWN: every key of the requestor, inactive ones included, and the user id.
        let d = check(&e, &key("CarolKey01"), "jobs.read", none);
        assert_eq!(d.scope, Some(Own));
        assert_eq!(d.filter_team_ids, None);
        let owners: Vec<&str> = d
            .filter_owner_key_prefixes
            .as_deref()
            .unwrap()
            .iter()
            .map(|p| &**p)
            .collect();
        assert_eq!(owners, ["CarolExp01", "CarolKey01", "CarolOld01"]);
        assert_eq!(d.filter_owner_user_id.as_deref(), Some("carol"));
        // TEAM from one key and OWN from another: both filters, OR-ed by the backend.
        let d = check(&e, &key("AliceAcme1"), "jobs.read", none);
        assert_eq!(d.scope, Some(Team));
        assert_eq!(teams(&d), ["globex"]);
        assert_eq!(
            d.filter_owner_key_prefixes.as_deref().map(|p| p.len()),
            Some(2)
        );
        // TEAM from keys in two teams: both teams, sorted, each once.
        let d = check(&e, &key("AliceAcme1"), "models.read", none);
        assert_eq!(teams(&d), ["acme", "globex"]);
        // Project keys: their own keys, no user.
        let d = check(&e, &key("FraudKey01"), "results.read", none);
        assert_eq!(
            d.filter_owner_key_prefixes.as_deref(),
            Some(&[CompactString::from("FraudKey01")][..])
        );
        assert_eq!(d.filter_owner_user_id, None);
    }

    #[test]
    fn a_member_expiring_later_stops_contributing_at_its_expiry() {
        let mut m = world();
        let mut admin = team_key("CarolAdm01", "carol", "acme", &["ACCOUNT_ADMIN"]);
        admin.expires_at = Expiry::at(NOW + 60).unwrap();
        m.keys.insert(admin.prefix.clone(), Arc::new(admin));
        let e = entries(&m);
        let entry = &e["CarolKey01"];
        let target = owned("acme", "BobKey0001");
        assert_eq!(decide(entry, "jobs.cancel", target, NOW).scope, Some(Team));
        assert_eq!(
            decide(entry, "jobs.cancel", target, NOW + 60).reason,
            OutOfScope
        );
    }

    #[test]
    fn custom_roles_grant_custom_entitlements() {
        let mut m = world();
        m.catalog.add_entitlement("reports.export");
        m.catalog.put_role(Arc::new(Role {
            id: "REPORTER".into(),
            role_type: RoleType::User,
            grants: vec![Grant {
                entitlement: "reports.export".into(),
                scope: Scope::Team,
            }],
            prebuilt: false,
        }));
        m.keys.insert(
            "FrankRep01".into(),
            Arc::new(team_key("FrankRep01", "frank", "globex", &["REPORTER"])),
        );
        let e = entries(&m);
        let d = check(&e, &key("FrankKey01"), "reports.export", team("globex"));
        assert_eq!((d.reason, d.scope), (Allowed, Some(Team)));
        let d = check(&e, &key("CarolKey01"), "reports.export", team("acme"));
        assert_eq!(d.reason, NoGrant);
    }

    #[test]
    fn keys_with_the_same_roles_share_one_grant_table() {
        let e = entries(&world());
        // carol (acme) and frank (globex) are both DEVELOPERs, in different teams: one table.
        let carol = &e["CarolKey01"].requestor.members;
        let frank = &e["FrankKey01"].requestor.members;
        let dev = |m: &[crate::domain::entry::Member]| {
            m.iter()
                .find(|m| **m.roles() == [Arc::from("DEVELOPER")][..])
                .unwrap()
                .grants
                .clone()
        };
        assert!(Arc::ptr_eq(&dev(carol), &dev(frank)));
        let bob = &e["BobKey0001"].requestor.members[0].grants;
        assert!(!Arc::ptr_eq(bob, &dev(frank)));
    }

    #[test]
    fn keys_of_one_team_share_one_team_reference() {
        let e = entries(&world());
        // carol and bob are both in acme, frank in globex.
        let team = |prefix: &str| e[prefix].requestor.members[0].team.clone();
        assert_eq!(**team("CarolKey01"), *"acme");
        assert!(Arc::ptr_eq(&team("CarolKey01"), &team("BobKey0001")));
        assert!(!Arc::ptr_eq(&team("CarolKey01"), &team("FrankKey01")));
    }

    #[test]
    fn naming_the_presented_key_decides_as_the_key_list_does() {
        let e = entries(&world());
        let ents = [
            "jobs.read",
            "jobs.cancel",
            "results.read",
            "keys.read",
            "models.read",
        ];
        let mut own_allowed = 0;
        for (prefix, entry) in &e {
            for other in e.keys() {
                for ent in ents {
                    let res = ResourceRef {
                        owner_key_prefix: other,
                        ..Default::default()
                    };
                    let by_list = decide(entry, ent, res, NOW);
                    let presented = decide_presented(entry, prefix, ent, res, NOW);
                    assert_eq!(presented, by_list, "{prefix} on {ent} of {other}");
                    own_allowed += usize::from(presented.scope == Some(Scope::Own));
                }
            }
        }
        assert!(own_allowed > 0, "no case was allowed by an OWN grant");
    }
}
