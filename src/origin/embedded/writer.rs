//! The embedded store's writer: one thread that takes the queued writes in groups, judges each
//! on its own copy of the model, commits the group in one durable transaction, and only then
//! applies each revision to the state and acknowledges it.

use std::sync::{Arc, Mutex};

use compact_str::CompactString;
use tokio::sync::{mpsc, oneshot};

#[cfg(test)]
use crate::domain::Model;
use crate::{
    domain::{
        IndexedModel, RequestorId,
        admin::{self, Command, WriteError},
        history::{self, Author, HistoryEntry},
        model::Change,
    },
    origin::{ReloadStatus, Written},
    state::{ChangeSet, State, changelog::Read},
};

use super::store::Store;

/// The most writes grouped into one transaction.
const MAX_GROUP: usize = 1024;

#[cfg(test)]
/// A trusted edit of the model, for the store's own tests: given the model as it is now
/// (including writes queued before it), the changes to make. Runs on the writer thread.
pub(crate) type Edit = Box<dyn FnOnce(&Model) -> Result<Vec<Change>, WriteError> + Send>;

/// What the writer thread is asked to do.
pub(super) enum Work {
    /// An administrative write, judged by the escalation rule on the writer's own model.
    Admin {
        caller: CompactString,
        command: Box<Command>,
        now: i64,
    },
    /// A trusted edit (tests of the store's mechanics).
    #[cfg(test)]
    Edit(Edit),
}

pub(super) struct WriteRequest {
    pub(super) work: Work,
    pub(super) ack: oneshot::Sender<Result<Written, WriteError>>,
}

/// The requestors whose grants `revision` changed, as the change log has them (`None` when the
/// log does not keep it).
pub(super) fn logged_grants(state: &State, revision: u64) -> Option<(u64, Vec<RequestorId>)> {
    match state.change_log().read(revision, revision) {
        Read::Entries(entries) => entries
            .first()
            .filter(|e| e.revision == revision)
            .map(|e| (revision, e.grants_changed.clone())),
        Read::Compacted { .. } => None,
    }
}

/// The writer thread's own copy of the model: always what is committed plus the group being
/// built.
pub(super) struct Writer {
    pub(super) store: Arc<Store>,
    pub(super) state: Arc<State>,
    pub(super) model: IndexedModel,
    pub(super) revision: u64,
    /// A commit failed: the database must be reopened before the next one.
    pub(super) broken: bool,
    /// Applied revisions whose changed grants are not yet on disk (see the store's `GRANTS` table).
    pub(super) unflushed: Vec<(u64, Vec<RequestorId>)>,
    /// Shared with `/status`. The writer is the only one to change it.
    pub(super) status: Arc<Mutex<ReloadStatus>>,
    /// How many revisions the administration history keeps (`--history-revisions`).
    pub(super) keep_history: u64,
}

struct Pending {
    /// `None`: the edit changed nothing.
    revision: Option<u64>,
    changes: Vec<Change>,
    undo: Vec<Change>,
    /// Who made the revision (`None` for a trusted edit of the tests).
    history: Option<HistoryEntry>,
    ack: oneshot::Sender<Result<Written, WriteError>>,
}

impl Writer {
    /// Takes the queued writes in groups until the queue is closed.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        // Stopping (the origin is dropped): record what the last group's revisions changed.
        if !self.unflushed.is_empty()
            && !self.broken
            && let Err(err) = self
                .store
                .commit(&[], &self.unflushed, &[], self.keep_history)
        {
            tracing::warn!(error = %err, "the last revisions' changed grants are not recorded");
        }
    }

    /// After a failed commit: reopens the database and makes the model, the revision and the
    /// state agree with what is on disk (a commit reported as failed may still have reached
    /// the disk, e.g. when only the final sync failed).
    fn recover(&mut self) -> Result<(), String> {
        let (disk, revision) = self.store.reopen().map_err(|e| e.to_string())?;
        self.broken = false;
        if revision != self.revision || self.model != disk {
            tracing::warn!(
                revision,
                expected = self.revision,
                "after an I/O error the store holds another state than expected; following the disk"
            );
            let changes = self.model.diff(&disk);
            if revision > self.revision {
                self.state
                    .apply(ChangeSet { revision, changes })
                    .map_err(|e| e.to_string())?;
            }
            self.model.replace(disk);
            self.revision = self.revision.max(revision);
        }
        tracing::info!(
            revision = self.revision,
            "store reopened after an I/O error"
        );
        Ok(())
    }

    /// Shows a failed commit on `/status` (`origin.last_error`, `last_error_unix`, counted in
    /// `failed_reloads`) until the next commit succeeds, the way the policy file shows a failed
    /// reload: otherwise a full disk would be seen only in the log while `/status` looked fine.
    fn report_commit(&self, error: Option<&str>) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(err) => {
                status.last_error = Some(format!("the store cannot commit: {err}"));
                status.last_error_unix = Some(crate::state::unix_now());
                status.failed_reloads += 1;
            }
            None => status.last_error = None,
        }
    }

    /// Judges every write of `group` on the writer's model, commits those that pass in one
    /// transaction, then applies them to the state in order and acknowledges each.
    fn commit_group(&mut self, group: Vec<WriteRequest>) {
        if self.broken
            && let Err(err) = self.recover()
        {
            tracing::error!(error = %err, "the store cannot be reopened; writes are refused");
            self.report_commit(Some(&err));
            for req in group {
                let _ = req.ack.send(Err(WriteError::Unavailable(err.clone())));
            }
            return;
        }
        let start_revision = self.revision;
        let pending = self.perform_group(group);
        let sets: Vec<(u64, &[Change], &[Change])> = pending
            .iter()
            .filter_map(|p| {
                p.revision
                    .map(|r| (r, p.changes.as_slice(), p.undo.as_slice()))
            })
            .collect();
        let written = sets.len();
        let history: Vec<HistoryEntry> = pending.iter().filter_map(|p| p.history.clone()).collect();
        let committed = if sets.is_empty() {
            Ok(())
        } else {
            self.store
                .commit(&sets, &self.unflushed, &history, self.keep_history)
        };
        if let Err(err) = committed {
            tracing::error!(error = %err, writes = written, "store commit failed; the writes are refused");
            self.undo_group(pending, start_revision, &err.to_string());
            return;
        }
        if written > 0 {
            self.unflushed.clear();
            self.report_commit(None);
        }
        for p in pending {
            self.apply_committed(p);
        }
    }

    /// Performs each write of `group` on the writer's model, giving those that change
    /// something the next revisions; a refused write is answered at once.
    fn perform_group(&mut self, group: Vec<WriteRequest>) -> Vec<Pending> {
        let mut pending: Vec<Pending> = Vec::with_capacity(group.len());
        for req in group {
            // A write that panics is a bug; refuse that write and keep the writer alive.
            let model = &mut self.model;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Self::perform(model, req.work)
            }))
            .unwrap_or_else(|_| Err(WriteError::Unavailable("internal error".into())));
            match outcome {
                Ok((changes, undo, made)) => {
                    let revision = (!changes.is_empty()).then(|| {
                        self.revision += 1;
                        self.revision
                    });
                    let history = revision.zip(made).map(|(revision, author)| {
                        history::entry(revision, author, &changes, &undo, self.model.model())
                    });
                    pending.push(Pending {
                        revision,
                        changes,
                        undo,
                        history,
                        ack: req.ack,
                    });
                }
                Err(e) => {
                    let _ = req.ack.send(Err(e));
                }
            }
        }
        pending
    }

    /// After a failed commit: takes the group back out of the writer's model and refuses
    /// every write of it; the database is reopened before the next commit.
    fn undo_group(&mut self, pending: Vec<Pending>, start_revision: u64, err: &str) {
        self.report_commit(Some(err));
        self.broken = true;
        for p in pending.iter().rev() {
            for c in &p.undo {
                self.model.apply(c);
            }
        }
        self.revision = start_revision;
        for p in pending {
            let _ = p.ack.send(Err(WriteError::Unavailable(err.to_owned())));
        }
    }

    /// Applies one committed write to the state and acknowledges it.
    fn apply_committed(&mut self, p: Pending) {
        let changes = p.changes.clone();
        let result = match p.revision {
            Some(revision) => {
                let set = ChangeSet {
                    revision,
                    changes: p.changes,
                };
                let applied = self.state.apply(set).map_err(|e| {
                    tracing::error!(error = %e, "a committed revision could not be applied");
                    WriteError::Unavailable(e.to_string())
                });
                if applied.is_ok() {
                    self.unflushed.extend(logged_grants(&self.state, revision));
                }
                applied
            }
            None => Ok(self.revision),
        };
        let _ = p
            .ack
            .send(result.map(|revision| Written { revision, changes }));
    }

    /// Performs one write on the writer's model: on success its changes stay applied (none
    /// when it changes nothing) and their undo is returned, with who made it; on failure the
    /// model is unchanged.
    fn perform(model: &mut IndexedModel, work: Work) -> Result<Performed, WriteError> {
        match work {
            Work::Admin {
                caller,
                command,
                now,
            } => {
                // Taken before: the write may delete the caller's own key.
                let author = Author::of(
                    model.model(),
                    &caller,
                    &command,
                    crate::origin::upstream::unix_now_ms(),
                );
                let (changes, undo) = admin::execute(&caller, &command, model, now)?;
                Ok((changes, undo, Some(author)))
            }
            #[cfg(test)]
            Work::Edit(edit) => {
                let changes = edit(model)?;
                let undo = model.apply_valid(&changes).map_err(WriteError::Invalid)?;
                Ok((changes, undo, None))
            }
        }
    }
}

/// A performed write: its changes, their undo, and who made it (none for a trusted edit).
type Performed = (Vec<Change>, Vec<Change>, Option<Author>);
