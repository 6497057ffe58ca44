//! Every failure the gRPC front end reports, mapped to a status in one place. A denied check is
//! not here: it is a normal response (`allowed = false`).
//!
//! | cause                                   | gRPC             | HTTP |
//! |-----------------------------------------|------------------|------|
//! | malformed request                       | InvalidArgument  | 400  |
//! | not ready (no state loaded yet)         | Unavailable      | 503  |
//! | `min_revision` not reached in time      | Unavailable      | 503  |
//! | Watch from a future revision            | OutOfRange       | 400  |
//! | Watch asking for secrets without keys.read at ALL | PermissionDenied | 403 |
//! | bug                                     | Internal         | 500  |
//!
//! Unavailable, never Unknown or OK, for "cannot answer": Envoy's `failure_mode_allow` and
//! `status_on_error` then decide, and a client may retry another instance.

use tonic::{Code, Status};

/// A request that cannot be judged as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
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

/// Why a request could not be answered at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswerable {
    #[error("rolegate is not ready: no state has been loaded yet")]
    NotReady,
    #[error(
        "revision {wanted} has not been applied here in time; this instance has revision {have}"
    )]
    Lagging { wanted: u64, have: u64 },
}

impl From<Unanswerable> for Status {
    fn from(err: Unanswerable) -> Self {
        Status::new(Code::Unavailable, err.to_string())
    }
}

/// Why a Watch was refused before it started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefused {
    #[error("start_revision {asked} is in the future: this instance has revision {have} (the most a watch may start from is {})", have + 1)]
    FutureRevision { asked: u64, have: u64 },
    #[error("a watch with a snapshot starts at the snapshot's revision: leave start_revision at 0")]
    SnapshotWithStart,
    #[error("include_secret_hashes needs api_key to be a valid key holding keys.read at ALL scope")]
    SecretsDenied,
}

impl From<WatchRefused> for Status {
    fn from(err: WatchRefused) -> Self {
        let code = match err {
            // Like etcd's "required revision is a future revision".
            WatchRefused::FutureRevision { .. } => Code::OutOfRange,
            WatchRefused::SnapshotWithStart => Code::InvalidArgument,
            WatchRefused::SecretsDenied => Code::PermissionDenied,
        };
        Status::new(code, err.to_string())
    }
}

/// The HTTP status that goes with a gRPC code, for the HTTP front ends.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => 409,
        Code::ResourceExhausted => 429,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}
