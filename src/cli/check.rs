//! `rolegate check`: ask a running sidecar for one decision and print it.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use rolegate::{
    domain::ResourceRef,
    grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient},
    origin::policy_file,
    state::{State, unix_now},
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
    /// The API key to check, `<prefix>.<secret>` (with --policy or --explain, its prefix alone
    /// will do). Not the caller's key of the Admin commands (ROLEGATE_API_KEY).
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
    /// Decide offline from this policy file, without a server.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Also say why: the requestor's keys, the grant that decided, what it covers. Online it
    /// calls Explain with the caller's key (--api-key), which needs audit.read.
    #[arg(long)]
    explain: bool,
    /// The caller's key for Explain (online --explain only).
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
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
    let key = super::client::key_to_check(args.key.clone())?;
    let resource = pb::Resource {
        team_id: args.team.clone(),
        owner_key_prefix: args.owner_key.clone(),
        owner_user_id: args.owner_user.clone(),
    };
    let (response, explanation) = match &args.policy {
        Some(path) => {
            let state = load_state(path)?;
            offline(&state, &key, &args.entitlement, &resource, args.explain)
        }
        None => online(&args, key, resource).await?,
    };
    match args.output {
        Output::Text => {
            print_text(&response);
            if let Some(e) = &explanation {
                print_explanation(e);
            }
        }
        Output::Json => print_json(&response, explanation.as_ref()),
    }
    Ok(if response.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The state a policy file makes, as a server serving it would hold it (revision 1).
pub(crate) fn load_state(path: &Path) -> anyhow::Result<State> {
    let policy = policy_file::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    State::from_model(&policy.model, 1).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Decides offline from `state`, as the server's Check (a whole key) or Explain (a prefix)
/// would, with the explanation when asked for.
pub(crate) fn offline(
    state: &State,
    key: &str,
    entitlement: &str,
    resource: &pb::Resource,
    explain: bool,
) -> (pb::CheckResponse, Option<pb::Explanation>) {
    let resource = ResourceRef {
        team_id: &resource.team_id,
        owner_key_prefix: &resource.owner_key_prefix,
        owner_user_id: &resource.owner_user_id,
    };
    let now = unix_now();
    let checked = state.check_prefix(key, entitlement, resource, now);
    let explanation = explain.then(|| {
        let (_, e) = state.explain(key, entitlement, resource, now);
        pb::Explanation::from(&e)
    });
    (pb::CheckResponse::from(&checked), explanation)
}

/// Asks the server: Check for a whole key, and Explain (with the caller's key) when an
/// explanation is asked for or only a prefix is given.
async fn online(
    args: &CheckArgs,
    key: String,
    resource: pb::Resource,
) -> anyhow::Result<(pb::CheckResponse, Option<pb::Explanation>)> {
    let channel = super::client::endpoint(&args.addr, &args.tls)?
        .tune(|e| e.timeout(args.timeout).connect_timeout(args.timeout))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let whole_key = key.contains('.');
    let mut checked = None;
    if whole_key {
        let mut client = AuthorizerClient::new(channel.clone());
        checked = Some(
            client
                .check(pb::CheckRequest {
                    api_key: key.clone(),
                    entitlement: args.entitlement.clone(),
                    resource: Some(resource.clone()),
                    min_revision: args.min_revision,
                })
                .await
                .map_err(super::client::status_error)?
                .into_inner(),
        );
    }
    if !args.explain && whole_key {
        return Ok((checked.expect("checked"), None));
    }
    let Some(caller) = &args.api_key else {
        anyhow::bail!(
            "--explain (or a key given as a prefix) calls Explain, which needs the caller's key: \
             give --api-key or set ROLEGATE_API_KEY (or decide offline with --policy FILE)"
        );
    };
    let mut request = tonic::Request::new(pb::ExplainRequest {
        key_prefix: key
            .split_once('.')
            .map_or(key.as_str(), |(p, _)| p)
            .to_owned(),
        entitlement: args.entitlement.clone(),
        resource: Some(resource),
        min_revision: args.min_revision,
    });
    let value = format!("ApiKey {caller}")
        .parse()
        .context("the caller's key is not valid in gRPC metadata")?;
    request.metadata_mut().insert("authorization", value);
    let explained = AdminClient::new(channel)
        .explain(request)
        .await
        .map_err(super::client::status_error)?
        .into_inner();
    let check = checked.or(explained.check).unwrap_or_default();
    Ok((check, explained.explanation.filter(|_| args.explain)))
}

/// The name of a protobuf enum value without its type's prefix (`SCOPE_TEAM` → `TEAM`).
pub(crate) fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

pub(crate) fn print_json(r: &pb::CheckResponse, explanation: Option<&pb::Explanation>) {
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
    let mut json = json;
    if let Some(e) = explanation {
        json["explanation"] = explanation_json(e);
    }
    println!("{json}");
}

pub(crate) fn print_text(r: &pb::CheckResponse) {
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

fn scope_name(scope: i32) -> String {
    let scope = pb::Scope::try_from(scope).unwrap_or(pb::Scope::Unspecified);
    enum_name(scope.as_str_name(), "SCOPE_")
}

/// The explanation as JSON.
pub(crate) fn explanation_json(e: &pb::Explanation) -> serde_json::Value {
    let keys: Vec<_> = e
        .keys
        .iter()
        .map(|k| {
            json!({
                "prefix": k.prefix,
                "team_id": k.team_id,
                "roles": k.roles,
                "skipped": k.skipped,
                "scopes": k.scopes.iter().map(|s| scope_name(*s)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "requestor": e.requestor,
        "keys": keys,
        "decided_by_key": e.decided_by_key,
        "decided_by_role": e.decided_by_role,
        "decided_scope": scope_name(e.decided_scope),
        "covers": e.covers,
        "coverage": e.coverage,
    })
}

/// The explanation for people: one line per key of the requestor, the grant that decided and
/// why the resource was or was not covered.
pub(crate) fn explanation_lines(e: &pb::Explanation) -> Vec<String> {
    let mut out = Vec::new();
    if !e.requestor.is_empty() {
        out.push(format!("requestor: {}", e.requestor));
    }
    for k in &e.keys {
        let held = if !k.skipped.is_empty() {
            format!("skipped: {}", k.skipped)
        } else if k.scopes.is_empty() {
            "considered: no grant".to_owned()
        } else {
            let scopes: Vec<String> = k.scopes.iter().map(|s| scope_name(*s)).collect();
            format!("considered: grants {}", scopes.join(", "))
        };
        out.push(format!(
            "  key {} (team {}, roles [{}]): {held}",
            k.prefix,
            k.team_id,
            k.roles.join(", ")
        ));
    }
    if !e.decided_by_key.is_empty() {
        out.push(format!(
            "decided by: {} from role {} on key {}",
            scope_name(e.decided_scope),
            e.decided_by_role,
            e.decided_by_key
        ));
    }
    if !e.covers.is_empty() {
        out.push(format!("covers: {}", e.covers));
    }
    if !e.coverage.is_empty() {
        out.push(format!("because: {}", e.coverage));
    }
    out
}

fn print_explanation(e: &pb::Explanation) {
    for line in explanation_lines(e) {
        println!("{line}");
    }
}
