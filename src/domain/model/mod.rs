//! The whole authorization state as data: teams, users, projects, keys, the catalog and the route
//! table; the rules a valid state obeys ([`Model::validate`], rules 1–2 of the catalog and
//! referential integrity); and [`Change`], the unit in which it evolves, with [`Model::diff`] to
//! compute the changes between two states.

use std::{borrow::Borrow, fmt, sync::Arc};

use compact_str::CompactString;

use super::{
    Catalog, IdMap, KeyStatus, KeyType, Role, SecretHash, catalog::canonical_role_id, key::Expiry,
    route::RouteSpec,
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
    pub(crate) field: &'static str,
    pub(crate) message: &'static str,
}

impl fmt::Display for OwnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl KeySpec {
    /// Whether the key has expired at `now` (unix seconds).
    pub(crate) fn expired_at(&self, now: i64) -> bool {
        self.expires_at.is_reached(now)
    }

    /// The user of a team key.
    pub(crate) fn user(&self) -> Option<&Arc<str>> {
        (self.key_type == KeyType::Team).then_some(&self.owner)
    }

    /// The project of a project key.
    pub(crate) fn project(&self) -> Option<&Arc<str>> {
        (self.key_type == KeyType::Project).then_some(&self.owner)
    }

    /// The owner of a key of `key_type` given with an optional `user` and `project`, as the
    /// origins' formats carry them: a team key names its user and no project, a project key its
    /// project and no user.
    pub(crate) fn owner_of<'a>(
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
pub(crate) enum ObjectRef {
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
    pub(crate) object: ObjectRef,
    /// The field at fault (`roles`, `user`, …), for locating it in a file or a request.
    pub(crate) field: &'static str,
    pub(crate) message: String,
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
    /// Whether the change removes an object (or the route table), as opposed to putting one.
    pub(crate) fn is_removal(&self) -> bool {
        matches!(
            self,
            Change::RemoveEntitlement(_)
                | Change::RemoveRole(_)
                | Change::RemoveTeam(_)
                | Change::RemoveUser(_)
                | Change::RemoveProject(_)
                | Change::RemoveKey(_)
                | Change::ResetRoutes
        )
    }

    /// The object this change is about.
    pub(crate) fn object(&self) -> ObjectRef {
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
    pub(crate) fn key_team<'m>(&'m self, key: &'m KeySpec) -> Option<&'m Arc<str>> {
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

mod diff;
mod validate;

pub(crate) use validate::is_valid_role_id;

#[cfg(test)]
pub(crate) mod tests;
