//! Each RPC of `rolegate.v1.Admin`: its handler inside one audit record.

use super::*;

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

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let target = |r: &pb::ExplainRequest| format!("key {}", r.key_prefix);
        audited!(request, "Explain", target, self.explain_inner(request))
    }

    async fn who_can(
        &self,
        request: Request<pb::WhoCanRequest>,
    ) -> Result<Response<pb::WhoCanResponse>, Status> {
        let target = |r: &pb::WhoCanRequest| format!("entitlement {}", r.entitlement);
        audited!(request, "WhoCan", target, self.who_can_inner(request))
    }

    async fn list_history(
        &self,
        request: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        audited!(
            request,
            "ListHistory",
            all("history"),
            self.list_history_inner(request)
        )
    }
}
