//! `rolegate.v1.Admin`: the gRPC face of the Admin core. Reads are answered from the state,
//! each authorized by the same [`State::check`] that answers every other Check; writes are
//! converted into [`Command`]s and executed by the writable origin, which judges each one with
//! the escalation rule ([`crate::domain::escalation`]) on the model it commits on. Every call,
//! allowed or refused, leaves one line in the audit log ([`audit`]).

mod audit;
mod convert;
mod explain;
mod history;
mod page;
mod reads;
mod rpc;
mod writes;

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
        model::{ObjectRef, canonical_roles},
    },
    grpc::{
        pb::{self, admin_server::Admin},
        routes,
        status::{bad_field, policy_invalid, write_status, write_status_for_new},
    },
    origin::{Origin, WritableOrigin, Written, policy_file},
    state::{State, unix_now},
};

use audit::Audit;
pub(crate) use convert::key_pb;
use convert::{
    describe_change, describe_kept, id_field, key_pb_in, owned, project_pb, required, role_from_pb,
    role_pb, status_from, team_list, team_pb, user_pb,
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
