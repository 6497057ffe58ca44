//! The whole authorization state as data: teams, users, projects, keys, the catalog and the route
//! table; the rules a valid state obeys (catalog.md rules 1–2 and referential integrity); and
//! [`Change`], the unit in which it evolves, with [`Model::diff`] to compute the changes between
//! two states.

use std::{borrow::Borrow, fmt, sync::Arc};

use compact_str::CompactString;

use super::{
    Catalog, IdMap, KeyStatus, KeyType, Role, RoleType, SecretHash,
    catalog::{TEAM_ROLE, canonical_role_id},
    idmap::HasId,
    key::{Expiry, is_valid_prefix},
    route::{RouteSpec, shape},
};

/// A group of users (an "account" on the platform). Keys and data belong to a team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    pub id: Arc<str>,
    pub name: String,
    /// An inactive team's keys are unauthenticated.
    pub active: bool,
}

/// A person. May be in several teams and hold several keys.
///
/// Shared (`Arc`) between the model's user map, the change that put it and any other copy of
/// the model an origin keeps, so a user is stored once however many models name it. A name of
/// up to 24 bytes is held inline (no allocation) and the team list is a shared [`TeamList`]: a
/// user is 56 bytes with nothing else to allocate but its id. (Held inline in the map instead,
/// each user cost a 64-byte slot at the table's load of ~60 %, and every copy of the model held
/// its own.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Arc<str>,
    pub name: compact_str::CompactString,
    /// An inactive user's keys are unauthenticated.
    pub active: bool,
    /// The teams the user belongs to. When not empty, the user's team keys must be in one of
    /// them; when empty, membership is implied by the user's keys.
    pub teams: TeamList,
}

/// A user's team list behind one thin pointer, shared between users with the same list when an
/// origin interns them ([`super::Interner::teams`]): most users of a team list just that team.
/// Empty without an allocation. With it, a user is 56 bytes and fills an 80-byte block with its
/// reference counts (64 bytes would take a 96-byte one). Compared and hashed as the slice of
/// team ids, so an interner finds a list by a slice before allocating one.
#[derive(Clone, Default)]
pub struct TeamList(Option<Arc<Box<[Arc<str>]>>>);

impl std::ops::Deref for TeamList {
    type Target = [Arc<str>];

    fn deref(&self) -> &[Arc<str>] {
        self.0.as_deref().map_or(&[], |teams| teams)
    }
}

impl Borrow<[Arc<str>]> for TeamList {
    fn borrow(&self) -> &[Arc<str>] {
        self
    }
}

impl PartialEq for TeamList {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for TeamList {}

impl std::hash::Hash for TeamList {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for TeamList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl FromIterator<Arc<str>> for TeamList {
    fn from_iter<I: IntoIterator<Item = Arc<str>>>(teams: I) -> Self {
        let teams: Box<[Arc<str>]> = teams.into_iter().collect();
        TeamList((!teams.is_empty()).then(|| Arc::new(teams)))
    }
}

impl From<&[Arc<str>]> for TeamList {
    fn from(teams: &[Arc<str>]) -> Self {
        teams.iter().cloned().collect()
    }
}

impl From<Vec<Arc<str>>> for TeamList {
    fn from(teams: Vec<Arc<str>>) -> Self {
        teams.into_iter().collect()
    }
}

impl<const N: usize> From<[Arc<str>; N]> for TeamList {
    fn from(teams: [Arc<str>; N]) -> Self {
        teams.into_iter().collect()
    }
}

/// A project of a team; it owns project keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: Arc<str>,
    pub team: Arc<str>,
    pub name: String,
}

/// An API key's binding: who it belongs to, its roles and status. The secret itself is never
/// here, only its SHA-256.
///
/// The fields that authenticate a key come first and in this order (`repr(C)`): a check reads
/// them from one cache line, and the cache entry does not keep a second copy of them. The prefix
/// is held inline and the owner in one field, so a binding is 112 bytes and, with its reference
/// counts, fills a 128-byte allocation (a million keys hold a million of these).
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct KeySpec {
    pub secret_hash: SecretHash,
    /// The key is unauthenticated from this instant on.
    pub expires_at: Expiry,
    pub status: KeyStatus,
    pub key_type: KeyType,
    pub prefix: CompactString,
    /// The user of a team key, the project of a project key ([`KeySpec::owner_of`]).
    pub owner: Arc<str>,
    /// The team of a team key. A project key's team is its project's; when a project key names
    /// one, it must be that team.
    pub team: Option<Arc<str>>,
    /// Bound roles, canonical ids (`PROJECT` is stored as `SYSTEM_KEY`), without TEAM_ROLE.
    pub roles: Arc<[Arc<str>]>,
}

/// Why the user and project given for a key cannot be its owner: the field at fault and what
/// is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerError {
    pub field: &'static str,
    pub message: &'static str,
}

impl fmt::Display for OwnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl KeySpec {
    /// Whether the key has expired at `now` (unix seconds).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires_at.is_reached(now)
    }

    /// The user of a team key.
    pub fn user(&self) -> Option<&Arc<str>> {
        (self.key_type == KeyType::Team).then_some(&self.owner)
    }

    /// The project of a project key.
    pub fn project(&self) -> Option<&Arc<str>> {
        (self.key_type == KeyType::Project).then_some(&self.owner)
    }

    /// The owner of a key of `key_type` given with an optional `user` and `project`, as the
    /// origins' formats carry them: a team key names its user and no project, a project key its
    /// project and no user.
    pub fn owner_of<'a>(
        key_type: KeyType,
        user: Option<&'a str>,
        project: Option<&'a str>,
    ) -> Result<&'a str, OwnerError> {
        let fault = |field, message| Err(OwnerError { field, message });
        match (key_type, user, project) {
            (KeyType::Team, _, Some(_)) => {
                fault("project", "a team key has no project (use type: project)")
            }
            (KeyType::Team, Some(user), None) => Ok(user),
            (KeyType::Team, None, None) => fault("user", "a team key names its user"),
            (KeyType::Project, Some(_), _) => {
                fault("user", "a project key has no user (use type: team)")
            }
            (KeyType::Project, None, Some(project)) => Ok(project),
            (KeyType::Project, None, None) => fault("project", "a project key names its project"),
        }
    }
}

/// One object of the model, for error messages and change events.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectRef {
    Entitlement(Arc<str>),
    Role(Arc<str>),
    Team(Arc<str>),
    User(Arc<str>),
    Project(Arc<str>),
    Key(Arc<str>),
    /// The route table as a whole.
    Routes,
    /// One route of the table, by its position.
    Route(usize),
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Entitlement(id) => write!(f, "entitlement {id}"),
            ObjectRef::Role(id) => write!(f, "role {id}"),
            ObjectRef::Team(id) => write!(f, "team {id}"),
            ObjectRef::User(id) => write!(f, "user {id}"),
            ObjectRef::Project(id) => write!(f, "project {id}"),
            ObjectRef::Key(prefix) => write!(f, "key {prefix}"),
            ObjectRef::Routes => write!(f, "routes"),
            ObjectRef::Route(i) => write!(f, "routes[{i}]"),
        }
    }
}

/// A rule of the model that a state breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelViolation {
    pub object: ObjectRef,
    /// The field at fault (`roles`, `user`, …), for locating it in a file or a request.
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for ModelViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.object, self.field, self.message)
    }
}

/// One step of the state's evolution. A [`crate::state::ChangeSet`] is a list of these applied
/// atomically under one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    PutEntitlement(Arc<str>),
    RemoveEntitlement(Arc<str>),
    PutRole(Arc<Role>),
    RemoveRole(Arc<str>),
    PutTeam(Team),
    RemoveTeam(Arc<str>),
    PutUser(Arc<User>),
    RemoveUser(Arc<str>),
    PutProject(Project),
    RemoveProject(Arc<str>),
    PutKey(Arc<KeySpec>),
    RemoveKey(Arc<str>),
    /// Replaces the route table as a whole (a table is small).
    PutRoutes(Arc<[RouteSpec]>),
    /// Back to the built-in default route table.
    ResetRoutes,
}

impl Change {
    /// The object this change is about.
    pub fn object(&self) -> ObjectRef {
        match self {
            Change::PutEntitlement(id) | Change::RemoveEntitlement(id) => {
                ObjectRef::Entitlement(id.clone())
            }
            Change::PutRole(role) => ObjectRef::Role(role.id.clone()),
            Change::RemoveRole(id) => ObjectRef::Role(id.clone()),
            Change::PutTeam(team) => ObjectRef::Team(team.id.clone()),
            Change::RemoveTeam(id) => ObjectRef::Team(id.clone()),
            Change::PutUser(user) => ObjectRef::User(user.id.clone()),
            Change::RemoveUser(id) => ObjectRef::User(id.clone()),
            Change::PutProject(project) => ObjectRef::Project(project.id.clone()),
            Change::RemoveProject(id) => ObjectRef::Project(id.clone()),
            Change::PutKey(key) => ObjectRef::Key(Arc::from(key.prefix.as_str())),
            Change::RemoveKey(prefix) => ObjectRef::Key(prefix.clone()),
            Change::PutRoutes(_) | Change::ResetRoutes => ObjectRef::Routes,
        }
    }
}

/// The whole state: what an origin holds and what the cache is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub catalog: Catalog,
    pub teams: IdMap<Team>,
    pub users: IdMap<Arc<User>>,
    pub projects: IdMap<Project>,
    pub keys: IdMap<Arc<KeySpec>>,
    /// The route table of the proxy front ends: `None` is the built-in default table, `Some` a
    /// table given by the origin (a policy document's `routes:`), replaced as a whole.
    pub routes: Option<Arc<[RouteSpec]>>,
}

impl Model {
    /// The team a key belongs to: its own for team keys, its project's for project keys.
    pub fn key_team<'m>(&'m self, key: &'m KeySpec) -> Option<&'m Arc<str>> {
        match key.key_type {
            KeyType::Team => key.team.as_ref(),
            KeyType::Project => self.projects.get(&key.owner).map(|p| &p.team),
        }
    }

    /// Applies one change. The caller validates the result ([`Model::validate`]).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutEntitlement(id) => {
                self.catalog.add_entitlement(id);
            }
            Change::RemoveEntitlement(id) => {
                self.catalog.remove_entitlement(id);
            }
            Change::PutRole(role) => self.catalog.put_role(role.clone()),
            Change::RemoveRole(id) => self.catalog.remove_role(id),
            Change::PutTeam(team) => {
                self.teams.insert(team.id.clone(), team.clone());
            }
            Change::RemoveTeam(id) => {
                self.teams.remove(id);
            }
            Change::PutUser(user) => {
                self.users.insert(user.id.clone(), user.clone());
            }
            Change::RemoveUser(id) => {
                self.users.remove(id);
            }
            Change::PutProject(project) => {
                self.projects.insert(project.id.clone(), project.clone());
            }
            Change::RemoveProject(id) => {
                self.projects.remove(id);
            }
            Change::PutKey(key) => {
                self.keys.insert(key.prefix.clone(), key.clone());
            }
            Change::RemoveKey(prefix) => {
                self.keys.remove(&**prefix);
            }
            Change::PutRoutes(routes) => self.routes = Some(routes.clone()),
            Change::ResetRoutes => self.routes = None,
        }
    }

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
    pub fn validate_after(&self, changes: &[Change]) -> Vec<ModelViolation> {
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
    pub fn validate_keys<'k>(
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
        if !is_valid_prefix(&key.prefix) {
            out.push(violation(
                object(),
                "prefix",
                "a prefix is 4 to 64 characters of [A-Za-z0-9_-]".into(),
            ));
        }
        // That a team key has a user and no project (and a project key the reverse) is in its
        // type: the origins' parsers refuse the others (`KeySpec::owner_of`).
        match key.key_type {
            KeyType::Team => {
                let user = &key.owner;
                match self.users.get(user) {
                    None => out.push(violation(
                        object(),
                        "user",
                        format!("user {user} does not exist"),
                    )),
                    Some(u) => {
                        if let Some(team) = &key.team
                            && !u.teams.is_empty()
                            && !u.teams.contains(team)
                        {
                            out.push(violation(
                                object(),
                                "team",
                                format!("user {user} is not a member of team {team}"),
                            ));
                        }
                    }
                }
                match &key.team {
                    None => out.push(violation(
                        object(),
                        "team",
                        "a team key names its team".into(),
                    )),
                    Some(team) if !self.teams.contains_key(team) => out.push(violation(
                        object(),
                        "team",
                        format!("team {team} does not exist"),
                    )),
                    Some(_) => {}
                }
            }
            KeyType::Project => {
                let project = &key.owner;
                match self.projects.get(project) {
                    None => out.push(violation(
                        object(),
                        "project",
                        format!("project {project} does not exist"),
                    )),
                    Some(p) => {
                        if let Some(team) = &key.team
                            && *team != p.team
                        {
                            out.push(violation(
                                object(),
                                "team",
                                format!(
                                    "a project key's team is its project's ({}), not {team}",
                                    p.team
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for role_id in key.roles.iter() {
            let Some(role) = self.catalog.role(role_id) else {
                out.push(violation(
                    object(),
                    "roles",
                    format!("role {role_id} does not exist"),
                ));
                continue;
            };
            match (key.key_type, role.role_type) {
                (KeyType::Team, RoleType::System) => out.push(violation(
                    object(),
                    "roles",
                    format!("role {role_id} is a system role and cannot be bound to a team key"),
                )),
                (KeyType::Project, RoleType::User) => out.push(violation(
                    object(),
                    "roles",
                    format!("role {role_id} is a user role and cannot be bound to a project key"),
                )),
                (_, RoleType::Implicit) => out.push(violation(
                    object(),
                    "roles",
                    "TEAM_ROLE is on every key and is not bound explicitly".into(),
                )),
                _ => {}
            }
        }
    }

    /// The changes that turn `self` into `new`: puts first (entitlements, roles, teams, users,
    /// projects, keys, the route table), then removals in the reverse order, so that every
    /// prefix of the list only refers to objects that exist.
    pub fn diff(&self, new: &Model) -> Vec<Change> {
        let mut changes = Vec::new();
        let old_ents = self.catalog.added_entitlements();
        let new_ents = new.catalog.added_entitlements();
        for ent in new_ents.iter().filter(|e| !old_ents.contains(e)) {
            changes.push(Change::PutEntitlement(ent.clone()));
        }
        let mut roles: Vec<_> = new
            .catalog
            .roles()
            .filter(|r| self.catalog.role(&r.id) != Some(*r))
            .cloned()
            .collect();
        roles.sort_by(|a, b| a.id.cmp(&b.id));
        changes.extend(roles.into_iter().map(Change::PutRole));
        put_changed(&self.teams, &new.teams, Change::PutTeam, &mut changes);
        put_changed(&self.users, &new.users, Change::PutUser, &mut changes);
        put_changed(
            &self.projects,
            &new.projects,
            Change::PutProject,
            &mut changes,
        );
        put_changed(&self.keys, &new.keys, Change::PutKey, &mut changes);
        // The route table after the entitlements it may name are put, before those the old
        // table named are removed.
        match (&self.routes, &new.routes) {
            (old, Some(routes)) if old.as_deref() != Some(&**routes) => {
                changes.push(Change::PutRoutes(routes.clone()));
            }
            (Some(_), None) => changes.push(Change::ResetRoutes),
            _ => {}
        }
        removed(
            &self.keys,
            &new.keys,
            |p| Change::RemoveKey(Arc::from(p.as_str())),
            &mut changes,
        );
        removed(
            &self.projects,
            &new.projects,
            |id| Change::RemoveProject(id.clone()),
            &mut changes,
        );
        removed(
            &self.users,
            &new.users,
            |id| Change::RemoveUser(id.clone()),
            &mut changes,
        );
        removed(
            &self.teams,
            &new.teams,
            |id| Change::RemoveTeam(id.clone()),
            &mut changes,
        );
        let mut gone_roles: Vec<_> = self
            .catalog
            .roles()
            .filter(|r| new.catalog.role(&r.id).is_none())
            .map(|r| r.id.clone())
            .collect();
        gone_roles.sort();
        changes.extend(gone_roles.into_iter().map(Change::RemoveRole));
        for ent in old_ents.iter().filter(|e| !new_ents.contains(e)) {
            changes.push(Change::RemoveEntitlement(ent.clone()));
        }
        changes
    }
}

fn put_changed<V>(old: &IdMap<V>, new: &IdMap<V>, put: fn(V) -> Change, out: &mut Vec<Change>)
where
    V: HasId + Clone + PartialEq,
    V::Id: Ord + std::ops::Deref<Target = str> + Borrow<str>,
{
    let mut ids: Vec<_> = new
        .iter()
        .filter(|(id, v)| old.get(&***id) != Some(*v))
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    out.extend(ids.into_iter().map(|id| put(new[&**id].clone())));
}

fn removed<V>(
    old: &IdMap<V>,
    new: &IdMap<V>,
    remove: impl Fn(&V::Id) -> Change,
    out: &mut Vec<Change>,
) where
    V: HasId,
    V::Id: Ord + std::ops::Deref<Target = str> + Borrow<str>,
{
    let mut ids: Vec<_> = old.keys().filter(|id| !new.contains_key(&***id)).collect();
    ids.sort();
    out.extend(ids.into_iter().map(remove));
}

fn violation(object: ObjectRef, field: &'static str, message: String) -> ModelViolation {
    ModelViolation {
        object,
        field,
        message,
    }
}

/// Whether `id` is a well-formed role id: 1 to 64 characters of `[A-Z0-9_]`.
pub fn is_valid_role_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Hands out one shared copy of each distinct role list, so a million keys bound to a few role
/// combinations hold a few lists.
#[derive(Default)]
pub struct RoleLists {
    lists: std::collections::HashSet<Arc<[Arc<str>]>>,
}

impl RoleLists {
    /// The canonical list of `roles` (see [`canonical_roles`]), shared with equal lists.
    pub fn canonical<'a>(&mut self, roles: impl IntoIterator<Item = &'a str>) -> Arc<[Arc<str>]> {
        let list = canonical_roles(roles);
        if let Some(shared) = self.lists.get(&list) {
            return shared.clone();
        }
        self.lists.insert(list.clone());
        list
    }
}

/// Canonical role ids for a key: aliases resolved, TEAM_ROLE left in (validation reports it).
pub fn canonical_roles<'a>(roles: impl IntoIterator<Item = &'a str>) -> Arc<[Arc<str>]> {
    let mut out: Vec<Arc<str>> = roles
        .into_iter()
        .map(|r| Arc::from(canonical_role_id(r)))
        .collect();
    out.sort();
    out.dedup();
    out.into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::key::SecretHash;

    pub(crate) fn team(id: &str) -> Team {
        Team {
            id: id.into(),
            name: id.to_uppercase(),
            active: true,
        }
    }

    pub(crate) fn user(id: &str) -> User {
        User {
            id: id.into(),
            name: id.into(),
            active: true,
            teams: TeamList::default(),
        }
    }

    pub(crate) fn team_key(prefix: &str, user: &str, team: &str, roles: &[&str]) -> KeySpec {
        KeySpec {
            prefix: prefix.into(),
            secret_hash: SecretHash::of_secret(&format!("{prefix}-secret")),
            key_type: KeyType::Team,
            owner: user.into(),
            team: Some(team.into()),
            roles: canonical_roles(roles.iter().copied()),
            status: KeyStatus::Active,
            expires_at: Expiry::NEVER,
        }
    }

    pub(crate) fn project_key(prefix: &str, project: &str, roles: &[&str]) -> KeySpec {
        KeySpec {
            prefix: prefix.into(),
            secret_hash: SecretHash::of_secret(&format!("{prefix}-secret")),
            key_type: KeyType::Project,
            owner: project.into(),
            team: None,
            roles: canonical_roles(roles.iter().copied()),
            status: KeyStatus::Active,
            expires_at: Expiry::NEVER,
        }
    }

    pub(crate) fn model(keys: Vec<KeySpec>) -> Model {
        let mut m = Model::default();
        for t in ["acme", "globex"] {
            m.teams.insert(t.into(), team(t));
        }
        for u in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            m.users.insert(u.into(), Arc::new(user(u)));
        }
        m.projects.insert(
            "fraud".into(),
            Project {
                id: "fraud".into(),
                team: "acme".into(),
                name: "Fraud".into(),
            },
        );
        for k in keys {
            m.keys.insert(k.prefix.clone(), Arc::new(k));
        }
        m
    }

    fn messages(m: &Model) -> Vec<String> {
        m.validate().iter().map(|v| v.to_string()).collect()
    }

    /// A user and its reference counts fill an 80-byte block; a million keys have ~600,000 users.
    #[test]
    fn a_user_is_56_bytes() {
        assert_eq!(std::mem::size_of::<User>(), 56);
    }

    /// A binding and its two reference counts fill a 128-byte allocation: a million keys hold a
    /// million of these.
    #[test]
    fn a_key_binding_is_112_bytes() {
        assert_eq!(std::mem::size_of::<KeySpec>(), 112);
    }

    #[test]
    fn an_owner_matches_the_key_type() {
        use KeyType::{Project, Team};
        assert_eq!(KeySpec::owner_of(Team, Some("alice"), None), Ok("alice"));
        assert_eq!(KeySpec::owner_of(Project, None, Some("fraud")), Ok("fraud"));
        let field = |t, u, p| KeySpec::owner_of(t, u, p).map_err(|e| e.field);
        assert_eq!(field(Team, None, None), Err("user"));
        assert_eq!(field(Team, Some("alice"), Some("fraud")), Err("project"));
        assert_eq!(field(Project, None, None), Err("project"));
        assert_eq!(field(Project, Some("alice"), Some("fraud")), Err("user"));
        let key = project_key("FraudKey01", "fraud", &["PROJECT"]);
        assert_eq!(key.project().map(|p| &**p), Some("fraud"));
        assert_eq!(key.user(), None);
    }

    #[test]
    fn a_valid_model_has_no_violations() {
        let m = model(vec![
            team_key("AliceKey01", "alice", "acme", &["DATA_SCIENTIST"]),
            project_key("FraudKey01", "fraud", &["PROJECT"]),
        ]);
        assert_eq!(messages(&m), Vec::<String>::new());
        assert_eq!(
            m.key_team(&m.keys["FraudKey01"]).map(|t| &**t),
            Some("acme")
        );
    }

    #[test]
    fn role_types_must_match_key_types() {
        let m = model(vec![
            team_key("AliceKey01", "alice", "acme", &["SYSTEM_KEY"]),
            project_key("FraudKey01", "fraud", &["DATA_SCIENTIST"]),
        ]);
        let got = messages(&m);
        assert!(
            got.iter()
                .any(|e| e.contains("key AliceKey01 (roles): role SYSTEM_KEY is a system role")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.contains("key FraudKey01 (roles): role DATA_SCIENTIST is a user role")),
            "{got:?}"
        );
    }

    #[test]
    fn dangling_references_are_reported() {
        let mut m = model(vec![
            team_key("AliceKey01", "nobody", "acme", &["DEVELOPER"]),
            team_key("BobKey0001", "bob", "nowhere", &["NO_SUCH_ROLE"]),
            project_key("FraudKey01", "missing", &["SYSTEM_KEY"]),
        ]);
        Arc::make_mut(m.users.get_mut("carol").unwrap()).teams = ["ghost".into()].into();
        let got = messages(&m);
        for want in [
            "key AliceKey01 (user): user nobody does not exist",
            "key BobKey0001 (team): team nowhere does not exist",
            "key BobKey0001 (roles): role NO_SUCH_ROLE does not exist",
            "key FraudKey01 (project): project missing does not exist",
            "user carol (teams): team ghost does not exist",
        ] {
            assert!(got.iter().any(|e| e == want), "missing {want:?} in {got:?}");
        }
    }

    #[test]
    fn keys_must_be_in_a_team_of_their_user() {
        let mut m = model(vec![team_key(
            "AliceKey01",
            "alice",
            "globex",
            &["DEVELOPER"],
        )]);
        Arc::make_mut(m.users.get_mut("alice").unwrap()).teams = ["acme".into()].into();
        assert_eq!(
            messages(&m),
            vec!["key AliceKey01 (team): user alice is not a member of team globex"]
        );
    }

    #[test]
    fn custom_roles_must_use_known_entitlements() {
        let mut m = model(vec![]);
        m.catalog.put_role(Arc::new(Role {
            id: "REVIEWER".into(),
            role_type: RoleType::User,
            grants: vec![crate::domain::Grant {
                entitlement: "reports.export".into(),
                scope: crate::domain::Scope::Team,
            }],
            prebuilt: false,
        }));
        assert_eq!(m.validate().len(), 1);
        m.catalog.add_entitlement("reports.export");
        assert!(m.validate().is_empty());
    }

    #[test]
    fn diff_then_apply_reaches_the_new_model() {
        let old = model(vec![
            team_key("AliceKey01", "alice", "acme", &["DEVELOPER"]),
            team_key("BobKey0001", "bob", "acme", &["DEVELOPER"]),
        ]);
        let mut new = model(vec![
            team_key("AliceKey01", "alice", "acme", &["ACCOUNT_ADMIN"]),
            team_key("CarolKey01", "carol", "globex", &["AUDITOR"]),
        ]);
        new.teams.remove("globex");
        new.teams.insert("initech".into(), team("initech"));
        new.keys.remove("CarolKey01");
        new.catalog.add_entitlement("reports.export");
        let changes = old.diff(&new);
        let mut applied = old.clone();
        for c in &changes {
            applied.apply(c);
        }
        assert_eq!(applied, new);
        assert!(changes.contains(&Change::RemoveKey("BobKey0001".into())));
        assert!(changes.contains(&Change::RemoveTeam("globex".into())));
        assert!(old.diff(&old).is_empty(), "no change, no event");
        // Only the edited key changes, not a reload of everything.
        let one = changes
            .iter()
            .filter(|c| matches!(c, Change::PutKey(_)))
            .count();
        assert_eq!(one, 1);
    }

    fn route(method: &str, path: &str, entitlement: &str) -> RouteSpec {
        RouteSpec {
            method: method.into(),
            path: path.into(),
            entitlement: entitlement.into(),
            team: None,
            owner_key: None,
            owner_user: None,
        }
    }

    #[test]
    fn a_route_table_is_put_and_reset_as_a_whole_by_diff_and_apply() {
        let old = model(vec![]);
        let mut new = old.clone();
        new.catalog.add_entitlement("reports.export");
        new.routes = Some(Arc::from(vec![route("GET", "/reports", "reports.export")]));
        let changes = old.diff(&new);
        let at = |want: fn(&Change) -> bool| changes.iter().position(want).unwrap();
        assert!(
            at(|c| matches!(c, Change::PutEntitlement(_)))
                < at(|c| matches!(c, Change::PutRoutes(_))),
            "the entitlement exists before the table naming it: {changes:?}"
        );
        let mut applied = old.clone();
        for c in &changes {
            applied.apply(c);
        }
        assert_eq!(applied, new);
        assert!(new.diff(&new).is_empty(), "an equal table is no change");
        // Back to the default table: the table goes before the entitlement it named.
        let back = new.diff(&old);
        assert_eq!(
            back,
            vec![
                Change::ResetRoutes,
                Change::RemoveEntitlement("reports.export".into())
            ]
        );
        assert_eq!(Change::ResetRoutes.object().to_string(), "routes");
        // An empty table is a table (every request unmatched), not the default.
        let mut empty = old.clone();
        empty.routes = Some(Arc::from(Vec::new()));
        assert_eq!(
            old.diff(&empty),
            vec![Change::PutRoutes(Arc::from(Vec::new()))]
        );
    }

    #[test]
    fn routes_must_name_known_entitlements_and_match_distinct_requests() {
        let mut m = model(vec![]);
        m.routes = Some(Arc::from(vec![
            route("GET", "/a/{x}", "jobs.read"),
            route("GET", "/a/{y}", "jobs.read"),
            route("GET", "/b", "reports.export"),
            route("get", "/c/*/d", "jobs.read"),
        ]));
        assert_eq!(
            messages(&m),
            vec![
                "routes[1] (path): matches the same requests as routes[0]",
                "routes[2] (entitlement): reports.export is not in the catalog (add it under entitlements:)",
                "routes[3] (method): method is an upper-case HTTP method or *",
                "routes[3] (path): path: '*' may only be the last segment",
            ]
        );
        m.routes = None;
        assert!(
            m.validate().is_empty(),
            "the default table is not validated against the catalog"
        );
    }
}
