//! What the etcd origin reports: the connection, the revisions, and how stale the state is, as
//! `/status`, `/readyz` and gRPC health show them.

use std::time::Duration;

use serde::Serialize;

use crate::origin::upstream::unix_now_ms;

/// The etcd origin's own status, kept up to date by its watch and its writes.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct EtcdStatus {
    pub(crate) endpoints: Vec<String>,
    /// The member the watch is open on (or was, last).
    pub(crate) endpoint: String,
    pub(crate) prefix: String,
    /// etcd's cluster id (hex).
    pub(crate) cluster_id: String,
    /// The etcd version of the member asked at start.
    pub(crate) version: String,
    pub(crate) connected: bool,
    /// Unix milliseconds of the last answer of etcd on the watch (events, progress).
    pub(crate) last_contact_unix_ms: Option<i64>,
    /// Milliseconds since `last_contact_unix_ms`, filled in when reported.
    pub(crate) since_contact_ms: Option<i64>,
    #[serde(skip)]
    pub(crate) last_contact: Option<tokio::time::Instant>,
    /// Unix milliseconds of the last moment everything etcd had committed was applied (an
    /// event or a progress notification).
    pub(crate) in_sync_unix_ms: Option<i64>,
    /// Milliseconds since `in_sync_unix_ms`, filled in when reported: how stale the state may be.
    pub(crate) staleness_ms: Option<i64>,
    /// etcd's revision as last reported by it (it also counts writes outside the prefix).
    pub(crate) etcd_revision: i64,
    /// The revision the watch resumes from after a disconnection.
    pub(crate) watch_from: i64,
    /// Watches opened (the first and every reconnection).
    pub(crate) connects: u64,
    /// Full re-reads after etcd compacted the revisions the watch needed.
    pub(crate) resyncs: u64,
    /// Writes that lost the race against another instance and were judged again.
    pub(crate) write_retries: u64,
    pub(crate) last_error: Option<String>,
}

impl EtcdStatus {
    pub(crate) fn at(&self, now_ms: i64) -> Self {
        let mut s = self.clone();
        s.staleness_ms = s.in_sync_unix_ms.map(|t| (now_ms - t).max(0));
        s.since_contact_ms = s.last_contact_unix_ms.map(|t| (now_ms - t).max(0));
        s
    }

    /// How long etcd has not been heard from, when that is `max` or longer.
    pub(crate) fn silent_for(&self, max: Duration, now: tokio::time::Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_contact?);
        (silent >= max).then_some(silent)
    }

    /// Records an answer of etcd now.
    pub(crate) fn contacted(&mut self) {
        self.last_contact = Some(tokio::time::Instant::now());
        self.last_contact_unix_ms = Some(unix_now_ms());
    }
}

/// What `/status` shows under `origin.etcd`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EtcdReport {
    #[serde(flatten)]
    pub(crate) status: EtcdStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_staleness_ms: Option<u64>,
    /// Not serving because etcd has not been heard from within `max_staleness_ms`.
    pub(crate) stale: bool,
}
