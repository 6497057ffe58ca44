//! The `rolegate serve` flags of the proxy decision path.

/// How proxied requests carry their credential and what happens around the decision
/// (`rolegate serve` flags for Envoy ext_authz and the HTTP auth endpoint).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct AuthzConfig {
    /// The request header that carries the credential (ext_authz and the auth endpoint).
    #[arg(
        long = "authz-header",
        env = "ROLEGATE_AUTHZ_HEADER",
        default_value = "authorization",
        value_parser = lower_case_header
    )]
    pub(crate) credential_header: String,
    /// The scheme before the key in that header, compared case-insensitively.
    #[arg(
        long = "authz-scheme",
        env = "ROLEGATE_AUTHZ_SCHEME",
        default_value = "ApiKey"
    )]
    pub(crate) scheme: String,
    /// Keep the credential header on allowed requests (by default it is removed before the
    /// request goes upstream).
    #[arg(long = "authz-keep-credential", env = "ROLEGATE_AUTHZ_KEEP_CREDENTIAL")]
    pub(crate) keep_credential: bool,
    /// Let requests that no route matches through, without identity headers (by default they
    /// are denied with 403).
    #[arg(long = "authz-allow-unmatched", env = "ROLEGATE_AUTHZ_ALLOW_UNMATCHED")]
    pub(crate) allow_unmatched: bool,
    /// The upstream routes paths exactly as the route map does (case-sensitive, no `.json`
    /// format suffix): accept a parameter whose value reads like a literal route segment beside
    /// it (`/api/jobs/STATISTICS`, `/api/jobs/statistics.json` as `/api/jobs/{id}`), which is
    /// refused (400) by default.
    #[arg(long = "exact-upstream-paths", env = "ROLEGATE_EXACT_UPSTREAM_PATHS")]
    pub exact_upstream_paths: bool,
}

fn lower_case_header(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("{name:?} is not a header name ([A-Za-z0-9-]+)"));
    }
    Ok(name.to_ascii_lowercase())
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            credential_header: "authorization".into(),
            scheme: "ApiKey".into(),
            keep_credential: false,
            allow_unmatched: false,
            exact_upstream_paths: false,
        }
    }
}
