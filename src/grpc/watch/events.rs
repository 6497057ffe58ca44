//! The events a stream sends: a revision's changes, a snapshot's objects, control events.

use super::*;

/// Which events a stream passes.
#[derive(Debug, Default)]
pub(super) struct Filter {
    pub(super) teams: HashSet<String>,
    pub(super) users: HashSet<String>,
    pub(super) prefixes: HashSet<String>,
    pub(super) kinds: HashSet<i32>,
}

impl Filter {
    pub(super) fn from_request(req: &pb::WatchRequest) -> Self {
        Filter {
            teams: req.team_ids.iter().cloned().collect(),
            users: req.user_ids.iter().cloned().collect(),
            prefixes: req.key_prefixes.iter().cloned().collect(),
            kinds: req.kinds.iter().copied().collect(),
        }
    }

    pub(super) fn passes(
        &self,
        kind: pb::EventKind,
        team: Option<&str>,
        user: Option<&str>,
        key: Option<&str>,
    ) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&(kind as i32)) {
            return false;
        }
        if self.teams.is_empty() && self.users.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        team.is_some_and(|t| self.teams.contains(t))
            || user.is_some_and(|u| self.users.contains(u))
            || key.is_some_and(|k| self.prefixes.contains(k))
    }
}

/// The wire form of a key.
pub(super) fn key_event(spec: &KeySpec, team: Option<&Arc<str>>, secrets: bool) -> pb::KeyUpserted {
    pb::KeyUpserted {
        prefix: spec.prefix.to_string(),
        key_type: pb::KeyType::from(spec.key_type) as i32,
        user_id: spec.user().map(|u| u.to_string()).unwrap_or_default(),
        team_id: team.map(|t| t.to_string()).unwrap_or_default(),
        project_id: spec.project().map(|p| p.to_string()).unwrap_or_default(),
        roles: spec.roles.iter().map(|r| r.to_string()).collect(),
        status: spec.status.as_str().to_owned(),
        expires_at: spec.expires_at.unix().unwrap_or(0),
        secret_sha256: if secrets {
            spec.secret_hash.to_hex()
        } else {
            String::new()
        },
    }
}

pub(super) fn role_def(role: &Role) -> pb::RoleDefinition {
    pb::RoleDefinition {
        id: role.id.to_string(),
        role_type: role.role_type.as_str().to_owned(),
        grants: role
            .grants
            .iter()
            .map(|g| pb::RoleGrant {
                entitlement: g.entitlement.to_string(),
                scope: pb::Scope::from(g.scope) as i32,
            })
            .collect(),
        prebuilt: role.prebuilt,
    }
}

/// The wire event of one logged change, unless the filter drops it.
pub(super) fn change_event(
    c: &LoggedChange,
    filter: &Filter,
    secrets: bool,
) -> Option<pb::watch_event::Event> {
    use pb::{EventKind as K, watch_event::Event as E};
    let team = c.team.as_deref();
    let user = c.user.as_deref();
    let (kind, key, event) = match &c.change {
        Change::PutKey(spec) => (
            K::Key,
            Some(&*spec.prefix),
            E::KeyUpserted(key_event(spec, c.team.as_ref(), secrets)),
        ),
        Change::RemoveKey(p) => (K::Key, Some(&**p), E::KeyRemoved(p.to_string())),
        Change::PutRole(role) if c.existed => (K::Role, None, E::RoleChanged(role_def(role))),
        Change::PutRole(role) => (K::Role, None, E::RoleDefined(role_def(role))),
        Change::RemoveRole(id) => (K::Role, None, E::RoleRemoved(id.to_string())),
        Change::PutTeam(t) => (
            K::Team,
            None,
            E::TeamChanged(pb::TeamDefinition {
                id: t.id.to_string(),
                name: t.name.clone(),
                active: t.active,
            }),
        ),
        Change::RemoveTeam(id) => (K::Team, None, E::TeamRemoved(id.to_string())),
        Change::PutUser(u) => (
            K::User,
            None,
            E::UserChanged(pb::UserDefinition {
                id: u.id.to_string(),
                name: u.name.to_string(),
                active: u.active,
                team_ids: u.teams.iter().map(|t| t.to_string()).collect(),
            }),
        ),
        Change::RemoveUser(id) => (K::User, None, E::UserRemoved(id.to_string())),
        Change::PutProject(p) => (
            K::Project,
            None,
            E::ProjectChanged(pb::ProjectDefinition {
                id: p.id.to_string(),
                team_id: p.team.to_string(),
                name: p.name.clone(),
            }),
        ),
        Change::RemoveProject(id) => (K::Project, None, E::ProjectRemoved(id.to_string())),
        Change::PutEntitlement(e) => (K::Entitlement, None, E::EntitlementAdded(e.to_string())),
        Change::RemoveEntitlement(e) => {
            (K::Entitlement, None, E::EntitlementRemoved(e.to_string()))
        }
        Change::PutRoutes(routes) => (
            K::Routes,
            None,
            E::RoutesChanged(pb::RouteTable {
                routes: routes.iter().map(pb::RouteDefinition::from).collect(),
            }),
        ),
        Change::ResetRoutes => (K::Routes, None, E::RoutesDefault(pb::RoutesDefault {})),
    };
    filter.passes(kind, team, user, key).then_some(event)
}

/// The whole model as "defined" changes, in the order a diff from the empty model lists them
/// (entitlements, roles, teams, users, projects, keys, the route table unless it is the
/// default), described for the filter directly
/// rather than by diffing and looking each object up again.
pub(super) fn snapshot_objects(model: &Model) -> impl Iterator<Item = LoggedChange> + '_ {
    let logged = |change: Change, team: Option<Arc<str>>, user: Option<Arc<str>>| LoggedChange {
        change,
        team,
        user,
        existed: false,
    };
    let defaults = crate::domain::Catalog::default();
    let mut roles: Vec<Arc<Role>> = model
        .catalog
        .roles()
        .filter(|r| defaults.role(&r.id) != Some(*r))
        .cloned()
        .collect();
    roles.sort_by(|a, b| a.id.cmp(&b.id));
    let entitlements = model.catalog.added_entitlements();
    entitlements
        .into_iter()
        .map(move |e| logged(Change::PutEntitlement(e), None, None))
        .chain(
            roles
                .into_iter()
                .map(move |r| logged(Change::PutRole(r), None, None)),
        )
        .chain(
            model
                .teams
                .values()
                .map(move |t| logged(Change::PutTeam(t.clone()), Some(t.id.clone()), None)),
        )
        .chain(
            model
                .users
                .values()
                .map(move |u| logged(Change::PutUser(u.clone()), None, Some(u.id.clone()))),
        )
        .chain(
            model
                .projects
                .values()
                .map(move |p| logged(Change::PutProject(p.clone()), Some(p.team.clone()), None)),
        )
        .chain(model.keys.values().map(move |k| {
            logged(
                Change::PutKey(k.clone()),
                model.key_team(k).cloned(),
                k.user().cloned(),
            )
        }))
        .chain(
            model
                .routes
                .iter()
                .map(move |r| logged(Change::PutRoutes(r.clone()), None, None)),
        )
}

/// The events of one revision that pass the filter; the last one is marked.
pub(super) fn revision_events(
    rev: &LoggedRevision,
    filter: &Filter,
    secrets: bool,
) -> Vec<pb::WatchEvent> {
    let mut out: Vec<pb::WatchEvent> = rev
        .changes
        .iter()
        .filter_map(|c| change_event(c, filter, secrets))
        .chain(rev.grants_changed.iter().filter_map(|id| {
            let (user, project) = match id {
                RequestorId::User(u) => (u.to_string(), String::new()),
                RequestorId::Project(p) => (String::new(), p.to_string()),
            };
            let user_ref = (!user.is_empty()).then_some(user.as_str());
            filter
                .passes(pb::EventKind::Grants, None, user_ref, None)
                .then(|| {
                    pb::watch_event::Event::GrantsChanged(pb::GrantsChanged {
                        user_id: user.clone(),
                        project_id: project,
                    })
                })
        }))
        .map(|event| pb::WatchEvent {
            revision: rev.revision,
            end_of_revision: false,
            history: String::new(),
            event: Some(event),
        })
        .collect();
    if let Some(last) = out.last_mut() {
        last.end_of_revision = true;
    }
    out
}

pub(super) fn control(
    revision: u64,
    history: &str,
    event: pb::watch_event::Event,
) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        end_of_revision: true,
        history: history.to_owned(),
        event: Some(event),
    }
}
