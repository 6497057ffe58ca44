//! The proxy decision path in stages, in the order a request goes through them: the request
//! line, the route, the credential, the entitlement, the resource, the rule, and the headers for
//! the upstream. Each stage hands its result to the next or ends the request with a denial.

use std::{sync::Arc, time::Instant};

use compact_str::CompactString;

use crate::{
    domain::{
        KeyEntry, MAX_ID_LEN, ResourceRef, RouteSpec, Scope, ValueSource, decide_presented,
        is_valid_entitlement,
    },
    state::unix_now,
    telemetry::{FrontEnd, TraceContext, decision_log::DecisionRecord},
};

use super::{
    Allowed, Authz, AuthzRequest, ProxyDecision,
    denial::Denied,
    headers::{Digits, HeaderText, RequestHeaders},
    path::{NormalizedPath, normalize_path},
    resource::{describe_source, header_source, parse_source, query_value},
    routes::RouteMatch,
};

impl Authz {
    /// The decision for one request, once rolegate can answer at all.
    pub(super) fn decide<H: RequestHeaders + ?Sized>(
        &self,
        req: &AuthzRequest<'_, H>,
        trail: &mut Trail,
    ) -> Result<ProxyDecision, Denied> {
        check_method(req.method)?;
        let path = normalize_path(req.path).map_err(|e| bad("bad_path", &e.to_string()))?;
        let table = self.routes();
        let target = Target {
            req,
            matched: table.find(req.method, &path.segments),
            path: &path,
        };
        if target.passes_unmatched(self.config.allow_unmatched) {
            // Outside the route map, by configuration: no credential needed, no identity.
            return Ok(ProxyDecision::Allow(Allowed {
                remove: self.removals(req.headers, &[]),
                headers: Vec::new(),
                entitlement: HeaderText::Static(""),
            }));
        }
        // The credential before anything that depends on the route map: a caller without a
        // valid key learns nothing about which routes exist or what they need.
        let revision = self.state.revision();
        let now = unix_now();
        let (key, entry) = self.authenticate(req.headers, now)?;
        if trail.on {
            trail.key_prefix = Some(key.prefix.into());
            trail.requested_by = Some(crate::telemetry::decision_log::requestor_text(
                &entry.requestor.id,
            ));
        }
        let entitlement = target.entitlement()?;
        if trail.on {
            trail.entitlement = entitlement.into();
        }
        if !self.config.exact_upstream_paths {
            target.refuse_resembling()?;
        }
        let mut resource = target.resource()?;
        if resource.team.is_empty() && !resource.owner_key.is_empty() {
            // The data of a key belongs to that key's team: a TEAM grant can then cover it.
            if let Some(owner) = self.state.lookup(&resource.owner_key) {
                resource.team = owner.team.to_string();
            }
        }
        let decision = decide_presented(&entry, key.prefix, entitlement, resource.as_ref(), now);
        if trail.on {
            trail.scope = decision.scope;
            trail.revision = revision;
            trail.resource = Some(resource);
        }
        tracing::debug!(
            key = key.prefix,
            method = req.method,
            entitlement,
            decision = if decision.is_allowed() {
                "allow"
            } else {
                "deny"
            },
            reason = decision.reason.api_name(),
            "ext_authz"
        );
        if !decision.is_allowed() {
            return Err(self.denial(decision.reason, entitlement));
        }
        let headers = identity_headers(&entry, &decision, revision);
        Ok(ProxyDecision::Allow(Allowed {
            remove: self.removals(req.headers, &headers),
            headers,
            entitlement: target.entitlement_text(entitlement),
        }))
    }

    /// The credential (unless kept), and every header the client sent that impersonates one
    /// of rolegate's or the credential header ([`impersonates`](super::impersonates)) and is
    /// not in `set` (those are overwritten): lower case, each once.
    fn removals<H: RequestHeaders + ?Sized>(
        &self,
        headers: &H,
        set: &[(&'static str, HeaderText)],
    ) -> Vec<String> {
        let credential = &self.config.credential_header;
        let mut out = Vec::new();
        if !self.config.keep_credential {
            out.push(credential.clone());
        }
        headers.each_name(&mut |name| {
            let forged = super::impersonates(name, credential)
                && !name.eq_ignore_ascii_case(credential)
                && !set.iter().any(|(k, _)| name.eq_ignore_ascii_case(k))
                && !out.iter().any(|o| name.eq_ignore_ascii_case(o));
            if forged {
                out.push(name.to_ascii_lowercase());
            }
        });
        out
    }
}

/// What the decision log records of a proxied decision beyond its outcome, filled by the stages
/// only when a decision log is configured (`on`).
#[derive(Default)]
pub(crate) struct Trail {
    pub(crate) on: bool,
    started: Option<Instant>,
    key_prefix: Option<CompactString>,
    requested_by: Option<CompactString>,
    entitlement: CompactString,
    resource: Option<Resource>,
    scope: Option<Scope>,
    revision: u64,
}

impl Trail {
    pub(crate) fn new(on: bool) -> Self {
        Trail {
            on,
            started: on.then(Instant::now),
            ..Trail::default()
        }
    }

    /// The decision log record of a decision with this trail.
    pub(crate) fn record<H: RequestHeaders + ?Sized>(
        self,
        authz: &Authz,
        front: FrontEnd,
        req: &AuthzRequest<'_, H>,
        allowed: bool,
        reason: usize,
        trace: Option<TraceContext>,
    ) -> DecisionRecord {
        let mut r = DecisionRecord::new(front);
        r.latency = self.started.map(|s| s.elapsed()).unwrap_or_default();
        r.revision = if self.revision > 0 {
            self.revision
        } else {
            authz.state.revision()
        };
        // A key that was not authenticated: its prefix, read again from the credential (never
        // its secret).
        r.key_prefix = self
            .key_prefix
            .or_else(|| authz.presented_prefix(req.headers));
        r.entitlement = self.entitlement;
        if let Some(res) = self.resource {
            r.team_id = res.team.into();
            r.owner_key_prefix = res.owner_key.into();
            r.owner_user_id = res.owner_user.into();
        }
        // The path without its query string, which may carry anything.
        let path = req.path.split_once('?').map_or(req.path, |(p, _)| p);
        r.route = Some((req.method.into(), path.into()));
        r.allowed = allowed;
        r.scope = self.scope;
        r.reason = crate::telemetry::REASONS[reason].1;
        r.requested_by = self.requested_by;
        r.trace = trace;
        r
    }
}

/// A 400: the request cannot be decided as sent.
fn bad(reason: &'static str, message: &str) -> Denied {
    Denied::new(400, reason, message)
}

/// The request line's method: upper-case letters and `-`, at most 32 bytes.
fn check_method(method: &str) -> Result<(), Denied> {
    let valid = !method.is_empty()
        && method.len() <= 32
        && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(bad(
            "bad_method",
            "the request method is missing or invalid",
        ))
    }
}

/// A request and the route it matched (if any): what the route stage hands on.
struct Target<'a, 't, H: ?Sized> {
    req: &'a AuthzRequest<'a, H>,
    path: &'a NormalizedPath<'a>,
    matched: Option<RouteMatch<'t, 'a>>,
}

impl<'a, H: RequestHeaders + ?Sized> Target<'a, '_, H> {
    /// The proxy's per-route setting `name`.
    fn context(&self, name: &str) -> Option<&'a str> {
        self.req.context.and_then(|c| c.value(name))
    }

    fn spec(&self) -> Option<&RouteSpec> {
        self.matched.as_ref().map(|m| &m.route.spec)
    }

    /// Whether the request is let through unjudged: it matches no route, names no entitlement of
    /// its own, and unmatched requests are allowed by configuration.
    fn passes_unmatched(&self, allow_unmatched: bool) -> bool {
        allow_unmatched && self.matched.is_none() && self.context("entitlement").is_none()
    }

    /// The entitlement the request needs: the proxy's per-route one, else the route's.
    fn entitlement(&self) -> Result<&str, Denied> {
        match (self.context("entitlement"), self.spec()) {
            (Some(e), _) if is_valid_entitlement(e) => Ok(e),
            (Some(_), _) => Err(bad(
                "bad_context",
                "the route's context_extensions name an invalid entitlement",
            )),
            (None, Some(spec)) => Ok(spec.entitlement.as_str()),
            (None, None) => Err(Denied::new(
                403,
                "no_route",
                "no route of rolegate's route map matches this method and path",
            )),
        }
    }

    /// The entitlement as the allowed answer names it: shared with the route map when it is the
    /// route's.
    fn entitlement_text(&self, entitlement: &str) -> HeaderText {
        match (self.context("entitlement"), &self.matched) {
            (None, Some(m)) => HeaderText::Shared(m.route.entitlement().clone()),
            _ => HeaderText::Owned(entitlement.to_owned()),
        }
    }

    /// Refuses a match whose parameter reads like a literal route segment beside it: an
    /// upstream that ignores case or reads a format suffix would serve that route instead.
    fn refuse_resembling(&self) -> Result<(), Denied> {
        match self.matched.as_ref().and_then(|m| m.resembles()) {
            None => Ok(()),
            Some(literal) => Err(bad(
                "ambiguous_path",
                &format!(
                    "a path segment taken as a parameter reads like the route segment \
                     '{literal}' (the same but for case, or with a '.suffix'): an upstream \
                     that ignores case or reads a format suffix would serve that route instead"
                ),
            )),
        }
    }

    /// Where a resource field comes from: the proxy's per-route source wins over the route's.
    fn source(
        &self,
        field: &str,
        from_route: impl Fn(&RouteSpec) -> Option<&ValueSource>,
    ) -> Result<Option<ValueSource>, Denied> {
        match self.context(field) {
            Some(text) => parse_source(text)
                .map(Some)
                .ok_or_else(|| bad("bad_context", "a context_extensions source is invalid")),
            None => Ok(self.spec().and_then(from_route).cloned()),
        }
    }

    /// The team and owners the request touches: every source is read before any value.
    fn resource(&self) -> Result<Resource, Denied> {
        let team = self.source("team", |s| s.team.as_ref())?;
        let owner_key = self.source("owner_key", |s| s.owner_key.as_ref())?;
        let owner_user = self.source("owner_user", |s| s.owner_user.as_ref())?;
        Ok(Resource {
            team: self.value(team)?,
            owner_key: self.value(owner_key)?,
            owner_user: self.value(owner_user)?,
        })
    }

    /// The value a source gives. A source the route names must give one: were an absent or
    /// empty one taken as "no resource", the client would choose to be judged on the
    /// collection instead.
    fn value(&self, src: Option<ValueSource>) -> Result<String, Denied> {
        let Some(src) = src else {
            return Ok(String::new());
        };
        let value = match &src {
            ValueSource::Path(p) => self
                .matched
                .as_ref()
                .and_then(|m| m.route.param(p, &m.params))
                .map(str::to_owned),
            ValueSource::Header(h) => header_source(self.req.headers, h)?.map(str::to_owned),
            ValueSource::Query(q) => query_value(self.path.query, q).map_err(|()| {
                bad(
                    "bad_resource",
                    "a query parameter naming the resource is repeated or badly encoded",
                )
            })?,
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Err(bad(
                "missing_resource",
                &format!(
                    "the route names its resource by the {}, which the request does not carry \
                     or leaves empty",
                    describe_source(&src)
                ),
            ));
        };
        if value.len() > MAX_ID_LEN || value.contains(',') || value.chars().any(char::is_control) {
            return Err(bad(
                "bad_resource",
                "a resource id in the request is too long or has a ',' or control character",
            ));
        }
        Ok(value)
    }
}

/// The resource stage's result; empty strings for what the route does not name.
struct Resource {
    team: String,
    owner_key: String,
    owner_user: String,
}

impl Resource {
    fn as_ref(&self) -> ResourceRef<'_> {
        ResourceRef {
            team_id: &self.team,
            owner_key_prefix: &self.owner_key,
            owner_user_id: &self.owner_user,
        }
    }
}

/// The `x-rolegate-*` headers of an allowed request, only those with a value: an empty value is
/// no header at all (so also no forged one). The names are those of
/// [`IDENTITY_HEADERS`](super::IDENTITY_HEADERS) (unit test
/// `allowed_answers_set_only_identity_headers`).
fn identity_headers(
    entry: &Arc<KeyEntry>,
    decision: &crate::domain::Decision,
    revision: u64,
) -> Vec<(&'static str, HeaderText)> {
    let spec = &entry.spec;
    let shared = |v: Option<&Arc<str>>| v.map_or(HeaderText::Static(""), |v| v.clone().into());
    let candidates = [
        ("x-rolegate-key", HeaderText::Inline(spec.prefix.clone())),
        ("x-rolegate-user", shared(spec.user())),
        ("x-rolegate-team", HeaderText::Shared(entry.team.id.clone())),
        ("x-rolegate-project", shared(spec.project())),
        (
            "x-rolegate-scope",
            HeaderText::Static(decision.scope.map_or("", |s| s.as_str())),
        ),
        (
            "x-rolegate-filter-teams",
            HeaderText::joined(decision.filter_team_ids.iter().flat_map(|f| f.iter())),
        ),
        (
            "x-rolegate-filter-owner-keys",
            HeaderText::joined(
                decision
                    .filter_owner_key_prefixes
                    .iter()
                    .flat_map(|l| l.iter()),
            ),
        ),
        (
            "x-rolegate-filter-owner-user",
            shared(decision.filter_owner_user_id.as_ref()),
        ),
        (
            "x-rolegate-revision",
            HeaderText::Number(Digits::new(revision)),
        ),
    ];
    let mut headers = Vec::with_capacity(candidates.len());
    headers.extend(candidates.into_iter().filter(|(_, v)| !v.is_empty()));
    headers
}
