//! `rolegate.v1.Authorizer`: Check and CheckBatch over the in-memory state.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    grpc::{
        convert,
        pb::{self, authorizer_server::Authorizer},
        status::InvalidRequest,
    },
    state::{CheckedDecision, State, Unanswerable, unix_now},
    telemetry::{FrontEnd, Telemetry, TraceContext, decision_log::DecisionRecord},
};

/// Limits of the service, from the server's flags.
#[derive(Clone, Debug)]
pub struct AuthorizerLimits {
    /// The most checks one CheckBatch may hold.
    pub(crate) max_batch: usize,
    /// The longest a check waits for its `min_revision` when the call sets no deadline.
    pub(crate) max_revision_wait: Duration,
}

impl Default for AuthorizerLimits {
    fn default() -> Self {
        AuthorizerLimits {
            max_batch: 1000,
            max_revision_wait: Duration::from_secs(5),
        }
    }
}

/// The Authorizer service.
#[derive(Clone)]
pub struct AuthorizerService {
    state: Arc<State>,
    limits: AuthorizerLimits,
    telemetry: Arc<Telemetry>,
}

impl AuthorizerService {
    pub fn new(state: Arc<State>, limits: AuthorizerLimits) -> Self {
        AuthorizerService {
            state,
            limits,
            telemetry: Arc::default(),
        }
    }

    /// Counts decisions into `telemetry` (and logs them, when it has a decision log).
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Fails when no state is loaded; waits for `min_revision`, bounded by the call's deadline
    /// (`grpc-timeout`) and the server's cap.
    async fn ready_at(&self, min_revision: u64, metadata: &MetadataMap) -> Result<(), Status> {
        if !self.state.is_loaded() {
            return Err(Unanswerable::NotReady.into());
        }
        if min_revision <= self.state.revision() {
            return Ok(());
        }
        // Give up a little before the caller's deadline, so that the caller gets the status
        // naming the revision rather than its own timeout.
        let wait = grpc_timeout(metadata).map_or(self.limits.max_revision_wait, |t| {
            (t - t / 10).min(self.limits.max_revision_wait)
        });
        match self.state.wait_for_revision(min_revision, wait).await {
            Ok(_) => Ok(()),
            Err(have) => Err(Unanswerable::Lagging {
                wanted: min_revision,
                have,
            }
            .into()),
        }
    }

    fn check_one(
        &self,
        req: &pb::CheckRequest,
        default_key: &str,
        front: FrontEnd,
        trace: Option<TraceContext>,
    ) -> Result<pb::CheckResponse, InvalidRequest> {
        let resource = convert::resource(req)?;
        let key = if req.api_key.is_empty() {
            default_key
        } else {
            &req.api_key
        };
        let started = self.telemetry.logging().then(Instant::now);
        let outcome = self
            .state
            .check(key, &req.entitlement, resource, unix_now());
        let allowed = outcome.decision.is_allowed();
        self.telemetry.decisions.count(
            front,
            allowed,
            crate::telemetry::domain_reason_index(outcome.decision.reason),
        );
        if let Some(log) = self.telemetry.log_for(allowed) {
            log.send(record(front, key, req, &outcome, started, trace));
        }
        let principal = outcome.entry.as_ref().map(|e| &*e.spec.prefix);
        tracing::debug!(
            key = principal.unwrap_or("-"),
            entitlement = %req.entitlement,
            decision = if outcome.decision.is_allowed() { "allow" } else { "deny" },
            reason = outcome.decision.reason.api_name(),
            "check"
        );
        Ok(pb::CheckResponse::from(&outcome))
    }
}

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    type WatchStream = crate::grpc::watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        crate::grpc::watch::start(self.state.clone(), &metadata, request).map(Response::new)
    }

    type WatchBatchedStream = crate::grpc::watch::BatchedStream;

    async fn watch_batched(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchBatchedStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        crate::grpc::watch::start(self.state.clone(), &metadata, request)
            .map(|stream| Response::new(stream.batched()))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        self.ready_at(request.get_ref().min_revision, request.metadata())
            .await?;
        let trace = self
            .telemetry
            .wants_trace()
            .then(|| traceparent(request.metadata()))
            .flatten();
        let span = trace.map(|t| self.telemetry.span(FrontEnd::Check, t));
        let response = self.check_one(request.get_ref(), "", FrontEnd::Check, trace)?;
        if let Some(span) = &span {
            let reason = response.reason().as_str_name();
            let reason = reason.strip_prefix("REASON_").unwrap_or(reason);
            crate::telemetry::otlp::record_outcome(span, response.allowed, reason);
        }
        Ok(Response::new(response))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let batch = request.get_ref();
        if batch.checks.len() > self.limits.max_batch {
            return Err(InvalidRequest::BatchTooLarge {
                max: self.limits.max_batch,
                given: batch.checks.len(),
            }
            .into());
        }
        let min = batch
            .checks
            .iter()
            .map(|c| c.min_revision)
            .fold(batch.min_revision, u64::max);
        self.ready_at(min, request.metadata()).await?;
        let trace = self
            .telemetry
            .wants_trace()
            .then(|| traceparent(request.metadata()))
            .flatten();
        let _span = trace.map(|t| self.telemetry.span(FrontEnd::CheckBatch, t));
        let revision = self.state.revision();
        let results = batch
            .checks
            .iter()
            .enumerate()
            .map(|(index, check)| {
                self.check_one(check, &batch.api_key, FrontEnd::CheckBatch, trace)
                    .map_err(|e| InvalidRequest::InBatch {
                        index,
                        source: Box::new(e),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::CheckBatchResponse { results, revision }))
    }
}

/// The W3C trace context of a call (its `traceparent` metadata), when valid.
pub(crate) fn traceparent(metadata: &MetadataMap) -> Option<TraceContext> {
    TraceContext::parse(metadata.get("traceparent")?.to_str().ok()?)
}

/// The decision log record of one check: the key only by its prefix.
fn record(
    front: FrontEnd,
    key: &str,
    req: &pb::CheckRequest,
    outcome: &CheckedDecision,
    started: Option<Instant>,
    trace: Option<TraceContext>,
) -> DecisionRecord {
    let mut r = DecisionRecord::new(front);
    r.latency = started.map(|s| s.elapsed()).unwrap_or_default();
    r.revision = outcome.revision;
    r.key_prefix = match &outcome.entry {
        Some(e) => Some(e.spec.prefix.clone()),
        None => crate::domain::ApiKey::parse(key)
            .ok()
            .map(|k| k.prefix.into()),
    };
    r.requested_by = outcome
        .entry
        .as_ref()
        .map(|e| crate::telemetry::decision_log::requestor_text(&e.requestor.id));
    r.entitlement = req.entitlement.as_str().into();
    if let Some(res) = &req.resource {
        r.team_id = res.team_id.as_str().into();
        r.owner_key_prefix = res.owner_key_prefix.as_str().into();
        r.owner_user_id = res.owner_user_id.as_str().into();
    }
    r.allowed = outcome.decision.is_allowed();
    r.scope = outcome.decision.scope;
    r.reason = outcome.decision.reason.api_name();
    r.trace = trace;
    r
}

/// The call's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
