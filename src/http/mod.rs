//! The HTTP front end: liveness (`/healthz`), readiness (`/readyz`) and `/status`; the first two
//! also on a listener of their own for probes (`--probe-listen`).

pub mod auth;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{Json, Router, extract::State as Extract, http::StatusCode, routing::get};
use serde::Serialize;

use crate::{
    authz::{Authz, RouteStatus},
    origin::{
        policy_file::ReloadStatus,
        upstream::{FollowerView, UpstreamStatus, unix_now_ms},
    },
    state::changelog::WatchStatus,
    state::{Counts, State},
};

/// What the HTTP endpoints report on.
pub struct Health {
    pub state: Arc<State>,
    /// False before the first load and once shutdown has begun.
    pub serving: AtomicBool,
    pub origin: Arc<Mutex<ReloadStatus>>,
    pub started_unix: i64,
    /// Which origin serves: `policy_file` or `embedded`.
    pub origin_kind: &'static str,
    /// Follow mode: the connection to the hub and the bound on its silence (None: not a
    /// follower).
    pub upstream: Option<FollowerView>,
    /// The proxy front ends' route map (None: not served).
    pub routes: Option<Arc<Authz>>,
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    ready: bool,
    /// Why not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    not_ready: Option<String>,
    revision: u64,
    started_unix: i64,
    counts: Counts,
    origin: OriginBody,
    watch: WatchStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<RouteStatus>,
}

#[derive(Serialize)]
struct OriginBody {
    kind: &'static str,
    #[serde(flatten)]
    reload: ReloadStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamBody>,
}

#[derive(Serialize)]
struct UpstreamBody {
    #[serde(flatten)]
    status: UpstreamStatus,
    /// `--max-staleness` in milliseconds (absent: no bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    max_staleness_ms: Option<u64>,
    /// Not serving because the hub has not been heard from within `max_staleness_ms`.
    stale: bool,
}

impl Health {
    /// Whether this instance should take traffic: what `/readyz` and gRPC health report.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why this instance should not take traffic, if so: shutting down, no state loaded yet (a
    /// follower: no snapshot from its hub applied yet), or a follower whose hub has not been
    /// heard from for longer than `--max-staleness`.
    pub fn not_ready(&self) -> Option<String> {
        if !self.serving.load(Ordering::Acquire) {
            return Some("shutting down".into());
        }
        if !self.state.is_loaded() {
            return Some(match &self.upstream {
                Some(up) => {
                    let s = up.status();
                    let error = s
                        .last_error
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default();
                    format!("no snapshot from the hub {} applied yet{error}", s.hub)
                }
                None => "the state is not loaded yet".into(),
            });
        }
        self.upstream
            .as_ref()?
            .stale_reason(tokio::time::Instant::now())
    }
}

/// The router of the HTTP port.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(health.clone())
        .merge(probe_router(health))
}

/// The router of the probe listener (`--probe-listen`): liveness and readiness only, nothing
/// that tells a caller about the state or decides a request.
pub fn probe_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(Extract(health): Extract<Arc<Health>>) -> (StatusCode, String) {
    // A follower cut off from its hub stays ready (it answers from its last state) and says how
    // stale that state is, unless --max-staleness bounds how long that may last.
    let detail = health.upstream_detail().unwrap_or_default();
    match health.not_ready() {
        None => (StatusCode::OK, format!("ready{detail}\n")),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}{detail}\n"),
        ),
    }
}

impl Health {
    fn upstream(&self) -> Option<UpstreamStatus> {
        Some(self.upstream.as_ref()?.status().at(unix_now_ms()))
    }

    fn upstream_detail(&self) -> Option<String> {
        let s = self.upstream()?;
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
        Some(match s.staleness_ms {
            Some(ms) => format!(
                " (upstream {}: {state}{snapshot}, in sync {ms} ms ago)",
                s.hub
            ),
            None => format!(
                " (upstream {}: {state}{snapshot}, never in sync yet)",
                s.hub
            ),
        })
    }
}

async fn status(Extract(health): Extract<Arc<Health>>) -> Json<serde_json::Value> {
    let reload = health
        .origin
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let not_ready = health.not_ready();
    let upstream = health.upstream().map(|status| {
        let view = health.upstream.as_ref();
        UpstreamBody {
            status,
            max_staleness_ms: view
                .and_then(|v| v.max_staleness)
                .map(|d| d.as_millis() as u64),
            stale: view.is_some_and(|v| v.stale_reason(tokio::time::Instant::now()).is_some()),
        }
    });
    let body = StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        ready: not_ready.is_none(),
        not_ready,
        revision: health.state.revision(),
        started_unix: health.started_unix,
        counts: health.state.counts(),
        origin: OriginBody {
            kind: if health.upstream.is_some() {
                "upstream"
            } else {
                health.origin_kind
            },
            reload,
            upstream,
        },
        watch: health.state.change_log().status(),
        routes: health.routes.as_ref().map(|a| a.route_status()),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}
