//! ext_authz's two messages, read and written by hand for the one method rolegate serves on
//! every proxied request. Reading: only the fields rolegate looks at (method, path, the header
//! map, the raw header list, `context_extensions`) are decoded, into one string buffer; every
//! other field (peers, TLS session, metadata, host, scheme, …) is skipped unparsed, as protobuf
//! skips unknown fields. Writing: an allowed answer is written straight from the decision's
//! shared strings, without first building the generated `CheckResponse` (up to nine headers,
//! the removal list and a `Struct` of as many `Value`s — some forty small allocations). Answers that
//! are not an allow still go through the generated types. The tests in `super::tests` decode
//! what is written here with the generated types and compare it with what they would have
//! built.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{
        DecodeContext, WireType, check_wire_type, decode_key, decode_varint, encode_varint,
        encoded_len_varint, skip_field,
    },
};

use envoy_types::ext_authz::v3::pb::CheckResponse;

use crate::authz::Allowed;

/// A stretch of [`CheckRequest::text`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

/// One name/value pair of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// `attributes.request.http.headers` (a map: the last of a repeated name wins).
    Header { name: Span, value: Span },
    /// `attributes.request.http.header_map.headers` (Envoy's `encode_raw_headers`): `None` when
    /// its `raw_value` is not UTF-8.
    Raw { name: Span, value: Option<Span> },
    /// `attributes.context_extensions` (a map).
    Context { name: Span, value: Span },
}

/// `envoy.service.auth.v3.CheckRequest`, as much of it as rolegate reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckRequest {
    /// Every string kept, back to back; the spans point into it. One allocation for all of them.
    text: String,
    /// Whether `attributes.request.http` was sent.
    http: bool,
    method: Span,
    path: Span,
    entries: Vec<Entry>,
}

/// A decode error of our own making (prost keeps its constructor to itself, deprecated).
fn error(description: &'static str) -> DecodeError {
    #[allow(deprecated)]
    DecodeError::new(description)
}

/// The content of a length-delimited field whose key has just been read.
fn delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(error("buffer underflow"));
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

/// Calls `field` for each field of the message in `buf`; fields it does not take (`Ok(false)`)
/// are skipped.
fn each_field<'a>(
    mut buf: &'a [u8],
    ctx: &DecodeContext,
    mut field: impl FnMut(u32, WireType, &mut &'a [u8]) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if !field(tag, wire_type, &mut buf)? {
            skip_field(wire_type, tag, &mut buf, ctx.clone())?;
        }
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| error("invalid string value: data is not UTF-8 encoded"))
}

impl CheckRequest {
    /// Decodes a serialized CheckRequest. Like the generated type: a string field that is not
    /// UTF-8, a truncated field or a known field with the wrong wire type is an error; a field
    /// sent twice is merged (last scalar wins, maps and lists add up).
    pub fn decode(mut buf: impl Buf) -> Result<Self, DecodeError> {
        let mut request = CheckRequest::default();
        let ctx = DecodeContext::default();
        let len = buf.remaining();
        if buf.chunk().len() >= len {
            request.merge_top(&buf.chunk()[..len], &ctx)?;
            buf.advance(len);
        } else {
            let bytes = buf.copy_to_bytes(len);
            request.merge_top(&bytes, &ctx)?;
        }
        Ok(request)
    }

    fn keep(&mut self, bytes: &[u8]) -> Result<Span, DecodeError> {
        let text = utf8(bytes)?;
        let start = self.text.len();
        self.text.push_str(text);
        Ok(Span {
            start,
            end: self.text.len(),
        })
    }

    fn text(&self, span: Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or_default()
    }

    fn merge_top(&mut self, buf: &[u8], ctx: &DecodeContext) -> Result<(), DecodeError> {
        // The strings kept are a part of the message: one reservation covers them. Envoy sends
        // a dozen headers or so: one reservation for the entries too.
        self.text.reserve(buf.len().min(64 * 1024));
        self.entries.reserve(16);
        each_field(buf, ctx, |tag, wire_type, buf| match tag {
            1 => self
                .merge_attributes(delimited(wire_type, buf)?, ctx)
                .map(|()| true),
            _ => Ok(false),
        })
    }

    /// `AttributeContext`: `request` (4) and `context_extensions` (10).
    fn merge_attributes(&mut self, buf: &[u8], ctx: &DecodeContext) -> Result<(), DecodeError> {
        each_field(buf, ctx, |tag, wire_type, buf| {
            match tag {
                4 => self.merge_request(delimited(wire_type, buf)?, ctx)?,
                10 => {
                    let (name, value) = self.map_entry(delimited(wire_type, buf)?, ctx)?;
                    self.entries.push(Entry::Context { name, value });
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// `AttributeContext.Request`: `http` (2).
    fn merge_request(&mut self, buf: &[u8], ctx: &DecodeContext) -> Result<(), DecodeError> {
        each_field(buf, ctx, |tag, wire_type, buf| match tag {
            2 => {
                self.http = true;
                self.merge_http(delimited(wire_type, buf)?, ctx)
                    .map(|()| true)
            }
            _ => Ok(false),
        })
    }

    /// `AttributeContext.HttpRequest`: `method` (2), `headers` (3), `path` (4), `header_map`
    /// (13).
    fn merge_http(&mut self, buf: &[u8], ctx: &DecodeContext) -> Result<(), DecodeError> {
        each_field(buf, ctx, |tag, wire_type, buf| {
            match tag {
                2 => self.method = self.keep(delimited(wire_type, buf)?)?,
                3 => {
                    let (name, value) = self.map_entry(delimited(wire_type, buf)?, ctx)?;
                    self.entries.push(Entry::Header { name, value });
                }
                4 => self.path = self.keep(delimited(wire_type, buf)?)?,
                13 => self.merge_header_map(delimited(wire_type, buf)?, ctx)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// `HeaderMap`: `headers` (1), each a `HeaderValue`: `key` (1), `value` (2), `raw_value`
    /// (3, bytes).
    fn merge_header_map(&mut self, buf: &[u8], ctx: &DecodeContext) -> Result<(), DecodeError> {
        each_field(buf, ctx, |tag, wire_type, buf| {
            if tag != 1 {
                return Ok(false);
            }
            let (mut name, mut value, mut raw) = (Span::default(), Span::default(), &[][..]);
            each_field(delimited(wire_type, buf)?, ctx, |tag, wire_type, buf| {
                match tag {
                    1 => name = self.keep(delimited(wire_type, buf)?)?,
                    2 => value = self.keep(delimited(wire_type, buf)?)?,
                    3 => raw = delimited(wire_type, buf)?,
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            let value = if raw.is_empty() {
                Some(value)
            } else {
                match std::str::from_utf8(raw) {
                    Ok(text) => Some(self.keep(text.as_bytes())?),
                    Err(_) => None,
                }
            };
            self.entries.push(Entry::Raw { name, value });
            Ok(true)
        })
    }

    /// A `map<string, string>` entry: `key` (1), `value` (2), each empty when absent.
    fn map_entry(&mut self, buf: &[u8], ctx: &DecodeContext) -> Result<(Span, Span), DecodeError> {
        let (mut name, mut value) = (Span::default(), Span::default());
        each_field(buf, ctx, |tag, wire_type, buf| {
            match tag {
                1 => name = self.keep(delimited(wire_type, buf)?)?,
                2 => value = self.keep(delimited(wire_type, buf)?)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok((name, value))
    }

    /// Whether `attributes.request.http` was sent.
    pub(crate) fn has_http(&self) -> bool {
        self.http
    }

    /// `attributes.request.http.method` (empty when not sent).
    pub(crate) fn method(&self) -> &str {
        self.text(self.method)
    }

    /// `attributes.request.http.path` (empty when not sent).
    pub(crate) fn path(&self) -> &str {
        self.text(self.path)
    }

    /// `headers[name]`: the last entry of that exact name, as the generated map keeps it.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.entries.iter().rev().find_map(|e| match *e {
            Entry::Header { name: n, value } if self.text(n) == name => Some(self.text(value)),
            _ => None,
        })
    }

    /// The names of the `headers` map, repeats included.
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|e| match *e {
            Entry::Header { name, .. } => Some(self.text(name)),
            _ => None,
        })
    }

    /// The `header_map` entries in order: name, and value (`None`: not UTF-8).
    pub(crate) fn raw_headers(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.entries.iter().filter_map(|e| match *e {
            Entry::Raw { name, value } => Some((self.text(name), value.map(|v| self.text(v)))),
            _ => None,
        })
    }

    /// Whether `context_extensions` has any entry.
    pub(crate) fn has_context(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Context { .. }))
    }

    /// `context_extensions[name]` (the last entry of that name).
    pub(crate) fn context(&self, name: &str) -> Option<&str> {
        self.entries.iter().rev().find_map(|e| match *e {
            Entry::Context { name: n, value } if self.text(n) == name => Some(self.text(value)),
            _ => None,
        })
    }
}

/// `envoy.service.auth.v3.CheckResponse`: an allow written field by field, anything else as the
/// generated message.
#[derive(Clone, Debug, PartialEq)]
pub enum WireResponse {
    Allowed(Allowed),
    Other(CheckResponse),
}

/// The buffer cannot take the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the answer needs {required} bytes, the buffer has room for {remaining}")]
pub struct BufferFull {
    pub(crate) required: usize,
    pub(crate) remaining: usize,
}

/// `HeaderAppendAction::OverwriteIfExistsOrAdd`: a client-sent header of the same name never
/// survives.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

/// The first byte of a field with a tag below 16: `tag << 3 | wire type`.
const fn key(tag: u8, wire_type: WireType) -> u8 {
    tag << 3 | wire_type as u8
}
const LEN: WireType = WireType::LengthDelimited;

/// The size of a length-delimited field (tag below 16) whose content is `len` bytes.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_field(buf: &mut impl BufMut, tag: u8, len: usize) {
    buf.put_u8(key(tag, LEN));
    encode_varint(len as u64, buf);
}

fn put_str(buf: &mut impl BufMut, tag: u8, s: &str) {
    put_field(buf, tag, s.len());
    buf.put_slice(s.as_bytes());
}

/// The dynamic_metadata field of an `x-rolegate-*` header.
pub(super) fn metadata_field(header: &str) -> &str {
    match header {
        "x-rolegate-key" => "key",
        "x-rolegate-user" => "user",
        "x-rolegate-team" => "team",
        "x-rolegate-project" => "project",
        "x-rolegate-scope" => "scope",
        "x-rolegate-filter-teams" => "filter_teams",
        "x-rolegate-filter-owner-keys" => "filter_owner_keys",
        "x-rolegate-filter-owner-user" => "filter_owner_user",
        "x-rolegate-revision" => "revision",
        other => other,
    }
}

/// The sizes of an allowed answer's parts, computed once for the length prefixes.
struct AllowedSizes {
    ok_response: usize,
    metadata: usize,
}

/// `HeaderValue { key, value }` → content length.
fn header_value_len(name: &str, value: &str) -> usize {
    field_len(name.len()) + field_len(value.len())
}

/// `HeaderValueOption { header, append_action }` → content length.
fn header_option_len(name: &str, value: &str) -> usize {
    field_len(header_value_len(name, value)) + 2
}

/// `Value { string_value }` → content length.
fn string_value_len(value: &str) -> usize {
    field_len(value.len())
}

/// A `Struct.fields` entry `{ key, value: Value { string_value } }` → content length.
fn metadata_entry_len(name: &str, value: &str) -> usize {
    field_len(name.len()) + field_len(string_value_len(value))
}

/// The metadata entries: one per header, and the entitlement.
fn metadata_entries(ok: &Allowed) -> impl Iterator<Item = (&str, &str)> {
    let headers = ok
        .headers
        .iter()
        .map(|(k, v)| (metadata_field(k), v.as_str()));
    let entitlement =
        (!ok.entitlement.is_empty()).then(|| ("entitlement", ok.entitlement.as_str()));
    headers.chain(entitlement)
}

impl AllowedSizes {
    fn of(ok: &Allowed) -> Self {
        let headers: usize = ok
            .headers
            .iter()
            .map(|(k, v)| field_len(header_option_len(k, v)))
            .sum();
        let remove: usize = ok.remove.iter().map(|r| field_len(r.len())).sum();
        let metadata = metadata_entries(ok)
            .map(|(k, v)| field_len(metadata_entry_len(k, v)))
            .sum();
        AllowedSizes {
            ok_response: headers + remove,
            metadata,
        }
    }

    /// `CheckResponse { status: {} (1), ok_response (3), dynamic_metadata (4) }`.
    fn total(&self) -> usize {
        field_len(0) + field_len(self.ok_response) + field_len(self.metadata)
    }
}

impl WireResponse {
    #[cfg(test)]
    /// The size of the serialized answer.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            WireResponse::Allowed(ok) => AllowedSizes::of(ok).total(),
            WireResponse::Other(message) => message.encoded_len(),
        }
    }

    /// Serializes the answer into `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), BufferFull> {
        let ok = match self {
            WireResponse::Allowed(ok) => ok,
            WireResponse::Other(message) => {
                return message.encode(buf).map_err(|e| BufferFull {
                    required: e.required_capacity(),
                    remaining: e.remaining(),
                });
            }
        };
        let sizes = AllowedSizes::of(ok);
        let required = sizes.total();
        if buf.remaining_mut() < required {
            return Err(BufferFull {
                required,
                remaining: buf.remaining_mut(),
            });
        }
        // status (1): google.rpc.Status with code OK, every field at its default.
        put_field(buf, 1, 0);
        // ok_response (3): OkHttpResponse { headers (2), headers_to_remove (5) }.
        put_field(buf, 3, sizes.ok_response);
        for (name, value) in &ok.headers {
            put_field(buf, 2, header_option_len(name, value));
            put_field(buf, 1, header_value_len(name, value));
            put_str(buf, 1, name);
            put_str(buf, 2, value);
            buf.put_u8(key(3, WireType::Varint));
            encode_varint(OVERWRITE_IF_EXISTS_OR_ADD, buf);
        }
        for name in &ok.remove {
            put_str(buf, 5, name);
        }
        // dynamic_metadata (4): Struct { fields (1): map<string, Value { string_value (3) }> }.
        put_field(buf, 4, sizes.metadata);
        for (name, value) in metadata_entries(ok) {
            put_field(buf, 1, metadata_entry_len(name, value));
            put_str(buf, 1, name);
            put_field(buf, 2, string_value_len(value));
            put_str(buf, 3, value);
        }
        Ok(())
    }
}
