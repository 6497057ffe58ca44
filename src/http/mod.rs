//! The HTTP front end: liveness (`/healthz`), readiness (`/readyz`) and `/status`.

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
        upstream::{UpstreamStatus, unix_now_ms},
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
    /// Follow mode: the connection to the hub (None: the origin is the policy file).
    pub upstream: Option<Arc<Mutex<UpstreamStatus>>>,
    /// The proxy front ends' route map (None: not served).
    pub routes: Option<Arc<Authz>>,
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    ready: bool,
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
    upstream: Option<UpstreamStatus>,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire) && self.state.is_loaded()
    }
}

/// The router of the HTTP port.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(health)
}

async fn readyz(Extract(health): Extract<Arc<Health>>) -> (StatusCode, String) {
    // A follower cut off from its hub stays ready (it answers from its last state) and says how
    // stale that state is.
    let detail = health.upstream_detail().unwrap_or_default();
    if health.is_ready() {
        (StatusCode::OK, format!("ready{detail}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready{detail}\n"),
        )
    }
}

impl Health {
    fn upstream(&self) -> Option<UpstreamStatus> {
        let status = self.upstream.as_ref()?;
        let status = status.lock().unwrap_or_else(|p| p.into_inner());
        Some(status.at(unix_now_ms()))
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
    let body = StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        ready: health.is_ready(),
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
            upstream: health.upstream(),
        },
        watch: health.state.change_log().status(),
        routes: health.routes.as_ref().map(|a| a.route_status()),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}
