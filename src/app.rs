//! Wires a server together: `run(config, listeners, shutdown)` loads the origin, serves gRPC and
//! HTTP on the given listeners, and drains gracefully when `shutdown` resolves.

use std::{
    future::Future,
    sync::{Arc, Mutex, atomic::Ordering},
};

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::{
    authz::Authz,
    config::ServeConfig,
    grpc::admin::{AdminOrigin, AdminService},
    grpc::pb::admin_server::AdminServer,
    grpc::routes::RouteSource,
    grpc::{
        AuthorizerService,
        authorizer::AuthorizerLimits,
        ext_authz::ExtAuthzService,
        pb::{self, authorizer_server::AuthorizerServer},
    },
    http::{self, Health},
    origin::{
        embedded::{Bootstrap, EmbeddedOrigin, OriginError},
        policy_file::{PolicyError, PolicyFileOrigin, ReloadStatus},
        upstream::UpstreamError,
    },
    state::{State, unix_now},
    tls::{TlsError, client::ClientTls, server::ServerTls},
};

/// The ports, bound before `run` so that tests can use port 0 and read the address back.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// `--probe-listen`: /healthz and /readyz only.
    pub probe: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &ServeConfig) -> std::io::Result<Self> {
        let probe = match config.probe_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Listeners {
            grpc: TcpListener::bind(config.grpc_listen).await?,
            http: TcpListener::bind(config.http_listen).await?,
            probe,
        })
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the policy file cannot be loaded:\n{0}")]
    Policy(#[from] PolicyError),
    #[error("the embedded store cannot be opened: {0}")]
    Store(#[from] OriginError),
    #[error("follow mode: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Runs the sidecar until `shutdown` resolves, then drains: health goes NOT_SERVING, the
/// listeners stop accepting, in-flight calls finish (within the grace period), and it returns.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let state = Arc::new(State::new());
    state.change_log().set_limits(config.log_limits());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Before anything else: a TLS file that cannot be used stops the start.
    let tls = ServerTls::load(&config.tls)?;
    let tls_watcher = tls
        .clone()
        .map(|tls| tokio::spawn(tls.watch(config.tls.tls_reload_interval, stop_rx.clone())));
    let mut upstream_view = None;
    let (origin_status, admin_origin, watcher, route_source) = match &config.policy {
        _ if config.upstream.is_some() => {
            let hub = config.upstream.clone().unwrap_or_default();
            let key = config.upstream_key.clone().unwrap_or_default();
            let hub_tls = ClientTls::from(&config.upstream_tls);
            let follower = crate::grpc::follow::follower(&hub, key, hub_tls, state.clone())?;
            upstream_view = Some(follower.view(config.max_staleness));
            tracing::info!(hub = %hub, "follow mode: the state comes from the hub's Watch");
            let task = tokio::spawn(follower.run(stop_rx.clone()));
            let read_only = AdminOrigin::ReadOnly(format!(
                "this instance follows the hub {hub}: write to the hub"
            ));
            (
                Arc::new(Mutex::new(ReloadStatus::default())),
                read_only,
                Some(task),
                RouteSource::Hub(hub),
            )
        }
        Some(policy) => {
            let origin = {
                let (path, state) = (policy.clone(), state.clone());
                tokio::task::spawn_blocking(move || PolicyFileOrigin::start(path, state)).await??
            };
            tracing::info!(
                policy = %policy.display(),
                revision = state.revision(),
                keys = state.counts().keys,
                "state loaded"
            );
            let watcher = tokio::spawn(
                origin
                    .clone()
                    .watch(config.reload_interval, stop_rx.clone()),
            );
            let read_only = AdminOrigin::ReadOnly(format!(
                "the policy file {} is the source of truth: edit it (or serve --data-dir) to change the state",
                policy.display()
            ));
            (
                origin.status(),
                read_only,
                Some(watcher),
                RouteSource::PolicyFile(policy.display().to_string()),
            )
        }
        None => {
            let dir = config.data_dir();
            let bootstrap = Bootstrap {
                prefix: config.bootstrap_key_prefix.clone(),
                secret_sha256: config.bootstrap_key_sha256.clone(),
            };
            let started = {
                let (dir, state) = (dir.clone(), state.clone());
                tokio::task::spawn_blocking(move || EmbeddedOrigin::start(&dir, state, &bootstrap))
                    .await??
            };
            if let Some(key) = &started.bootstrap_key {
                // Printed once, to the terminal only (not through the log pipeline); only its
                // SHA-256 is stored.
                println!("bootstrap SYSTEM_OWNER key (shown once, store it now): {key}");
            }
            tracing::info!(
                data_dir = %dir.display(),
                revision = state.revision(),
                keys = state.counts().keys,
                "state loaded"
            );
            // The writer shows a failed commit (disk full, I/O error) there.
            let status = started.origin.status();
            (
                status,
                AdminOrigin::Embedded(started.origin),
                None,
                RouteSource::Store(dir.display().to_string()),
            )
        }
    };

    // Envoy ext_authz and the HTTP auth endpoint share one decision path and route map, which
    // follows the state's route table whatever the origin (a policy file's `routes:`, the
    // store's, the hub's).
    let authz = Arc::new(Authz::new(state.clone(), config.authz.clone()));
    let route_follower = tokio::spawn(authz.clone().follow_routes(stop_rx.clone()));
    let ext_authz =
        crate::grpc::ext_authz::ExtAuthzServer::new(ExtAuthzService::new(authz.clone()))
            .max_decoding_message_size(config.max_message_bytes);

    let embedded = matches!(admin_origin, AdminOrigin::Embedded(_));
    let health = Arc::new(Health {
        state: state.clone(),
        serving: true.into(),
        origin: origin_status,
        started_unix: unix_now(),
        origin_kind: if embedded { "embedded" } else { "policy_file" },
        upstream: upstream_view,
        routes: Some(authz.clone()),
    });
    // gRPC health says what /readyz says, from before the port serves (a follower without its
    // first snapshot is NOT_SERVING) and on every change after.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    crate::grpc::health::report(&reporter, health.is_ready()).await;
    let health_reporting = tokio::spawn(crate::grpc::health::follow_readiness(
        health.clone(),
        reporter.clone(),
        stop_rx.clone(),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let limits = AuthorizerLimits {
        max_batch: config.max_batch,
        max_revision_wait: config.max_revision_wait,
    };
    let authorizer = AuthorizerServer::new(AuthorizerService::new(state.clone(), limits))
        .max_decoding_message_size(config.max_message_bytes);
    let admin = AdminServer::new(
        AdminService::new(state.clone(), admin_origin).with_route_source(route_source),
    )
    .max_decoding_message_size(config.max_message_bytes);

    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let limits = config.limits.clone();
    let probe_limits = limits.clone();
    let grpc = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(limits.keepalive_interval())
        .http2_keepalive_timeout(Some(crate::listen::HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(authorizer)
        .add_service(ext_authz)
        .add_service(admin);
    // TCP_NODELAY, single-write answers and the preface deadline: see grpc/conn.rs.
    let grpc: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match &tls {
        None => Box::pin(grpc.serve_with_incoming_shutdown(
            crate::grpc::conn::plain_incoming(listeners.grpc, limits.handshake_timeout),
            stopped(stop_rx.clone()),
        )),
        Some(tls) => Box::pin(grpc.serve_with_incoming_shutdown(
            crate::grpc::conn::tls_incoming(listeners.grpc, tls.clone(), limits.handshake_timeout),
            stopped(stop_rx.clone()),
        )),
    };
    let http_router = http::router(health.clone()).merge(http::auth::router(authz.clone()));
    let http = crate::listen::serve_http(
        listeners.http,
        http_router,
        tls.clone(),
        limits,
        stopped(stop_rx.clone()),
    );
    let mut grpc = tokio::spawn(grpc);
    let mut http = tokio::spawn(http);
    // Probes are served in plaintext: the kubelet probes the pod IP without a client
    // certificate, and these paths say nothing but ready or not.
    let probe_addr = match &listeners.probe {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let mut probe = match listeners.probe {
        Some(listener) => tokio::spawn(crate::listen::serve_http(
            listener,
            http::probe_router(health.clone()),
            None,
            probe_limits,
            stopped(stop_rx.clone()),
        )),
        None => tokio::spawn(std::future::pending::<std::io::Result<()>>()),
    };
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        probe = ?probe_addr,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()),
        "serving"
    );

    tokio::select! {
        () = shutdown => {}
        result = &mut grpc => { result??; return Ok(()); }
        result = &mut http => { result??; return Ok(()); }
        result = &mut probe => { result??; return Ok(()); }
    }

    tracing::info!(grace = ?config.shutdown_grace, "shutting down: NOT_SERVING, draining in-flight calls");
    health.serving.store(false, Ordering::Release);
    // Stopped first, so that it cannot report SERVING after this.
    health_reporting.abort();
    let _ = health_reporting.await;
    crate::grpc::health::report(&reporter, false).await;
    let _ = stop_tx.send(true);
    state.change_log().close_streams();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        let g = (&mut grpc).await;
        let h = (&mut http).await;
        (g, h)
    })
    .await;
    probe.abort();
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = route_follower.await;
    if let Some(watcher) = tls_watcher {
        let _ = watcher.await;
    }
    match drained {
        Ok((g, h)) => {
            g??;
            h??;
            tracing::info!("shutdown complete: every in-flight call finished");
        }
        Err(_) => {
            grpc.abort();
            http.abort();
            tracing::warn!("shutdown grace period over: remaining calls were cut off");
        }
    }
    Ok(())
}

/// Resolves once the stop flag is raised.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
