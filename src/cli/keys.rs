//! `rolegate keys …`: make and hash keys offline (`new`, `hash`), and manage the keys of a
//! server through the Admin API (`create`, `list`, `get`, `update`, `revoke`,
//! `replace-secret`, `delete`).

use std::io::Read;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rolegate::{
    domain::{
        ApiKey,
        key::{generate_key, generate_prefix},
    },
    grpc::pb,
};
use serde_json::{Value, json};

use super::{
    block_on,
    client::{Conn, admin, all_pages, call, delete, failed, get, send},
    output::{Output, Shown, parse_time, print_all, rfc3339, say},
};

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a new key (once: store it now) and the secret_sha256 line for the policy file.
    New {
        /// The key's public prefix, 4 to 64 characters of [A-Za-z0-9_-]; random when omitted.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Print the secret_sha256 of an existing key (`-` reads the key from standard input).
    Hash {
        /// The whole key, `<prefix>.<secret>`.
        key: String,
    },
    #[command(flatten)]
    Admin(Box<KeysAdmin>),
}

/// `rolegate keys …` against a server.
#[derive(Subcommand, Debug)]
pub(crate) enum KeysAdmin {
    /// Create a key on the server; the whole key is printed once.
    Create(CreateArgs),
    /// List keys visible to the caller.
    List(ListArgs),
    /// Show one key.
    Get {
        /// The key's public prefix.
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a key's status, roles or expiry.
    Update(UpdateArgs),
    /// Deactivate a key (status inactive).
    Revoke {
        /// The key's public prefix.
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give a key a new secret; the old one stops working. The new key is printed once.
    ReplaceSecret {
        /// The key's public prefix.
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key.
    Delete {
        /// The key's public prefix.
        prefix: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
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
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Only the keys of this team.
    #[arg(long, default_value = "")]
    team: String,
    /// Only the team keys of this user.
    #[arg(long, default_value = "")]
    user: String,
    /// Only the keys of this project.
    #[arg(long, default_value = "")]
    project: String,
    /// Only the keys with this status (active, inactive, pending, rejected, deleted).
    #[arg(long, default_value = "")]
    status: String,
    /// Only the keys bound to this role.
    #[arg(long, default_value = "")]
    role: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Debug)]
pub(crate) struct UpdateArgs {
    /// The key's public prefix.
    prefix: String,
    /// active | inactive | pending | rejected | deleted
    #[arg(long)]
    status: Option<String>,
    /// Replace the key's roles with these (repeat, or comma-separate).
    #[arg(
        long = "role",
        visible_alias = "roles",
        value_delimiter = ',',
        conflicts_with = "no_roles"
    )]
    roles: Vec<String>,
    /// Remove every role from the key (TEAM_ROLE, implicit on every key, stays).
    #[arg(long)]
    no_roles: bool,
    /// RFC 3339 expiry, or `never`.
    #[arg(long)]
    expires_at: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// Runs `rolegate keys …`: `new` and `hash` here, the rest against a server.
pub(crate) fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::New { prefix } => new(prefix),
        KeysCommand::Hash { key } => hash(key),
        KeysCommand::Admin(cmd) => block_on(run_admin(*cmd)),
    }
}

fn new(prefix: Option<String>) -> anyhow::Result<()> {
    let prefix = prefix.unwrap_or_else(generate_prefix);
    let new = generate_key(&prefix).map_err(|e| anyhow::anyhow!("--prefix {prefix:?}: {e}"))?;
    println!("{}", new.key);
    println!("secret_sha256: {}", new.hash.to_hex());
    eprintln!(
        "The key above is shown once and stored nowhere; keep it now. Put the secret_sha256 line in the policy file."
    );
    Ok(())
}

fn hash(key: String) -> anyhow::Result<()> {
    let key = if key == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .context("reading the key from standard input")?;
        buf.trim().to_owned()
    } else {
        key
    };
    let parsed = ApiKey::parse(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("prefix: {}", parsed.prefix);
    println!("secret_sha256: {}", parsed.secret_hash().to_hex());
    Ok(())
}

async fn run_admin(cmd: KeysAdmin) -> anyhow::Result<()> {
    match cmd {
        KeysAdmin::Create(args) => create(args).await,
        KeysAdmin::List(args) => list(args).await,
        KeysAdmin::Get { prefix, conn } => {
            get(
                &conn,
                prefix,
                |mut c, r| async move { c.get_key(r).await },
                |r| r.key,
            )
            .await
        }
        KeysAdmin::Update(args) => update(args).await,
        KeysAdmin::Revoke { prefix, conn } => {
            let req = pb::UpdateKeyRequest {
                prefix,
                status: Some("inactive".into()),
                ..Default::default()
            };
            update_key(&conn, req).await
        }
        KeysAdmin::ReplaceSecret { prefix, conn } => {
            let r = send(
                &conn,
                pb::GetRequest { id: prefix },
                |mut c, r| async move { c.replace_key_secret(r).await },
            )
            .await?;
            print_new_key(conn.output, &r);
            Ok(())
        }
        KeysAdmin::Delete { prefix, conn } => {
            delete(&conn, "key", prefix, |mut c, r| async move {
                c.delete_key(r).await
            })
            .await
        }
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let kind = if args.project.is_some() {
        pb::KeyType::Project
    } else if args.user.is_some() {
        pb::KeyType::Team
    } else {
        bail!("give --user and --team for a team key, or --project for a project key");
    };
    let req = pb::CreateKeyRequest {
        prefix: args.prefix.unwrap_or_default(),
        key_type: kind as i32,
        user: args.user.unwrap_or_default(),
        team: args.team.unwrap_or_default(),
        project: args.project.unwrap_or_default(),
        roles: args.roles,
        expires_at: args
            .expires_at
            .map(|t| parse_time("--expires-at", &t))
            .transpose()?
            .unwrap_or(0),
    };
    let conn = &args.conn;
    let r = send(conn, req, |mut c, r| async move { c.create_key(r).await }).await?;
    print_new_key(conn.output, &r);
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let client = admin(conn).await?;
    let all = all_pages(|token| {
        let mut client = client.clone();
        let request = call(
            conn,
            pb::ListKeysRequest {
                page_size: 1000,
                page_token: token,
                team: args.team.clone(),
                user: args.user.clone(),
                project: args.project.clone(),
                status: args.status.clone(),
                role: args.role.clone(),
            },
        );
        async move {
            let page = client.list_keys(request?).await.map_err(failed)?;
            let page = page.into_inner();
            Ok((page.keys, page.next_page_token))
        }
    })
    .await?;
    print_all(conn.output, &all);
    Ok(())
}

async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let replace_roles = args.no_roles || !args.roles.is_empty();
    let roles: Vec<String> = args.roles.into_iter().filter(|r| !r.is_empty()).collect();
    let req = pb::UpdateKeyRequest {
        prefix: args.prefix,
        status: args.status,
        replace_roles,
        roles,
        expires_at: args
            .expires_at
            .map(|t| parse_time("--expires-at", &t))
            .transpose()?,
    };
    update_key(&args.conn, req).await
}

/// Sends an update and prints the key as it now is, with the revision.
async fn update_key(conn: &Conn, req: pb::UpdateKeyRequest) -> anyhow::Result<()> {
    let r = send(conn, req, |mut c, r| async move { c.update_key(r).await }).await?;
    if conn.output == Output::Json {
        let key = r.key.as_ref().map(key_json);
        say!("{}", json!({ "key": key, "revision": r.revision }));
    } else {
        print_all(conn.output, &r.key.into_iter().collect::<Vec<_>>());
        say!("(revision {})", r.revision);
    }
    Ok(())
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

impl Shown for pb::Key {
    const HEADER: &'static [&'static str] = &[
        "PREFIX", "TYPE", "TEAM", "OWNER", "ROLES", "STATUS", "EXPIRES",
    ];

    fn row(&self) -> Vec<String> {
        vec![
            self.prefix.clone(),
            key_type(self).into(),
            self.team.clone(),
            if self.project.is_empty() {
                format!("user {}", self.user)
            } else {
                format!("project {}", self.project)
            },
            self.roles.join(","),
            self.status.clone(),
            rfc3339(self.expires_at),
        ]
    }

    fn json(&self) -> Value {
        key_json(self)
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
