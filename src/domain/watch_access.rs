//! Who may Watch: the grants a subscriber's key must hold, decided from its cache entry with the
//! same `decide` as a Check.
//!
//! A Watch stream carries the whole state (every team, user, project, key binding and role), so
//! it is open only to a key that could read all of it through the Admin API: the reads of
//! [`WATCH_READS`] at ALL scope (AUDITOR and SYSTEM_OWNER hold them). Secret hashes go further
//! (whoever holds them can test guessed secrets offline), so they need [`KEYS_REPLICATE`] at ALL,
//! which only the FOLLOWER system role holds.

use super::{
    KeyEntry, ResourceRef, Scope,
    catalog::KEYS_REPLICATE,
    decide::{Reason, decide},
    entry::NEVER,
};

/// The entitlements a key must hold at ALL scope to Watch at all.
pub(crate) const WATCH_READS: [&str; 5] = [
    "accounts.read",
    "users.read",
    "projects.read",
    "keys.read",
    "roles.read",
];

/// Why a key may not (or may no longer) Watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchDenied {
    /// The key does not authenticate (unknown, wrong secret, inactive, expired, team or user
    /// inactive).
    Unauthenticated(Reason),
    /// The key authenticates but does not hold this entitlement at ALL scope.
    Missing(&'static str),
}

/// What a key that may Watch receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WatchAccess {
    /// Whether the key's secret hashes are sent (asked for, and [`KEYS_REPLICATE`] held).
    pub(crate) secrets: bool,
    /// The next instant (unix seconds) at which the answer may change with no new revision: the
    /// expiry of the key itself or of another key of its requestor whose grants it shares
    /// ([`NEVER`] when there is none).
    pub(crate) recheck_at: i64,
}

/// Decides whether the key of `entry`, already authenticated ([`super::authenticate`]), may
/// Watch at `now`, and with the
/// secret hashes when `secrets` is asked for (asking without [`KEYS_REPLICATE`] is refused, not
/// quietly answered without them).
pub(crate) fn watch_access(
    entry: &KeyEntry,
    secrets: bool,
    now: i64,
) -> Result<WatchAccess, WatchDenied> {
    let needed = WATCH_READS.iter().chain(secrets.then_some(&KEYS_REPLICATE));
    for entitlement in needed {
        let decision = decide(entry, entitlement, ResourceRef::default(), now);
        if decision.scope != Some(Scope::All) {
            return Err(WatchDenied::Missing(entitlement));
        }
    }
    let own = entry.spec.expires_at.unix().unwrap_or(NEVER);
    let members = entry
        .requestor
        .members
        .iter()
        .map(|m| m.expires_at)
        .filter(|at| *at > now);
    Ok(WatchAccess {
        secrets,
        recheck_at: members.fold(own, i64::min),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{
        Catalog, Expiry, KeyStatus, KeyType, Project,
        catalog::FOLLOWER,
        entry::{GrantInterner, build_requestor},
        model::tests::{model, project_key, team_key},
    };

    /// The entry of `prefix` in `m`, built at `now`.
    fn entry_of(m: &crate::domain::Model, prefix: &str, now: i64) -> Arc<KeyEntry> {
        let spec = m.keys.get(prefix).unwrap();
        let id = crate::domain::RequestorId::of(spec);
        let prefixes: Vec<compact_str::CompactString> = m
            .keys
            .values()
            .filter(|k| crate::domain::RequestorId::of(k) == id)
            .map(|k| k.prefix.clone())
            .collect();
        let catalog = Arc::new(m.catalog.clone());
        let (_, entries) = build_requestor(
            m,
            &catalog,
            &id,
            &prefixes,
            now,
            &mut GrantInterner::default(),
        );
        entries
            .into_iter()
            .find(|e| e.spec.prefix == prefix)
            .unwrap()
    }

    fn with_followers(mut keys: Vec<crate::domain::KeySpec>) -> crate::domain::Model {
        keys.push(project_key("FollowKey01", "followers", &[FOLLOWER]));
        let mut m = model(keys);
        m.projects.insert(
            "followers".into(),
            Project {
                id: "followers".into(),
                team: "acme".into(),
                name: "Followers".into(),
            },
        );
        m
    }

    #[test]
    fn watch_needs_every_read_at_all_and_secrets_need_keys_replicate() {
        let m = with_followers(vec![
            team_key("AuditKey01", "alice", "acme", &["AUDITOR"]),
            team_key("OwnerKey01", "bob", "acme", &["SYSTEM_OWNER"]),
            team_key("AdminKey01", "carol", "acme", &["ACCOUNT_ADMIN"]),
            team_key("DevKey0001", "dave", "acme", &["DEVELOPER"]),
        ]);
        assert!(m.validate().is_empty(), "{:?}", m.validate());
        let cases: &[(&str, bool, Result<bool, WatchDenied>)] = &[
            ("AuditKey01", false, Ok(false)),
            (
                "AuditKey01",
                true,
                Err(WatchDenied::Missing(KEYS_REPLICATE)),
            ),
            ("OwnerKey01", false, Ok(false)),
            (
                "OwnerKey01",
                true,
                Err(WatchDenied::Missing(KEYS_REPLICATE)),
            ),
            ("FollowKey01", false, Ok(false)),
            ("FollowKey01", true, Ok(true)),
            // TEAM scope is not enough: the stream shows every team.
            (
                "AdminKey01",
                false,
                Err(WatchDenied::Missing("accounts.read")),
            ),
            (
                "DevKey0001",
                false,
                Err(WatchDenied::Missing("accounts.read")),
            ),
        ];
        for (prefix, secrets, want) in cases {
            let entry = entry_of(&m, prefix, 1000);
            let got = watch_access(&entry, *secrets, 1000).map(|a| a.secrets);
            assert_eq!(&got, want, "{prefix} secrets={secrets}");
        }
    }

    #[test]
    fn no_prebuilt_user_role_may_replicate_secrets() {
        let catalog = Catalog::builtin();
        for role in catalog
            .roles()
            .filter(|r| r.role_type == crate::domain::RoleType::User)
        {
            let m = model(vec![team_key("SomeKey001", "erin", "acme", &[&role.id])]);
            let entry = entry_of(&m, "SomeKey001", 1000);
            assert!(
                watch_access(&entry, true, 1000).is_err(),
                "{} may receive secret hashes",
                role.id
            );
        }
    }

    #[test]
    fn the_answer_is_rechecked_when_a_key_that_contributes_expires() {
        let mut own = project_key("FollowKey01", "followers", &[FOLLOWER]);
        own.expires_at = Expiry::at(5000).unwrap();
        let mut other = project_key("FollowKey02", "followers", &[FOLLOWER]);
        other.expires_at = Expiry::at(3000).unwrap();
        let mut m = with_followers(vec![]);
        m.keys.insert(own.prefix.clone(), Arc::new(own));
        m.keys.insert(other.prefix.clone(), Arc::new(other));
        let entry = entry_of(&m, "FollowKey01", 1000);
        assert_eq!(watch_access(&entry, true, 1000).unwrap().recheck_at, 3000);
        assert_eq!(watch_access(&entry, true, 3000).unwrap().recheck_at, 5000);
        let forever = entry_of(&with_followers(vec![]), "FollowKey01", 1000);
        assert_eq!(
            watch_access(&forever, true, 1000).unwrap().recheck_at,
            NEVER
        );
    }

    #[test]
    fn an_inactive_follower_key_holds_no_grant() {
        let mut m = with_followers(vec![]);
        let mut k = (*m.keys["FollowKey01"]).clone();
        k.status = KeyStatus::Inactive;
        assert_eq!(k.key_type, KeyType::Project);
        m.keys.insert(k.prefix.clone(), Arc::new(k));
        let entry = entry_of(&m, "FollowKey01", 1000);
        // Its grants are gone (authenticating it fails first; this holds even without that).
        assert_eq!(
            watch_access(&entry, true, 1000),
            Err(WatchDenied::Missing("accounts.read"))
        );
    }
}
