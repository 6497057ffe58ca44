//! Which origin serves, decided in one place from the configuration, and started.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    origin::{
        Origin,
        embedded::{Bootstrap, EmbeddedOrigin, StoreError},
        etcd::{EtcdConfig, EtcdOrigin, EtcdStartError},
        policy_file::{PolicyError, PolicyFileOrigin},
        upstream::{Dial, Hub, UpstreamError, UpstreamOrigin},
    },
    state::State,
    tls::client::ClientTls,
};

/// What the origins are configured with (`rolegate serve`'s flags that concern them).
#[derive(Clone, Debug)]
pub(crate) struct OriginConfig {
    /// `--policy`: serve this file.
    pub(crate) policy: Option<PathBuf>,
    /// How often the policy file is checked for changes.
    pub(crate) reload_interval: Duration,
    /// `--data-dir` (or its default): the embedded store, when neither a policy file nor a hub
    /// is given.
    pub(crate) data_dir: PathBuf,
    /// The bootstrap key of a new store.
    pub(crate) bootstrap: Bootstrap,
    /// `--upstream`: follow this hub, or these (comma-separated), failing over between them.
    pub(crate) upstream: Option<String>,
    /// The key presented to the hub.
    pub(crate) upstream_key: Option<String>,
    /// TLS towards the hub.
    pub(crate) upstream_tls: ClientTls,
    /// `--max-staleness`: how long the hub may go unheard before the follower is not ready.
    pub(crate) max_staleness: Option<Duration>,
    /// `--etcd-endpoints` and the other etcd flags: serve the state kept in etcd.
    pub(crate) etcd: Option<EtcdConfig>,
    /// `--history-revisions`: how many revisions the administration history keeps.
    pub(crate) history_revisions: u64,
}

/// Why the origin could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("the policy file cannot be loaded:\n{0}")]
    Policy(#[from] PolicyError),
    #[error("the embedded store cannot be opened: {0}")]
    Store(#[from] StoreError),
    #[error("follow mode: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdStartError),
    #[error("the origin's start failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Starts the origin the configuration names, feeding `state`: a hub to follow (reached with
/// `dial`), else etcd, else a policy file, else the embedded store. Its state is loaded when this returns,
/// except a follower's, which arrives from the hub once its background task runs
/// ([`Origin::run`]).
pub(crate) async fn start<H: Hub>(
    config: OriginConfig,
    state: Arc<State>,
    dial: Dial<H>,
) -> Result<Arc<dyn Origin>, StartError> {
    let origin: Arc<dyn Origin> = if let Some(hub) = &config.upstream {
        follow(hub, &config, state.clone(), dial)?
    } else if let Some(etcd) = &config.etcd {
        open_etcd(etcd, &config, state.clone()).await?
    } else if let Some(path) = &config.policy {
        let (path, state) = (path.clone(), state.clone());
        let interval = config.reload_interval;
        tokio::task::spawn_blocking(move || PolicyFileOrigin::start(path, interval, state))
            .await??
    } else {
        open_store(&config, state.clone()).await?
    };
    tracing::info!(
        origin = origin.kind().name(),
        revision = state.revision(),
        keys = state.counts().keys,
        "origin started"
    );
    Ok(origin)
}

/// A follower of the hubs `urls` (comma-separated), the first first.
fn follow<H: Hub>(
    urls: &str,
    config: &OriginConfig,
    state: Arc<State>,
    dial: Dial<H>,
) -> Result<Arc<dyn Origin>, UpstreamError> {
    let key = config.upstream_key.clone().unwrap_or_default();
    let mut hubs = Vec::new();
    for url in urls.split(',').map(str::trim) {
        if url.is_empty() {
            return Err(UpstreamError::BadUrl {
                url: urls.to_owned(),
                message: "an empty hub address in the list".into(),
            });
        }
        hubs.push(dial(url, key.clone(), config.upstream_tls.clone())?);
    }
    let mut hubs = hubs.into_iter();
    let first = hubs.next().ok_or_else(|| UpstreamError::BadUrl {
        url: urls.to_owned(),
        message: "no hub address".into(),
    })?;
    tracing::info!(hub = %first.address(), others = hubs.len(), "follow mode: the state comes from the hub's Watch");
    Ok(UpstreamOrigin::bounded(
        first,
        hubs.collect(),
        state,
        config.max_staleness,
    ))
}

/// The etcd origin: bootstraps an empty prefix (printing a generated key once), then reads the
/// state.
async fn open_etcd(
    etcd: &EtcdConfig,
    config: &OriginConfig,
    state: Arc<State>,
) -> Result<Arc<dyn Origin>, StartError> {
    let started = EtcdOrigin::start(etcd.clone(), state, &config.bootstrap).await?;
    if let Some(key) = &started.bootstrap_key {
        // Printed once, to the terminal only (not through the log pipeline); only its SHA-256
        // is stored.
        println!("bootstrap SYSTEM_OWNER key (shown once, store it now): {key}");
    }
    Ok(started.origin)
}

/// The embedded store in the configured data directory, made (with its bootstrap key) when new.
async fn open_store(
    config: &OriginConfig,
    state: Arc<State>,
) -> Result<Arc<dyn Origin>, StartError> {
    let (dir, bootstrap) = (config.data_dir.clone(), config.bootstrap.clone());
    let keep_history = config.history_revisions;
    let started = tokio::task::spawn_blocking(move || {
        EmbeddedOrigin::start_keeping(&dir, state, &bootstrap, keep_history)
    })
    .await??;
    if let Some(key) = &started.bootstrap_key {
        // Printed once, to the terminal only (not through the log pipeline); only its SHA-256
        // is stored.
        println!("bootstrap SYSTEM_OWNER key (shown once, store it now): {key}");
    }
    tracing::info!(data_dir = %config.data_dir.display(), "the embedded store is open");
    Ok(started.origin)
}
