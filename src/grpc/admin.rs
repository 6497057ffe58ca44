//! `rolegate.v1.Admin`: writes to the origin and reads of the state, each authorized by
//! rolegate's own model — the caller's key is checked with the same [`State::check`] that
//! answers every other Check, and role bindings obey [`crate::domain::escalation`].

use std::{
    collections::{BTreeSet, BinaryHeap},
    sync::Arc,
};

use tonic::{Request, Response, Status, metadata::MetadataMap};

use compact_str::CompactString;

use crate::{
    domain::{
        ApiKey, Decision, Expiry, KeyEntry, KeySpec, KeyStatus, KeyType, Model, ModelViolation,
        Project, RequestorId, ResourceRef, Role, RoleType, Scope, Team, User, authenticate,
        catalog::{Catalog, canonical_role_id},
        escalation::{Escalation, check_no_escalation},
        key::{generate_key, generate_prefix, is_valid_prefix},
        model::{Change, ObjectRef, canonical_roles},
    },
    grpc::{
        pb::{self, admin_server::Admin},
        routes::{self, RouteSource},
        status::{bad_field, policy_invalid, write_status},
    },
    origin::{
        embedded::{EmbeddedOrigin, WriteError},
        policy_file::{self, is_valid_entitlement},
    },
    state::{State, unix_now},
};

/// Where Admin writes go.
#[derive(Clone)]
pub enum AdminOrigin {
    /// A writable origin.
    Embedded(Arc<EmbeddedOrigin>),
    /// A read-only origin: writes are refused with this explanation.
    ReadOnly(String),
}

/// The Admin service.
#[derive(Clone)]
pub struct AdminService {
    state: Arc<State>,
    origin: AdminOrigin,
    /// Where the route table comes from, for ListRoutes.
    route_source: RouteSource,
}

/// The authenticated caller of one Admin call.
struct Caller {
    key: String,
    entry: Arc<KeyEntry>,
}

impl Caller {
    /// Whether the caller may bind any role: holding `roles.update` at ALL is the right to
    /// (re)define every role, so the no-escalation rule would protect nothing against it (the
    /// counterpart of Kubernetes' `escalate`/`bind` verbs).
    fn may_bind_any(&self) -> bool {
        self.entry
            .requestor
            .grants_at(unix_now())
            .get("roles.update")
            .is_some_and(|g| g.all)
    }

    fn no_escalation(&self, role: &Role, team: Option<&str>) -> Result<(), Status> {
        if self.may_bind_any() {
            return Ok(());
        }
        let grants = self.entry.requestor.grants_at(unix_now());
        check_no_escalation(&grants, role, team)
            .map_err(|e: Escalation| Status::permission_denied(format!("escalation refused: {e}")))
    }
}

fn owned(s: &str) -> Arc<str> {
    Arc::from(s)
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

impl AdminService {
    pub fn new(state: Arc<State>, origin: AdminOrigin) -> Self {
        AdminService {
            state,
            origin,
            route_source: RouteSource::default(),
        }
    }

    /// Names the origin of the route table in ListRoutes answers.
    pub fn with_route_source(mut self, source: RouteSource) -> Self {
        self.route_source = source;
        self
    }

    /// The caller's key from `authorization: ApiKey <key>`, authenticated against the state.
    fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: ApiKey <key> metadata"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization metadata is not ASCII"))?;
        let key = header
            .strip_prefix("ApiKey ")
            .ok_or_else(|| Status::unauthenticated("authorization must be \"ApiKey <key>\""))?
            .trim();
        let parsed = ApiKey::parse(key).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let entry = self.state.lookup(parsed.prefix);
        if let Err(reason) = authenticate(entry.as_deref(), &parsed, unix_now()) {
            return Err(Status::unauthenticated(reason.describe()));
        }
        Ok(Caller {
            key: key.to_owned(),
            entry: entry.expect("authenticated"),
        })
    }

    /// Requires `entitlement` covering `resource`, at `min` scope or wider.
    /// What the caller of a list call may see: it must hold `entitlement` at some scope.
    fn visible(&self, metadata: &MetadataMap, entitlement: &str) -> Result<Visible, Status> {
        let caller = self.caller(metadata)?;
        let d = self.require(&caller, entitlement, ResourceRef::default(), Scope::Own)?;
        Ok(Visible::of(&d))
    }

    /// One page of a list call: `scan` offers every object the caller may see, in one pass over
    /// the model under its lock.
    fn page<T>(
        &self,
        size: u32,
        token: &str,
        scan: impl FnOnce(&Model, &mut PageSelect<'_, T>),
    ) -> Page<T> {
        let revision = self.state.revision();
        let mut select = PageSelect::new(size, token);
        self.state.read_model(|m| scan(m, &mut select));
        let (items, next_page_token) = select.finish();
        Page {
            items,
            next_page_token,
            revision,
        }
    }

    fn require(
        &self,
        caller: &Caller,
        entitlement: &str,
        resource: ResourceRef<'_>,
        min: Scope,
    ) -> Result<Decision, Status> {
        let outcome = self
            .state
            .check(&caller.key, entitlement, resource, unix_now());
        let d = outcome.decision;
        if d.reason.is_unauthenticated() {
            return Err(Status::unauthenticated(d.reason.describe()));
        }
        let target = describe(resource);
        if !d.is_allowed() {
            return Err(Status::permission_denied(format!(
                "key {} lacks {entitlement} at {min} or wider{target}: {}",
                caller.entry.spec.prefix,
                d.reason.describe()
            )));
        }
        if d.scope.is_none_or(|s| s < min) {
            return Err(Status::permission_denied(format!(
                "key {} holds {entitlement} only at {}; this call needs {min}{target}",
                caller.entry.spec.prefix,
                d.scope.map_or("no scope", Scope::as_str)
            )));
        }
        Ok(d)
    }

    fn team_scoped(
        &self,
        caller: &Caller,
        entitlement: &str,
        team: &str,
    ) -> Result<Decision, Status> {
        self.require(
            caller,
            entitlement,
            ResourceRef {
                team_id: team,
                ..Default::default()
            },
            Scope::Team,
        )
    }

    fn global(&self, caller: &Caller, entitlement: &str) -> Result<Decision, Status> {
        self.require(caller, entitlement, ResourceRef::default(), Scope::All)
    }

    fn origin(&self) -> Result<&Arc<EmbeddedOrigin>, Status> {
        match &self.origin {
            AdminOrigin::Embedded(origin) => Ok(origin),
            AdminOrigin::ReadOnly(why) => Err(Status::failed_precondition(why.clone())),
        }
    }

    /// Authenticates, then refuses at once when the origin is read-only.
    fn writer(&self, metadata: &MetadataMap) -> Result<(Caller, Arc<EmbeddedOrigin>), Status> {
        let caller = self.caller(metadata)?;
        let origin = self.origin()?.clone();
        Ok((caller, origin))
    }

    async fn write(
        origin: &EmbeddedOrigin,
        edit: impl FnOnce(&Model) -> Result<Vec<Change>, WriteError> + Send + 'static,
    ) -> Result<u64, Status> {
        origin.write(Box::new(edit)).await.map_err(write_status)
    }
}

fn describe(r: ResourceRef<'_>) -> String {
    let mut parts = Vec::new();
    if !r.team_id.is_empty() {
        parts.push(format!("team {}", r.team_id));
    }
    if !r.owner_key_prefix.is_empty() {
        parts.push(format!("key {}", r.owner_key_prefix));
    }
    if !r.owner_user_id.is_empty() {
        parts.push(format!("user {}", r.owner_user_id));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" over {}", parts.join(", "))
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(bad_field(field, "required"))
    } else {
        Ok(value)
    }
}

fn id_field(field: &str, value: &str) -> Result<Arc<str>, Status> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b));
    if ok {
        Ok(owned(value))
    } else {
        Err(bad_field(
            field,
            "an id is 1 to 128 characters of [A-Za-z0-9_.@-]",
        ))
    }
}

// ---- conversions -----------------------------------------------------------------------------

fn team_pb(t: &Team) -> pb::Team {
    pb::Team {
        id: t.id.to_string(),
        name: t.name.clone(),
        active: t.active,
    }
}

fn user_pb(u: &User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        name: u.name.to_string(),
        active: u.active,
        teams: u.teams.iter().map(|t| t.to_string()).collect(),
    }
}

fn project_pb(p: &Project) -> pb::Project {
    pb::Project {
        id: p.id.to_string(),
        team: p.team.to_string(),
        name: p.name.clone(),
    }
}

/// A key as the API shows it: never its secret or hash.
pub fn key_pb(model: &Model, k: &KeySpec) -> pb::Key {
    key_pb_in(k, model.key_team(k).map(|t| &**t))
}

fn key_pb_in(k: &KeySpec, team: Option<&str>) -> pb::Key {
    pb::Key {
        prefix: k.prefix.to_string(),
        key_type: match k.key_type {
            KeyType::Team => pb::KeyType::Team,
            KeyType::Project => pb::KeyType::Project,
        } as i32,
        user: k.user().map(|u| u.to_string()).unwrap_or_default(),
        team: team.unwrap_or_default().to_owned(),
        project: k.project().map(|p| p.to_string()).unwrap_or_default(),
        roles: k.roles.iter().map(|r| r.to_string()).collect(),
        status: k.status.as_str().to_owned(),
        expires_at: k.expires_at.unix().unwrap_or(0),
    }
}

fn role_pb(r: &Role) -> pb::Role {
    pb::Role {
        id: r.id.to_string(),
        r#type: r.role_type.as_str().to_owned(),
        grants: r
            .grants
            .iter()
            .map(|g| pb::Grant {
                entitlement: g.entitlement.to_string(),
                scope: g.scope.as_str().to_owned(),
            })
            .collect(),
        prebuilt: r.prebuilt,
    }
}

fn role_from_pb(r: &pb::Role) -> Result<Role, Status> {
    let role_type = match r.r#type.as_str() {
        "user" | "" => RoleType::User,
        "system" => RoleType::System,
        _ => return Err(bad_field("role.type", "expected user or system")),
    };
    let mut grants = Vec::with_capacity(r.grants.len());
    for (i, g) in r.grants.iter().enumerate() {
        let scope: Scope = g
            .scope
            .parse()
            .map_err(|e| bad_field(&format!("role.grants[{i}].scope"), format!("{e}")))?;
        if !is_valid_entitlement(&g.entitlement) {
            return Err(bad_field(
                &format!("role.grants[{i}].entitlement"),
                "an entitlement is resource.action, lower case",
            ));
        }
        grants.push(crate::domain::Grant {
            entitlement: owned(&g.entitlement),
            scope,
        });
    }
    Ok(Role {
        id: owned(required("role.id", &r.id)?),
        role_type,
        grants,
        prebuilt: false,
    })
}

fn status_from(field: &str, s: &str) -> Result<KeyStatus, Status> {
    s.parse().map_err(|e: String| bad_field(field, e))
}

/// Every team a user is in: the listed ones and those of the user's keys.
fn user_teams(m: &Model, user: &str) -> BTreeSet<Arc<str>> {
    let mut teams: BTreeSet<Arc<str>> = m
        .users
        .get(user)
        .map(|u| u.teams.iter().cloned().collect())
        .unwrap_or_default();
    for k in m.keys.values() {
        if let (Some(t), true) = (&k.team, k.user().is_some_and(|u| **u == *user)) {
            teams.insert(t.clone());
        }
    }
    teams
}

/// Which objects a collection decision lets the caller see.
struct Visible {
    all: bool,
    teams: BTreeSet<Arc<str>>,
    owner_keys: BTreeSet<CompactString>,
    owner_user: Option<Arc<str>>,
}

impl Visible {
    fn of(d: &Decision) -> Self {
        Visible {
            all: d.scope == Some(Scope::All),
            teams: d
                .filter_team_ids
                .iter()
                .flat_map(|t| t.iter().cloned())
                .collect(),
            owner_keys: d
                .filter_owner_key_prefixes
                .iter()
                .flat_map(|t| t.iter().cloned())
                .collect(),
            owner_user: d.filter_owner_user_id.clone(),
        }
    }
}

/// A page of a list call, with the revision the model had when it was read.
struct Page<T> {
    items: Vec<T>,
    next_page_token: String,
    revision: u64,
}

/// One page (by id, after a token) picked out of an unordered collection while it is scanned
/// under the model lock: only the `size + 1` smallest ids after the token are kept, in a
/// max-heap, so the scan clones and converts a page's worth instead of the whole collection, and
/// sorting happens on that page only. Writers wait for the scan, so it must stay this cheap.
struct PageSelect<'t, T> {
    size: usize,
    token: &'t str,
    heap: BinaryHeap<Ranked<T>>,
}

/// An item ordered by its id alone.
struct Ranked<T>(CompactString, T);

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T> Eq for Ranked<T> {}
impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Ranked<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<'t, T> PageSelect<'t, T> {
    fn new(size: u32, token: &'t str) -> Self {
        let size = match size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        PageSelect {
            size,
            token,
            heap: BinaryHeap::with_capacity(size + 1),
        }
    }

    /// Considers the item `id`; `make` builds it only when it may be on the page.
    fn offer(&mut self, id: &str, make: impl FnOnce() -> T) {
        if !self.token.is_empty() && id <= self.token {
            return;
        }
        // One more than the page is kept, to know whether a next page exists.
        if self.heap.len() > self.size {
            if self.heap.peek().is_some_and(|top| id >= top.0.as_str()) {
                return;
            }
            self.heap.pop();
        }
        self.heap.push(Ranked(id.into(), make()));
    }

    /// The page in id order, and the token of the next page (empty: none).
    fn finish(self) -> (Vec<T>, String) {
        let mut items = self.heap.into_sorted_vec();
        let next = if items.len() > self.size {
            items.truncate(self.size);
            items.last().map(|r| r.0.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        (items.into_iter().map(|r| r.1).collect(), next)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    // ---- teams ----------------------------------------------------------------------------

    async fn create_team(
        &self,
        request: Request<pb::TeamRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let t = request.into_inner().team.unwrap_or_default();
        let team = Team {
            id: id_field("team.id", &t.id)?,
            name: t.name,
            active: t.active,
        };
        self.require(
            &caller,
            "accounts.update",
            ResourceRef {
                team_id: &team.id,
                ..Default::default()
            },
            Scope::All,
        )?;
        let put = team.clone();
        let revision = Self::write(&origin, move |m| {
            if m.teams.contains_key(&put.id) {
                return Err(WriteError::AlreadyExists(format!("team {}", put.id)));
            }
            Ok(vec![Change::PutTeam(put)])
        })
        .await?;
        Ok(Response::new(pb::TeamResponse {
            team: Some(team_pb(&team)),
            revision,
        }))
    }

    async fn update_team(
        &self,
        request: Request<pb::TeamRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let t = request.into_inner().team.unwrap_or_default();
        let team = Team {
            id: id_field("team.id", &t.id)?,
            name: t.name,
            active: t.active,
        };
        self.team_scoped(&caller, "accounts.update", &team.id)?;
        let put = team.clone();
        let revision = Self::write(&origin, move |m| {
            if !m.teams.contains_key(&put.id) {
                return Err(WriteError::NotFound(format!("team {}", put.id)));
            }
            Ok(vec![Change::PutTeam(put)])
        })
        .await?;
        Ok(Response::new(pb::TeamResponse {
            team: Some(team_pb(&team)),
            revision,
        }))
    }

    async fn delete_team(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let id = id_field("id", &request.get_ref().id)?;
        self.require(
            &caller,
            "accounts.update",
            ResourceRef {
                team_id: &id,
                ..Default::default()
            },
            Scope::All,
        )?;
        let revision = Self::write(&origin, move |m| {
            if !m.teams.contains_key(&id) {
                return Err(WriteError::NotFound(format!("team {id}")));
            }
            Ok(vec![Change::RemoveTeam(id)])
        })
        .await?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn get_team(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let id = &request.get_ref().id;
        self.team_scoped(&caller, "accounts.read", id)?;
        let team = self
            .state
            .read_model(|m| m.teams.get(id.as_str()).map(team_pb))
            .ok_or_else(|| Status::not_found(format!("team {id} not found")))?;
        Ok(Response::new(pb::TeamResponse {
            team: Some(team),
            revision: self.state.revision(),
        }))
    }

    async fn list_teams(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListTeamsResponse>, Status> {
        let vis = self.visible(request.metadata(), "accounts.read")?;
        let r = request.get_ref();
        let page = self.page(r.page_size, &r.page_token, |m, select| {
            for t in m.teams.values() {
                if vis.all || vis.teams.contains(&t.id) {
                    select.offer(&t.id, || t.clone());
                }
            }
        });
        Ok(Response::new(pb::ListTeamsResponse {
            teams: page.items.iter().map(team_pb).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    // ---- users ----------------------------------------------------------------------------

    async fn create_user(
        &self,
        request: Request<pb::UserRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        self.put_user(request, true).await
    }

    async fn update_user(
        &self,
        request: Request<pb::UserRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        self.put_user(request, false).await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let id = id_field("id", &request.get_ref().id)?;
        let teams = self.state.read_model(|m| user_teams(m, &id));
        self.user_teams_covered(&caller, "users.update", &teams)?;
        let revision = Self::write(&origin, move |m| {
            if !m.users.contains_key(&id) {
                return Err(WriteError::NotFound(format!("user {id}")));
            }
            if user_teams(m, &id) != teams {
                return Err(concurrent());
            }
            Ok(vec![Change::RemoveUser(id)])
        })
        .await?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let id = request.get_ref().id.clone();
        let (user, teams) = self.state.read_model(|m| {
            (
                m.users.get(id.as_str()).map(|u| user_pb(u)),
                user_teams(m, &id),
            )
        });
        let own = caller.entry.requestor.id.user().is_some_and(|u| **u == *id);
        if !own {
            let mut allowed = teams
                .iter()
                .any(|t| self.team_scoped(&caller, "users.read", t).is_ok());
            if !allowed {
                allowed = self.global(&caller, "users.read").is_ok();
            }
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "key {} lacks users.read over user {id} (at TEAM over one of the user's teams, or ALL)",
                    caller.entry.spec.prefix
                )));
            }
        }
        let user = user.ok_or_else(|| Status::not_found(format!("user {id} not found")))?;
        Ok(Response::new(pb::UserResponse {
            user: Some(user),
            revision: self.state.revision(),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let vis = self.visible(request.metadata(), "users.read")?;
        let r = request.get_ref();
        let page = self.page(r.page_size, &r.page_token, |m, select| {
            // The users with a key in a visible team, in one pass over the keys (not one per
            // user: the model lock is held meanwhile).
            let mut via_keys: BTreeSet<&Arc<str>> = BTreeSet::new();
            if !vis.all {
                for k in m.keys.values() {
                    if let (Some(u), Some(t)) = (k.user(), &k.team)
                        && vis.teams.contains(t)
                    {
                        via_keys.insert(u);
                    }
                }
            }
            for u in m.users.values() {
                if vis.all
                    || vis.owner_user.as_ref() == Some(&u.id)
                    || u.teams.iter().any(|t| vis.teams.contains(t))
                    || via_keys.contains(&u.id)
                {
                    select.offer(&u.id, || u.clone());
                }
            }
        });
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.iter().map(|u| user_pb(u)).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    // ---- projects -------------------------------------------------------------------------

    async fn create_project(
        &self,
        request: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        self.put_project(request, true).await
    }

    async fn update_project(
        &self,
        request: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        self.put_project(request, false).await
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let id = id_field("id", &request.get_ref().id)?;
        let team = self
            .state
            .read_model(|m| m.projects.get(&id).map(|p| p.team.clone()))
            .ok_or_else(|| Status::not_found(format!("project {id} not found")))?;
        self.team_scoped(&caller, "projects.update", &team)?;
        let revision = Self::write(&origin, move |m| match m.projects.get(&id) {
            None => Err(WriteError::NotFound(format!("project {id}"))),
            Some(p) if p.team != team => Err(concurrent()),
            Some(_) => Ok(vec![Change::RemoveProject(id)]),
        })
        .await?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn get_project(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let id = &request.get_ref().id;
        let project = self
            .state
            .read_model(|m| m.projects.get(id.as_str()).map(project_pb))
            .ok_or_else(|| Status::not_found(format!("project {id} not found")))?;
        self.team_scoped(&caller, "projects.read", &project.team)?;
        Ok(Response::new(pb::ProjectResponse {
            project: Some(project),
            revision: self.state.revision(),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let vis = self.visible(request.metadata(), "projects.read")?;
        let r = request.get_ref();
        let page = self.page(r.page_size, &r.page_token, |m, select| {
            for p in m.projects.values() {
                if vis.all || vis.teams.contains(&p.team) {
                    select.offer(&p.id, || p.clone());
                }
            }
        });
        Ok(Response::new(pb::ListProjectsResponse {
            projects: page.items.iter().map(project_pb).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    // ---- keys -----------------------------------------------------------------------------

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let r = request.into_inner();
        let prefix = if r.prefix.is_empty() {
            generate_prefix()
        } else {
            r.prefix.clone()
        };
        if !is_valid_prefix(&prefix) {
            return Err(bad_field(
                "prefix",
                "a prefix is 4 to 64 characters of [A-Za-z0-9_-]",
            ));
        }
        let key_type = match pb::KeyType::try_from(r.key_type) {
            Ok(pb::KeyType::Team) => KeyType::Team,
            Ok(pb::KeyType::Project) => KeyType::Project,
            _ => return Err(bad_field("key_type", "TEAM or PROJECT")),
        };
        let (owner, team) = match key_type {
            KeyType::Team => (id_field("user", &r.user)?, Some(id_field("team", &r.team)?)),
            KeyType::Project => {
                if !r.user.is_empty() {
                    return Err(bad_field("user", "a project key has no user"));
                }
                (id_field("project", &r.project)?, None)
            }
        };
        let expires_at = Expiry::from_unix((r.expires_at != 0).then_some(r.expires_at))
            .map_err(|e| bad_field("expires_at", e.to_string()))?;
        let mut roles: Vec<&str> = r.roles.iter().map(String::as_str).collect();
        if key_type == KeyType::Project && roles.is_empty() {
            roles.push("SYSTEM_KEY");
        }
        let roles = canonical_roles(roles);
        // The key's team decides which grants of the caller count.
        let target_team: Arc<str> = match &team {
            Some(t) => t.clone(),
            None => self
                .state
                .read_model(|m| m.projects.get(&owner).map(|p| p.team.clone()))
                .ok_or_else(|| bad_field("project", format!("project {owner} does not exist")))?,
        };
        self.team_scoped(&caller, "keys.create", &target_team)?;
        let catalog = self.state.read_model(|m| m.catalog.clone());
        self.check_bindings(&caller, &catalog, &roles, &target_team)?;
        let new = generate_key(&prefix).map_err(|e| bad_field("prefix", e.to_string()))?;
        let spec = Arc::new(KeySpec {
            prefix: prefix.as_str().into(),
            secret_hash: new.hash,
            key_type,
            owner,
            team,
            roles,
            status: KeyStatus::Active,
            expires_at,
        });
        let put = spec.clone();
        let revision = Self::write(&origin, move |m| {
            if m.keys.contains_key(put.prefix.as_str()) {
                // A field violation rather than AlreadyExists: the request's prefix is at fault.
                return Err(WriteError::Invalid(vec![ModelViolation {
                    object: ObjectRef::Key(Arc::from(put.prefix.as_str())),
                    field: "prefix",
                    message: format!("prefix {} is already taken", put.prefix),
                }]));
            }
            if put.key_type == KeyType::Project && m.key_team(&put) != Some(&target_team) {
                return Err(concurrent());
            }
            Ok(vec![Change::PutKey(put)])
        })
        .await?;
        tracing::info!(key = %spec.prefix, by = %caller.entry.spec.prefix, revision, "key created");
        let key = self.state.read_model(|m| key_pb(m, &spec));
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key),
            api_key: new.key,
            revision,
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let prefix = &request.get_ref().id;
        let entry = self.key_entry(prefix)?;
        self.require(
            &caller,
            "keys.read",
            ResourceRef {
                team_id: &entry.team,
                owner_key_prefix: prefix,
                ..Default::default()
            },
            Scope::Own,
        )?;
        let key = self.state.read_model(|m| key_pb(m, &entry.spec));
        Ok(Response::new(pb::KeyResponse {
            key: Some(key),
            revision: self.state.revision(),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let vis = self.visible(request.metadata(), "keys.read")?;
        let r = request.into_inner();
        let status = if r.status.is_empty() {
            None
        } else {
            Some(status_from("status", &r.status)?)
        };
        let role = canonical_role_id(&r.role).to_owned();
        let page = self.page(r.page_size, &r.page_token, |m, select| {
            for k in m.keys.values() {
                let team = m.key_team(k);
                let visible = vis.all
                    || team.is_some_and(|t| vis.teams.contains(t))
                    || vis.owner_keys.contains(&k.prefix);
                if visible
                    && (r.team.is_empty() || team.is_some_and(|t| **t == *r.team))
                    && (r.user.is_empty() || k.user().is_some_and(|u| **u == *r.user))
                    && (r.project.is_empty() || k.project().is_some_and(|p| **p == *r.project))
                    && status.is_none_or(|s| k.status == s)
                    && (role.is_empty() || k.roles.iter().any(|x| **x == *role))
                {
                    select.offer(&k.prefix, || (k.clone(), team.cloned()));
                }
            }
        });
        // Only the page is converted, outside the model lock.
        let keys = page
            .items
            .iter()
            .map(|(k, team)| key_pb_in(k, team.as_deref()))
            .collect();
        Ok(Response::new(pb::ListKeysResponse {
            keys,
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let r = request.into_inner();
        let entry = self.key_entry(&r.prefix)?;
        let d = self.require(
            &caller,
            "keys.update",
            ResourceRef {
                team_id: &entry.team,
                owner_key_prefix: &r.prefix,
                ..Default::default()
            },
            Scope::Own,
        )?;
        let status = r
            .status
            .as_deref()
            .map(|s| status_from("status", s))
            .transpose()?;
        let new_roles = r
            .replace_roles
            .then(|| canonical_roles(r.roles.iter().map(String::as_str)));
        let roles_change = new_roles.as_ref().is_some_and(|n| *n != entry.spec.roles);
        let expires = r
            .expires_at
            .map(|e| Expiry::from_unix((e != 0).then_some(e)))
            .transpose()
            .map_err(|e| bad_field("expires_at", e.to_string()))?;
        let expiry_change = expires.is_some_and(|e| e != entry.spec.expires_at);
        if roles_change && matches!(caller.entry.requestor.id, RequestorId::Project(_)) {
            return Err(Status::permission_denied(
                "project keys cannot change roles",
            ));
        }
        if d.scope == Some(Scope::Own) {
            // TEAM_ROLE lets a holder manage its own keys only downwards: deactivate them.
            let deactivating = status.is_some_and(|s| s != KeyStatus::Active);
            if roles_change || expiry_change || (status.is_some() && !deactivating) {
                return Err(Status::permission_denied(format!(
                    "key {} holds keys.update only at OWN: a key holder may deactivate its own keys but not change their roles, expiry or reactivate them (needs keys.update at TEAM over team {})",
                    caller.entry.spec.prefix, entry.team
                )));
            }
        }
        if let Some(roles) = &new_roles {
            let added: Vec<Arc<str>> = roles
                .iter()
                .filter(|r| !entry.spec.roles.contains(r))
                .cloned()
                .collect();
            let catalog = self.state.read_model(|m| m.catalog.clone());
            self.check_bindings(&caller, &catalog, &added, &entry.team)?;
        }
        let prefix = entry.spec.prefix.clone();
        let team = entry.team.id.clone();
        let revision = Self::write(&origin, move |m| {
            let old = m
                .keys
                .get(&prefix)
                .ok_or_else(|| WriteError::NotFound(format!("key {prefix}")))?;
            if m.key_team(old) != Some(&team) {
                return Err(concurrent());
            }
            let mut spec = (**old).clone();
            if let Some(s) = status {
                spec.status = s;
            }
            if let Some(roles) = new_roles {
                spec.roles = roles;
            }
            if let Some(e) = expires {
                spec.expires_at = e;
            }
            if spec == **old {
                return Ok(vec![]);
            }
            Ok(vec![Change::PutKey(Arc::new(spec))])
        })
        .await?;
        let key = self
            .state
            .read_model(|m| m.keys.get(&*entry.spec.prefix).map(|k| key_pb(m, k)));
        tracing::info!(key = %entry.spec.prefix, by = %caller.entry.spec.prefix, revision, "key updated");
        Ok(Response::new(pb::KeyResponse { key, revision }))
    }

    async fn replace_key_secret(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let entry = self.key_entry(&request.get_ref().id)?;
        self.require(
            &caller,
            "keys.update",
            ResourceRef {
                team_id: &entry.team,
                owner_key_prefix: &entry.spec.prefix,
                ..Default::default()
            },
            Scope::Own,
        )?;
        let new = generate_key(&entry.spec.prefix).map_err(|e| bad_field("id", e.to_string()))?;
        let (prefix, hash) = (entry.spec.prefix.clone(), new.hash);
        let revision = Self::write(&origin, move |m| {
            let old = m
                .keys
                .get(&prefix)
                .ok_or_else(|| WriteError::NotFound(format!("key {prefix}")))?;
            let mut spec = (**old).clone();
            spec.secret_hash = hash;
            Ok(vec![Change::PutKey(Arc::new(spec))])
        })
        .await?;
        tracing::info!(key = %entry.spec.prefix, by = %caller.entry.spec.prefix, revision, "key secret replaced");
        let key = self
            .state
            .read_model(|m| m.keys.get(&*entry.spec.prefix).map(|k| key_pb(m, k)));
        Ok(Response::new(pb::CreateKeyResponse {
            key,
            api_key: new.key,
            revision,
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let entry = self.key_entry(&request.get_ref().id)?;
        self.team_scoped(&caller, "keys.update", &entry.team)?;
        let prefix = entry.spec.prefix.clone();
        let revision = Self::write(&origin, move |m| {
            if !m.keys.contains_key(&prefix) {
                return Err(WriteError::NotFound(format!("key {prefix}")));
            }
            Ok(vec![Change::RemoveKey(Arc::from(prefix.as_str()))])
        })
        .await?;
        tracing::info!(key = %entry.spec.prefix, by = %caller.entry.spec.prefix, revision, "key deleted");
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    // ---- roles and entitlements -------------------------------------------------------------

    async fn create_role(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        self.put_role(request, true).await
    }

    async fn update_role(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        self.put_role(request, false).await
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let id = owned(required("id", &request.get_ref().id)?);
        self.global(&caller, "roles.update")?;
        let revision = Self::write(&origin, move |m| {
            let role = m
                .catalog
                .role(&id)
                .ok_or_else(|| WriteError::NotFound(format!("role {id}")))?;
            if role.prebuilt {
                return Err(prebuilt(&id));
            }
            let mut bound: Vec<&str> = m
                .keys
                .values()
                .filter(|k| k.roles.contains(&id))
                .map(|k| &*k.prefix)
                .collect();
            if !bound.is_empty() {
                bound.sort();
                let shown = bound
                    .iter()
                    .take(20)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(WriteError::Invalid(vec![ModelViolation {
                    object: ObjectRef::Role(id.clone()),
                    field: "id",
                    message: format!(
                        "role {id} is still bound to {} key(s): {shown}{}; unbind it first",
                        bound.len(),
                        if bound.len() > 20 { ", …" } else { "" }
                    ),
                }]));
            }
            Ok(vec![Change::RemoveRole(id)])
        })
        .await?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        // Roles are not team data: holding roles.read at any scope shows them all.
        self.visible(request.metadata(), "roles.read")?;
        let r = request.get_ref();
        let page = self.page(r.page_size, &r.page_token, |m, select| {
            for role in m.catalog.roles() {
                select.offer(&role.id, || role.clone());
            }
        });
        Ok(Response::new(pb::ListRolesResponse {
            roles: page.items.iter().map(|r| role_pb(r)).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn add_entitlements(
        &self,
        request: Request<pb::AddEntitlementsRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let ids = request.into_inner().ids;
        for (i, id) in ids.iter().enumerate() {
            if !is_valid_entitlement(id) {
                return Err(bad_field(
                    &format!("ids[{i}]"),
                    "an entitlement is resource.action: lower case [a-z0-9_-], 1 to 64 each",
                ));
            }
        }
        self.global(&caller, "roles.create")?;
        let revision = Self::write(&origin, move |m| {
            Ok(ids
                .iter()
                .filter(|id| !m.catalog.has_entitlement(id))
                .map(|id| Change::PutEntitlement(owned(id)))
                .collect())
        })
        .await?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        // Like roles, the route table is not team data: roles.read at any scope shows it.
        self.visible(request.metadata(), "roles.read")?;
        Ok(Response::new(routes::list(&self.state, &self.route_source)))
    }

    // ---- apply ----------------------------------------------------------------------------

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let r = request.into_inner();
        // A whole document may change anything, so it needs the widest administrative rights.
        for ent in [
            "accounts.update",
            "users.update",
            "keys.update",
            "roles.update",
        ] {
            self.global(&caller, ent)?;
        }
        let policy = policy_file::parse(&r.document, "document").map_err(|e| policy_invalid(&e))?;
        let target = policy.model;
        let caller_prefix = caller.entry.spec.prefix.clone();
        let keeps_caller = |m: &Model| {
            m.keys
                .get(&caller_prefix)
                .is_some_and(|k| k.status == KeyStatus::Active)
        };
        if !keeps_caller(&target) {
            return Err(Status::failed_precondition(format!(
                "the document would remove or deactivate key {caller_prefix}, which is making this call; add it to the document"
            )));
        }
        if r.dry_run {
            let (changes, revision) = self
                .state
                .read_model(|m| (m.diff(&target), self.state.revision()));
            return Ok(Response::new(pb::ApplyResponse {
                changes: changes.iter().map(describe_change).collect(),
                revision,
                dry_run: true,
            }));
        }
        let origin = self.origin()?.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let revision = Self::write(&origin, move |m| {
            let changes = m.diff(&target);
            let _ = tx.send(changes.iter().map(describe_change).collect::<Vec<_>>());
            Ok(changes)
        })
        .await?;
        Ok(Response::new(pb::ApplyResponse {
            changes: rx.await.unwrap_or_default(),
            revision,
            dry_run: false,
        }))
    }
}

fn describe_change(c: &Change) -> String {
    let verb = match c {
        Change::PutEntitlement(_)
        | Change::PutRole(_)
        | Change::PutTeam(_)
        | Change::PutUser(_)
        | Change::PutProject(_)
        | Change::PutKey(_)
        | Change::PutRoutes(_) => "put",
        Change::ResetRoutes => return "reset routes (to the built-in default table)".into(),
        _ => "remove",
    };
    format!("{verb} {}", c.object())
}

fn concurrent() -> WriteError {
    WriteError::FailedPrecondition("the object changed while the call was authorized; retry".into())
}

fn prebuilt(id: &str) -> WriteError {
    WriteError::Invalid(vec![ModelViolation {
        object: ObjectRef::Role(owned(id)),
        field: "id",
        message: format!(
            "{id} is a prebuilt role; it changes only through a policy document with override: true"
        ),
    }])
}

impl AdminService {
    fn key_entry(&self, prefix: &str) -> Result<Arc<KeyEntry>, Status> {
        if prefix.is_empty() {
            return Err(bad_field("prefix", "required"));
        }
        self.state
            .lookup(prefix)
            .ok_or_else(|| Status::not_found(format!("key {prefix} not found")))
    }

    /// No escalation for every role bound to a key of `team`.
    fn check_bindings(
        &self,
        caller: &Caller,
        catalog: &Catalog,
        roles: &[Arc<str>],
        team: &str,
    ) -> Result<(), Status> {
        for id in roles {
            // An unknown role is left to validation, which names it as a field violation.
            if let Some(role) = catalog.role(id) {
                caller.no_escalation(role, Some(team))?;
            }
        }
        Ok(())
    }

    /// Requires `entitlement` over every team of a user (ALL when it has none).
    fn user_teams_covered(
        &self,
        caller: &Caller,
        entitlement: &str,
        teams: &BTreeSet<Arc<str>>,
    ) -> Result<(), Status> {
        if teams.is_empty() {
            self.global(caller, entitlement)?;
        }
        for t in teams {
            self.team_scoped(caller, entitlement, t)?;
        }
        Ok(())
    }

    async fn put_user(
        &self,
        request: Request<pb::UserRequest>,
        create: bool,
    ) -> Result<Response<pb::UserResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let u = request.into_inner().user.unwrap_or_default();
        let id = id_field("user.id", &u.id)?;
        let teams = u
            .teams
            .iter()
            .enumerate()
            .map(|(i, t)| id_field(&format!("user.teams[{i}]"), t))
            .collect::<Result<Vec<_>, _>>()?;
        let user = User {
            id: id.clone(),
            name: u.name.into(),
            active: u.active,
            teams: teams.into(),
        };
        let entitlement = if create {
            "users.create"
        } else {
            "users.update"
        };
        let mut covered: BTreeSet<Arc<str>> = self.state.read_model(|m| user_teams(m, &id));
        covered.extend(user.teams.iter().cloned());
        self.user_teams_covered(&caller, entitlement, &covered)?;
        let put = user.clone();
        let revision = Self::write(&origin, move |m| {
            match (create, m.users.contains_key(&put.id)) {
                (true, true) => return Err(WriteError::AlreadyExists(format!("user {}", put.id))),
                (false, false) => return Err(WriteError::NotFound(format!("user {}", put.id))),
                _ => {}
            }
            if !user_teams(m, &put.id).is_subset(&covered) {
                return Err(concurrent());
            }
            Ok(vec![Change::PutUser(Arc::new(put))])
        })
        .await?;
        Ok(Response::new(pb::UserResponse {
            user: Some(user_pb(&user)),
            revision,
        }))
    }

    async fn put_project(
        &self,
        request: Request<pb::ProjectRequest>,
        create: bool,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let p = request.into_inner().project.unwrap_or_default();
        let project = Project {
            id: id_field("project.id", &p.id)?,
            team: id_field("project.team", &p.team)?,
            name: p.name,
        };
        let entitlement = if create {
            "projects.create"
        } else {
            "projects.update"
        };
        self.team_scoped(&caller, entitlement, &project.team)?;
        let old_team = self
            .state
            .read_model(|m| m.projects.get(&project.id).map(|p| p.team.clone()));
        if let (Some(old), false) = (&old_team, create) {
            self.team_scoped(&caller, entitlement, old)?;
        }
        let put = project.clone();
        let revision = Self::write(&origin, move |m| {
            let now = m.projects.get(&put.id).map(|p| p.team.clone());
            match (create, &now) {
                (true, Some(_)) => {
                    return Err(WriteError::AlreadyExists(format!("project {}", put.id)));
                }
                (false, None) => return Err(WriteError::NotFound(format!("project {}", put.id))),
                _ => {}
            }
            if !create && now != old_team {
                return Err(concurrent());
            }
            Ok(vec![Change::PutProject(put)])
        })
        .await?;
        Ok(Response::new(pb::ProjectResponse {
            project: Some(project_pb(&project)),
            revision,
        }))
    }

    async fn put_role(
        &self,
        request: Request<pb::RoleRequest>,
        create: bool,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        let (caller, origin) = self.writer(request.metadata())?;
        let role = role_from_pb(&request.into_inner().role.unwrap_or_default())?;
        self.global(
            &caller,
            if create {
                "roles.create"
            } else {
                "roles.update"
            },
        )?;
        caller.no_escalation(&role, None)?;
        let role = Arc::new(role);
        let put = role.clone();
        let revision = Self::write(&origin, move |m| {
            let existing = m.catalog.role(&put.id);
            if existing.is_some_and(|r| r.prebuilt) || Catalog::is_prebuilt(&put.id) {
                return Err(prebuilt(&put.id));
            }
            match (create, existing.is_some()) {
                (true, true) => Err(WriteError::AlreadyExists(format!("role {}", put.id))),
                (false, false) => Err(WriteError::NotFound(format!("role {}", put.id))),
                _ => Ok(vec![Change::PutRole(put)]),
            }
        })
        .await?;
        Ok(Response::new(pb::RoleResponse {
            role: Some(role_pb(&role)),
            revision,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::tests::team_key;

    /// The page as the whole collection sorted would give it (how lists were paged before).
    fn sorted_page<T: Clone>(
        mut items: Vec<(Arc<str>, T)>,
        size: u32,
        token: &str,
    ) -> (Vec<T>, String) {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let size = match size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let start = items.partition_point(|(id, _)| !token.is_empty() && **id <= *token);
        let rest = &items[start..];
        let out: Vec<(Arc<str>, T)> = rest.iter().take(size).cloned().collect();
        let next = if rest.len() > size {
            out.last().map(|(id, _)| id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        (out.into_iter().map(|(_, v)| v).collect(), next)
    }

    fn select_page(ids: &[Arc<str>], size: u32, token: &str) -> (Vec<Arc<str>>, String) {
        let mut select = PageSelect::new(size, token);
        for id in ids {
            select.offer(id, || id.clone());
        }
        select.finish()
    }

    #[test]
    fn a_page_picked_while_scanning_is_the_sorted_collections_page() {
        use rand::{Rng, seq::SliceRandom};
        let mut rng = rand::rng();
        for n in [0usize, 1, 5, 99, 100, 101, 250, 600] {
            let mut ids: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("id{i:05}"))).collect();
            ids.shuffle(&mut rng);
            let items: Vec<(Arc<str>, Arc<str>)> =
                ids.iter().map(|i| (i.clone(), i.clone())).collect();
            for size in [0u32, 1, 7, 100, 5000] {
                // Paging through the whole collection, and from tokens that are not ids.
                let mut token = String::new();
                let mut seen = Vec::new();
                loop {
                    let got = select_page(&ids, size, &token);
                    assert_eq!(
                        got,
                        sorted_page(items.clone(), size, &token),
                        "n={n} size={size}"
                    );
                    seen.extend(got.0);
                    if got.1.is_empty() {
                        break;
                    }
                    token = got.1;
                }
                assert_eq!(seen.len(), n, "every item once (n={n}, size={size})");
                assert!(seen.windows(2).all(|w| w[0] < w[1]), "in id order");
                let odd = format!("id{:05}x", rng.random_range(0..n.max(1)));
                assert_eq!(
                    select_page(&ids, size, &odd),
                    sorted_page(items.clone(), size, &odd)
                );
            }
        }
    }

    /// How long a ListKeys page holds the model lock (writers wait meanwhile) when it picks the
    /// page while scanning, against collecting every visible key and sorting them (as before).
    /// `ROLEGATE_LIST_KEYS` sets the number of keys (default 20,000); the timings are printed
    /// (docs/admin.md has the measured numbers); both ways must give the same page.
    #[test]
    fn listing_keys_holds_the_model_lock_for_a_scan_only() {
        let n: usize = std::env::var("ROLEGATE_LIST_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let mut m = Model::default();
        for i in 0..n {
            let k = team_key(&format!("Key{i:08}"), "alice", "acme", &["DEVELOPER"]);
            m.keys.insert(k.prefix.clone(), Arc::new(k));
        }
        let token = format!("Key{:08}", n / 2);
        let t0 = std::time::Instant::now();
        let mut select = PageSelect::new(100, &token);
        for k in m.keys.values() {
            select.offer(&k.prefix, || (k.clone(), m.key_team(k).cloned()));
        }
        let scanned = t0.elapsed();
        let (page, next) = select.finish();

        let t0 = std::time::Instant::now();
        let items: Vec<_> = m
            .keys
            .values()
            .map(|k| {
                (
                    k.prefix.as_str().into(),
                    (k.clone(), m.key_team(k).cloned()),
                )
            })
            .collect();
        let collected = t0.elapsed();
        let (old_page, old_next) = sorted_page(items, 100, &token);
        let sorted = t0.elapsed();
        // For comparison: a whole copy of the model (what a snapshot per list would cost).
        let t0 = std::time::Instant::now();
        let copy = m.clone();
        let copied = t0.elapsed();
        assert_eq!(copy.keys.len(), n);
        eprintln!(
            "{n} keys: page picked while scanning {scanned:?} under the lock; collecting all \
             {collected:?} under the lock (+ sort and page outside: {sorted:?} in all); \
             copying the model {copied:?}"
        );
        assert_eq!(next, old_next);
        let prefixes = |p: &[(Arc<KeySpec>, Option<Arc<str>>)]| {
            p.iter().map(|(k, _)| k.prefix.clone()).collect::<Vec<_>>()
        };
        assert_eq!(prefixes(&page), prefixes(&old_page));
        assert_eq!(page.len(), 100.min(n.saturating_sub(n / 2 + 1)));
    }
}
