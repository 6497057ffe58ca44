//! `GET /metrics`: the Prometheus text exposition (format 0.0.4) of every collector, encoded by
//! the `prometheus-client` crate. Each collector reads its numbers at scrape time: the decision
//! and gRPC counters from their atomics, the state's gauges from the state, the origin and the
//! Watch change log, the process's from `/proc`.

use std::{fmt, sync::Arc};

use axum::{
    Router,
    extract::State as Extract,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::{
    FrontEnd, HTTP_STATUSES, HttpAuthCounters, REASONS, Telemetry,
    grpc::{BUCKETS, CODES, GrpcMetrics},
    process::ProcessStats,
};
use crate::http::Health;

type Result = std::result::Result<(), fmt::Error>;

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A counter family: one series per `(labels, value)`.
fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

/// Decisions, the HTTP auth endpoint's answers and the decision log.
#[derive(Debug)]
struct Decisions(Arc<Telemetry>);

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("log", &self.log.is_some())
            .finish()
    }
}

impl Collector for Decisions {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result {
        let t = &self.0;
        let mut series = Vec::new();
        for front in FrontEnd::ALL {
            for allowed in [true, false] {
                for (i, (_, reason)) in REASONS.iter().enumerate() {
                    let v = t.decisions.get(front, allowed, i);
                    // Every front end's allowed series exists from the start (rates work from
                    // the first decision); the others once they happen.
                    if v > 0 || (allowed && i == 0) {
                        let allowed = if allowed { "true" } else { "false" };
                        series.push((
                            [
                                ("front_end", front.as_str()),
                                ("allowed", allowed),
                                ("reason", *reason),
                            ],
                            v,
                        ));
                    }
                }
            }
        }
        counters(
            &mut e,
            "rolegate_decisions",
            "Decisions by front end, outcome and reason.",
            series,
        )?;
        let mut statuses = Vec::new();
        for (endpoint, name) in HttpAuthCounters::ENDPOINTS.iter().enumerate() {
            for (i, status) in HTTP_STATUSES.iter().enumerate() {
                let v = t.http_auth.get(endpoint, i);
                if v > 0 {
                    let status = match status {
                        0 => "other".to_owned(),
                        s => s.to_string(),
                    };
                    statuses.push(([("endpoint", (*name).to_owned()), ("status", status)], v));
                }
            }
        }
        counters(
            &mut e,
            "rolegate_http_auth_requests",
            "Answers of the HTTP auth endpoint by endpoint (nginx: /authz, envoy: /authz/ext) and HTTP status.",
            statuses,
        )?;
        let log = t.log.as_ref().map(|l| &l.stats);
        let load = |f: fn(&super::decision_log::LogStats) -> u64| log.map_or(0, |s| f(s));
        use std::sync::atomic::Ordering::Relaxed;
        counter(
            &mut e,
            "rolegate_decision_log_dropped",
            "Decision log records dropped: the queue was full or the write failed.",
            load(|s| s.dropped.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "rolegate_decision_log_written",
            "Decision log records written.",
            load(|s| s.written.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "rolegate_decision_log_write_errors",
            "Failed writes of the decision log.",
            load(|s| s.write_errors.load(Relaxed)),
        )
    }
}

/// The standard gRPC server metrics.
struct Grpc(Arc<GrpcMetrics>);

impl fmt::Debug for Grpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Grpc")
    }
}

impl Collector for Grpc {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result {
        let m = &self.0;
        let totals: Vec<_> = (0..m.methods.len()).map(|i| m.totals(i)).collect();
        let labels = |i: usize| {
            let info = &m.methods[i];
            [
                ("grpc_service", info.service.as_str()),
                ("grpc_method", info.method.as_str()),
                ("grpc_type", info.kind),
            ]
        };
        // A method's series appear once it has been called.
        let called: Vec<usize> = (0..m.methods.len())
            .filter(|i| totals[*i].started > 0)
            .collect();
        let totals = &totals;
        let called = &called;
        let each = |f: fn(&super::grpc::Totals) -> u64| {
            called
                .iter()
                .map(|i| (labels(*i), f(&totals[*i])))
                .collect::<Vec<_>>()
        };
        counters(
            &mut e,
            "grpc_server_started",
            "RPCs started on the server.",
            each(|t| t.started),
        )?;
        let mut handled = Vec::new();
        for &i in called {
            for (code, name) in CODES.iter().enumerate() {
                let v = totals[i].handled[code];
                if v > 0 {
                    let [s, me, ty] = labels(i);
                    handled.push(([s, me, ty, ("grpc_code", *name)], v));
                }
            }
        }
        counters(
            &mut e,
            "grpc_server_handled",
            "RPCs completed on the server, whatever their code.",
            handled,
        )?;
        counters(
            &mut e,
            "grpc_server_msg_received",
            "Stream messages received on the server (one per unary request).",
            each(|t| t.received),
        )?;
        counters(
            &mut e,
            "grpc_server_msg_sent",
            "Stream messages sent by the server (one per unary answer).",
            each(|t| t.sent),
        )?;
        let mut h = e.encode_descriptor(
            "grpc_server_handling_seconds",
            "How long RPCs took until they completed (a stream: until it ended).",
            None,
            MetricType::Histogram,
        )?;
        for &i in called {
            let t = &totals[i];
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .zip(&t.buckets)
                .map(|(b, c)| (*b, *c))
                .collect();
            let count = t.buckets.iter().sum();
            h.encode_family(&labels(i))?
                .encode_histogram::<NoLabelSet>(t.sum_seconds, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// The state, the origin and Watch, read from what `/status` reads.
struct StateGauges(Arc<Health>);

impl fmt::Debug for StateGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateGauges")
    }
}

impl Collector for StateGauges {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result {
        let h = &self.0;
        let state = &h.state;
        let counts = state.counts();
        gauge(
            &mut e,
            "rolegate_ready",
            "1 when this instance takes traffic (/readyz answers 200).",
            i64::from(h.is_ready()),
        )?;
        gauge(
            &mut e,
            "rolegate_revision",
            "The revision of the state served.",
            state.revision(),
        )?;
        for (name, help, v) in [
            ("rolegate_keys", "API keys in the state.", counts.keys),
            ("rolegate_users", "Users in the state.", counts.users),
            ("rolegate_teams", "Teams in the state.", counts.teams),
            (
                "rolegate_projects",
                "Projects in the state.",
                counts.projects,
            ),
            ("rolegate_roles", "Roles in the state.", counts.roles),
        ] {
            gauge(&mut e, name, help, v as u64)?;
        }
        if let Some(routes) = &h.routes {
            gauge(
                &mut e,
                "rolegate_routes",
                "Routes of the proxy route map in force.",
                routes.route_status().routes as u64,
            )?;
        }
        let origin = h.origin.status();
        let mut info = e.encode_descriptor(
            "rolegate_origin",
            "The origin that serves (always 1).",
            None,
            MetricType::Gauge,
        )?;
        info.encode_family(&[("kind", origin.kind.name())])?
            .encode_gauge(&1i64)?;
        let reload = &origin.reload;
        let last_change = match &origin.upstream {
            Some(up) => up.status.last_event_unix_ms.map(|ms| ms as f64 / 1000.0),
            None => reload.last_reload_unix.map(|s| s as f64),
        };
        if let Some(t) = last_change {
            gauge(
                &mut e,
                "rolegate_last_change_timestamp_seconds",
                "When the origin last loaded or changed the state successfully (a follower: its last event from the hub), Unix seconds.",
                t,
            )?;
        }
        counter(
            &mut e,
            "rolegate_origin_errors",
            "Failed loads of the policy file or commits of the store.",
            reload.failed_reloads,
        )?;
        counter(
            &mut e,
            "rolegate_origin_loads",
            "Successful loads of the policy file or commits of the store.",
            reload.reloads,
        )?;
        if let Some(up) = &origin.upstream {
            let s = &up.status;
            gauge(
                &mut e,
                "rolegate_follower_connected",
                "1 while the follower's Watch of its hub is connected.",
                i64::from(s.connected),
            )?;
            if let Some(ms) = s.staleness_ms {
                gauge(
                    &mut e,
                    "rolegate_follower_staleness_seconds",
                    "How long since the follower was last known to be in sync with its hub.",
                    ms as f64 / 1000.0,
                )?;
            }
            counter(
                &mut e,
                "rolegate_follower_connects",
                "Watch connections the follower made to its hub.",
                s.connects,
            )?;
            counter(
                &mut e,
                "rolegate_follower_resets",
                "Resets the follower received (each followed by a snapshot).",
                s.resets,
            )?;
        }
        if let Some(etcd) = &origin.etcd {
            let s = &etcd.status;
            gauge(
                &mut e,
                "rolegate_etcd_connected",
                "1 while the etcd origin's watch of etcd is connected.",
                i64::from(s.connected),
            )?;
            if let Some(ms) = s.staleness_ms {
                gauge(
                    &mut e,
                    "rolegate_etcd_staleness_seconds",
                    "How long since the etcd origin was last known to be in sync with etcd.",
                    ms as f64 / 1000.0,
                )?;
            }
            counter(
                &mut e,
                "rolegate_etcd_resyncs",
                "Full re-reads of the prefix after etcd compacted the revisions the watch needed.",
                s.resyncs,
            )?;
            counter(
                &mut e,
                "rolegate_etcd_write_retries",
                "Writes that lost the race against another instance and were judged again.",
                s.write_retries,
            )?;
        }
        let w = state.change_log().status();
        gauge(
            &mut e,
            "rolegate_watch_subscribers",
            "Watch streams open now.",
            w.subscribers,
        )?;
        counter(
            &mut e,
            "rolegate_watch_streams_started",
            "Watch streams started.",
            w.streams_started,
        )?;
        counter(
            &mut e,
            "rolegate_watch_events_sent",
            "Watch events sent to subscribers.",
            w.events_sent,
        )?;
        counter(
            &mut e,
            "rolegate_watch_resets",
            "Watch streams reset at their start (the revision asked for is no longer kept, or of another history).",
            w.start_resets,
        )?;
        counter(
            &mut e,
            "rolegate_watch_slow_disconnects",
            "Watch streams ended because their subscriber fell behind the change log.",
            w.slow_resets,
        )?;
        counter(
            &mut e,
            "rolegate_watch_refused",
            "Watch streams refused because --watch-max-subscribers were open.",
            w.refused_busy,
        )?;
        gauge(
            &mut e,
            "rolegate_watch_log_revisions",
            "Revisions kept in the Watch change log.",
            w.kept_revisions as u64,
        )?;
        gauge(
            &mut e,
            "rolegate_watch_log_bytes",
            "Bytes (estimated) kept in the Watch change log.",
            w.kept_bytes as u64,
        )?;
        let mut build = e.encode_descriptor(
            "rolegate_build_info",
            "The running version (always 1).",
            None,
            MetricType::Gauge,
        )?;
        build
            .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1i64)
    }
}

/// `process_*`.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result {
        let p = ProcessStats::read();
        if let Some(v) = p.cpu_seconds {
            e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
        ] {
            if let Some(v) = v {
                gauge(&mut e, name, help, v)?;
            }
        }
        if let Some(v) = p.start_time_seconds {
            gauge(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                v,
            )?;
        }
        Ok(())
    }
}

/// Every collector of a server.
pub(crate) fn registry(
    health: Arc<Health>,
    telemetry: Arc<Telemetry>,
    grpc: Arc<GrpcMetrics>,
) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Grpc(grpc)));
    r.register_collector(Box::new(Decisions(telemetry)));
    r.register_collector(Box::new(StateGauges(health)));
    r.register_collector(Box::new(Process));
    r
}

/// The `/metrics` route, to merge into the HTTP port's router.
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(registry)
}

async fn scrape(Extract(registry): Extract<Arc<Registry>>) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    res
}
