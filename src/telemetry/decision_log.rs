//! The decision log (`--decision-log PATH|stdout`): one JSON object per decision, written by a
//! thread of its own from a bounded queue. A check only ever tries to enqueue (never waits, and
//! never wakes the writer: the writer polls), and a record is a plain struct moved into the queue,
//! its short strings inline. When the queue is full (a slow disk, a pipe nobody reads), the record
//! is dropped and counted (`rolegate_decision_log_dropped_total`), and so is a record whose write
//! failed (a full disk).
//!
//! The writer formats the JSON itself (keys in alphabetical order, as serde_json writes a map),
//! with the timestamp's date and second formatted once per second, and writes in batches: when
//! [`FLUSH_BYTES`] are waiting or the oldest record has waited [`FLUSH_AFTER`].
//!
//! A file is reopened on SIGHUP (after logrotate moved it); see docs/operations.md.

use std::{
    fs::OpenOptions,
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use compact_str::CompactString;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::domain::{RequestorId, Scope};

use super::{FrontEnd, TraceContext};

/// How many records wait for the writer at most; more are dropped.
pub(crate) const QUEUE: usize = 16 * 1024;
/// The writer writes out its buffer once it holds this much...
const FLUSH_BYTES: usize = 128 * 1024;
/// ...or once its oldest record has waited this long.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// How long the writer sleeps between two looks at the queue: at most `QUEUE` records arrive in
/// that time at 1.6 million decisions a second.
const POLL: Duration = Duration::from_millis(10);
/// How long dropping the log waits for the writer to write what is queued.
const DRAIN_ON_DROP: Duration = Duration::from_secs(2);

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
    /// `None` only while dropping (the writer then sees the queue disconnected).
    tx: Option<SyncSender<DecisionRecord>>,
    /// Reports that the writer wrote what was queued and stopped (a Mutex only to be `Sync`;
    /// taken once, when dropped).
    done: std::sync::Mutex<Receiver<()>>,
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
/// proxied request's path without its query string. The strings are inline up to 24 bytes (every
/// id, prefix and entitlement rolegate accepts is shorter), so a record costs no allocation
/// unless a path is longer.
#[derive(Debug)]
pub(crate) struct DecisionRecord {
    pub(crate) front_end: FrontEnd,
    pub(crate) time: SystemTime,
    pub(crate) revision: u64,
    pub(crate) key_prefix: Option<CompactString>,
    pub(crate) entitlement: CompactString,
    pub(crate) team_id: CompactString,
    pub(crate) owner_key_prefix: CompactString,
    pub(crate) owner_user_id: CompactString,
    /// A proxied request's method and path.
    pub(crate) route: Option<(CompactString, CompactString)>,
    pub(crate) allowed: bool,
    pub(crate) scope: Option<Scope>,
    /// The API name (`NO_GRANT`).
    pub(crate) reason: &'static str,
    /// `user:ID` or `project:ID`: copied (inline when short) rather than sharing the state's
    /// `Arc`, whose count every core would otherwise write on every decision of that user.
    pub(crate) requested_by: Option<CompactString>,
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
            entitlement: CompactString::const_new(""),
            team_id: CompactString::const_new(""),
            owner_key_prefix: CompactString::const_new(""),
            owner_user_id: CompactString::const_new(""),
            route: None,
            allowed: false,
            scope: None,
            reason: "OTHER",
            requested_by: None,
            trace: None,
            latency: Duration::ZERO,
        }
    }

    /// The JSON line (with its newline) appended to `out`, with `decision_id` as its id and the
    /// timestamp from `clock`. Keys in alphabetical order.
    fn write_line(&self, out: &mut Vec<u8>, decision_id: u128, clock: &mut Clock) {
        out.extend_from_slice(b"{\"decision_id\":\"");
        write_uuid(out, decision_id);
        out.extend_from_slice(b"\",\"input\":{\"entitlement\":");
        write_str(out, &self.entitlement);
        out.extend_from_slice(b",\"front_end\":\"");
        out.extend_from_slice(self.front_end.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key_prefix\":");
        match &self.key_prefix {
            Some(p) => write_str(out, p),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"resource\":{\"owner_key_prefix\":");
        write_str(out, &self.owner_key_prefix);
        out.extend_from_slice(b",\"owner_user_id\":");
        write_str(out, &self.owner_user_id);
        out.extend_from_slice(b",\"team_id\":");
        write_str(out, &self.team_id);
        out.push(b'}');
        if let Some((method, path)) = &self.route {
            out.extend_from_slice(b",\"route\":{\"method\":");
            write_str(out, method);
            out.extend_from_slice(b",\"path\":");
            write_str(out, path);
            out.push(b'}');
        }
        out.extend_from_slice(b"},\"latency_ns\":");
        write_u64(
            out,
            u64::try_from(self.latency.as_nanos()).unwrap_or(u64::MAX),
        );
        out.extend_from_slice(b",\"requested_by\":");
        match &self.requested_by {
            Some(r) => write_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"result\":{\"allowed\":");
        out.extend_from_slice(if self.allowed { b"true" } else { b"false" });
        out.extend_from_slice(b",\"reason\":");
        write_str(out, self.reason);
        out.extend_from_slice(b",\"scope\":");
        match self.scope {
            Some(scope) => write_str(out, scope.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"},\"revision\":");
        write_u64(out, self.revision);
        if let Some(t) = &self.trace {
            out.extend_from_slice(b",\"span_id\":\"");
            out.extend_from_slice(t.span_id().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        clock.write(out, self.time);
        out.push(b'"');
        if let Some(t) = &self.trace {
            out.extend_from_slice(b",\"trace_id\":\"");
            out.extend_from_slice(t.trace_id().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"}\n");
    }
}

/// RFC 3339 timestamps in UTC, the date and time of day formatted once per second.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    text: Vec<u8>,
}

impl Clock {
    /// `time` as `2026-01-05T10:12:41.278411647Z` (the fraction without its trailing zeros,
    /// none on a whole second), as the `time` crate writes RFC 3339.
    fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            self.text.clear();
            let t = i64::try_from(second)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let formatted = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            self.text.extend_from_slice(formatted.as_bytes());
            self.second = Some(second);
        }
        out.extend_from_slice(&self.text);
        let mut nanos = since.subsec_nanos();
        if nanos > 0 {
            let mut digits = 9;
            while nanos.is_multiple_of(10) {
                nanos /= 10;
                digits -= 1;
            }
            out.push(b'.');
            let mut buf = [b'0'; 9];
            for slot in buf[..digits].iter_mut().rev() {
                *slot = b'0' + (nanos % 10) as u8;
                nanos /= 10;
            }
            out.extend_from_slice(&buf[..digits]);
        }
        out.push(b'Z');
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A random value as a version 4 UUID (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
fn write_uuid(out: &mut Vec<u8>, random: u128) {
    let v = (random & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let bytes = v.to_be_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `s` as a JSON string, quoted and escaped.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// The `requested_by` of a requestor: `user:ID` or `project:ID`.
pub(crate) fn requestor_text(id: &RequestorId) -> CompactString {
    let (kind, id) = match id {
        RequestorId::User(id) => ("user:", id),
        RequestorId::Project(id) => ("project:", id),
    };
    let mut text = CompactString::with_capacity(kind.len() + id.len());
    text.push_str(kind);
    text.push_str(id);
    text
}

/// `s` escaped for a JSON string: `"`, `\\` and control characters; everything else (UTF-8
/// included) as it is.
fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
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
        let (done_tx, done) = sync_channel(1);
        let stats = Arc::new(LogStats::default());
        let writer = Writer {
            target,
            out: file.map(|f| Box::new(f) as Box<dyn Write + Send>),
            stats: stats.clone(),
            buf: Vec::with_capacity(FLUSH_BYTES + 4096),
            pending: 0,
            oldest: None,
            failing: false,
            clock: Clock::default(),
            ids: StdRng::from_os_rng(),
        };
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                writer.run(rx);
                let _ = done_tx.send(());
            })?;
        Ok(DecisionLog {
            tx: Some(tx),
            done: std::sync::Mutex::new(done),
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
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
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

impl Drop for DecisionLog {
    /// Lets the writer write what is queued (a bounded wait: a FIFO nobody reads holds it).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Ok(done) = self.done.get_mut() {
            let _ = done.recv_timeout(DRAIN_ON_DROP);
        }
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
    /// When the oldest record in `buf` was taken from the queue.
    oldest: Option<Instant>,
    /// The last write failed (logged once until a write succeeds).
    failing: bool,
    clock: Clock,
    /// Where decision ids come from (seeded from the OS, then cheap: no syscall per record).
    ids: StdRng,
}

impl Writer {
    /// Polls the queue rather than waiting on it: a sender then never has to wake the writer
    /// (a system call on the check's path), and records gather into batches on their own.
    fn run(mut self, rx: Receiver<DecisionRecord>) {
        loop {
            let disconnected = loop {
                match rx.try_recv() {
                    Ok(record) => {
                        self.add(&record);
                        if self.buf.len() >= FLUSH_BYTES {
                            self.flush();
                        }
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            let reopen = self.stats.reopen.swap(false, Ordering::AcqRel);
            if disconnected || reopen || self.oldest.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                self.flush();
            }
            if disconnected {
                return;
            }
            if reopen {
                self.reopen();
            }
            std::thread::sleep(POLL);
        }
    }

    fn add(&mut self, record: &DecisionRecord) {
        record.write_line(&mut self.buf, self.ids.random(), &mut self.clock);
        self.pending += 1;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
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
        self.oldest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(r: &DecisionRecord, id: u128) -> serde_json::Value {
        let mut out = Vec::new();
        r.write_line(&mut out, id, &mut Clock::default());
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn decision_ids_are_uuids() {
        for random in [0, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let mut out = Vec::new();
            write_uuid(&mut out, random);
            let id = String::from_utf8(out).unwrap();
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(&id[14..15], "4", "{id}");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
            assert_eq!(
                id.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'-')
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>(),
                [8, 13, 18, 23]
            );
        }
        let mut out = Vec::new();
        write_uuid(&mut out, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(out, b"01234567-89ab-4def-8123-456789abcdef");
    }

    #[test]
    fn a_record_is_one_json_line() {
        let mut r = DecisionRecord::new(FrontEnd::ExtAuthz);
        r.key_prefix = Some("DanaKey".into());
        r.route = Some(("GET".into(), "/api/x".into()));
        r.trace = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        r.requested_by = Some(requestor_text(&RequestorId::User("dana".into())));
        r.scope = Some(Scope::Team);
        r.revision = 12;
        r.latency = Duration::from_nanos(4120);
        let v = line(&r, 7);
        assert_eq!(v["input"]["route"]["path"], "/api/x");
        assert_eq!(v["input"]["front_end"], "ext_authz");
        assert_eq!(v["input"]["key_prefix"], "DanaKey");
        assert_eq!(v["requested_by"], "user:dana");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["result"]["scope"], "TEAM");
        assert_eq!(v["revision"], 12);
        assert_eq!(v["latency_ns"], 4120);
        assert_eq!(v["decision_id"], "00000000-0000-4000-8000-000000000007");
    }

    #[test]
    fn lines_are_what_serde_json_writes() {
        // Keys in alphabetical order, nulls where nothing is known, every string escaped.
        let mut r = DecisionRecord::new(FrontEnd::Check);
        r.team_id = "quote\" back\\ slash\n\u{1}\u{7f} é".into();
        r.requested_by = Some(requestor_text(&RequestorId::Project("p\"1".into())));
        r.time = UNIX_EPOCH + Duration::new(1_767_607_961, 278_411_647);
        let mut out = Vec::new();
        r.write_line(&mut out, 1, &mut Clock::default());
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(text, format!("{}\n", serde_json::to_string(&v).unwrap()));
        assert_eq!(
            v["input"]["resource"]["team_id"],
            "quote\" back\\ slash\n\u{1}\u{7f} é"
        );
        assert_eq!(v["requested_by"], "project:p\"1");
        assert_eq!(v["input"]["key_prefix"], serde_json::Value::Null);
        assert_eq!(v["result"]["scope"], serde_json::Value::Null);
        assert_eq!(v["timestamp"], "2026-01-05T10:12:41.278411647Z");
        assert!(v.get("trace_id").is_none() && v.get("input").unwrap().get("route").is_none());
    }

    #[test]
    fn timestamps_are_rfc3339_as_the_time_crate_writes_them() {
        let mut clock = Clock::default();
        for (secs, nanos) in [
            (0, 0),
            (1_767_607_961, 0),
            (1_767_607_961, 5),
            (1_767_607_961, 120_000_000),
            (1_767_607_962, 999_999_999),
            (4_102_444_800, 1_000),
        ] {
            let time = UNIX_EPOCH + Duration::new(secs, nanos);
            let mut out = Vec::new();
            clock.write(&mut out, time);
            let expected = time::OffsetDateTime::from(time)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
