//! `rolegate teams list|get|create|update|delete` through the Admin API.

use clap::Subcommand;
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    StatusArgs,
    client::{Conn, admin, all_pages, call, failed, list_page, send},
    output::{Output, print_revision, say, status, table},
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
        TeamsCommand::List { conn } => list(&conn).await,
        TeamsCommand::Get { id, conn } => {
            let r = send(&conn, pb::GetRequest { id }, |mut c, r| async move {
                c.get_team(r).await
            })
            .await?;
            print_teams(conn.output, &r.team.into_iter().collect::<Vec<_>>());
            Ok(())
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
            let r = send(
                &conn,
                pb::DeleteRequest { id: id.clone() },
                |mut c, r| async move { c.delete_team(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("deleted team {id}"), r.revision);
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
            let page = client.list_teams(request?).await.map_err(failed)?;
            let page = page.into_inner();
            Ok((page.teams, page.next_page_token))
        }
    })
    .await?;
    print_teams(conn.output, &all);
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
                .map(|t| vec![t.id.clone(), t.name.clone(), status(t.active)])
                .collect(),
        );
    }
}
