//! `rolegate apply -f FILE`: make a server's state equal to a policy file, as one revision.

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
    #[command(flatten)]
    conn: Conn,
}

/// Sends the file and prints each change the server made (or would make) and the revision.
pub(crate) async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let ApplyArgs {
        file,
        dry_run,
        conn,
    } = args;
    let document =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let r = admin(&conn)
        .await?
        .apply(call(&conn, pb::ApplyRequest { document, dry_run })?)
        .await
        .map_err(failed)?
        .into_inner();
    if conn.output == Output::Json {
        say!(
            "{}",
            json!({ "changes": r.changes, "revision": r.revision, "dry_run": r.dry_run })
        );
        return Ok(());
    }
    for c in &r.changes {
        say!("{c}");
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
    Ok(())
}
