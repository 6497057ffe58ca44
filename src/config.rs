//! The server's configuration, as given by `rolegate serve` flags (or their environment
//! variables).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    listen::ListenAddr,
    origin::{OriginConfig, embedded::Bootstrap},
    tls::client::ClientTls,
};

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `rolegate serve`: run the sidecar.
#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// The policy file to serve; it is watched and reloaded when it changes. The file is then
    /// the source of truth and Admin writes are refused.
    #[arg(long, env = "ROLEGATE_POLICY", conflicts_with_all = ["data_dir", "upstream", "etcd_endpoints"])]
    pub(crate) policy: Option<PathBuf>,

    /// The directory of the embedded durable store (writable through the Admin API). Used, with
    /// the default directory, when none of --policy, --upstream, --etcd-endpoints is given.
    #[arg(long, env = "ROLEGATE_DATA_DIR", conflicts_with_all = ["upstream", "etcd_endpoints"])]
    pub(crate) data_dir: Option<PathBuf>,

    /// On the first start on an empty store: the SHA-256 (hex) of the bootstrap SYSTEM_OWNER
    /// key's secret. Without it a key is generated and printed once.
    #[arg(long, env = "ROLEGATE_BOOTSTRAP_KEY_SHA256")]
    pub bootstrap_key_sha256: Option<String>,

    /// On the first start on an empty store: a policy file whose state (teams, users, projects,
    /// keys, roles, routes) the store starts with, beside the bootstrap key. Ignored once the
    /// store holds a revision.
    #[arg(long, env = "ROLEGATE_SEED", conflicts_with_all = ["policy", "upstream"])]
    pub seed: Option<PathBuf>,

    /// The prefix of the bootstrap SYSTEM_OWNER key.
    #[arg(
        long,
        env = "ROLEGATE_BOOTSTRAP_KEY_PREFIX",
        default_value = "RolegateBootstrap01"
    )]
    pub(crate) bootstrap_key_prefix: String,

    /// Follow mode: serve what the rolegate hub at this URL serves, taken from its Watch; no
    /// origin of its own. http://HOST:PORT, or https://HOST:PORT for TLS (see --upstream-ca).
    /// Several hubs, comma-separated: the first is used, the next when it is lost; the follower
    /// resumes there when the hub serves the same history (hubs on one etcd).
    #[arg(
        long,
        env = "ROLEGATE_UPSTREAM",
        requires = "upstream_key",
        group = "remote"
    )]
    pub(crate) upstream: Option<String>,

    /// The key presented to the hub in follow mode: a project key with the FOLLOWER system role
    /// (Watch needs the reads at ALL scope, the secret hashes keys.replicate at ALL). Never
    /// logged.
    #[arg(long, env = "ROLEGATE_UPSTREAM_KEY", hide_env_values = true)]
    pub upstream_key: Option<String>,

    #[command(flatten)]
    pub upstream_tls: crate::tls::client::UpstreamTlsArgs,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// How many revisions the Watch change log keeps.
    #[arg(long, env = "ROLEGATE_WATCH_LOG_REVISIONS", default_value_t = 10_000)]
    pub(crate) watch_log_revisions: usize,

    /// How many revisions the administration history keeps (who made each revision, listed
    /// by `rolegate history`); older entries are pruned as new ones are written. The embedded
    /// store and etcd keep it; in etcd the count is of etcd revisions.
    #[arg(long, env = "ROLEGATE_HISTORY_REVISIONS", default_value_t = crate::origin::DEFAULT_HISTORY_REVISIONS, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub history_revisions: u64,

    /// How many bytes (estimated) the Watch change log keeps.
    #[arg(long, env = "ROLEGATE_WATCH_LOG_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) watch_log_bytes: usize,

    /// Events one Watch stream may queue towards a client that is not reading.
    #[arg(long, env = "ROLEGATE_WATCH_BUFFER", default_value_t = 1024)]
    pub(crate) watch_buffer: usize,

    /// The most Watch streams served at once (every follower and subscriber holds one); more
    /// are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ROLEGATE_WATCH_MAX_SUBSCRIBERS", default_value_t = crate::state::changelog::DEFAULT_MAX_SUBSCRIBERS)]
    pub watch_max_subscribers: usize,

    /// Address of the gRPC port (Authorizer, ext_authz, Admin, health, reflection): IP:PORT, or
    /// unix:PATH for a Unix domain socket (mode 0660; no TLS).
    #[arg(long, env = "ROLEGATE_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub(crate) grpc_listen: ListenAddr,

    /// Address of the HTTP port (the auth endpoint, /healthz, /readyz, /status): IP:PORT, or
    /// unix:PATH for a Unix domain socket (mode 0660; no TLS).
    #[arg(long, env = "ROLEGATE_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) http_listen: ListenAddr,

    /// How often the policy file is checked for changes.
    #[arg(long, env = "ROLEGATE_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,

    /// The largest gRPC request accepted, in bytes; larger ones are rejected.
    #[arg(long, env = "ROLEGATE_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// The most checks one CheckBatch may hold.
    #[arg(long, env = "ROLEGATE_MAX_BATCH", default_value_t = 1000)]
    pub(crate) max_batch: usize,

    /// The longest a check waits for its min_revision (also bounded by the call's deadline).
    #[arg(long, env = "ROLEGATE_MAX_REVISION_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_revision_wait: Duration,

    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "ROLEGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_grace: Duration,

    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "ROLEGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub tls: crate::tls::server::ServerTlsArgs,

    #[command(flatten)]
    pub limits: crate::listen::ConnLimits,

    #[command(flatten)]
    pub authz: crate::authz::AuthzConfig,

    /// Follow mode and etcd: once the hub (or etcd) has not been heard from for this long (no
    /// event, no bookmark or progress notification, no Watch accepted), report NOT_SERVING on
    /// gRPC health and 503 on /readyz until it is again (Check keeps answering from the last
    /// state). At least 3s: an idle hub sends a bookmark every second, etcd is asked for progress
    /// every second. Off by default: the last state serves however old.
    #[arg(
        long,
        env = "ROLEGATE_MAX_STALENESS",
        requires = "remote",
        conflicts_with_all = ["policy", "data_dir"],
        value_parser = parse_max_staleness
    )]
    pub max_staleness: Option<Duration>,

    /// An extra HTTP listener serving only /healthz and /readyz, for probes that must reach the
    /// pod IP while --http-listen (the auth endpoint, /status) stays on loopback.
    #[arg(long, env = "ROLEGATE_PROBE_LISTEN")]
    pub(crate) probe_listen: Option<SocketAddr>,

    /// Write one JSON object per decision (Check, CheckBatch, ext_authz, the HTTP auth endpoint)
    /// to this file, appended to and reopened on SIGHUP, or to standard output with `stdout`.
    /// Off by default. Never holds a secret: keys appear by their prefix only.
    #[arg(long, env = "ROLEGATE_DECISION_LOG", value_name = "PATH|stdout")]
    pub decision_log: Option<String>,

    /// Only denied decisions go to the decision log.
    #[arg(
        long,
        env = "ROLEGATE_DECISION_LOG_DENIED_ONLY",
        requires = "decision_log"
    )]
    pub decision_log_denied_only: bool,

    /// The share of allowed decisions that go to the decision log, 0 to 1 (denials always do).
    #[arg(
        long,
        env = "ROLEGATE_DECISION_LOG_SAMPLE_ALLOWED",
        value_name = "RATE",
        default_value_t = 1.0,
        requires = "decision_log",
        value_parser = parse_rate
    )]
    pub decision_log_sample_allowed: f64,

    /// Export rolegate's own spans over OTLP/gRPC to this collector (`http://HOST:4317`, or
    /// `https://` checked against the system's roots). Only a request whose W3C `traceparent`
    /// is sampled gets a span, a child of the caller's; the others cost nothing. Off by default.
    #[arg(
        long,
        env = "ROLEGATE_OTLP_ENDPOINT",
        value_name = "URL",
        value_parser = crate::telemetry::otlp::parse_endpoint
    )]
    pub otlp_endpoint: Option<String>,
}

/// A share between 0 and 1.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("a number from 0 to 1 (0.1: one in ten)".into()),
    }
}

/// `--max-staleness`: a duration of at least [`MIN_MAX_STALENESS`].
///
/// [`MIN_MAX_STALENESS`]: crate::origin::upstream::MIN_MAX_STALENESS
fn parse_max_staleness(text: &str) -> Result<Duration, String> {
    use crate::origin::upstream::MIN_MAX_STALENESS;
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < MIN_MAX_STALENESS {
        return Err(format!(
            "at least {} (an idle hub is heard from once a second, by its bookmarks)",
            humantime::format_duration(MIN_MAX_STALENESS)
        ));
    }
    Ok(d)
}

impl ServeConfig {
    /// A configuration for `policy` with every other setting at its default (for tests and
    /// embedding).
    pub fn for_policy(policy: impl Into<PathBuf>) -> Self {
        ServeConfig {
            policy: Some(policy.into()),
            data_dir: None,
            bootstrap_key_sha256: None,
            bootstrap_key_prefix: "RolegateBootstrap01".into(),
            seed: None,
            upstream: None,
            upstream_key: None,
            upstream_tls: Default::default(),
            etcd: Default::default(),
            watch_log_revisions: 10_000,
            history_revisions: crate::origin::DEFAULT_HISTORY_REVISIONS,
            watch_log_bytes: 64 * 1024 * 1024,
            watch_buffer: 1024,
            watch_max_subscribers: crate::state::changelog::DEFAULT_MAX_SUBSCRIBERS,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)).into(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)).into(),
            reload_interval: Duration::from_secs(1),
            max_message_bytes: 1024 * 1024,
            max_batch: 1000,
            max_revision_wait: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            tls: Default::default(),
            limits: Default::default(),
            authz: crate::authz::AuthzConfig::default(),
            max_staleness: None,
            probe_listen: None,
            decision_log: None,
            decision_log_denied_only: false,
            decision_log_sample_allowed: 1.0,
            otlp_endpoint: None,
        }
    }

    /// A configuration for the embedded store in `dir` with every other setting at its default.
    pub fn for_data_dir(dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            policy: None,
            data_dir: Some(dir.into()),
            ..Self::for_policy("")
        }
    }

    /// A follower of the hub at `upstream` (an `http://` URL), presenting `key`.
    pub fn for_upstream(upstream: impl Into<String>, key: impl Into<String>) -> Self {
        ServeConfig {
            policy: None,
            upstream: Some(upstream.into()),
            upstream_key: Some(key.into()),
            ..Self::for_policy("")
        }
    }

    /// The etcd origin on the cluster at `endpoints` (comma-separated client URLs), under
    /// `prefix`, with every other setting at its default.
    pub fn for_etcd(endpoints: &str, prefix: &str) -> Self {
        ServeConfig {
            policy: None,
            etcd: EtcdArgs {
                etcd_endpoints: Some(endpoints.to_owned()),
                etcd_prefix: prefix.to_owned(),
                ..Default::default()
            },
            ..Self::for_policy("")
        }
    }

    /// The data directory to use when serving the embedded store.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// What the origin is configured with; [`crate::origin::start`] decides from it which
    /// origin serves.
    pub(crate) fn origin(&self) -> OriginConfig {
        OriginConfig {
            policy: self.policy.clone(),
            reload_interval: self.reload_interval,
            data_dir: self.data_dir(),
            bootstrap: Bootstrap {
                prefix: self.bootstrap_key_prefix.clone(),
                secret_sha256: self.bootstrap_key_sha256.clone(),
                seed: self.seed.clone(),
            },
            upstream: self.upstream.clone(),
            upstream_key: self.upstream_key.clone(),
            upstream_tls: ClientTls::from(&self.upstream_tls),
            max_staleness: self.max_staleness,
            etcd: self.etcd.config(self.max_staleness, self.history_revisions),
            history_revisions: self.history_revisions,
        }
    }

    /// The decision log's settings, when one is asked for.
    pub(crate) fn decision_log(&self) -> Option<crate::telemetry::DecisionLogConfig> {
        self.decision_log
            .as_ref()
            .map(|target| crate::telemetry::DecisionLogConfig {
                target: target.clone(),
                denied_only: self.decision_log_denied_only,
                sample_allowed: self.decision_log_sample_allowed,
            })
    }

    /// The Watch change log's bounds.
    pub(crate) fn log_limits(&self) -> crate::state::changelog::LogLimits {
        crate::state::changelog::LogLimits {
            max_revisions: self.watch_log_revisions.max(1),
            max_bytes: self.watch_log_bytes,
            subscriber_buffer: self.watch_buffer.max(1),
            max_subscribers: self.watch_max_subscribers,
        }
    }
}

/// The embedded store's directory when neither --policy nor --data-dir is given (relative to
/// the working directory, so that a container's volume mount decides where it lives).
pub(crate) const DEFAULT_DATA_DIR: &str = "rolegate-data";

/// `serve`'s etcd flags: the etcd origin, shared by every instance pointed at the same cluster
/// and prefix.
#[derive(Clone, Debug, Args)]
pub struct EtcdArgs {
    /// Serve the state kept in this etcd cluster (comma-separated client URLs, http:// or
    /// https://), shared with every instance on the same cluster and prefix; writable through the
    /// Admin API.
    #[arg(long, env = "ROLEGATE_ETCD_ENDPOINTS", group = "remote", conflicts_with_all = ["policy", "data_dir"])]
    pub etcd_endpoints: Option<String>,

    /// The prefix of every etcd key of the state.
    #[arg(
        long,
        env = "ROLEGATE_ETCD_PREFIX",
        default_value = "/rolegate/",
        requires = "etcd_endpoints"
    )]
    pub etcd_prefix: String,

    /// The etcd user, when etcd's authentication is on.
    #[arg(long, env = "ROLEGATE_ETCD_USER", requires_all = ["etcd_endpoints", "etcd_password"])]
    pub etcd_user: Option<String>,

    /// The etcd user's password. Never logged.
    #[arg(
        long,
        env = "ROLEGATE_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,

    /// With https:// endpoints: PEM file of the CA certificate(s) that signed etcd's
    /// certificates. Without it, the system's root certificates are used.
    #[arg(long, env = "ROLEGATE_ETCD_CA", requires = "etcd_endpoints")]
    pub etcd_ca: Option<PathBuf>,

    /// With https:// endpoints: PEM file of the client certificate presented to etcd.
    #[arg(long, env = "ROLEGATE_ETCD_CERT", requires_all = ["etcd_endpoints", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,

    /// The private key of --etcd-cert (PEM).
    #[arg(long, env = "ROLEGATE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// The longest a connection to one etcd member may take.
    #[arg(long, env = "ROLEGATE_ETCD_DIAL_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub etcd_dial_timeout: Duration,

    /// The longest one etcd call may take (a read, a write's transaction).
    #[arg(long, env = "ROLEGATE_ETCD_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub etcd_request_timeout: Duration,
}

impl Default for EtcdArgs {
    fn default() -> Self {
        EtcdArgs {
            etcd_endpoints: None,
            etcd_prefix: "/rolegate/".into(),
            etcd_user: None,
            etcd_password: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_dial_timeout: Duration::from_secs(3),
            etcd_request_timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdArgs {
    /// The etcd origin's configuration, when `--etcd-endpoints` is given.
    fn config(
        &self,
        max_staleness: Option<Duration>,
        keep_history: u64,
    ) -> Option<crate::origin::etcd::EtcdConfig> {
        let endpoints = self.etcd_endpoints.as_deref()?;
        Some(crate::origin::etcd::EtcdConfig {
            connect: crate::origin::etcd::EtcdConnect {
                endpoints: endpoints
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect(),
                tls: ClientTls {
                    ca: self.etcd_ca.clone(),
                    cert: self.etcd_cert.clone(),
                    key: self.etcd_key.clone(),
                },
                user: self
                    .etcd_user
                    .clone()
                    .map(|u| (u, self.etcd_password.clone().unwrap_or_default())),
                dial_timeout: self.etcd_dial_timeout,
                request_timeout: self.etcd_request_timeout,
            },
            prefix: self.etcd_prefix.clone(),
            max_staleness,
            keep_history,
        })
    }
}
