//! `rolegate users list|get|create|update|delete` through the Admin API.

use clap::{Args, Subcommand};
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    StatusArgs,
    client::{Conn, admin, all_pages, call, failed, list_page, send},
    output::{Output, print_revision, say, status, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum UsersCommand {
    /// List the users visible to the caller.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one user.
    Get {
        /// The user's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a user.
    Create {
        /// The user's id.
        id: String,
        /// A display name.
        #[arg(long, default_value = "")]
        name: String,
        /// A team the user belongs to (repeat or comma-separate).
        #[arg(long = "team", value_delimiter = ',')]
        teams: Vec<String>,
        /// Create it inactive.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a user: only the fields given change.
    Update(UpdateArgs),
    /// Delete a user.
    Delete {
        /// The user's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Debug)]
pub(crate) struct UpdateArgs {
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
}

/// Runs `rolegate users …`.
pub(crate) async fn run(cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::List { conn } => list(&conn).await,
        UsersCommand::Get { id, conn } => {
            let r = send(&conn, pb::GetRequest { id }, |mut c, r| async move {
                c.get_user(r).await
            })
            .await?;
            print_users(conn.output, &r.user.into_iter().collect::<Vec<_>>());
            Ok(())
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
            let r = send(
                &conn,
                pb::UserRequest { user: Some(user) },
                |mut c, r| async move { c.create_user(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("user {id}"), r.revision);
            Ok(())
        }
        UsersCommand::Update(args) => update(args).await,
        UsersCommand::Delete { id, conn } => {
            let r = send(
                &conn,
                pb::DeleteRequest { id: id.clone() },
                |mut c, r| async move { c.delete_user(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("deleted user {id}"), r.revision);
            Ok(())
        }
    }
}

async fn list(conn: &Conn) -> anyhow::Result<()> {
    let client = admin(conn).await?;
    let all = all_pages(|token| {
        let mut client = client.clone();
        let request = call(conn, list_page(token));
        async move {
            let page = client.list_users(request?).await.map_err(failed)?;
            let page = page.into_inner();
            Ok((page.users, page.next_page_token))
        }
    })
    .await?;
    print_users(conn.output, &all);
    Ok(())
}

async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let UpdateArgs {
        id,
        name,
        teams,
        no_teams,
        status,
        conn,
    } = args;
    let req = pb::UpdateUserRequest {
        id: id.clone(),
        name,
        active: status.active(),
        replace_teams: no_teams || !teams.is_empty(),
        teams,
    };
    let r = send(&conn, req, |mut c, r| async move { c.update_user(r).await }).await?;
    print_revision(conn.output, &format!("user {id}"), r.revision);
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
                        status(u.active),
                        u.teams.join(","),
                    ]
                })
                .collect(),
        );
    }
}
