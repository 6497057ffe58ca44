//! `rolegate roles list|create|update|delete|add-entitlements` through the Admin API.

use anyhow::Context;
use clap::Subcommand;
use rolegate::grpc::pb;
use serde_json::{Value, json};

use super::{
    client::{Conn, delete, list, send},
    output::{Shown, print_revision},
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
        RolesCommand::List { conn } => {
            list(
                &conn,
                |mut c, r| async move { c.list_roles(r).await },
                |page: pb::ListRolesResponse| (page.roles, page.next_page_token),
            )
            .await
        }
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
            delete(&conn, "role", id, |mut c, r| async move {
                c.delete_role(r).await
            })
            .await
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

impl Shown for pb::Role {
    const HEADER: &'static [&'static str] = &["ROLE", "TYPE", "PREBUILT", "GRANTS"];

    fn row(&self) -> Vec<String> {
        let grants: Vec<String> = self
            .grants
            .iter()
            .map(|g| format!("{}:{}", g.entitlement, g.scope))
            .collect();
        vec![
            self.id.clone(),
            self.r#type.clone(),
            self.prebuilt.to_string(),
            grants.join(","),
        ]
    }

    fn json(&self) -> Value {
        let grants: Vec<Value> = self
            .grants
            .iter()
            .map(|g| json!({"entitlement": g.entitlement, "scope": g.scope}))
            .collect();
        json!({"id": self.id, "type": self.r#type, "prebuilt": self.prebuilt, "grants": grants})
    }
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
    let req = pb::RoleRequest { role: Some(role) };
    let r = send(conn, req, |mut c, r| async move {
        if create {
            c.create_role(r).await
        } else {
            c.update_role(r).await
        }
    })
    .await?;
    print_revision(conn.output, &format!("role {id}"), r.revision);
    Ok(())
}
