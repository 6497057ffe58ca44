//! Entitlements and roles: the built-in catalog of the platform (docs/catalog.md) and the type that
//! holds it together with custom additions.

use std::{collections::HashMap, sync::Arc};

use super::Scope;

/// Every entitlement of the default platform API, `resource.action`.
pub(crate) const BUILTIN_ENTITLEMENTS: &[&str] = &[
    "accounts.read",
    "accounts.update",
    "users.read",
    "users.create",
    "users.update",
    "keys.read",
    "keys.create",
    "keys.update",
    "keys.replicate",
    "roles.read",
    "roles.create",
    "roles.update",
    "features.manage",
    "teams.read",
    "teams.switch",
    "profile.read",
    "profile.update",
    "projects.read",
    "projects.create",
    "projects.update",
    "jobs.create",
    "jobs.read",
    "jobs.cancel",
    "jobs.close",
    "results.read",
    "results.download",
    "inputs.read",
    "explanations.read",
    "audit.read",
    "statistics.read",
    "dashboard.read",
    "models.read",
    "models.deploy",
    "models.update",
    "models.approve",
    "models.deactivate",
    "autoscaling.update",
    "drift.read",
    "drift.update",
    "utilization.read",
];

/// The role every key carries implicitly.
pub(crate) const TEAM_ROLE: &str = "TEAM_ROLE";
/// The system role of project keys.
pub(crate) const SYSTEM_KEY: &str = "SYSTEM_KEY";
/// The other name the platform uses for [`SYSTEM_KEY`].
pub(crate) const SYSTEM_KEY_ALIAS: &str = "PROJECT";
/// The system role of the project keys that rolegate followers present to their hub.
pub(crate) const FOLLOWER: &str = "FOLLOWER";
/// The entitlement that lets a Watch subscriber receive every key's secret hash. Only the
/// [`FOLLOWER`] system role holds it: no prebuilt user role does.
pub(crate) const KEYS_REPLICATE: &str = "keys.replicate";

/// A prebuilt role: its id, type and grants as (scope, entitlements) groups.
type PrebuiltRole = (
    &'static str,
    RoleType,
    &'static [(Scope, &'static [&'static str])],
);

/// The grants of the prebuilt roles.
const PREBUILT: &[PrebuiltRole] = &[
    (
        "SYSTEM_OWNER",
        RoleType::User,
        &[(
            Scope::All,
            &[
                "accounts.read",
                "accounts.update",
                "users.read",
                "users.create",
                "users.update",
                "keys.read",
                "keys.create",
                "keys.update",
                "roles.read",
                "roles.create",
                "roles.update",
                "features.manage",
                "teams.read",
                "projects.read",
                "jobs.read",
                "jobs.cancel",
                "results.read",
                "results.download",
                "audit.read",
                "statistics.read",
                "dashboard.read",
                "models.read",
            ],
        )],
    ),
    (
        "ACCOUNT_ADMIN",
        RoleType::User,
        &[(
            Scope::Team,
            &[
                "accounts.read",
                "accounts.update",
                "users.read",
                "users.create",
                "users.update",
                "keys.read",
                "keys.create",
                "keys.update",
                "projects.read",
                "projects.create",
                "projects.update",
                "dashboard.read",
                "audit.read",
                "statistics.read",
                "autoscaling.update",
                "drift.read",
                "drift.update",
                "models.read",
                "models.update",
                "models.approve",
                "models.deactivate",
                "jobs.read",
                "jobs.cancel",
                "jobs.close",
                "results.read",
                "results.download",
                "explanations.read",
                "inputs.read",
            ],
        )],
    ),
    (
        "DATA_SCIENTIST",
        RoleType::User,
        &[
            (Scope::Team, &["models.read"]),
            (
                Scope::Own,
                &[
                    "models.deploy",
                    "models.update",
                    "projects.read",
                    "projects.create",
                    "jobs.create",
                    "jobs.read",
                    "jobs.cancel",
                    "jobs.close",
                    "results.read",
                    "results.download",
                    "inputs.read",
                    "explanations.read",
                    "drift.read",
                    "drift.update",
                    "utilization.read",
                ],
            ),
        ],
    ),
    (
        "DEVELOPER",
        RoleType::User,
        &[
            (Scope::Team, &["models.read"]),
            (
                Scope::Own,
                &[
                    "projects.read",
                    "projects.create",
                    "jobs.create",
                    "jobs.read",
                    "jobs.cancel",
                    "jobs.close",
                    "results.read",
                    "results.download",
                    "inputs.read",
                ],
            ),
        ],
    ),
    (
        "AUDITOR",
        RoleType::User,
        &[(
            Scope::All,
            &[
                "accounts.read",
                "users.read",
                "keys.read",
                "roles.read",
                "teams.read",
                "projects.read",
                "jobs.read",
                "results.read",
                "audit.read",
                "statistics.read",
                "dashboard.read",
                "models.read",
                "drift.read",
            ],
        )],
    ),
    (
        SYSTEM_KEY,
        RoleType::System,
        &[
            (Scope::Team, &["models.read"]),
            (
                Scope::Own,
                &[
                    "jobs.create",
                    "jobs.read",
                    "jobs.cancel",
                    "jobs.close",
                    "results.read",
                    "results.download",
                    "inputs.read",
                ],
            ),
        ],
    ),
    (
        FOLLOWER,
        RoleType::System,
        &[(
            Scope::All,
            &[
                "accounts.read",
                "users.read",
                "projects.read",
                "keys.read",
                "roles.read",
                KEYS_REPLICATE,
            ],
        )],
    ),
    (
        TEAM_ROLE,
        RoleType::Implicit,
        &[(
            Scope::Own,
            &[
                "profile.read",
                "profile.update",
                "keys.read",
                "keys.update",
                "teams.read",
                "teams.switch",
            ],
        )],
    ),
];

/// Which keys a role may be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleType {
    /// Team keys only.
    User,
    /// Project keys only.
    System,
    /// TEAM_ROLE: on every key, never bound explicitly.
    Implicit,
}

impl RoleType {
    /// The lower-case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleType::User => "user",
            RoleType::System => "system",
            RoleType::Implicit => "implicit",
        }
    }
}

/// One (entitlement, scope) pair of a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    pub entitlement: Arc<str>,
    pub scope: Scope,
}

/// A named set of grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub id: Arc<str>,
    pub role_type: RoleType,
    pub grants: Vec<Grant>,
    /// One of the platform's prebuilt roles (kept unless a policy overrides it explicitly).
    pub prebuilt: bool,
}

/// The entitlements and roles in force: the built-in ones plus custom additions.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Each entitlement with a small id, so that per-role grants are a dense array indexed by it
    /// (ids of removed entitlements are not reused). Every check looks one up: hashed for speed
    /// (foldhash, randomly seeded), as only origins add entitlements and a caller's string is
    /// only looked up.
    entitlements: HashMap<Arc<str>, u16, foldhash::fast::RandomState>,
    next_id: u16,
    roles: HashMap<Arc<str>, Arc<Role>>,
    team_role: Arc<Role>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The platform's default catalog: its entitlements, five prebuilt user roles, the system
    /// roles SYSTEM_KEY and FOLLOWER, and TEAM_ROLE.
    pub(crate) fn builtin() -> Self {
        let entitlements: HashMap<Arc<str>, u16, _> = BUILTIN_ENTITLEMENTS
            .iter()
            .zip(0u16..)
            .map(|(e, id)| (Arc::from(*e), id))
            .collect();
        let next_id = entitlements.len() as u16;
        let mut roles = HashMap::new();
        for (id, role_type, sets) in PREBUILT {
            let grants = sets
                .iter()
                .flat_map(|(scope, ents)| {
                    ents.iter().map(|e| Grant {
                        entitlement: Arc::from(*e),
                        scope: *scope,
                    })
                })
                .collect();
            let role = Arc::new(Role {
                id: Arc::from(*id),
                role_type: *role_type,
                grants,
                prebuilt: true,
            });
            roles.insert(role.id.clone(), role);
        }
        let team_role = roles[TEAM_ROLE].clone();
        Catalog {
            entitlements,
            next_id,
            roles,
            team_role,
        }
    }

    /// Whether `entitlement` is known (built in or added).
    pub(crate) fn has_entitlement(&self, entitlement: &str) -> bool {
        self.entitlements.contains_key(entitlement)
    }

    /// The id of a known entitlement.
    pub(crate) fn entitlement_id(&self, entitlement: &str) -> Option<u16> {
        self.entitlements.get(entitlement).copied()
    }

    /// One more than the largest entitlement id: the length of a dense per-entitlement array.
    pub(crate) fn id_bound(&self) -> usize {
        self.next_id as usize
    }

    /// Adds an entitlement; returns false when it was already known.
    pub(crate) fn add_entitlement(&mut self, entitlement: &str) -> bool {
        if self.entitlements.contains_key(entitlement) || self.next_id == u16::MAX {
            return false;
        }
        self.entitlements
            .insert(Arc::from(entitlement), self.next_id);
        self.next_id += 1;
        true
    }

    /// Removes an added entitlement (built-in ones stay); returns whether it was removed.
    pub(crate) fn remove_entitlement(&mut self, entitlement: &str) -> bool {
        !BUILTIN_ENTITLEMENTS.contains(&entitlement)
            && self.entitlements.remove(entitlement).is_some()
    }

    /// The entitlements that are not built in, sorted.
    pub fn added_entitlements(&self) -> Vec<Arc<str>> {
        let mut added: Vec<_> = self
            .entitlements
            .keys()
            .filter(|e| !BUILTIN_ENTITLEMENTS.contains(&&***e))
            .cloned()
            .collect();
        added.sort();
        added
    }

    /// The role named `id`; `PROJECT` is read as `SYSTEM_KEY`.
    pub fn role(&self, id: &str) -> Option<&Arc<Role>> {
        self.roles.get(canonical_role_id(id))
    }

    /// All roles, in no particular order.
    pub fn roles(&self) -> impl Iterator<Item = &Arc<Role>> {
        self.roles.values()
    }

    /// The implicit role every key carries.
    pub fn team_role(&self) -> &Arc<Role> {
        &self.team_role
    }

    /// Defines or replaces a role. Replacing TEAM_ROLE also replaces the implicit grants.
    pub fn put_role(&mut self, role: Arc<Role>) {
        if &*role.id == TEAM_ROLE {
            self.team_role = role.clone();
        }
        self.roles.insert(role.id.clone(), role);
    }

    /// Removes a role; a prebuilt role goes back to its built-in definition.
    pub(crate) fn remove_role(&mut self, id: &str) {
        match Catalog::builtin().roles.remove(id) {
            Some(builtin) => self.put_role(builtin),
            None => {
                self.roles.remove(id);
            }
        }
    }

    /// Whether `id` names one of the built-in roles (or the `PROJECT` alias).
    pub(crate) fn is_prebuilt(id: &str) -> bool {
        let id = canonical_role_id(id);
        PREBUILT.iter().any(|(name, _, _)| *name == id)
    }
}

// Equal when they know the same entitlements and roles, whatever ids the entitlements got.
impl PartialEq for Catalog {
    fn eq(&self, other: &Self) -> bool {
        self.entitlements.len() == other.entitlements.len()
            && self
                .entitlements
                .keys()
                .all(|e| other.entitlements.contains_key(e))
            && self.roles == other.roles
    }
}

impl Eq for Catalog {}

/// Maps the `PROJECT` alias to `SYSTEM_KEY`; every other id is returned as is.
pub(crate) fn canonical_role_id(id: &str) -> &str {
    if id == SYSTEM_KEY_ALIAS {
        SYSTEM_KEY
    } else {
        id
    }
}

/// Whether `id` is `resource.action`: lower-case letters, digits, `_` and `-`, one dot.
pub fn is_valid_entitlement(id: &str) -> bool {
    let Some((resource, action)) = id.split_once('.') else {
        return false;
    };
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    part(resource) && part(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prebuilt_grant_names_a_known_entitlement() {
        let catalog = Catalog::builtin();
        for role in catalog.roles() {
            for grant in &role.grants {
                assert!(
                    catalog.has_entitlement(&grant.entitlement),
                    "{} grants unknown {}",
                    role.id,
                    grant.entitlement
                );
            }
        }
        assert_eq!(
            catalog.roles().count(),
            8,
            "five user roles, SYSTEM_KEY, FOLLOWER and TEAM_ROLE"
        );
    }

    #[test]
    fn only_the_follower_system_role_may_replicate_secrets() {
        let catalog = Catalog::builtin();
        let holders: Vec<&str> = catalog
            .roles()
            .filter(|r| r.grants.iter().any(|g| &*g.entitlement == KEYS_REPLICATE))
            .map(|r| &*r.id)
            .collect();
        assert_eq!(holders, [FOLLOWER]);
        let follower = catalog.role(FOLLOWER).unwrap();
        assert_eq!(
            follower.role_type,
            RoleType::System,
            "bound to project keys"
        );
        assert!(follower.grants.iter().all(|g| g.scope == Scope::All));
        let mut granted: Vec<&str> = follower.grants.iter().map(|g| &*g.entitlement).collect();
        granted.sort();
        assert_eq!(
            granted,
            [
                "accounts.read",
                "keys.read",
                "keys.replicate",
                "projects.read",
                "roles.read",
                "users.read"
            ]
        );
        assert!(Catalog::is_prebuilt(FOLLOWER));
    }

    #[test]
    fn project_is_an_alias_of_system_key() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.role("PROJECT").unwrap().id.as_ref(), SYSTEM_KEY);
        assert_eq!(catalog.role("PROJECT").unwrap().role_type, RoleType::System);
        assert!(Catalog::is_prebuilt("PROJECT"));
    }

    #[test]
    fn auditor_is_view_only() {
        let catalog = Catalog::builtin();
        let auditor = catalog.role("AUDITOR").unwrap();
        assert!(
            auditor
                .grants
                .iter()
                .all(|g| g.entitlement.ends_with(".read"))
        );
        assert!(auditor.grants.iter().all(|g| g.scope == Scope::All));
    }

    #[test]
    fn added_entitlements_are_listed_and_removable_builtins_are_not() {
        let mut catalog = Catalog::builtin();
        assert!(catalog.add_entitlement("reports.export"));
        assert!(!catalog.add_entitlement("reports.export"));
        assert_eq!(
            catalog.added_entitlements(),
            vec![Arc::<str>::from("reports.export")]
        );
        assert!(!catalog.remove_entitlement("jobs.read"));
        assert!(catalog.remove_entitlement("reports.export"));
        assert!(!catalog.has_entitlement("reports.export"));
    }
}
