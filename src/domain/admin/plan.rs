//! What each command changes: existence checks and what the request alone decides. The
//! escalation rule judges the result afterwards ([`super::execute`]).

use std::sync::Arc;

use compact_str::CompactString;

use super::{Command, WriteError};
use crate::domain::{
    Catalog, Expiry, KeySpec, KeyStatus, Model, TeamList,
    model::{Change, ModelViolation, ObjectRef},
};

/// The changes `command` makes to `m`, for the caller whose key is `caller`.
pub fn plan(caller: &str, command: &Command, m: &Model) -> Result<Vec<Change>, WriteError> {
    match command {
        Command::CreateTeam(t) => create(m.teams.contains_key(&t.id), "team", &t.id, || {
            Change::PutTeam(t.clone())
        }),
        Command::UpdateTeam { id, name, active } => {
            let old = m.teams.get(id).ok_or_else(|| not_found("team", id))?;
            let mut team = old.clone();
            set(&mut team.name, name);
            set(&mut team.active, active);
            Ok(changed(old, team, Change::PutTeam))
        }
        Command::DeleteTeam(id) => remove(m.teams.contains_key(id), "team", id, || {
            Change::RemoveTeam(id.clone())
        }),
        Command::CreateUser(u) => create(m.users.contains_key(&u.id), "user", &u.id, || {
            Change::PutUser(u.clone())
        }),
        Command::UpdateUser {
            id,
            name,
            active,
            teams,
        } => update_user(m, id, name, active, teams),
        Command::DeleteUser(id) => remove(m.users.contains_key(id), "user", id, || {
            Change::RemoveUser(id.clone())
        }),
        Command::CreateProject(p) => {
            create(m.projects.contains_key(&p.id), "project", &p.id, || {
                Change::PutProject(p.clone())
            })
        }
        Command::UpdateProject { id, team, name } => {
            let old = m.projects.get(id).ok_or_else(|| not_found("project", id))?;
            let mut project = old.clone();
            set(&mut project.team, team);
            set(&mut project.name, name);
            Ok(changed(old, project, Change::PutProject))
        }
        Command::DeleteProject(id) => remove(m.projects.contains_key(id), "project", id, || {
            Change::RemoveProject(id.clone())
        }),
        Command::CreateKey(spec) => create_key(m, spec),
        Command::UpdateKey {
            prefix,
            status,
            roles,
            expires_at,
        } => update_key(m, prefix, status, roles, expires_at),
        Command::ReplaceKeySecret { prefix, hash } => {
            let old = m.keys.get(prefix).ok_or_else(|| not_found("key", prefix))?;
            let mut spec = (**old).clone();
            spec.secret_hash = *hash;
            Ok(vec![Change::PutKey(Arc::new(spec))])
        }
        Command::DeleteKey(prefix) => remove(m.keys.contains_key(prefix), "key", prefix, || {
            Change::RemoveKey(Arc::from(prefix.as_str()))
        }),
        Command::CreateRole(role) => put_role(m, role, true),
        Command::UpdateRole(role) => put_role(m, role, false),
        Command::DeleteRole(id) => delete_role(m, id),
        Command::AddEntitlements(ids) => Ok(ids
            .iter()
            .filter(|id| !m.catalog.has_entitlement(id))
            .map(|id| Change::PutEntitlement(id.clone()))
            .collect()),
        Command::Apply { document, prune } => apply(caller, m, document, *prune),
    }
}

fn update_user(
    m: &Model,
    id: &str,
    name: &Option<CompactString>,
    active: &Option<bool>,
    teams: &Option<TeamList>,
) -> Result<Vec<Change>, WriteError> {
    let old = m.users.get(id).ok_or_else(|| not_found("user", id))?;
    let mut user = (**old).clone();
    set(&mut user.name, name);
    set(&mut user.active, active);
    set(&mut user.teams, teams);
    Ok(changed(&**old, user, |u| Change::PutUser(Arc::new(u))))
}

fn create_key(m: &Model, spec: &Arc<KeySpec>) -> Result<Vec<Change>, WriteError> {
    if m.keys.contains_key(spec.prefix.as_str()) {
        // A field violation rather than AlreadyExists: the request's prefix is at fault.
        return Err(WriteError::Invalid(vec![ModelViolation {
            object: ObjectRef::Key(Arc::from(spec.prefix.as_str())),
            field: "prefix",
            message: format!("prefix {} is already taken", spec.prefix),
        }]));
    }
    Ok(vec![Change::PutKey(spec.clone())])
}

fn update_key(
    m: &Model,
    prefix: &str,
    status: &Option<KeyStatus>,
    roles: &Option<Arc<[Arc<str>]>>,
    expires_at: &Option<Expiry>,
) -> Result<Vec<Change>, WriteError> {
    let old = m.keys.get(prefix).ok_or_else(|| not_found("key", prefix))?;
    let mut spec = (**old).clone();
    set(&mut spec.status, status);
    set(&mut spec.roles, roles);
    set(&mut spec.expires_at, expires_at);
    Ok(changed(&**old, spec, |k| Change::PutKey(Arc::new(k))))
}

fn delete_role(m: &Model, id: &Arc<str>) -> Result<Vec<Change>, WriteError> {
    let role = m.catalog.role(id).ok_or_else(|| not_found("role", id))?;
    if role.prebuilt {
        return Err(prebuilt(id));
    }
    still_bound(m, id)?;
    Ok(vec![Change::RemoveRole(id.clone())])
}

fn not_found(kind: &str, id: &str) -> WriteError {
    WriteError::NotFound(format!("{kind} {id}"))
}

/// A new object: refused when one with its id exists.
fn create(
    exists: bool,
    kind: &str,
    id: &str,
    put: impl FnOnce() -> Change,
) -> Result<Vec<Change>, WriteError> {
    if exists {
        return Err(WriteError::AlreadyExists(format!("{kind} {id}")));
    }
    Ok(vec![put()])
}

/// The removal of an object that must exist.
fn remove(
    exists: bool,
    kind: &str,
    id: &str,
    change: impl FnOnce() -> Change,
) -> Result<Vec<Change>, WriteError> {
    if !exists {
        return Err(not_found(kind, id));
    }
    Ok(vec![change()])
}

/// Sets a field the update names; leaves it when the update does not.
fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(value) = value {
        *field = value.clone();
    }
}

/// The change putting `new` when it differs from `old`; none when it is the same.
fn changed<T: PartialEq>(old: &T, new: T, put: impl FnOnce(T) -> Change) -> Vec<Change> {
    if *old == new { vec![] } else { vec![put(new)] }
}

fn put_role(
    m: &Model,
    role: &Arc<crate::domain::Role>,
    create: bool,
) -> Result<Vec<Change>, WriteError> {
    let existing = m.catalog.role(&role.id);
    if existing.is_some_and(|r| r.prebuilt) || Catalog::is_prebuilt(&role.id) {
        return Err(prebuilt(&role.id));
    }
    match (create, existing.is_some()) {
        (true, true) => Err(WriteError::AlreadyExists(format!("role {}", role.id))),
        (false, false) => Err(not_found("role", &role.id)),
        _ => Ok(vec![Change::PutRole(role.clone())]),
    }
}

/// The changes that make the state equal to `target`, which must keep the calling key active.
fn apply(caller: &str, m: &Model, target: &Model, prune: bool) -> Result<Vec<Change>, WriteError> {
    let keeps_caller = match target.keys.get(caller) {
        Some(k) => k.status == KeyStatus::Active,
        None => !prune,
    };
    if !keeps_caller {
        return Err(WriteError::FailedPrecondition(format!(
            "the document would remove or deactivate key {caller}, which is making this call; add it to the document"
        )));
    }
    let mut changes = m.diff(target);
    if !prune {
        changes.retain(|c| !c.is_removal());
    }
    Ok(changes)
}

fn prebuilt(id: &str) -> WriteError {
    WriteError::Invalid(vec![ModelViolation {
        object: ObjectRef::Role(Arc::from(id)),
        field: "id",
        message: format!(
            "{id} is a prebuilt role; it changes only through a policy document with override: true"
        ),
    }])
}

/// Refuses to delete a role that keys still hold, naming (up to 20 of) them.
fn still_bound(m: &Model, id: &Arc<str>) -> Result<(), WriteError> {
    let mut bound: Vec<&str> = m
        .keys
        .values()
        .filter(|k| k.roles.contains(id))
        .map(|k| &*k.prefix)
        .collect();
    if bound.is_empty() {
        return Ok(());
    }
    bound.sort();
    let shown = bound
        .iter()
        .take(20)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    Err(WriteError::Invalid(vec![ModelViolation {
        object: ObjectRef::Role(id.clone()),
        field: "id",
        message: format!(
            "role {id} is still bound to {} key(s): {shown}{}; unbind it first",
            bound.len(),
            if bound.len() > 20 { ", …" } else { "" }
        ),
    }]))
}
