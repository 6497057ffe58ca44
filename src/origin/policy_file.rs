//! The policy file origin: the whole state described in one YAML file ([`parse`]), loaded at
//! start, watched while serving and reloaded into a new revision when it changes. The file is
//! the source of truth, so the origin takes no writes.

mod parse;
mod suite;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crate::{
    origin::{
        BoxFuture, Origin, OriginKind, OriginStatus, ReadOnly, ReloadStatus, RouteSource,
        WritableOrigin,
    },
    state::{ChangeSet, State},
};

pub use parse::{Policy, PolicyError, PolicyProblem, load, parse, parse_file};
pub use suite::{Case, Suite, load_suite, parse_suite};

/// The policy file origin while serving: the path, what was last loaded, and the status.
pub(crate) struct PolicyFileOrigin {
    path: PathBuf,
    /// How often the file is polled for changes.
    interval: Duration,
    state: Arc<State>,
    current: Mutex<Loaded>,
    /// A change seen by the last poll and not loaded yet: the file's identity then (`None`:
    /// it could not be read). It is loaded when the next poll finds the same identity.
    settling: Mutex<Option<Option<Fingerprint>>>,
    status: Mutex<ReloadStatus>,
}

/// What one poll of the file found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Poll {
    /// The file is the one last loaded (or last refused).
    Unchanged,
    /// It changed since the last poll: it may still be being written, so wait for the next.
    Settling,
    /// It changed, and has stayed as it is since the last poll: load it (it must still be this).
    Settled(Option<Fingerprint>),
}

/// How many times a start reads a file that keeps changing while it is read, before giving up.
const START_ATTEMPTS: u32 = 50;
/// The wait between those reads.
const START_RETRY: Duration = Duration::from_millis(100);

/// What identifies the file's content on disk, cheaply: the symlink target's identity and
/// times, so a Kubernetes ConfigMap's `..data` symlink swap is seen like an edit in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
    /// The inode change time (seconds, nanoseconds): moves with every write and metadata
    /// change, even one that sets the modification time back.
    changed: (i64, i64),
}

#[derive(Default)]
struct Loaded {
    fingerprint: Option<Fingerprint>,
    /// SHA-256 of the bytes last loaded: a touch without a change is no new revision.
    digest: [u8; 32],
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks, so a swapped link shows the new target's identity.
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
        changed: (meta.ctime(), meta.ctime_nsec()),
    })
}

impl PolicyFileOrigin {
    /// Loads the file into `state` as revision 1; a bad file is an error (the server does not
    /// start on it). While serving, [`Self::watch`] polls it every `interval`.
    pub(crate) fn start(
        path: PathBuf,
        interval: Duration,
        state: Arc<State>,
    ) -> Result<Arc<Self>, PolicyError> {
        let origin = Arc::new(PolicyFileOrigin {
            status: Mutex::new(ReloadStatus {
                path: path.display().to_string(),
                ..Default::default()
            }),
            path,
            interval,
            state,
            current: Mutex::new(Loaded::default()),
            settling: Mutex::new(None),
        });
        // A file that changes while it is read is read again, a little later.
        for _ in 0..START_ATTEMPTS {
            origin.reload()?;
            if origin.state.is_loaded() {
                return Ok(origin);
            }
            std::thread::sleep(START_RETRY);
        }
        Err(origin.whole_file(format!(
            "the file kept changing while it was read ({START_ATTEMPTS} attempts)"
        )))
    }

    /// What the last (re)load did.
    pub(crate) fn reload_status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn whole_file(&self, message: impl Into<String>) -> PolicyError {
        PolicyError::whole_file(&self.path.display().to_string(), message)
    }

    #[cfg(test)]
    /// Re-reads the file at once if it changed on disk (without waiting for it to settle, as
    /// the watcher does). Returns the new revision when the state changed.
    pub(crate) fn reload_if_changed(&self) -> Result<Option<u64>, PolicyError> {
        if self.unchanged_on_disk(&fingerprint(&self.path)) {
            return Ok(None);
        }
        self.reload()
    }

    /// Whether `now` is the identity of the file last loaded (or last refused), as far as one
    /// `stat` tells. False while a reload holds the lock: the caller then tries again.
    fn unchanged_on_disk(&self, now: &Option<Fingerprint>) -> bool {
        self.current
            .try_lock()
            .is_ok_and(|current| current.fingerprint == *now)
    }

    /// One poll of the watcher: one `stat`, compared with what was loaded and with what the
    /// previous poll saw. A change is loaded only once the file has kept the same identity
    /// (device, inode, size, modification and change times) across two consecutive polls, so
    /// that a file written in place is not read half-written.
    fn poll(&self) -> Poll {
        let now = fingerprint(&self.path);
        let mut settling = self.settling.lock().unwrap_or_else(|p| p.into_inner());
        if self.unchanged_on_disk(&now) {
            *settling = None;
            return Poll::Unchanged;
        }
        if settling.as_ref() == Some(&now) {
            return Poll::Settled(now);
        }
        *settling = Some(now);
        Poll::Settling
    }

    /// Reads, parses and validates the file; applies the difference as one new revision.
    /// A bad file changes nothing: the last good state keeps serving. A file whose identity
    /// changed while it was read changes nothing either (it is being written): the watcher
    /// loads it once it has settled.
    pub(crate) fn reload(&self) -> Result<Option<u64>, PolicyError> {
        self.reload_expecting(None)
    }

    /// [`Self::reload`] of the file the watcher saw settle as `expected`; if it is another by
    /// now, it is left for the next polls.
    fn reload_expecting(
        &self,
        expected: Option<&Option<Fingerprint>>,
    ) -> Result<Option<u64>, PolicyError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let print = fingerprint(&self.path);
        if expected.is_some_and(|e| *e != print) {
            self.settle(print);
            return Ok(None);
        }
        let read = std::fs::read(&self.path);
        let after = fingerprint(&self.path);
        if after != print {
            tracing::debug!(path = %self.path.display(), "the policy file changed while it was read; waiting for it to settle");
            self.settle(after);
            return Ok(None);
        }
        // Remembered also for a bad file, so that it is reported once, not on every poll.
        current.fingerprint = print;
        let result = read
            .map_err(|e| self.whole_file(format!("cannot read the file: {e}")))
            .and_then(|bytes| self.parse_changed(bytes, &current.digest));
        match result {
            Ok(None) => Ok(None),
            Ok(Some((policy, digest))) => {
                current.digest = digest;
                Ok(self.install(&policy))
            }
            Err(err) => {
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                status.last_error = Some(err.to_string());
                status.last_error_unix = Some(crate::state::unix_now());
                status.failed_reloads += 1;
                Err(err)
            }
        }
    }

    /// Records the identity of a file seen changing, to be loaded once it stays so.
    fn settle(&self, print: Option<Fingerprint>) {
        *self.settling.lock().unwrap_or_else(|p| p.into_inner()) = Some(print);
    }

    /// The policy in `bytes` with their digest, unless they are the bytes last loaded (a touch
    /// without a change is no new revision).
    fn parse_changed(
        &self,
        bytes: Vec<u8>,
        last: &[u8; 32],
    ) -> Result<Option<(Policy, [u8; 32])>, PolicyError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if self.state.is_loaded() && digest == *last {
            return Ok(None);
        }
        let text =
            String::from_utf8(bytes).map_err(|_| self.whole_file("the file is not UTF-8"))?;
        parse_file(&text, &self.path.display().to_string()).map(|p| Some((p, digest)))
    }

    /// Applies the difference between the state and `policy` as the next revision (none when
    /// nothing changed); returns that revision.
    fn install(&self, policy: &Policy) -> Option<u64> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let changes = self.state.model().diff(&policy.model);
        let revision = self.state.revision() + 1;
        let applied = if changes.is_empty() && self.state.is_loaded() {
            None
        } else {
            let set = ChangeSet { revision, changes };
            // Only this origin writes to the state, so the next revision is free.
            Some(
                self.state
                    .apply(set)
                    .expect("the policy origin is the only writer"),
            )
        };
        status.last_reload_unix = Some(crate::state::unix_now());
        status.last_error = None;
        status.reloads += 1;
        if let Some(rev) = applied {
            tracing::info!(path = %self.path.display(), revision = rev, "policy loaded");
        }
        applied
    }

    /// Polls the file every reload interval until `shutdown` turns true, reloading it when it
    /// changes.
    /// Polling the resolved path's identity catches edits in place, editors that write a new file
    /// and rename it, and the symlink swap of a Kubernetes ConfigMap.
    pub(crate) async fn watch(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            // Nearly every tick finds the file unchanged. One `stat` answers that here; handing
            // each tick to the blocking pool and back woke two more threads every second, and on
            // two CPUs shared with Envoy those wake-ups showed in the tail of ext_authz calls
            // (docs/performance.md).
            let settled = match self.poll() {
                Poll::Unchanged => continue,
                Poll::Settling => {
                    tracing::debug!(path = %self.path.display(), "the policy file changed; loading it once it stays unchanged for one poll");
                    continue;
                }
                Poll::Settled(print) => print,
            };
            // Changed, and settled (or unreadable twice): reload.
            let origin = self.clone();
            let outcome =
                tokio::task::spawn_blocking(move || origin.reload_expecting(Some(&settled))).await;
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::error!(
                    path = %self.path.display(),
                    error = %err,
                    "policy reload failed; the last good state keeps serving"
                ),
                Err(join) => tracing::error!(error = %join, "policy reload task failed"),
            }
        }
    }
}

impl Origin for PolicyFileOrigin {
    fn kind(&self) -> OriginKind {
        OriginKind::PolicyFile
    }

    fn status(&self) -> OriginStatus {
        OriginStatus {
            kind: OriginKind::PolicyFile,
            reload: self.reload_status(),
            upstream: None,
            etcd: None,
        }
    }

    fn routes(&self) -> RouteSource {
        RouteSource::PolicyFile(self.path.display().to_string())
    }

    fn writer(&self) -> Result<&dyn WritableOrigin, ReadOnly> {
        Err(ReadOnly(format!(
            "the policy file {} is the source of truth: edit it (or serve --data-dir) to change the state",
            self.path.display()
        )))
    }

    fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(self.watch(stop))
    }
}

#[cfg(test)]
mod tests;
