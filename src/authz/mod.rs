//! The proxy-facing decision path shared by Envoy's ext_authz (gRPC) and the HTTP auth endpoint
//! (nginx `auth_request`, Envoy `http_service`): an HTTP request (method, path, headers, per-route
//! context) becomes an entitlement and a resource through the route map, is judged by
//! [`State::check`], and comes back as headers for the upstream or a status with the platform's
//! JSON error body. The transports only convert their wire format to and from this module.

mod config;
mod credential;
mod denial;
mod headers;
pub mod path;
mod resource;
mod route_map;
pub mod routes;
mod stages;

use std::sync::{Arc, Mutex, RwLock};

use crate::{
    state::{State, Unanswerable},
    telemetry::{FrontEnd, Telemetry, TraceContext},
};

pub use config::AuthzConfig;
pub(crate) use denial::Denied;
#[cfg(test)]
pub(crate) use headers::Digits;
pub(crate) use headers::{Header, HeaderText, RequestHeaders, RouteContext, impersonates};
use route_map::Installed;
pub(crate) use route_map::{RouteFailure, RouteStatus};
use stages::Trail;

/// The prefix of the headers rolegate sets; a client's own are always removed.
pub(crate) const HEADER_PREFIX: &str = "x-rolegate-";
/// The identity headers rolegate sets on an allowed request (those with a value).
pub(crate) const IDENTITY_HEADERS: [&str; 9] = [
    "x-rolegate-key",
    "x-rolegate-user",
    "x-rolegate-team",
    "x-rolegate-project",
    "x-rolegate-scope",
    "x-rolegate-filter-teams",
    "x-rolegate-filter-owner-keys",
    "x-rolegate-filter-owner-user",
    "x-rolegate-revision",
];
/// The one message of every 401 sent through a proxy, whatever the reason: a caller without a
/// valid key learns nothing about which prefixes exist or what state a key is in. The precise
/// reason is in rolegate's log and in its own gRPC Check answer.
pub(crate) const UNAUTHENTICATED_MESSAGE: &str = "a valid API key is required";

/// A request to decide.
pub struct AuthzRequest<'a, H: ?Sized> {
    pub method: &'a str,
    /// The request target as received: path and query string, not decoded.
    pub path: &'a str,
    pub headers: &'a H,
    /// Per-route settings from the proxy (Envoy `context_extensions`): `entitlement`, and
    /// optionally `team`, `owner_key`, `owner_user` as `path.<p>` / `header.<h>` / `query.<q>`.
    pub context: Option<&'a dyn RouteContext>,
}

/// What to do with the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyDecision {
    Allow(Allowed),
    Deny(Denied),
}

/// An allowed request: headers to set upstream and headers to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// `x-rolegate-*` headers for the upstream, only those with a value (none when passed
    /// unmatched); they replace any the client sent.
    pub(crate) headers: Vec<(&'static str, HeaderText)>,
    /// Headers to remove before the request goes upstream (lower case): the credential
    /// (unless kept) and every header the client sent that reads as an `x-rolegate-*` header
    /// or as the credential header ignoring case and `_`/`-` ([`impersonates`]), except those
    /// set above.
    pub(crate) remove: Vec<String>,
    /// The entitlement checked (empty when passed unmatched).
    pub(crate) entitlement: HeaderText,
}

/// The decision path for proxies: the state, the settings and the route map compiled from the
/// state's route table.
pub struct Authz {
    state: Arc<State>,
    config: AuthzConfig,
    /// Swapped whole when the state's route table changes; readers clone the `Arc` and let go.
    routes: RwLock<Installed>,
    /// Held while a table is compiled, so that one request or task compiles it, not each.
    compiling: Mutex<()>,
    /// The last table that did not compile, for `/status`.
    route_error: Mutex<Option<RouteFailure>>,
    /// Decision counters and the decision log.
    telemetry: Arc<Telemetry>,
}

impl Authz {
    /// A decision path over `state`, with the state's route table (the default map when the
    /// state has none, or when its table does not compile).
    pub fn new(state: Arc<State>, config: AuthzConfig) -> Self {
        let authz = Authz {
            state,
            config,
            routes: RwLock::new(Installed {
                table: routes::default_table(),
                revision: 0,
                default: true,
            }),
            compiling: Mutex::new(()),
            route_error: Mutex::new(None),
            telemetry: Arc::default(),
        };
        authz.refresh_routes();
        authz
    }

    /// Counts decisions into `telemetry` (and logs them, when it has a decision log).
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub(crate) fn config(&self) -> &AuthzConfig {
        &self.config
    }

    /// Decides one request. `Err` when rolegate cannot answer at all (not ready): the transport
    /// reports it as a failure, so the proxy's failure mode decides. Counted as an ext_authz
    /// decision.
    pub fn authorize<H: RequestHeaders + ?Sized>(
        &self,
        req: &AuthzRequest<'_, H>,
    ) -> Result<ProxyDecision, Unanswerable> {
        self.authorize_as(FrontEnd::ExtAuthz, req, None, |_| None)
    }

    /// [`Authz::authorize`] for the front end `front`, counted under its name and logged with
    /// the caller's trace context.
    pub(crate) fn authorize_as<H: RequestHeaders + ?Sized>(
        &self,
        front: FrontEnd,
        req: &AuthzRequest<'_, H>,
        trace: Option<TraceContext>,
        refuse: impl FnOnce(&Allowed) -> Option<Denied>,
    ) -> Result<ProxyDecision, Unanswerable> {
        if !self.state.is_loaded() {
            return Err(Unanswerable::NotReady);
        }
        let telemetry = &*self.telemetry;
        let span = trace.map(|t| telemetry.span(front, t));
        let mut trail = Trail::new(telemetry.logging());
        let decision = match self.decide(req, &mut trail) {
            // The front end's own last word: what it cannot pass on safely is a denial, counted
            // and logged as one.
            Ok(ProxyDecision::Allow(ok)) => match refuse(&ok) {
                Some(denied) => ProxyDecision::Deny(denied),
                None => ProxyDecision::Allow(ok),
            },
            Ok(decision) => decision,
            Err(denied) => ProxyDecision::Deny(denied),
        };
        let (allowed, reason) = match &decision {
            ProxyDecision::Allow(a) if a.entitlement.is_empty() => {
                (true, crate::telemetry::reason_index("unmatched"))
            }
            ProxyDecision::Allow(_) => (true, 0),
            ProxyDecision::Deny(d) => (false, crate::telemetry::reason_index(d.reason)),
        };
        telemetry.decisions.count(front, allowed, reason);
        if let Some(span) = &span {
            crate::telemetry::otlp::record_outcome(
                span,
                allowed,
                crate::telemetry::REASONS[reason].1,
            );
        }
        if let Some(log) = telemetry.log_for(allowed) {
            log.send(trail.record(self, front, req, allowed, reason, trace));
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests;
