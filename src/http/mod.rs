//! The HTTP front end: liveness (`/healthz`), readiness (`/readyz`), `/status` and `/metrics`;
//! the first two also on a listener of their own for probes (`--probe-listen`).

pub(crate) mod auth;
pub(crate) mod metrics;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Json, Router, extract::State as Extract, http::StatusCode, routing::get};
use serde::Serialize;

use crate::{
    authz::{Authz, RouteStatus},
    origin::{Origin, OriginStatus},
    state::changelog::WatchStatus,
    state::{Counts, State, unix_now},
};

/// What the HTTP endpoints report on.
pub(crate) struct Health {
    pub(crate) state: Arc<State>,
    /// False before the first load and once shutdown has begun.
    pub(crate) serving: AtomicBool,
    /// The origin that serves: its status, and whether it keeps the state fresh enough.
    pub(crate) origin: Arc<dyn Origin>,
    pub(crate) started_unix: i64,
    /// The proxy front ends' route map (None: not served).
    pub(crate) routes: Option<Arc<Authz>>,
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
    origin: OriginStatus,
    watch: WatchStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<RouteStatus>,
}

impl Health {
    /// Serving from now, fed by `origin`.
    pub(crate) fn new(
        state: Arc<State>,
        origin: Arc<dyn Origin>,
        routes: Option<Arc<Authz>>,
    ) -> Self {
        Health {
            state,
            serving: true.into(),
            origin,
            started_unix: unix_now(),
            routes,
        }
    }

    /// Whether this instance should take traffic: what `/readyz` and gRPC health report.
    pub(crate) fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why this instance should not take traffic, if so: shutting down, no state loaded yet (a
    /// follower: no snapshot from its hub applied yet), or a follower whose hub has not been
    /// heard from for longer than `--max-staleness`.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if !self.serving.load(Ordering::Acquire) {
            return Some("shutting down".into());
        }
        self.origin
            .not_ready(self.state.is_loaded(), tokio::time::Instant::now())
    }
}

/// The router of the HTTP port.
pub(crate) fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(health.clone())
        .merge(probe_router(health))
}

/// The router of the probe listener (`--probe-listen`): liveness and readiness only, nothing
/// that tells a caller about the state or decides a request.
pub(crate) fn probe_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(Extract(health): Extract<Arc<Health>>) -> (StatusCode, String) {
    // A follower cut off from its hub stays ready (it answers from its last state) and says how
    // stale that state is, unless --max-staleness bounds how long that may last.
    let detail = health.origin.readiness_note().unwrap_or_default();
    match health.not_ready() {
        None => (StatusCode::OK, format!("ready{detail}\n")),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}{detail}\n"),
        ),
    }
}

async fn status(Extract(health): Extract<Arc<Health>>) -> Json<serde_json::Value> {
    let not_ready = health.not_ready();
    let body = StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        ready: not_ready.is_none(),
        not_ready,
        revision: health.state.revision(),
        started_unix: health.started_unix,
        counts: health.state.counts(),
        origin: health.origin.status(),
        watch: health.state.change_log().status(),
        routes: health.routes.as_ref().map(|a| a.route_status()),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}
