//! The proxy-facing decision path shared by Envoy's ext_authz (gRPC) and the HTTP auth endpoint
//! (nginx `auth_request`, Envoy `http_service`): an HTTP request (method, path, headers, per-route
//! context) becomes an entitlement and a resource through the route map, is judged by
//! [`State::check`], and comes back as headers for the upstream or a status with the platform's
//! JSON error body. The transports only convert their wire format to and from this module.

pub mod routes;

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{Arc, Mutex, RwLock},
};

use compact_str::CompactString;

use crate::{
    domain::{
        ApiKey, KeyEntry, Reason, ResourceRef, RouteSpec, Scope, ValueSource, authenticate,
        decide_presented,
    },
    origin::policy_file::is_valid_entitlement,
    state::{State, Unanswerable, unix_now},
};
use routes::{RouteError, RouteTable, normalize_path};

/// The longest value accepted for a resource id taken from a request.
pub const MAX_ID_LEN: usize = 256;
/// The prefix of the headers rolegate sets; a client's own are always removed.
pub const HEADER_PREFIX: &str = "x-rolegate-";
/// The identity headers rolegate sets on an allowed request (those with a value).
pub const IDENTITY_HEADERS: [&str; 8] = [
    "x-rolegate-key",
    "x-rolegate-user",
    "x-rolegate-team",
    "x-rolegate-project",
    "x-rolegate-scope",
    "x-rolegate-filter-teams",
    "x-rolegate-filter-owner-keys",
    "x-rolegate-revision",
];
/// The one message of every 401 sent through a proxy, whatever the reason: a caller without a
/// valid key learns nothing about which prefixes exist or what state a key is in. The precise
/// reason is in rolegate's log and in its own gRPC Check answer.
pub const UNAUTHENTICATED_MESSAGE: &str = "a valid API key is required";

/// How proxied requests carry their credential and what happens around the decision
/// (`rolegate serve` flags for Envoy ext_authz and the HTTP auth endpoint).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct AuthzConfig {
    /// The request header that carries the credential (ext_authz and the auth endpoint).
    #[arg(
        long = "authz-header",
        env = "ROLEGATE_AUTHZ_HEADER",
        default_value = "authorization",
        value_parser = lower_case_header
    )]
    pub credential_header: String,
    /// The scheme before the key in that header, compared case-insensitively.
    #[arg(
        long = "authz-scheme",
        env = "ROLEGATE_AUTHZ_SCHEME",
        default_value = "ApiKey"
    )]
    pub scheme: String,
    /// Keep the credential header on allowed requests (by default it is removed before the
    /// request goes upstream).
    #[arg(long = "authz-keep-credential", env = "ROLEGATE_AUTHZ_KEEP_CREDENTIAL")]
    pub keep_credential: bool,
    /// Let requests that no route matches through, without identity headers (by default they
    /// are denied with 403).
    #[arg(long = "authz-allow-unmatched", env = "ROLEGATE_AUTHZ_ALLOW_UNMATCHED")]
    pub allow_unmatched: bool,
    /// The upstream routes paths exactly as the route map does (case-sensitive, no `.json`
    /// format suffix): accept a parameter whose value reads like a literal route segment beside
    /// it (`/api/jobs/STATISTICS`, `/api/jobs/statistics.json` as `/api/jobs/{id}`), which is
    /// refused (400) by default.
    #[arg(long = "exact-upstream-paths", env = "ROLEGATE_EXACT_UPSTREAM_PATHS")]
    pub exact_upstream_paths: bool,
}

fn lower_case_header(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("{name:?} is not a header name ([A-Za-z0-9-]+)"));
    }
    Ok(name.to_ascii_lowercase())
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            credential_header: "authorization".into(),
            scheme: "ApiKey".into(),
            keep_credential: false,
            allow_unmatched: false,
            exact_upstream_paths: false,
        }
    }
}

/// One header of the request, as the transport sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header<'a> {
    Absent,
    One(&'a str),
    /// Sent more than once.
    Many,
    /// Not visible ASCII/UTF-8 text.
    NotText,
}

/// The request's headers, whatever the transport.
pub trait RequestHeaders {
    /// The header `name` (lower-case), its name compared case-insensitively.
    fn header(&self, name: &str) -> Header<'_>;
    /// Calls `each` with the name of every header the request carries, as received (a repeated
    /// header may come more than once).
    fn each_name(&self, each: &mut dyn FnMut(&str));
}

/// `name` read as a CGI/WSGI-style server reads it: ASCII lower case, `_` as `-`.
fn fold_header_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether a header `name` is `target` (lower case) once read case-insensitively with `_` as
/// `-` (`X_Rolegate_User` is `x-rolegate-user`).
pub fn header_reads_as(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| fold_header_byte(a) == fold_header_byte(b))
}

/// Whether a header `name`, read case-insensitively with `_` as `-`, is one of rolegate's
/// `x-rolegate-*` headers or `credential` (lower case): a client must never get such a header
/// to the upstream, where a server that folds names this way would take it for rolegate's.
pub fn impersonates(name: &str, credential: &str) -> bool {
    let prefix = name.get(..HEADER_PREFIX.len()).unwrap_or_default();
    header_reads_as(prefix, HEADER_PREFIX) || header_reads_as(name, credential)
}

/// Per-route settings from the proxy (Envoy's `context_extensions`), by name.
pub trait RouteContext {
    /// The setting `name`, if the proxy sent it.
    fn value(&self, name: &str) -> Option<&str>;
}

impl RouteContext for HashMap<String, String> {
    fn value(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// A request to judge.
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
pub enum Verdict {
    Allow(Allowed),
    Deny(Denied),
}

/// An allowed request: headers to set upstream and headers to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// `x-rolegate-*` headers for the upstream, only those with a value (none when passed
    /// unmatched); they replace any the client sent.
    pub headers: Vec<(&'static str, HeaderText)>,
    /// Headers to remove before the request goes upstream (lower case): the credential
    /// (unless kept) and every header the client sent that reads as an `x-rolegate-*` header
    /// or as the credential header ignoring case and `_`/`-` ([`impersonates`]), except those
    /// set above.
    pub remove: Vec<String>,
    /// The entitlement checked (empty when passed unmatched).
    pub entitlement: HeaderText,
}

/// The value of a header rolegate sets. Most values are already in the cache entry or the
/// route map as `Arc<str>`: sharing them, rather than copying each into a new `String`, keeps
/// an allowed answer down to a few allocations (ext_authz answers every request of the mesh).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderText {
    Static(&'static str),
    Shared(Arc<str>),
    /// A key prefix, held inline as the state holds it.
    Inline(CompactString),
    Owned(String),
    /// A number, written in place (the revision).
    Number(Digits),
}

impl HeaderText {
    pub fn as_str(&self) -> &str {
        match self {
            HeaderText::Static(s) => s,
            HeaderText::Shared(s) => s,
            HeaderText::Inline(s) => s,
            HeaderText::Owned(s) => s,
            HeaderText::Number(d) => d.as_str(),
        }
    }

    /// The items joined with `,`: shared when there is only one, as is usual.
    fn joined<'i, T>(mut items: impl Iterator<Item = &'i T>) -> HeaderText
    where
        T: Clone + Deref<Target = str> + Into<HeaderText> + 'i,
    {
        let Some(first) = items.next() else {
            return HeaderText::Static("");
        };
        let Some(second) = items.next() else {
            return first.clone().into();
        };
        let mut out = String::with_capacity(4 * (first.len() + 1));
        out.push_str(first);
        for item in std::iter::once(second).chain(items) {
            out.push(',');
            out.push_str(item);
        }
        HeaderText::Owned(out)
    }
}

impl Deref for HeaderText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for HeaderText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HeaderText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A `u64` in decimal, without a heap allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digits {
    buf: [u8; 20],
    start: u8,
}

impl Digits {
    pub fn new(mut n: u64) -> Self {
        let mut buf = [b'0'; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits {
            buf,
            start: start as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written, so this never fails.
        std::str::from_utf8(&self.buf[usize::from(self.start)..]).unwrap_or("0")
    }
}

/// A denied request: the HTTP answer for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    /// `www-authenticate` value for 401s.
    pub www_authenticate: Option<String>,
    /// The platform's error body: `{"statusCode", "status", "message"}`.
    pub body: String,
    /// Why, for logs and metrics.
    pub reason: &'static str,
}

impl From<Arc<str>> for HeaderText {
    fn from(s: Arc<str>) -> Self {
        HeaderText::Shared(s)
    }
}

impl From<CompactString> for HeaderText {
    fn from(s: CompactString) -> Self {
        HeaderText::Inline(s)
    }
}

impl Denied {
    /// A request that cannot be judged as sent (HTTP 400).
    pub fn bad_request(message: &str) -> Self {
        Denied::new(400, "bad_request", message)
    }

    fn new(status: u16, reason: &'static str, message: &str) -> Self {
        let text = match status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "Error",
        };
        Denied {
            status,
            www_authenticate: None,
            body: error_body(status, text, message),
            reason,
        }
    }
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
}

/// The compiled map in force and the revision of the state's table it stands for.
struct Installed {
    table: Arc<RouteTable>,
    /// [`State::routes_revision`] when it was installed: a table that failed to compile still
    /// moves this on (the previous map stays), so it is not compiled again on every request.
    revision: u64,
    /// Whether the map is the built-in default.
    default: bool,
}

/// A route table of the state that did not compile.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteFailure {
    pub revision: u64,
    pub error: String,
    pub at_unix: i64,
}

/// What `/status` shows of the route map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteStatus {
    /// `default` (the built-in table) or `state` (the origin's table).
    pub table: &'static str,
    pub routes: usize,
    /// The revision of the state's table the map in force was compiled from.
    pub revision: u64,
    /// The last table of the state that did not compile (the previous map kept serving).
    pub last_error: Option<RouteFailure>,
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
        };
        authz.refresh_routes();
        authz
    }

    pub fn config(&self) -> &AuthzConfig {
        &self.config
    }

    /// Installs a table given directly (`None`: the default map), in place of the state's until
    /// the state's table next changes (tests, benchmarks). On error the map in force stays.
    pub fn set_routes(&self, specs: Option<&[RouteSpec]>) -> Result<usize, RouteError> {
        let table = match specs {
            Some(specs) => Arc::new(RouteTable::compile(specs)?),
            None => routes::default_table(),
        };
        let n = table.len();
        let revision = self.state.routes_revision();
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Installed {
            table,
            revision,
            default: specs.is_none(),
        };
        Ok(n)
    }

    /// The route map in force: the one compiled from the state's current table. Checking that it
    /// is current costs one atomic load; only the first request after the table changed (unless
    /// [`Authz::follow_routes`] was quicker) compiles the new one.
    pub fn routes(&self) -> Arc<RouteTable> {
        let want = self.state.routes_revision();
        {
            let installed = self.routes.read().unwrap_or_else(|p| p.into_inner());
            if installed.revision == want {
                return installed.table.clone();
            }
        }
        self.refresh_routes()
    }

    /// Compiles the state's table when the map in force is not compiled from it. A table that
    /// does not compile leaves the map in force and is reported on `/status`.
    fn refresh_routes(&self) -> Arc<RouteTable> {
        let _one = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let active = self.state.routes();
        {
            let installed = self.routes.read().unwrap_or_else(|p| p.into_inner());
            if installed.revision == active.revision {
                return installed.table.clone();
            }
        }
        let compiled = match &active.specs {
            Some(specs) => RouteTable::compile(specs).map(Arc::new),
            None => Ok(routes::default_table()),
        };
        let mut installed = self.routes.write().unwrap_or_else(|p| p.into_inner());
        installed.revision = active.revision;
        match compiled {
            Ok(table) => {
                tracing::info!(
                    routes = table.len(),
                    table = if active.specs.is_some() {
                        "state"
                    } else {
                        "default"
                    },
                    revision = active.revision,
                    "route map installed"
                );
                installed.table = table;
                installed.default = active.specs.is_none();
                *self.route_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    revision = active.revision,
                    "the state's route table does not compile; the route map in force stays"
                );
                *self.route_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(RouteFailure {
                    revision: active.revision,
                    error: err.to_string(),
                    at_unix: unix_now(),
                });
            }
        }
        installed.table.clone()
    }

    /// Compiles each new route table of the state as soon as it is applied, until `stop` is
    /// raised, so that requests seldom find a table to compile.
    pub async fn follow_routes(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tables = self.state.subscribe_routes();
        loop {
            drop(tables.borrow_and_update());
            self.refresh_routes();
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The route map in force, for `/status`.
    pub fn route_status(&self) -> RouteStatus {
        let (table, routes, revision) = {
            let installed = self.routes.read().unwrap_or_else(|p| p.into_inner());
            let kind = if installed.default {
                "default"
            } else {
                "state"
            };
            (kind, installed.table.len(), installed.revision)
        };
        RouteStatus {
            table,
            routes,
            revision,
            last_error: self
                .route_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Judges one request. `Err` when rolegate cannot answer at all (not ready): the transport
    /// reports it as a failure, so the proxy's failure mode decides.
    pub fn authorize<H: RequestHeaders + ?Sized>(
        &self,
        req: &AuthzRequest<'_, H>,
    ) -> Result<Verdict, Unanswerable> {
        if !self.state.is_loaded() {
            return Err(Unanswerable::NotReady);
        }
        Ok(self.judge(req).unwrap_or_else(Verdict::Deny))
    }

    fn judge<H: RequestHeaders + ?Sized>(
        &self,
        req: &AuthzRequest<'_, H>,
    ) -> Result<Verdict, Denied> {
        let bad = |reason, message: &str| Denied::new(400, reason, message);
        let method = req.method;
        if method.is_empty()
            || method.len() > 32
            || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
        {
            return Err(bad(
                "bad_method",
                "the request method is missing or invalid",
            ));
        }
        let path = normalize_path(req.path).map_err(|e| bad("bad_path", &e.to_string()))?;
        let table = self.routes();
        let matched = table.find(method, &path.segments);
        let context = |name: &str| req.context.and_then(|c| c.value(name));
        if matched.is_none() && context("entitlement").is_none() && self.config.allow_unmatched {
            // Outside the route map, by configuration: no credential needed, no identity.
            return Ok(Verdict::Allow(Allowed {
                headers: Vec::new(),
                remove: self.removals(req.headers, &[]),
                entitlement: HeaderText::Static(""),
            }));
        }

        // The credential before anything that depends on the route map: a caller without a
        // valid key learns nothing about which routes exist or what they need.
        let revision = self.state.revision();
        let now = unix_now();
        let (key, entry) = self.authenticate(req.headers, now)?;

        let entitlement = match (context("entitlement"), &matched) {
            (Some(e), _) if is_valid_entitlement(e) => e,
            (Some(_), _) => {
                return Err(bad(
                    "bad_context",
                    "the route's context_extensions name an invalid entitlement",
                ));
            }
            (None, Some(m)) => m.route.spec.entitlement.as_str(),
            (None, None) => {
                return Err(Denied::new(
                    403,
                    "no_route",
                    "no route of rolegate's route map matches this method and path",
                ));
            }
        };
        if let Some(literal) = matched.as_ref().and_then(|m| m.resembles())
            && !self.config.exact_upstream_paths
        {
            return Err(bad(
                "ambiguous_path",
                &format!(
                    "a path segment taken as a parameter reads like the route segment \
                     '{literal}' (the same but for case, or with a '.suffix'): an upstream \
                     that ignores case or reads a format suffix would serve that route instead"
                ),
            ));
        }

        // Where the resource's team and owner come from: the context's sources win.
        let source = |field: &str, from_route: Option<&ValueSource>| -> Result<_, Denied> {
            match context(field) {
                Some(text) => parse_source(text)
                    .map(Some)
                    .ok_or_else(|| bad("bad_context", "a context_extensions source is invalid")),
                None => Ok(from_route.cloned()),
            }
        };
        let spec = matched.as_ref().map(|m| &m.route.spec);
        let team_src = source("team", spec.and_then(|s| s.team.as_ref()))?;
        let key_src = source("owner_key", spec.and_then(|s| s.owner_key.as_ref()))?;
        let user_src = source("owner_user", spec.and_then(|s| s.owner_user.as_ref()))?;
        // A source the route names must give a value: were an absent or empty one taken as "no
        // resource", the client would choose to be judged on the collection instead.
        let value = |src: Option<ValueSource>| -> Result<String, Denied> {
            let Some(src) = src else {
                return Ok(String::new());
            };
            let v = match &src {
                ValueSource::Path(p) => matched
                    .as_ref()
                    .and_then(|m| m.route.param(p, &m.params))
                    .map(str::to_owned),
                ValueSource::Header(h) => header_source(req.headers, h)?.map(str::to_owned),
                ValueSource::Query(q) => query_value(path.query, q).map_err(|()| {
                    bad(
                        "bad_resource",
                        "a query parameter naming the resource is repeated or badly encoded",
                    )
                })?,
            };
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Err(bad(
                    "missing_resource",
                    &format!(
                        "the route names its resource by the {}, which the request does not \
                         carry or leaves empty",
                        describe_source(&src)
                    ),
                ));
            };
            if v.len() > MAX_ID_LEN || v.contains(',') || v.chars().any(char::is_control) {
                return Err(bad(
                    "bad_resource",
                    "a resource id in the request is too long or has a ',' or control character",
                ));
            }
            Ok(v)
        };
        let mut team = value(team_src)?;
        let owner_key = value(key_src)?;
        let owner_user = value(user_src)?;
        if team.is_empty() && !owner_key.is_empty() {
            // The data of a key belongs to that key's team: a TEAM grant can then cover it.
            if let Some(owner) = self.state.lookup(&owner_key) {
                team = owner.team.to_string();
            }
        }

        let resource = ResourceRef {
            team_id: &team,
            owner_key_prefix: &owner_key,
            owner_user_id: &owner_user,
        };
        let d = decide_presented(&entry, key.prefix, entitlement, resource, now);
        tracing::debug!(
            key = key.prefix,
            method,
            entitlement,
            decision = if d.is_allowed() { "allow" } else { "deny" },
            reason = ?d.reason,
            "ext_authz"
        );
        if !d.is_allowed() {
            return Err(self.denial(d.reason, entitlement));
        }
        let spec = &entry.spec;
        let shared = |v: Option<&Arc<str>>| v.map_or(HeaderText::Static(""), |v| v.clone().into());
        // The names are those of IDENTITY_HEADERS (unit test
        // `allowed_answers_set_only_identity_headers`).
        let candidates = [
            ("x-rolegate-key", HeaderText::Inline(spec.prefix.clone())),
            ("x-rolegate-user", shared(spec.user())),
            ("x-rolegate-team", HeaderText::Shared(entry.team.id.clone())),
            ("x-rolegate-project", shared(spec.project())),
            (
                "x-rolegate-scope",
                HeaderText::Static(d.scope.map_or("", scope_name)),
            ),
            (
                "x-rolegate-filter-teams",
                HeaderText::joined(d.filter_team_ids.iter().flat_map(|f| f.iter())),
            ),
            (
                "x-rolegate-filter-owner-keys",
                HeaderText::joined(d.filter_owner_key_prefixes.iter().flat_map(|l| l.iter())),
            ),
            (
                "x-rolegate-revision",
                HeaderText::Number(Digits::new(revision)),
            ),
        ];
        let mut headers = Vec::with_capacity(candidates.len());
        // An empty value is no header at all (so also no forged one).
        headers.extend(candidates.into_iter().filter(|(_, v)| !v.is_empty()));
        let entitlement = match (context("entitlement"), &matched) {
            (None, Some(m)) => HeaderText::Shared(m.route.entitlement().clone()),
            _ => HeaderText::Owned(entitlement.to_owned()),
        };
        Ok(Verdict::Allow(Allowed {
            remove: self.removals(req.headers, &headers),
            headers,
            entitlement,
        }))
    }

    /// Reads the credential and authenticates its key: the key and its entry, or a 401 that
    /// says only that a valid key is required (the reason goes to the log).
    fn authenticate<'h, H: RequestHeaders + ?Sized>(
        &self,
        headers: &'h H,
        now: i64,
    ) -> Result<(ApiKey<'h>, Arc<KeyEntry>), Denied> {
        let presented = self.credential(headers)?;
        let key = ApiKey::parse(presented)
            .map_err(|_| self.unauthenticated(reason_name(Reason::MalformedKey), None))?;
        let entry = self.state.lookup(key.prefix);
        match (authenticate(entry.as_deref(), &key, now), entry) {
            (Ok(()), Some(entry)) => Ok((key, entry)),
            (Err(reason), _) => Err(self.unauthenticated(reason_name(reason), Some(key.prefix))),
            // `authenticate` accepts only a key it found.
            (Ok(()), None) => {
                Err(self.unauthenticated(reason_name(Reason::UnknownKey), Some(key.prefix)))
            }
        }
    }

    /// The key from the credential header: `<scheme> <prefix>.<secret>`, exactly one space.
    fn credential<'h, H: RequestHeaders + ?Sized>(
        &self,
        headers: &'h H,
    ) -> Result<&'h str, Denied> {
        let value = match headers.header(&self.config.credential_header) {
            Header::One(v) => v,
            Header::Absent => return Err(self.unauthenticated("missing_credential", None)),
            Header::Many => return Err(self.unauthenticated("duplicate_credential", None)),
            Header::NotText => return Err(self.unauthenticated("malformed_credential", None)),
        };
        // A comma means the header was sent twice and joined by the proxy.
        if value.contains(',') {
            return Err(self.unauthenticated("duplicate_credential", None));
        }
        let malformed = || self.unauthenticated("malformed_credential", None);
        let (scheme, key) = value.split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case(&self.config.scheme) || key.is_empty() || key.contains(' ')
        {
            return Err(malformed());
        }
        Ok(key)
    }

    /// A 401 for a proxied request: always the same body; `reason` and the presented key's
    /// prefix (never its secret) go to the log — at debug level when no credential was sent at
    /// all (browsers, probes), at info otherwise.
    fn unauthenticated(&self, reason: &'static str, prefix: Option<&str>) -> Denied {
        let key = prefix.unwrap_or("-");
        if reason == "missing_credential" {
            tracing::debug!(key, reason, "proxied request not authenticated");
        } else {
            tracing::info!(key, reason, "proxied request not authenticated");
        }
        let mut d = Denied::new(401, reason, UNAUTHENTICATED_MESSAGE);
        d.www_authenticate = Some(self.config.scheme.clone());
        d
    }

    fn denial(&self, reason: Reason, entitlement: &str) -> Denied {
        if reason.is_unauthenticated() {
            return self.unauthenticated(reason_name(reason), None);
        }
        let message = match reason {
            Reason::NoGrant => format!("the API key's roles do not grant {entitlement}"),
            Reason::OutOfScope => {
                format!("the API key's grants of {entitlement} do not cover this resource")
            }
            Reason::UnknownEntitlement => {
                format!("the entitlement {entitlement} is not in the catalog")
            }
            other => other.describe().to_owned(),
        };
        Denied::new(403, reason_name(reason), &message)
    }

    /// The credential (unless kept), and every header the client sent that impersonates one
    /// of rolegate's or the credential header ([`impersonates`]) and is not in `set` (those
    /// are overwritten): lower case, each once.
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
            let forged = impersonates(name, credential)
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

/// The value of the header a resource source names. A repeated header, one that is not text,
/// or one also sent under a name that reads the same with `_` for `-` (`x_team` beside
/// `x-team`: a CGI-style upstream might read either) is refused.
fn header_source<'h, H: RequestHeaders + ?Sized>(
    headers: &'h H,
    name: &str,
) -> Result<Option<&'h str>, Denied> {
    let ambiguous = || {
        Denied::new(
            400,
            "bad_resource",
            "a header naming the resource is repeated, not text, or also sent with '_' for '-'",
        )
    };
    let value = match headers.header(name) {
        Header::Absent => None,
        Header::One(v) => Some(v),
        Header::Many | Header::NotText => return Err(ambiguous()),
    };
    let mut variant = false;
    headers.each_name(&mut |n| {
        variant |= header_reads_as(n, name) && !n.eq_ignore_ascii_case(name);
    });
    if variant {
        return Err(ambiguous());
    }
    Ok(value)
}

/// A resource source as the 400 for its missing value names it.
fn describe_source(src: &ValueSource) -> String {
    match src {
        ValueSource::Path(p) => format!("path parameter '{p}'"),
        ValueSource::Header(h) => format!("header '{h}'"),
        ValueSource::Query(q) => format!("query parameter '{q}' (names are case-sensitive)"),
    }
}

/// The platform's error body, `{"message": …, "status": …, "statusCode": …}`, written in one
/// buffer; the keys in the order `serde_json::json!` gives them (sorted), so the bytes are the
/// same as when it was built as a JSON value.
fn error_body(status: u16, text: &str, message: &str) -> String {
    use std::io::Write;
    let mut body = Vec::with_capacity(message.len() + 64);
    body.extend_from_slice(b"{\"message\":");
    // Writing a &str into a Vec cannot fail; the string is escaped as JSON.
    let _ = serde_json::to_writer(&mut body, message);
    let _ = write!(body, ",\"status\":\"{text}\",\"statusCode\":{status}}}");
    String::from_utf8(body).unwrap_or_default()
}

fn parse_source(text: &str) -> Option<ValueSource> {
    let (kind, name) = text.split_once('.')?;
    if name.is_empty() {
        return None;
    }
    match kind {
        "path" => Some(ValueSource::Path(name.to_owned())),
        "header" => Some(ValueSource::Header(name.to_ascii_lowercase())),
        "query" => Some(ValueSource::Query(name.to_owned())),
        _ => None,
    }
}

/// The decoded value of query parameter `name`; a repeated or undecodable one is an error.
fn query_value(query: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = routes::decode_query_component(k).ok_or(())?;
        if k == name {
            if found.is_some() {
                return Err(());
            }
            found = Some(routes::decode_query_component(v).ok_or(())?);
        }
    }
    Ok(found)
}

/// The scope as the `x-rolegate-scope` header spells it.
pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Own => "OWN",
        Scope::Team => "TEAM",
        Scope::All => "ALL",
    }
}

fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::Allowed => "allowed",
        Reason::MalformedKey => "malformed_key",
        Reason::UnknownKey => "unknown_key",
        Reason::WrongSecret => "wrong_secret",
        Reason::KeyInactive => "key_inactive",
        Reason::KeyExpired => "key_expired",
        Reason::TeamInactive => "team_inactive",
        Reason::UserInactive => "user_inactive",
        Reason::UnknownEntitlement => "unknown_entitlement",
        Reason::NoGrant => "no_grant",
        Reason::OutOfScope => "out_of_scope",
    }
}

/// Headers in a plain map, one value each (tests, benches).
impl RequestHeaders for HashMap<String, String> {
    fn header(&self, name: &str) -> Header<'_> {
        let mut found = self.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (None, _) => Header::Absent,
            (Some((_, v)), None) => Header::One(v),
            (Some(_), Some(_)) => Header::Many,
        }
    }

    fn each_name(&self, each: &mut dyn FnMut(&str)) {
        self.keys().for_each(|k| each(k));
    }
}

#[cfg(test)]
mod tests;
