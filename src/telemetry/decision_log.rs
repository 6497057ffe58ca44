//! The decision log (`--decision-log PATH|stdout`): one JSON object per decision, written by a
//! thread of its own from a bounded queue. A check only ever tries to enqueue (never waits): when
//! the queue is full (a slow disk, a pipe nobody reads), the record is dropped and counted
//! (`rolegate_decision_log_dropped_total`), and so is a record whose write failed (a full disk).
//!
//! A file is reopened on SIGHUP (after logrotate moved it); see docs/operations.md.

use std::{
    fs::OpenOptions,
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, SystemTime},
};

use compact_str::CompactString;
use serde_json::json;

use crate::domain::{RequestorId, Scope};

use super::{FrontEnd, TraceContext};

/// How many records wait for the writer at most; more are dropped.
pub(crate) const QUEUE: usize = 16 * 1024;
/// The writer writes out its buffer once it holds this much, or when the queue is empty.
const FLUSH_BYTES: usize = 64 * 1024;

/// Where decisions go and which.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionLogConfig {
    /// `stdout` or a file path (appended to; created when missing; may be a FIFO).
    pub target: String,
    /// Only denials are logged.
    pub denied_only: bool,
    /// The share of allowed decisions logged, 0 to 1.
    pub sample_allowed: f64,
}

/// The sending side of the decision log, held by the front ends.
pub struct DecisionLog {
    tx: SyncSender<Box<DecisionRecord>>,
    denied_only: bool,
    sample_allowed: f64,
    pub(crate) stats: Arc<LogStats>,
}

/// What the decision log counts, for `/metrics`.
#[derive(Default)]
pub(crate) struct LogStats {
    pub(crate) dropped: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    reopen: AtomicBool,
}

/// One decision, as the front end saw it. Never holds a secret: the key only by its prefix, a
/// proxied request's path without its query string.
#[derive(Debug)]
pub(crate) struct DecisionRecord {
    pub(crate) front_end: FrontEnd,
    pub(crate) time: SystemTime,
    pub(crate) revision: u64,
    pub(crate) key_prefix: Option<CompactString>,
    pub(crate) entitlement: String,
    pub(crate) team_id: String,
    pub(crate) owner_key_prefix: String,
    pub(crate) owner_user_id: String,
    /// A proxied request's method and path.
    pub(crate) route: Option<(String, String)>,
    pub(crate) allowed: bool,
    pub(crate) scope: Option<Scope>,
    /// The API name (`NO_GRANT`).
    pub(crate) reason: &'static str,
    pub(crate) requested_by: Option<RequestorId>,
    pub(crate) trace: Option<TraceContext>,
    pub(crate) latency: Duration,
}

impl DecisionRecord {
    /// A record of `front_end` at the current time, everything else empty.
    pub(crate) fn new(front_end: FrontEnd) -> Self {
        DecisionRecord {
            front_end,
            time: SystemTime::now(),
            revision: 0,
            key_prefix: None,
            entitlement: String::new(),
            team_id: String::new(),
            owner_key_prefix: String::new(),
            owner_user_id: String::new(),
            route: None,
            allowed: false,
            scope: None,
            reason: "OTHER",
            requested_by: None,
            trace: None,
            latency: Duration::ZERO,
        }
    }

    /// The JSON line (with its newline) appended to `out`.
    fn write_line(&self, out: &mut Vec<u8>) {
        let timestamp = time::OffsetDateTime::from(self.time)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut input = json!({
            "front_end": self.front_end.as_str(),
            "key_prefix": self.key_prefix.as_deref(),
            "entitlement": self.entitlement,
            "resource": {
                "team_id": self.team_id,
                "owner_key_prefix": self.owner_key_prefix,
                "owner_user_id": self.owner_user_id,
            },
        });
        if let Some((method, path)) = &self.route {
            input["route"] = json!({ "method": method, "path": path });
        }
        let mut line = json!({
            "decision_id": decision_id(),
            "timestamp": timestamp,
            "revision": self.revision,
            "input": input,
            "result": {
                "allowed": self.allowed,
                "scope": self.scope.map(Scope::as_str),
                "reason": self.reason,
            },
            "requested_by": self.requested_by.as_ref().map(|r| match r {
                RequestorId::User(id) => format!("user:{id}"),
                RequestorId::Project(id) => format!("project:{id}"),
            }),
            "latency_ns": u64::try_from(self.latency.as_nanos()).unwrap_or(u64::MAX),
        });
        if let Some(t) = &self.trace {
            line["trace_id"] = t.trace_id().into();
            line["span_id"] = t.span_id().into();
        }
        if serde_json::to_writer(&mut *out, &line).is_ok() {
            out.push(b'\n');
        }
    }
}

/// A random (version 4) UUID.
fn decision_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    let v = u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 0x3 | 0x8;
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        v,
        &h[17..20],
        &h[20..32]
    )
}

/// Where the writer writes.
enum Target {
    Stdout,
    File(PathBuf),
}

impl DecisionLog {
    /// Starts the writer thread. A file that cannot be opened is an error now (a FIFO is opened
    /// by the writer, as opening one waits for a reader).
    pub fn start(config: &DecisionLogConfig) -> std::io::Result<Self> {
        if !(0.0..=1.0).contains(&config.sample_allowed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--decision-log-sample-allowed must be between 0 and 1",
            ));
        }
        let (target, file) = if config.target == "stdout" || config.target == "-" {
            (Target::Stdout, None)
        } else {
            let path = PathBuf::from(&config.target);
            let fifo = std::fs::metadata(&path).is_ok_and(|m| is_fifo(&m));
            let file = if fifo {
                None
            } else {
                Some(open(&path).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "the decision log {} cannot be opened (--decision-log): {e}",
                            path.display()
                        ),
                    )
                })?)
            };
            (Target::File(path), file)
        };
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(LogStats::default());
        let writer = Writer {
            target,
            out: file.map(|f| Box::new(f) as Box<dyn Write + Send>),
            stats: stats.clone(),
            buf: Vec::with_capacity(FLUSH_BYTES * 2),
            pending: 0,
            failing: false,
        };
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(DecisionLog {
            tx,
            denied_only: config.denied_only,
            sample_allowed: config.sample_allowed,
            stats,
        })
    }

    /// Whether a decision of this outcome is to be logged (filters and sampling).
    #[inline]
    pub(crate) fn wants(&self, allowed: bool) -> bool {
        if !allowed {
            return true;
        }
        !self.denied_only
            && (self.sample_allowed >= 1.0
                || (self.sample_allowed > 0.0 && rand::random::<f64>() < self.sample_allowed))
    }

    /// Enqueues a record; never waits. A full queue drops it (counted).
    pub(crate) fn send(&self, record: DecisionRecord) {
        match self.tx.try_send(Box::new(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to reopen its file (SIGHUP, after a log rotation).
    pub fn reopen(&self) {
        self.stats.reopen.store(true, Ordering::Release);
    }

    /// Records dropped so far (queue full, write failed).
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(unix)]
fn is_fifo(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_fifo()
}

#[cfg(not(unix))]
fn is_fifo(_: &std::fs::Metadata) -> bool {
    false
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    target: Target,
    /// None until a FIFO is opened, or after a failed reopen.
    out: Option<Box<dyn Write + Send>>,
    stats: Arc<LogStats>,
    buf: Vec<u8>,
    /// Records in `buf`.
    pending: u64,
    /// The last write failed (logged once until a write succeeds).
    failing: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Box<DecisionRecord>>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(record) => self.add(&record),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(record) = rx.try_recv() {
                self.add(&record);
                if self.buf.len() >= FLUSH_BYTES {
                    self.flush();
                }
            }
            self.flush();
            if self.stats.reopen.swap(false, Ordering::AcqRel) {
                self.reopen();
            }
        }
        self.flush();
    }

    fn add(&mut self, record: &DecisionRecord) {
        record.write_line(&mut self.buf);
        self.pending += 1;
    }

    fn reopen(&mut self) {
        if let Target::File(path) = &self.target {
            // Dropping the old file first: a FIFO's open waits for a reader.
            self.out = None;
            match open(path) {
                Ok(f) => {
                    tracing::info!(path = %path.display(), "decision log reopened");
                    self.out = Some(Box::new(f));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "decision log cannot be reopened; decisions are dropped until the next SIGHUP");
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.out.is_none()
            && let Target::File(path) = &self.target
            && !self.failing
        {
            // A FIFO, opened here: this waits for a reader, while the queue fills and drops.
            match open(path) {
                Ok(f) => self.out = Some(Box::new(f)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "decision log cannot be opened");
                    self.failing = true;
                }
            }
        }
        let result = match (&self.target, &mut self.out) {
            (Target::Stdout, _) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf).and_then(|()| out.flush())
            }
            (Target::File(_), Some(out)) => out.write_all(&self.buf).and_then(|()| out.flush()),
            (Target::File(_), None) => Err(std::io::Error::other("not open")),
        };
        match result {
            Ok(()) => {
                self.stats
                    .written
                    .fetch_add(self.pending, Ordering::Relaxed);
                self.failing = false;
            }
            Err(e) => {
                self.stats
                    .dropped
                    .fetch_add(self.pending, Ordering::Relaxed);
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(error = %e, records = self.pending, "decision log write failed; records dropped");
                }
                self.failing = true;
            }
        }
        self.buf.clear();
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_uuids() {
        let id = decision_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(decision_id(), decision_id());
    }

    #[test]
    fn a_record_is_one_json_line() {
        let mut r = DecisionRecord::new(FrontEnd::ExtAuthz);
        r.key_prefix = Some("DanaKey".into());
        r.route = Some(("GET".into(), "/api/x".into()));
        r.trace = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        r.requested_by = Some(RequestorId::User("dana".into()));
        let mut out = Vec::new();
        r.write_line(&mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["input"]["route"]["path"], "/api/x");
        assert_eq!(v["input"]["front_end"], "ext_authz");
        assert_eq!(v["requested_by"], "user:dana");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
