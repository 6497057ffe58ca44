//! gRPC health follows readiness, the same rule as `/readyz` ([`Health::not_ready`]): the
//! overall status ("") and `rolegate.v1.Authorizer` are NOT_SERVING until the state is loaded (a
//! follower: until its first snapshot from the hub is applied), while a follower has not heard
//! from its hub for longer than `--max-staleness`, and once shutdown has begun.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    grpc::{AuthorizerService, pb::authorizer_server::AuthorizerServer},
    http::Health,
};

/// The services whose status is reported: the server as a whole, and the Authorizer.
const SERVICES: [&str; 2] = [
    "",
    <AuthorizerServer<AuthorizerService> as NamedService>::NAME,
];

/// Sets every reported service to `ready`.
pub(crate) async fn report(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps the reported status equal to [`Health::is_ready`] until `stop` turns true. It wakes
/// only when readiness can change: the first revision applied, the moment a follower would go
/// stale, and (while stale) the next contact with the hub.
pub(crate) async fn follow_readiness(
    health: Arc<Health>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut revisions = health.state.subscribe_revision();
    // A follower's wake-up on contact with its hub; otherwise one that never fires.
    let contact = health.origin.contact().unwrap_or_default();
    let mut reported = None;
    loop {
        // Registered before readiness is read, so that a contact in between is not missed.
        let contacted = contact.notified();
        tokio::pin!(contacted);
        contacted.as_mut().enable();
        let not_ready = health.not_ready();
        let ready = not_ready.is_none();
        if reported != Some(ready) {
            report(&reporter, ready).await;
            match &not_ready {
                None => tracing::info!("health: SERVING"),
                Some(why) => tracing::warn!(reason = %why, "health: NOT_SERVING"),
            }
            reported = Some(ready);
        }
        let loaded = health.state.is_loaded();
        let stale_at = if ready {
            health.origin.stale_at()
        } else {
            None
        };
        tokio::select! {
            // Never an error: `health` holds the state, which holds the sender.
            _ = revisions.changed(), if !loaded => {}
            () = sleep_until(stale_at), if stale_at.is_some() => {}
            () = &mut contacted, if !ready && loaded => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
