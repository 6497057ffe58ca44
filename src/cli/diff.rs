//! `rolegate diff OLD NEW`: what each requestor gains and loses between two policy files, from
//! the effective grants of each (also printed by `apply --dry-run`).

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use rolegate::{
    domain::{IndexedModel, privileges::privilege_diff},
    grpc::pb,
    origin::policy_file,
    state::unix_now,
};
use serde_json::json;

use super::{
    check::enum_name,
    output::{Output, say},
};

#[derive(Args)]
pub(crate) struct DiffArgs {
    /// The policy file before the change.
    old: PathBuf,
    /// The policy file after the change.
    new: PathBuf,
    /// How to print: text for people, json for review bots.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Prints the entitlements gained and lost per requestor. Exits 0 (2 when a file is invalid).
pub(crate) fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let load = |path: &PathBuf| -> anyhow::Result<IndexedModel> {
        let policy = policy_file::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(IndexedModel::from(policy.model))
    };
    let (old, new) = (load(&args.old)?, load(&args.new)?);
    let changes: Vec<pb::PrivilegeChange> = privilege_diff(&old, &new, unix_now())
        .iter()
        .map(pb::PrivilegeChange::from)
        .collect();
    match args.output {
        Output::Json => {
            let list: Vec<_> = changes.iter().map(privilege_json).collect();
            say!(
                "{}",
                json!({
                    "privileges": list,
                    "widens_to_all": changes.iter().any(|c| c.widens_to_all),
                })
            );
        }
        Output::Text => print_privileges(&changes),
    }
    Ok(ExitCode::SUCCESS)
}

fn scope(c: &pb::PrivilegeChange) -> String {
    enum_name(c.scope().as_str_name(), "SCOPE_")
}

/// One change as JSON.
pub(crate) fn privilege_json(c: &pb::PrivilegeChange) -> serde_json::Value {
    json!({
        "requestor": c.requestor,
        "change": if c.gained { "gained" } else { "lost" },
        "entitlement": c.entitlement,
        "scope": scope(c),
        "team_id": c.team_id,
        "key_prefix": c.key_prefix,
        "widens_to_all": c.widens_to_all,
    })
}

/// `user dana: + keys.update TEAM over globex`.
pub(crate) fn privilege_line(c: &pb::PrivilegeChange) -> String {
    let sign = if c.gained { '+' } else { '-' };
    let flag = if c.widens_to_all {
        "   <- widens to ALL"
    } else {
        ""
    };
    if !c.key_prefix.is_empty() {
        return format!(
            "{}: {sign} key {} (acts with every grant of the requestor, up to {}){flag}",
            c.requestor,
            c.key_prefix,
            scope(c)
        );
    }
    let over = match c.scope() {
        pb::Scope::Team => format!(" over {}", c.team_id),
        pb::Scope::Own => " over its own data".to_owned(),
        _ => " over every team".to_owned(),
    };
    format!(
        "{}: {sign} {} {}{over}{flag}",
        c.requestor,
        c.entitlement,
        scope(c)
    )
}

/// The changes, one a line, and a summary.
pub(crate) fn print_privileges(changes: &[pb::PrivilegeChange]) {
    for c in changes {
        say!("{}", privilege_line(c));
    }
    let gained = changes.iter().filter(|c| c.gained).count();
    let widened = changes.iter().filter(|c| c.widens_to_all).count();
    say!(
        "privileges: {gained} gained, {} lost{}",
        changes.len() - gained,
        if widened > 0 {
            format!("; WARNING: {widened} widen to ALL")
        } else {
            String::new()
        }
    );
}
