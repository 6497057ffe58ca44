//! `rolegate watch`: follow a sidecar's Watch and print one event per line (text or JSON).

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rolegate::{
    grpc::pb::{self, authorizer_client::AuthorizerClient, watch_event::Event},
    tls::client::ClientTlsArgs,
};
use serde_json::{Value, json};

use super::output::Output;

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
    /// The server's gRPC address: HOST:PORT (https:// with TLS options, else http://), a URL,
    /// or unix:PATH (a Unix socket).
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
    /// When the stream breaks or the server goes away, exit (0) instead of reconnecting and
    /// resuming after the last revision printed.
    #[arg(long)]
    no_reconnect: bool,
    /// How to print each event: text for people, json for scripts (one object a line).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Runs the watch. Exit codes: 0 when --count was reached (or, with --no-reconnect, when the
/// stream ended), 3 after a reset (watch again with --snapshot), 2 on an error (including a key
/// that may not watch, or that loses its grant while watching).
///
/// Unless --no-reconnect is given, a stream that breaks after it was opened (the server
/// restarts, the connection drops) is opened again after a bounded backoff, resuming from the
/// revision after the last one printed in full, with the history id the server gave: nothing is
/// missed and nothing printed twice, or, when the server cannot resume there, a reset.
pub(crate) async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let endpoint = super::client::endpoint(&args.addr, &args.tls)?
        .tune(|e| e.connect_timeout(Duration::from_secs(5)));
    let mut position = Position {
        next: args.from,
        history: args.history.clone(),
        in_snapshot: args.snapshot,
        ..Position::default()
    };
    let mut printer = Printer {
        output: args.output,
        count: args.count,
        printed: 0,
    };
    let mut backoff = Backoff::default();
    let mut opened_once = false;
    loop {
        position.received = false;
        let attempt = watch_once(&endpoint, &args, &mut position, &mut printer).await;
        opened_once |= position.opened;
        if position.received {
            backoff.reset();
        }
        let broken = match attempt {
            Ok(Flow::Done(code)) => return Ok(code),
            // The old behaviour: the end of the stream is the end of the command.
            Ok(Flow::Ended) if args.no_reconnect => return Ok(ExitCode::SUCCESS),
            Ok(Flow::Ended) => anyhow::anyhow!("the server ended the stream"),
            Ok(Flow::Broken(err)) | Err(Failure::Retryable(err))
                if !args.no_reconnect && opened_once =>
            {
                err
            }
            Ok(Flow::Broken(err)) | Err(Failure::Retryable(err) | Failure::Fatal(err)) => {
                return Err(err);
            }
        };
        let delay = backoff.next_delay();
        let from = match position.next {
            0 if position.in_snapshot => "with a new snapshot".to_owned(),
            0 => "from the current revision".to_owned(),
            n => format!("from revision {n}"),
        };
        eprintln!("watch: {broken:#}; resuming {from} in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// How one stream ended without an error of the command's own.
enum Flow {
    /// The command is over, with this exit code (--count reached, a reset).
    Done(ExitCode),
    /// The server ended the stream without a status.
    Ended,
    /// The stream broke (the server went away, the connection failed); another may resume it.
    Broken(anyhow::Error),
}

/// Why a stream could not be opened or read.
enum Failure {
    /// The server or the connection failed: worth trying again once a stream was opened.
    Retryable(anyhow::Error),
    /// The server refused: trying again would be refused again.
    Fatal(anyhow::Error),
}

/// Where the command stands in the server's history: what the next stream asks for.
#[derive(Debug, Default)]
struct Position {
    /// The revision to resume from (0: none known yet).
    next: u64,
    /// The history id of the revisions printed ("": not known).
    history: String,
    /// A snapshot was asked for and its end not seen yet.
    in_snapshot: bool,
    /// The revision printed in part, and how many of its events were printed.
    partial: Option<(u64, u64)>,
    /// On a resumed stream: the events of this revision to pass over, printed before the break.
    skip: Option<(u64, u64)>,
    /// A Watch call was answered at least once.
    opened: bool,
    /// The last stream delivered an event (a bookmark counts).
    received: bool,
}

impl Position {
    /// The Watch request of the next stream.
    fn request(&self, args: &WatchArgs, internal_bookmarks: bool) -> pb::WatchRequest {
        let kinds = args.kinds.iter().map(|k| k.event_kind() as i32).collect();
        let bookmark_interval = if internal_bookmarks {
            INTERNAL_BOOKMARK
        } else {
            args.bookmark_interval
        };
        let snapshot = self.in_snapshot && self.next == 0;
        pb::WatchRequest {
            start_revision: if snapshot { 0 } else { self.next },
            snapshot,
            team_ids: args.teams.clone(),
            user_ids: args.users.clone(),
            key_prefixes: args.key_prefixes.clone(),
            kinds,
            bookmark_interval_ms: u32::try_from(bookmark_interval.as_millis()).unwrap_or(u32::MAX),
            history: if snapshot {
                String::new()
            } else {
                self.history.clone()
            },
            ..Default::default()
        }
    }

    /// Whether `ev`, from a resumed stream, was printed before the break; counts it off.
    fn already_printed(&mut self, ev: &pb::WatchEvent) -> bool {
        match &mut self.skip {
            Some((revision, left)) if *revision == ev.revision && *left > 0 => {
                *left -= 1;
                true
            }
            _ => {
                self.skip = None;
                false
            }
        }
    }

    /// Takes in an event that was printed (or, for an internal bookmark, passed over).
    fn advance(&mut self, ev: &pb::WatchEvent) {
        match &ev.event {
            Some(Event::Bookmark(_)) | Some(Event::SnapshotEnd(_)) => {
                self.history = ev.history.clone();
                self.next = ev.revision + 1;
                self.in_snapshot = false;
                self.partial = None;
            }
            // The events of a snapshot are not resumed: a break takes a new snapshot.
            _ if self.in_snapshot => {}
            _ if ev.end_of_revision => {
                self.next = ev.revision + 1;
                self.partial = None;
            }
            _ => {
                let printed = match self.partial {
                    Some((revision, n)) if revision == ev.revision => n + 1,
                    _ => 1,
                };
                self.partial = Some((ev.revision, printed));
            }
        }
    }
}

/// The bookmark interval asked for when the user asked for none and the stream may be resumed:
/// a quiet stream still learns its revision and history, and the bookmarks are not printed.
const INTERNAL_BOOKMARK: Duration = Duration::from_secs(1);

/// Waits between attempts: 100 ms, doubling up to 5 s; back to the start once a stream delivers.
#[derive(Debug, Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next_delay(&mut self) -> Duration {
        let delay = Self::FIRST
            .saturating_mul(1 << self.attempts.min(10))
            .min(Self::MAX);
        self.attempts += 1;
        delay
    }

    fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// Opens one stream from `position` and prints its events until it ends, breaks, or the command
/// is done.
async fn watch_once(
    endpoint: &super::client::Target,
    args: &WatchArgs,
    position: &mut Position,
    printer: &mut Printer,
) -> Result<Flow, Failure> {
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::Retryable(
            anyhow::Error::new(e).context(format!("cannot connect to {}", args.addr)),
        )
    })?;
    let internal_bookmarks = !args.no_reconnect && args.bookmark_interval.is_zero();
    let mut request = tonic::Request::new(position.request(args, internal_bookmarks));
    let authorization = format!("ApiKey {}", args.key)
        .parse()
        .context("--key has characters that cannot be sent")
        .map_err(Failure::Fatal)?;
    request
        .metadata_mut()
        .insert("authorization", authorization);
    let resuming = position.next > 0 && position.next != args.from;
    let mut stream = match AuthorizerClient::new(channel).watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if resuming && status.code() == tonic::Code::OutOfRange => {
            // The server is behind the revisions printed: another history under the same numbers.
            eprintln!(
                "watch: the server cannot resume from revision {} ({}); watch again with --snapshot",
                position.next,
                status.message()
            );
            return Ok(Flow::Done(ExitCode::from(3)));
        }
        Err(status) => return Err(classify(status)),
    };
    position.opened = true;
    position.skip = position.partial.take();
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(Flow::Ended),
            Err(status) => {
                return match classify(status) {
                    Failure::Retryable(err) => Ok(Flow::Broken(err)),
                    fatal => Err(fatal),
                };
            }
        };
        position.received = true;
        if position.already_printed(&ev) {
            continue;
        }
        let internal = internal_bookmarks && matches!(ev.event, Some(Event::Bookmark(_)));
        if !internal && let Some(code) = printer.print(&ev).map_err(Failure::Fatal)? {
            return Ok(Flow::Done(code));
        }
        position.advance(&ev);
    }
}

/// A failed call or stream: retryable when the server or the connection failed, fatal when the
/// server refused the request or the key.
fn classify(status: tonic::Status) -> Failure {
    use tonic::Code;
    let retryable = matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    );
    let err = super::client::status_error(status);
    if retryable {
        Failure::Retryable(err)
    } else {
        Failure::Fatal(err)
    }
}

/// Prints events, one a line, and counts them against --count.
struct Printer {
    output: Output,
    count: u64,
    printed: u64,
}

impl Printer {
    /// Prints `ev`; the exit code when the command is done after it (a reset, --count reached).
    fn print(&mut self, ev: &pb::WatchEvent) -> anyhow::Result<Option<ExitCode>> {
        let line = match self.output {
            Output::Text => text_line(ev),
            Output::Json => json_line(ev).to_string(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        if matches!(ev.event, Some(Event::Reset(_))) {
            return Ok(Some(ExitCode::from(3)));
        }
        self.printed += 1;
        Ok((self.count > 0 && self.printed >= self.count).then_some(ExitCode::SUCCESS))
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
