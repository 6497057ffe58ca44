//! The etcd origin: the state lives in an etcd cluster, one key per object under a prefix
//! ([`layout`]), shared by every rolegate instance pointed at it. rolegate's revision is etcd's.
//!
//! - **Start**: on an empty prefix, one instance bootstraps it (a transaction that succeeds only
//!   while the `meta` key is absent); then a paged read of the prefix at one revision.
//! - **Reads**: a watch of the prefix from the next revision; each etcd revision's events are
//!   one change set under that revision. A watch whose start was compacted away ends in a full
//!   re-read, applied as one revision, and a reset for this instance's own Watch subscribers.
//!   While etcd is unreachable the last state keeps serving; `/status` says how stale it is, and
//!   the watch resumes from the last revision applied.
//! - **Writes**: the Admin core judges a command on this instance's copy of the model (with the
//!   commands queued beside it, each on the model the earlier ones leave); the changes are
//!   committed as one transaction that also puts the write marker (`rev`), on the
//!   condition that the marker's `mod_revision` is still the one the copy has seen, i.e. that no
//!   other write of the state came in between. A lost race is judged again on the newer model;
//!   after [`MAX_ATTEMPTS`] the write is answered ABORTED. The write returns once this instance's
//!   watch has applied its revision.

pub(crate) mod client;
mod layout;
#[doc(hidden)]
pub mod pb;
pub mod raw;
pub(crate) mod status;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use compact_str::CompactString;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::{
    domain::{
        IndexedModel, Interner, Model,
        admin::{self, Command, WriteError},
        history::{self, Author, HistoryEntry},
        model::Change,
    },
    origin::{
        BoxFuture, HistoryError, Origin, OriginKind, OriginStatus, ReadOnly, ReloadStatus,
        RouteSource, WritableOrigin, Written,
        embedded::{Bootstrap, StoreError, bootstrap_changes, bootstrap_entry, seed_changes},
        upstream::{Backoff, unix_now_ms},
    },
    state::{ChangeSet, State},
};

use client::EtcdClient;
pub use client::{EtcdConnect, EtcdError};
use layout::{KeyKind, Layout};
use pb::{
    etcdserverpb::{
        RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest,
        WatchRequest, WatchResponse, request_op::Request, response_op::Response,
        watch_request::RequestUnion,
    },
    mvccpb::Event,
};
use status::{EtcdReport, EtcdStatus};

/// How often a write that lost the race against another instance is judged again before it is
/// answered ABORTED.
pub(crate) const MAX_ATTEMPTS: usize = 5;

/// The most queued writes committed in one transaction.
const MAX_GROUP: usize = 64;

/// A write waiting in the queue.
struct Queued {
    caller: CompactString,
    command: Command,
    now: i64,
    ack: oneshot::Sender<Result<Written, WriteError>>,
}

/// Keys per page of a full read (at start, after a compaction): large pages take fewer round
/// trips; a page etcd or this client refuses as too large is asked for again at half the size,
/// down to [`MIN_PAGE`].
pub const PAGE: i64 = 20_000;

/// The smallest page a full read falls back to.
const MIN_PAGE: i64 = 1;

/// How often the watch asks etcd for a progress notification: an idle but healthy etcd is
/// heard from this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// A watch that has heard nothing for this long (not even the answer to a progress request) is
/// taken for broken and opened again, on the next member.
const SILENCE: Duration = Duration::from_secs(4);

/// The configuration of the etcd origin.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub connect: EtcdConnect,
    /// The prefix of every key of the state (`/rolegate/`).
    pub prefix: String,
    /// `--max-staleness`.
    pub max_staleness: Option<Duration>,
    /// `--history-revisions`: the administration history older than this many etcd revisions
    /// is pruned by the writes.
    pub keep_history: u64,
}

/// Why the etcd origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum EtcdStartError {
    #[error("{0}")]
    Etcd(#[from] EtcdError),
    #[error("{0}")]
    Bootstrap(#[from] StoreError),
    #[error("the state under {prefix:?} in etcd cannot be served: {message}")]
    Invalid { prefix: String, message: String },
}

/// This instance's copy of the state: the model as of `revision`, what the writes are judged on.
struct Mirror {
    model: IndexedModel,
    /// The write marker's `mod_revision` as of the model: a write commits only if it is still so.
    marker: i64,
    /// The next etcd revision to watch from.
    next: i64,
}

/// The etcd origin while serving.
pub struct EtcdOrigin {
    client: EtcdClient,
    layout: Layout,
    state: Arc<State>,
    mirror: Mutex<Mirror>,
    /// The marker's `mod_revision` as applied (wakes a write that lost a race).
    marker_seen: watch::Sender<i64>,
    /// Writes waiting to be judged and committed, in arrival order.
    queue: Mutex<Vec<Queued>>,
    /// Held by the write that commits the queue (one group at a time per instance: they
    /// would race each other anyway).
    write_lock: tokio::sync::Mutex<()>,
    status: Mutex<EtcdStatus>,
    contact: Arc<Notify>,
    max_staleness: Option<Duration>,
    /// The Watch history id of every instance on this cluster and prefix.
    history: String,
    /// Written into the marker, to tell instances apart when debugging.
    instance: String,
    /// `--history-revisions`.
    keep_history: u64,
}

/// What starting the origin produced besides the origin.
pub struct Started {
    pub origin: Arc<EtcdOrigin>,
    /// The bootstrap key, when this instance bootstrapped the prefix with a generated secret.
    pub(crate) bootstrap_key: Option<String>,
}

/// A full read of the prefix at one revision.
struct Read {
    model: Model,
    marker: i64,
    /// The newest `mod_revision` of the state's keys: the revision of the state read.
    newest: i64,
    /// The revision read at.
    at: i64,
    cluster_id: u64,
}

/// How a watch session ended without an error.
enum Ended {
    Shutdown,
    /// The revision to resume from is compacted: read everything again.
    Compacted,
}

fn invalid(prefix: &str, message: impl Into<String>) -> EtcdStartError {
    EtcdStartError::Invalid {
        prefix: prefix.to_owned(),
        message: message.into(),
    }
}

impl EtcdOrigin {
    /// Connects, bootstraps an empty prefix, and loads the state into `state`.
    pub async fn start(
        config: EtcdConfig,
        state: Arc<State>,
        bootstrap: &Bootstrap,
    ) -> Result<Started, EtcdStartError> {
        let client = EtcdClient::new(&config.connect)?;
        let layout = Layout::new(&config.prefix);
        let member = client.status().await?;
        let bootstrap_key = bootstrap_prefix(&client, &layout, bootstrap).await?;
        let read = read_all(&client, &layout).await?;
        let violations = read.model.validate();
        if let Some(first) = violations.first() {
            return Err(invalid(
                layout.prefix(),
                format!("it breaks the model's rules: {first}"),
            ));
        }
        let history = format!(
            "etcd-{:016x}-{:08x}",
            read.cluster_id,
            fnv(layout.prefix().as_bytes())
        );
        let revision = read.newest.max(1) as u64;
        state
            .apply(ChangeSet {
                revision,
                changes: Model::default().diff(&read.model),
            })
            .map_err(|e| invalid(layout.prefix(), e.to_string()))?;
        // The first load is not a revision anyone can replay: a Watch from before it resets.
        state.change_log().restart(&history, revision);
        let status = EtcdStatus {
            endpoints: client.endpoints(),
            endpoint: client.current_endpoint(),
            prefix: layout.prefix().to_owned(),
            cluster_id: format!("{:016x}", read.cluster_id),
            version: member.version.clone(),
            etcd_revision: read.at,
            watch_from: read.at + 1,
            ..Default::default()
        };
        tracing::info!(
            endpoint = %client.current_endpoint(),
            etcd_version = %member.version,
            prefix = layout.prefix(),
            revision,
            etcd_revision = read.at,
            "the state was read from etcd"
        );
        let origin = EtcdOrigin {
            client,
            layout,
            marker_seen: watch::Sender::new(read.marker),
            mirror: Mutex::new(Mirror {
                model: IndexedModel::from(read.model),
                marker: read.marker,
                next: read.at + 1,
            }),
            state,
            queue: Mutex::new(Vec::new()),
            write_lock: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
            contact: Arc::new(Notify::new()),
            max_staleness: config.max_staleness,
            history,
            instance: format!("{:016x}", rand::random::<u64>()),
            keep_history: config.keep_history.max(1),
        };
        let origin = Arc::new(origin);
        origin.with_status(EtcdStatus::contacted);
        Ok(Started {
            origin,
            bootstrap_key,
        })
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_status<R>(&self, f: impl FnOnce(&mut EtcdStatus) -> R) -> R {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn report(&self) -> EtcdReport {
        let status = self.with_status(|s| s.clone()).at(unix_now_ms());
        EtcdReport {
            stale: self.stale_reason(tokio::time::Instant::now()).is_some(),
            max_staleness_ms: self.max_staleness.map(|d| d.as_millis() as u64),
            status,
        }
    }

    fn stale_reason(&self, now: tokio::time::Instant) -> Option<String> {
        let max = self.max_staleness?;
        let status = self.with_status(|s| s.clone());
        let silent = status.silent_for(max, now)?;
        let error = status
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        Some(format!(
            "no contact with etcd ({}) for {} (more than --max-staleness {}){error}",
            status.endpoints.join(","),
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64)),
            humantime::format_duration(max),
        ))
    }

    /// Records an answer of etcd on the watch.
    fn contacted(&self, in_sync: bool, etcd_revision: i64) {
        self.with_status(|s| {
            s.contacted();
            if in_sync {
                s.in_sync_unix_ms = Some(unix_now_ms());
            }
            s.etcd_revision = s.etcd_revision.max(etcd_revision);
        });
        self.contact.notify_waiters();
    }

    /// Follows etcd until `stop` turns true: watch, and on any failure wait (with backoff) and
    /// resume from the last revision applied; re-read everything when that is compacted.
    async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut resync = false;
        loop {
            let outcome = if resync {
                tokio::select! {
                    r = self.resync() => r.map(|()| None),
                    _ = stop.wait_for(|s| *s) => Ok(Some(Ended::Shutdown)),
                }
            } else {
                tokio::select! {
                    r = self.session(&mut backoff) => r.map(Some),
                    _ = stop.wait_for(|s| *s) => Ok(Some(Ended::Shutdown)),
                }
            };
            self.with_status(|s| s.connected = false);
            match outcome {
                Ok(Some(Ended::Shutdown)) => return,
                Ok(Some(Ended::Compacted)) => {
                    tracing::warn!(
                        from = self.mirror().next,
                        "etcd compacted the revisions the watch needs; reading the state again"
                    );
                    resync = true;
                    continue;
                }
                Ok(None) => {
                    resync = false;
                    backoff.reset();
                    continue;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %err,
                        retry_in_ms = delay.as_millis() as u64,
                        revision = self.state.revision(),
                        "etcd: the watch stopped; serving the last state"
                    );
                    self.with_status(|s| s.last_error = Some(err.clone()));
                    if err.starts_with("invalid:") {
                        // A revision that cannot be applied: read everything again, later.
                        resync = true;
                    }
                    self.client.watch_failed();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// One watch of the prefix from the next revision, until it fails or is compacted.
    async fn session(&self, backoff: &mut Backoff) -> Result<Ended, String> {
        let (start, end) = self.layout.range();
        let from = self.mirror().next;
        let (requests, rx) = mpsc::channel(8);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: start,
                range_end: end,
                start_revision: from,
                progress_notify: true,
                prev_kv: false,
                watch_id: 0,
                fragment: true,
            })),
        };
        requests
            .send(create)
            .await
            .map_err(|_| "the watch request could not be queued".to_owned())?;
        let mut stream = self.client.watch(rx).await.map_err(|e| e.to_string())?;
        let endpoint = self.client.current_endpoint();
        self.with_status(|s| {
            s.connected = true;
            s.connects += 1;
            s.endpoint = endpoint.clone();
            s.watch_from = from;
        });
        tracing::info!(endpoint = %endpoint, from, "etcd: watching the prefix");
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        let mut fragments: Vec<Event> = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if last_heard.elapsed() >= SILENCE {
                        return Err(format!("{endpoint}: no answer on the watch for {}", humantime::format_duration(SILENCE)));
                    }
                    let progress = WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    let _ = requests.try_send(progress);
                }
                message = stream.message() => {
                    let response = message
                        .map_err(|s| format!("{endpoint}: {}", s.message()))?
                        .ok_or_else(|| format!("{endpoint}: etcd ended the watch"))?;
                    last_heard = tokio::time::Instant::now();
                    if let Some(ended) = self.on_response(response, &mut fragments)? {
                        return Ok(ended);
                    }
                    backoff.reset();
                }
            }
        }
    }

    /// Handles one response of the watch.
    fn on_response(
        &self,
        response: WatchResponse,
        fragments: &mut Vec<Event>,
    ) -> Result<Option<Ended>, String> {
        let etcd_revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.compact_revision > 0 {
            self.contacted(false, etcd_revision);
            return Ok(Some(Ended::Compacted));
        }
        if response.canceled {
            return Err(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason
            ));
        }
        let created = response.created;
        fragments.extend(response.events);
        if response.fragment {
            self.contacted(false, etcd_revision);
            return Ok(None);
        }
        let events = std::mem::take(fragments);
        // Events come in revision order; one revision's events are one change set.
        let mut rest = &events[..];
        while let Some(first) = rest.first() {
            let revision = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let n = rest
                .iter()
                .take_while(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) == revision)
                .count();
            self.apply_revision(revision, &rest[..n])?;
            rest = &rest[n..];
        }
        let next = self.mirror().next;
        self.contacted(in_sync(created, etcd_revision, next), etcd_revision);
        Ok(None)
    }

    /// Applies the events of one etcd revision as one change set.
    fn apply_revision(&self, revision: i64, events: &[Event]) -> Result<(), String> {
        let mut mirror = self.mirror();
        if revision < mirror.next {
            // Already applied (a watch re-opened from an older revision).
            return Ok(());
        }
        let mut ids = Interner::default();
        let mut changes: Vec<Change> = Vec::new();
        let mut marker = None;
        for event in events {
            let Some(kv) = &event.kv else { continue };
            match self.layout.kind(&kv.key) {
                KeyKind::Marker => marker = Some(kv.mod_revision),
                KeyKind::Object(_) => match self.layout.change_of(event, &mut ids) {
                    Some(Ok(change)) => changes.push(change),
                    Some(Err(e)) => return Err(format!("invalid: revision {revision}: {e}")),
                    None => {}
                },
                KeyKind::Meta | KeyKind::Other => {}
            }
        }
        if !changes.is_empty() {
            let undo = mirror.model.apply_with_undo(&changes);
            let violations = mirror.model.validate_after(&changes);
            if let Some(first) = violations.first() {
                for c in &undo {
                    mirror.model.apply(c);
                }
                return Err(format!(
                    "invalid: revision {revision} breaks the model's rules: {first}"
                ));
            }
            self.state
                .apply(ChangeSet {
                    revision: revision as u64,
                    changes,
                })
                .map_err(|e| format!("invalid: revision {revision}: {e}"))?;
        }
        mirror.next = revision + 1;
        if let Some(marker) = marker {
            mirror.marker = marker;
            self.marker_seen.send_replace(marker);
        }
        drop(mirror);
        self.with_status(|s| s.watch_from = revision + 1);
        Ok(())
    }

    /// Reads everything again (the watch's revisions were compacted), applies the difference
    /// as one revision, and resets this instance's Watch subscribers.
    async fn resync(&self) -> Result<(), String> {
        let read = read_all(&self.client, &self.layout)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(first) = read.model.validate().first() {
            return Err(format!(
                "invalid: the state in etcd breaks the model's rules: {first}"
            ));
        }
        let mut mirror = self.mirror();
        let changes = mirror.model.diff(&read.model);
        let applied = self.state.revision();
        if !changes.is_empty() {
            let revision = if (read.newest as u64) > applied {
                read.newest as u64
            } else {
                (applied + 1).max(read.at as u64)
            };
            let n = changes.len();
            mirror.model.replace(read.model);
            self.state
                .apply(ChangeSet { revision, changes })
                .map_err(|e| format!("invalid: the re-read state: {e}"))?;
            // The revisions in between are gone: subscribers of this instance start afresh.
            self.state.change_log().restart(&self.history, revision);
            tracing::warn!(
                revision,
                changes = n,
                "etcd: the state read again after a compaction; Watch subscribers were reset"
            );
        }
        mirror.next = read.at + 1;
        mirror.marker = read.marker;
        self.marker_seen.send_replace(read.marker);
        drop(mirror);
        self.with_status(|s| {
            s.resyncs += 1;
            s.watch_from = read.at + 1;
            s.etcd_revision = s.etcd_revision.max(read.at);
            s.last_error = None;
        });
        self.contacted(true, read.at);
        Ok(())
    }

    /// Runs one Admin command: queued, then judged on this instance's model with the commands
    /// queued beside it, and committed with them as one transaction on the condition that no
    /// other write of the state came in between ([`EtcdOrigin::commit_group`]).
    async fn write(&self, caller: CompactString, command: Command) -> Result<Written, WriteError> {
        let (ack, mut done) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Queued {
                caller,
                command,
                now: crate::state::unix_now(),
                ack,
            });
        // Whoever holds the lock commits what is queued, this write included unless an
        // earlier holder took it already: then this write's answer comes while waiting for
        // the lock, and the writer leaves the lock's queue. (A writer answered but still
        // queued for the lock would take it only to commit the one write queued since, and
        // concurrent writers would go to etcd one at a time.)
        let taken = tokio::select! {
            biased;
            answer = &mut done => Some(answer),
            one = self.write_lock.lock() => {
                let _one = one;
                self.commit_queued().await;
                None
            }
        };
        let answer = match taken {
            Some(answer) => answer,
            None => done.await,
        };
        answer.unwrap_or_else(|_| Err(WriteError::Unavailable("the write was dropped".into())))
    }

    /// Commits what is queued (the caller holds the write lock): up to [`MAX_GROUP`] writes
    /// together, the ones too large together one at a time.
    async fn commit_queued(&self) {
        let group: Vec<Queued> = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = queue.len().min(MAX_GROUP);
            queue.drain(..n).collect()
        };
        let mut groups = vec![group];
        while let Some(group) = groups.pop() {
            if group.is_empty() {
                continue;
            }
            if let Some(alone) = self.commit_group(group).await {
                groups.extend(alone.into_iter().rev().map(|q| vec![q]));
            }
        }
    }

    /// Judges each write of `group` on the model, in order, each on the model the earlier ones
    /// leave (a refused write is answered at once), and commits the rest as one transaction;
    /// a lost race judges them again on the newer model. Returns the writes to commit one by
    /// one when together they exceed etcd's limits for one transaction.
    async fn commit_group(&self, mut group: Vec<Queued>) -> Option<Vec<Queued>> {
        for attempt in 1..=MAX_ATTEMPTS {
            let (accepted, made, marker) = {
                let mut mirror = self.mirror();
                let mut accepted: Vec<(Queued, Vec<Change>)> = Vec::with_capacity(group.len());
                let mut undos = Vec::with_capacity(group.len());
                let mut made = Vec::with_capacity(group.len());
                for q in group.drain(..) {
                    // Taken before: the write may delete the caller's own key.
                    let author =
                        Author::of(mirror.model.model(), &q.caller, &q.command, unix_now_ms());
                    match admin::execute(&q.caller, &q.command, &mut mirror.model, q.now) {
                        Ok((changes, undo)) => {
                            if !changes.is_empty() {
                                // The revision is etcd's, known once committed: read back as
                                // the history key's `mod_revision`.
                                made.push(history::entry(
                                    0,
                                    author,
                                    &changes,
                                    &undo,
                                    mirror.model.model(),
                                ));
                            }
                            undos.push(undo);
                            accepted.push((q, changes));
                        }
                        Err(e) => {
                            let _ = q.ack.send(Err(e));
                        }
                    }
                }
                // The model changes only by what etcd sends back.
                for undo in undos.iter().rev() {
                    for c in undo {
                        mirror.model.apply(c);
                    }
                }
                (accepted, made, mirror.marker)
            };
            if accepted.iter().all(|(_, changes)| changes.is_empty()) {
                let revision = self.state.revision();
                for (q, changes) in accepted {
                    let _ = q.ack.send(Ok(Written { revision, changes }));
                }
                return None;
            }
            let all: Vec<Change> = accepted
                .iter()
                .flat_map(|(_, changes)| changes.iter().cloned())
                .collect();
            let marker_key = self.layout.marker();
            let mut success = self.layout.ops(&all);
            success.push(layout::put(marker_key.clone(), self.marker_value()));
            // Who made it, in the same transaction; the oldest entries pruned (best effort: a
            // delete of whatever lies below the bound, usually nothing or one key).
            success.push(layout::put(
                self.layout.history_key(marker),
                history::encode(&made),
            ));
            // The keys are named by the revision each write followed: those below `bound` hold
            // revisions older than the last `keep_history` (this write's key, `marker`, stays).
            let bound = marker
                .saturating_add(1)
                .saturating_sub(i64::try_from(self.keep_history).unwrap_or(i64::MAX));
            if bound > 0 {
                success.push(self.layout.history_below(bound));
            }
            let ops = success.len();
            let txn = TxnRequest {
                compare: vec![layout::mod_revision_is(marker_key.clone(), marker)],
                success,
                failure: vec![RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key: marker_key,
                        ..Default::default()
                    })),
                }],
            };
            let answer = match self.client.txn(txn).await {
                Ok(answer) => answer,
                Err(e) => {
                    let err = write_error(e, ops);
                    if accepted.len() > 1 && matches!(err, WriteError::FailedPrecondition(_)) {
                        // Too large together: each on its own.
                        return Some(accepted.into_iter().map(|(q, _)| q).collect());
                    }
                    for (q, _) in accepted {
                        let _ = q.ack.send(Err(err.clone()));
                    }
                    return None;
                }
            };
            let revision = answer.header.as_ref().map_or(0, |h| h.revision);
            if answer.succeeded {
                self.wait_applied(revision as u64).await;
                for (q, changes) in accepted {
                    let _ = q.ack.send(Ok(Written {
                        revision: revision as u64,
                        changes,
                    }));
                }
                return None;
            }
            // Another write came first: wait until this instance has applied it, judge again.
            let current = answer
                .responses
                .iter()
                .find_map(|r| match &r.response {
                    Some(Response::ResponseRange(range)) => {
                        Some(range.kvs.first().map_or(0, |kv| kv.mod_revision))
                    }
                    _ => None,
                })
                .unwrap_or(revision);
            self.with_status(|s| s.write_retries += 1);
            tracing::info!(
                attempt,
                marker,
                current,
                writes = accepted.len(),
                "etcd: another write committed first; judging the writes again"
            );
            group = accepted.into_iter().map(|(q, _)| q).collect();
            let mut seen = self.marker_seen.subscribe();
            let caught_up = tokio::time::timeout(
                self.client.request_timeout,
                seen.wait_for(|m| *m >= current),
            )
            .await;
            if !matches!(caught_up, Ok(Ok(_))) {
                let err = WriteError::Unavailable(format!(
                    "this instance has not caught up with etcd's revision {current}"
                ));
                for q in group {
                    let _ = q.ack.send(Err(err.clone()));
                }
                return None;
            }
        }
        for q in group {
            let _ = q.ack.send(Err(WriteError::Aborted(format!(
                "other writes committed first {MAX_ATTEMPTS} times in a row; nothing was written, try again"
            ))));
        }
        None
    }

    fn marker_value(&self) -> Vec<u8> {
        format!(
            "{{\"instance\":\"{}\",\"unix_ms\":{}}}",
            self.instance,
            unix_now_ms()
        )
        .into_bytes()
    }

    /// Waits (bounded) until this instance's watch has applied `revision`.
    async fn wait_applied(&self, revision: u64) {
        let mut applied = self.state.subscribe_revision();
        let waited = tokio::time::timeout(
            self.client.request_timeout,
            applied.wait_for(|r| *r >= revision),
        )
        .await;
        if !matches!(waited, Ok(Ok(_))) {
            tracing::warn!(
                revision,
                "etcd: the write is committed but this instance's watch has not applied it yet"
            );
        }
    }
}

/// An Admin write's failure from etcd's: the limits of one transaction are named with the
/// setting that raises them.
fn write_error(e: EtcdError, ops: usize) -> WriteError {
    let text = e.to_string();
    if text.contains("too many operations in txn request") {
        return WriteError::FailedPrecondition(format!(
            "the change takes {ops} operations in one etcd transaction, more than the cluster's \
             --max-txn-ops allows (128 by default): raise it on every member (see docs/etcd.md)"
        ));
    }
    if text.contains("request is too large") || text.contains("message length too large") {
        return WriteError::FailedPrecondition(format!(
            "the change is larger than one etcd request may be ({text}): raise --max-request-bytes \
             on every member (see docs/etcd.md)"
        ));
    }
    WriteError::Unavailable(text)
}

/// A 32-bit FNV-1a hash (of the prefix, in the history id).
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// On a prefix that was never bootstrapped: writes the bootstrap key (and the `--seed`
/// policy's state) in one transaction that succeeds only while `meta` is absent, so that
/// exactly one of the instances starting at once does it. Returns the key when this instance
/// made it with a generated secret.
async fn bootstrap_prefix(
    client: &EtcdClient,
    layout: &Layout,
    bootstrap: &Bootstrap,
) -> Result<Option<String>, EtcdStartError> {
    let meta = client
        .range(RangeRequest {
            key: layout.meta(),
            ..Default::default()
        })
        .await?;
    if let Some(kv) = meta.kvs.first() {
        check_meta(layout, &kv.value)?;
        return Ok(None);
    }
    let empty = Model::default();
    let mut changes = seed_changes(&empty, bootstrap.seed.as_deref())?;
    let mut seeded = IndexedModel::from(empty.clone());
    seeded.apply_with_undo(&changes);
    let (made, key) = bootstrap_changes(seeded.model(), bootstrap)?;
    changes.extend(made);
    let mut success = vec![
        layout::put(
            layout.meta(),
            format!("{{\"layout\":{}}}", layout::LAYOUT_VERSION).into_bytes(),
        ),
        layout::put(layout.marker(), b"{\"bootstrap\":true}".to_vec()),
    ];
    success.extend(layout.ops(&changes));
    // Who made the first revision; its revision is the key's `mod_revision`, as for any write.
    let mut after = IndexedModel::from(empty);
    after.apply_with_undo(&changes);
    let first = bootstrap_entry(0, bootstrap, &changes, after.model());
    success.push(layout::put(
        layout.history_key(0),
        history::encode(&[first]),
    ));
    let ops = success.len();
    let answer = client
        .txn(TxnRequest {
            compare: vec![layout::absent(layout.meta())],
            success,
            failure: Vec::new(),
        })
        .await
        .map_err(|e| match write_error(e, ops) {
            WriteError::FailedPrecondition(m) => invalid(layout.prefix(), m),
            other => invalid(layout.prefix(), other.to_string()),
        })?;
    if !answer.succeeded {
        tracing::info!(
            prefix = layout.prefix(),
            "another instance bootstrapped the prefix"
        );
        return Ok(None);
    }
    tracing::warn!(
        key = %bootstrap.prefix,
        prefix = layout.prefix(),
        "empty prefix in etcd: created the bootstrap SYSTEM_OWNER key"
    );
    Ok(key)
}

fn check_meta(layout: &Layout, value: &[u8]) -> Result<(), EtcdStartError> {
    #[derive(serde::Deserialize)]
    struct Meta {
        layout: u32,
    }
    let meta: Meta = serde_json::from_slice(value)
        .map_err(|e| invalid(layout.prefix(), format!("{}meta: {e}", layout.prefix())))?;
    if meta.layout != layout::LAYOUT_VERSION {
        return Err(invalid(
            layout.prefix(),
            format!(
                "it is stored in layout {} (this build reads layout {})",
                meta.layout,
                layout::LAYOUT_VERSION
            ),
        ));
    }
    Ok(())
}

/// Reads every key of the state under the prefix at one revision, page by page (not the
/// administration history, which the state does not need).
async fn read_all(client: &EtcdClient, layout: &Layout) -> Result<Read, EtcdStartError> {
    let (start, end) = layout.state_range();
    let mut key = start;
    let mut at = 0;
    let mut cluster_id = 0;
    let mut model = Model::default();
    let mut ids = Interner::default();
    let mut marker = 0;
    let mut newest = 0;
    let mut limit = PAGE;
    loop {
        let asked = client
            .range(RangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                limit,
                revision: at,
                ..Default::default()
            })
            .await;
        let page = match asked {
            Ok(page) => page,
            Err(e) if limit > MIN_PAGE && too_large(&e) => {
                limit = (limit / 2).max(MIN_PAGE);
                tracing::info!(error = %e, limit, "etcd: a page of the read was too large; asking for smaller pages");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if at == 0 {
            let header = page.header.unwrap_or_default();
            at = header.revision;
            cluster_id = header.cluster_id;
        }
        for kv in &page.kvs {
            newest = newest.max(kv.mod_revision);
            match layout.kind(&kv.key) {
                KeyKind::Marker => marker = kv.mod_revision,
                KeyKind::Meta => check_meta(layout, &kv.value)?,
                KeyKind::Object(record_key) => {
                    let change =
                        crate::origin::record::decode_object(&mut ids, record_key, &kv.value)
                            .map_err(|e| invalid(layout.prefix(), e.to_string()))?;
                    model.apply(&change);
                }
                KeyKind::Other => {}
            }
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                key = last.key.clone();
                key.push(0);
            }
            _ => break,
        }
    }
    Ok(Read {
        model,
        marker,
        newest,
        at,
        cluster_id,
    })
}

/// Whether a watch answer says the instance is in sync with etcd. The answer that creates the
/// watch carries etcd's current revision but comes before the events the watch catches up on
/// (etcd 3.4 sends it, and may send progress notifications, before those): it says so only
/// when the instance has applied every revision up to it (`next`, the next revision to apply,
/// is past it). Any later answer comes after every event up to its revision.
fn in_sync(created: bool, etcd_revision: i64, next: i64) -> bool {
    !created || etcd_revision < next
}

/// Whether a read failed because its answer was larger than etcd sends or this client takes
/// (a smaller page may pass).
fn too_large(e: &EtcdError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("larger than max") || text.contains("message length too large")
}

impl WritableOrigin for EtcdOrigin {
    fn execute(
        &self,
        caller: &str,
        command: Command,
    ) -> BoxFuture<'_, Result<Written, WriteError>> {
        Box::pin(self.write(caller.into(), command))
    }

    /// One range read of the history keys, filtered by etcd to the revisions after `after`.
    fn history(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<HistoryEntry>, HistoryError>> {
        Box::pin(async move {
            let (key, range_end) = self.layout.history_range();
            let page = self
                .client
                .range(RangeRequest {
                    key,
                    range_end,
                    limit: limit.min(i64::MAX as usize) as i64,
                    // Keys are named by the revision each write followed, so a key before
                    // `after` may still hold a revision after it: etcd filters by the revision
                    // the key was written at (the write's own).
                    min_mod_revision: after.saturating_add(1).min(i64::MAX as u64) as i64,
                    ..Default::default()
                })
                .await
                .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
            let mut entries = Vec::new();
            for kv in &page.kvs {
                entries.extend(history::decode(kv.mod_revision as u64, &kv.value)?);
            }
            Ok(entries)
        })
    }
}

impl Origin for EtcdOrigin {
    fn kind(&self) -> OriginKind {
        OriginKind::Etcd
    }

    fn status(&self) -> OriginStatus {
        let s = self.with_status(|s| s.clone());
        OriginStatus {
            kind: OriginKind::Etcd,
            reload: ReloadStatus {
                path: format!("{} {}", s.endpoints.join(","), s.prefix),
                last_error: s.last_error.clone(),
                ..Default::default()
            },
            upstream: None,
            etcd: Some(self.report()),
        }
    }

    fn routes(&self) -> RouteSource {
        RouteSource::Etcd(format!(
            "{} {}",
            self.client.endpoints().join(","),
            self.layout.prefix()
        ))
    }

    fn writer(&self) -> Result<&dyn WritableOrigin, ReadOnly> {
        Ok(self)
    }

    fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(self.follow(stop))
    }

    /// Not ready while etcd has been silent for longer than `--max-staleness`.
    fn not_ready(&self, loaded: bool, now: tokio::time::Instant) -> Option<String> {
        if !loaded {
            return Some("the state is not loaded yet".to_owned());
        }
        self.stale_reason(now)
    }

    fn readiness_note(&self) -> Option<String> {
        let s = self.with_status(|s| s.clone()).at(unix_now_ms());
        let state = if s.connected {
            "connected"
        } else {
            "disconnected"
        };
        Some(match s.staleness_ms {
            Some(ms) => format!(" (etcd {}: {state}, in sync {ms} ms ago)", s.endpoint),
            None => format!(" (etcd {}: {state}, never in sync yet)", s.endpoint),
        })
    }

    fn stale_at(&self) -> Option<tokio::time::Instant> {
        let max = self.max_staleness?;
        self.with_status(|s| s.last_contact).map(|t| t + max)
    }

    fn contact(&self) -> Option<Arc<Notify>> {
        Some(self.contact.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_watch_is_in_sync_only_when_nothing_is_left_to_catch_up() {
        assert!(
            !in_sync(true, 120, 100),
            "events 100..=120 are still to come"
        );
        assert!(in_sync(true, 99, 100));
        assert!(
            in_sync(false, 120, 100),
            "a later answer follows its events"
        );
    }

    #[test]
    fn pages_too_large_for_etcd_or_this_client_are_recognised() {
        let server = EtcdError::Refused(
            "http://127.0.0.1:2379: grpc: trying to send message larger than max (70000000 vs. 67108864)".into(),
        );
        let client = EtcdError::Refused(
            "http://127.0.0.1:2379: Error, decoded message length too large: found 70000000 bytes, the limit is: 67108864 bytes".into(),
        );
        assert!(too_large(&server) && too_large(&client));
        assert!(!too_large(&EtcdError::Unreachable(
            "connection refused".into()
        )));
    }
}
