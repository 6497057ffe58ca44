//! Request paths as the route map reads them: normalized, or refused when a backend might read
//! them differently.

use std::borrow::Cow;

use crate::domain::route::MAX_SEGMENTS;

/// The longest request path (with its query string) accepted.
pub(crate) const MAX_PATH_LEN: usize = 4096;

/// Why a request path is refused before matching (HTTP 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request has no path")]
    Missing,
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("the path has more than {MAX_SEGMENTS} segments")]
    TooDeep,
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error("the path has an encoded '/' or '\\' (%2F, %5C) or a raw '\\'")]
    EncodedSeparator,
    #[error("the path has a bad percent-escape")]
    BadEscape,
    #[error("the path has a control character, a NUL, or bytes that are not UTF-8")]
    BadCharacter,
    #[error("the path has a fragment ('#')")]
    Fragment,
    #[error("the path has a ';' (matrix parameters, which some servers strip before routing)")]
    Semicolon,
}

/// A request path split into decoded segments, and its raw query string.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    pub segments: Vec<Cow<'a, str>>,
    /// The raw query string (after the first `?`), not decoded.
    pub(crate) query: &'a str,
}

/// Normalizes a request target before matching. The rules, chosen so that a path the backend
/// might read differently from rolegate is refused rather than guessed at:
///
/// 1. The query string (from the first `?`) is cut off: it never takes part in matching.
/// 2. The path must start with `/`; no fragment (`#`); at most [`MAX_PATH_LEN`] bytes.
/// 3. It is split at `/`. A single trailing `/` is ignored (`/api/jobs/` is `/api/jobs`); any
///    other empty segment (`//`) is refused.
/// 4. Each segment is percent-decoded. An encoded separator (`%2F`, `%5C`), a raw `\`, a bad
///    escape (`%4`, `%zz`), a control character or NUL (raw or encoded), or bytes that are not
///    UTF-8 after decoding are refused.
/// 5. A segment that is `.` or `..` after decoding (so `%2e%2e` too) is refused, never resolved.
/// 6. A `;`, raw or encoded, is refused: Tomcat and Spring cut a segment at `;` (matrix
///    parameters, `;jsessionid=`), so `/api/jobs/statistics;x` would be served as
///    `/api/jobs/statistics` while it reads as a parameter here.
/// 7. At most [`MAX_SEGMENTS`] segments.
pub fn normalize_path(target: &str) -> Result<NormalizedPath<'_>, PathError> {
    if target.is_empty() {
        return Err(PathError::Missing);
    }
    if target.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if target.contains('#') {
        return Err(PathError::Fragment);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = Vec::new();
    if !rest.is_empty() {
        for raw in rest.split('/') {
            if segments.len() == MAX_SEGMENTS {
                return Err(PathError::TooDeep);
            }
            if raw.is_empty() {
                return Err(PathError::EmptySegment);
            }
            let segment = decode_segment(raw)?;
            if segment == "." || segment == ".." {
                return Err(PathError::DotSegment);
            }
            segments.push(segment);
        }
    }
    if query.bytes().any(|b| b.is_ascii_control()) {
        return Err(PathError::BadCharacter);
    }
    Ok(NormalizedPath { segments, query })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one path segment (no `+` rule: that is for query strings).
fn decode_segment(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    for &b in bytes {
        if b == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        if b.is_ascii_control() {
            return Err(PathError::BadCharacter);
        }
        if b == b';' {
            return Err(PathError::Semicolon);
        }
    }
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let b = h << 4 | l;
            if b == b'/' || b == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            if b.is_ascii_control() {
                return Err(PathError::BadCharacter);
            }
            if b == b';' {
                return Err(PathError::Semicolon);
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadCharacter)
}

/// Percent-decodes a query-string component (`+` is a space there).
pub(crate) fn decode_query_component(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = bytes.get(i + 1).copied().and_then(hex)?;
                let l = bytes.get(i + 2).copied().and_then(hex)?;
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        normalize_path(path)
            .unwrap()
            .segments
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn paths_normalize_or_are_refused() {
        assert_eq!(segs("/api/jobs"), ["api", "jobs"]);
        assert_eq!(segs("/api/jobs/"), ["api", "jobs"]);
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/api/jobs?x=/api/models"), ["api", "jobs"]);
        assert_eq!(segs("/api/a%20b/%41"), ["api", "a b", "A"]);
        assert_eq!(normalize_path("/a?b=c").unwrap().query, "b=c");
        let refused = [
            ("", PathError::Missing),
            ("api/jobs", PathError::NotAbsolute),
            ("http://x/api", PathError::NotAbsolute),
            ("/api//jobs", PathError::EmptySegment),
            ("//api/jobs", PathError::EmptySegment),
            ("/api/jobs//", PathError::EmptySegment),
            ("/api/../jobs", PathError::DotSegment),
            ("/api/./jobs", PathError::DotSegment),
            ("/api/%2e%2E/jobs", PathError::DotSegment),
            ("/api/jobs/..", PathError::DotSegment),
            ("/api/jobs%2Fx", PathError::EncodedSeparator),
            ("/api/jobs%2fx", PathError::EncodedSeparator),
            ("/api/jobs%5cx", PathError::EncodedSeparator),
            ("/api\\jobs", PathError::EncodedSeparator),
            ("/api/jobs%4", PathError::BadEscape),
            ("/api/jobs%zz", PathError::BadEscape),
            ("/api/jobs%00", PathError::BadCharacter),
            ("/api/jo\tbs", PathError::BadCharacter),
            ("/api/%ff%fe", PathError::BadCharacter),
            ("/api/jobs#frag", PathError::Fragment),
            ("/api/jobs/statistics;x", PathError::Semicolon),
            ("/api/jobs/statistics;jsessionid=1", PathError::Semicolon),
            ("/api/jobs;/statistics", PathError::Semicolon),
            ("/api/jobs/statistics%3Bx", PathError::Semicolon),
            ("/api/jobs/statistics%3b", PathError::Semicolon),
        ];
        for (path, want) in refused {
            assert_eq!(normalize_path(path), Err(want), "{path:?}");
        }
        // A ';' in the query string is the query's business.
        assert_eq!(
            normalize_path("/api/jobs?a=1;b=2").unwrap().query,
            "a=1;b=2"
        );
        assert_eq!(
            normalize_path(&"/a".repeat(MAX_SEGMENTS + 1)),
            Err(PathError::TooDeep)
        );
        assert_eq!(
            normalize_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
    }
}
