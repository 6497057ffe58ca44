//! Routes of the HTTP API as data: which entitlement a request needs and where its resource is
//! named ([`RouteSpec`]), and the pure checks of a route pattern. The route table is part of the
//! model ([`super::Model::routes`]); `authz::routes` compiles it into a matcher.

use std::fmt;

/// The most segments a request path (or a route pattern) may have; deeper paths are rejected
/// rather than matched, which bounds the matcher's work.
pub(crate) const MAX_SEGMENTS: usize = 32;

/// Where a route's resource team or owner comes from: `path.<param>`, `header.<name>` or
/// `query.<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueSource {
    Path(String),
    /// A header name, lower-case.
    Header(String),
    Query(String),
}

impl ValueSource {
    /// Parses `path.<param>`, `header.<name>` (the name is lower-cased) or `query.<name>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, name) = text.split_once('.').ok_or_else(|| {
            format!("{text:?} is not path.<param>, header.<name> or query.<name>")
        })?;
        if name.is_empty() {
            return Err(format!("{text:?} names no parameter"));
        }
        match kind {
            "path" => Ok(ValueSource::Path(name.to_owned())),
            "header" => Ok(ValueSource::Header(name.to_ascii_lowercase())),
            "query" => Ok(ValueSource::Query(name.to_owned())),
            _ => Err(format!(
                "{text:?} is not path.<param>, header.<name> or query.<name>"
            )),
        }
    }
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Path(p) => write!(f, "path.{p}"),
            ValueSource::Header(h) => write!(f, "header.{h}"),
            ValueSource::Query(q) => write!(f, "query.{q}"),
        }
    }
}

/// A route of the HTTP API: which entitlement a request needs and where its resource is named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    /// An upper-case HTTP method, or `*` for any.
    pub method: String,
    /// The pattern: literal segments, `{param}` segments, and an optional last `*`.
    pub path: String,
    pub entitlement: String,
    pub team: Option<ValueSource>,
    pub owner_key: Option<ValueSource>,
    pub owner_user: Option<ValueSource>,
}

impl RouteSpec {
    /// The resource sources with the field that names each: `team`, `owner_key`, `owner_user`.
    pub(crate) fn sources(&self) -> impl Iterator<Item = (&'static str, &ValueSource)> {
        [
            ("team", &self.team),
            ("owner_key", &self.owner_key),
            ("owner_user", &self.owner_user),
        ]
        .into_iter()
        .filter_map(|(field, src)| src.as_ref().map(|s| (field, s)))
    }

    /// What is wrong with this route taken alone (method, pattern, sources), as
    /// `(field, message)`; the entitlement and duplicates are the model's to check.
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !is_valid_method(&self.method) {
            out.push(("method", "method is an upper-case HTTP method or *".into()));
        }
        if let Err(e) = check_pattern(&self.path) {
            out.push(("path", format!("path: {e}")));
        }
        let params = params_of(&self.path);
        for (field, src) in self.sources() {
            match src {
                ValueSource::Path(p) if !params.contains(&p.as_str()) => {
                    out.push((
                        "resource",
                        format!("resource.{field}: the path has no {{{p}}}"),
                    ));
                }
                ValueSource::Path(name) | ValueSource::Header(name) | ValueSource::Query(name)
                    if name.is_empty() =>
                {
                    out.push(("resource", format!("resource.{field}: names no parameter")));
                }
                _ => {}
            }
        }
        out
    }
}

/// Whether `method` is an upper-case HTTP method (`GET`, `PATCH`, ...) or `*`.
pub(crate) fn is_valid_method(method: &str) -> bool {
    method == "*"
        || (!method.is_empty()
            && method.len() <= 32
            && method.bytes().all(|b| b.is_ascii_uppercase()))
}

/// The `{param}` names of a pattern, in path order.
fn params_of(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Why a route pattern is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path has an empty segment")]
    EmptySegment,
    #[error("'*' may only be the last segment")]
    TailNotLast,
    #[error("segment {0:?}: a parameter is a whole segment, {{name}}, with a name of [A-Za-z0-9_]")]
    BadParam(String),
    #[error("segment {0:?} has a character a normalized path never has (%, ?, #, \\, '.'-only)")]
    BadLiteral(String),
    #[error("parameter {{{0}}} appears twice")]
    DuplicateParam(String),
    #[error("more than {MAX_SEGMENTS} segments")]
    TooDeep,
}

/// One segment of a parsed pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatternSegment<'a> {
    Literal(&'a str),
    Param(&'a str),
    /// A last `*`: this segment and anything below.
    Tail,
}

/// Parses a route pattern into its segments.
pub(crate) fn parse_pattern(path: &str) -> Result<Vec<PatternSegment<'_>>, PatternError> {
    let rest = path.strip_prefix('/').ok_or(PatternError::NotAbsolute)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut out = Vec::new();
    if rest.is_empty() {
        return Ok(out);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(PatternError::TooDeep);
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(PatternError::EmptySegment);
        }
        if *part == "*" {
            if i + 1 != parts.len() {
                return Err(PatternError::TailNotLast);
            }
            out.push(PatternSegment::Tail);
        } else if let Some(inner) = part.strip_prefix('{') {
            let name = inner
                .strip_suffix('}')
                .filter(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .ok_or_else(|| PatternError::BadParam((*part).to_owned()))?;
            if names.contains(&name) {
                return Err(PatternError::DuplicateParam(name.to_owned()));
            }
            names.push(name);
            out.push(PatternSegment::Param(name));
        } else {
            let bad = part.contains(['%', '?', '#', '\\', '{', '}', '*'])
                || *part == "."
                || *part == ".."
                || part.bytes().any(|b| b.is_ascii_control());
            if bad {
                return Err(PatternError::BadLiteral((*part).to_owned()));
            }
            out.push(PatternSegment::Literal(part));
        }
    }
    Ok(out)
}

/// Checks a route pattern.
pub(crate) fn check_pattern(path: &str) -> Result<(), PatternError> {
    parse_pattern(path).map(|_| ())
}

/// The method and the shape of a pattern (parameter names erased): two routes with the same
/// shape would match the same requests.
pub(crate) fn shape(method: &str, path: &str) -> String {
    let mut out = format!("{method} ");
    for part in path.trim_end_matches('/').split('/').skip(1) {
        out.push('/');
        out.push_str(if part.starts_with('{') { "{}" } else { part });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: &str, path: &str) -> RouteSpec {
        RouteSpec {
            method: method.into(),
            path: path.into(),
            entitlement: "jobs.read".into(),
            team: None,
            owner_key: None,
            owner_user: None,
        }
    }

    #[test]
    fn value_sources_parse_and_print_back() {
        for text in ["path.teamId", "header.x-owner", "query.team"] {
            assert_eq!(ValueSource::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            ValueSource::parse("header.X-Owner").unwrap(),
            ValueSource::Header("x-owner".into())
        );
        for bad in ["team", "path.", "cookie.x"] {
            assert!(ValueSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_route_alone_is_checked_for_method_pattern_and_sources() {
        assert!(spec("GET", "/api/jobs/{id}").problems().is_empty());
        assert!(spec("*", "/api/*").problems().is_empty());
        let mut bad = spec("get", "/a/*/b");
        bad.team = Some(ValueSource::Path("teamId".into()));
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["method", "path", "resource"]);
        let messages: Vec<String> = bad.problems().into_iter().map(|(_, m)| m).collect();
        assert!(
            messages.contains(&"resource.team: the path has no {teamId}".to_owned()),
            "{messages:?}"
        );
    }

    #[test]
    fn bad_patterns_are_refused_and_shapes_erase_parameter_names() {
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
        assert_eq!(
            check_pattern(&"/a".repeat(MAX_SEGMENTS + 1)),
            Err(PatternError::TooDeep)
        );
        assert_eq!(shape("GET", "/a/{x}/"), shape("GET", "/a/{y}"));
        assert_ne!(shape("GET", "/a/{x}"), shape("POST", "/a/{x}"));
    }
}
