//! `rolegate users list|get|create|update|delete` through the Admin API.

use clap::{Args, Subcommand};
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    StatusArgs,
    client::{Conn, delete, get, list, send},
    output::{Shown, print_revision, status},
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
        UsersCommand::List { conn } => {
            list(
                &conn,
                |mut c, r| async move { c.list_users(r).await },
                |page: pb::ListUsersResponse| (page.users, page.next_page_token),
            )
            .await
        }
        UsersCommand::Get { id, conn } => {
            get(
                &conn,
                id,
                |mut c, r| async move { c.get_user(r).await },
                |r| r.user,
            )
            .await
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
            delete(&conn, "user", id, |mut c, r| async move {
                c.delete_user(r).await
            })
            .await
        }
    }
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

impl Shown for pb::User {
    const HEADER: &'static [&'static str] = &["USER", "NAME", "STATUS", "TEAMS"];

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            status(self.active),
            self.teams.join(","),
        ]
    }

    fn json(&self) -> Value {
        json!({"id": self.id, "name": self.name, "active": self.active, "teams": self.teams})
    }
}
