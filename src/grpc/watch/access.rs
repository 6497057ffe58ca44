//! Who may watch: the key a stream presents, and whether it may still see the next revision.

use super::*;

/// The key a stream was opened with, kept so that its grant can be checked again as the state
/// changes. It holds the key itself, to authenticate it again when its cache entry is rebuilt;
/// it is never logged (only the prefix is), and has no `Debug`.
pub(super) struct Credential {
    pub(super) key: String,
    /// The cache entry the grant was last decided on.
    pub(super) entry: Arc<KeyEntry>,
    pub(super) secrets: bool,
    /// Unix seconds; from then on the same entry may answer otherwise (an expiry).
    pub(super) recheck_at: i64,
}

impl Credential {
    /// Authenticates `key` and decides whether it may Watch (with secrets when asked for).
    pub(super) fn establish(
        state: &State,
        key: String,
        secrets: bool,
        now: i64,
    ) -> Result<Self, WatchDenied> {
        let parsed = ApiKey::parse(&key).map_err(|e| WatchDenied::Unauthenticated(e.into()))?;
        let entry = authenticated(state.lookup(parsed.prefix), &parsed, now)?;
        let access = watch_access(&entry, secrets, now)?;
        Ok(Credential {
            entry,
            secrets: access.secrets,
            recheck_at: access.recheck_at,
            key,
        })
    }

    /// Checks the grant again at `now`: one cache lookup, and while the key's entry is the one
    /// already decided on and no expiry has passed, nothing more (entries are immutable: any
    /// change to the key, its requestor, their teams or the roles builds new ones). Otherwise
    /// the key is authenticated and decided afresh.
    pub(super) fn recheck(&mut self, state: &State, now: i64) -> Result<(), WatchDenied> {
        let current = state.lookup(&self.entry.spec.prefix);
        if current
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
            && now < self.recheck_at
        {
            return Ok(());
        }
        let parsed =
            ApiKey::parse(&self.key).map_err(|e| WatchDenied::Unauthenticated(e.into()))?;
        let entry = authenticated(current, &parsed, now)?;
        let access = watch_access(&entry, self.secrets, now)?;
        self.entry = entry;
        self.recheck_at = access.recheck_at;
        Ok(())
    }

    pub(super) fn prefix(&self) -> &str {
        &self.entry.spec.prefix
    }
}

pub(super) fn authenticated(
    entry: Option<Arc<KeyEntry>>,
    key: &ApiKey<'_>,
    now: i64,
) -> Result<Arc<KeyEntry>, WatchDenied> {
    authenticate(entry.as_deref(), key, now).map_err(WatchDenied::Unauthenticated)?;
    Ok(entry.expect("authenticate accepts only a present entry"))
}

/// The caller's key: from `authorization: ApiKey <key>` metadata (as for the Admin API) or from
/// the request's `api_key`; both may be given only when they are the same key.
pub(super) fn presented_key(metadata: &MetadataMap, api_key: &str) -> Result<String, WatchRefused> {
    let from_metadata = match metadata.get("authorization") {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| WatchRefused::BadAuthorization)?;
            let key = value
                .strip_prefix("ApiKey ")
                .ok_or(WatchRefused::BadAuthorization)?;
            Some(key.trim())
        }
    };
    match (from_metadata, api_key) {
        (None, "") => Err(WatchRefused::NoKey),
        (Some(key), "") => Ok(key.to_owned()),
        (None, key) => Ok(key.to_owned()),
        (Some(a), b) if a == b => Ok(b.to_owned()),
        (Some(_), _) => Err(WatchRefused::TwoKeys),
    }
}
