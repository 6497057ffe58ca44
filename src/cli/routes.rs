//! `rolegate routes list`: the route table a server enforces (through the Admin API), or that
//! of a policy file, offline.

use std::path::PathBuf;

use clap::Subcommand;
use rolegate::{
    authz::routes::default_routes, grpc::pb, origin::policy_file, tls::client::ClientTlsArgs,
};
use serde_json::{Value, json};

use super::{
    client::{Conn, admin, call, failed},
    output::{Output, say, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum RoutesCommand {
    /// Show the route table a server enforces and where it came from (the built-in default, a
    /// policy file, the store, a hub); with --policy, the table of a policy file, offline.
    List {
        /// Read the routes of this policy file instead of asking a server.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The server's gRPC address: HOST:PORT (https:// with TLS options, else http://), a URL,
        /// or unix:PATH (a Unix socket).
        #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[command(flatten)]
        tls: ClientTlsArgs,
        /// The caller's API key, `<prefix>.<secret>` (needs roles.read).
        #[arg(
            long,
            env = "ROLEGATE_API_KEY",
            hide_env_values = true,
            required_unless_present = "policy"
        )]
        key: Option<String>,
        /// How to print: text (a table) for people, json for scripts; `table` is accepted for text.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Runs `rolegate routes list`.
pub(crate) async fn run(cmd: RoutesCommand) -> anyhow::Result<()> {
    let RoutesCommand::List {
        policy,
        addr,
        tls,
        key,
        output,
    } = cmd;
    let listing = match policy {
        Some(file) => from_file(&file)?,
        None => {
            let conn = Conn {
                addr,
                tls,
                key: key.unwrap_or_default(),
                output,
            };
            from_server(&conn).await?
        }
    };
    listing.print(output);
    Ok(())
}

/// The routes of a policy file, or the built-in default when it has none.
fn from_file(file: &std::path::Path) -> anyhow::Result<RouteListing> {
    let policy = policy_file::load(file)
        .map_err(|e| anyhow::anyhow!("{e}\n{}: {} problem(s)", file.display(), e.problems.len()))?;
    let (routes, source) = match &policy.model.routes {
        Some(specs) => (specs.iter().map(Into::into).collect(), "policy_file"),
        None => (default_routes().iter().map(Into::into).collect(), "default"),
    };
    Ok(RouteListing {
        routes,
        source: source.into(),
        origin: file.display().to_string(),
        revisions: None,
    })
}

/// The routes the server of `conn` enforces.
async fn from_server(conn: &Conn) -> anyhow::Result<RouteListing> {
    let r = admin(conn)
        .await?
        .list_routes(call(conn, pb::ListRoutesRequest {})?)
        .await
        .map_err(failed)?
        .into_inner();
    Ok(RouteListing {
        routes: r.routes,
        source: r.source,
        origin: r.origin,
        revisions: Some((r.routes_revision, r.revision)),
    })
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

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl RouteListing {
    fn print(&self, output: Output) {
        match output {
            Output::Json => self.print_json(),
            Output::Text => self.print_table(),
        }
    }

    fn print_json(&self) {
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
    }

    /// Where the table came from, as the line above the table says it.
    fn whence(&self) -> String {
        match (self.source.as_str(), self.revisions) {
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
        }
    }

    fn print_table(&self) {
        say!("{} route(s) from {}", self.routes.len(), self.whence());
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
