//! The route map: which entitlement an HTTP request needs and where its resource is named.
//! Patterns compile into a segment trie, so matching costs O(path length), whatever the number
//! of routes; request paths are normalized first (see [`normalize_path`](super::path::normalize_path)).

use std::{borrow::Cow, collections::HashMap, sync::Arc};

pub(crate) use crate::domain::route::PatternError;
use crate::domain::{
    RouteSpec, ValueSource,
    route::{PatternSegment, parse_pattern},
};
/// One compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) spec: RouteSpec,
    /// The parameter names in path order: captured values come in the same order.
    params: Box<[Box<str>]>,
    /// `spec.entitlement`, shared with every allowed answer that names it.
    entitlement: Arc<str>,
}

impl Route {
    /// The entitlement the route needs.
    pub(crate) fn entitlement(&self) -> &Arc<str> {
        &self.entitlement
    }

    /// The value of a path parameter among `captured` (the values in path order).
    pub(crate) fn param<'v>(&self, name: &str, captured: &'v [Cow<'v, str>]) -> Option<&'v str> {
        let i = self.params.iter().position(|p| &**p == name)?;
        captured.get(i).map(|c| &**c)
    }
}

/// The routes that end at one trie node, by method (`*` matches any).
#[derive(Debug, Default)]
struct Methods(Vec<(Box<str>, usize)>);

impl Methods {
    fn find(&self, method: &str) -> Option<usize> {
        let exact = |m: &str| self.0.iter().find(|(k, _)| &**k == m).map(|(_, i)| *i);
        exact(method)
            .or_else(|| (method == "HEAD").then(|| exact("GET")).flatten())
            .or_else(|| exact("*"))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends with `*` here: they match this node and anything below.
    tail: Methods,
    /// Routes whose pattern ends exactly here.
    here: Methods,
    /// The literal children's names in ASCII lower case, sorted, when a parameter or a tail
    /// could take a segment here (else empty): built once when the table compiles, so that
    /// telling whether a parameter's value reads like one of them is a binary search.
    literals_folded: Box<[Box<str>]>,
}

impl Node {
    /// Fills `literals_folded` here and below.
    fn fold_literals(&mut self) {
        if self.param.is_some() || !self.tail.is_empty() {
            let mut folded: Vec<Box<str>> = self
                .literals
                .keys()
                .map(|l| l.to_ascii_lowercase().into_boxed_str())
                .collect();
            folded.sort();
            folded.dedup();
            self.literals_folded = folded.into();
        }
        self.literals.values_mut().for_each(Node::fold_literals);
        if let Some(param) = &mut self.param {
            param.fold_literals();
        }
    }

    /// The literal child that `value`, taken by a parameter or a tail here, reads like on a
    /// server that ignores case or takes a `.suffix` as a format: equal to it ignoring ASCII
    /// case, or that followed by `.` and anything (`STATISTICS`, `statistics.json` for
    /// `statistics`). Allocation-free: a binary search per `.` in the value.
    fn resembled(&self, value: &str) -> Option<&str> {
        if self.literals_folded.is_empty() {
            return None;
        }
        let find = |candidate: &str| {
            self.literals_folded
                .binary_search_by(|lit| {
                    lit.bytes()
                        .cmp(candidate.bytes().map(|b| b.to_ascii_lowercase()))
                })
                .ok()
                .map(|i| &*self.literals_folded[i])
        };
        find(value).or_else(|| {
            value
                .match_indices('.')
                .find_map(|(at, _)| find(&value[..at]))
        })
    }
}

/// Why a set of routes does not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route {index} ({method} {path}): {source}")]
    Pattern {
        index: usize,
        method: String,
        path: String,
        #[source]
        source: PatternError,
    },
    #[error("route {index} ({method} {path}) matches the same requests as route {first}")]
    Duplicate {
        index: usize,
        first: usize,
        method: String,
        path: String,
    },
}

/// A compiled route map.
#[derive(Debug, Default)]
pub struct RouteTable {
    root: Node,
    routes: Vec<Route>,
}

/// A request matched to a route: the route and the captured parameter values, in path order.
#[derive(Debug)]
pub struct RouteMatch<'t, 'p> {
    pub(crate) route: &'t Route,
    pub params: Vec<Cow<'p, str>>,
    /// A literal segment of the table (lower case) that a segment taken by a parameter or a
    /// tail of this match reads like, ignoring case or a `.suffix` (see [`RouteMatch::resembles`]).
    resembled: Option<&'t str>,
}

impl<'t> RouteMatch<'t, '_> {
    /// The literal route segment that a segment this match takes as a parameter (or under a
    /// `*` tail) equals ignoring ASCII case, or equals followed by `.suffix`, if any: e.g.
    /// `statistics` for `GET /api/jobs/STATISTICS` or `/api/jobs/statistics.json` matched to
    /// `/api/jobs/{id}` beside `/api/jobs/statistics`. A server that routes case-insensitively
    /// or reads `.json` as a format would serve the literal route, not the one judged here.
    pub(crate) fn resembles(&self) -> Option<&'t str> {
        self.resembled
    }
}

impl RouteTable {
    /// Compiles `specs`; an unusable pattern or two routes matching the same requests is an
    /// error.
    pub fn compile(specs: &[RouteSpec]) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for (index, spec) in specs.iter().enumerate() {
            let pattern = parse_pattern(&spec.path).map_err(|source| RouteError::Pattern {
                index,
                method: spec.method.clone(),
                path: spec.path.clone(),
                source,
            })?;
            let mut node = &mut table.root;
            let mut params = Vec::new();
            let mut tail = false;
            for seg in &pattern {
                match seg {
                    PatternSegment::Literal(l) => {
                        node = node.literals.entry((*l).into()).or_default();
                    }
                    PatternSegment::Param(p) => {
                        params.push(Box::<str>::from(*p));
                        node = node.param.get_or_insert_with(Box::default);
                    }
                    PatternSegment::Tail => tail = true,
                }
            }
            let methods = if tail { &mut node.tail } else { &mut node.here };
            if let Some(&(_, first)) = methods.0.iter().find(|(m, _)| **m == *spec.method) {
                return Err(RouteError::Duplicate {
                    index,
                    first,
                    method: spec.method.clone(),
                    path: spec.path.clone(),
                });
            }
            methods
                .0
                .push((spec.method.as_str().into(), table.routes.len()));
            table.routes.push(Route {
                spec: spec.clone(),
                params: params.into(),
                entitlement: spec.entitlement.as_str().into(),
            });
        }
        table.root.fold_literals();
        Ok(table)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the route of `method` on a normalized path. A literal segment beats a parameter,
    /// which beats a `*` tail; the search backtracks only along the path, so its cost depends on
    /// the path's length, never on the number of routes.
    pub fn find<'t, 'p>(
        &'t self,
        method: &str,
        segments: &[Cow<'p, str>],
    ) -> Option<RouteMatch<'t, 'p>> {
        let mut params = Vec::new();
        let mut resembled = None;
        let index = find_in(&self.root, method, segments, &mut params, &mut resembled)?;
        Some(RouteMatch {
            route: &self.routes[index],
            params,
            resembled,
        })
    }
}

/// The route index under `node` for `segments`; `resembled` gets the literal that a segment
/// taken by a parameter or a tail on the way reads like (only along the path that matched).
fn find_in<'t, 'p>(
    node: &'t Node,
    method: &str,
    segments: &[Cow<'p, str>],
    params: &mut Vec<Cow<'p, str>>,
    resembled: &mut Option<&'t str>,
) -> Option<usize> {
    let Some((first, rest)) = segments.split_first() else {
        return node.here.find(method).or_else(|| node.tail.find(method));
    };
    if let Some(child) = node.literals.get(&**first)
        && let Some(found) = find_in(child, method, rest, params, resembled)
    {
        return Some(found);
    }
    if let Some(child) = &node.param {
        params.push(first.clone());
        if let Some(found) = find_in(child, method, rest, params, resembled) {
            if resembled.is_none() {
                *resembled = node.resembled(first);
            }
            return Some(found);
        }
        params.pop();
    }
    let found = node.tail.find(method)?;
    if resembled.is_none() {
        *resembled = node.resembled(first);
    }
    Some(found)
}

fn route(method: &str, path: &str, entitlement: &str) -> RouteSpec {
    RouteSpec {
        method: method.into(),
        path: path.into(),
        entitlement: entitlement.into(),
        team: None,
        owner_key: None,
        owner_user: None,
    }
}

fn owned_by_key(mut spec: RouteSpec, param: &str) -> RouteSpec {
    spec.owner_key = Some(ValueSource::Path(param.into()));
    spec
}

fn of_team(mut spec: RouteSpec, param: &str) -> RouteSpec {
    spec.team = Some(ValueSource::Path(param.into()));
    spec
}

/// The default route map: the platform's published REST API, plus paths rolegate names for the
/// routes the platform does not publish (marked "invented" below and in docs/ext-authz.md).
///
/// Routes whose path names no owner or team (e.g. `/api/jobs/{id}`) are collection checks: the
/// request passes at the widest scope held, and the `x-rolegate-filter-*` headers tell the
/// backend which data the caller may touch.
pub fn default_routes() -> Vec<RouteSpec> {
    let mut r = vec![
        // Jobs
        route("POST", "/api/jobs", "jobs.create"),
        route("GET", "/api/jobs", "jobs.read"),
        route("GET", "/api/jobs/history", "jobs.read"),
        route("GET", "/api/jobs/history/{id}", "jobs.read"),
        route("GET", "/api/jobs/features", "jobs.read"),
        route("GET", "/api/jobs/statistics", "statistics.read"),
        owned_by_key(
            route("GET", "/api/jobs/statistics/{keyPrefix}", "statistics.read"),
            "keyPrefix",
        ),
        route("GET", "/api/jobs/{id}", "jobs.read"),
        route("DELETE", "/api/jobs/{id}", "jobs.cancel"),
        route("POST", "/api/jobs/{id}/close", "jobs.close"),
        route("POST", "/api/jobs/{id}/{input}/{item}", "jobs.create"),
        // Results
        route("GET", "/api/results/{jobId}", "results.read"),
        route(
            "GET",
            "/api/results/{jobId}/datasource/{input}",
            "results.read",
        ),
        route(
            "GET",
            "/api/results/{jobId}/datasource/{input}/output/{output}",
            "results.download",
        ),
        route(
            "POST",
            "/api/results/{jobId}/upvote/{input}",
            "results.read",
        ),
        route(
            "POST",
            "/api/results/{jobId}/downvote/{input}",
            "results.read",
        ),
        route("GET", "/api/results/{jobId}/vote/{input}", "results.read"),
        route(
            "DELETE",
            "/api/results/{jobId}/vote/{input}",
            "results.read",
        ),
        // Inferences
        route("POST", "/api/inferences", "jobs.create"),
        route("GET", "/api/inferences/{id}", "results.read"),
        // Models
        route("GET", "/api/models", "models.read"),
        route("POST", "/api/models", "models.deploy"),
        route("GET", "/api/models/latest", "models.read"),
        route("GET", "/api/models/tags", "models.read"),
        route("GET", "/api/models/tags/{ids}", "models.read"),
        route("GET", "/api/models/processing-engines", "models.read"),
        route("GET", "/api/models/{id}", "models.read"),
        route("PATCH", "/api/models/{id}", "models.update"),
        route("GET", "/api/models/{id}/versions", "models.read"),
        route("POST", "/api/models/{id}/versions", "models.deploy"),
        route("GET", "/api/models/{id}/versions/{v}", "models.read"),
        route("PATCH", "/api/models/{id}/versions/{v}", "models.update"),
        // CAN_PATCH_PROCESSING_MODEL_VERSION: only administrators change processing (scaling).
        route(
            "PATCH",
            "/api/models/{id}/versions/{v}/processing",
            "autoscaling.update",
        ),
        route(
            "GET",
            "/api/models/{id}/versions/{v}/sample-input",
            "models.read",
        ),
        route(
            "PUT",
            "/api/models/{id}/versions/{v}/sample-input",
            "models.update",
        ),
        route(
            "GET",
            "/api/models/{id}/versions/{v}/sample-output",
            "models.read",
        ),
        route(
            "PUT",
            "/api/models/{id}/versions/{v}/sample-output",
            "models.update",
        ),
        route(
            "POST",
            "/api/models/{id}/versions/{v}/load-process",
            "models.deploy",
        ),
        route(
            "POST",
            "/api/models/{id}/versions/{v}/run-process",
            "models.deploy",
        ),
        // Accounting
        route("GET", "/api/accounting/users", "users.read"),
        route("POST", "/api/accounting/users/search", "users.read"),
        route("GET", "/api/accounting/accounts", "accounts.read"),
        of_team(
            route("GET", "/api/accounting/accounts/{acct}", "accounts.read"),
            "acct",
        ),
        of_team(
            route(
                "POST",
                "/api/accounting/accounts/{acct}/users",
                "users.create",
            ),
            "acct",
        ),
        of_team(
            route(
                "PATCH",
                "/api/accounting/accounts/{acct}/users/{user}",
                "users.update",
            ),
            "acct",
        ),
        route("GET", "/api/accounting/teams", "teams.read"),
        route("GET", "/api/accounting/projects", "projects.read"),
        route("GET", "/api/accounting/projects/{id}", "projects.read"),
        owned_by_key(
            route("GET", "/api/accounting/access-keys/{prefix}", "keys.read"),
            "prefix",
        ),
        owned_by_key(
            route(
                "PATCH",
                "/api/accounting/access-keys/{prefix}",
                "keys.update",
            ),
            "prefix",
        ),
        owned_by_key(
            route(
                "PUT",
                "/api/accounting/access-keys/{prefix}/roles",
                "keys.update",
            ),
            "prefix",
        ),
        // Dashboard
        route("GET", "/api/notifications/alerts", "dashboard.read"),
        route("GET", "/api/notifications/alerts/{type}", "dashboard.read"),
        route("GET", "/api/metrics/{name}", "dashboard.read"),
    ];
    r.extend(invented_routes());
    r
}

/// Routes the platform does not publish (key creation, roles, audit log, drift, explanations,
/// ...): rolegate's own choice of paths, in the platform's style.
fn invented_routes() -> Vec<RouteSpec> {
    vec![
        route("POST", "/api/accounting/access-keys", "keys.create"),
        route("GET", "/api/accounting/roles", "roles.read"),
        route("POST", "/api/accounting/roles", "roles.create"),
        route("PATCH", "/api/accounting/roles/{roleId}", "roles.update"),
        route("POST", "/api/accounting/projects", "projects.create"),
        route("PATCH", "/api/accounting/projects/{id}", "projects.update"),
        of_team(
            route(
                "PATCH",
                "/api/accounting/accounts/{acct}",
                "accounts.update",
            ),
            "acct",
        ),
        of_team(
            route(
                "PUT",
                "/api/accounting/accounts/{acct}/features",
                "features.manage",
            ),
            "acct",
        ),
        route(
            "POST",
            "/api/accounting/teams/{teamId}/switch",
            "teams.switch",
        ),
        route("GET", "/api/profile", "profile.read"),
        route("PATCH", "/api/profile", "profile.update"),
        route("GET", "/api/audit-log", "audit.read"),
        route("GET", "/api/dashboard", "dashboard.read"),
        route("GET", "/api/utilization", "utilization.read"),
        route("GET", "/api/models/{id}/versions/{v}/drift", "drift.read"),
        route(
            "PATCH",
            "/api/models/{id}/versions/{v}/drift",
            "drift.update",
        ),
        route(
            "POST",
            "/api/models/{id}/versions/{v}/approve",
            "models.approve",
        ),
        route(
            "POST",
            "/api/models/{id}/versions/{v}/deactivate",
            "models.deactivate",
        ),
        route(
            "GET",
            "/api/results/{jobId}/explanations/{input}",
            "explanations.read",
        ),
        route("GET", "/api/results/{jobId}/inputs/{input}", "inputs.read"),
    ]
}

/// The default map, compiled once.
pub(crate) fn default_table() -> Arc<RouteTable> {
    static DEFAULT: std::sync::OnceLock<Arc<RouteTable>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Arc::new(RouteTable::compile(&default_routes()).expect("the default routes compile"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        authz::path::normalize_path,
        domain::route::{check_pattern, shape},
    };

    fn find(table: &RouteTable, method: &str, path: &str) -> Option<(String, Vec<String>)> {
        let p = normalize_path(path).unwrap();
        table.find(method, &p.segments).map(|m| {
            (
                format!("{} {}", m.route.spec.method, m.route.spec.path),
                m.params.into_iter().map(Cow::into_owned).collect(),
            )
        })
    }

    #[test]
    fn literals_beat_params_beat_tails_with_backtracking() {
        let specs = vec![
            route("GET", "/api/jobs/history", "jobs.read"),
            route("GET", "/api/jobs/{id}", "jobs.read"),
            route("POST", "/api/jobs/{id}/close", "jobs.close"),
            route("GET", "/api/teams/{teamId}/reports/*", "jobs.read"),
            route("*", "/api/any", "jobs.read"),
        ];
        let t = RouteTable::compile(&specs).unwrap();
        let f = |m, p| find(&t, m, p);
        assert_eq!(
            f("GET", "/api/jobs/history").unwrap().0,
            "GET /api/jobs/history"
        );
        assert_eq!(
            f("GET", "/api/jobs/42").unwrap(),
            ("GET /api/jobs/{id}".into(), vec!["42".into()])
        );
        // `history` is a literal child, but only the param route has `/close`.
        assert_eq!(
            f("POST", "/api/jobs/history/close").unwrap(),
            ("POST /api/jobs/{id}/close".into(), vec!["history".into()])
        );
        assert_eq!(f("DELETE", "/api/jobs/42"), None);
        assert_eq!(f("HEAD", "/api/jobs/42").unwrap().0, "GET /api/jobs/{id}");
        assert_eq!(
            f("GET", "/api/teams/acme/reports/2024/q1").unwrap(),
            (
                "GET /api/teams/{teamId}/reports/*".into(),
                vec!["acme".into()]
            )
        );
        assert_eq!(
            f("GET", "/api/teams/acme/reports").unwrap().0,
            "GET /api/teams/{teamId}/reports/*"
        );
        assert_eq!(f("PUT", "/api/any").unwrap().0, "* /api/any");
        assert_eq!(f("GET", "/api"), None);
        assert_eq!(f("GET", "/api/jobs/42/close/x"), None);
    }

    /// `(route, resembled literal)` for `method path` on `table`.
    fn resembling(table: &RouteTable, method: &str, path: &str) -> (String, Option<String>) {
        let p = normalize_path(path).unwrap();
        let m = table.find(method, &p.segments).unwrap();
        (
            format!("{} {}", m.route.spec.method, m.route.spec.path),
            m.resembles().map(str::to_owned),
        )
    }

    #[test]
    fn parameters_that_read_like_a_literal_sibling_are_flagged() {
        let specs = vec![
            route("GET", "/api/jobs/statistics", "statistics.read"),
            route("GET", "/api/jobs/history", "jobs.read"),
            route("GET", "/api/jobs/v1.2", "jobs.read"),
            route("GET", "/api/jobs/{id}", "jobs.read"),
            route("DELETE", "/api/jobs/{id}", "jobs.cancel"),
            route("POST", "/api/jobs/{id}/close", "jobs.close"),
            route("GET", "/api/Teams/{team}/Reports", "jobs.read"),
            route("GET", "/files/secret", "audit.read"),
            route("GET", "/files/*", "jobs.read"),
        ];
        let t = RouteTable::compile(&specs).unwrap();
        let jobs_id = "GET /api/jobs/{id}";
        for (method, path, route, like) in [
            (
                "GET",
                "/api/jobs/statistics",
                "GET /api/jobs/statistics",
                None,
            ),
            ("GET", "/api/jobs/job-1", jobs_id, None),
            ("GET", "/api/jobs/STATISTICS", jobs_id, Some("statistics")),
            ("GET", "/api/jobs/Statistics", jobs_id, Some("statistics")),
            ("GET", "/api/jobs/statistic%53", jobs_id, Some("statistics")),
            (
                "GET",
                "/api/jobs/statistics.json",
                jobs_id,
                Some("statistics"),
            ),
            (
                "GET",
                "/api/jobs/STATISTICS.JSON",
                jobs_id,
                Some("statistics"),
            ),
            (
                "GET",
                "/api/jobs/statistics.tar.gz",
                jobs_id,
                Some("statistics"),
            ),
            ("GET", "/api/jobs/history.xml", jobs_id, Some("history")),
            // A literal with a dot: its own suffixes, not its prefix.
            ("GET", "/api/jobs/V1.2", jobs_id, Some("v1.2")),
            ("GET", "/api/jobs/v1.2.json", jobs_id, Some("v1.2")),
            ("GET", "/api/jobs/v1", jobs_id, None),
            // Near, but neither the same nor a suffix.
            ("GET", "/api/jobs/statisticsx", jobs_id, None),
            ("GET", "/api/jobs/xstatistics", jobs_id, None),
            ("GET", "/api/jobs/statistic", jobs_id, None),
            ("GET", "/api/jobs/.statistics", jobs_id, None),
            // The literal exists but not for this method: the parameter takes it as it is.
            (
                "DELETE",
                "/api/jobs/statistics",
                "DELETE /api/jobs/{id}",
                Some("statistics"),
            ),
            ("DELETE", "/api/jobs/j-1", "DELETE /api/jobs/{id}", None),
            (
                "POST",
                "/api/jobs/HISTORY/close",
                "POST /api/jobs/{id}/close",
                Some("history"),
            ),
            (
                "POST",
                "/api/jobs/j-1/close",
                "POST /api/jobs/{id}/close",
                None,
            ),
            // Literals of the pattern compare folded too; parameters with no sibling never do.
            (
                "GET",
                "/api/Teams/acme/Reports",
                "GET /api/Teams/{team}/Reports",
                None,
            ),
            // A tail takes the segment like a parameter does.
            ("GET", "/files/SECRET", "GET /files/*", Some("secret")),
            ("GET", "/files/secret.txt/x", "GET /files/*", Some("secret")),
            ("GET", "/files/public/secret", "GET /files/*", None),
        ] {
            assert_eq!(
                resembling(&t, method, path),
                (route.to_owned(), like.map(str::to_owned)),
                "{method} {path}"
            );
        }
        // The default map: the platform's near-miss paths.
        let d = default_table();
        for path in [
            "/api/jobs/STATISTICS",
            "/api/jobs/statistics.json",
            "/api/models/LATEST",
            "/api/models/tags.json",
        ] {
            assert!(resembling(&d, "GET", path).1.is_some(), "{path}");
        }
        assert_eq!(resembling(&d, "GET", "/api/jobs/job-1").1, None);
    }

    #[test]
    fn bad_patterns_and_duplicates_do_not_compile() {
        for (path, want) in [
            ("api", PatternError::NotAbsolute),
            ("/a//b", PatternError::EmptySegment),
            ("/a/*/b", PatternError::TailNotLast),
            ("/a/{x", PatternError::BadParam("{x".into())),
            ("/a/{}", PatternError::BadParam("{}".into())),
            ("/a/%2F", PatternError::BadLiteral("%2F".into())),
            ("/a/..", PatternError::BadLiteral("..".into())),
            ("/a/{x}/{x}", PatternError::DuplicateParam("x".into())),
        ] {
            assert_eq!(check_pattern(path), Err(want), "{path}");
        }
        let dup = RouteTable::compile(&[
            route("GET", "/a/{x}", "jobs.read"),
            route("GET", "/a/{y}/", "jobs.read"),
        ])
        .unwrap_err();
        assert!(matches!(
            dup,
            RouteError::Duplicate {
                index: 1,
                first: 0,
                ..
            }
        ));
        assert_eq!(shape("GET", "/a/{x}/"), shape("GET", "/a/{y}"));
    }

    #[test]
    fn the_default_map_compiles_and_names_every_platform_route() {
        let t = default_table();
        assert!(t.len() > 60);
        for (method, path, want) in [
            ("POST", "/api/jobs", "jobs.create"),
            ("DELETE", "/api/jobs/j-1", "jobs.cancel"),
            ("GET", "/api/jobs/history", "jobs.read"),
            ("GET", "/api/models/latest", "models.read"),
            (
                "PATCH",
                "/api/models/m/versions/1/processing",
                "autoscaling.update",
            ),
            (
                "PUT",
                "/api/accounting/access-keys/K1234/roles",
                "keys.update",
            ),
            (
                "GET",
                "/api/results/j/datasource/in/output/out",
                "results.download",
            ),
        ] {
            let p = normalize_path(path).unwrap();
            let m = t.find(method, &p.segments).unwrap();
            assert_eq!(m.route.spec.entitlement, want, "{method} {path}");
        }
        let p = normalize_path("/api/accounting/access-keys/K1234").unwrap();
        let m = t.find("GET", &p.segments).unwrap();
        assert_eq!(m.route.param("prefix", &m.params), Some("K1234"));
    }
}
