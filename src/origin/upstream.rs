//! Follow mode: the origin is another rolegate (the hub). A snapshot from the hub's Watch, then
//! its changes revision by revision under the hub's own revisions, resuming after a disconnect
//! from the last revision applied, re-snapshotting after a reset; the last state keeps serving
//! while the hub is away.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

use crate::{
    domain::{Model, model::Change},
    grpc::{
        pb::{self, authorizer_client::AuthorizerClient, watch_event::Event},
        watch::change_of,
    },
    state::{ChangeSet, State},
};

/// Why following the hub stopped for now (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream URL {url:?} is not valid: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot reach the hub: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the hub refused the watch: {0}")]
    Refused(tonic::Status),
    #[error("the stream from the hub broke: {0}")]
    Stream(tonic::Status),
    #[error("the hub ended the stream")]
    Ended,
    #[error("the hub sent an event that cannot be applied: {0}")]
    BadEvent(String),
}

/// What the follower reports on `/status` and in readiness.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UpstreamStatus {
    pub hub: String,
    pub connected: bool,
    /// Unix milliseconds of the last event (bookmarks included) from the hub.
    pub last_event_unix_ms: Option<i64>,
    /// Milliseconds since then, filled in when reported.
    pub staleness_ms: Option<i64>,
    /// The last revision the hub reported (change or bookmark).
    pub hub_revision: u64,
    /// The hub's history id this follower's revisions come from.
    pub hub_history: Option<String>,
    /// Added to the hub's revisions when the hub's history restarted below ours.
    pub revision_offset: u64,
    pub connects: u64,
    pub snapshots: u64,
    pub resets: u64,
    pub last_error: Option<String>,
}

impl UpstreamStatus {
    /// The status as of `now_ms`, with the staleness computed.
    pub fn at(&self, now_ms: i64) -> Self {
        let mut s = self.clone();
        s.staleness_ms = s.last_event_unix_ms.map(|t| (now_ms - t).max(0));
        s
    }
}

/// Exponential backoff with jitter: many followers of one restarted hub do not all knock at once.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: between half and all of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Back to the first step, after a session that worked.
    pub fn reset(&mut self) {
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

/// The follower.
pub struct UpstreamOrigin {
    hub: String,
    endpoint: Endpoint,
    key: String,
    state: Arc<State>,
    status: Arc<Mutex<UpstreamStatus>>,
    position: Mutex<Position>,
}

/// How a session with the hub ended without an error.
enum Ended {
    Reset,
    Shutdown,
}

impl UpstreamOrigin {
    /// A follower of `hub` (`http://HOST:PORT`) presenting `key`.
    pub fn new(hub: &str, key: String, state: Arc<State>) -> Result<Arc<Self>, UpstreamError> {
        let bad = |message: String| UpstreamError::BadUrl {
            url: hub.to_owned(),
            message,
        };
        if !hub.starts_with("http://") && !hub.starts_with("https://") {
            return Err(bad("it must start with http:// or https://".into()));
        }
        let endpoint = Endpoint::from_shared(hub.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Arc::new(UpstreamOrigin {
            hub: hub.to_owned(),
            endpoint,
            key,
            state,
            status: Arc::new(Mutex::new(UpstreamStatus {
                hub: hub.to_owned(),
                ..Default::default()
            })),
            position: Mutex::new(Position::default()),
        }))
    }

    /// The status, shared with the HTTP endpoints.
    pub fn status(&self) -> Arc<Mutex<UpstreamStatus>> {
        self.status.clone()
    }

    fn with_status(&self, f: impl FnOnce(&mut UpstreamStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn position(&self) -> Position {
        self.position
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows the hub until `shutdown` turns true: connect, watch, and on any failure wait
    /// (with backoff) and resume from the last revision applied.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let outcome = tokio::select! {
                outcome = self.session(&mut backoff) => outcome,
                _ = shutdown.wait_for(|s| *s) => Ok(Ended::Shutdown),
            };
            self.with_status(|s| s.connected = false);
            match outcome {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Reset) => {
                    tracing::warn!(hub = %self.hub, "the hub reset the watch; taking a new snapshot");
                    continue;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(hub = %self.hub, error = %err, retry_in = ?delay, revision = self.state.revision(), "upstream disconnected; serving the last state");
                    self.with_status(|s| s.last_error = Some(err.to_string()));
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
        let channel: Channel = self.endpoint.connect().await?;
        let mut client = AuthorizerClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        let pos = self.position();
        let resume = pos.resume && pos.history.is_some();
        let request = pb::WatchRequest {
            start_revision: if resume { pos.hub_last + 1 } else { 0 },
            snapshot: !resume,
            include_secret_hashes: true,
            api_key: self.key.clone(),
            // A snapshot starts a history afresh; only a resume names the one it continues.
            history: if resume {
                pos.history.clone().unwrap_or_default()
            } else {
                String::new()
            },
            bookmark_interval_ms: 1000,
            ..Default::default()
        };
        let mut stream = client
            .watch(request)
            .await
            .map_err(|status| {
                if resume && status.code() == tonic::Code::OutOfRange {
                    // Our revision is ahead of the hub's: not the history we know after all.
                    self.position
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .resume = false;
                }
                UpstreamError::Refused(status)
            })?
            .into_inner();
        self.with_status(|s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
        });
        tracing::info!(hub = %self.hub, resume, from = request_from(&pos), "following the hub");
        let mut snapshot: Option<Model> = (!resume).then(Model::default);
        let mut pending: Vec<Change> = Vec::new();
        loop {
            let ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                Ok(None) => return Err(UpstreamError::Ended),
                Err(status) => return Err(UpstreamError::Stream(status)),
            };
            let now_ms = unix_now_ms();
            self.with_status(|s| {
                s.last_event_unix_ms = Some(now_ms);
                s.hub_revision = s.hub_revision.max(ev.revision);
            });
            match &ev.event {
                Some(Event::Reset(reset)) => {
                    tracing::info!(hub = %self.hub, reason = %reset.reason, "reset by the hub");
                    self.position
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .resume = false;
                    self.with_status(|s| s.resets += 1);
                    return Ok(Ended::Reset);
                }
                Some(Event::SnapshotEnd(_)) => {
                    let model = snapshot.take().ok_or_else(|| {
                        UpstreamError::BadEvent("a snapshot end without a snapshot".into())
                    })?;
                    self.adopt(ev.revision, &ev.history, model)?;
                    backoff.reset();
                }
                Some(Event::Bookmark(_)) => backoff.reset(),
                _ => {
                    let change =
                        change_of(&ev).map_err(|e| UpstreamError::BadEvent(e.to_string()))?;
                    match (&mut snapshot, change) {
                        (Some(model), Some(change)) => model.apply(&change),
                        (None, Some(change)) => pending.push(change),
                        _ => {}
                    }
                    if snapshot.is_none() && ev.end_of_revision {
                        self.apply(ev.revision, std::mem::take(&mut pending))?;
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// Applies one complete revision of the hub.
    fn apply(&self, hub_revision: u64, changes: Vec<Change>) -> Result<(), UpstreamError> {
        let mut pos = self.position.lock().unwrap_or_else(|p| p.into_inner());
        let revision = hub_revision + pos.offset;
        self.state
            .apply(ChangeSet { revision, changes })
            .map_err(|e| UpstreamError::BadEvent(e.to_string()))?;
        pos.hub_last = hub_revision;
        Ok(())
    }

    /// Replaces the state with a complete snapshot of the hub at `hub_revision`: the difference
    /// is applied as one revision, so the follower's own watchers see only what changed.
    fn adopt(&self, hub_revision: u64, history: &str, model: Model) -> Result<(), UpstreamError> {
        let problems = model.validate();
        if let Some(first) = problems.first() {
            return Err(UpstreamError::BadEvent(format!(
                "the hub's snapshot is not a valid state: {first}"
            )));
        }
        let mut pos = self.position.lock().unwrap_or_else(|p| p.into_inner());
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
        let changes = self.state.model().diff(&model);
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
        self.with_status(|s| {
            s.snapshots += 1;
            s.hub_history = Some(history.to_owned());
            s.revision_offset = offset;
        });
        tracing::info!(hub = %self.hub, revision, keys = self.state.counts().keys, "snapshot from the hub applied");
        Ok(())
    }
}

fn request_from(pos: &Position) -> u64 {
    if pos.resume && pos.history.is_some() {
        pos.hub_last + 1
    } else {
        0
    }
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (i, cap) in [100, 200, 400, 800, 800, 800].into_iter().enumerate() {
            let cap = Duration::from_millis(cap);
            assert!(
                steps[i] <= cap && steps[i] >= cap / 2,
                "step {i}: {:?}",
                steps[i]
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_hub_url_must_be_http() {
        let state = Arc::new(State::new());
        assert!(matches!(
            UpstreamOrigin::new("hub:50051", String::new(), state.clone()),
            Err(UpstreamError::BadUrl { .. })
        ));
        assert!(UpstreamOrigin::new("http://127.0.0.1:1", String::new(), state).is_ok());
    }

    #[test]
    fn staleness_is_measured_from_the_last_event() {
        let s = UpstreamStatus {
            last_event_unix_ms: Some(1_000),
            ..Default::default()
        };
        assert_eq!(s.at(4_500).staleness_ms, Some(3_500));
        assert_eq!(UpstreamStatus::default().at(9).staleness_ms, None);
    }
}
