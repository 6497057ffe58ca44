//! `GET /metrics`: the Prometheus text exposition (format 0.0.4) of every collector, encoded by
//! the `prometheus-client` crate: telemetry's (decisions, gRPC, process) and the state's gauges,
//! read at scrape time from what `/status` reads (the state, the origin, the Watch change log).

use std::{fmt, sync::Arc};

use axum::{
    Router,
    extract::State as Extract,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector, encoding::DescriptorEncoder, metrics::MetricType, registry::Registry,
};

use super::Health;
use crate::telemetry::{
    Telemetry,
    grpc::GrpcMetrics,
    metrics::{counter, gauge},
};

type Result = std::result::Result<(), fmt::Error>;

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

/// Every collector of a server.
pub(crate) fn registry(
    health: Arc<Health>,
    telemetry: Arc<Telemetry>,
    grpc: Arc<GrpcMetrics>,
) -> Registry {
    let mut r = Registry::default();
    crate::telemetry::metrics::register(&mut r, telemetry, grpc);
    r.register_collector(Box::new(StateGauges(health)));
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
