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
