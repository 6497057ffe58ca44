//! Conversions between the wire types of `rolegate.v1` and the domain.

use crate::{
    domain::{KeyType, MAX_ID_LEN, Reason, ResourceRef, RouteSpec, Scope, ValueSource},
    grpc::{pb, status::InvalidRequest},
    state::CheckedDecision,
};

/// The longest entitlement accepted.
pub(crate) const MAX_ENTITLEMENT_LEN: usize = 128;

/// Validates a check and borrows its resource. Keys are not validated here: a malformed key is a
/// denial (`REASON_MALFORMED_KEY`), not an invalid request.
pub(crate) fn resource(req: &pb::CheckRequest) -> Result<ResourceRef<'_>, InvalidRequest> {
    if req.entitlement.is_empty() {
        return Err(InvalidRequest::EmptyEntitlement);
    }
    if req.entitlement.len() > MAX_ENTITLEMENT_LEN {
        return Err(InvalidRequest::TooLong {
            field: "entitlement",
            max: MAX_ENTITLEMENT_LEN,
        });
    }
    let Some(res) = &req.resource else {
        return Ok(ResourceRef::default());
    };
    for (field, value) in [
        ("resource.team_id", &res.team_id),
        ("resource.owner_key_prefix", &res.owner_key_prefix),
        ("resource.owner_user_id", &res.owner_user_id),
    ] {
        if value.len() > MAX_ID_LEN {
            return Err(InvalidRequest::TooLong {
                field,
                max: MAX_ID_LEN,
            });
        }
    }
    Ok(ResourceRef {
        team_id: &res.team_id,
        owner_key_prefix: &res.owner_key_prefix,
        owner_user_id: &res.owner_user_id,
    })
}

impl From<Scope> for pb::Scope {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::Own => pb::Scope::Own,
            Scope::Team => pb::Scope::Team,
            Scope::All => pb::Scope::All,
        }
    }
}

impl From<&crate::domain::explain::Explanation> for pb::Explanation {
    fn from(e: &crate::domain::explain::Explanation) -> Self {
        let decided = e.decided_by.as_ref();
        pb::Explanation {
            requestor: e.requestor.clone(),
            keys: e
                .keys
                .iter()
                .map(|k| pb::ExplainedKey {
                    prefix: k.prefix.clone(),
                    team_id: k.team.clone(),
                    roles: k.roles.clone(),
                    skipped: k.skipped.clone(),
                    scopes: k
                        .scopes
                        .iter()
                        .map(|s| pb::Scope::from(*s).into())
                        .collect(),
                })
                .collect(),
            decided_by_key: decided.map(|d| d.key.clone()).unwrap_or_default(),
            decided_by_role: decided.map(|d| d.role.clone()).unwrap_or_default(),
            decided_scope: decided
                .map_or(pb::Scope::Unspecified, |d| d.scope.into())
                .into(),
            covers: e.covers.clone(),
            coverage: e.coverage.clone(),
        }
    }
}

impl From<&crate::domain::privileges::PrivilegeChange> for pb::PrivilegeChange {
    fn from(c: &crate::domain::privileges::PrivilegeChange) -> Self {
        pb::PrivilegeChange {
            requestor: c.requestor.clone(),
            gained: c.gained,
            entitlement: c.entitlement.clone(),
            scope: pb::Scope::from(c.scope).into(),
            team_id: c.team.clone(),
            widens_to_all: c.widens_to_all,
            key_prefix: c.key.clone(),
        }
    }
}

impl From<&crate::domain::privileges::Holder<'_>> for pb::Holder {
    fn from(h: &crate::domain::privileges::Holder<'_>) -> Self {
        pb::Holder {
            requestor: h.requestor_name(),
            key_prefix: h.prefix().to_owned(),
            scope: pb::Scope::from(h.scope).into(),
            team_id: h.team.unwrap_or_default().to_owned(),
            role: h.role.to_owned(),
        }
    }
}

impl From<Reason> for pb::Reason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::Allowed => pb::Reason::Allowed,
            Reason::MalformedKey => pb::Reason::MalformedKey,
            Reason::UnknownKey => pb::Reason::UnknownKey,
            Reason::WrongSecret => pb::Reason::WrongSecret,
            Reason::KeyInactive | Reason::UserInactive => pb::Reason::KeyInactive,
            Reason::KeyExpired => pb::Reason::KeyExpired,
            Reason::TeamInactive => pb::Reason::TeamInactive,
            Reason::UnknownEntitlement => pb::Reason::UnknownEntitlement,
            Reason::NoGrant => pb::Reason::NoGrant,
            Reason::OutOfScope => pb::Reason::OutOfScope,
        }
    }
}

impl From<KeyType> for pb::KeyType {
    fn from(t: KeyType) -> Self {
        match t {
            KeyType::Team => pb::KeyType::Team,
            KeyType::Project => pb::KeyType::Project,
        }
    }
}

impl From<&RouteSpec> for pb::RouteDefinition {
    fn from(r: &RouteSpec) -> Self {
        let text =
            |s: &Option<ValueSource>| s.as_ref().map(ToString::to_string).unwrap_or_default();
        pb::RouteDefinition {
            method: r.method.clone(),
            path: r.path.clone(),
            entitlement: r.entitlement.clone(),
            team: text(&r.team),
            owner_key: text(&r.owner_key),
            owner_user: text(&r.owner_user),
        }
    }
}

impl TryFrom<&pb::RouteDefinition> for RouteSpec {
    type Error = String;
    /// The route a definition names; a source that is not `path.`/`header.`/`query.` is an
    /// error. The rest (method, pattern, entitlement) is the model's to validate.
    fn try_from(r: &pb::RouteDefinition) -> Result<Self, String> {
        let source = |field: &str, text: &str| {
            (!text.is_empty())
                .then(|| ValueSource::parse(text).map_err(|e| format!("{field}: {e}")))
                .transpose()
        };
        Ok(RouteSpec {
            method: r.method.clone(),
            path: r.path.clone(),
            entitlement: r.entitlement.clone(),
            team: source("team", &r.team)?,
            owner_key: source("owner_key", &r.owner_key)?,
            owner_user: source("owner_user", &r.owner_user)?,
        })
    }
}

fn strings<T: std::ops::Deref<Target = str>>(list: Option<&[T]>) -> Vec<String> {
    list.map(|l| l.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default()
}

impl From<&CheckedDecision> for pb::CheckResponse {
    fn from(outcome: &CheckedDecision) -> Self {
        let d = &outcome.decision;
        let principal = outcome.entry.as_ref().map(|e| pb::Principal {
            key_prefix: e.spec.prefix.to_string(),
            key_type: pb::KeyType::from(e.spec.key_type).into(),
            user_id: e.spec.user().map(|u| u.to_string()).unwrap_or_default(),
            project_id: e.spec.project().map(|p| p.to_string()).unwrap_or_default(),
            team_id: e.team.to_string(),
            roles: e.spec.roles.iter().map(|r| r.to_string()).collect(),
        });
        pb::CheckResponse {
            allowed: d.is_allowed(),
            scope: d
                .scope
                .map_or(pb::Scope::Unspecified, pb::Scope::from)
                .into(),
            reason: pb::Reason::from(d.reason).into(),
            principal,
            filter_team_ids: d
                .filter_team_ids
                .iter()
                .flat_map(|f| f.iter())
                .map(|t| t.to_string())
                .collect(),
            filter_owner_key_prefixes: strings(d.filter_owner_key_prefixes.as_deref()),
            filter_owner_user_id: d
                .filter_owner_user_id
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            revision: outcome.revision,
            message: d.reason.describe().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(entitlement: &str, team: &str) -> pb::CheckRequest {
        pb::CheckRequest {
            api_key: "k.s".into(),
            entitlement: entitlement.into(),
            resource: Some(pb::Resource {
                team_id: team.into(),
                ..Default::default()
            }),
            min_revision: 0,
        }
    }

    #[test]
    fn empty_and_oversized_fields_are_invalid() {
        assert_eq!(
            resource(&req("", "")),
            Err(InvalidRequest::EmptyEntitlement)
        );
        assert!(matches!(
            resource(&req(&"x".repeat(129), "")),
            Err(InvalidRequest::TooLong {
                field: "entitlement",
                ..
            })
        ));
        assert!(matches!(
            resource(&req("jobs.read", &"t".repeat(257))),
            Err(InvalidRequest::TooLong {
                field: "resource.team_id",
                ..
            })
        ));
        assert_eq!(resource(&req("jobs.read", "acme")).unwrap().team_id, "acme");
    }
}
