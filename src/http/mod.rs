//! The HTTP front end: liveness (`/healthz`), readiness (`/readyz`) and `/status`.

pub mod auth;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{Json, Router, extract::State as Extract, http::StatusCode, routing::get};
use serde::Serialize;

use crate::{
    origin::policy_file::ReloadStatus,
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
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    ready: bool,
    revision: u64,
    started_unix: i64,
    counts: Counts,
    origin: OriginBody,
}

#[derive(Serialize)]
struct OriginBody {
    kind: &'static str,
    #[serde(flatten)]
    reload: ReloadStatus,
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

async fn readyz(Extract(health): Extract<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
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
            kind: health.origin_kind,
            reload,
        },
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}
