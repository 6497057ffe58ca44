//! What rolegate tells its operators about itself: Prometheus metrics on `GET /metrics`
//! ([`metrics`], [`grpc`], [`process`]), the decision log ([`decision_log`]) and W3C trace
//! context ([`trace`]).
//!
//! The decision path only touches pre-resolved counters ([`DecisionCounters`]: a fixed array of
//! atomics indexed by front end, outcome and reason, summed at scrape time), and builds a
//! decision log record only when a log is configured.

pub(crate) mod decision_log;
pub(crate) mod grpc;
pub(crate) mod metrics;
pub mod otlp;
pub(crate) mod process;
pub(crate) mod trace;

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

pub use decision_log::{DecisionLog, DecisionLogConfig};
pub(crate) use trace::TraceContext;

/// The front end a decision was asked through (the `front_end` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontEnd {
    Check,
    CheckBatch,
    ExtAuthz,
    HttpAuth,
}

impl FrontEnd {
    pub(crate) const ALL: [FrontEnd; 4] = [
        FrontEnd::Check,
        FrontEnd::CheckBatch,
        FrontEnd::ExtAuthz,
        FrontEnd::HttpAuth,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FrontEnd::Check => "check",
            FrontEnd::CheckBatch => "check_batch",
            FrontEnd::ExtAuthz => "ext_authz",
            FrontEnd::HttpAuth => "http_auth",
        }
    }
}

/// Every reason a decision can carry: the domain's (as the gRPC API names them) and the proxy
/// front ends' own (a request that cannot be judged, no route, no credential). The index into
/// this table is what the counters are indexed by; the snake-case name is the one the proxy path
/// gives its denials.
pub(crate) const REASONS: [(&str, &str); 25] = [
    ("allowed", "ALLOWED"),
    ("malformed_key", "MALFORMED_KEY"),
    ("unknown_key", "UNKNOWN_KEY"),
    ("wrong_secret", "WRONG_SECRET"),
    ("key_inactive", "KEY_INACTIVE"),
    ("key_expired", "KEY_EXPIRED"),
    ("team_inactive", "TEAM_INACTIVE"),
    ("user_inactive", "USER_INACTIVE"),
    ("unknown_entitlement", "UNKNOWN_ENTITLEMENT"),
    ("no_grant", "NO_GRANT"),
    ("out_of_scope", "OUT_OF_SCOPE"),
    // Allowed without a check: outside the route map, with --allow-unmatched.
    ("unmatched", "UNMATCHED"),
    ("no_route", "NO_ROUTE"),
    ("missing_credential", "MISSING_CREDENTIAL"),
    ("duplicate_credential", "DUPLICATE_CREDENTIAL"),
    ("malformed_credential", "MALFORMED_CREDENTIAL"),
    ("bad_request", "BAD_REQUEST"),
    ("bad_method", "BAD_METHOD"),
    ("bad_path", "BAD_PATH"),
    ("ambiguous_path", "AMBIGUOUS_PATH"),
    ("bad_context", "BAD_CONTEXT"),
    ("bad_resource", "BAD_RESOURCE"),
    ("missing_resource", "MISSING_RESOURCE"),
    // nginx: a header impersonating rolegate's that nginx cannot remove.
    ("forged_header", "FORGED_HEADER"),
    ("other", "OTHER"),
];
const OTHER: usize = REASONS.len() - 1;

/// The index in [`REASONS`] of a reason by its snake-case name (`OTHER` when unknown).
pub(crate) fn reason_index(name: &str) -> usize {
    REASONS
        .iter()
        .position(|(snake, _)| *snake == name)
        .unwrap_or(OTHER)
}

/// The index in [`REASONS`] of a domain reason (the table lists them in the enum's order).
#[inline]
pub(crate) fn domain_reason_index(reason: crate::domain::Reason) -> usize {
    reason as usize
}

#[cfg(test)]
/// The API name of a reason by its snake-case name (`OTHER` when unknown).
pub(crate) fn api_reason(name: &str) -> &'static str {
    REASONS[reason_index(name)].1
}

const FRONT_ENDS: usize = 4;
const CELLS: usize = FRONT_ENDS * 2 * REASONS.len();
/// Counters are spread over shards, one per thread (round robin), so that two cores counting
/// the same outcome do not pass one cache line back and forth on every check.
const SHARDS: usize = 8;

#[repr(align(128))]
struct Shard([AtomicU64; CELLS]);

impl Default for Shard {
    fn default() -> Self {
        Shard(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn shard_index() -> usize {
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

/// `rolegate_decisions_total{front_end, allowed, reason}`: one atomic per combination.
pub(crate) struct DecisionCounters {
    shards: Box<[Shard]>,
}

impl Default for DecisionCounters {
    fn default() -> Self {
        DecisionCounters {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl DecisionCounters {
    fn cell(front: FrontEnd, allowed: bool, reason: usize) -> usize {
        ((front as usize) * 2 + usize::from(allowed)) * REASONS.len() + reason
    }

    /// Counts one decision; `reason` is an index into [`REASONS`].
    #[inline]
    pub(crate) fn count(&self, front: FrontEnd, allowed: bool, reason: usize) {
        self.shards[shard_index()].0[Self::cell(front, allowed, reason.min(OTHER))]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The total of one combination over every shard.
    pub(crate) fn get(&self, front: FrontEnd, allowed: bool, reason: usize) -> u64 {
        let cell = Self::cell(front, allowed, reason);
        self.shards
            .iter()
            .map(|s| s.0[cell].load(Ordering::Relaxed))
            .sum()
    }
}

/// The HTTP auth endpoint's answers by status (`rolegate_http_auth_requests_total`).
pub(crate) const HTTP_STATUSES: [u16; 6] = [200, 400, 401, 403, 503, 0];

#[derive(Default)]
pub(crate) struct HttpAuthCounters {
    /// By endpoint (0: nginx `/authz`, 1: Envoy `/authz/ext`) and status (as [`HTTP_STATUSES`],
    /// the last for any other).
    counts: [[AtomicU64; HTTP_STATUSES.len()]; 2],
}

impl HttpAuthCounters {
    pub(crate) const ENDPOINTS: [&str; 2] = ["nginx", "envoy"];

    pub(crate) fn count(&self, endpoint: usize, status: u16) {
        let i = HTTP_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(HTTP_STATUSES.len() - 1);
        self.counts[endpoint.min(1)][i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, endpoint: usize, status_index: usize) -> u64 {
        self.counts[endpoint][status_index].load(Ordering::Relaxed)
    }
}

/// What the front ends report to: the decision counters, and the decision log when one is
/// configured. One per server, shared by every front end.
#[derive(Default)]
pub struct Telemetry {
    pub(crate) decisions: DecisionCounters,
    pub(crate) http_auth: HttpAuthCounters,
    pub(crate) log: Option<DecisionLog>,
    /// Spans of requests with a sampled `traceparent` are exported (`--otlp-endpoint`).
    pub(crate) export_spans: bool,
}

impl Telemetry {
    /// Counters only, no decision log.
    pub fn new() -> Self {
        Telemetry::default()
    }

    /// With the decision log `log`.
    pub fn with_log(log: DecisionLog) -> Self {
        Telemetry {
            log: Some(log),
            ..Telemetry::default()
        }
    }

    /// The decision log, when one is configured and wants a decision of this outcome (the
    /// filters: denied only, the sampling of allowed decisions).
    #[inline]
    pub(crate) fn log_for(&self, allowed: bool) -> Option<&DecisionLog> {
        self.log.as_ref().filter(|log| log.wants(allowed))
    }

    /// Exporting the spans of sampled requests (`--otlp-endpoint`).
    #[must_use]
    pub fn exporting_spans(mut self, on: bool) -> Self {
        self.export_spans = on;
        self
    }

    /// Whether a request's trace context is worth reading: for the decision log, for the
    /// exported spans, or for rolegate's own spans at debug level.
    #[inline]
    pub(crate) fn wants_trace(&self) -> bool {
        self.log.is_some() || self.export_spans || tracing::enabled!(tracing::Level::DEBUG)
    }

    /// The span a decision with the trace context `trace` runs in (see [`otlp::decision_span`]).
    #[inline]
    pub(crate) fn span(&self, front: FrontEnd, trace: TraceContext) -> tracing::span::EnteredSpan {
        otlp::decision_span(front, trace, self.export_spans)
    }

    /// Whether a decision log is configured at all (records are then prepared).
    #[inline]
    pub(crate) fn logging(&self) -> bool {
        self.log.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_cover_the_domain_and_unknown_names() {
        use crate::domain::Reason;
        for r in [
            Reason::Allowed,
            Reason::MalformedKey,
            Reason::UnknownKey,
            Reason::WrongSecret,
            Reason::KeyInactive,
            Reason::KeyExpired,
            Reason::TeamInactive,
            Reason::UserInactive,
            Reason::UnknownEntitlement,
            Reason::NoGrant,
            Reason::OutOfScope,
        ] {
            assert_eq!(api_reason(r.as_str()), r.api_name());
            assert_eq!(REASONS[domain_reason_index(r)].1, r.api_name());
        }
        assert_eq!(api_reason("something new"), "OTHER");
    }

    #[test]
    fn counters_sum_over_shards() {
        let c = DecisionCounters::default();
        let threads: Vec<_> = (0..4).map(|_| ()).collect();
        std::thread::scope(|s| {
            for () in threads {
                s.spawn(|| {
                    for _ in 0..100 {
                        c.count(FrontEnd::Check, true, 0);
                    }
                });
            }
        });
        c.count(FrontEnd::HttpAuth, false, 9);
        assert_eq!(c.get(FrontEnd::Check, true, 0), 400);
        assert_eq!(c.get(FrontEnd::HttpAuth, false, 9), 1);
        assert_eq!(c.get(FrontEnd::HttpAuth, true, 9), 0);
    }
}
