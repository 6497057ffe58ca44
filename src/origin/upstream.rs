//! Follow mode: the origin is another rolegate (the hub). A snapshot from the hub's feed, then
//! its changes revision by revision under the hub's own revisions, resuming after a disconnect
//! from the last revision applied, re-snapshotting after a reset; the last state keeps serving
//! while the hub is away, and a snapshot is staged aside until its end marker has arrived.
//!
//! This module speaks only in domain terms ([`Change`], revisions, history ids). The wire (the
//! hub's gRPC Watch) is behind the [`Hub`] and [`Feed`] traits, implemented in
//! `grpc::follow`: origins do not depend on a front end.

pub(crate) mod status;

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    domain::{Model, model::Change},
    origin::{
        BoxFuture, Origin, OriginKind, OriginStatus, ReadOnly, ReloadStatus, RouteSource,
        WritableOrigin,
    },
    state::{ChangeSet, State},
    tls::client::ClientTls,
};

pub use status::{FollowerView, SnapshotTiming, UpstreamStatus, unix_now_ms};

/// Why following the hub stopped for now (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream URL {url:?} is not valid: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot reach the hub: {0}")]
    Connect(String),
    #[error("the hub refused the watch: {0}")]
    Refused(String),
    /// The hub has not reached the revision we asked to resume from: its history is not the
    /// one we follow after all, so the next session takes a snapshot.
    #[error("the hub is behind the revision asked for: {0}")]
    HubBehind(String),
    #[error("the stream from the hub broke: {0}")]
    Stream(String),
    #[error("the hub ended the stream")]
    Ended,
    #[error("the hub sent an event that cannot be applied: {0}")]
    BadEvent(String),
}

/// Where a session with the hub starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The whole state first, then live changes.
    Snapshot,
    /// Replay from `from` (inclusive) of `history`, then live changes.
    Resume { from: u64, history: String },
}

/// What the hub's feed delivers, in domain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// Objects of the snapshot in progress.
    SnapshotPart(Vec<Change>),
    /// The snapshot is complete: it is the hub's state at `revision` of `history`.
    SnapshotEnd { revision: u64, history: String },
    /// Changes of one revision; `complete` when this part closes the revision.
    Changes {
        revision: u64,
        changes: Vec<Change>,
        complete: bool,
    },
    /// Everything up to `revision` has been delivered.
    Bookmark { revision: u64 },
    /// The hub cannot continue this feed: take a new snapshot.
    Reset { reason: String },
}

/// A source of feeds: the hub, as seen through some transport.
pub trait Hub: Send + Sync + 'static {
    type Feed: Feed;
    /// The hub's address, for logs and `/status`.
    fn address(&self) -> &str;
    /// Opens one feed (one connection's worth).
    fn open(&self, start: Start) -> impl Future<Output = Result<Self::Feed, UpstreamError>> + Send;
}

/// One open feed from the hub.
pub trait Feed: Send {
    /// The next item; an error (including [`UpstreamError::Ended`]) closes the session.
    fn next(&mut self) -> impl Future<Output = Result<FeedItem, UpstreamError>> + Send;
}

/// How a hub is reached: from its URL, the key presented to it, and TLS towards it. Given by the
/// caller of [`crate::origin::start`], since the transport lives with the front end that speaks
/// it (`grpc::follow`).
pub(crate) type Dial<H> = fn(&str, String, ClientTls) -> Result<H, UpstreamError>;

/// How long the follower lets its feed stay quiet before the hub sends a bookmark (asked for
/// on every Watch it opens). An idle but healthy hub is therefore heard from about this often,
/// which is what `--max-staleness` measures against.
pub(crate) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// The smallest `--max-staleness`: three bookmark intervals, so that one late bookmark does not
/// take a healthy follower out of service.
pub(crate) const MIN_MAX_STALENESS: Duration = Duration::from_secs(3);

/// Exponential backoff with jitter: many followers of one restarted hub do not all knock at once.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: between half and all of the current step, which then doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Back to the first step, after a session that worked.
    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Where the follower is in the hub's history.
#[derive(Clone, Debug, Default)]
struct Position {
    /// The hub history our revisions follow (None before the first snapshot).
    history: Option<String>,
    /// False after a reset: the next session takes a snapshot.
    resume: bool,
    /// The last hub revision applied completely.
    hub_last: u64,
    offset: u64,
}

impl Position {
    fn start(&self) -> Start {
        match &self.history {
            Some(history) if self.resume => Start::Resume {
                from: self.hub_last + 1,
                history: history.clone(),
            },
            _ => Start::Snapshot,
        }
    }
}

/// Below this many objects a snapshot is checked on one thread: starting threads would cost
/// more than they save.
const PARALLEL_CHECK_FROM: usize = 16_384;

/// A snapshot being received: nothing of it reaches the state before its end marker.
#[derive(Default)]
struct Staged {
    /// The objects in the order received: applied as they are when the follower is empty.
    changes: Vec<Change>,
    /// Everything but the keys, as a model built as they arrive, to validate the keys against.
    /// Keys stay out of it: nothing refers to a key, so they are checked one by one
    /// ([`Model::validate_keys`]) and a million of them are not hashed into a second map.
    model: Model,
}

impl Staged {
    fn add(&mut self, changes: Vec<Change>) {
        for change in &changes {
            if !matches!(change, Change::PutKey(_) | Change::RemoveKey(_)) {
                self.model.apply(change);
            }
        }
        self.changes.extend(changes);
    }

    /// The first rule the staged state breaks: of the model without its keys, else of the
    /// first key (in the order received) that breaks one.
    ///
    /// The keys are checked on every core (up to four), a slice of the list each, while this
    /// thread checks the rest of the model: this runs after the end marker, while nothing else
    /// does, and a million keys took about a second on one core. The answer is the same as
    /// checking everything in order on one thread.
    fn first_problem(&self) -> Option<String> {
        let threads = if self.changes.len() < PARALLEL_CHECK_FROM {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, 4)
        };
        let slice_len = self.changes.len().div_ceil(threads).max(1);
        let check = |slice: &[Change]| {
            let keys = slice.iter().filter_map(|c| match c {
                Change::PutKey(k) => Some(&**k),
                _ => None,
            });
            self.model
                .validate_keys(keys)
                .first()
                .map(ToString::to_string)
        };
        let (model_problem, key_problems) = std::thread::scope(|scope| {
            let slices: Vec<_> = self
                .changes
                .chunks(slice_len)
                .map(|slice| scope.spawn(move || check(slice)))
                .collect();
            let model_problem = self.model.validate().first().map(ToString::to_string);
            let key_problems: Vec<Option<String>> = slices
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect();
            (model_problem, key_problems)
        });
        model_problem.or_else(|| key_problems.into_iter().flatten().next())
    }

    /// The whole staged state as a model (keys included), to diff against.
    fn into_model(self) -> Model {
        let mut model = self.model;
        for change in &self.changes {
            if matches!(change, Change::PutKey(_) | Change::RemoveKey(_)) {
                model.apply(change);
            }
        }
        model
    }
}

/// How long a follower waits before it tries the next hub after losing one: the next hub is
/// another machine, so there is no reason to back off before knocking there.
const FAIL_OVER_DELAY: Duration = Duration::from_millis(50);

/// The follower.
pub struct UpstreamOrigin<H: Hub> {
    /// The hubs, in the order given; the follower uses one at a time and moves to the next when
    /// it loses the one it uses. Never empty.
    hubs: Vec<H>,
    /// The index (modulo the number of hubs) of the hub in use.
    current: AtomicUsize,
    state: Arc<State>,
    status: Arc<Mutex<UpstreamStatus>>,
    position: Mutex<Position>,
    /// Wakes whoever waits for the hub to be heard from again (readiness, when stale).
    contact: Arc<tokio::sync::Notify>,
    /// `--max-staleness` (None: no bound; the last state serves however old).
    max_staleness: Option<Duration>,
}

/// How a session with the hub ended without an error.
enum Ended {
    Reset,
    Shutdown,
}

impl<H: Hub> UpstreamOrigin<H> {
    /// A follower of `hub` feeding `state`, with no bound on staleness.
    pub fn new(hub: H, state: Arc<State>) -> Arc<Self> {
        Self::bounded(hub, Vec::new(), state, None)
    }

    /// A follower of `first`, then of each of `others` in turn when it loses the one it uses,
    /// feeding `state`; it reports itself not ready once no hub has been heard from for
    /// `max_staleness`.
    pub(crate) fn bounded(
        first: H,
        others: Vec<H>,
        state: Arc<State>,
        max_staleness: Option<Duration>,
    ) -> Arc<Self> {
        let mut hubs = vec![first];
        hubs.extend(others);
        let status = UpstreamStatus {
            hub: hubs[0].address().to_owned(),
            hubs: hubs.iter().map(|h| h.address().to_owned()).collect(),
            ..Default::default()
        };
        Arc::new(UpstreamOrigin {
            hubs,
            current: AtomicUsize::new(0),
            state,
            status: Arc::new(Mutex::new(status)),
            position: Mutex::new(Position::default()),
            contact: Arc::new(tokio::sync::Notify::new()),
            max_staleness,
        })
    }

    /// What readiness reads of this follower.
    pub fn view(&self) -> FollowerView {
        FollowerView {
            status: self.status.clone(),
            max_staleness: self.max_staleness,
        }
    }

    /// Records that the hub was heard from now.
    fn contacted(&self, s: &mut UpstreamStatus) {
        s.last_contact = Some(tokio::time::Instant::now());
        s.last_contact_unix_ms = Some(unix_now_ms());
        self.contact.notify_waiters();
    }

    fn with_status(&self, f: impl FnOnce(&mut UpstreamStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn position(&self) -> std::sync::MutexGuard<'_, Position> {
        self.position.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hub in use.
    fn hub(&self) -> &H {
        &self.hubs[self.current.load(Ordering::Relaxed) % self.hubs.len()]
    }

    /// Moves to the next hub (the first after the last); its address.
    fn next_hub(&self) -> String {
        self.current.fetch_add(1, Ordering::Relaxed);
        let hub = self.hub().address().to_owned();
        self.with_status(|s| {
            s.hub.clone_from(&hub);
            s.fail_overs += 1;
        });
        hub
    }

    /// Follows the hub until `shutdown` turns true: connect, watch, and on any failure resume
    /// from the last revision applied: at once on the next hub when there is one not yet tried
    /// since the last one was lost, else after a backoff.
    pub async fn follow(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut untried = self.hubs.len() - 1;
        loop {
            let hub = self.hub().address().to_owned();
            let outcome = tokio::select! {
                outcome = self.session(&mut backoff) => outcome,
                _ = shutdown.wait_for(|s| *s) => Ok(Ended::Shutdown),
            };
            let mut was_connected = false;
            self.with_status(|s| {
                was_connected = s.connected;
                s.connected = false;
                if s.snapshot_in_progress {
                    s.snapshot_in_progress = false;
                    s.snapshots_abandoned += 1;
                }
            });
            match outcome {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Reset) => {
                    tracing::warn!(hub = %hub, "the hub reset the watch; taking a new snapshot");
                    continue;
                }
                Err(err) => {
                    if let UpstreamError::HubBehind(_) = err {
                        self.position().resume = false;
                    }
                    if was_connected {
                        // Lost a hub that worked: every other hub is worth a try again.
                        untried = self.hubs.len() - 1;
                    }
                    let delay = if untried > 0 {
                        untried -= 1;
                        FAIL_OVER_DELAY
                    } else {
                        untried = self.hubs.len() - 1;
                        backoff.next_delay()
                    };
                    let retry_in_ms = delay.as_millis() as u64;
                    let revision = self.state.revision();
                    if let UpstreamError::Refused(_) = err {
                        // Not a lost connection: the hub answered and said no (the key lacks the
                        // follower's rights, or is revoked); retrying helps only once that is fixed.
                        tracing::error!(hub = %hub, error = %err, retry_in_ms, revision, "the hub refuses this follower's watch; serving the last state");
                    } else {
                        tracing::warn!(hub = %hub, error = %err, retry_in_ms, revision, "upstream disconnected; serving the last state");
                    }
                    self.with_status(|s| s.last_error = Some(err.to_string()));
                    if self.hubs.len() > 1 {
                        let next = self.next_hub();
                        tracing::warn!(from = %hub, to = %next, retry_in_ms, "failing over to the next hub");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// One connection: a snapshot (first time, or after a reset) or a resume, then live events.
    async fn session(&self, backoff: &mut Backoff) -> Result<Ended, UpstreamError> {
        let start = self.position().start();
        let opened = std::time::Instant::now();
        let mut feed = self.hub().open(start.clone()).await?;
        let snapshot = start == Start::Snapshot;
        self.with_status(|s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
            s.snapshot_in_progress = snapshot;
            s.snapshot_objects_staged = 0;
            self.contacted(s);
        });
        let (mode, from_revision) = match &start {
            Start::Snapshot => ("snapshot", 0),
            Start::Resume { from, .. } => ("resume", *from),
        };
        tracing::info!(hub = %self.hub().address(), start = mode, from_revision, "following the hub");
        let mut staged: Option<Staged> = snapshot.then(Staged::default);
        let mut pending: Vec<Change> = Vec::new();
        loop {
            let item = feed.next().await?;
            let now_ms = unix_now_ms();
            self.with_status(|s| {
                s.last_event_unix_ms = Some(now_ms);
                self.contacted(s);
            });
            match item {
                FeedItem::Reset { reason } => {
                    tracing::info!(hub = %self.hub().address(), reason = %reason, "reset by the hub");
                    self.position().resume = false;
                    self.with_status(|s| s.resets += 1);
                    return Ok(Ended::Reset);
                }
                FeedItem::SnapshotPart(changes) => {
                    let stage = staged.as_mut().ok_or_else(|| {
                        UpstreamError::BadEvent("snapshot objects outside a snapshot".into())
                    })?;
                    let n = changes.len() as u64;
                    stage.add(changes);
                    self.with_status(|s| s.snapshot_objects_staged += n);
                }
                FeedItem::SnapshotEnd { revision, history } => {
                    let stage = staged.take().ok_or_else(|| {
                        UpstreamError::BadEvent("a snapshot end without a snapshot".into())
                    })?;
                    self.adopt(revision, &history, stage, opened.elapsed())?;
                    self.synced(revision);
                    backoff.reset();
                }
                FeedItem::Bookmark { revision } => {
                    if staged.is_none() && pending.is_empty() {
                        self.synced(revision);
                    }
                    backoff.reset();
                }
                FeedItem::Changes {
                    revision,
                    changes,
                    complete,
                } => {
                    if staged.is_some() {
                        return Err(UpstreamError::BadEvent(format!(
                            "changes of revision {revision} before the snapshot's end"
                        )));
                    }
                    pending.extend(changes);
                    if complete {
                        self.apply(revision, std::mem::take(&mut pending))?;
                        self.synced(revision);
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// Records that everything the hub sent up to `hub_revision` is applied.
    fn synced(&self, hub_revision: u64) {
        let now_ms = unix_now_ms();
        self.with_status(|s| {
            s.in_sync_unix_ms = Some(now_ms);
            s.hub_revision = hub_revision;
        });
    }

    /// Applies one complete revision of the hub.
    fn apply(&self, hub_revision: u64, changes: Vec<Change>) -> Result<(), UpstreamError> {
        let mut pos = self.position();
        let revision = hub_revision + pos.offset;
        self.state
            .apply(ChangeSet { revision, changes })
            .map_err(|e| UpstreamError::BadEvent(e.to_string()))?;
        pos.hub_last = hub_revision;
        Ok(())
    }

    /// Replaces the state with a complete snapshot of the hub at `hub_revision`, as one
    /// revision: the snapshot itself when the follower is empty, otherwise the difference, so
    /// that the follower's own watchers see only what changed.
    fn adopt(
        &self,
        hub_revision: u64,
        history: &str,
        stage: Staged,
        received: Duration,
    ) -> Result<(), UpstreamError> {
        let objects = stage.changes.len() as u64;
        let started = std::time::Instant::now();
        if let Some(first) = stage.first_problem() {
            return Err(UpstreamError::BadEvent(format!(
                "the hub's snapshot is not a valid state: {first}"
            )));
        }
        let validated = started.elapsed();
        let mut pos = self.position();
        let own = self.state.revision();
        let same_history = pos.history.as_deref() == Some(history);
        let offset = if same_history && hub_revision + pos.offset > own {
            pos.offset
        } else if hub_revision > own {
            0
        } else {
            // The hub's history restarted below ours (a policy-file hub restarted at revision
            // 1): keep our revisions growing; our watchers see a new history of ours.
            own + 1 - hub_revision
        };
        let revision = hub_revision + offset;
        let own_history = if offset == 0 {
            history.to_owned()
        } else {
            format!("{history}+{offset}")
        };
        self.state
            .change_log()
            .set_history(&own_history, revision - 1);
        let changes = if own == 0 {
            // Nothing to compare with: the snapshot is the change set.
            stage.changes
        } else {
            let staged = stage.into_model();
            self.state.read_model(|current| current.diff(&staged))
        };
        let diffed = started.elapsed();
        self.state
            .apply(ChangeSet { revision, changes })
            .map_err(|e| UpstreamError::BadEvent(e.to_string()))?;
        *pos = Position {
            history: Some(history.to_owned()),
            resume: true,
            hub_last: hub_revision,
            offset,
        };
        drop(pos);
        let timing = SnapshotTiming {
            objects,
            receive_ms: received.as_millis() as u64,
            validate_ms: validated.as_millis() as u64,
            diff_ms: (diffed - validated).as_millis() as u64,
            apply_ms: (started.elapsed() - diffed).as_millis() as u64,
        };
        self.with_status(|s| {
            s.snapshots += 1;
            s.snapshot_in_progress = false;
            s.hub_history = Some(history.to_owned());
            s.revision_offset = offset;
            s.last_snapshot = Some(timing);
        });
        tracing::info!(
            hub = %self.hub().address(),
            revision,
            keys = self.state.counts().keys,
            objects = timing.objects,
            receive_ms = timing.receive_ms,
            validate_ms = timing.validate_ms,
            diff_ms = timing.diff_ms,
            apply_ms = timing.apply_ms,
            "snapshot from the hub applied"
        );
        Ok(())
    }
}

impl<H: Hub> Origin for UpstreamOrigin<H> {
    fn kind(&self) -> OriginKind {
        OriginKind::Upstream
    }

    fn status(&self) -> OriginStatus {
        OriginStatus {
            kind: OriginKind::Upstream,
            reload: ReloadStatus::default(),
            upstream: Some(self.view().report()),
            etcd: None,
        }
    }

    fn routes(&self) -> RouteSource {
        RouteSource::Hub(self.hub().address().to_owned())
    }

    fn writer(&self) -> Result<&dyn WritableOrigin, ReadOnly> {
        Err(ReadOnly(format!(
            "this instance follows the hub {}: write to the hub",
            self.hub().address()
        )))
    }

    fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(self.follow(stop))
    }

    /// Not ready before the first snapshot from the hub is applied, nor while the hub has been
    /// silent for longer than `--max-staleness`.
    fn not_ready(&self, loaded: bool, now: tokio::time::Instant) -> Option<String> {
        let view = self.view();
        if !loaded {
            return Some(view.not_loaded_reason());
        }
        view.stale_reason(now)
    }

    /// A follower cut off from its hub stays ready (it answers from its last state) and says
    /// how stale that state is.
    fn readiness_note(&self) -> Option<String> {
        Some(self.view().readiness_note())
    }

    fn stale_at(&self) -> Option<tokio::time::Instant> {
        self.view().stale_at()
    }

    fn contact(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.contact.clone())
    }
}

#[cfg(test)]
mod tests;
