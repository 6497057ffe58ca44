//! `rolegate roles list|create|update|delete|add-entitlements` through the Admin API.

use anyhow::Context;
use clap::Subcommand;
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    client::{Conn, admin, all_pages, call, failed, list_page, send},
    output::{Output, print_revision, say, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum RolesCommand {
    /// List roles.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a custom role: `--grant models.read:TEAM` (repeat).
    Create {
        /// The role's id.
        id: String,
        /// user | system
        #[arg(long = "type", default_value = "user")]
        role_type: String,
        /// A grant, `entitlement:SCOPE` (repeat, or comma-separate).
        #[arg(long = "grant", value_delimiter = ',')]
        grants: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace a custom role's grants.
    Update {
        /// The role's id.
        id: String,
        /// user | system
        #[arg(long = "type", default_value = "user")]
        role_type: String,
        /// A grant, `entitlement:SCOPE` (repeat, or comma-separate); the role keeps only these.
        #[arg(long = "grant", value_delimiter = ',')]
        grants: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a custom role (refused while it is bound).
    Delete {
        /// The role's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add entitlements to the catalog.
    AddEntitlements {
        /// The entitlements to add, e.g. models.read.
        ids: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `rolegate roles …`.
pub(crate) async fn run(cmd: RolesCommand) -> anyhow::Result<()> {
    match cmd {
        RolesCommand::List { conn } => list(&conn).await,
        RolesCommand::Create {
            id,
            role_type,
            grants: specs,
            conn,
        } => put_role(&conn, id, role_type, &specs, true).await,
        RolesCommand::Update {
            id,
            role_type,
            grants: specs,
            conn,
        } => put_role(&conn, id, role_type, &specs, false).await,
        RolesCommand::Delete { id, conn } => {
            let r = send(
                &conn,
                pb::DeleteRequest { id: id.clone() },
                |mut c, r| async move { c.delete_role(r).await },
            )
            .await?;
            print_revision(conn.output, &format!("deleted role {id}"), r.revision);
            Ok(())
        }
        RolesCommand::AddEntitlements { ids, conn } => {
            let r = send(
                &conn,
                pb::AddEntitlementsRequest { ids },
                |mut c, r| async move { c.add_entitlements(r).await },
            )
            .await?;
            print_revision(conn.output, "entitlements added", r.revision);
            Ok(())
        }
    }
}

async fn list(conn: &Conn) -> anyhow::Result<()> {
    let client = admin(conn).await?;
    let roles = all_pages(|token| {
        let mut client = client.clone();
        let request = call(conn, list_page(token));
        async move {
            let page = client.list_roles(request?).await.map_err(failed)?;
            let page = page.into_inner();
            Ok((page.roles, page.next_page_token))
        }
    })
    .await?;
    print_roles(conn.output, &roles);
    Ok(())
}

fn print_roles(output: Output, roles: &[pb::Role]) {
    if output == Output::Json {
        let roles: Vec<Value> = roles
            .iter()
            .map(|role| {
                let grants: Vec<Value> = role
                    .grants
                    .iter()
                    .map(|g| json!({"entitlement": g.entitlement, "scope": g.scope}))
                    .collect();
                json!({ "id": role.id, "type": role.r#type, "prebuilt": role.prebuilt,
                    "grants": grants })
            })
            .collect();
        say!("{}", Value::Array(roles));
        return;
    }
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

/// `--grant entitlement:SCOPE` values as grants (the scope upper-cased).
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

/// Creates the custom role `id` (`create`) or replaces its type and grants.
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
    let mut client = admin(conn).await?;
    let req = call(conn, pb::RoleRequest { role: Some(role) })?;
    let r = if create {
        client.create_role(req).await
    } else {
        client.update_role(req).await
    }
    .map_err(failed)?
    .into_inner();
    print_revision(conn.output, &format!("role {id}"), r.revision);
    Ok(())
}
