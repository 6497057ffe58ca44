//! `rolegate check`: ask a running sidecar for one decision and print it.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;
use rolegate::{
    grpc::pb::{self, authorizer_client::AuthorizerClient},
    tls::client::ClientTlsArgs,
};
use serde_json::json;

use super::output::Output;

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The server's gRPC address: HOST:PORT (https:// with TLS options, else http://), a URL,
    /// or unix:PATH (a Unix socket).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// The API key to check, `<prefix>.<secret>`. Not the caller's key of the Admin commands
    /// (ROLEGATE_API_KEY), which `check` never reads.
    #[arg(long, env = "ROLEGATE_CHECK_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The entitlement, e.g. jobs.cancel.
    #[arg(long)]
    entitlement: String,
    /// The team the data belongs to.
    #[arg(long, default_value = "")]
    team: String,
    /// The prefix of the key that owns the data.
    #[arg(long, default_value = "")]
    owner_key: String,
    /// The user that owns the data.
    #[arg(long, default_value = "")]
    owner_user: String,
    /// Answer only from a state at least this fresh.
    #[arg(long, default_value_t = 0)]
    min_revision: u64,
    /// Give up after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How to print the decision: text for people, json for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Asks for the decision and prints it. Exit codes: 0 when allowed, 1 when denied (an error is
/// the caller's 2).
pub(crate) async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let key = super::client::key_to_check(args.key)?;
    let channel = super::client::endpoint(&args.addr, &args.tls)?
        .tune(|e| e.timeout(args.timeout).connect_timeout(args.timeout))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let mut client = AuthorizerClient::new(channel);
    let resource = pb::Resource {
        team_id: args.team,
        owner_key_prefix: args.owner_key,
        owner_user_id: args.owner_user,
    };
    let response = client
        .check(pb::CheckRequest {
            api_key: key,
            entitlement: args.entitlement,
            resource: Some(resource),
            min_revision: args.min_revision,
        })
        .await
        .map_err(super::client::status_error)?
        .into_inner();
    match args.output {
        Output::Text => print_text(&response),
        Output::Json => print_json(&response),
    }
    Ok(if response.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The name of a protobuf enum value without its type's prefix (`SCOPE_TEAM` → `TEAM`).
fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn print_json(r: &pb::CheckResponse) {
    let principal = r.principal.as_ref().map(|p| {
        json!({
            "key_prefix": p.key_prefix,
            "key_type": enum_name(p.key_type().as_str_name(), "KEY_TYPE_"),
            "user_id": p.user_id,
            "project_id": p.project_id,
            "team_id": p.team_id,
            "roles": p.roles,
        })
    });
    let json = json!({
        "allowed": r.allowed,
        "scope": enum_name(r.scope().as_str_name(), "SCOPE_"),
        "reason": enum_name(r.reason().as_str_name(), "REASON_"),
        "message": r.message,
        "principal": principal,
        "filter_team_ids": r.filter_team_ids,
        "filter_owner_key_prefixes": r.filter_owner_key_prefixes,
        "filter_owner_user_id": r.filter_owner_user_id,
        "revision": r.revision,
    });
    println!("{json}");
}

fn print_text(r: &pb::CheckResponse) {
    println!("allowed:  {}", r.allowed);
    println!("scope:    {}", enum_name(r.scope().as_str_name(), "SCOPE_"));
    println!(
        "reason:   {} ({})",
        enum_name(r.reason().as_str_name(), "REASON_"),
        r.message
    );
    if let Some(p) = &r.principal {
        let who = if p.project_id.is_empty() {
            format!("user {}", p.user_id)
        } else {
            format!("project {}", p.project_id)
        };
        println!(
            "key:      {} ({}, {who}, team {}, roles [{}])",
            p.key_prefix,
            enum_name(p.key_type().as_str_name(), "KEY_TYPE_").to_lowercase(),
            p.team_id,
            p.roles.join(", ")
        );
    }
    let filtered = !(r.filter_team_ids.is_empty()
        && r.filter_owner_key_prefixes.is_empty()
        && r.filter_owner_user_id.is_empty());
    if filtered {
        let none = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        println!("filter:   teams [{}]", none(&r.filter_team_ids));
        println!(
            "          owner keys [{}]",
            none(&r.filter_owner_key_prefixes)
        );
        if !r.filter_owner_user_id.is_empty() {
            println!("          owner user {}", r.filter_owner_user_id);
        }
    }
    println!("revision: {}", r.revision);
}
