//! `rolegate.v1.Admin`: the gRPC face of the Admin core. Reads are answered from the state,
//! each authorized by the same [`State::check`] that answers every other Check; writes are
//! converted into [`Command`]s and executed by the writable origin, which judges each one with
//! the escalation rule ([`crate::domain::escalation`]) on the model it commits on. Every call,
//! allowed or refused, leaves one line in the audit log ([`audit`]).

mod audit;
mod convert;
mod page;

use std::{collections::BTreeSet, sync::Arc};

use compact_str::CompactString;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    domain::{
        ApiKey, Decision, Expiry, KeyEntry, KeySpec, KeyStatus, KeyType, Model, Project,
        ResourceRef, Scope, Team, User,
        admin::Command,
        authenticate,
        catalog::canonical_role_id,
        is_valid_entitlement,
        key::{generate_key, generate_prefix, is_valid_prefix},
        model::canonical_roles,
    },
    grpc::{
        pb::{self, admin_server::Admin},
        routes,
        status::{bad_field, policy_invalid, write_status},
    },
    origin::{Origin, WritableOrigin, Written, policy_file},
    state::{State, unix_now},
};

use audit::Audit;
pub(crate) use convert::key_pb;
use convert::{
    describe_change, id_field, key_pb_in, owned, project_pb, required, role_from_pb, role_pb,
    status_from, team_list, team_pb, user_pb,
};
use page::{Page, PageSelect};

/// The Admin service.
#[derive(Clone)]
pub struct AdminService {
    state: Arc<State>,
    /// Where writes go (a read-only origin refuses them) and where the route table comes from.
    origin: Arc<dyn Origin>,
}

/// The authenticated caller of one Admin call.
struct Caller {
    key: String,
    entry: Arc<KeyEntry>,
}

impl Caller {
    fn prefix(&self) -> &str {
        &self.entry.spec.prefix
    }
}

impl AdminService {
    pub fn new(state: Arc<State>, origin: Arc<dyn Origin>) -> Self {
        AdminService { state, origin }
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

    /// The origin's writer; a read-only origin's explanation as FAILED_PRECONDITION.
    fn origin(&self) -> Result<&dyn WritableOrigin, Status> {
        self.origin
            .writer()
            .map_err(|read_only| Status::failed_precondition(read_only.0))
    }

    /// Authenticates the caller of a write, then refuses at once when the origin is read-only.
    fn writer(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let caller = self.caller(metadata)?;
        self.origin()?;
        Ok(caller)
    }

    /// Executes a write in the origin, where the escalation rule judges it.
    async fn execute(&self, caller: &Caller, command: Command) -> Result<Written, Status> {
        self.origin()?
            .execute(caller.prefix(), command)
            .await
            .map_err(write_status)
    }

    fn key_entry(&self, prefix: &str) -> Result<Arc<KeyEntry>, Status> {
        if prefix.is_empty() {
            return Err(bad_field("prefix", "required"));
        }
        self.state
            .lookup(prefix)
            .ok_or_else(|| Status::not_found(format!("key {prefix} not found")))
    }

    /// The key `prefix` as the state has it now, for a write's answer.
    fn key_now(&self, prefix: &str) -> Option<pb::Key> {
        self.state
            .read_model(|m| m.keys.get(prefix).map(|k| key_pb(m, k)))
    }

    // ---- reads ------------------------------------------------------------------------------

    async fn get_team_inner(
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

    async fn list_teams_inner(
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

    async fn get_user_inner(
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

    async fn list_users_inner(
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

    async fn get_project_inner(
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

    async fn list_projects_inner(
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

    async fn get_key_inner(
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

    async fn list_keys_inner(
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

    async fn list_roles_inner(
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

    async fn list_routes_inner(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        // Like roles, the route table is not team data: roles.read at any scope shows it.
        self.visible(request.metadata(), "roles.read")?;
        Ok(Response::new(routes::list(
            &self.state,
            &self.origin.routes(),
        )))
    }

    // ---- writes -----------------------------------------------------------------------------

    async fn create_team_inner(
        &self,
        request: Request<pb::TeamRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let t = request.into_inner().team.unwrap_or_default();
        let team = Team {
            id: id_field("team.id", &t.id)?,
            name: t.name,
            active: t.active,
        };
        let written = self
            .execute(&caller, Command::CreateTeam(team.clone()))
            .await?;
        Ok(Response::new(pb::TeamResponse {
            team: Some(team_pb(&team)),
            revision: written.revision,
        }))
    }

    async fn update_team_inner(
        &self,
        request: Request<pb::UpdateTeamRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let t = request.into_inner();
        let id = id_field("id", &t.id)?;
        let command = Command::UpdateTeam {
            id: id.clone(),
            name: t.name,
            active: t.active,
        };
        let written = self.execute(&caller, command).await?;
        let team = self.state.read_model(|m| m.teams.get(&id).map(team_pb));
        Ok(Response::new(pb::TeamResponse {
            team,
            revision: written.revision,
        }))
    }

    async fn delete_team_inner(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let id = id_field("id", &request.get_ref().id)?;
        let written = self.execute(&caller, Command::DeleteTeam(id)).await?;
        Ok(Response::new(pb::WriteResponse {
            revision: written.revision,
        }))
    }

    async fn create_user_inner(
        &self,
        request: Request<pb::UserRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let u = request.into_inner().user.unwrap_or_default();
        let id = id_field("user.id", &u.id)?;
        let user = Arc::new(User {
            id: id.clone(),
            name: u.name.into(),
            active: u.active,
            teams: team_list("user.teams", &u.teams)?,
        });
        let written = self
            .execute(&caller, Command::CreateUser(user.clone()))
            .await?;
        Ok(Response::new(pb::UserResponse {
            user: Some(user_pb(&user)),
            revision: written.revision,
        }))
    }

    async fn update_user_inner(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let u = request.into_inner();
        let id = id_field("id", &u.id)?;
        let teams = match u.replace_teams {
            true => Some(team_list("teams", &u.teams)?),
            false => None,
        };
        let command = Command::UpdateUser {
            id: id.clone(),
            name: u.name.map(Into::into),
            active: u.active,
            teams,
        };
        let written = self.execute(&caller, command).await?;
        let user = self
            .state
            .read_model(|m| m.users.get(&id).map(|u| user_pb(u)));
        Ok(Response::new(pb::UserResponse {
            user,
            revision: written.revision,
        }))
    }

    async fn delete_user_inner(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let id = id_field("id", &request.get_ref().id)?;
        let written = self.execute(&caller, Command::DeleteUser(id)).await?;
        Ok(Response::new(pb::WriteResponse {
            revision: written.revision,
        }))
    }

    async fn create_project_inner(
        &self,
        request: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let p = request.into_inner().project.unwrap_or_default();
        let project = Project {
            id: id_field("project.id", &p.id)?,
            team: id_field("project.team", &p.team)?,
            name: p.name,
        };
        let written = self
            .execute(&caller, Command::CreateProject(project.clone()))
            .await?;
        Ok(Response::new(pb::ProjectResponse {
            project: Some(project_pb(&project)),
            revision: written.revision,
        }))
    }

    async fn update_project_inner(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let p = request.into_inner();
        let id = id_field("id", &p.id)?;
        let command = Command::UpdateProject {
            id: id.clone(),
            team: p.team.map(|t| id_field("team", &t)).transpose()?,
            name: p.name,
        };
        let written = self.execute(&caller, command).await?;
        let project = self
            .state
            .read_model(|m| m.projects.get(&id).map(project_pb));
        Ok(Response::new(pb::ProjectResponse {
            project,
            revision: written.revision,
        }))
    }

    async fn delete_project_inner(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let id = id_field("id", &request.get_ref().id)?;
        let written = self.execute(&caller, Command::DeleteProject(id)).await?;
        Ok(Response::new(pb::WriteResponse {
            revision: written.revision,
        }))
    }

    async fn create_key_inner(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = self.writer(request.metadata())?;
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
        let new = generate_key(&prefix).map_err(|e| bad_field("prefix", e.to_string()))?;
        let spec = Arc::new(KeySpec {
            prefix: prefix.as_str().into(),
            secret_hash: new.hash,
            key_type,
            owner,
            team,
            roles: canonical_roles(roles),
            status: KeyStatus::Active,
            expires_at,
        });
        let written = self.execute(&caller, Command::CreateKey(spec)).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: self.key_now(&prefix),
            api_key: new.key,
            revision: written.revision,
        }))
    }

    async fn update_key_inner(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let r = request.into_inner();
        let prefix = required("prefix", &r.prefix)?;
        let status = r
            .status
            .as_deref()
            .map(|s| status_from("status", s))
            .transpose()?;
        let roles = r
            .replace_roles
            .then(|| canonical_roles(r.roles.iter().map(String::as_str)));
        let expires_at = r
            .expires_at
            .map(|e| Expiry::from_unix((e != 0).then_some(e)))
            .transpose()
            .map_err(|e| bad_field("expires_at", e.to_string()))?;
        let command = Command::UpdateKey {
            prefix: prefix.into(),
            status,
            roles,
            expires_at,
        };
        let written = self.execute(&caller, command).await?;
        Ok(Response::new(pb::KeyResponse {
            key: self.key_now(prefix),
            revision: written.revision,
        }))
    }

    async fn replace_key_secret_inner(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let prefix = required("id", &request.get_ref().id)?;
        let new = generate_key(prefix).map_err(|e| bad_field("id", e.to_string()))?;
        let command = Command::ReplaceKeySecret {
            prefix: prefix.into(),
            hash: new.hash,
        };
        let written = self.execute(&caller, command).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: self.key_now(prefix),
            api_key: new.key,
            revision: written.revision,
        }))
    }

    async fn delete_key_inner(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let prefix = required("id", &request.get_ref().id)?;
        let written = self
            .execute(&caller, Command::DeleteKey(prefix.into()))
            .await?;
        Ok(Response::new(pb::WriteResponse {
            revision: written.revision,
        }))
    }

    async fn put_role(
        &self,
        request: Request<pb::RoleRequest>,
        create: bool,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let role = Arc::new(role_from_pb(
            &request.into_inner().role.unwrap_or_default(),
        )?);
        let command = if create {
            Command::CreateRole(role.clone())
        } else {
            Command::UpdateRole(role.clone())
        };
        let written = self.execute(&caller, command).await?;
        Ok(Response::new(pb::RoleResponse {
            role: Some(role_pb(&role)),
            revision: written.revision,
        }))
    }

    async fn delete_role_inner(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let id = owned(required("id", &request.get_ref().id)?);
        let written = self.execute(&caller, Command::DeleteRole(id)).await?;
        Ok(Response::new(pb::WriteResponse {
            revision: written.revision,
        }))
    }

    async fn add_entitlements_inner(
        &self,
        request: Request<pb::AddEntitlementsRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.writer(request.metadata())?;
        let ids = request.into_inner().ids;
        for (i, id) in ids.iter().enumerate() {
            if !is_valid_entitlement(id) {
                return Err(bad_field(
                    &format!("ids[{i}]"),
                    "an entitlement is resource.action: lower case [a-z0-9_-], 1 to 64 each",
                ));
            }
        }
        let ids = ids.iter().map(|id| owned(id)).collect();
        let written = self.execute(&caller, Command::AddEntitlements(ids)).await?;
        Ok(Response::new(pb::WriteResponse {
            revision: written.revision,
        }))
    }

    async fn apply_inner(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let r = request.into_inner();
        let policy = policy_file::parse(&r.document, "document").map_err(|e| policy_invalid(&e))?;
        let command = Command::Apply(Box::new(policy.model));
        if r.dry_run {
            // What the document would change, judged by the same rule as a real apply, on a
            // copy of the model: the answer is the diff only when the apply would be accepted.
            let (model, revision) = self
                .state
                .read_model(|m| (m.clone(), self.state.revision()));
            let mut model = crate::domain::IndexedModel::from(model);
            let (changes, _) =
                crate::domain::admin::execute(caller.prefix(), &command, &mut model, unix_now())
                    .map_err(write_status)?;
            return Ok(Response::new(pb::ApplyResponse {
                changes: changes.iter().map(describe_change).collect(),
                revision,
                dry_run: true,
            }));
        }
        self.origin()?;
        let written = self.execute(&caller, command).await?;
        Ok(Response::new(pb::ApplyResponse {
            changes: written.changes.iter().map(describe_change).collect(),
            revision: written.revision,
            dry_run: false,
        }))
    }
}

/// Each RPC: the audit record around its handler.
macro_rules! audited {
    ($request:ident, $rpc:literal, $target:expr, $call:expr) => {{
        let audit = Audit::begin($rpc, $request.metadata(), $target(&$request.get_ref()));
        let result = $call.await;
        audit.end(&result);
        result
    }};
}

fn team_of(r: &pb::TeamRequest) -> String {
    format!("team {}", r.team.as_ref().map_or("", |t| t.id.as_str()))
}
fn user_of(r: &pb::UserRequest) -> String {
    format!("user {}", r.user.as_ref().map_or("", |u| u.id.as_str()))
}
fn project_of(r: &pb::ProjectRequest) -> String {
    format!(
        "project {}",
        r.project.as_ref().map_or("", |p| p.id.as_str())
    )
}
fn role_of(r: &pb::RoleRequest) -> String {
    format!("role {}", r.role.as_ref().map_or("", |r| r.id.as_str()))
}
fn named(kind: &'static str) -> impl Fn(&pb::GetRequest) -> String {
    move |r| format!("{kind} {}", r.id)
}
fn deleted(kind: &'static str) -> impl Fn(&pb::DeleteRequest) -> String {
    move |r| format!("{kind} {}", r.id)
}
fn all<T>(kind: &'static str) -> impl Fn(&T) -> String {
    move |_| kind.to_owned()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_team(
        &self,
        request: Request<pb::TeamRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        audited!(
            request,
            "CreateTeam",
            team_of,
            self.create_team_inner(request)
        )
    }

    async fn update_team(
        &self,
        request: Request<pb::UpdateTeamRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        let target = |r: &pb::UpdateTeamRequest| format!("team {}", r.id);
        audited!(
            request,
            "UpdateTeam",
            target,
            self.update_team_inner(request)
        )
    }

    async fn delete_team(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        audited!(
            request,
            "DeleteTeam",
            deleted("team"),
            self.delete_team_inner(request)
        )
    }

    async fn get_team(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::TeamResponse>, Status> {
        audited!(
            request,
            "GetTeam",
            named("team"),
            self.get_team_inner(request)
        )
    }

    async fn list_teams(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListTeamsResponse>, Status> {
        audited!(
            request,
            "ListTeams",
            all("teams"),
            self.list_teams_inner(request)
        )
    }

    async fn create_user(
        &self,
        request: Request<pb::UserRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        audited!(
            request,
            "CreateUser",
            user_of,
            self.create_user_inner(request)
        )
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        let target = |r: &pb::UpdateUserRequest| format!("user {}", r.id);
        audited!(
            request,
            "UpdateUser",
            target,
            self.update_user_inner(request)
        )
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        audited!(
            request,
            "DeleteUser",
            deleted("user"),
            self.delete_user_inner(request)
        )
    }

    async fn get_user(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        audited!(
            request,
            "GetUser",
            named("user"),
            self.get_user_inner(request)
        )
    }

    async fn list_users(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        audited!(
            request,
            "ListUsers",
            all("users"),
            self.list_users_inner(request)
        )
    }

    async fn create_project(
        &self,
        request: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        audited!(
            request,
            "CreateProject",
            project_of,
            self.create_project_inner(request)
        )
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        let target = |r: &pb::UpdateProjectRequest| format!("project {}", r.id);
        audited!(
            request,
            "UpdateProject",
            target,
            self.update_project_inner(request)
        )
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        audited!(
            request,
            "DeleteProject",
            deleted("project"),
            self.delete_project_inner(request)
        )
    }

    async fn get_project(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        audited!(
            request,
            "GetProject",
            named("project"),
            self.get_project_inner(request)
        )
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        audited!(
            request,
            "ListProjects",
            all("projects"),
            self.list_projects_inner(request)
        )
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let target = |r: &pb::CreateKeyRequest| match r.prefix.as_str() {
            "" => "key (new)".to_owned(),
            p => format!("key {p}"),
        };
        audited!(request, "CreateKey", target, self.create_key_inner(request))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        audited!(request, "GetKey", named("key"), self.get_key_inner(request))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        audited!(
            request,
            "ListKeys",
            all("keys"),
            self.list_keys_inner(request)
        )
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let target = |r: &pb::UpdateKeyRequest| format!("key {}", r.prefix);
        audited!(request, "UpdateKey", target, self.update_key_inner(request))
    }

    async fn replace_key_secret(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        audited!(
            request,
            "ReplaceKeySecret",
            named("key"),
            self.replace_key_secret_inner(request)
        )
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        audited!(
            request,
            "DeleteKey",
            deleted("key"),
            self.delete_key_inner(request)
        )
    }

    async fn create_role(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        audited!(request, "CreateRole", role_of, self.put_role(request, true))
    }

    async fn update_role(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::RoleResponse>, Status> {
        audited!(
            request,
            "UpdateRole",
            role_of,
            self.put_role(request, false)
        )
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        audited!(
            request,
            "DeleteRole",
            deleted("role"),
            self.delete_role_inner(request)
        )
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        audited!(
            request,
            "ListRoles",
            all("roles"),
            self.list_roles_inner(request)
        )
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        audited!(
            request,
            "ListRoutes",
            all("routes"),
            self.list_routes_inner(request)
        )
    }

    async fn add_entitlements(
        &self,
        request: Request<pb::AddEntitlementsRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let target = |r: &pb::AddEntitlementsRequest| format!("entitlements {}", r.ids.join(","));
        audited!(
            request,
            "AddEntitlements",
            target,
            self.add_entitlements_inner(request)
        )
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        audited!(request, "Apply", all("document"), self.apply_inner(request))
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

/// Every team a user is in: the listed ones and those of the user's keys.
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
