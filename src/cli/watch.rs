//! `rolegate watch`: follow a sidecar's Watch and print one event per line (text or JSON).

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rolegate::{
    grpc::pb::{self, authorizer_client::AuthorizerClient, watch_event::Event},
    tls::client::ClientTlsArgs,
};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    Key,
    Role,
    Team,
    User,
    Project,
    Entitlement,
    Grants,
    Routes,
}

impl Kind {
    fn event_kind(self) -> pb::EventKind {
        match self {
            Kind::Key => pb::EventKind::Key,
            Kind::Role => pb::EventKind::Role,
            Kind::Team => pb::EventKind::Team,
            Kind::User => pb::EventKind::User,
            Kind::Project => pb::EventKind::Project,
            Kind::Entitlement => pb::EventKind::Entitlement,
            Kind::Grants => pb::EventKind::Grants,
            Kind::Routes => pb::EventKind::Routes,
        }
    }
}

#[derive(Args)]
pub(crate) struct WatchArgs {
    /// The sidecar's gRPC address (https:// for TLS).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// The caller's key, `<prefix>.<secret>`: it must hold the reads at ALL scope (AUDITOR,
    /// SYSTEM_OWNER, FOLLOWER). Sent as `authorization: ApiKey` metadata; never printed.
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    key: String,
    /// Replay from this revision (inclusive); 0: only changes from now on.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Begin with the whole current state, then a snapshot-end line.
    #[arg(long, conflicts_with = "from")]
    snapshot: bool,
    /// Only events about this team (repeatable).
    #[arg(long = "team")]
    teams: Vec<String>,
    /// Only events about this user (repeatable).
    #[arg(long = "user")]
    users: Vec<String>,
    /// Only events about the key with this prefix (repeatable).
    #[arg(long = "key-prefix")]
    key_prefixes: Vec<String>,
    /// Only events of this kind (repeatable).
    #[arg(long = "kind", value_enum)]
    kinds: Vec<Kind>,
    /// Print a bookmark after this long without an event (0s: none).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,
    /// The history id the --from revision belongs to (from a previous snapshot-end or bookmark).
    #[arg(long, default_value = "")]
    history: String,
    /// Stop after this many events (0: run until the stream ends).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// Runs the watch. Exit codes: 0 when the stream ended or --count was reached, 3 after a reset
/// (watch again with --snapshot), 2 on an error (including a key that may not watch, or that
/// loses its grant while watching).
pub(crate) async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let channel = rolegate::tls::client::endpoint(&args.addr, &args.tls.clone().into())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let mut client = AuthorizerClient::new(channel);
    let (output, count) = (args.output, args.count);
    let request = request(args)?;
    let stream = client
        .watch(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    print_events(stream, output, count).await
}

/// The Watch call the flags ask for, with the caller's key in its metadata.
fn request(args: WatchArgs) -> anyhow::Result<tonic::Request<pb::WatchRequest>> {
    let kinds = args.kinds.iter().map(|k| k.event_kind() as i32).collect();
    let request = pb::WatchRequest {
        start_revision: args.from,
        snapshot: args.snapshot,
        team_ids: args.teams,
        user_ids: args.users,
        key_prefixes: args.key_prefixes,
        kinds,
        bookmark_interval_ms: u32::try_from(args.bookmark_interval.as_millis()).unwrap_or(u32::MAX),
        history: args.history,
        ..Default::default()
    };
    let mut request = tonic::Request::new(request);
    let authorization = format!("ApiKey {}", args.key)
        .parse()
        .context("--key has characters that cannot be sent")?;
    request
        .metadata_mut()
        .insert("authorization", authorization);
    Ok(request)
}

/// Prints each event as one line until the stream ends, a reset (exit 3) or `count` events
/// (0: no limit).
async fn print_events(
    mut stream: tonic::Streaming<pb::WatchEvent>,
    output: Format,
    count: u64,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(s) => anyhow::bail!("{}: {}", s.code(), s.message()),
        };
        let line = match output {
            Format::Text => text_line(&ev),
            Format::Json => json_line(&ev).to_string(),
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        if matches!(ev.event, Some(Event::Reset(_))) {
            return Ok(ExitCode::from(3));
        }
        seen += 1;
        if count > 0 && seen >= count {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// The kind name and the details of an event.
fn parts(ev: &pb::WatchEvent) -> (&'static str, Value) {
    match &ev.event {
        Some(Event::KeyUpserted(k)) => (
            "key_upserted",
            json!({
                "prefix": k.prefix, "type": k.key_type().as_str_name().trim_start_matches("KEY_TYPE_").to_lowercase(),
                "user": k.user_id, "team": k.team_id, "project": k.project_id, "roles": k.roles,
                "status": k.status, "expires_at": k.expires_at,
            }),
        ),
        Some(Event::KeyRemoved(p)) => ("key_removed", json!({ "prefix": p })),
        Some(Event::RoleDefined(r)) => ("role_defined", role(r)),
        Some(Event::RoleChanged(r)) => ("role_changed", role(r)),
        Some(Event::RoleRemoved(id)) => ("role_removed", json!({ "id": id })),
        Some(Event::TeamChanged(t)) => (
            "team_changed",
            json!({ "id": t.id, "name": t.name, "active": t.active }),
        ),
        Some(Event::TeamRemoved(id)) => ("team_removed", json!({ "id": id })),
        Some(Event::UserChanged(u)) => (
            "user_changed",
            json!({ "id": u.id, "name": u.name, "active": u.active, "teams": u.team_ids }),
        ),
        Some(Event::UserRemoved(id)) => ("user_removed", json!({ "id": id })),
        Some(Event::ProjectChanged(p)) => (
            "project_changed",
            json!({ "id": p.id, "team": p.team_id, "name": p.name }),
        ),
        Some(Event::ProjectRemoved(id)) => ("project_removed", json!({ "id": id })),
        Some(Event::EntitlementAdded(e)) => ("entitlement_added", json!({ "id": e })),
        Some(Event::EntitlementRemoved(e)) => ("entitlement_removed", json!({ "id": e })),
        Some(Event::RoutesChanged(t)) => {
            let routes: Vec<String> = t
                .routes
                .iter()
                .map(|r| format!("{} {} {}", r.method, r.path, r.entitlement))
                .collect();
            ("routes_changed", json!({ "routes": routes }))
        }
        Some(Event::RoutesDefault(_)) => ("routes_default", json!({})),
        Some(Event::GrantsChanged(g)) => (
            "grants_changed",
            json!({ "user": g.user_id, "project": g.project_id }),
        ),
        Some(Event::Bookmark(_)) => ("bookmark", json!({ "history": ev.history })),
        Some(Event::SnapshotEnd(_)) => ("snapshot_end", json!({ "history": ev.history })),
        Some(Event::Reset(r)) => (
            "reset",
            json!({ "oldest_kept": r.oldest_kept, "reason": r.reason, "history": ev.history }),
        ),
        None => ("unknown", Value::Null),
    }
}

fn role(r: &pb::RoleDefinition) -> Value {
    let grants: Vec<String> = r
        .grants
        .iter()
        .map(|g| {
            let scope = g
                .scope()
                .as_str_name()
                .trim_start_matches("SCOPE_")
                .to_owned();
            format!("{}:{scope}", g.entitlement)
        })
        .collect();
    json!({ "id": r.id, "type": r.role_type, "grants": grants, "prebuilt": r.prebuilt })
}

fn json_line(ev: &pb::WatchEvent) -> Value {
    let (kind, details) = parts(ev);
    json!({ "revision": ev.revision, "end_of_revision": ev.end_of_revision, "kind": kind, "event": details })
}

fn text_line(ev: &pb::WatchEvent) -> String {
    let (kind, details) = parts(ev);
    let mut fields = Vec::new();
    if let Value::Object(map) = details {
        for (k, v) in map {
            let v = match v {
                Value::String(s) if s.is_empty() => continue,
                Value::Array(a) if a.is_empty() => continue,
                Value::String(s) => s,
                other => other.to_string(),
            };
            fields.push(format!("{k}={v}"));
        }
    }
    let end = if ev.end_of_revision { " ." } else { "" };
    format!("{} {kind} {}{end}", ev.revision, fields.join(" "))
}
