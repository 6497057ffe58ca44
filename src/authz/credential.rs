//! The credential stage: the key from the credential header, authenticated against the state.

use std::sync::Arc;

use crate::domain::{ApiKey, KeyEntry, Reason, authenticate};

use super::{
    Authz,
    denial::Denied,
    headers::{Header, RequestHeaders},
};

impl Authz {
    /// Reads the credential and authenticates its key: the key and its entry, or a 401 that
    /// says only that a valid key is required (the reason goes to the log).
    pub(super) fn authenticate<'h, H: RequestHeaders + ?Sized>(
        &self,
        headers: &'h H,
        now: i64,
    ) -> Result<(ApiKey<'h>, Arc<KeyEntry>), Denied> {
        let presented = self.credential(headers)?;
        let key = ApiKey::parse(presented)
            .map_err(|_| self.unauthenticated(Reason::MalformedKey.as_str(), None))?;
        let entry = self.state.lookup(key.prefix);
        match (authenticate(entry.as_deref(), &key, now), entry) {
            (Ok(()), Some(entry)) => Ok((key, entry)),
            (Err(reason), _) => Err(self.unauthenticated(reason.as_str(), Some(key.prefix))),
            // `authenticate` accepts only a key it found.
            (Ok(()), None) => {
                Err(self.unauthenticated(Reason::UnknownKey.as_str(), Some(key.prefix)))
            }
        }
    }

    /// The prefix of the key in the credential header, if one can be read, without logging
    /// anything (for the decision log of a request whose key was refused).
    pub(super) fn presented_prefix<H: RequestHeaders + ?Sized>(
        &self,
        headers: &H,
    ) -> Option<compact_str::CompactString> {
        let Header::One(value) = headers.header(&self.config.credential_header) else {
            return None;
        };
        let (_, key) = value.split_once(' ')?;
        ApiKey::parse(key).ok().map(|k| k.prefix.into())
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
}
