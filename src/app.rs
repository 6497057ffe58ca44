//! Wires a server together: `run(config, listeners, shutdown)` starts the origin, serves gRPC and
//! HTTP on the given listeners, and drains gracefully when `shutdown` resolves.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::{Server, server::Router};
use tonic_health::{
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    authz::Authz,
    config::ServeConfig,
    grpc::{
        AuthorizerService,
        admin::AdminService,
        authorizer::AuthorizerLimits,
        ext_authz::{ExtAuthzServer, ExtAuthzService},
        follow::GrpcHub,
        pb::{admin_server::AdminServer, authorizer_server::AuthorizerServer},
    },
    http::{self, Health},
    origin::{
        self, Origin, StartError, embedded::StoreError, policy_file::PolicyError,
        upstream::UpstreamError,
    },
    state::State,
    telemetry::{
        DecisionLog, Telemetry,
        grpc::{GrpcMetrics, GrpcMetricsLayer},
    },
    tls::{TlsError, server::ServerTls},
};

pub use crate::listen::{ListenAddr, Listener};

/// The gRPC port's router, with the gRPC metrics layer.
type GrpcRouter = Router<tower_layer::Stack<GrpcMetricsLayer, tower_layer::Identity>>;

/// The ports, bound before `run` so that tests can use port 0 and read the address back.
pub struct Listeners {
    /// `--grpc-listen`: TCP or a Unix socket.
    pub grpc: Listener,
    /// `--http-listen`: TCP or a Unix socket.
    pub http: Listener,
    /// `--probe-listen`: /healthz and /readyz only.
    pub probe: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses. An error names the listener, its flag and its address.
    pub async fn bind(config: &ServeConfig) -> std::io::Result<Self> {
        let unix = [
            ("--grpc-listen", &config.grpc_listen),
            ("--http-listen", &config.http_listen),
        ]
        .into_iter()
        .find(|(_, addr)| matches!(addr, ListenAddr::Unix(_)));
        if let (Some((flag, addr)), true) = (unix, config.tls.tls_cert.is_some()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{flag} {addr}: TLS (--tls-cert) is served on TCP only; a Unix socket's file permissions say who may connect. Listen on IP:PORT for TLS"
                ),
            ));
        }
        let probe = match config.probe_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_error("probe", "--probe-listen", &addr.into(), e))?,
            ),
            None => None,
        };
        Ok(Listeners {
            grpc: bind_one("gRPC", "--grpc-listen", &config.grpc_listen).await?,
            http: bind_one("HTTP", "--http-listen", &config.http_listen).await?,
            probe,
        })
    }
}

/// Binds the listener `name` (set by `flag`) to `addr`.
async fn bind_one(name: &str, flag: &str, addr: &ListenAddr) -> std::io::Result<Listener> {
    Listener::bind(addr)
        .await
        .map_err(|e| bind_error(name, flag, addr, e))
}

/// `err` from binding `addr`, naming the listener and its flag.
fn bind_error(name: &str, flag: &str, addr: &ListenAddr, err: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        err.kind(),
        format!("the {name} listener cannot listen on {addr} ({flag}): {err}"),
    )
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the policy file cannot be loaded:\n{0}")]
    Policy(#[from] PolicyError),
    #[error("the embedded store cannot be opened: {0}")]
    Store(#[from] StoreError),
    #[error("follow mode: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("etcd: {0}")]
    Etcd(#[from] origin::etcd::EtcdStartError),
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
    #[error("{0}")]
    DecisionLog(std::io::Error),
}

impl From<StartError> for AppError {
    fn from(err: StartError) -> Self {
        match err {
            StartError::Policy(e) => AppError::Policy(e),
            StartError::Store(e) => AppError::Store(e),
            StartError::Upstream(e) => AppError::Upstream(e),
            StartError::Etcd(e) => AppError::Etcd(e),
            StartError::Task(e) => AppError::Task(e),
        }
    }
}

/// The stop flag every background task and server watches; raised once, at shutdown.
type Stop = watch::Receiver<bool>;

/// Runs the sidecar until `shutdown` resolves, then drains: health goes NOT_SERVING, the
/// listeners stop accepting, in-flight calls finish (within the grace period), and it returns.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let state = Arc::new(State::new());
    state.change_log().set_limits(config.log_limits());
    let (stop_tx, stop) = watch::channel(false);
    // Before anything else: a TLS file that cannot be used stops the start.
    let tls = ServerTls::load(&config.tls)?;
    let mut background = Vec::new();
    if let Some(tls) = tls.clone() {
        background.push(tokio::spawn(
            tls.watch(config.tls.tls_reload_interval, stop.clone()),
        ));
    }
    let telemetry = match config.decision_log() {
        Some(log) => Telemetry::with_log(DecisionLog::start(&log).map_err(AppError::DecisionLog)?),
        None => Telemetry::new(),
    };
    // The exporter itself is the binary's (it belongs to the process's `tracing` subscriber).
    let telemetry = Arc::new(telemetry.exporting_spans(config.otlp_endpoint.is_some()));
    if telemetry.log.is_some() {
        background.push(tokio::spawn(reopen_on_sighup(
            telemetry.clone(),
            stop.clone(),
        )));
    }
    let origin = origin::start(config.origin(), state.clone(), GrpcHub::new).await?;
    background.push(tokio::spawn(origin.clone().run(stop.clone())));
    // Envoy ext_authz and the HTTP auth endpoint share one decision path and route map, which
    // follows the state's route table whatever the origin (a policy file's `routes:`, the
    // store's, the hub's).
    let authz =
        Arc::new(Authz::new(state.clone(), config.authz.clone()).with_telemetry(telemetry.clone()));
    background.push(tokio::spawn(authz.clone().follow_routes(stop.clone())));
    let health = Arc::new(Health::new(
        state.clone(),
        origin.clone(),
        Some(authz.clone()),
    ));
    let (reporting, health_service) = Reporting::start(&health, &stop).await;
    let grpc_metrics = Arc::new(crate::grpc::port_metrics());
    let grpc = grpc_services(
        &config,
        &state,
        origin,
        &authz,
        health_service,
        &telemetry,
        &grpc_metrics,
    )?;
    let metrics = Arc::new(http::metrics::registry(
        health.clone(),
        telemetry,
        grpc_metrics,
    ));
    // The HTTP port beside the probes: the auth endpoint and /metrics.
    let routes = http::auth::router(authz.clone()).merge(http::metrics::router(metrics));
    let mut servers = Servers::start(&config, listeners, grpc, &health, routes, tls, &stop)?;

    tokio::select! {
        () = shutdown => {}
        result = servers.stopped() => return result,
    }
    tracing::info!(
        grace_ms = config.shutdown_grace.as_millis() as u64,
        "shutting down: NOT_SERVING, draining in-flight calls"
    );
    health.serving.store(false, Ordering::Release);
    reporting.stop().await;
    let _ = stop_tx.send(true);
    state.change_log().close_streams();
    let drained = servers.drain(config.shutdown_grace).await;
    for task in background {
        let _ = task.await;
    }
    drained
}

/// A Unix socket listener given with TLS (which `Listeners::bind` refuses first).
fn unix_tls() -> AppError {
    AppError::Http(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "TLS is served on TCP only, not on a Unix socket",
    ))
}

/// Reopens the decision log's file on every SIGHUP (after logrotate moved it), until stopped.
async fn reopen_on_sighup(telemetry: Arc<Telemetry>, stop: Stop) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP: the decision log is not reopened");
            return;
        }
    };
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() { return }
                if let Some(log) = &telemetry.log {
                    log.reopen();
                }
            }
            () = stopped(stop.clone()) => return,
        }
    }
}

/// Resolves once the stop flag is raised.
async fn stopped(mut stop: Stop) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// gRPC health, kept equal to readiness from before the port serves (a follower without its
/// first snapshot is NOT_SERVING) and on every change after.
struct Reporting {
    reporter: HealthReporter,
    task: JoinHandle<()>,
}

impl Reporting {
    async fn start(health: &Arc<Health>, stop: &Stop) -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        crate::grpc::health::report(&reporter, health.is_ready()).await;
        let task = tokio::spawn(crate::grpc::health::follow_readiness(
            health.clone(),
            reporter.clone(),
            stop.clone(),
        ));
        (Reporting { reporter, task }, service)
    }

    /// NOT_SERVING from now on. The follower is stopped first, so that it cannot report
    /// SERVING after this.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        crate::grpc::health::report(&self.reporter, false).await;
    }
}

/// Every service of the gRPC port: health, reflection, the Authorizer, Envoy's ext_authz and
/// the Admin API (writing through `origin`).
fn grpc_services(
    config: &ServeConfig,
    state: &Arc<State>,
    origin: Arc<dyn Origin>,
    authz: &Arc<Authz>,
    health: HealthServer<HealthService>,
    telemetry: &Arc<Telemetry>,
    grpc_metrics: &Arc<GrpcMetrics>,
) -> Result<GrpcRouter, AppError> {
    let reflection = || {
        crate::grpc::SERVED_DESCRIPTOR_SETS.iter().fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    let limits = AuthorizerLimits {
        max_batch: config.max_batch,
        max_revision_wait: config.max_revision_wait,
    };
    let max = config.max_message_bytes;
    let authorizer = AuthorizerServer::new(
        AuthorizerService::new(state.clone(), limits).with_telemetry(telemetry.clone()),
    )
    .max_decoding_message_size(max);
    let ext_authz =
        ExtAuthzServer::new(ExtAuthzService::new(authz.clone())).max_decoding_message_size(max);
    let admin =
        AdminServer::new(AdminService::new(state.clone(), origin)).max_decoding_message_size(max);
    let limits = &config.limits;
    Ok(Server::builder()
        .layer(GrpcMetricsLayer(grpc_metrics.clone()))
        .tcp_nodelay(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(limits.keepalive_interval())
        .http2_keepalive_timeout(Some(crate::listen::HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(authorizer)
        .add_service(ext_authz)
        .add_service(admin))
}

/// The running servers: gRPC, HTTP, and the probe listener (a task that never ends when there
/// is none).
struct Servers {
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    probe: JoinHandle<std::io::Result<()>>,
}

impl Servers {
    /// Serves on every listener until the stop flag is raised.
    fn start(
        config: &ServeConfig,
        listeners: Listeners,
        grpc: GrpcRouter,
        health: &Arc<Health>,
        routes: axum::Router,
        tls: Option<Arc<ServerTls>>,
        stop: &Stop,
    ) -> Result<Self, AppError> {
        let grpc_addr = listeners.grpc.local_addr()?;
        let http_addr = listeners.http.local_addr()?;
        let probe_addr = match &listeners.probe {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let limits = &config.limits;
        // TCP_NODELAY, single-write answers and the preface deadline: see grpc/conn.rs.
        let handshake = limits.handshake_timeout;
        let grpc: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match (listeners.grpc, &tls) {
            (Listener::Tcp(listener), None) => Box::pin(grpc.serve_with_incoming_shutdown(
                crate::grpc::conn::plain_incoming(listener, handshake),
                stopped(stop.clone()),
            )),
            (Listener::Tcp(listener), Some(tls)) => Box::pin(grpc.serve_with_incoming_shutdown(
                crate::grpc::conn::tls_incoming(listener, tls.clone(), handshake),
                stopped(stop.clone()),
            )),
            (Listener::Unix(socket), None) => Box::pin(grpc.serve_with_incoming_shutdown(
                crate::grpc::conn::unix_incoming(socket, handshake),
                stopped(stop.clone()),
            )),
            (Listener::Unix(_), Some(_)) => return Err(unix_tls()),
        };
        if tls.is_some() && listeners.http.is_unix() {
            return Err(unix_tls());
        }
        let http_router = http::router(health.clone()).merge(routes);
        let http = crate::listen::serve_http(
            listeners.http,
            http_router,
            tls.clone(),
            limits.clone(),
            stopped(stop.clone()),
        );
        // Probes are served in plaintext: the kubelet probes the pod IP without a client
        // certificate, and these paths say nothing but ready or not.
        let probe = match listeners.probe {
            Some(listener) => tokio::spawn(crate::listen::serve_http(
                Listener::Tcp(listener),
                http::probe_router(health.clone()),
                None,
                limits.clone(),
                stopped(stop.clone()),
            )),
            None => tokio::spawn(std::future::pending::<std::io::Result<()>>()),
        };
        tracing::info!(
            grpc = %grpc_addr,
            http = %http_addr,
            probe = probe_addr.map(|a| a.to_string()).as_deref(),
            tls = tls.is_some(),
            mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()),
            "serving"
        );
        Ok(Servers {
            grpc: tokio::spawn(grpc),
            http: tokio::spawn(http),
            probe,
        })
    }

    /// Resolves when a server stops by itself (before shutdown: a failure), with its error.
    async fn stopped(&mut self) -> Result<(), AppError> {
        tokio::select! {
            result = &mut self.grpc => result??,
            result = &mut self.http => result??,
            result = &mut self.probe => result??,
        }
        Ok(())
    }

    /// Once the stop flag is raised: waits for in-flight calls to finish, at most `grace`, and
    /// cuts off the rest.
    async fn drain(mut self, grace: Duration) -> Result<(), AppError> {
        let drained = tokio::time::timeout(grace, async {
            let g = (&mut self.grpc).await;
            let h = (&mut self.http).await;
            (g, h)
        })
        .await;
        self.probe.abort();
        match drained {
            Ok((g, h)) => {
                g??;
                h??;
                tracing::info!("shutdown complete: every in-flight call finished");
            }
            Err(_) => {
                self.grpc.abort();
                self.http.abort();
                tracing::warn!("shutdown grace period over: remaining calls were cut off");
            }
        }
        Ok(())
    }
}
