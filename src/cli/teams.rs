//! `rolegate teams list|get|create|update|delete` through the Admin API.

use clap::Subcommand;
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    StatusArgs,
    client::{Conn, delete, get, list, send},
    output::{Shown, print_revision, status},
};

#[derive(Subcommand, Debug)]
pub(crate) enum TeamsCommand {
    /// List the teams visible to the caller.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one team.
    Get {
        /// The team's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a team.
    Create {
        /// The team's id.
        id: String,
        /// A display name.
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
    /// Delete a team.
    Delete {
        /// The team's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `rolegate teams …`.
pub(crate) async fn run(cmd: TeamsCommand) -> anyhow::Result<()> {
    match cmd {
        TeamsCommand::List { conn } => {
            list(
                &conn,
                |mut c, r| async move { c.list_teams(r).await },
                |page: pb::ListTeamsResponse| (page.teams, page.next_page_token),
            )
            .await
        }
        TeamsCommand::Get { id, conn } => {
            get(
                &conn,
                id,
                |mut c, r| async move { c.get_team(r).await },
                |r| r.team,
            )
            .await
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
            let r = send(
                &conn,
                pb::TeamRequest { team: Some(team) },
                |mut c, r| async move { c.create_team(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("team {id}"), r.revision);
            Ok(())
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
            let r = send(&conn, req, |mut c, r| async move { c.update_team(r).await }).await?;
            print_revision(conn.output, &format!("team {id}"), r.revision);
            Ok(())
        }
        TeamsCommand::Delete { id, conn } => {
            delete(&conn, "team", id, |mut c, r| async move {
                c.delete_team(r).await
            })
            .await
        }
    }
}

impl Shown for pb::Team {
    const HEADER: &'static [&'static str] = &["TEAM", "NAME", "STATUS"];

    fn row(&self) -> Vec<String> {
        vec![self.id.clone(), self.name.clone(), status(self.active)]
    }

    fn json(&self) -> Value {
        json!({"id": self.id, "name": self.name, "active": self.active})
    }
}
