//! The commands of the `rolegate` binary, one module per command group. Each talks to the
//! library through `rolegate::…` only; the load tool behind `bench` and `bench-writes` lives
//! here too, as part of the command line rather than of the library.

pub(crate) mod apply;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod client;
pub(crate) mod diff;
pub(crate) mod history;
pub(crate) mod keys;
pub(crate) mod output;
pub(crate) mod policy_test;
pub(crate) mod projects;
pub(crate) mod roles;
pub(crate) mod routes;
pub(crate) mod serve;
pub(crate) mod teams;
pub(crate) mod users;
pub(crate) mod validate;
pub(crate) mod watch;
pub(crate) mod who_can;

use std::process::ExitCode;

use anyhow::Context;

/// The multi-threaded runtime the commands that talk to a server run on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `command` to completion on a new [`runtime`].
pub(crate) fn block_on<T>(command: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    runtime()?.block_on(command)
}

/// The exit code a command chose, or 2 after printing its error.
pub(crate) fn exit_on_error(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

/// 0 for a command that succeeded, or 2 after printing its error.
pub(crate) fn finish(result: anyhow::Result<()>) -> ExitCode {
    exit_on_error(result.map(|()| ExitCode::SUCCESS))
}

/// `--active` / `--inactive` for an update: neither keeps the status as it is.
#[derive(clap::Args, Debug)]
#[group(multiple = false)]
pub(crate) struct StatusArgs {
    /// Make it active.
    #[arg(long)]
    active: bool,
    /// Make it inactive (its keys stop authenticating).
    #[arg(long)]
    inactive: bool,
}

impl StatusArgs {
    /// The status asked for; `None` to keep it.
    pub(crate) fn active(&self) -> Option<bool> {
        match (self.active, self.inactive) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::Cli;

    /// Every command and every flag or argument a user can see says what it is for, in one
    /// line of `-h`.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path}: {} has no help", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cli, "rolegate", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
