//! Why a check came out the way it did: the requestor's keys considered (and why any were
//! skipped), the key, role and scope of the grant that decided, what it covers, and why the
//! resource was or was not covered. Recorded from the one decision function
//! ([`decide_traced`]) while it decides; nothing here judges a request again.

use std::sync::Arc;

use super::{
    Decision, KeyEntry, Reason, ResourceRef, Scope,
    decide::{Cover, Trace, decide_traced, usable},
    entry::{Member, bits, skipped},
};

/// One key of the requestor, as the decision saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainedKey {
    pub prefix: String,
    pub team: String,
    /// The roles bound to it (TEAM_ROLE, on every key, is not listed).
    pub roles: Vec<String>,
    /// Why its grants were not considered (`inactive`, `expired`, `team inactive`); empty when
    /// they were.
    pub skipped: String,
    /// The scopes at which its roles grant the entitlement, narrowest first.
    pub scopes: Vec<Scope>,
}

/// The grant that decided an allowed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedBy {
    /// The key that carries the grant.
    pub key: String,
    /// The role of that key that grants the entitlement at `scope` (`TEAM_ROLE` for the grants
    /// every key carries).
    pub role: String,
    pub scope: Scope,
}

/// A decision with its explanation.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub decision: Decision,
    /// `user dana`, `project fraud-detector`; empty when the key is unknown.
    pub requestor: String,
    /// Every key of the requestor, sorted by prefix.
    pub keys: Vec<ExplainedKey>,
    pub decided_by: Option<DecidedBy>,
    /// What the deciding grant covers (empty when denied).
    pub covers: String,
    /// Why the resource was or was not covered, or why no grant was looked at.
    pub coverage: String,
}

/// What the decision reported, in the order it did.
#[derive(Default)]
struct Recorder {
    members: Vec<(Member, bool, u8)>,
    cover: Option<CoverOwned>,
}

/// [`Cover`] without its borrows.
#[derive(Clone, Debug)]
enum CoverOwned {
    Collection(Scope),
    All,
    Team(String),
    OwnKey(String),
    OwnUser(String),
    Uncovered { team: bool, own: bool },
}

impl Trace for Recorder {
    fn member(&mut self, member: &Member, live: bool, scopes: u8) {
        self.members.push((member.clone(), live, scopes));
    }

    fn cover(&mut self, cover: Cover<'_>) {
        self.cover = Some(match cover {
            Cover::Collection(s) => CoverOwned::Collection(s),
            Cover::All => CoverOwned::All,
            Cover::Team(t) => CoverOwned::Team(t.to_owned()),
            Cover::OwnKey(k) => CoverOwned::OwnKey(k.to_owned()),
            Cover::OwnUser(u) => CoverOwned::OwnUser(u.to_owned()),
            Cover::Uncovered { team, own } => CoverOwned::Uncovered { team, own },
        });
    }
}

fn scopes_of(bits_held: u8) -> Vec<Scope> {
    [
        (bits::OWN, Scope::Own),
        (bits::TEAM, Scope::Team),
        (bits::ALL, Scope::All),
    ]
    .into_iter()
    .filter(|(b, _)| bits_held & b != 0)
    .map(|(_, s)| s)
    .collect()
}

fn scope_bit(scope: Scope) -> u8 {
    match scope {
        Scope::Own => bits::OWN,
        Scope::Team => bits::TEAM,
        Scope::All => bits::ALL,
    }
}

fn list(items: &[impl AsRef<str>]) -> String {
    let items: Vec<&str> = items.iter().map(|i| i.as_ref()).collect();
    format!("[{}]", items.join(", "))
}

/// Explains the check of the key `prefix` (its cache entry `entry`, if any) for `entitlement`
/// on `resource` at `now`, without its secret: the key's status is judged as a Check judges it,
/// then [`decide_traced`] decides while the explanation records. `lookup` finds the cache entry
/// of each of the requestor's keys.
pub(crate) fn explain(
    entry: Option<&KeyEntry>,
    prefix: &str,
    entitlement: &str,
    resource: ResourceRef<'_>,
    now: i64,
    lookup: impl Fn(&str) -> Option<Arc<KeyEntry>>,
) -> Explanation {
    let Some(entry) = entry else {
        return Explanation {
            decision: Decision::denied(Reason::UnknownKey),
            requestor: String::new(),
            keys: Vec::new(),
            decided_by: None,
            covers: String::new(),
            coverage: format!("no key has the prefix {prefix}"),
        };
    };
    let requestor = &*entry.requestor;
    let who = match &requestor.id {
        super::RequestorId::User(u) => format!("user {u}"),
        super::RequestorId::Project(p) => format!("project {p}"),
    };
    let mut recorder = Recorder::default();
    let decision = match usable(entry, now) {
        Err(reason) => Decision::denied(reason),
        Ok(()) => decide_traced(entry, prefix, entitlement, resource, now, &mut recorder),
    };

    // Each member the decision considered is one key of the requestor: match them up by what
    // a member is built from (team, roles, expiry), among the keys that are members.
    let entries: Vec<Arc<KeyEntry>> = requestor
        .owned_key_prefixes
        .iter()
        .filter_map(|p| lookup(p))
        .collect();
    let mut taken = vec![false; entries.len()];
    let mut member_key: Vec<Option<usize>> = Vec::with_capacity(recorder.members.len());
    for (member, _, _) in &recorder.members {
        let found = entries.iter().enumerate().position(|(i, e)| {
            !taken[i]
                && e.team.id == member.team.id
                && *e.spec.roles == **member.roles()
                && e.spec.expires_at.unix().unwrap_or(super::entry::NEVER) == member.expires_at
                && e.team.active
                && e.spec.status == super::KeyStatus::Active
        });
        if let Some(i) = found {
            taken[i] = true;
        }
        member_key.push(found);
    }
    let keys: Vec<ExplainedKey> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let seen = member_key
                .iter()
                .zip(&recorder.members)
                .find(|(k, _)| **k == Some(i))
                .map(|(_, m)| m);
            let skipped = match seen {
                Some((_, true, _)) => String::new(),
                Some((_, false, _)) => "expired".to_owned(),
                None if decision.reason == Reason::UnknownEntitlement
                    || decision.reason.is_unauthenticated() =>
                {
                    // The decision stopped before it looked at the keys.
                    skipped(&e.spec, e.team.active, now)
                        .map_or("not considered", |s| s.as_str())
                        .to_owned()
                }
                None => skipped(&e.spec, e.team.active, now)
                    .map_or("not a member", |s| s.as_str())
                    .to_owned(),
            };
            ExplainedKey {
                prefix: e.spec.prefix.to_string(),
                team: e.team.id.to_string(),
                roles: e.spec.roles.iter().map(|r| r.to_string()).collect(),
                skipped,
                scopes: seen.map_or_else(Vec::new, |(_, _, b)| scopes_of(*b)),
            }
        })
        .collect();

    // The member whose grant decided, and the role of its key that grants it.
    let decided_by = decision.scope.and_then(|scope| {
        let bit = scope_bit(scope);
        let team = match &recorder.cover {
            Some(CoverOwned::Team(t)) => Some(t.as_str()),
            _ => None,
        };
        let index = recorder.members.iter().position(|(m, live, b)| {
            *live && b & bit != 0 && team.is_none_or(|t| *m.team.id == *t)
        })?;
        let (member, _, _) = &recorder.members[index];
        let catalog = &requestor.catalog;
        let bound = member.roles().iter().filter_map(|r| catalog.role(r));
        let role = std::iter::once(catalog.team_role())
            .chain(bound)
            .find(|r| {
                r.grants
                    .iter()
                    .any(|g| *g.entitlement == *entitlement && g.scope == scope)
            })
            .map_or_else(String::new, |r| r.id.to_string());
        let key = member_key[index].map_or_else(String::new, |i| keys[i].prefix.clone());
        Some(DecidedBy { key, role, scope })
    });

    let owned: Vec<&str> = requestor
        .owned_key_prefixes
        .iter()
        .map(|p| p.as_str())
        .collect();
    let own_reach = match requestor.id.user() {
        Some(u) => format!("data owned by the keys {} or by user {u}", list(&owned)),
        None => format!("data owned by the keys {}", list(&owned)),
    };
    let team_grant_teams: Vec<String> = {
        let mut teams: Vec<String> = recorder
            .members
            .iter()
            .filter(|(_, live, b)| *live && b & bits::TEAM != 0)
            .map(|(m, _, _)| m.team.id.to_string())
            .collect();
        teams.dedup();
        teams
    };
    let covers = match decision.scope {
        None => String::new(),
        Some(Scope::All) => "ALL: every team's data".to_owned(),
        Some(Scope::Team) => format!(
            "TEAM: the data of the teams of the keys that carry it, {}",
            list(&team_grant_teams)
        ),
        Some(Scope::Own) => format!("OWN: {own_reach}"),
    };
    let coverage = match (&decision.reason, &recorder.cover) {
        (Reason::UnknownEntitlement, _) => format!("{entitlement} is not in the catalog"),
        (reason, _) if reason.is_unauthenticated() => format!(
            "the key {prefix} does not authenticate: {}",
            reason.describe()
        ),
        (Reason::NoGrant, _) => format!(
            "no active key of the {who} holds {entitlement} at any scope (TEAM_ROLE and the \
             roles of every active key were looked at)"
        ),
        (_, Some(CoverOwned::Collection(scope))) => format!(
            "a collection call (no resource named): allowed at the widest scope held, {scope}{}",
            if *scope == Scope::All {
                ", with no filter"
            } else {
                ", with the filter the backend applies"
            }
        ),
        (_, Some(CoverOwned::All)) => "an ALL grant covers every resource".to_owned(),
        (_, Some(CoverOwned::Team(t))) => format!("a TEAM grant covers team {t}, the resource's"),
        (_, Some(CoverOwned::OwnKey(k))) => {
            format!("an OWN grant covers it: the owner key {k} is one of the requestor's keys")
        }
        (_, Some(CoverOwned::OwnUser(u))) => {
            format!("an OWN grant covers it: the owner user {u} is the requestor")
        }
        (_, Some(CoverOwned::Uncovered { team, own })) => {
            let mut why = Vec::new();
            if *team {
                why.push(if resource.team_id.is_empty() {
                    format!(
                        "the TEAM grants cover the teams {} but the resource names no team",
                        list(&team_grant_teams)
                    )
                } else {
                    format!(
                        "the TEAM grants cover the teams {}, not {}",
                        list(&team_grant_teams),
                        resource.team_id
                    )
                });
            }
            if *own {
                why.push(format!(
                    "the OWN grant covers {own_reach}, not {}",
                    describe_owner(&resource)
                ));
            }
            why.push("no ALL grant is held".to_owned());
            format!("the resource is not covered: {}", why.join("; "))
        }
        (_, None) => String::new(),
    };
    Explanation {
        decision,
        requestor: who,
        keys,
        decided_by,
        covers,
        coverage,
    }
}

fn describe_owner(resource: &ResourceRef<'_>) -> String {
    match (resource.owner_key_prefix, resource.owner_user_id) {
        ("", "") => "a resource that names no owner".to_owned(),
        (key, "") => format!("owner key {key}"),
        ("", user) => format!("owner user {user}"),
        (key, user) => format!("owner key {key} or owner user {user}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        domain::{Reason, ResourceRef, Scope},
        origin::policy_file,
        state::State,
    };

    const HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    fn state() -> State {
        let text = format!(
            "teams: [{{ id: acme }}, {{ id: globex, status: inactive }}]\n\
             users: [{{ id: dana }}]\n\
             keys:\n\
             - {{ prefix: DanaKey1, secret_sha256: {HASH}, type: team, user: dana, team: acme, roles: [DEVELOPER] }}\n\
             - {{ prefix: DanaKey2, secret_sha256: {HASH}, type: team, user: dana, team: acme, roles: [ACCOUNT_ADMIN], expires_at: \"2090-01-01T00:00:00Z\" }}\n\
             - {{ prefix: DanaKey3, secret_sha256: {HASH}, type: team, user: dana, team: globex, roles: [ACCOUNT_ADMIN] }}\n\
             - {{ prefix: DanaKey4, secret_sha256: {HASH}, type: team, user: dana, team: acme, roles: [AUDITOR], status: inactive }}\n"
        );
        let policy = policy_file::parse(&text, "p.yaml").unwrap();
        State::from_model(&policy.model, 1).unwrap()
    }

    fn team(team_id: &str) -> ResourceRef<'_> {
        ResourceRef {
            team_id,
            ..Default::default()
        }
    }

    #[test]
    fn the_deciding_grant_and_the_skipped_keys_are_named() {
        // Before DanaKey2 expires: its ACCOUNT_ADMIN grant over acme decides.
        let (_, e) = state().explain("DanaKey1", "keys.update", team("acme"), 1_800_000_000);
        assert_eq!(e.decision.reason, Reason::Allowed);
        let by = e.decided_by.unwrap();
        assert_eq!(
            (by.key.as_str(), by.role.as_str()),
            ("DanaKey2", "ACCOUNT_ADMIN")
        );
        assert_eq!(by.scope, Scope::Team);
        let skipped: Vec<(&str, &str)> = e
            .keys
            .iter()
            .map(|k| (k.prefix.as_str(), k.skipped.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("DanaKey1", ""),
                ("DanaKey2", ""),
                ("DanaKey3", "team inactive"),
                ("DanaKey4", "inactive"),
            ]
        );
    }

    #[test]
    fn a_key_expired_since_the_entries_were_built_is_named_expired() {
        // The state was built before 2090; asked after, DanaKey2 no longer counts.
        let (checked, e) = state().explain("DanaKey1", "keys.update", team("acme"), 3_800_000_000);
        assert_eq!(checked.decision.reason, Reason::OutOfScope);
        let key2 = e.keys.iter().find(|k| k.prefix == "DanaKey2").unwrap();
        assert_eq!(key2.skipped, "expired");
        assert!(e.coverage.contains("not covered"), "{}", e.coverage);
        // The same as a check.
        let check = state().check_prefix("DanaKey1", "keys.update", team("acme"), 3_800_000_000);
        assert_eq!(check.decision, checked.decision);
    }
}
