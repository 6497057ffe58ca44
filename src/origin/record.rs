//! The stored form of the model's objects and changes (JSON values, in the embedded store and in
//! etcd): plain serde records, so that the domain types stay free of any storage format and the
//! stored form can evolve with explicit versions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{
    Expiry, Grant, Interner, KeySpec, KeyStatus, KeyType, Project, RequestorId, Role, RoleType,
    RouteSpec, Scope, SecretHash, Team, User, ValueSource, model::Change,
};

/// Why a stored record cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("a stored record is corrupt: {0}")]
pub struct CorruptRecord(pub String);

#[derive(Serialize, Deserialize)]
pub(crate) struct TeamRec {
    id: String,
    name: String,
    active: bool,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct UserRec {
    id: String,
    name: String,
    active: bool,
    teams: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ProjectRec {
    id: String,
    team: String,
    name: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct GrantRec {
    entitlement: String,
    scope: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RoleRec {
    id: String,
    #[serde(rename = "type")]
    role_type: String,
    grants: Vec<GrantRec>,
    prebuilt: bool,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KeyRec {
    prefix: String,
    /// Hex SHA-256 of the secret; the secret itself is never stored.
    secret_sha256: String,
    #[serde(rename = "type")]
    key_type: String,
    user: Option<String>,
    team: Option<String>,
    project: Option<String>,
    roles: Vec<String>,
    status: String,
    expires_at: Option<i64>,
}

/// The version of [`RoutesRec`] this build writes and reads.
const ROUTES_VERSION: u32 = 1;

/// The route table as stored: one record for the whole table, with its format's version (a
/// store without one holds the built-in default table).
#[derive(Serialize, Deserialize)]
pub(crate) struct RoutesRec {
    version: u32,
    routes: Vec<RouteRec>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RouteRec {
    method: String,
    path: String,
    entitlement: String,
    /// `path.<param>`, `header.<name>` or `query.<name>`, as in a policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner_user: Option<String>,
}

impl From<&[RouteSpec]> for RoutesRec {
    fn from(routes: &[RouteSpec]) -> Self {
        let text = |s: &Option<ValueSource>| s.as_ref().map(ToString::to_string);
        RoutesRec {
            version: ROUTES_VERSION,
            routes: routes
                .iter()
                .map(|r| RouteRec {
                    method: r.method.clone(),
                    path: r.path.clone(),
                    entitlement: r.entitlement.clone(),
                    team: text(&r.team),
                    owner_key: text(&r.owner_key),
                    owner_user: text(&r.owner_user),
                })
                .collect(),
        }
    }
}

impl TryFrom<RoutesRec> for Arc<[RouteSpec]> {
    type Error = CorruptRecord;
    fn try_from(r: RoutesRec) -> Result<Self, Self::Error> {
        if r.version != ROUTES_VERSION {
            return Err(bad(format!(
                "routes: record version {} (this build reads version {ROUTES_VERSION})",
                r.version
            )));
        }
        let source = |i: usize, s: Option<String>| {
            s.map(|text| ValueSource::parse(&text).map_err(|e| bad(format!("routes[{i}]: {e}"))))
                .transpose()
        };
        r.routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(RouteSpec {
                    method: r.method,
                    path: r.path,
                    entitlement: r.entitlement,
                    team: source(i, r.team)?,
                    owner_key: source(i, r.owner_key)?,
                    owner_user: source(i, r.owner_user)?,
                })
            })
            .collect()
    }
}

/// One change as stored in the change log.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ChangeRec {
    PutEntitlement { id: String },
    RemoveEntitlement { id: String },
    PutRole { role: RoleRec },
    RemoveRole { id: String },
    PutTeam { team: TeamRec },
    RemoveTeam { id: String },
    PutUser { user: UserRec },
    RemoveUser { id: String },
    PutProject { project: ProjectRec },
    RemoveProject { id: String },
    PutKey { key: KeyRec },
    RemoveKey { prefix: String },
    PutRoutes { routes: RoutesRec },
    ResetRoutes,
}

fn arc(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn bad(what: impl Into<String>) -> CorruptRecord {
    CorruptRecord(what.into())
}

impl From<&Role> for RoleRec {
    fn from(r: &Role) -> Self {
        RoleRec {
            id: r.id.to_string(),
            role_type: r.role_type.as_str().into(),
            grants: r
                .grants
                .iter()
                .map(|g| GrantRec {
                    entitlement: g.entitlement.to_string(),
                    scope: g.scope.as_str().into(),
                })
                .collect(),
            prebuilt: r.prebuilt,
        }
    }
}

impl TryFrom<RoleRec> for Role {
    type Error = CorruptRecord;
    fn try_from(r: RoleRec) -> Result<Self, Self::Error> {
        let role_type = match r.role_type.as_str() {
            "user" => RoleType::User,
            "system" => RoleType::System,
            "implicit" => RoleType::Implicit,
            other => return Err(bad(format!("role {}: type {other:?}", r.id))),
        };
        let grants = r
            .grants
            .into_iter()
            .map(|g| {
                let scope: Scope = g.scope.parse().map_err(|e| bad(format!("{e}")))?;
                Ok(Grant {
                    entitlement: arc(&g.entitlement),
                    scope,
                })
            })
            .collect::<Result<_, CorruptRecord>>()?;
        Ok(Role {
            id: arc(&r.id),
            role_type,
            grants,
            prebuilt: r.prebuilt,
        })
    }
}

impl From<&KeySpec> for KeyRec {
    fn from(k: &KeySpec) -> Self {
        KeyRec {
            prefix: k.prefix.to_string(),
            secret_sha256: k.secret_hash.to_hex(),
            key_type: k.key_type.as_str().into(),
            user: k.user().map(|u| u.to_string()),
            team: k.team.as_deref().map(Into::into),
            project: k.project().map(|p| p.to_string()),
            roles: k.roles.iter().map(|r| r.to_string()).collect(),
            status: k.status.as_str().into(),
            expires_at: k.expires_at.unix(),
        }
    }
}

/// A key from its record, its ids and role list shared through `ids`.
fn key_spec(k: KeyRec, ids: &mut Interner) -> Result<KeySpec, CorruptRecord> {
    let secret_hash: SecretHash = k
        .secret_sha256
        .parse()
        .map_err(|e| bad(format!("key {}: {e}", k.prefix)))?;
    let key_type = match k.key_type.as_str() {
        "team" => KeyType::Team,
        "project" => KeyType::Project,
        other => return Err(bad(format!("key {}: type {other:?}", k.prefix))),
    };
    let status: KeyStatus = k.status.parse().map_err(bad)?;
    let owner = KeySpec::owner_of(key_type, k.user.as_deref(), k.project.as_deref())
        .map_err(|e| bad(format!("key {}: {e}", k.prefix)))?;
    let expires_at =
        Expiry::from_unix(k.expires_at).map_err(|e| bad(format!("key {}: {e}", k.prefix)))?;
    Ok(KeySpec {
        prefix: k.prefix.as_str().into(),
        secret_hash,
        key_type,
        owner: ids.id(owner),
        team: k.team.as_deref().map(|t| ids.id(t)),
        roles: ids.roles(&k.roles),
        status,
        expires_at,
    })
}

impl From<&Change> for ChangeRec {
    fn from(c: &Change) -> Self {
        match c {
            Change::PutEntitlement(id) => ChangeRec::PutEntitlement { id: id.to_string() },
            Change::RemoveEntitlement(id) => ChangeRec::RemoveEntitlement { id: id.to_string() },
            Change::PutRole(r) => ChangeRec::PutRole {
                role: RoleRec::from(&**r),
            },
            Change::RemoveRole(id) => ChangeRec::RemoveRole { id: id.to_string() },
            Change::PutTeam(t) => ChangeRec::PutTeam {
                team: TeamRec {
                    id: t.id.to_string(),
                    name: t.name.clone(),
                    active: t.active,
                },
            },
            Change::RemoveTeam(id) => ChangeRec::RemoveTeam { id: id.to_string() },
            Change::PutUser(u) => ChangeRec::PutUser {
                user: UserRec {
                    id: u.id.to_string(),
                    name: u.name.to_string(),
                    active: u.active,
                    teams: u.teams.iter().map(|t| t.to_string()).collect(),
                },
            },
            Change::RemoveUser(id) => ChangeRec::RemoveUser { id: id.to_string() },
            Change::PutProject(p) => ChangeRec::PutProject {
                project: ProjectRec {
                    id: p.id.to_string(),
                    team: p.team.to_string(),
                    name: p.name.clone(),
                },
            },
            Change::RemoveProject(id) => ChangeRec::RemoveProject { id: id.to_string() },
            Change::PutKey(k) => ChangeRec::PutKey {
                key: KeyRec::from(&**k),
            },
            Change::RemoveKey(p) => ChangeRec::RemoveKey {
                prefix: p.to_string(),
            },
            Change::PutRoutes(routes) => ChangeRec::PutRoutes {
                routes: RoutesRec::from(&**routes),
            },
            Change::ResetRoutes => ChangeRec::ResetRoutes,
        }
    }
}

/// A change from its record, the ids of its objects shared through `ids`.
fn change(c: ChangeRec, ids: &mut Interner) -> Result<Change, CorruptRecord> {
    Ok(match c {
        ChangeRec::PutEntitlement { id } => Change::PutEntitlement(arc(&id)),
        ChangeRec::RemoveEntitlement { id } => Change::RemoveEntitlement(arc(&id)),
        ChangeRec::PutRole { role } => Change::PutRole(Arc::new(role.try_into()?)),
        ChangeRec::RemoveRole { id } => Change::RemoveRole(arc(&id)),
        ChangeRec::PutTeam { team } => Change::PutTeam(Team {
            id: ids.id(&team.id),
            name: team.name,
            active: team.active,
        }),
        ChangeRec::RemoveTeam { id } => Change::RemoveTeam(arc(&id)),
        ChangeRec::PutUser { user } => Change::PutUser(Arc::new(User {
            id: ids.id(&user.id),
            name: user.name.into(),
            active: user.active,
            teams: ids.teams(&user.teams),
        })),
        ChangeRec::RemoveUser { id } => Change::RemoveUser(arc(&id)),
        ChangeRec::PutProject { project } => Change::PutProject(Project {
            id: ids.id(&project.id),
            team: ids.id(&project.team),
            name: project.name,
        }),
        ChangeRec::RemoveProject { id } => Change::RemoveProject(arc(&id)),
        ChangeRec::PutKey { key } => Change::PutKey(Arc::new(key_spec(key, ids)?)),
        ChangeRec::RemoveKey { prefix } => Change::RemoveKey(arc(&prefix)),
        ChangeRec::PutRoutes { routes } => Change::PutRoutes(routes.try_into()?),
        ChangeRec::ResetRoutes => Change::ResetRoutes,
    })
}

/// Encodes a list of changes (one revision) for the change log.
pub(crate) fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let recs: Vec<ChangeRec> = changes.iter().map(ChangeRec::from).collect();
    serde_json::to_vec(&recs).expect("records always serialize")
}

/// Decodes a change log entry.
pub(crate) fn decode_changes(bytes: &[u8]) -> Result<Vec<Change>, CorruptRecord> {
    let recs: Vec<ChangeRec> = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let mut ids = Interner::default();
    recs.into_iter().map(|c| change(c, &mut ids)).collect()
}

/// One requestor as stored: `user/<id>` or `project/<id>`.
fn requestor_text(id: &RequestorId) -> String {
    match id {
        RequestorId::User(u) => format!("user/{u}"),
        RequestorId::Project(p) => format!("project/{p}"),
    }
}

/// Encodes the requestors whose grants a revision changed.
pub(crate) fn encode_requestors(ids: &[RequestorId]) -> Vec<u8> {
    let texts: Vec<String> = ids.iter().map(requestor_text).collect();
    serde_json::to_vec(&texts).expect("strings always serialize")
}

/// Decodes [`encode_requestors`]' output.
pub(crate) fn decode_requestors(bytes: &[u8]) -> Result<Vec<RequestorId>, CorruptRecord> {
    let texts: Vec<String> = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    texts
        .iter()
        .map(|t| match t.split_once('/') {
            Some(("user", id)) => Ok(RequestorId::User(arc(id))),
            Some(("project", id)) => Ok(RequestorId::Project(arc(id))),
            _ => Err(bad(format!("requestor {t:?}"))),
        })
        .collect()
}

/// The state-table key and value for the object a change puts or removes: `(key, Some(value))`
/// to store, `(key, None)` to delete.
pub(crate) fn object_entry(change: &Change) -> (String, Option<Vec<u8>>) {
    let key = match change {
        Change::PutEntitlement(id) | Change::RemoveEntitlement(id) => format!("entitlement/{id}"),
        Change::PutRole(r) => format!("role/{}", r.id),
        Change::RemoveRole(id) => format!("role/{id}"),
        Change::PutTeam(t) => format!("team/{}", t.id),
        Change::RemoveTeam(id) => format!("team/{id}"),
        Change::PutUser(u) => format!("user/{}", u.id),
        Change::RemoveUser(id) => format!("user/{id}"),
        Change::PutProject(p) => format!("project/{}", p.id),
        Change::RemoveProject(id) => format!("project/{id}"),
        Change::PutKey(k) => format!("key/{}", k.prefix),
        Change::RemoveKey(p) => format!("key/{p}"),
        // One record for the whole table; none for the default table.
        Change::PutRoutes(_) | Change::ResetRoutes => "routes".to_owned(),
    };
    let value = match change {
        // A removed prebuilt role must stay removed after a restart, so its removal is stored
        // as a tombstone rather than as a missing record.
        Change::RemoveRole(_) => Some(b"null".to_vec()),
        Change::RemoveEntitlement(_)
        | Change::RemoveTeam(_)
        | Change::RemoveUser(_)
        | Change::RemoveProject(_)
        | Change::RemoveKey(_)
        | Change::ResetRoutes => None,
        put => Some(encode_changes(std::slice::from_ref(put))),
    };
    (key, value)
}

/// The change that a deleted stored object stands for: its removal, or for a prebuilt role the
/// role as built in (a deleted record of a prebuilt role brings the default back; rolegate itself
/// stores a removed role as a tombstone).
pub(crate) fn removal_of(key: &str) -> Result<Change, CorruptRecord> {
    if key == "routes" {
        return Ok(Change::ResetRoutes);
    }
    let (kind, id) = key
        .split_once('/')
        .ok_or_else(|| bad(format!("{key}: not an object key")))?;
    Ok(match kind {
        "entitlement" => Change::RemoveEntitlement(arc(id)),
        "role" => match crate::domain::Catalog::builtin().role(id) {
            Some(role) => Change::PutRole(role.clone()),
            None => Change::RemoveRole(arc(id)),
        },
        "team" => Change::RemoveTeam(arc(id)),
        "user" => Change::RemoveUser(arc(id)),
        "project" => Change::RemoveProject(arc(id)),
        "key" => Change::RemoveKey(arc(id)),
        _ => return Err(bad(format!("{key}: not an object key"))),
    })
}

/// Turns a stored object back into the change that puts it (or removes a tombstoned role).
pub(crate) fn decode_object(
    ids: &mut Interner,
    key: &str,
    value: &[u8],
) -> Result<Change, CorruptRecord> {
    if value == b"null" {
        let id = key
            .strip_prefix("role/")
            .ok_or_else(|| bad(format!("{key}: tombstone outside roles")))?;
        return Ok(Change::RemoveRole(arc(id)));
    }
    let recs: Vec<ChangeRec> = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    let mut changes = recs
        .into_iter()
        .map(|c| change(c, ids))
        .collect::<Result<Vec<_>, _>>()?;
    match (changes.pop(), changes.is_empty()) {
        (Some(change), true) => Ok(change),
        _ => Err(bad(format!("{key}: not exactly one object"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::tests::{model, project_key, team_key};

    #[test]
    fn every_kind_of_change_round_trips() {
        let m = model(vec![
            team_key("AliceKey01", "alice", "acme", &["DATA_SCIENTIST"]),
            project_key("FraudKey01", "fraud", &["SYSTEM_KEY"]),
        ]);
        let mut changes = Model::default().diff(&m);
        changes.push(Change::PutEntitlement("reports.export".into()));
        changes.push(Change::RemoveRole("AUDITOR".into()));
        changes.push(Change::RemoveKey("AliceKey01".into()));
        changes.push(Change::PutRoutes(Arc::from(vec![RouteSpec {
            method: "GET".into(),
            path: "/api/teams/{teamId}/reports/*".into(),
            entitlement: "jobs.read".into(),
            team: Some(ValueSource::Path("teamId".into())),
            owner_key: Some(ValueSource::Header("x-owner".into())),
            owner_user: Some(ValueSource::Query("user".into())),
        }])));
        changes.push(Change::ResetRoutes);
        let back = decode_changes(&encode_changes(&changes)).unwrap();
        assert_eq!(back, changes);
        for c in &changes {
            let (key, value) = object_entry(c);
            if let Some(v) = value {
                assert_eq!(
                    &decode_object(&mut Interner::default(), &key, &v).unwrap(),
                    c,
                    "{key}"
                );
            }
        }
        assert!(decode_changes(b"[{\"op\":\"put_nothing\"}]").is_err());
        let ids = vec![
            RequestorId::Project("fraud".into()),
            RequestorId::User("al/ice".into()),
        ];
        assert_eq!(decode_requestors(&encode_requestors(&ids)).unwrap(), ids);
        assert!(decode_requestors(b"[\"team/acme\"]").is_err());
    }

    #[test]
    fn a_routes_record_of_another_version_is_refused_by_name() {
        let stored = br#"[{"op":"put_routes","routes":{"version":2,"routes":[]}}]"#;
        let err = decode_object(&mut Interner::default(), "routes", stored).unwrap_err();
        assert!(
            err.to_string().contains("routes: record version 2"),
            "{err}"
        );
        let bad_source = br#"[{"op":"put_routes","routes":{"version":1,"routes":[
            {"method":"GET","path":"/a","entitlement":"jobs.read","team":"cookie.t"}]}}]"#;
        let err = decode_object(&mut Interner::default(), "routes", bad_source).unwrap_err();
        assert!(err.to_string().contains("routes[0]"), "{err}");
    }

    /// Every part of a model that a policy document can give is kept by the store's objects: a
    /// document's whole model, written as objects and read back, is the same model.
    #[test]
    fn a_whole_document_model_round_trips_through_the_stored_objects() {
        let text = format!(
            "{}\nroutes:\n  - {{ method: GET, path: \"/r/{{teamId}}\", entitlement: reports.export, resource: {{ team: path.teamId, owner_user: header.X-User }} }}\n",
            include_str!("../../deploy/examples/policy.yaml")
        );
        let model = crate::origin::policy_file::parse(&text, "p.yaml")
            .unwrap()
            .model;
        assert!(model.routes.is_some() && !model.catalog.added_entitlements().is_empty());
        let mut back = Model::default();
        let mut ids = Interner::default();
        for change in Model::default().diff(&model) {
            let (key, value) = object_entry(&change);
            back.apply(&decode_object(&mut ids, &key, &value.expect("a put")).unwrap());
        }
        assert_eq!(back, model);
    }

    use crate::domain::Model;
}
