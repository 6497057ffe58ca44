//! No escalation, as in Kubernetes RBAC: a caller may bind a role to a key, or define a role,
//! only when it already holds every grant of that role at an equal or wider scope over the
//! target team. Pure: it compares the caller's effective grants with the role's.

use std::sync::Arc;

use super::{GrantSet, Role, Scope};

/// A grant of the role that the caller does not hold widely enough.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "role {role} grants {entitlement} at {scope}{}, which the caller does not hold at that scope",
    team.as_ref().map(|t| format!(" over team {t}")).unwrap_or_default()
)]
pub struct Escalation {
    pub role: Arc<str>,
    pub entitlement: Arc<str>,
    pub scope: Scope,
    pub team: Option<Arc<str>>,
}

/// Whether `caller` holds `entitlement` at `scope` or wider over `team`:
/// - ALL needs ALL;
/// - TEAM needs ALL, or TEAM over `team` (over some team when no team is given: a role
///   definition is not tied to one);
/// - OWN needs any of ALL, TEAM over `team`, or OWN.
pub fn holds(caller: &GrantSet, entitlement: &str, scope: Scope, team: Option<&str>) -> bool {
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

/// Checks that `caller` holds every grant of `role` over `team` (`None`: defining a role, not
/// binding it). Returns the first grant it lacks.
pub fn check_no_escalation(
    caller: &GrantSet,
    role: &Role,
    team: Option<&str>,
) -> Result<(), Escalation> {
    for grant in &role.grants {
        if !holds(caller, &grant.entitlement, grant.scope, team) {
            return Err(Escalation {
                role: role.id.clone(),
                entitlement: grant.entitlement.clone(),
                scope: grant.scope,
                team: team.map(Arc::from),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Catalog, Grant, RoleType, entry::GrantSet};

    fn grants(members: &[(&str, &[&str])]) -> GrantSet {
        let catalog = Catalog::builtin();
        let members: Vec<(Arc<str>, Vec<Arc<str>>)> = members
            .iter()
            .map(|(team, roles)| {
                (
                    Arc::from(*team),
                    roles.iter().map(|r| Arc::from(*r)).collect(),
                )
            })
            .collect();
        GrantSet::build(&catalog, members.iter().map(|(t, r)| (t, &r[..])))
    }

    fn role(id: &str) -> Arc<Role> {
        Catalog::builtin().role(id).unwrap().clone()
    }

    fn custom(grants: &[(&str, Scope)]) -> Role {
        Role {
            id: "CUSTOM".into(),
            role_type: RoleType::User,
            grants: grants
                .iter()
                .map(|(e, s)| Grant {
                    entitlement: Arc::from(*e),
                    scope: *s,
                })
                .collect(),
            prebuilt: false,
        }
    }

    #[test]
    fn bindings_are_judged_against_the_callers_grants_over_the_target_team() {
        let admin_acme = grants(&[("acme", &["ACCOUNT_ADMIN"])]);
        let owner = grants(&[("system", &["SYSTEM_OWNER"])]);
        let developer = grants(&[("acme", &["DEVELOPER"])]);
        let auditor_role = role("AUDITOR");
        let admin_role = role("ACCOUNT_ADMIN");
        let owner_role = role("SYSTEM_OWNER");
        let cases: &[(&str, &GrantSet, &Role, Option<&str>, bool)] = &[
            // An ACCOUNT_ADMIN cannot grant SYSTEM_OWNER (ALL grants it lacks).
            (
                "admin binds owner",
                &admin_acme,
                &owner_role,
                Some("acme"),
                false,
            ),
            // …can bind its own role in its team…
            (
                "admin binds admin in own team",
                &admin_acme,
                &admin_role,
                Some("acme"),
                true,
            ),
            // …but not in another team.
            (
                "admin binds admin elsewhere",
                &admin_acme,
                &admin_role,
                Some("globex"),
                false,
            ),
            // AUDITOR is ALL-scoped reads: an ACCOUNT_ADMIN holds them only at TEAM.
            (
                "admin binds auditor",
                &admin_acme,
                &auditor_role,
                Some("acme"),
                false,
            ),
            // A DEVELOPER cannot give itself ACCOUNT_ADMIN.
            (
                "developer binds admin",
                &developer,
                &admin_role,
                Some("acme"),
                false,
            ),
            // SYSTEM_OWNER holds all of its own grants at ALL, so anywhere.
            (
                "owner binds owner",
                &owner,
                &owner_role,
                Some("globex"),
                true,
            ),
        ];
        for (name, caller, role, team, want) in cases {
            assert_eq!(
                check_no_escalation(caller, role, *team).is_ok(),
                *want,
                "{name}"
            );
        }
    }

    #[test]
    fn the_first_missing_grant_is_reported() {
        let admin_acme = grants(&[("acme", &["ACCOUNT_ADMIN"])]);
        let err =
            check_no_escalation(&admin_acme, &role("SYSTEM_OWNER"), Some("acme")).unwrap_err();
        assert_eq!(&*err.role, "SYSTEM_OWNER");
        assert_eq!(err.scope, Scope::All);
        assert!(err.to_string().contains("over team acme"), "{err}");
    }

    #[test]
    fn role_definitions_need_each_grant_at_an_equal_or_wider_scope() {
        let ds = grants(&[("acme", &["DATA_SCIENTIST"])]);
        // models.read is held at TEAM: a role granting it at OWN or TEAM is fine, ALL is not.
        assert!(check_no_escalation(&ds, &custom(&[("models.read", Scope::Own)]), None).is_ok());
        assert!(check_no_escalation(&ds, &custom(&[("models.read", Scope::Team)]), None).is_ok());
        assert!(check_no_escalation(&ds, &custom(&[("models.read", Scope::All)]), None).is_err());
        // models.deploy is held at OWN only.
        assert!(check_no_escalation(&ds, &custom(&[("models.deploy", Scope::Own)]), None).is_ok());
        assert!(
            check_no_escalation(&ds, &custom(&[("models.deploy", Scope::Team)]), None).is_err()
        );
        // Not held at all.
        assert!(check_no_escalation(&ds, &custom(&[("audit.read", Scope::Own)]), None).is_err());
        // An empty role escalates nothing.
        assert!(check_no_escalation(&ds, &custom(&[]), None).is_ok());
    }

    #[test]
    fn grants_of_several_keys_add_up_but_team_grants_stay_in_their_team() {
        let caller = grants(&[("acme", &["ACCOUNT_ADMIN"]), ("globex", &["DEVELOPER"])]);
        assert!(holds(&caller, "jobs.read", Scope::Team, Some("acme")));
        assert!(!holds(&caller, "jobs.read", Scope::Team, Some("globex")));
        assert!(holds(&caller, "jobs.read", Scope::Own, Some("globex")));
        assert!(!holds(&caller, "jobs.read", Scope::All, Some("acme")));
    }
}
