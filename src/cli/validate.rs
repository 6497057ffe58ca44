//! `rolegate validate FILE`: check a policy file offline.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use rolegate::origin::policy_file;

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// The policy file.
    file: PathBuf,
}

/// Prints what the file holds and exits 0, or prints every problem with its location and
/// exits 1.
pub(crate) fn run(args: &ValidateArgs) -> ExitCode {
    let file = &args.file;
    match policy_file::load(file) {
        Ok(policy) => {
            let m = &policy.model;
            println!(
                "{}: ok ({} teams, {} users, {} projects, {} keys, {} roles{})",
                file.display(),
                m.teams.len(),
                m.users.len(),
                m.projects.len(),
                m.keys.len(),
                m.catalog.roles().count(),
                m.routes
                    .as_ref()
                    .map(|r| format!(", {} routes", r.len()))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            eprintln!("{}: {} problem(s)", file.display(), err.problems.len());
            ExitCode::from(1)
        }
    }
}
