//! `rolegate who-can ENTITLEMENT`: every requestor and key holding an entitlement, at which
//! scope: offline from a policy file (`--policy`), or from a server (Admin `WhoCan`).

use std::{
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use clap::Args;
use rolegate::{
    domain::{Scope, privileges::who_can},
    grpc::pb::{self, admin_client::AdminClient},
    origin::policy_file,
    state::unix_now,
    tls::client::ClientTlsArgs,
};

use super::output::Output;

#[derive(Args)]
pub(crate) struct WhoCanArgs {
    /// The entitlement, e.g. keys.update.
    entitlement: String,
    /// Only the grants that reach this team's data: ALL, TEAM over it, OWN on its keys.
    #[arg(long)]
    team: Option<String>,
    /// Answer offline from this policy file, without a server.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The server's gRPC address: HOST:PORT (https:// with TLS options, else http://) or a URL.
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// The caller's API key (online; needs keys.read and users.read at ALL).
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How to print: text (a table) for people, json for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// One holder as printed, borrowed from the model (offline) or the server's answer (online).
#[derive(Clone, Copy, serde::Serialize)]
struct Row<'a> {
    key_prefix: &'a str,
    /// `user dana`, in parts (`user`, ` `, `dana`) so that an offline row needs no new string.
    #[serde(serialize_with = "joined")]
    requestor: [&'a str; 3],
    role: &'a str,
    scope: &'static str,
    team_id: &'a str,
}

fn joined<S: serde::Serializer>(parts: &[&str; 3], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}{}{}", parts[0], parts[1], parts[2]))
}

impl Row<'_> {
    /// The OVER column: what the grant covers.
    fn over(&self) -> &str {
        match self.scope {
            "TEAM" => self.team_id,
            "OWN" => "own data",
            _ => "every team",
        }
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Own => "OWN",
        Scope::Team => "TEAM",
        Scope::All => "ALL",
    }
}

fn pb_scope_name(scope: pb::Scope) -> &'static str {
    match scope {
        pb::Scope::Own => "OWN",
        pb::Scope::Team => "TEAM",
        pb::Scope::All => "ALL",
        pb::Scope::Unspecified => "UNSPECIFIED",
    }
}

/// Prints the holders. Exits 0 (2 on error).
pub(crate) async fn run(args: WhoCanArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.policy {
        let policy = policy_file::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let answer = who_can(
            &policy.model,
            &args.entitlement,
            args.team.as_deref(),
            unix_now(),
            usize::MAX,
        )?;
        let rows = answer.first.iter().map(|h| Row {
            requestor: [h.requestor_kind(), " ", h.requestor_id()],
            key_prefix: h.prefix(),
            scope: scope_name(h.scope),
            team_id: h.team.unwrap_or_default(),
            role: h.role,
        });
        print(args.output, rows, answer.total as u64);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(caller) = &args.api_key else {
        anyhow::bail!(
            "who-can asks a server with the caller's key: give --api-key or set \
             ROLEGATE_API_KEY (or answer offline with --policy FILE)"
        );
    };
    let channel = super::client::endpoint(&args.addr, &args.tls)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let mut request = tonic::Request::new(pb::WhoCanRequest {
        entitlement: args.entitlement.clone(),
        team_id: args.team.clone().unwrap_or_default(),
    });
    let value = format!("ApiKey {caller}")
        .parse()
        .context("the caller's key is not valid in gRPC metadata")?;
    request.metadata_mut().insert("authorization", value);
    let r = AdminClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .who_can(request)
        .await
        .map_err(super::client::failed)?
        .into_inner();
    let rows = r.holders.iter().map(|h| Row {
        requestor: [&h.requestor, "", ""],
        key_prefix: &h.key_prefix,
        scope: pb_scope_name(h.scope()),
        team_id: &h.team_id,
        role: &h.role,
    });
    print(args.output, rows, r.total);
    Ok(ExitCode::SUCCESS)
}

/// Prints the rows as `output` asks, through one buffer (a million lines are a million writes
/// to a line-buffered stdout otherwise). Ends the process quietly when stdout is closed
/// (`rolegate who-can ... | head`).
fn print<'a>(output: Output, rows: impl Iterator<Item = Row<'a>> + Clone, total: u64) {
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = match output {
        Output::Json => json(&mut out, rows, total),
        Output::Text => text(&mut out, rows, total),
    };
    if written.and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// `{"holders": [...], "total": N}`, written holder by holder.
fn json<'a>(
    out: &mut impl Write,
    rows: impl Iterator<Item = Row<'a>>,
    total: u64,
) -> std::io::Result<()> {
    out.write_all(b"{\"holders\":[")?;
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, &row)?;
    }
    writeln!(out, "],\"total\":{total}}}")
}

/// A table, columns padded to their widest cell, and a count.
fn text<'a>(
    out: &mut impl Write,
    rows: impl Iterator<Item = Row<'a>> + Clone,
    total: u64,
) -> std::io::Result<()> {
    let mut widths = ["REQUESTOR", "KEY", "SCOPE", "OVER", "ROLE"].map(str::len);
    let mut shown = 0u64;
    for row in rows.clone() {
        let cells = [
            row.requestor.iter().map(|p| p.len()).sum(),
            row.key_prefix.len(),
            row.scope.len(),
            row.over().len(),
            row.role.len(),
        ];
        for (w, cell) in widths.iter_mut().zip(cells) {
            *w = (*w).max(cell);
        }
        shown += 1;
    }
    let mut line = String::new();
    let mut put = |cells: [&[&str]; 5]| {
        line.clear();
        for (i, (parts, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let start = line.len();
            parts.iter().for_each(|p| line.push_str(p));
            let pad = w.saturating_sub(line.len() - start);
            line.extend(std::iter::repeat_n(' ', pad));
        }
        writeln!(out, "{}", line.trim_end())
    };
    put([&["REQUESTOR"], &["KEY"], &["SCOPE"], &["OVER"], &["ROLE"]])?;
    for row in rows {
        put([
            &row.requestor,
            &[row.key_prefix],
            &[row.scope],
            &[row.over()],
            &[row.role],
        ])?;
    }
    if total > shown {
        writeln!(out, "{shown} of {total} holder(s) shown")
    } else {
        writeln!(out, "{total} holder(s)")
    }
}
