//! Every failure the gRPC front end reports, mapped to a status in one place. A denied check is
//! not here: it is a normal response (`allowed = false`).
//!
//! | cause                                   | gRPC             | HTTP |
//! |-----------------------------------------|------------------|------|
//! | malformed request                       | InvalidArgument  | 400  |
//! | not ready (no state loaded yet)         | Unavailable      | 503  |
//! | `min_revision` not reached in time      | Unavailable      | 503  |
//! | Watch from a future revision            | OutOfRange       | 400  |
//! | Watch: no key, or it does not authenticate (also mid-stream) | Unauthenticated | 401 |
//! | Watch: a read at ALL missing, or secrets without keys.replicate at ALL (also mid-stream) | PermissionDenied | 403 |
//! | Watch: every subscriber place taken     | ResourceExhausted | 429 |
//! | bug                                     | Internal         | 500  |
//! | Admin: bad key / not allowed            | Unauthenticated / PermissionDenied | 401 / 403 |
//! | Admin: rule of the model broken         | InvalidArgument + field violations | 400 |
//! | Admin: write against a policy file      | FailedPrecondition | 409 |
//! | Admin: the store cannot commit          | Unavailable      | 503  |
//!
//! Unavailable, never Unknown or OK, for "cannot answer": Envoy's `failure_mode_allow` and
//! `status_on_error` then decide, and a client may retry another instance.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    domain::{
        ModelViolation, WatchDenied, admin::WriteError, catalog::KEYS_REPLICATE, model::ObjectRef,
    },
    origin::policy_file::PolicyError,
    state::Unanswerable,
};

/// A request that cannot be judged as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidRequest {
    #[error("entitlement is empty")]
    EmptyEntitlement,
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("a batch holds at most {max} checks; this one has {given}")]
    BatchTooLarge { max: usize, given: usize },
    #[error("check {index}: {source}")]
    InBatch {
        index: usize,
        #[source]
        source: Box<InvalidRequest>,
    },
}

impl From<InvalidRequest> for Status {
    fn from(err: InvalidRequest) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// "Cannot answer" is UNAVAILABLE: Envoy and clients may then retry another instance.
impl From<Unanswerable> for Status {
    fn from(err: Unanswerable) -> Self {
        Status::new(Code::Unavailable, err.to_string())
    }
}

/// Admin write failures. Model violations become `google.rpc.BadRequest` field violations
/// (tonic-types), one per object field, named like `keys[PREFIX].roles`.
pub(crate) fn write_status(err: WriteError) -> Status {
    match err {
        WriteError::NotFound(what) => Status::not_found(format!("{what} not found")),
        WriteError::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        WriteError::Unauthenticated(m) => Status::unauthenticated(m),
        WriteError::PermissionDenied(m) => Status::permission_denied(m),
        WriteError::FailedPrecondition(m) => Status::failed_precondition(m),
        // Unavailable, so that clients retry and proxies fail over; nothing was written.
        WriteError::Unavailable(m) => {
            Status::unavailable(format!("the write was not committed: {m}"))
        }
        WriteError::Invalid(violations) => invalid(&violations),
        // ABORTED: a conflict with concurrent writes; the client may try again.
        WriteError::Aborted(m) => Status::aborted(m),
    }
}

fn field_name(v: &ModelViolation) -> String {
    let object = match &v.object {
        ObjectRef::Entitlement(id) => format!("entitlements[{id}]"),
        ObjectRef::Role(id) => format!("roles[{id}]"),
        ObjectRef::Team(id) => format!("teams[{id}]"),
        ObjectRef::User(id) => format!("users[{id}]"),
        ObjectRef::Project(id) => format!("projects[{id}]"),
        ObjectRef::Key(id) => format!("keys[{id}]"),
        ObjectRef::Routes => "routes".to_owned(),
        ObjectRef::Route(i) => format!("routes[{i}]"),
    };
    format!("{object}.{}", v.field)
}

pub(crate) fn invalid(violations: &[ModelViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(field_name(v), v.message.clone());
    }
    let summary: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
    Status::with_error_details(Code::InvalidArgument, summary.join("; "), details)
}

/// A write's failure, with the problems of the object the request creates (`subject`) named by
/// the request's own fields (`roles`, `user`, ...) and called `called`: the caller never saw the
/// identity the server made up for it (a generated key prefix).
pub(crate) fn write_status_for_new(err: WriteError, subject: &ObjectRef, called: &str) -> Status {
    let WriteError::Invalid(violations) = err else {
        return write_status(err);
    };
    let mut details = ErrorDetails::new();
    let mut summary = Vec::with_capacity(violations.len());
    for v in &violations {
        if &v.object == subject {
            details.add_bad_request_violation(v.field, v.message.clone());
            summary.push(format!("{called} ({}): {}", v.field, v.message));
        } else {
            details.add_bad_request_violation(field_name(v), v.message.clone());
            summary.push(v.to_string());
        }
    }
    Status::with_error_details(Code::InvalidArgument, summary.join("; "), details)
}

/// A request field that is wrong before the model is even consulted.
pub(crate) fn bad_field(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, message.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        details,
    )
}

/// A policy document refused by `Apply`: one field violation per problem, located as
/// `document:LINE:COLUMN`.
pub(crate) fn policy_invalid(e: &PolicyError) -> Status {
    let mut details = ErrorDetails::new();
    for p in &e.problems {
        let message = if p.object.is_empty() {
            p.message.clone()
        } else {
            format!("{}: {}", p.object, p.message)
        };
        details.add_bad_request_violation(format!("{}:{}:{}", e.file, p.line, p.column), message);
    }
    Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
}

/// Why a Watch was refused, or ended because its key lost the grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WatchRefused {
    #[error("start_revision {asked} is in the future: this instance has revision {have} (the most a watch may start from is {})", have + 1)]
    FutureRevision { asked: u64, have: u64 },
    #[error("a watch with a snapshot starts at the snapshot's revision: leave start_revision at 0")]
    SnapshotWithStart,
    #[error(
        "Watch needs the caller's key: `authorization: ApiKey <prefix>.<secret>` metadata, or api_key"
    )]
    NoKey,
    #[error("the authorization metadata must be \"ApiKey <prefix>.<secret>\"")]
    BadAuthorization,
    #[error("the key is given both in the authorization metadata and in api_key, and they differ")]
    TwoKeys,
    /// The key does not authenticate: the reason, as a Check would give it.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error(
        "Watch shows the whole state: it needs {0} at ALL scope (held by AUDITOR, SYSTEM_OWNER and FOLLOWER), which this key does not hold"
    )]
    Missing(&'static str),
    #[error(
        "include_secret_hashes needs keys.replicate at ALL scope (the FOLLOWER system role, bound to a project key), which this key does not hold"
    )]
    SecretsDenied,
    #[error(
        "this instance serves at most {limit} Watch streams at once (--watch-max-subscribers); retry later"
    )]
    TooManySubscribers { limit: usize },
    /// A running stream whose key no longer may watch: why, with the code it would get now.
    #[error("the key of this watch may no longer watch: {0}")]
    Lost(Box<WatchRefused>),
}

impl From<WatchDenied> for WatchRefused {
    fn from(denied: WatchDenied) -> Self {
        match denied {
            WatchDenied::Unauthenticated(reason) => {
                WatchRefused::Unauthenticated(reason.describe())
            }
            WatchDenied::Missing(KEYS_REPLICATE) => WatchRefused::SecretsDenied,
            WatchDenied::Missing(entitlement) => WatchRefused::Missing(entitlement),
        }
    }
}

impl WatchRefused {
    fn code(&self) -> Code {
        match self {
            // Like etcd's "required revision is a future revision".
            WatchRefused::FutureRevision { .. } => Code::OutOfRange,
            WatchRefused::SnapshotWithStart | WatchRefused::TwoKeys => Code::InvalidArgument,
            WatchRefused::NoKey
            | WatchRefused::BadAuthorization
            | WatchRefused::Unauthenticated(_) => Code::Unauthenticated,
            WatchRefused::Missing(_) | WatchRefused::SecretsDenied => Code::PermissionDenied,
            WatchRefused::TooManySubscribers { .. } => Code::ResourceExhausted,
            WatchRefused::Lost(now) => now.code(),
        }
    }
}

impl From<WatchRefused> for Status {
    fn from(err: WatchRefused) -> Self {
        Status::new(err.code(), err.to_string())
    }
}
