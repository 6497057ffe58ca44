//! The Admin CLI: `rolegate keys create|list|get|update|revoke|replace-secret|delete`,
//! `rolegate roles|teams|users|projects …`, `rolegate routes list`, `rolegate apply -f FILE`, and `rolegate bench-writes`
//! (durable write throughput and check-after-write latency). Each command is one Admin call
//! with the caller's key from `--key` / `ROLEGATE_API_KEY`; tables for people, `--output json`
//! for scripts.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rolegate::grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::{Request, transport::Channel};

/// `println!` that ends the process quietly when stdout is closed (`rolegate keys list | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    #[default]
    Table,
    Json,
}

/// Where to connect and as whom.
#[derive(Args, Clone, Debug)]
pub(crate) struct Conn {
    /// The server's gRPC address (https:// for TLS).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: rolegate::tls::client::ClientTlsArgs,
    /// The caller's API key, `<prefix>.<secret>`.
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    key: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// `rolegate keys …` against a server (the offline `keys new` / `keys hash` stay in main).
#[derive(Subcommand, Debug)]
pub(crate) enum KeysAdmin {
    /// Create a key on the server; the whole key is printed once.
    Create {
        /// Team key: its user.
        #[arg(long, conflicts_with = "project", requires = "team")]
        user: Option<String>,
        /// Team key: its team.
        #[arg(long, requires = "user")]
        team: Option<String>,
        /// Project key: its project.
        #[arg(long)]
        project: Option<String>,
        /// A role to bind (repeat, or comma-separate).
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// The public prefix; random when omitted.
        #[arg(long)]
        prefix: Option<String>,
        /// RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys visible to the caller.
    List {
        #[arg(long, default_value = "")]
        team: String,
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value = "")]
        project: String,
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value = "")]
        role: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one key.
    Get {
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a key's status, roles or expiry.
    Update {
        prefix: String,
        /// active | inactive | pending | rejected | deleted
        #[arg(long)]
        status: Option<String>,
        /// Replace the roles with these (comma-separated; `--roles ''` removes all).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// RFC 3339 expiry, or `never`.
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deactivate a key (status inactive).
    Revoke {
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give a key a new secret; the old one stops working. The new key is printed once.
    ReplaceSecret {
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key.
    Delete {
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// The other Admin commands.
#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Custom roles and entitlements.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Teams.
    #[command(subcommand)]
    Teams(TeamsCommand),
    /// Users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Projects.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// The route table of the proxy front ends (Envoy ext_authz, the HTTP auth endpoint).
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Make the server's state equal to a policy file, as one revision (`--dry-run`: show the
    /// diff only).
    Apply {
        /// The policy file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Measure durable single-key writes from concurrent clients, and Checks issued right after
    /// each write with its revision as min_revision. The key must be allowed to create teams,
    /// users and keys (a SYSTEM_OWNER key).
    BenchWrites(BenchWritesArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum RoutesCommand {
    /// Show the route table a server enforces and where it came from (the built-in default, a
    /// policy file, the store, a hub); with --policy, the table of a policy file, offline.
    List {
        /// Read the routes of this policy file instead of asking a server.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The server's gRPC address (https:// for TLS).
        #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[command(flatten)]
        tls: rolegate::tls::client::ClientTlsArgs,
        /// The caller's API key, `<prefix>.<secret>` (needs roles.read).
        #[arg(
            long,
            env = "ROLEGATE_API_KEY",
            hide_env_values = true,
            required_unless_present = "policy"
        )]
        key: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RolesCommand {
    /// List roles.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a custom role: `--grant models.read:TEAM` (repeat).
    Create {
        id: String,
        /// user | system
        #[arg(long = "type", default_value = "user")]
        role_type: String,
        #[arg(long = "grant", value_delimiter = ',')]
        grants: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace a custom role's grants.
    Update {
        id: String,
        #[arg(long = "type", default_value = "user")]
        role_type: String,
        #[arg(long = "grant", value_delimiter = ',')]
        grants: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a custom role (refused while it is bound).
    Delete {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add entitlements to the catalog.
    AddEntitlements {
        ids: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum TeamsCommand {
    List {
        #[command(flatten)]
        conn: Conn,
    },
    Get {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Create it inactive.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a team: only the fields given change.
    Update {
        /// The team's id.
        id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        status: StatusArgs,
        #[command(flatten)]
        conn: Conn,
    },
    Delete {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `--active` / `--inactive` for an update: neither keeps the status as it is.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub(crate) struct StatusArgs {
    /// Make it active.
    #[arg(long)]
    active: bool,
    /// Make it inactive (its keys stop authenticating).
    #[arg(long)]
    inactive: bool,
}

impl StatusArgs {
    /// The status asked for; `None` to keep it.
    fn active(&self) -> Option<bool> {
        match (self.active, self.inactive) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum UsersCommand {
    List {
        #[command(flatten)]
        conn: Conn,
    },
    Get {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A team the user belongs to (repeat or comma-separate).
        #[arg(long = "team", value_delimiter = ',')]
        teams: Vec<String>,
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a user: only the fields given change.
    Update {
        /// The user's id.
        id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        /// Replace the user's teams with these (repeat or comma-separate).
        #[arg(long = "team", value_delimiter = ',', conflicts_with = "no_teams")]
        teams: Vec<String>,
        /// Clear the user's team list (membership then follows its keys).
        #[arg(long)]
        no_teams: bool,
        #[command(flatten)]
        status: StatusArgs,
        #[command(flatten)]
        conn: Conn,
    },
    Delete {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProjectsCommand {
    List {
        #[command(flatten)]
        conn: Conn,
    },
    Get {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    Create {
        id: String,
        #[arg(long)]
        team: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a project: only the fields given change.
    Update {
        /// The project's id.
        id: String,
        /// Move the project (and its keys) to this team.
        #[arg(long)]
        team: Option<String>,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    Delete {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BenchWritesArgs {
    /// Concurrent writers, each updating its own key.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    conn: Conn,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn channel(conn: &Conn) -> anyhow::Result<Channel> {
    rolegate::tls::client::endpoint(&conn.addr, &conn.tls.clone().into())?
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.addr))
}

async fn client(conn: &Conn) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(conn).await?))
}

fn call<T>(conn: &Conn, message: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    let value = format!("ApiKey {}", conn.key)
        .parse()
        .context("--key has characters that cannot be sent")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// A failed call as people read it: the code, the message and each field violation.
/// Every item of a paged list call: `page(token)` fetches one page (of the largest size the
/// server gives) and its next token; pages are asked for until the server says there are none.
async fn all_pages<T, F, Fut>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// The page request of [`all_pages`].
fn list_page(token: String) -> pb::ListRequest {
    pb::ListRequest {
        page_size: 1000,
        page_token: token,
    }
}

fn failed(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(text)
}

fn rfc3339(at: i64) -> String {
    if at == 0 {
        return "never".into();
    }
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| at.to_string())
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    if text == "never" {
        return Ok(0);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .with_context(|| format!("{flag} {text:?} is not an RFC 3339 time (or `never`)"))
}

fn key_type(k: &pb::Key) -> &'static str {
    match k.key_type() {
        pb::KeyType::Team => "team",
        pb::KeyType::Project => "project",
        pb::KeyType::Unspecified => "?",
    }
}

fn key_json(k: &pb::Key) -> Value {
    json!({
        "prefix": k.prefix, "type": key_type(k), "user": k.user, "team": k.team,
        "project": k.project, "roles": k.roles, "status": k.status,
        "expires_at": (k.expires_at != 0).then(|| rfc3339(k.expires_at)),
    })
}

/// Prints rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn print_keys(output: Output, keys: &[pb::Key]) {
    if output == Output::Json {
        say!("{}", Value::Array(keys.iter().map(key_json).collect()));
        return;
    }
    table(
        &[
            "PREFIX", "TYPE", "TEAM", "OWNER", "ROLES", "STATUS", "EXPIRES",
        ],
        keys.iter()
            .map(|k| {
                vec![
                    k.prefix.clone(),
                    key_type(k).into(),
                    k.team.clone(),
                    if k.project.is_empty() {
                        format!("user {}", k.user)
                    } else {
                        format!("project {}", k.project)
                    },
                    k.roles.join(","),
                    k.status.clone(),
                    rfc3339(k.expires_at),
                ]
            })
            .collect(),
    );
}

fn print_revision(output: Output, what: &str, revision: u64) {
    if output == Output::Json {
        say!("{}", json!({ "revision": revision }));
    } else {
        say!("{what} (revision {revision})");
    }
}

/// Prints a key created or re-keyed: the whole key once.
fn print_new_key(output: Output, r: &pb::CreateKeyResponse) {
    let key = r.key.clone().unwrap_or_default();
    if output == Output::Json {
        say!(
            "{}",
            json!({ "api_key": r.api_key, "key": key_json(&key), "revision": r.revision })
        );
    } else {
        say!("{}", r.api_key);
        eprintln!(
            "key {} (revision {}): the line above is the whole key, shown this once and stored nowhere; keep it now.",
            key.prefix, r.revision
        );
    }
}

/// Runs `rolegate keys <admin command>`.
pub(crate) fn run_keys(cmd: KeysAdmin) -> anyhow::Result<()> {
    runtime()?.block_on(keys(cmd))
}

async fn keys(cmd: KeysAdmin) -> anyhow::Result<()> {
    match cmd {
        KeysAdmin::Create {
            user,
            team,
            project,
            roles,
            prefix,
            expires_at,
            conn,
        } => {
            let kind = if project.is_some() {
                pb::KeyType::Project
            } else if user.is_some() {
                pb::KeyType::Team
            } else {
                bail!("give --user and --team for a team key, or --project for a project key");
            };
            let req = pb::CreateKeyRequest {
                prefix: prefix.unwrap_or_default(),
                key_type: kind as i32,
                user: user.unwrap_or_default(),
                team: team.unwrap_or_default(),
                project: project.unwrap_or_default(),
                roles,
                expires_at: expires_at
                    .map(|t| parse_time("--expires-at", &t))
                    .transpose()?
                    .unwrap_or(0),
            };
            let r = client(&conn)
                .await?
                .create_key(call(&conn, req)?)
                .await
                .map_err(failed)?
                .into_inner();
            print_new_key(conn.output, &r);
        }
        KeysAdmin::List {
            team,
            user,
            project,
            status,
            role,
            conn,
        } => {
            let admin = client(&conn).await?;
            let all = all_pages(|token| {
                let mut admin = admin.clone();
                let request = call(
                    &conn,
                    pb::ListKeysRequest {
                        page_size: 1000,
                        page_token: token,
                        team: team.clone(),
                        user: user.clone(),
                        project: project.clone(),
                        status: status.clone(),
                        role: role.clone(),
                    },
                );
                async move {
                    let page = admin.list_keys(request?).await.map_err(failed)?;
                    let page = page.into_inner();
                    Ok((page.keys, page.next_page_token))
                }
            })
            .await?;
            print_keys(conn.output, &all);
        }
        KeysAdmin::Get { prefix, conn } => {
            let r = client(&conn)
                .await?
                .get_key(call(&conn, pb::GetRequest { id: prefix })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_keys(conn.output, &r.key.into_iter().collect::<Vec<_>>());
        }
        KeysAdmin::Update {
            prefix,
            status,
            roles,
            expires_at,
            conn,
        } => {
            let replace_roles = roles.is_some();
            let roles: Vec<String> = roles
                .unwrap_or_default()
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect();
            let req = pb::UpdateKeyRequest {
                prefix,
                status,
                replace_roles,
                roles,
                expires_at: expires_at
                    .map(|t| parse_time("--expires-at", &t))
                    .transpose()?,
            };
            update_key(&conn, req).await?;
        }
        KeysAdmin::Revoke { prefix, conn } => {
            let req = pb::UpdateKeyRequest {
                prefix,
                status: Some("inactive".into()),
                ..Default::default()
            };
            update_key(&conn, req).await?;
        }
        KeysAdmin::ReplaceSecret { prefix, conn } => {
            let r = client(&conn)
                .await?
                .replace_key_secret(call(&conn, pb::GetRequest { id: prefix })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_new_key(conn.output, &r);
        }
        KeysAdmin::Delete { prefix, conn } => {
            let r = client(&conn)
                .await?
                .delete_key(call(&conn, pb::DeleteRequest { id: prefix.clone() })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("deleted key {prefix}"), r.revision);
        }
    }
    Ok(())
}

async fn update_key(conn: &Conn, req: pb::UpdateKeyRequest) -> anyhow::Result<()> {
    let r = client(conn)
        .await?
        .update_key(call(conn, req)?)
        .await
        .map_err(failed)?
        .into_inner();
    if conn.output == Output::Json {
        let key = r.key.as_ref().map(key_json);
        say!("{}", json!({ "key": key, "revision": r.revision }));
    } else {
        print_keys(conn.output, &r.key.into_iter().collect::<Vec<_>>());
        say!("(revision {})", r.revision);
    }
    Ok(())
}

/// Runs `rolegate roles|teams|users|projects|apply|bench-writes`.
pub(crate) fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    runtime()?.block_on(admin(cmd))
}

fn grants(specs: &[String]) -> anyhow::Result<Vec<pb::Grant>> {
    specs
        .iter()
        .map(|g| {
            let (entitlement, scope) = g
                .split_once(':')
                .with_context(|| format!("--grant {g:?}: expected entitlement:SCOPE"))?;
            Ok(pb::Grant {
                entitlement: entitlement.into(),
                scope: scope.to_ascii_uppercase(),
            })
        })
        .collect()
}

async fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Roles(cmd) => roles(cmd).await,
        AdminCommand::Teams(cmd) => teams(cmd).await,
        AdminCommand::Users(cmd) => users(cmd).await,
        AdminCommand::Projects(cmd) => projects(cmd).await,
        AdminCommand::Routes(cmd) => routes(cmd).await,
        AdminCommand::Apply {
            file,
            dry_run,
            conn,
        } => {
            let document = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = client(&conn)
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
            } else {
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
            }
            Ok(())
        }
        AdminCommand::BenchWrites(args) => bench_writes(args).await,
    }
}

async fn routes(cmd: RoutesCommand) -> anyhow::Result<()> {
    let RoutesCommand::List {
        policy,
        addr,
        tls,
        key,
        output,
    } = cmd;
    let table = match policy {
        Some(file) => {
            let policy = rolegate::origin::policy_file::load(&file).map_err(|e| {
                anyhow::anyhow!("{e}\n{}: {} problem(s)", file.display(), e.problems.len())
            })?;
            let (routes, source) = match &policy.model.routes {
                Some(specs) => (specs.iter().map(Into::into).collect(), "policy_file"),
                None => (
                    rolegate::authz::routes::default_routes()
                        .iter()
                        .map(Into::into)
                        .collect(),
                    "default",
                ),
            };
            RouteListing {
                routes,
                source: source.into(),
                origin: file.display().to_string(),
                revisions: None,
            }
        }
        None => {
            let conn = Conn {
                addr,
                tls,
                key: key.unwrap_or_default(),
                output,
            };
            let r = client(&conn)
                .await?
                .list_routes(call(&conn, pb::ListRoutesRequest {})?)
                .await
                .map_err(failed)?
                .into_inner();
            RouteListing {
                routes: r.routes,
                source: r.source,
                origin: r.origin,
                revisions: Some((r.routes_revision, r.revision)),
            }
        }
    };
    table.print(output);
    Ok(())
}

/// A route table and where it came from, as `routes list` prints it.
struct RouteListing {
    routes: Vec<pb::RouteDefinition>,
    /// default, policy_file, store or hub.
    source: String,
    /// The policy file, data directory or hub address.
    origin: String,
    /// From a server: the revision that installed the table, and the state's.
    revisions: Option<(u64, u64)>,
}

impl RouteListing {
    fn print(&self, output: Output) {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        if output == Output::Json {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    json!({ "method": r.method, "path": r.path, "entitlement": r.entitlement,
                        "team": nonempty(&r.team), "owner_key": nonempty(&r.owner_key),
                        "owner_user": nonempty(&r.owner_user) })
                })
                .collect();
            say!(
                "{}",
                json!({
                    "source": self.source, "origin": nonempty(&self.origin),
                    "routes_revision": self.revisions.map(|r| r.0),
                    "revision": self.revisions.map(|r| r.1),
                    "routes": routes,
                })
            );
            return;
        }
        let whence = match (self.source.as_str(), self.revisions) {
            ("default", Some((_, revision))) => {
                format!("the built-in default table (state at revision {revision})")
            }
            ("default", None) => format!(
                "the built-in default table ({} has no routes:)",
                self.origin
            ),
            (source, Some((installed, revision))) => format!(
                "{} {} (installed at revision {installed}; state at revision {revision})",
                source.replace('_', " "),
                self.origin
            ),
            (source, None) => format!("{} {}", source.replace('_', " "), self.origin),
        };
        say!("{} route(s) from {whence}", self.routes.len());
        table(
            &["METHOD", "PATH", "ENTITLEMENT", "RESOURCE"],
            self.routes
                .iter()
                .map(|r| {
                    let resource: Vec<String> = [
                        ("team", &r.team),
                        ("owner_key", &r.owner_key),
                        ("owner_user", &r.owner_user),
                    ]
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                    vec![
                        r.method.clone(),
                        r.path.clone(),
                        r.entitlement.clone(),
                        resource.join(" "),
                    ]
                })
                .collect(),
        );
    }
}

async fn roles(cmd: RolesCommand) -> anyhow::Result<()> {
    match cmd {
        RolesCommand::List { conn } => {
            let admin = client(&conn).await?;
            let roles = all_pages(|token| {
                let mut admin = admin.clone();
                let request = call(&conn, list_page(token));
                async move {
                    let page = admin.list_roles(request?).await.map_err(failed)?;
                    let page = page.into_inner();
                    Ok((page.roles, page.next_page_token))
                }
            })
            .await?;
            if conn.output == Output::Json {
                let roles: Vec<Value> = roles
                    .iter()
                    .map(|role| {
                        json!({ "id": role.id, "type": role.r#type, "prebuilt": role.prebuilt,
                            "grants": role.grants.iter().map(|g| json!({"entitlement": g.entitlement, "scope": g.scope})).collect::<Vec<_>>() })
                    })
                    .collect();
                say!("{}", Value::Array(roles));
            } else {
                table(
                    &["ROLE", "TYPE", "PREBUILT", "GRANTS"],
                    roles
                        .iter()
                        .map(|role| {
                            vec![
                                role.id.clone(),
                                role.r#type.clone(),
                                role.prebuilt.to_string(),
                                role.grants
                                    .iter()
                                    .map(|g| format!("{}:{}", g.entitlement, g.scope))
                                    .collect::<Vec<_>>()
                                    .join(","),
                            ]
                        })
                        .collect(),
                );
            }
        }
        RolesCommand::Create {
            id,
            role_type,
            grants: specs,
            conn,
        } => put_role(&conn, id, role_type, &specs, true).await?,
        RolesCommand::Update {
            id,
            role_type,
            grants: specs,
            conn,
        } => put_role(&conn, id, role_type, &specs, false).await?,
        RolesCommand::Delete { id, conn } => {
            let r = client(&conn)
                .await?
                .delete_role(call(&conn, pb::DeleteRequest { id: id.clone() })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("deleted role {id}"), r.revision);
        }
        RolesCommand::AddEntitlements { ids, conn } => {
            let r = client(&conn)
                .await?
                .add_entitlements(call(&conn, pb::AddEntitlementsRequest { ids })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, "entitlements added", r.revision);
        }
    }
    Ok(())
}

async fn put_role(
    conn: &Conn,
    id: String,
    role_type: String,
    specs: &[String],
    create: bool,
) -> anyhow::Result<()> {
    let role = pb::Role {
        id: id.clone(),
        r#type: role_type,
        grants: grants(specs)?,
        prebuilt: false,
    };
    let mut admin = client(conn).await?;
    let req = call(conn, pb::RoleRequest { role: Some(role) })?;
    let r = if create {
        admin.create_role(req).await
    } else {
        admin.update_role(req).await
    }
    .map_err(failed)?
    .into_inner();
    print_revision(conn.output, &format!("role {id}"), r.revision);
    Ok(())
}

fn print_teams(output: Output, teams: &[pb::Team]) {
    if output == Output::Json {
        let v: Vec<Value> = teams
            .iter()
            .map(|t| json!({"id": t.id, "name": t.name, "active": t.active}))
            .collect();
        say!("{}", Value::Array(v));
    } else {
        table(
            &["TEAM", "NAME", "STATUS"],
            teams
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        if t.active { "active" } else { "inactive" }.into(),
                    ]
                })
                .collect(),
        );
    }
}

async fn teams(cmd: TeamsCommand) -> anyhow::Result<()> {
    match cmd {
        TeamsCommand::List { conn } => {
            let admin = client(&conn).await?;
            let all = all_pages(|token| {
                let mut admin = admin.clone();
                let request = call(&conn, list_page(token));
                async move {
                    let page = admin.list_teams(request?).await.map_err(failed)?;
                    let page = page.into_inner();
                    Ok((page.teams, page.next_page_token))
                }
            })
            .await?;
            print_teams(conn.output, &all);
        }
        TeamsCommand::Get { id, conn } => {
            let r = client(&conn)
                .await?
                .get_team(call(&conn, pb::GetRequest { id })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_teams(conn.output, &r.team.into_iter().collect::<Vec<_>>());
        }
        TeamsCommand::Create {
            id,
            name,
            inactive,
            conn,
        } => {
            let team = pb::Team {
                id: id.clone(),
                name,
                active: !inactive,
            };
            let r = client(&conn)
                .await?
                .create_team(call(&conn, pb::TeamRequest { team: Some(team) })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("team {id}"), r.revision);
        }
        TeamsCommand::Update {
            id,
            name,
            status,
            conn,
        } => {
            let req = pb::UpdateTeamRequest {
                id: id.clone(),
                name,
                active: status.active(),
            };
            let r = client(&conn)
                .await?
                .update_team(call(&conn, req)?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("team {id}"), r.revision);
        }
        TeamsCommand::Delete { id, conn } => {
            let r = client(&conn)
                .await?
                .delete_team(call(&conn, pb::DeleteRequest { id: id.clone() })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("deleted team {id}"), r.revision);
        }
    }
    Ok(())
}

fn print_users(output: Output, users: &[pb::User]) {
    if output == Output::Json {
        let v: Vec<Value> = users
            .iter()
            .map(|u| json!({"id": u.id, "name": u.name, "active": u.active, "teams": u.teams}))
            .collect();
        say!("{}", Value::Array(v));
    } else {
        table(
            &["USER", "NAME", "STATUS", "TEAMS"],
            users
                .iter()
                .map(|u| {
                    vec![
                        u.id.clone(),
                        u.name.clone(),
                        if u.active { "active" } else { "inactive" }.into(),
                        u.teams.join(","),
                    ]
                })
                .collect(),
        );
    }
}

async fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::List { conn } => {
            let admin = client(&conn).await?;
            let all = all_pages(|token| {
                let mut admin = admin.clone();
                let request = call(&conn, list_page(token));
                async move {
                    let page = admin.list_users(request?).await.map_err(failed)?;
                    let page = page.into_inner();
                    Ok((page.users, page.next_page_token))
                }
            })
            .await?;
            print_users(conn.output, &all);
        }
        UsersCommand::Get { id, conn } => {
            let r = client(&conn)
                .await?
                .get_user(call(&conn, pb::GetRequest { id })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_users(conn.output, &r.user.into_iter().collect::<Vec<_>>());
        }
        UsersCommand::Create {
            id,
            name,
            teams,
            inactive,
            conn,
        } => {
            let user = pb::User {
                id: id.clone(),
                name,
                active: !inactive,
                teams,
            };
            let r = client(&conn)
                .await?
                .create_user(call(&conn, pb::UserRequest { user: Some(user) })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("user {id}"), r.revision);
        }
        UsersCommand::Update {
            id,
            name,
            teams,
            no_teams,
            status,
            conn,
        } => {
            let req = pb::UpdateUserRequest {
                id: id.clone(),
                name,
                active: status.active(),
                replace_teams: no_teams || !teams.is_empty(),
                teams,
            };
            let r = client(&conn)
                .await?
                .update_user(call(&conn, req)?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("user {id}"), r.revision);
        }
        UsersCommand::Delete { id, conn } => {
            let r = client(&conn)
                .await?
                .delete_user(call(&conn, pb::DeleteRequest { id: id.clone() })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("deleted user {id}"), r.revision);
        }
    }
    Ok(())
}

fn print_projects(output: Output, projects: &[pb::Project]) {
    if output == Output::Json {
        let v: Vec<Value> = projects
            .iter()
            .map(|p| json!({"id": p.id, "team": p.team, "name": p.name}))
            .collect();
        say!("{}", Value::Array(v));
    } else {
        table(
            &["PROJECT", "TEAM", "NAME"],
            projects
                .iter()
                .map(|p| vec![p.id.clone(), p.team.clone(), p.name.clone()])
                .collect(),
        );
    }
}

async fn projects(cmd: ProjectsCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectsCommand::List { conn } => {
            let admin = client(&conn).await?;
            let all = all_pages(|token| {
                let mut admin = admin.clone();
                let request = call(&conn, list_page(token));
                async move {
                    let page = admin.list_projects(request?).await.map_err(failed)?;
                    let page = page.into_inner();
                    Ok((page.projects, page.next_page_token))
                }
            })
            .await?;
            print_projects(conn.output, &all);
        }
        ProjectsCommand::Get { id, conn } => {
            let r = client(&conn)
                .await?
                .get_project(call(&conn, pb::GetRequest { id })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_projects(conn.output, &r.project.into_iter().collect::<Vec<_>>());
        }
        ProjectsCommand::Create {
            id,
            team,
            name,
            conn,
        } => {
            let project = pb::Project {
                id: id.clone(),
                team,
                name,
            };
            let r = client(&conn)
                .await?
                .create_project(call(
                    &conn,
                    pb::ProjectRequest {
                        project: Some(project),
                    },
                )?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("project {id}"), r.revision);
        }
        ProjectsCommand::Update {
            id,
            team,
            name,
            conn,
        } => {
            let req = pb::UpdateProjectRequest {
                id: id.clone(),
                team,
                name,
            };
            let r = client(&conn)
                .await?
                .update_project(call(&conn, req)?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("project {id}"), r.revision);
        }
        ProjectsCommand::Delete { id, conn } => {
            let r = client(&conn)
                .await?
                .delete_project(call(&conn, pb::DeleteRequest { id: id.clone() })?)
                .await
                .map_err(failed)?
                .into_inner();
            print_revision(conn.output, &format!("deleted project {id}"), r.revision);
        }
    }
    Ok(())
}

/// Each client flips its own key's expiry (a durable single-key write), then immediately asks
/// for a Check with the write's revision as min_revision on a separate connection.
async fn bench_writes(args: BenchWritesArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let mut setup = client(conn).await?;
    let tag = rolegate::domain::key::generate_prefix()[..8].to_ascii_lowercase();
    let team = format!("bench-{tag}");
    let user = format!("bench-{tag}");
    setup
        .create_team(call(
            conn,
            pb::TeamRequest {
                team: Some(pb::Team {
                    id: team.clone(),
                    name: "bench".into(),
                    active: true,
                }),
            },
        )?)
        .await
        .map_err(failed)?;
    // One user per client: each write touches one key of one requestor, as a platform's
    // writes do.
    let mut keys = Vec::new();
    for i in 0..args.clients {
        let user = format!("{user}-{i}");
        let member = pb::User {
            id: user.clone(),
            name: "bench".into(),
            active: true,
            teams: vec![team.clone()],
        };
        setup
            .create_user(call(conn, pb::UserRequest { user: Some(member) })?)
            .await
            .map_err(failed)?;
        let r = setup
            .create_key(call(
                conn,
                pb::CreateKeyRequest {
                    prefix: format!("Bench{tag}{i:04}"),
                    key_type: pb::KeyType::Team as i32,
                    user: user.clone(),
                    team: team.clone(),
                    ..Default::default()
                },
            )?)
            .await
            .map_err(failed)?
            .into_inner();
        keys.push(r.api_key);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for key in keys {
        let admin = client(conn).await?;
        let authz = AuthorizerClient::new(channel(conn).await?);
        let (stop, conn) = (stop.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            bench_client(admin, authz, conn, key, stop).await
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut writes = Histogram::<u64>::new(3)?;
    let mut checks = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (w, c, e) = t.await??;
        writes.add(w)?;
        checks.add(c)?;
        errors += e;
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    say!(
        "writes: {} in {:.1?} from {} clients = {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms; {errors} errors",
        writes.len(),
        elapsed,
        args.clients,
        writes.len() as f64 / elapsed.as_secs_f64(),
        us(&writes, 0.5),
        us(&writes, 0.99),
    );
    say!(
        "check right after each write (min_revision = the write's revision): {} checks, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        checks.len(),
        us(&checks, 0.5),
        us(&checks, 0.99),
        checks.max() as f64 / 1000.0,
    );
    Ok(())
}

async fn bench_client(
    mut admin: AdminClient<Channel>,
    mut authz: AuthorizerClient<Channel>,
    conn: Conn,
    key: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64)> {
    let prefix = key
        .split_once('.')
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    let mut writes = Histogram::<u64>::new(3)?;
    let mut checks = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    let far = 4_102_444_800; // 2100-01-01
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let t = Instant::now();
        let written = admin
            .update_key(call(
                &conn,
                pb::UpdateKeyRequest {
                    prefix: prefix.clone(),
                    expires_at: Some(far + n),
                    ..Default::default()
                },
            )?)
            .await;
        let revision = match written {
            Ok(r) => r.into_inner().revision,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        writes.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        let checked = authz
            .check(pb::CheckRequest {
                api_key: key.clone(),
                entitlement: "keys.read".into(),
                resource: Some(pb::Resource {
                    team_id: String::new(),
                    owner_key_prefix: prefix.clone(),
                    owner_user_id: String::new(),
                }),
                min_revision: revision,
            })
            .await;
        match checked {
            Ok(r) if r.get_ref().allowed => checks.record(t.elapsed().as_micros() as u64)?,
            _ => errors += 1,
        }
    }
    Ok((writes, checks, errors))
}
