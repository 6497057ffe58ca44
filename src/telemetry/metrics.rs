//! The Prometheus collectors of what telemetry counts, for `GET /metrics` (served by the HTTP
//! front end with the state's gauges): each reads its numbers at scrape time, the decision and
//! gRPC counters from their atomics, the process's from `/proc`.

use std::{fmt, sync::Arc};

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

type Result = std::result::Result<(), fmt::Error>;

pub(crate) fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

pub(crate) fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
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

/// Registers the collectors of this module: decisions and the decision log, the gRPC port,
/// the process.
pub(crate) fn register(registry: &mut Registry, telemetry: Arc<Telemetry>, grpc: Arc<GrpcMetrics>) {
    registry.register_collector(Box::new(Grpc(grpc)));
    registry.register_collector(Box::new(Decisions(telemetry)));
    registry.register_collector(Box::new(Process));
}
