//! The Admin core: each administrative write as a [`Command`], turned into the changes it makes
//! ([`plan`]) and judged by the escalation rule ([`execute`]). Writable origins run
//! [`execute`] on their own copy of the model, so the rule sees exactly the state the write
//! commits on, and nothing reaches a store without passing it. Pure: no I/O, no clock.

use std::sync::Arc;

use compact_str::CompactString;

use super::{
    Expiry, IndexedModel, KeySpec, KeyStatus, Model, Project, Role, SecretHash, Team, TeamList,
    User,
    escalation::{self, Overlay, Refusal},
    model::{Change, ModelViolation, ObjectRef},
};

/// Why a write was refused. The command and the rule decide all but the last; the store adds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The caller's key cannot act in the state the write applies to.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the change breaks {} rule(s) of the model", .0.len())]
    Invalid(Vec<ModelViolation>),
    /// The store could not commit (disk full, I/O error): nothing of the write is kept.
    #[error("the store cannot commit: {0}")]
    Unavailable(String),
    /// A shared store: other writes kept committing first; nothing of this one was written.
    #[error("{0}")]
    Aborted(String),
}

impl From<Refusal> for WriteError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated(m) => WriteError::Unauthenticated(m),
            Refusal::Denied(m) => WriteError::PermissionDenied(format!("escalation refused: {m}")),
            Refusal::LockOut(m) => WriteError::FailedPrecondition(format!("lock-out refused: {m}")),
        }
    }
}

/// One administrative write. Updates name only the fields they change (`None`: keep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateTeam(Team),
    UpdateTeam {
        id: Arc<str>,
        name: Option<String>,
        active: Option<bool>,
    },
    DeleteTeam(Arc<str>),
    CreateUser(Arc<User>),
    UpdateUser {
        id: Arc<str>,
        name: Option<CompactString>,
        active: Option<bool>,
        teams: Option<TeamList>,
    },
    DeleteUser(Arc<str>),
    CreateProject(Project),
    UpdateProject {
        id: Arc<str>,
        team: Option<Arc<str>>,
        name: Option<String>,
    },
    DeleteProject(Arc<str>),
    /// A new key, its secret already hashed.
    CreateKey(Arc<KeySpec>),
    UpdateKey {
        prefix: CompactString,
        status: Option<KeyStatus>,
        roles: Option<Arc<[Arc<str>]>>,
        expires_at: Option<Expiry>,
    },
    ReplaceKeySecret {
        prefix: CompactString,
        hash: SecretHash,
    },
    DeleteKey(CompactString),
    CreateRole(Arc<Role>),
    UpdateRole(Arc<Role>),
    DeleteRole(Arc<str>),
    AddEntitlements(Vec<Arc<str>>),
    /// Put a whole policy document's objects, as one write. With `prune`, the state becomes
    /// equal to the document: what the document does not name is removed; without it, that is
    /// kept.
    Apply {
        document: Box<Model>,
        prune: bool,
    },
}

impl Command {
    /// The object the command is about (an Apply: none; entitlements: the first).
    fn object(&self) -> Option<ObjectRef> {
        Some(match self {
            Command::CreateTeam(t) => ObjectRef::Team(t.id.clone()),
            Command::UpdateTeam { id, .. } | Command::DeleteTeam(id) => ObjectRef::Team(id.clone()),
            Command::CreateUser(u) => ObjectRef::User(u.id.clone()),
            Command::UpdateUser { id, .. } | Command::DeleteUser(id) => ObjectRef::User(id.clone()),
            Command::CreateProject(p) => ObjectRef::Project(p.id.clone()),
            Command::UpdateProject { id, .. } | Command::DeleteProject(id) => {
                ObjectRef::Project(id.clone())
            }
            Command::CreateKey(k) => ObjectRef::Key(Arc::from(k.prefix.as_str())),
            Command::UpdateKey { prefix, .. }
            | Command::ReplaceKeySecret { prefix, .. }
            | Command::DeleteKey(prefix) => ObjectRef::Key(Arc::from(prefix.as_str())),
            Command::CreateRole(r) | Command::UpdateRole(r) => ObjectRef::Role(r.id.clone()),
            Command::DeleteRole(id) => ObjectRef::Role(id.clone()),
            Command::AddEntitlements(ids) => ObjectRef::Entitlement(ids.first()?.clone()),
            Command::Apply { .. } => return None,
        })
    }
}

/// Runs `command` for the caller whose key is `caller` on `model`, as one write: plans its
/// changes, applies them, judges them with the escalation rule on the model before and after,
/// and validates the result (every rule of the model). On success the changes stay applied and
/// their undo is returned; on any refusal `model` is left as it was.
pub fn execute(
    caller: &str,
    command: &Command,
    model: &mut IndexedModel,
    now: i64,
) -> Result<(Vec<Change>, Vec<Change>), WriteError> {
    let changes = plan(caller, command, model)?;
    if changes.is_empty() {
        // Nothing changes, but a caller who could not have made the change learns nothing
        // from the answer either: it needs the administration of the object all the same.
        escalation::authorize_unchanged(caller, &*model, &command.object(), now)?;
        return Ok((changes, Vec::new()));
    }
    // Judged before it is validated: a caller who may not make the change learns nothing about
    // the model from the rules it would break.
    let undo = model.apply_with_undo(&changes);
    let judged = {
        let before = Overlay::new(model, &undo);
        escalation::authorize(caller, &before, &*model, &changes, now)
    };
    let outcome = judged.map_err(WriteError::from).and_then(|()| {
        let violations = model.validate_after(&changes);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(WriteError::Invalid(violations))
        }
    });
    match outcome {
        Ok(()) => Ok((changes, undo)),
        Err(e) => {
            for c in &undo {
                model.apply(c);
            }
            Err(e)
        }
    }
}

mod plan;
#[cfg(test)]
mod tests;

pub use plan::plan;
