//! The embedded origin: the state and its change log kept on local disk in redb ([`store`]),
//! written by one writer thread ([`writer`]) that groups concurrent writes into one durable
//! transaction.
//!
//! A write is an edit of the current model. The writer applies it to its own copy of the model,
//! validates the result (every rule of the model), gives it the next revision, and, once the
//! whole group is committed (fsync'd) in one redb transaction, applies each revision to
//! [`State`] and acknowledges it. A write that fails validation is undone and refused alone; a
//! failed commit undoes and refuses the whole group, and nothing of it is on disk.

pub(crate) use super::record;
mod store;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    domain::{
        Expiry, IndexedModel, KeySpec, KeyStatus, KeyType, Model, RequestorId, SecretHash, Team,
        TeamList, User,
        admin::{Command, WriteError},
        history::{self, Author, HistoryEntry},
        key::generate_key,
        model::Change,
    },
    origin::{
        BoxFuture, DEFAULT_HISTORY_REVISIONS, HistoryError, Origin, OriginKind, OriginStatus,
        ReadOnly, ReloadStatus, RouteSource, WritableOrigin, Written,
    },
    state::{ChangeSet, State},
};

use store::Replayed;
pub(crate) use store::{Store, StoreError};
#[cfg(test)]
pub(crate) use writer::Edit;
use writer::{Work, WriteRequest, Writer, logged_grants};

/// How the first start on an empty store makes the bootstrap SYSTEM_OWNER key.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// The prefix of the bootstrap key.
    pub prefix: String,
    /// The SHA-256 (hex) of the key's secret, when the operator made the key; otherwise one is
    /// generated and returned once.
    pub secret_sha256: Option<String>,
    /// `--seed`: a policy file whose state an empty store starts with (read only then).
    pub seed: Option<PathBuf>,
}

/// The embedded origin while serving: the queue to its writer thread.
pub struct EmbeddedOrigin {
    /// `None` only while dropping.
    queue: Option<mpsc::Sender<WriteRequest>>,
    /// Read directly for the administration history (redb readers do not wait for the writer).
    store: Arc<Store>,
    data_dir: PathBuf,
    writer: Option<std::thread::JoinHandle<()>>,
    /// What `/status` shows of the store (see `Writer::report_commit`).
    status: Arc<Mutex<ReloadStatus>>,
}

impl Drop for EmbeddedOrigin {
    /// Closes the queue and waits for the writer to finish the group it holds, so that the
    /// store's file is released when the origin is gone (a restart in the same process can
    /// reopen it at once).
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What starting the origin produced besides the origin.
pub struct Started {
    pub origin: Arc<EmbeddedOrigin>,
    /// The bootstrap key, when this start created it with a generated secret: show it once.
    pub(crate) bootstrap_key: Option<String>,
}

impl EmbeddedOrigin {
    /// Opens the store in `dir`, loads it into `state` (its revision continues), makes the
    /// bootstrap key on an empty store, and starts the writer thread.
    pub fn start(
        dir: &Path,
        state: Arc<State>,
        bootstrap: &Bootstrap,
    ) -> Result<Started, StoreError> {
        Self::start_keeping(dir, state, bootstrap, DEFAULT_HISTORY_REVISIONS)
    }

    /// [`EmbeddedOrigin::start`], keeping the administration history of the last
    /// `keep_history` revisions (`--history-revisions`).
    pub fn start_keeping(
        dir: &Path,
        state: Arc<State>,
        bootstrap: &Bootstrap,
        keep_history: u64,
    ) -> Result<Started, StoreError> {
        Self::start_on(Store::open(dir)?, dir, state, bootstrap, keep_history)
    }

    fn start_on(
        (store, mut model, mut revision): (Store, Model, u64),
        dir: &Path,
        state: Arc<State>,
        bootstrap: &Bootstrap,
        keep_history: u64,
    ) -> Result<Started, StoreError> {
        let violations = model.validate();
        if !violations.is_empty() {
            let text: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
            return Err(StoreError::Invalid(text.join("; ")));
        }
        let mut bootstrap_key = None;
        if revision == 0 {
            let mut changes = seed_changes(&model, bootstrap.seed.as_deref())?;
            let mut seeded = IndexedModel::from(model.clone());
            seeded.apply_with_undo(&changes);
            let (made, key) = bootstrap_changes(seeded.model(), bootstrap)?;
            changes.extend(made);
            bootstrap_key = key;
            let mut after = IndexedModel::from(model.clone());
            let undo = after.apply_with_undo(&changes);
            let first = bootstrap_entry(1, bootstrap, &changes, after.model());
            store
                .commit(&[(1, &changes, &undo)], &[], &[first], keep_history)
                .map_err(|e| StoreError::Open {
                    path: store.path.clone(),
                    message: e.to_string(),
                })?;
            model = after.model().clone();
            revision = 1;
            tracing::warn!(
                key = %bootstrap.prefix,
                "empty store: created the bootstrap SYSTEM_OWNER key"
            );
        }
        let unflushed = load_state(&store, &model, revision, &state)?;

        let store = Arc::new(store);
        let (queue, rx) = mpsc::channel(4096);
        let status = Arc::new(Mutex::new(ReloadStatus {
            path: dir.display().to_string(),
            ..Default::default()
        }));
        let writer = Writer {
            store: store.clone(),
            state,
            model: IndexedModel::from(model),
            revision,
            broken: false,
            unflushed,
            status: status.clone(),
            keep_history,
        };
        let writer = std::thread::Builder::new()
            .name("rolegate-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Open {
                path: dir.to_owned(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Started {
            origin: Arc::new(EmbeddedOrigin {
                queue: Some(queue),
                store,
                data_dir: dir.to_owned(),
                writer: Some(writer),
                status,
            }),
            bootstrap_key,
        })
    }

    /// Queues a trusted edit and waits until it is committed; returns its revision.
    #[cfg(test)]
    pub(crate) async fn write(&self, edit: Edit) -> Result<u64, WriteError> {
        self.submit(Work::Edit(edit)).await.map(|w| w.revision)
    }

    async fn submit(&self, work: Work) -> Result<Written, WriteError> {
        let stopped = || WriteError::Unavailable("the store writer has stopped".into());
        let (ack, done) = oneshot::channel();
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        queue
            .send(WriteRequest { work, ack })
            .await
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    #[cfg(test)]
    /// The store, for reading the change log.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What `/status` shows as `origin`: the data directory and, while writes are refused
    /// because the store cannot commit (disk full, I/O error), the last such error.
    pub(crate) fn reload_status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl WritableOrigin for EmbeddedOrigin {
    /// The writer judges the command with the escalation rule on the model it commits on.
    fn execute(
        &self,
        caller: &str,
        command: Command,
    ) -> BoxFuture<'_, Result<Written, WriteError>> {
        Box::pin(self.submit(Work::Admin {
            caller: caller.into(),
            command: Box::new(command),
            now: crate::state::unix_now(),
        }))
    }

    /// Read from the store file, off the async runtime.
    fn history(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<HistoryEntry>, HistoryError>> {
        let store = self.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.history_after(after, limit))
                .await
                .map_err(|e| HistoryError::Unavailable(e.to_string()))?
        })
    }
}

/// The history entry of the revision a new store (or etcd prefix) starts with, `changes` on the
/// empty model giving `after`: recorded as made by the bootstrap key, action `Bootstrap`.
pub(crate) fn bootstrap_entry(
    revision: u64,
    bootstrap: &Bootstrap,
    changes: &[Change],
    after: &Model,
) -> HistoryEntry {
    let author = Author {
        caller: bootstrap.prefix.as_str().into(),
        caller_user: Some(BOOTSTRAP_USER.into()),
        action: "Bootstrap",
        unix_ms: crate::origin::upstream::unix_now_ms(),
    };
    history::entry(revision, author, changes, &[], after)
}

/// The user of the bootstrap key.
const BOOTSTRAP_USER: &str = "bootstrap";

impl Origin for EmbeddedOrigin {
    fn kind(&self) -> OriginKind {
        OriginKind::Embedded
    }

    fn status(&self) -> OriginStatus {
        OriginStatus {
            kind: OriginKind::Embedded,
            reload: self.reload_status(),
            upstream: None,
            etcd: None,
        }
    }

    fn routes(&self) -> RouteSource {
        RouteSource::Store(self.data_dir.display().to_string())
    }

    fn writer(&self) -> Result<&dyn WritableOrigin, ReadOnly> {
        Ok(self)
    }

    /// Nothing runs in the background: writes come through [`Origin::writer`], and the writer
    /// thread stops when the origin is dropped.
    fn run(self: Arc<Self>, _stop: tokio::sync::watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Loads the stored `model` (at `revision`) into `state` so that its change log holds the kept
/// revisions as they were first applied, under the store's history id: the model as of the
/// oldest revision to keep is rebuilt from the undo records and loaded (that load is not a
/// revision of the log), then each kept revision is applied again by [`State::apply`], the same
/// code that logged it while serving. A Watch that resumes after a restart from any kept revision
/// thus gets the events it would have got without the restart.
///
/// Returns the replayed revisions whose changed grants were not recorded, with the replay's: the
/// writer records them, so that later starts agree with this one.
fn load_state(
    store: &Store,
    model: &Model,
    revision: u64,
    state: &State,
) -> Result<Vec<(u64, Vec<RequestorId>)>, StoreError> {
    let history = store.history()?;
    let log = state.change_log();
    let window = store.replay_window(revision, log.limits().max_revisions)?;
    let (base, window) = replay_base(model, window, revision);
    let first = window.first().map_or(revision + 1, |r| r.revision);
    let invalid = |e: crate::state::StateError| StoreError::Invalid(e.to_string());
    if first > 1 {
        let changes = Model::default().diff(&base);
        state
            .apply(ChangeSet {
                revision: first - 1,
                changes,
            })
            .map_err(invalid)?;
    }
    // Whatever the base load logged is dropped: revisions up to `first - 1` are not kept.
    log.restart(&history, first - 1);
    let replayed = window.len();
    let mut unrecorded = Vec::new();
    for r in window {
        state
            .apply(ChangeSet {
                revision: r.revision,
                changes: r.changes,
            })
            .map_err(invalid)?;
        match r.grants_changed {
            Some(recorded) => {
                log.set_grants_changed(r.revision, recorded);
            }
            None => unrecorded.extend(logged_grants(state, r.revision)),
        }
    }
    // A table older than the replayed revisions was loaded with the base: it was installed at the
    // revision the store recorded.
    let routes_revision = store.routes_revision()?;
    if model.routes.is_some() && routes_revision > 0 {
        state.date_routes(routes_revision);
    }
    tracing::info!(
        history = %history,
        oldest_kept = log.oldest_kept(),
        replayed,
        grants_recomputed = unrecorded.len(),
        "change log rebuilt from the store"
    );
    Ok(unrecorded)
}

/// The model as of the oldest kept revision, rebuilt from the undo records, with the revisions
/// to replay on it. Replaying them must give exactly the stored `model`; if it does not (a bug
/// or a damaged log), nothing is replayed and Watch clients from before the restart are reset,
/// never given wrong events.
fn replay_base(model: &Model, window: Vec<Replayed>, revision: u64) -> (Model, Vec<Replayed>) {
    let base = if window.first().is_some_and(|r| r.revision == 1) {
        // The whole history is kept: it starts from the empty store.
        Model::default()
    } else {
        let mut base = model.clone();
        for r in window.iter().rev() {
            for c in &r.undo {
                base.apply(c);
            }
        }
        base
    };
    let mut check = base.clone();
    for r in &window {
        for c in &r.changes {
            check.apply(c);
        }
    }
    if check != *model {
        tracing::warn!(
            revision,
            "the stored change log does not lead to the stored state; Watch history restarts here"
        );
        return (model.clone(), Vec::new());
    }
    (base, window)
}

/// The team, user and SYSTEM_OWNER key of the first start.
/// The changes that turn the empty `model` into the `--seed` policy file's state (none without
/// one). A seed that cannot be loaded stops the start, as a bad policy file does.
pub(crate) fn seed_changes(model: &Model, seed: Option<&Path>) -> Result<Vec<Change>, StoreError> {
    let Some(path) = seed else {
        return Ok(Vec::new());
    };
    let policy = crate::origin::policy_file::load(path).map_err(StoreError::Seed)?;
    tracing::info!(seed = %path.display(), keys = policy.model.keys.len(), "empty store: seeded from the policy file");
    Ok(model.diff(&policy.model))
}

pub(crate) fn bootstrap_changes(
    model: &Model,
    bootstrap: &Bootstrap,
) -> Result<(Vec<Change>, Option<String>), StoreError> {
    let (hash, key) = match &bootstrap.secret_sha256 {
        Some(hex) => (
            hex.parse::<SecretHash>()
                .map_err(|e| StoreError::BadBootstrapHash(e.to_string()))?,
            None,
        ),
        None => {
            let new = generate_key(&bootstrap.prefix)
                .map_err(|e| StoreError::BadBootstrapPrefix(e.to_string()))?;
            (new.hash, Some(new.key))
        }
    };
    if !crate::domain::key::is_valid_prefix(&bootstrap.prefix) {
        return Err(StoreError::BadBootstrapPrefix(
            "a prefix is 4 to 64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    let team: Arc<str> = "system".into();
    let user: Arc<str> = BOOTSTRAP_USER.into();
    let mut changes = Vec::new();
    if !model.teams.contains_key(&team) {
        changes.push(Change::PutTeam(Team {
            id: team.clone(),
            name: "System".into(),
            active: true,
        }));
    }
    if !model.users.contains_key(&user) {
        changes.push(Change::PutUser(Arc::new(User {
            id: user.clone(),
            name: "Bootstrap operator".into(),
            active: true,
            teams: TeamList::default(),
        })));
    }
    changes.push(Change::PutKey(Arc::new(KeySpec {
        prefix: bootstrap.prefix.as_str().into(),
        secret_hash: hash,
        key_type: KeyType::Team,
        owner: user,
        team: Some(team),
        roles: vec![Arc::from("SYSTEM_OWNER")].into(),
        status: KeyStatus::Active,
        expires_at: Expiry::NEVER,
    })));
    Ok((changes, key))
}

#[cfg(test)]
mod store_file_tests;
#[cfg(test)]
mod tests;
