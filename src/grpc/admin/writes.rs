//! The Admin API's writes: each request becomes a [`Command`] that the writable origin judges with
//! the escalation rule and commits.

use super::*;

impl AdminService {
    pub(super) async fn create_team_inner(
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

    pub(super) async fn update_team_inner(
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

    pub(super) async fn delete_team_inner(
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

    pub(super) async fn create_user_inner(
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

    pub(super) async fn update_user_inner(
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

    pub(super) async fn delete_user_inner(
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

    pub(super) async fn create_project_inner(
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

    pub(super) async fn update_project_inner(
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

    pub(super) async fn delete_project_inner(
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

    pub(super) async fn create_key_inner(
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
        let written = if r.prefix.is_empty() {
            let subject = ObjectRef::Key(prefix.as_str().into());
            self.origin()?
                .execute(caller.prefix(), Command::CreateKey(spec))
                .await
                .map_err(|e| write_status_for_new(e, &subject, "the new key"))?
        } else {
            self.execute(&caller, Command::CreateKey(spec)).await?
        };
        Ok(Response::new(pb::CreateKeyResponse {
            key: self.key_now(&prefix),
            api_key: new.key,
            revision: written.revision,
        }))
    }

    pub(super) async fn update_key_inner(
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

    pub(super) async fn replace_key_secret_inner(
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

    pub(super) async fn delete_key_inner(
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

    pub(super) async fn put_role(
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

    pub(super) async fn delete_role_inner(
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

    pub(super) async fn add_entitlements_inner(
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

    pub(super) async fn apply_inner(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let r = request.into_inner();
        let name = match r.name.as_str() {
            "" => "document",
            name if name.len() > crate::domain::MAX_ID_LEN
                || name.chars().any(char::is_control) =>
            {
                return Err(bad_field(
                    "name",
                    "at most 256 bytes, without control characters",
                ));
            }
            name => name,
        };
        let policy = policy_file::parse(&r.document, name).map_err(|e| policy_invalid(&e))?;
        let kept = if r.prune {
            Vec::new()
        } else {
            self.state.read_model(|m| {
                m.diff(&policy.model)
                    .iter()
                    .filter(|c| c.is_removal())
                    .map(describe_kept)
                    .collect()
            })
        };
        let command = Command::Apply {
            document: Box::new(policy.model),
            prune: r.prune,
        };
        if r.dry_run {
            // What the document would change, judged by the same rule as a real apply, on a
            // copy of the model: the answer is the diff only when the apply would be accepted.
            let (model, revision) = self
                .state
                .read_model(|m| (m.clone(), self.state.revision()));
            let mut model = crate::domain::IndexedModel::from(model);
            let before = model.clone();
            let now = unix_now();
            let (changes, _) =
                crate::domain::admin::execute(caller.prefix(), &command, &mut model, now)
                    .map_err(write_status)?;
            let privileges = crate::domain::privileges::privilege_diff(&before, &model, now);
            return Ok(Response::new(pb::ApplyResponse {
                changes: changes.iter().map(describe_change).collect(),
                revision,
                dry_run: true,
                kept,
                privileges: privileges.iter().map(pb::PrivilegeChange::from).collect(),
            }));
        }
        self.origin()?;
        let written = self.execute(&caller, command).await?;
        Ok(Response::new(pb::ApplyResponse {
            changes: written.changes.iter().map(describe_change).collect(),
            revision: written.revision,
            dry_run: false,
            kept,
            privileges: Vec::new(),
        }))
    }
}
