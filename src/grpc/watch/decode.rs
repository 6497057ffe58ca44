//! Events back into changes: what a follower applies from its hub's stream.

use super::*;

/// Why an event cannot be turned into a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {revision}: {message}")]
pub struct BadEvent {
    pub(crate) revision: u64,
    pub(crate) message: String,
}

pub(super) fn scope_from(scope: i32) -> Option<Scope> {
    match pb::Scope::try_from(scope).ok()? {
        pb::Scope::Own => Some(Scope::Own),
        pb::Scope::Team => Some(Scope::Team),
        pb::Scope::All => Some(Scope::All),
        pb::Scope::Unspecified => None,
    }
}

/// A proto3 string field, absent when empty.
pub(super) fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Makes the `Arc`s of a conversion: fresh ones, or shared through an [`Interner`].
pub(super) struct Ids<'i>(Option<&'i mut Interner>);

impl Ids<'_> {
    pub(super) fn id(&mut self, s: &str) -> Arc<str> {
        match &mut self.0 {
            Some(interner) => interner.id(s),
            None => Arc::from(s),
        }
    }

    pub(super) fn opt(&mut self, s: &str) -> Option<Arc<str>> {
        (!s.is_empty()).then(|| self.id(s))
    }

    pub(super) fn teams(&mut self, teams: &[String]) -> TeamList {
        match &mut self.0 {
            Some(interner) => interner.teams(teams),
            None => teams.iter().map(|t| Arc::from(t.as_str())).collect(),
        }
    }

    pub(super) fn roles(&mut self, roles: &[String]) -> Arc<[Arc<str>]> {
        match &mut self.0 {
            Some(interner) => interner.roles(roles),
            None => roles
                .iter()
                .map(|r| Arc::from(r.as_str()))
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

/// The change a data event stands for; `Ok(None)` for events that carry no change
/// (grants changed, control events).
pub fn change_of(ev: &pb::WatchEvent) -> Result<Option<Change>, BadEvent> {
    convert_event(ev, Ids(None))
}

/// [`change_of`], with the ids and role lists shared through `interner`.
pub fn change_of_interned(
    ev: &pb::WatchEvent,
    interner: &mut Interner,
) -> Result<Option<Change>, BadEvent> {
    convert_event(ev, Ids(Some(interner)))
}

pub(super) fn convert_event(
    ev: &pb::WatchEvent,
    mut ids: Ids<'_>,
) -> Result<Option<Change>, BadEvent> {
    use pb::watch_event::Event as E;
    let bad = |message: String| BadEvent {
        revision: ev.revision,
        message,
    };
    let Some(event) = &ev.event else {
        return Err(bad("an event without a body".into()));
    };
    Ok(Some(match event {
        E::KeyUpserted(k) => Change::PutKey(Arc::new(key_of(k, &mut ids).map_err(bad)?)),
        E::KeyRemoved(p) => Change::RemoveKey(Arc::from(p.as_str())),
        E::RoleDefined(r) | E::RoleChanged(r) => {
            Change::PutRole(Arc::new(role_of(r).map_err(bad)?))
        }
        E::RoleRemoved(id) => Change::RemoveRole(Arc::from(id.as_str())),
        E::TeamChanged(t) => Change::PutTeam(Team {
            id: ids.id(&t.id),
            name: t.name.clone(),
            active: t.active,
        }),
        E::TeamRemoved(id) => Change::RemoveTeam(Arc::from(id.as_str())),
        E::UserChanged(u) => Change::PutUser(Arc::new(User {
            id: Arc::from(u.id.as_str()),
            name: u.name.as_str().into(),
            active: u.active,
            teams: ids.teams(&u.team_ids),
        })),
        E::UserRemoved(id) => Change::RemoveUser(Arc::from(id.as_str())),
        E::ProjectChanged(p) => Change::PutProject(Project {
            id: ids.id(&p.id),
            team: ids.id(&p.team_id),
            name: p.name.clone(),
        }),
        E::ProjectRemoved(id) => Change::RemoveProject(Arc::from(id.as_str())),
        E::EntitlementAdded(e) => Change::PutEntitlement(Arc::from(e.as_str())),
        E::EntitlementRemoved(e) => Change::RemoveEntitlement(Arc::from(e.as_str())),
        E::RoutesChanged(table) => Change::PutRoutes(
            table
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    crate::domain::RouteSpec::try_from(r)
                        .map_err(|e| bad(format!("routes[{i}]: {e}")))
                })
                .collect::<Result<_, BadEvent>>()?,
        ),
        E::RoutesDefault(_) => Change::ResetRoutes,
        E::GrantsChanged(_) | E::Bookmark(_) | E::SnapshotEnd(_) | E::Reset(_) => return Ok(None),
    }))
}

/// A key binding from its event; why not, when it cannot be one.
fn key_of(k: &pb::KeyUpserted, ids: &mut Ids<'_>) -> Result<KeySpec, String> {
    let key_type = match pb::KeyType::try_from(k.key_type) {
        Ok(pb::KeyType::Team) => KeyType::Team,
        Ok(pb::KeyType::Project) => KeyType::Project,
        _ => return Err(format!("key {}: unknown key type {}", k.prefix, k.key_type)),
    };
    let secret_hash: SecretHash = k.secret_sha256.parse().map_err(|_| {
        format!(
            "key {}: no secret hash (the upstream key needs keys.replicate at ALL: the FOLLOWER role)",
            k.prefix
        )
    })?;
    let status: KeyStatus = k.status.parse()?;
    let owner = KeySpec::owner_of(key_type, nonempty(&k.user_id), nonempty(&k.project_id))
        .map_err(|e| format!("key {}: {e}", k.prefix))?;
    let expires_at = Expiry::from_unix((k.expires_at != 0).then_some(k.expires_at))
        .map_err(|e| format!("key {}: {e}", k.prefix))?;
    Ok(KeySpec {
        prefix: k.prefix.as_str().into(),
        secret_hash,
        key_type,
        // User ids are nearly unique (see `Interner`); projects own several keys.
        owner: match key_type {
            KeyType::Team => Arc::from(owner),
            KeyType::Project => ids.id(owner),
        },
        team: if key_type == KeyType::Team {
            ids.opt(&k.team_id)
        } else {
            None
        },
        roles: ids.roles(&k.roles),
        status,
        expires_at,
    })
}

/// A role from its event; why not, when it cannot be one.
fn role_of(r: &pb::RoleDefinition) -> Result<Role, String> {
    let role_type = match r.role_type.as_str() {
        "user" => RoleType::User,
        "system" => RoleType::System,
        "implicit" => RoleType::Implicit,
        other => return Err(format!("role {}: unknown role type {other:?}", r.id)),
    };
    let grants = r
        .grants
        .iter()
        .map(|g| {
            Ok(crate::domain::Grant {
                entitlement: Arc::from(g.entitlement.as_str()),
                scope: scope_from(g.scope)
                    .ok_or_else(|| format!("role {}: grant without a scope", r.id))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Role {
        id: Arc::from(r.id.as_str()),
        role_type,
        grants,
        prebuilt: r.prebuilt,
    })
}
