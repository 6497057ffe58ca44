//! `rolegate who-can ENTITLEMENT`: every requestor and key holding an entitlement, at which
//! scope: offline from a policy file (`--policy`), or from a server (Admin `WhoCan`).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use rolegate::{
    domain::privileges::who_can,
    grpc::pb::{self, admin_client::AdminClient},
    origin::policy_file,
    state::unix_now,
    tls::client::ClientTlsArgs,
};
use serde_json::json;

use super::{
    check::enum_name,
    output::{Output, say, table},
};

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

/// Prints the holders. Exits 0 (2 on error).
pub(crate) async fn run(args: WhoCanArgs) -> anyhow::Result<ExitCode> {
    let (holders, total) = match &args.policy {
        Some(path) => {
            let policy = policy_file::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let holders: Vec<pb::Holder> = who_can(
                &policy.model,
                &args.entitlement,
                args.team.as_deref(),
                unix_now(),
            )?
            .iter()
            .map(pb::Holder::from)
            .collect();
            let total = holders.len() as u64;
            (holders, total)
        }
        None => {
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
            (r.holders, r.total)
        }
    };
    let scope = |h: &pb::Holder| enum_name(h.scope().as_str_name(), "SCOPE_");
    match args.output {
        Output::Json => {
            let list: Vec<_> = holders
                .iter()
                .map(|h| {
                    json!({
                        "requestor": h.requestor,
                        "key_prefix": h.key_prefix,
                        "scope": scope(h),
                        "team_id": h.team_id,
                        "role": h.role,
                    })
                })
                .collect();
            say!("{}", json!({ "holders": list, "total": total }));
        }
        Output::Text => {
            let rows = holders
                .iter()
                .map(|h| {
                    let over = match h.scope() {
                        pb::Scope::Team => h.team_id.clone(),
                        pb::Scope::Own => "own data".to_owned(),
                        _ => "every team".to_owned(),
                    };
                    vec![
                        h.requestor.clone(),
                        h.key_prefix.clone(),
                        scope(h),
                        over,
                        h.role.clone(),
                    ]
                })
                .collect();
            table(&["REQUESTOR", "KEY", "SCOPE", "OVER", "ROLE"], rows);
            if total > holders.len() as u64 {
                say!("{} of {total} holder(s) shown", holders.len());
            } else {
                say!("{total} holder(s)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
