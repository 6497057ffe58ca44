//! `rolegate serve`: run the sidecar until SIGTERM or SIGINT.

use std::process::ExitCode;

use rolegate::{
    app::{self, AppError, Listeners},
    config::{LogFormat, ServeConfig},
    telemetry::otlp::OtlpExport,
};

/// Serves `config`. Exit codes: 0 after a clean shutdown; 2 when an operator has to act first
/// (a policy file that cannot be loaded, TLS or span export that cannot be set up, a store that
/// cannot be used); 1 when the server failed otherwise.
pub(crate) fn run(config: ServeConfig) -> ExitCode {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(err) => {
            init_logs(config.log_format, None);
            tracing::error!(error = %err, "cannot start");
            return ExitCode::from(1);
        }
    };
    // Within the runtime: the exporter's gRPC channel runs on it.
    let otlp = match config.otlp_endpoint.as_deref().map(|endpoint| {
        let _runtime = rt.enter();
        OtlpExport::start(endpoint)
    }) {
        None => None,
        Some(Ok(otlp)) => Some(otlp),
        Some(Err(err)) => {
            init_logs(config.log_format, None);
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format, otlp.as_ref());
    let code = serve(&rt, config);
    // After the drain, while the runtime still carries the exporter's connection.
    if let Some(otlp) = otlp {
        otlp.shutdown();
    }
    code
}

fn serve(rt: &tokio::runtime::Runtime, config: ServeConfig) -> ExitCode {
    let listeners = match rt.block_on(Listeners::bind(&config)) {
        Ok(listeners) => listeners,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(app::run(config, listeners, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AppError::Policy(err)) => {
            tracing::error!("the policy file cannot be loaded:\n{err}");
            ExitCode::from(2)
        }
        Err(AppError::Tls(err)) => {
            tracing::error!(error = %err, "TLS cannot be set up");
            ExitCode::from(2)
        }
        // The store cannot be used as it is (damaged, unreadable, in use): an operator has to
        // act, as for a bad policy file.
        Err(err @ (AppError::Store(_) | AppError::DecisionLog(_))) => {
            tracing::error!("{err}");
            ExitCode::from(2)
        }
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines; with `otlp`,
/// the spans it exports go to it too, whatever `RUST_LOG` says.
fn init_logs(format: LogFormat, otlp: Option<&OtlpExport>) {
    use std::io::IsTerminal;
    use tracing_subscriber::{
        EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(otlp.map(OtlpExport::layer))
        .with(logs.with_filter(filter))
        .init();
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
