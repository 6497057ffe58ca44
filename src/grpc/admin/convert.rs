//! Conversions between the Admin API's messages and the domain's records and commands.

use std::sync::Arc;

use tonic::Status;

use crate::{
    domain::{
        KeySpec, KeyStatus, KeyType, Model, Project, Role, RoleType, Scope, Team, TeamList, User,
        is_valid_entitlement, model::Change,
    },
    grpc::{pb, status::bad_field},
};

pub(super) fn owned(s: &str) -> Arc<str> {
    Arc::from(s)
}

pub(super) fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(bad_field(field, "required"))
    } else {
        Ok(value)
    }
}

pub(super) fn id_field(field: &str, value: &str) -> Result<Arc<str>, Status> {
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

/// A list of team ids from a request field, each checked like any id.
pub(super) fn team_list(field: &str, teams: &[String]) -> Result<TeamList, Status> {
    teams
        .iter()
        .enumerate()
        .map(|(i, t)| id_field(&format!("{field}[{i}]"), t))
        .collect()
}

pub(super) fn team_pb(t: &Team) -> pb::Team {
    pb::Team {
        id: t.id.to_string(),
        name: t.name.clone(),
        active: t.active,
    }
}

pub(super) fn user_pb(u: &User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        name: u.name.to_string(),
        active: u.active,
        teams: u.teams.iter().map(|t| t.to_string()).collect(),
    }
}

pub(super) fn project_pb(p: &Project) -> pb::Project {
    pb::Project {
        id: p.id.to_string(),
        team: p.team.to_string(),
        name: p.name.clone(),
    }
}

/// A key as the API shows it: never its secret or hash.
pub(crate) fn key_pb(model: &Model, k: &KeySpec) -> pb::Key {
    key_pb_in(k, model.key_team(k).map(|t| &**t))
}

pub(super) fn key_pb_in(k: &KeySpec, team: Option<&str>) -> pb::Key {
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

pub(super) fn role_pb(r: &Role) -> pb::Role {
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

pub(super) fn role_from_pb(r: &pb::Role) -> Result<Role, Status> {
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

pub(super) fn status_from(field: &str, s: &str) -> Result<KeyStatus, Status> {
    s.parse().map_err(|e: String| bad_field(field, e))
}

/// One line per change of an Apply: "put key Foo", "remove team bar".
/// A removal an apply without prune left out, as the object it kept ("team bar").
pub(super) fn describe_kept(c: &Change) -> String {
    match c {
        Change::ResetRoutes => "the route table".into(),
        other => other.object().to_string(),
    }
}

pub(super) fn describe_change(c: &Change) -> String {
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
