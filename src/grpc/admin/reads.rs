//! The Admin API's reads: each authorized by a Check of the caller's key and answered from the
//! state, a collection filtered to what the decision lets the caller see.

use super::*;

impl AdminService {
    pub(super) async fn get_team_inner(
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

    pub(super) async fn list_teams_inner(
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

    pub(super) async fn get_user_inner(
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

    pub(super) async fn list_users_inner(
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

    pub(super) async fn get_project_inner(
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

    pub(super) async fn list_projects_inner(
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

    pub(super) async fn get_key_inner(
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

    pub(super) async fn list_keys_inner(
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

    pub(super) async fn list_roles_inner(
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

    pub(super) async fn list_routes_inner(
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
}
