//! Denials: the HTTP status, the platform's JSON error body, and the one 401 every proxied
//! request without a valid key gets.

use crate::domain::Reason;

use super::{Authz, UNAUTHENTICATED_MESSAGE};

/// A denied request: the HTTP answer for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub(crate) status: u16,
    /// `www-authenticate` value for 401s.
    pub(crate) www_authenticate: Option<String>,
    /// The platform's error body: `{"statusCode", "status", "message"}`.
    pub(crate) body: String,
    /// Why, for logs and metrics.
    pub(crate) reason: &'static str,
}

impl Denied {
    /// A request that cannot be judged as sent (HTTP 400).
    pub(crate) fn bad_request(message: &str) -> Self {
        Denied::new(400, "bad_request", message)
    }

    /// A 400 for a request that carries headers the proxy in front cannot remove and that read
    /// as rolegate's own.
    pub(crate) fn forged_header(message: &str) -> Self {
        Denied::new(400, "forged_header", message)
    }

    pub(super) fn new(status: u16, reason: &'static str, message: &str) -> Self {
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

impl Authz {
    /// A 401 for a proxied request: always the same body; `reason` and the presented key's
    /// prefix (never its secret) go to the log — at debug level when no credential was sent at
    /// all (browsers, probes), at info otherwise.
    pub(super) fn unauthenticated(&self, reason: &'static str, prefix: Option<&str>) -> Denied {
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

    pub(super) fn denial(&self, reason: Reason, entitlement: &str) -> Denied {
        if reason.is_unauthenticated() {
            return self.unauthenticated(reason.as_str(), None);
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
        Denied::new(403, reason.as_str(), &message)
    }
}

/// The platform's error body, `{"message": …, "status": …, "statusCode": …}`, written in one
/// buffer; the keys in the order `serde_json::json!` gives them (sorted), so the bytes are the
/// same as when it was built as a JSON value.
pub(super) fn error_body(status: u16, text: &str, message: &str) -> String {
    use std::io::Write;
    let mut body = Vec::with_capacity(message.len() + 64);
    body.extend_from_slice(b"{\"message\":");
    // Writing a &str into a Vec cannot fail; the string is escaped as JSON.
    let _ = serde_json::to_writer(&mut body, message);
    let _ = write!(body, ",\"status\":\"{text}\",\"statusCode\":{status}}}");
    String::from_utf8(body).unwrap_or_default()
}
