//! W3C trace context: the `traceparent` header (`00-<trace id>-<parent id>-<flags>`) of a Check,
//! CheckBatch, ext_authz or HTTP auth request, carried into the decision log and rolegate's spans.

use std::fmt;

/// A parsed `traceparent`: the trace id and the caller's span id, as lower-case hex, and
/// whether the caller sampled the trace (the flags' low bit).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: [u8; 32],
    span_id: [u8; 16],
    sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` when it is not a valid one (wrong length or
    /// characters, version `ff`, an all-zero id). A later version may append fields after the
    /// flags, which are ignored.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = &b[0..2];
        if !is_hex(version) || version == b"ff" {
            return None;
        }
        if version == b"00" && b.len() != 55 {
            return None;
        }
        if b.len() > 55 && b[55] != b'-' {
            return None;
        }
        let (trace, span, flags) = (&b[3..35], &b[36..52], &b[53..55]);
        if !is_hex(trace) || !is_hex(span) || !is_hex(flags) {
            return None;
        }
        if trace.iter().all(|c| *c == b'0') || span.iter().all(|c| *c == b'0') {
            return None;
        }
        let mut out = TraceContext {
            trace_id: [0; 32],
            span_id: [0; 16],
            // Two hex digits, checked above; only the low bit is defined.
            sampled: matches!(
                flags[1],
                b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'
            ),
        };
        out.trace_id.copy_from_slice(trace);
        out.span_id.copy_from_slice(span);
        Some(out)
    }

    pub(crate) fn trace_id(&self) -> &str {
        // Checked to be ASCII hex when parsed.
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    pub(crate) fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or_default()
    }

    /// Whether the caller records this trace (`sampled` flag): only then does rolegate export a
    /// span of its own for the request (`--otlp-endpoint`).
    pub(crate) fn sampled(&self) -> bool {
        self.sampled
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.trace_id(), self.span_id())
    }
}

/// Lower-case hex only, as the specification requires.
fn is_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let t = TraceContext::parse(GOOD).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id(), "00f067aa0ba902b7");
        assert!(t.sampled());
        for (flags, sampled) in [("00", false), ("02", false), ("03", true), ("ff", true)] {
            let t = TraceContext::parse(&format!("{}{flags}", &GOOD[..53])).unwrap();
            assert_eq!(t.sampled(), sampled, "{flags}");
        }
        // A later version may carry more fields.
        assert!(TraceContext::parse(&format!("01{}-extra", &GOOD[2..])).is_some());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            &GOOD[..54],
            &format!("{GOOD}0"),
            &format!("{GOOD}-x"),
            &GOOD.replace("4bf9", "4BF9"),
            &GOOD.replacen("00-", "ff-", 1),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }
}
