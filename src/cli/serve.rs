//! `rolegate serve`: run the sidecar until SIGTERM or SIGINT.

use std::process::ExitCode;

use rolegate::{
    app::{self, AppError, Listeners},
    config::{LogFormat, ServeConfig},
};

/// Serves `config`. Exit codes: 0 after a clean shutdown; 2 when an operator has to act first
/// (a policy file that cannot be loaded, TLS that cannot be set up, a store that cannot be
/// used); 1 when the server failed otherwise.
pub(crate) fn run(config: ServeConfig) -> ExitCode {
    init_logs(config.log_format);
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::from(1);
        }
    };
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

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
fn init_logs(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
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
