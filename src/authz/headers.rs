//! Headers both ways: the request's headers as any transport presents them, and the values of
//! the headers rolegate sets on an allowed request.

use std::{collections::HashMap, ops::Deref, sync::Arc};

use compact_str::CompactString;

use super::HEADER_PREFIX;

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
pub(crate) fn header_reads_as(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| fold_header_byte(a) == fold_header_byte(b))
}

/// Whether a header `name`, read case-insensitively with `_` as `-`, is one of rolegate's
/// `x-rolegate-*` headers or `credential` (lower case): a client must never get such a header
/// to the upstream, where a server that folds names this way would take it for rolegate's.
pub(crate) fn impersonates(name: &str, credential: &str) -> bool {
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

/// The value of a header rolegate sets. Most values are already in the cache entry or the
/// route map as `Arc<str>`: sharing them, rather than copying each into a new `String`, keeps
/// an allowed answer down to a few allocations (ext_authz answers every request of the mesh).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderText {
    Static(&'static str),
    Shared(Arc<str>),
    /// A key prefix, held inline as the state holds it.
    Inline(CompactString),
    Owned(String),
    /// A number, written in place (the revision).
    Number(Digits),
}

impl HeaderText {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            HeaderText::Static(s) => s,
            HeaderText::Shared(s) => s,
            HeaderText::Inline(s) => s,
            HeaderText::Owned(s) => s,
            HeaderText::Number(d) => d.as_str(),
        }
    }

    /// The items joined with `,`: shared when there is only one, as is usual.
    pub(super) fn joined<'i, T>(mut items: impl Iterator<Item = &'i T>) -> HeaderText
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
pub(crate) struct Digits {
    buf: [u8; 20],
    start: u8,
}

impl Digits {
    pub(crate) fn new(mut n: u64) -> Self {
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

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits are ever written, so this never fails.
        std::str::from_utf8(&self.buf[usize::from(self.start)..]).unwrap_or("0")
    }
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
