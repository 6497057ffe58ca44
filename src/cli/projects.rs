//! `rolegate projects list|get|create|update|delete` through the Admin API.

use clap::Subcommand;
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    client::{Conn, delete, get, list, send},
    output::{Shown, print_revision},
};

#[derive(Subcommand, Debug)]
pub(crate) enum ProjectsCommand {
    /// List the projects visible to the caller.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one project.
    Get {
        /// The project's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a project.
    Create {
        /// The project's id.
        id: String,
        /// The team the project belongs to.
        #[arg(long)]
        team: String,
        /// A display name.
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
    /// Delete a project.
    Delete {
        /// The project's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `rolegate projects …`.
pub(crate) async fn run(cmd: ProjectsCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectsCommand::List { conn } => {
            list(
                &conn,
                |mut c, r| async move { c.list_projects(r).await },
                |page: pb::ListProjectsResponse| (page.projects, page.next_page_token),
            )
            .await
        }
        ProjectsCommand::Get { id, conn } => {
            get(
                &conn,
                id,
                |mut c, r| async move { c.get_project(r).await },
                |r| r.project,
            )
            .await
        }
        ProjectsCommand::Create {
            id,
            team,
            name,
            conn,
        } => {
            let project = Some(pb::Project {
                id: id.clone(),
                team,
                name,
            });
            let r = send(
                &conn,
                pb::ProjectRequest { project },
                |mut c, r| async move { c.create_project(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("project {id}"), r.revision);
            Ok(())
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
            let r = send(
                &conn,
                req,
                |mut c, r| async move { c.update_project(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("project {id}"), r.revision);
            Ok(())
        }
        ProjectsCommand::Delete { id, conn } => {
            delete(&conn, "project", id, |mut c, r| async move {
                c.delete_project(r).await
            })
            .await
        }
    }
}

impl Shown for pb::Project {
    const HEADER: &'static [&'static str] = &["PROJECT", "TEAM", "NAME"];

    fn row(&self) -> Vec<String> {
        vec![self.id.clone(), self.team.clone(), self.name.clone()]
    }

    fn json(&self) -> Value {
        json!({"id": self.id, "team": self.team, "name": self.name})
    }
}
