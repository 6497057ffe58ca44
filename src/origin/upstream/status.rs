//! What a follower reports: its connection to the hub and how stale its state is, as `/status`,
//! `/readyz` and gRPC health show them.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

/// What the follower reports on `/status` and in readiness.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpstreamStatus {
    /// The hub in use.
    pub(crate) hub: String,
    /// Every hub given, in the order they are tried.
    pub(crate) hubs: Vec<String>,
    /// How often the follower moved to the next hub.
    pub(crate) fail_overs: u64,
    pub(crate) connected: bool,
    /// Unix milliseconds of the last event (bookmarks and snapshot parts included) from the hub.
    pub(crate) last_event_unix_ms: Option<i64>,
    /// Unix milliseconds of the last contact with the hub: a Watch it accepted (for a snapshot
    /// or a resume), or any event on it, bookmarks included.
    pub(crate) last_contact_unix_ms: Option<i64>,
    /// Milliseconds since `last_contact_unix_ms`, filled in when reported.
    pub(crate) since_contact_ms: Option<i64>,
    /// The last contact on the monotonic clock: staleness is decided on it, so that a change of
    /// the wall clock does not take a follower in or out of service.
    #[serde(skip)]
    pub(crate) last_contact: Option<tokio::time::Instant>,
    /// Unix milliseconds of the last moment the follower had applied everything the hub had
    /// sent (a complete revision, a snapshot end, or a bookmark outside a snapshot).
    pub(crate) in_sync_unix_ms: Option<i64>,
    /// Milliseconds since `in_sync_unix_ms`, filled in when reported: how stale the state
    /// served may be. A snapshot in progress does not count as in sync.
    pub(crate) staleness_ms: Option<i64>,
    /// A snapshot is being received and staged; the previous state serves until it is complete.
    pub(crate) snapshot_in_progress: bool,
    /// Objects of the snapshot in progress received so far.
    pub(crate) snapshot_objects_staged: u64,
    /// The last revision the hub reported (change or bookmark).
    pub(crate) hub_revision: u64,
    /// The hub's history id this follower's revisions come from.
    pub(crate) hub_history: Option<String>,
    /// Added to the hub's revisions when the hub's history restarted below ours.
    pub(crate) revision_offset: u64,
    pub(crate) connects: u64,
    pub(crate) snapshots: u64,
    /// Snapshots that broke off before their end marker (the previous state was kept).
    pub(crate) snapshots_abandoned: u64,
    pub(crate) resets: u64,
    pub(crate) last_error: Option<String>,
    /// Where the time of the last snapshot applied went.
    pub last_snapshot: Option<SnapshotTiming>,
}

/// The phases of one snapshot, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotTiming {
    pub(crate) objects: u64,
    /// From asking the hub to its end marker: transfer, decoding and staging.
    pub(crate) receive_ms: u64,
    pub(crate) validate_ms: u64,
    /// Comparing with the current state (0 when the follower was empty: no diff is made).
    pub(crate) diff_ms: u64,
    /// `State::apply` of the resulting change set.
    pub(crate) apply_ms: u64,
}

impl UpstreamStatus {
    /// The status as of `now_ms`, with the staleness computed.
    pub(crate) fn at(&self, now_ms: i64) -> Self {
        let mut s = self.clone();
        s.staleness_ms = s.in_sync_unix_ms.map(|t| (now_ms - t).max(0));
        s.since_contact_ms = s.last_contact_unix_ms.map(|t| (now_ms - t).max(0));
        s
    }

    /// How long the hub has not been heard from, when that is `max` or longer (None: heard
    /// from within `max`, or never yet: a follower without a first snapshot is not ready
    /// anyway).
    pub(crate) fn silent_for(&self, max: Duration, now: tokio::time::Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_contact?);
        (silent >= max).then_some(silent)
    }

    /// The moment the follower goes stale if the hub is not heard from before.
    pub(crate) fn stale_at(&self, max: Duration) -> Option<tokio::time::Instant> {
        self.last_contact.map(|t| t + max)
    }
}

/// What readiness reads of a follower: its status, the bound on how long the hub may go
/// unheard, and a wake-up on every contact with the hub.
#[derive(Clone, Debug)]
pub struct FollowerView {
    pub status: Arc<Mutex<UpstreamStatus>>,
    /// `--max-staleness` (None: no bound; the last state serves however old).
    pub(crate) max_staleness: Option<Duration>,
}

impl FollowerView {
    /// A copy of the status.
    pub(crate) fn status(&self) -> UpstreamStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the follower must not take traffic for staleness, if so: how long since the hub was
    /// last heard from, and the last error.
    pub(crate) fn stale_reason(&self, now: tokio::time::Instant) -> Option<String> {
        let max = self.max_staleness?;
        let status = self.status();
        let silent = status.silent_for(max, now)?;
        let error = status
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        Some(format!(
            "no contact with the hub {} for {} (more than --max-staleness {}){error}",
            status.hub,
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64)),
            humantime::format_duration(max),
        ))
    }

    /// When the follower goes stale if the hub is not heard from before (None without a bound
    /// or before any contact).
    pub(crate) fn stale_at(&self) -> Option<tokio::time::Instant> {
        self.status().stale_at(self.max_staleness?)
    }

    /// What `/status` shows of the follower now.
    pub(crate) fn report(&self) -> UpstreamReport {
        UpstreamReport {
            status: self.status().at(unix_now_ms()),
            max_staleness_ms: self.max_staleness.map(|d| d.as_millis() as u64),
            stale: self.stale_reason(tokio::time::Instant::now()).is_some(),
        }
    }

    /// Why the follower is not ready before its first snapshot is applied.
    pub(crate) fn not_loaded_reason(&self) -> String {
        let s = self.status();
        let error = s
            .last_error
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        format!("no snapshot from the hub {} applied yet{error}", s.hub)
    }

    /// What `/readyz` adds about the hub: connected or not, a snapshot in progress, and how
    /// long ago the follower was last in sync.
    pub(crate) fn readiness_note(&self) -> String {
        let s = self.status().at(unix_now_ms());
        let state = if s.connected {
            "connected"
        } else {
            "disconnected"
        };
        // A snapshot in progress is staged aside: the state served is the previous one.
        let snapshot = if s.snapshot_in_progress {
            format!(
                ", taking a snapshot ({} objects so far)",
                s.snapshot_objects_staged
            )
        } else {
            String::new()
        };
        match s.staleness_ms {
            Some(ms) => format!(
                " (upstream {}: {state}{snapshot}, in sync {ms} ms ago)",
                s.hub
            ),
            None => format!(
                " (upstream {}: {state}{snapshot}, never in sync yet)",
                s.hub
            ),
        }
    }
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What `/status` shows of a follower under `origin.upstream`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct UpstreamReport {
    #[serde(flatten)]
    pub(crate) status: UpstreamStatus,
    /// `--max-staleness` in milliseconds (absent: no bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_staleness_ms: Option<u64>,
    /// Not serving because the hub has not been heard from within `max_staleness_ms`.
    pub(crate) stale: bool,
}
