//! The change log: the last committed revisions, bounded by count and by bytes, from which every
//! Watch stream replays and follows. Appended by [`super::State::apply`] only, so its order is the
//! order in which the state changed.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::domain::{Model, Requestor, RequestorId, model::Change};

/// The default bound on concurrent Watch streams (`--watch-max-subscribers`).
pub(crate) const DEFAULT_MAX_SUBSCRIBERS: usize = 1024;

/// How much history is kept, how far one Watch stream may buffer, and how many may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// The most revisions kept.
    pub max_revisions: usize,
    /// The most bytes (estimated) kept. A single revision larger than this is not kept at all:
    /// streams that reach it are reset (and take a snapshot).
    pub max_bytes: usize,
    /// Events one stream may have queued towards its client before it stops reading the log.
    pub subscriber_buffer: usize,
    /// The most Watch streams open at once; more are refused (`RESOURCE_EXHAUSTED`).
    pub max_subscribers: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_revisions: 10_000,
            max_bytes: 64 * 1024 * 1024,
            subscriber_buffer: 1024,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
        }
    }
}

/// One change as logged, with what a filter or an event needs that the change alone lacks.
#[derive(Clone, Debug)]
pub(crate) struct LoggedChange {
    pub(crate) change: Change,
    /// For key changes: the key's team and user (for a removal, those it had).
    pub(crate) team: Option<Arc<str>>,
    pub(crate) user: Option<Arc<str>>,
    /// For puts: whether the object existed before (a role "changed" rather than "defined").
    pub(crate) existed: bool,
}

impl LoggedChange {
    /// Describes `change` against the model it is about to be applied to.
    pub(crate) fn describe(model: &Model, change: &Change) -> Self {
        let (team, user, existed) = match change {
            Change::PutKey(spec) => (
                model.key_team(spec).cloned(),
                spec.user().cloned(),
                model.keys.contains_key(spec.prefix.as_str()),
            ),
            Change::RemoveKey(prefix) => match model.keys.get(&**prefix) {
                Some(old) => (model.key_team(old).cloned(), old.user().cloned(), true),
                None => (None, None, false),
            },
            Change::PutRole(role) => (None, None, model.catalog.role(&role.id).is_some()),
            Change::PutProject(p) => (Some(p.team.clone()), None, true),
            Change::RemoveProject(id) => {
                (model.projects.get(id).map(|p| p.team.clone()), None, true)
            }
            Change::PutTeam(t) => (Some(t.id.clone()), None, true),
            Change::RemoveTeam(id) => (Some(id.clone()), None, true),
            Change::PutUser(u) => (None, Some(u.id.clone()), true),
            Change::RemoveUser(id) => (None, Some(id.clone()), true),
            Change::PutRoutes(_) => (None, None, model.routes.is_some()),
            _ => (None, None, true),
        };
        LoggedChange {
            change: change.clone(),
            team,
            user,
            existed,
        }
    }

    /// The least [`Self::estimated_bytes`] of any change.
    const LEAST_BYTES: usize = 32 + std::mem::size_of::<Self>();

    /// A rough size in memory, for the byte bound of the log.
    fn estimated_bytes(&self) -> usize {
        let body = match &self.change {
            Change::PutKey(k) => {
                160 + k.prefix.len() + k.roles.iter().map(|r| r.len() + 16).sum::<usize>()
            }
            Change::PutRole(r) => 64 + r.grants.len() * 48,
            Change::PutUser(u) => 64 + u.name.len() + u.teams.len() * 24,
            Change::PutTeam(t) => 48 + t.name.len(),
            Change::PutProject(p) => 64 + p.name.len(),
            Change::PutRoutes(routes) => {
                64 + routes
                    .iter()
                    .map(|r| 160 + r.method.len() + r.path.len() + r.entitlement.len())
                    .sum::<usize>()
            }
            other => 32 + other.object().to_string().len(),
        };
        body + std::mem::size_of::<Self>()
    }
}

/// Everything one revision changed, as committed.
#[derive(Debug)]
pub(crate) struct LoggedRevision {
    pub(crate) revision: u64,
    pub(crate) changes: Vec<LoggedChange>,
    /// Requestors whose effective grants (or activity, or owned keys) changed. Sorted.
    pub(crate) grants_changed: Vec<RequestorId>,
    bytes: usize,
}

/// What a reader found at a position of the log.
#[derive(Debug)]
pub(crate) enum Read {
    /// The revisions from the asked position on (possibly none yet).
    Entries(Vec<Arc<LoggedRevision>>),
    /// The asked revision is no longer kept; the oldest kept one is given.
    Compacted { oldest_kept: u64 },
}

/// Counters of the Watch machinery, for `/status`.
#[derive(Debug, Default)]
pub(crate) struct WatchStats {
    /// Watch streams open now (each holds one of the `max_subscribers` places).
    pub(crate) subscribers: AtomicU64,
    /// Watch streams refused because `max_subscribers` were open.
    pub(crate) refused_busy: AtomicU64,
    pub(crate) streams_started: AtomicU64,
    /// Streams that fell behind the log and were reset.
    pub(crate) slow_resets: AtomicU64,
    /// Resets because the asked revision was no longer kept or of another history.
    pub(crate) start_resets: AtomicU64,
    pub(crate) events_sent: AtomicU64,
}

/// A snapshot of [`WatchStats`] and the log's extent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchStatus {
    pub(crate) history: String,
    pub(crate) oldest_kept: u64,
    pub(crate) newest: u64,
    pub(crate) kept_revisions: usize,
    pub(crate) kept_bytes: usize,
    pub subscribers: u64,
    pub(crate) max_subscribers: usize,
    pub(crate) refused_busy: u64,
    pub(crate) streams_started: u64,
    pub slow_resets: u64,
    pub(crate) start_resets: u64,
    pub(crate) events_sent: u64,
}

struct Inner {
    entries: VecDeque<Arc<LoggedRevision>>,
    bytes: usize,
    /// The newest revision dropped from the log (0: none yet).
    compacted: u64,
    limits: LogLimits,
    history: Arc<str>,
}

/// The bounded log. Behind a std `Mutex`: it is held only to push, pop or clone a few `Arc`s,
/// never across an await, so neither writers nor readers wait on each other for long.
pub struct ChangeLog {
    inner: Mutex<Inner>,
    pub(crate) stats: WatchStats,
    /// Raised at shutdown: every stream ends at once instead of holding the drain open.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for ChangeLog {
    fn default() -> Self {
        Self::new(LogLimits::default())
    }
}

/// A fresh history id: revisions of two histories (e.g. before and after a restart of a
/// policy-file hub, which starts again at revision 1) are never comparable.
fn new_history() -> Arc<str> {
    let id: u64 = rand::random();
    Arc::from(format!("{id:016x}"))
}

impl ChangeLog {
    pub(crate) fn new(limits: LogLimits) -> Self {
        ChangeLog {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                bytes: 0,
                compacted: 0,
                limits,
                history: new_history(),
            }),
            stats: WatchStats::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every Watch stream (shutdown).
    pub(crate) fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// A receiver that turns true at shutdown.
    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the bounds; takes effect at the next append.
    pub fn set_limits(&self, limits: LogLimits) {
        self.lock().limits = limits;
    }

    pub(crate) fn limits(&self) -> LogLimits {
        self.lock().limits
    }

    /// The id of the revision sequence this log belongs to.
    pub(crate) fn history(&self) -> Arc<str> {
        self.lock().history.clone()
    }

    /// Adopts another history (a follower takes its hub's). Everything kept so far belongs to
    /// the old one and is dropped: readers of it get a reset.
    pub(crate) fn set_history(&self, history: &str, applied: u64) {
        let mut inner = self.lock();
        if *inner.history != *history {
            inner.history = Arc::from(history);
            inner.entries.clear();
            inner.bytes = 0;
            inner.compacted = applied;
        }
    }

    /// Starts the log afresh under `history`, with every revision up to `compacted` counted as
    /// no longer kept (a durable store's start: its history continues, and the revisions it
    /// replays are appended after this).
    pub(crate) fn restart(&self, history: &str, compacted: u64) {
        let mut inner = self.lock();
        inner.history = Arc::from(history);
        inner.entries.clear();
        inner.bytes = 0;
        inner.compacted = compacted;
    }

    /// Replaces which requestors' grants a kept revision changed (a durable store's start: the
    /// revisions it replays get the set recorded when they were first applied, which depends on
    /// the clock through key expiry). Returns false when the revision is not kept.
    pub(crate) fn set_grants_changed(
        &self,
        revision: u64,
        grants_changed: Vec<RequestorId>,
    ) -> bool {
        let mut inner = self.lock();
        let Ok(at) = inner
            .entries
            .binary_search_by_key(&revision, |e| e.revision)
        else {
            return false;
        };
        let old = &inner.entries[at];
        let bytes = old.bytes - old.grants_changed.len() * 48 + grants_changed.len() * 48;
        let entry = Arc::new(LoggedRevision {
            revision,
            changes: old.changes.clone(),
            grants_changed,
            bytes,
        });
        inner.bytes = inner.bytes - old.bytes + bytes;
        inner.entries[at] = entry;
        true
    }

    /// Appends a committed revision, then drops the oldest ones beyond the bounds.
    /// Whether a revision of `changes` changes is certainly too large to keep, so that the
    /// writer need not describe it (a first load of a million keys).
    pub(crate) fn too_large(&self, changes: usize) -> bool {
        let least = changes.saturating_mul(LoggedChange::LEAST_BYTES);
        least > self.lock().limits.max_bytes
    }

    /// Records that `revision` was committed but is too large to keep: readers at or before it
    /// get a reset and take a snapshot instead of replaying it.
    pub(crate) fn append_too_large(&self, revision: u64) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.bytes = 0;
        inner.compacted = revision;
    }

    pub(crate) fn append(
        &self,
        revision: u64,
        changes: Vec<LoggedChange>,
        grants_changed: Vec<RequestorId>,
    ) {
        let bytes = changes
            .iter()
            .map(LoggedChange::estimated_bytes)
            .sum::<usize>()
            + grants_changed.len() * 48
            + 64;
        let entry = Arc::new(LoggedRevision {
            revision,
            changes,
            grants_changed,
            bytes,
        });
        let mut inner = self.lock();
        if bytes > inner.limits.max_bytes {
            drop(inner);
            self.append_too_large(revision);
            return;
        }
        inner.entries.push_back(entry);
        inner.bytes += bytes;
        while inner.entries.len() > 1
            && (inner.entries.len() > inner.limits.max_revisions
                || inner.bytes > inner.limits.max_bytes)
        {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.bytes;
                inner.compacted = old.revision;
            }
        }
    }

    /// The kept revisions `from..=upto`, or `Compacted` when `from` is no longer kept.
    pub(crate) fn read(&self, from: u64, upto: u64) -> Read {
        let inner = self.lock();
        if from <= inner.compacted {
            return Read::Compacted {
                oldest_kept: inner.compacted + 1,
            };
        }
        let start = inner.entries.partition_point(|e| e.revision < from);
        Read::Entries(
            inner
                .entries
                .range(start..)
                .take_while(|e| e.revision <= upto)
                .cloned()
                .collect(),
        )
    }

    /// The oldest revision a reader may still start from.
    pub(crate) fn oldest_kept(&self) -> u64 {
        self.lock().compacted + 1
    }

    pub fn status(&self) -> WatchStatus {
        let inner = self.lock();
        let s = &self.stats;
        WatchStatus {
            history: inner.history.to_string(),
            oldest_kept: inner.compacted + 1,
            newest: inner.entries.back().map_or(inner.compacted, |e| e.revision),
            kept_revisions: inner.entries.len(),
            kept_bytes: inner.bytes,
            subscribers: s.subscribers.load(Ordering::Relaxed),
            max_subscribers: inner.limits.max_subscribers,
            refused_busy: s.refused_busy.load(Ordering::Relaxed),
            streams_started: s.streams_started.load(Ordering::Relaxed),
            slow_resets: s.slow_resets.load(Ordering::Relaxed),
            start_resets: s.start_resets.load(Ordering::Relaxed),
            events_sent: s.events_sent.load(Ordering::Relaxed),
        }
    }
}

/// Whether a requestor's effective grants differ between two builds: its grant union, whether it
/// is active, or the keys its OWN grants cover.
pub(crate) fn grants_differ(old: Option<&Requestor>, new: Option<&Requestor>) -> bool {
    match (old, new) {
        (None, None) => false,
        (Some(a), Some(b)) => {
            a.active != b.active
                || a.owned_key_prefixes != b.owned_key_prefixes
                || a.members != b.members
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log: &ChangeLog, rev: u64) {
        log.append(rev, vec![], vec![]);
    }

    #[test]
    fn keeps_the_newest_revisions_within_bounds() {
        let log = ChangeLog::new(LogLimits {
            max_revisions: 3,
            ..Default::default()
        });
        for r in 1..=5 {
            entry(&log, r);
        }
        assert!(matches!(log.read(2, 5), Read::Compacted { oldest_kept: 3 }));
        let Read::Entries(got) = log.read(3, 4) else {
            panic!("revision 3 is kept")
        };
        assert_eq!(got.iter().map(|e| e.revision).collect::<Vec<_>>(), [3, 4]);
        let Read::Entries(none) = log.read(6, 9) else {
            panic!("the next revision is readable (empty)")
        };
        assert!(none.is_empty());
    }

    #[test]
    fn the_byte_bound_drops_old_revisions_and_never_keeps_an_oversized_one() {
        let log = ChangeLog::new(LogLimits {
            max_bytes: 100,
            ..Default::default()
        });
        entry(&log, 1);
        entry(&log, 2);
        assert_eq!(log.oldest_kept(), 2);
        assert_eq!(log.status().kept_revisions, 1);
        let big = LoggedChange {
            change: Change::RemoveKey("SomeKey01".into()),
            team: None,
            user: None,
            existed: true,
        };
        log.append(3, vec![big.clone(), big], vec![]);
        assert!(matches!(log.read(3, 3), Read::Compacted { oldest_kept: 4 }));
        entry(&log, 4);
        assert!(matches!(log.read(4, 4), Read::Entries(e) if e.len() == 1));
    }

    #[test]
    fn a_revision_certainly_too_large_is_known_before_it_is_described() {
        let log = ChangeLog::new(LogLimits {
            max_bytes: 10 * LoggedChange::LEAST_BYTES,
            ..Default::default()
        });
        assert!(!log.too_large(10));
        assert!(log.too_large(11));
        entry(&log, 1);
        log.append_too_large(2);
        assert!(matches!(log.read(1, 2), Read::Compacted { oldest_kept: 3 }));
        entry(&log, 3);
        assert!(matches!(log.read(3, 3), Read::Entries(e) if e.len() == 1));
    }

    #[test]
    fn a_new_history_drops_the_old_one() {
        let log = ChangeLog::default();
        entry(&log, 1);
        let old = log.history();
        log.set_history("feedfeedfeedfeed", 7);
        assert_ne!(log.history(), old);
        assert!(matches!(log.read(1, 9), Read::Compacted { oldest_kept: 8 }));
    }
}
