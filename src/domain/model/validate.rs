//! The rules a valid model obeys (rules 1 and 2 of the catalog and referential integrity).

use std::sync::Arc;

use super::{Change, KeySpec, Model, ModelViolation, ObjectRef};
use crate::domain::{
    KeyType, Role, RoleType,
    catalog::TEAM_ROLE,
    key::is_valid_prefix,
    route::{RouteSpec, shape},
};

impl Model {
    /// Every rule the state breaks, in a stable order (sorted by object).
    pub fn validate(&self) -> Vec<ModelViolation> {
        let mut out = Vec::new();
        for role in self.catalog.roles() {
            self.validate_role(role, &mut out);
        }
        for project in self.projects.values() {
            if !self.teams.contains_key(&project.team) {
                out.push(violation(
                    ObjectRef::Project(project.id.clone()),
                    "team",
                    format!("team {} does not exist", project.team),
                ));
            }
        }
        for user in self.users.values() {
            for team in user.teams.iter() {
                if !self.teams.contains_key(team) {
                    out.push(violation(
                        ObjectRef::User(user.id.clone()),
                        "teams",
                        format!("team {team} does not exist"),
                    ));
                }
            }
        }
        for key in self.keys.values() {
            self.validate_key(key, &mut out);
        }
        if let Some(routes) = &self.routes {
            self.validate_routes(routes, &mut out);
        }
        out.sort_by(|a, b| {
            (format!("{}", a.object), a.field).cmp(&(format!("{}", b.object), b.field))
        });
        out
    }

    fn validate_role(&self, role: &Role, out: &mut Vec<ModelViolation>) {
        let object = || ObjectRef::Role(role.id.clone());
        if !is_valid_role_id(&role.id) {
            out.push(violation(
                object(),
                "id",
                "a role id is 1 to 64 characters of [A-Z0-9_]".into(),
            ));
        }
        if role.role_type == RoleType::Implicit && &*role.id != TEAM_ROLE {
            out.push(violation(
                object(),
                "type",
                "only TEAM_ROLE is implicit; a role is of type user or system".into(),
            ));
        }
        for grant in &role.grants {
            if !self.catalog.has_entitlement(&grant.entitlement) {
                out.push(violation(
                    object(),
                    "grants",
                    format!(
                        "entitlement {} is not in the catalog (add it under entitlements:)",
                        grant.entitlement
                    ),
                ));
            }
        }
    }

    /// The rules a route table breaks: each route alone ([`RouteSpec::problems`]), its
    /// entitlement in the catalog, and no two routes matching the same requests.
    fn validate_routes(&self, routes: &[RouteSpec], out: &mut Vec<ModelViolation>) {
        let mut shapes: std::collections::HashMap<String, usize> = Default::default();
        for (i, route) in routes.iter().enumerate() {
            for (field, message) in route.problems() {
                out.push(violation(ObjectRef::Route(i), field, message));
            }
            if !self.catalog.has_entitlement(&route.entitlement) {
                out.push(violation(
                    ObjectRef::Route(i),
                    "entitlement",
                    format!(
                        "{} is not in the catalog (add it under entitlements:)",
                        route.entitlement
                    ),
                ));
            }
            if let Some(first) = shapes.insert(shape(&route.method, &route.path), i) {
                out.push(violation(
                    ObjectRef::Route(i),
                    "path",
                    format!("matches the same requests as routes[{first}]"),
                ));
            }
        }
    }

    /// The rules the model breaks after `changes` were applied to a valid model: only the keys
    /// put when the changes touch nothing but keys (the common write, and nothing refers to a
    /// key), else the whole model.
    pub(crate) fn validate_after(&self, changes: &[Change]) -> Vec<ModelViolation> {
        let only_keys = changes
            .iter()
            .all(|c| matches!(c, Change::PutKey(_) | Change::RemoveKey(_)));
        if !only_keys {
            return self.validate();
        }
        self.validate_keys(changes.iter().filter_map(|c| match c {
            Change::PutKey(k) => Some(&**k),
            _ => None,
        }))
    }

    /// The rules that one key breaks. Nothing refers to a key, so after changes that only put or
    /// remove keys, checking the keys put is as good as [`Model::validate`] (writers use this to
    /// avoid a whole-model pass per write).
    pub(crate) fn validate_keys<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k KeySpec>,
    ) -> Vec<ModelViolation> {
        let mut out = Vec::new();
        for key in keys {
            self.validate_key(key, &mut out);
        }
        out
    }

    fn validate_key(&self, key: &KeySpec, out: &mut Vec<ModelViolation>) {
        let object = || ObjectRef::Key(Arc::from(key.prefix.as_str()));
        let mut fault = |field: &'static str, message: String| {
            out.push(violation(object(), field, message));
        };
        if !is_valid_prefix(&key.prefix) {
            fault(
                "prefix",
                "a prefix is 4 to 64 characters of [A-Za-z0-9_-]".into(),
            );
        }
        // That a team key has a user and no project (and a project key the reverse) is in its
        // type: the origins' parsers refuse the others (`KeySpec::owner_of`).
        match key.key_type {
            KeyType::Team => self.team_key_owner(key, &mut fault),
            KeyType::Project => self.project_key_owner(key, &mut fault),
        }
        for role_id in key.roles.iter() {
            let Some(role) = self.catalog.role(role_id) else {
                fault("roles", format!("role {role_id} does not exist"));
                continue;
            };
            let wrong = match (key.key_type, role.role_type) {
                (KeyType::Team, RoleType::System) => {
                    format!("role {role_id} is a system role and cannot be bound to a team key")
                }
                (KeyType::Project, RoleType::User) => {
                    format!("role {role_id} is a user role and cannot be bound to a project key")
                }
                (_, RoleType::Implicit) => {
                    "TEAM_ROLE is on every key and is not bound explicitly".into()
                }
                _ => continue,
            };
            fault("roles", wrong);
        }
    }

    /// A team key's user exists and may be in its team, which exists.
    fn team_key_owner(&self, key: &KeySpec, fault: &mut impl FnMut(&'static str, String)) {
        let user = &key.owner;
        match self.users.get(user) {
            None => fault("user", format!("user {user} does not exist")),
            Some(u) => {
                if let Some(team) = &key.team
                    && !u.teams.is_empty()
                    && !u.teams.contains(team)
                {
                    fault(
                        "team",
                        format!("user {user} is not a member of team {team}"),
                    );
                }
            }
        }
        match &key.team {
            None => fault("team", "a team key names its team".into()),
            Some(team) if !self.teams.contains_key(team) => {
                fault("team", format!("team {team} does not exist"))
            }
            Some(_) => {}
        }
    }

    /// A project key's project exists, and a team it names is the project's.
    fn project_key_owner(&self, key: &KeySpec, fault: &mut impl FnMut(&'static str, String)) {
        let project = &key.owner;
        match self.projects.get(project) {
            None => fault("project", format!("project {project} does not exist")),
            Some(p) => {
                if let Some(team) = &key.team
                    && *team != p.team
                {
                    fault(
                        "team",
                        format!(
                            "a project key's team is its project's ({}), not {team}",
                            p.team
                        ),
                    );
                }
            }
        }
    }
}

fn violation(object: ObjectRef, field: &'static str, message: String) -> ModelViolation {
    ModelViolation {
        object,
        field,
        message,
    }
}

/// Whether `id` is a well-formed role id: 1 to 64 characters of `[A-Z0-9_]`.
pub(crate) fn is_valid_role_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}
