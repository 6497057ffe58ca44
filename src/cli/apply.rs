//! `rolegate apply -f FILE`: put a policy file's objects on a server, as one revision; with
//! `--prune`, make the state equal to the file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rolegate::grpc::pb;
use serde_json::json;

use super::{
    client::{Conn, admin, call, failed},
    output::{Output, say},
};

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Show the changes without writing them.
    #[arg(long)]
    dry_run: bool,
    /// Also remove what the file does not name (objects, custom entitlements, the route
    /// table): the state becomes equal to the file. Try it with --dry-run first.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Sends the file and prints each change the server made (or would make) and the revision.
pub(crate) async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let ApplyArgs {
        file,
        dry_run,
        prune,
        conn,
    } = args;
    let document =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let r = admin(&conn)
        .await?
        .apply(call(
            &conn,
            pb::ApplyRequest {
                document,
                dry_run,
                prune,
                name: file.display().to_string(),
            },
        )?)
        .await
        .map_err(failed)?
        .into_inner();
    if conn.output == Output::Json {
        let privileges: Vec<_> = r
            .privileges
            .iter()
            .map(super::diff::privilege_json)
            .collect();
        say!(
            "{}",
            json!({ "changes": r.changes, "kept": r.kept, "revision": r.revision, "dry_run": r.dry_run, "privileges": privileges })
        );
        return Ok(());
    }
    for c in &r.changes {
        say!("{c}");
    }
    if r.dry_run {
        super::diff::print_privileges(&r.privileges);
    }
    say!(
        "{} change(s){}; revision {}",
        r.changes.len(),
        if r.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
        r.revision
    );
    if !r.kept.is_empty() {
        say!(
            "kept {} object(s) the file does not name: {} (--prune removes them)",
            r.kept.len(),
            r.kept.join(", ")
        );
    }
    Ok(())
}
