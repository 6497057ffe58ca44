//! The resource stage: the team and owner the request touches, taken from where the route (or
//! the proxy's per-route context) says: a path parameter, a header or a query parameter.

use crate::domain::ValueSource;

use super::{
    denial::Denied,
    headers::{Header, RequestHeaders, header_reads_as},
    path,
};

/// The value of the header a resource source names. A repeated header, one that is not text,
/// or one also sent under a name that reads the same with `_` for `-` (`x_team` beside
/// `x-team`: a CGI-style upstream might read either) is refused.
pub(super) fn header_source<'h, H: RequestHeaders + ?Sized>(
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
pub(super) fn describe_source(src: &ValueSource) -> String {
    match src {
        ValueSource::Path(p) => format!("path parameter '{p}'"),
        ValueSource::Header(h) => format!("header '{h}'"),
        ValueSource::Query(q) => format!("query parameter '{q}' (names are case-sensitive)"),
    }
}

pub(super) fn parse_source(text: &str) -> Option<ValueSource> {
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
pub(super) fn query_value(query: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = path::decode_query_component(k).ok_or(())?;
        if k == name {
            if found.is_some() {
                return Err(());
            }
            found = Some(path::decode_query_component(v).ok_or(())?);
        }
    }
    Ok(found)
}
