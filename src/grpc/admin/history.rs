//! `ListHistory`: who made each committed revision, read from where the writes are committed
//! and filtered to what the caller's `audit.read` covers ([`HistoryReader`]).

use super::*;
use crate::{
    domain::history::{HistoryEntry, HistoryReader},
    origin::{HistoryError, OriginKind},
};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Revisions read from the origin per round while a page is filled.
const BATCH: usize = 1000;
/// The most revisions one call looks through for entries the caller may see; past it the page
/// ends (perhaps short, or empty) with a token to go on from there. Bounds the work of a call by
/// a caller who sees few entries of a long history.
const MAX_SCANNED: usize = 100_000;

impl From<&Visible> for HistoryReader {
    fn from(vis: &Visible) -> Self {
        HistoryReader {
            all: vis.all,
            teams: vis.teams.clone(),
            own_keys: vis.owner_keys.clone(),
            own_user: vis.owner_user.clone(),
        }
    }
}

fn history_status(err: HistoryError) -> Status {
    match err {
        HistoryError::Unavailable(message) => Status::unavailable(message),
        HistoryError::Corrupt(corrupt) => {
            tracing::error!(error = %corrupt, "a stored administration history entry cannot be read");
            Status::internal(
                "a stored administration history entry cannot be read (see the server log)",
            )
        }
    }
}

fn entry_pb(e: HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        revision: e.revision,
        caller: e.caller.into(),
        action: e.action.into(),
        time_unix_ms: e.unix_ms,
        teams: e.teams.iter().map(|t| t.to_string()).collect(),
        beyond_teams: e.beyond_teams,
    }
}

/// One page being filled: it takes whole revisions, and ends at the first entry it may show
/// after it is full.
struct HistoryPage {
    size: usize,
    entries: Vec<HistoryEntry>,
    /// Where the next page goes on from (`Some` once known that one is needed).
    next_after: Option<u64>,
}

impl HistoryPage {
    /// Offers an entry the caller may see; false once the page is complete.
    fn offer(&mut self, entry: HistoryEntry) -> bool {
        let same_revision = self
            .entries
            .last()
            .is_some_and(|l| l.revision == entry.revision);
        if self.entries.len() >= self.size && !same_revision {
            self.next_after = Some(entry.revision - 1);
            return false;
        }
        self.entries.push(entry);
        true
    }
}

impl AdminService {
    pub(super) async fn list_history_inner(
        &self,
        request: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        let reader = HistoryReader::from(&self.visible(request.metadata(), "audit.read")?);
        // The history is kept where the writes are committed; a follower's hub keeps it.
        let origin = self.origin.writer().map_err(|_| {
            let kind = self.origin.kind();
            let instead = match kind {
                OriginKind::Upstream => "ask the hub this server follows",
                _ => {
                    "a policy file records no authors: its history is the file's own (e.g. in git)"
                }
            };
            Status::failed_precondition(format!(
                "this server ({} origin) keeps no administration history; it is kept where \
                 writes are committed (the embedded store or etcd): {instead}",
                kind.name()
            ))
        })?;
        let r = request.into_inner();
        let mut after = r.since_revision;
        if !r.page_token.is_empty() {
            let token: u64 = r
                .page_token
                .parse()
                .map_err(|_| bad_field("page_token", "not a token of a ListHistory page"))?;
            after = after.max(token);
        }
        let revision = self.state.revision();
        let mut page = HistoryPage {
            size: match r.page_size as usize {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            },
            entries: Vec::new(),
            next_after: None,
        };
        let mut scanned = 0;
        'scan: loop {
            let batch = origin.history(after, BATCH).await.map_err(history_status)?;
            let mut revisions = 0;
            for entry in batch {
                if entry.revision != after {
                    revisions += 1;
                    scanned += 1;
                }
                // Only past the last revision whose entries are all taken or skipped.
                let at = entry.revision;
                if reader.sees(&entry) && !page.offer(entry) {
                    break 'scan;
                }
                after = at;
            }
            if revisions < BATCH {
                break;
            }
            if scanned >= MAX_SCANNED {
                page.next_after = Some(after);
                break;
            }
        }
        Ok(Response::new(pb::ListHistoryResponse {
            entries: page.entries.into_iter().map(entry_pb).collect(),
            next_page_token: page.next_after.map(|a| a.to_string()).unwrap_or_default(),
            revision,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(revision: u64) -> HistoryEntry {
        HistoryEntry {
            revision,
            caller: "Key00001".into(),
            caller_user: None,
            action: "CreateTeam".into(),
            unix_ms: 0,
            teams: Vec::new(),
            beyond_teams: true,
        }
    }

    #[test]
    fn a_page_takes_whole_revisions_and_says_where_the_next_starts() {
        let mut page = HistoryPage {
            size: 2,
            entries: Vec::new(),
            next_after: None,
        };
        assert!(page.offer(at(3)));
        assert!(page.offer(at(5)));
        // Full, but revision 5 is not split.
        assert!(page.offer(at(5)));
        assert!(!page.offer(at(8)));
        assert_eq!(page.entries.len(), 3);
        assert_eq!(page.next_after, Some(7));
    }
}
