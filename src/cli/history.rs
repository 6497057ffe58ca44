//! `rolegate history`: who made each committed revision (Admin `ListHistory`), oldest first.

use clap::Args;
use rolegate::grpc::pb;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    client::{Conn, admin, all_pages, call, failed},
    output::{Shown, print_all},
};

#[derive(Args, Debug)]
pub(crate) struct HistoryArgs {
    /// Only the revisions after this one (default: from the oldest kept).
    #[arg(long, value_name = "REV", default_value_t = 0)]
    since: u64,
    #[command(flatten)]
    conn: Conn,
}

/// The time of an entry, RFC 3339 with milliseconds.
fn time_of(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

impl Shown for pb::HistoryEntry {
    const HEADER: &'static [&'static str] = &["REVISION", "TIME", "CALLER", "ACTION", "TOUCHED"];

    fn row(&self) -> Vec<String> {
        let mut touched = self.teams.join(",");
        if self.beyond_teams {
            if !touched.is_empty() {
                touched.push(',');
            }
            touched.push_str("(beyond teams)");
        }
        vec![
            self.revision.to_string(),
            time_of(self.time_unix_ms),
            self.caller.clone(),
            self.action.clone(),
            touched,
        ]
    }

    fn json(&self) -> Value {
        json!({
            "revision": self.revision,
            "time": time_of(self.time_unix_ms),
            "time_unix_ms": self.time_unix_ms,
            "caller": self.caller,
            "action": self.action,
            "teams": self.teams,
            "beyond_teams": self.beyond_teams,
        })
    }
}

/// Lists the history the caller may read (audit.read, at the scope held), every page of it.
pub(crate) async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let client = admin(conn).await?;
    let since = args.since;
    let entries = all_pages(|token| {
        let asked = call(
            conn,
            pb::ListHistoryRequest {
                since_revision: since,
                page_size: 1000,
                page_token: token,
            },
        )
        .map(|request| {
            let mut client = client.clone();
            async move { client.list_history(request).await }
        });
        async move {
            let page = asked?.await.map_err(failed)?.into_inner();
            Ok((page.entries, page.next_page_token))
        }
    })
    .await?;
    print_all(conn.output, &entries);
    Ok(())
}
