//! `rolegate projects list|get|create|update|delete` through the Admin API.

use clap::Subcommand;
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    client::{Conn, admin, all_pages, call, failed, list_page, send},
    output::{Output, print_revision, say, table},
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
        ProjectsCommand::List { conn } => list(&conn).await,
        ProjectsCommand::Get { id, conn } => {
            let r = send(&conn, pb::GetRequest { id }, |mut c, r| async move {
                c.get_project(r).await
            })
            .await?;
            print_projects(conn.output, &r.project.into_iter().collect::<Vec<_>>());
            Ok(())
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
            let r = send(
                &conn,
                pb::DeleteRequest { id: id.clone() },
                |mut c, r| async move { c.delete_project(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("deleted project {id}"), r.revision);
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
            let page = client.list_projects(request?).await.map_err(failed)?;
            let page = page.into_inner();
            Ok((page.projects, page.next_page_token))
        }
    })
    .await?;
    print_projects(conn.output, &all);
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
