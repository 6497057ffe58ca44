//! Origins of truth: each produces the model and, as it changes, revisioned change sets.
//!
//! The policy file ([`policy_file`]), loaded at start and reloaded when it changes; the embedded
//! store ([`embedded`]), a writable origin on local disk; an etcd cluster ([`etcd`]), a writable
//! origin shared by many instances; and another rolegate ([`upstream`]), followed through its
//! Watch.
//!
//! Every origin has the same shape, [`Origin`]: what kind it is, what `/status` shows of it,
//! where the route table comes from, whether and how it takes writes ([`WritableOrigin`]), and
//! the background task that keeps the state current. The front ends hold an `Arc<dyn Origin>`
//! and never a concrete origin; [`start`] is the one place where the configuration decides which
//! origin serves.

pub mod embedded;
pub mod etcd;
pub mod policy_file;
pub(crate) mod record;
mod start;
pub mod upstream;

use std::{future::Future, pin::Pin, sync::Arc};

use serde::Serialize;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::domain::{
    admin::{Command, WriteError},
    history::HistoryEntry,
    model::Change,
};

pub(crate) use start::{OriginConfig, StartError, start};
pub(crate) use upstream::status::UpstreamReport;

/// A boxed, sendable future: what the origin traits' async methods return.
///
/// The traits are used as trait objects (`Arc<dyn Origin>`, `&dyn WritableOrigin`), so that the
/// origin is chosen once at start and the front ends carry no type parameter for it; an
/// `async fn` in a trait cannot be called through `dyn`. The box is one allocation per write
/// (which waits for an fsync anyway) and one per server start, never on the decision path.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which origin serves, by the name `/status` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginKind {
    /// `--policy`: a YAML file, reloaded when it changes.
    PolicyFile,
    /// `--data-dir` (the default): the durable store on local disk.
    Embedded,
    /// `--upstream`: another rolegate, followed through its Watch.
    Upstream,
    /// `--etcd-endpoints`: an etcd cluster shared with other instances.
    Etcd,
}

impl OriginKind {
    /// The name `/status` shows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OriginKind::PolicyFile => "policy_file",
            OriginKind::Embedded => "embedded",
            OriginKind::Upstream => "upstream",
            OriginKind::Etcd => "etcd",
        }
    }
}

/// What the last load or commit of an origin did: the part of `/status`'s `origin` that every
/// origin reports (a follower leaves it at its defaults and reports its hub instead).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ReloadStatus {
    /// The policy file or the data directory.
    pub(crate) path: String,
    /// Unix seconds of the last successful load.
    pub(crate) last_reload_unix: Option<i64>,
    /// The last failed load (a policy file) or commit (the store), until the next success.
    pub(crate) last_error: Option<String>,
    /// Unix seconds of the last failure.
    pub(crate) last_error_unix: Option<i64>,
    pub(crate) reloads: u64,
    pub(crate) failed_reloads: u64,
}

/// What `/status` shows under `origin`.
#[derive(Clone, Debug, Serialize)]
pub struct OriginStatus {
    pub(crate) kind: OriginKind,
    #[serde(flatten)]
    pub(crate) reload: ReloadStatus,
    /// Follow mode: the hub, the connection and how stale the state is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<UpstreamReport>,
    /// The etcd origin: the cluster, the connection and how stale the state is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etcd: Option<etcd::status::EtcdReport>,
}

/// Where the state's route table comes from when it is not the built-in default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteSource {
    /// A policy file's `routes:` (its path).
    PolicyFile(String),
    /// The embedded store (its data directory).
    Store(String),
    /// A hub this server follows (its address).
    Hub(String),
    /// An etcd cluster (its endpoints and the prefix).
    Etcd(String),
}

/// A committed write: its revision (the current one when it changed nothing) and its changes.
#[derive(Clone, Debug, Default)]
pub struct Written {
    pub(crate) revision: u64,
    pub(crate) changes: Vec<Change>,
}

/// Why an origin takes no writes, in words for the caller (what to do instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadOnly(pub String);

/// An origin that takes administrative writes.
pub trait WritableOrigin: Send + Sync {
    /// Runs `command` for the caller whose key prefix is `caller` (authenticated by the front
    /// end). The origin judges it with the escalation rule on the model it commits on, and the
    /// call returns once the write is durably committed and applied to the state.
    fn execute(&self, caller: &str, command: Command)
    -> BoxFuture<'_, Result<Written, WriteError>>;

    /// The administration history kept with the writes: the entries of revisions after
    /// `after`, oldest first, those of at most `limit` revisions (the entries of one revision
    /// are never split). Kept in the same commit as each write, pruned to the last
    /// `--history-revisions`.
    fn history(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<HistoryEntry>, HistoryError>>;
}

/// Why the administration history could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The store or the cluster could not be read.
    #[error("the administration history cannot be read: {0}")]
    Unavailable(String),
    /// A stored entry cannot be decoded.
    #[error("{0}")]
    Corrupt(#[from] crate::domain::history::CorruptHistory),
}

/// How many revisions the administration history keeps by default (`--history-revisions`).
pub const DEFAULT_HISTORY_REVISIONS: u64 = 10_000;

/// One origin of truth while serving.
///
/// Readiness: the server is ready once the state is loaded, unless the origin says otherwise
/// ([`Origin::not_ready`]); an origin fed from afar may also go stale, and says when
/// ([`Origin::stale_at`]) and how it wakes whoever waits for it to be heard from again
/// ([`Origin::contact`]). The defaults suit an origin on local disk.
pub trait Origin: Send + Sync + 'static {
    /// Which origin this is.
    fn kind(&self) -> OriginKind;

    /// What `/status` shows under `origin`.
    fn status(&self) -> OriginStatus;

    /// Where the route table comes from, for `ListRoutes`.
    fn routes(&self) -> RouteSource;

    /// The writer, or why this origin takes no writes.
    fn writer(&self) -> Result<&dyn WritableOrigin, ReadOnly>;

    /// The background task that keeps the state current until `stop` turns true: the policy
    /// file's polls, the follower's Watch of its hub; nothing for the store, whose writes come
    /// through [`Origin::writer`].
    fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()>;

    /// Why the server must not take traffic, given whether the state is `loaded`; `None` when
    /// it may.
    fn not_ready(&self, loaded: bool, _now: Instant) -> Option<String> {
        (!loaded).then(|| "the state is not loaded yet".to_owned())
    }

    /// A word on where the origin stands, added to `/readyz`'s answer (`None`: nothing to add).
    fn readiness_note(&self) -> Option<String> {
        None
    }

    /// The moment the origin goes stale unless it is heard from before (`None`: never).
    fn stale_at(&self) -> Option<Instant> {
        None
    }

    /// Notified whenever the origin is heard from (`None`: readiness never waits on it).
    fn contact(&self) -> Option<Arc<Notify>> {
        None
    }
}
