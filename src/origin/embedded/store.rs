//! The redb file of the embedded store: its tables (the objects, the change log with its undo
//! records and changed grants, a few singletons), how it is opened, created and reopened, and
//! how groups of revisions are committed and read back.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::record;
use crate::{
    domain::{
        Interner, Model, RequestorId,
        history::{self, HistoryEntry},
        model::Change,
    },
    origin::HistoryError,
};

/// Singleton values: the last committed revision, the history id (made once, with the store, so
/// that a Watch resumed after a restart continues the same revision sequence), and the revision
/// that last changed the route table ([`ROUTES_REVISION`]).
pub(super) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Every object of the model, `kind/id` → its record.
pub(super) const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
/// The change log: revision → the changes committed under it.
pub(super) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changelog");
/// Beside the change log: revision → the changes that undo it (the objects as they were before).
/// At start, the model as of the oldest replayed revision is rebuilt from them, and the kept
/// revisions are applied again, so that the Watch change log is rebuilt by the same code that
/// built it while serving (see `embedded::load_state`).
pub(super) const UNDO: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changelog_undo");
/// Beside the change log: revision → the requestors whose grants it changed, as first computed
/// while serving (that set depends on the clock through key expiry, so a replay alone could
/// compute another). Known only after the revision is applied, it is written with the next
/// commit, or when the writer stops; a revision without one (the last group before a crash) gets
/// the replay's.
pub(super) const GRANTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changelog_grants");
/// The administration history: revision → who made it ([`crate::domain::history`]'s encoding),
/// written in the transaction that commits the revision, the oldest pruned past the kept number
/// of revisions (`--history-revisions`).
pub(super) const ADMIN_HISTORY: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("admin_history");

/// Why the embedded store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store at {path} cannot be opened: {message}")]
    Open { path: PathBuf, message: String },
    /// The store file exists but does not hold a store that can be read: rolegate neither
    /// starts on it nor replaces it with a new one (that would lose every key, and print a new
    /// bootstrap key).
    #[error(
        "the store file {path} is damaged: {problem}. rolegate does not start on a damaged store \
         and never replaces it with a new one: restore the file from a backup, or move it away to \
         start a new, empty store"
    )]
    Damaged { path: PathBuf, problem: String },
    /// The store file exists but this process may not read or write it.
    #[error(
        "the store file {path} cannot be opened: {source}. rolegate needs to read and write it: \
         check its owner and permissions (or restore it from a backup, or move it away to start \
         a new, empty store)"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store at {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: record::CorruptRecord,
    },
    #[error("the stored state breaks the model's rules: {0}")]
    Invalid(String),
    #[error("--seed: the policy file cannot be loaded:\n{0}")]
    Seed(crate::origin::policy_file::PolicyError),
    #[error("--bootstrap-key-sha256: {0}")]
    BadBootstrapHash(String),
    #[error("--bootstrap-key-prefix: {0}")]
    BadBootstrapPrefix(String),
}

/// How many revisions the change log keeps (for Watch resumption across restarts).
pub(crate) const KEPT_REVISIONS: u64 = 100_000;
/// How the database file is opened (a function, so that it can be reopened after an I/O error,
/// and so that tests can put a failing storage backend under it). [`Open::Create`] is asked
/// only for a path that holds no file.
pub(super) type Opener =
    Box<dyn Fn(&Path, Open) -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// Whether the opener may initialize a new database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Open {
    /// A new file, being created: initialize it.
    Create,
    /// The store file that exists: open it, never initialize it.
    Existing,
}

/// The store's file in the data directory.
pub(crate) const STORE_FILE: &str = "rolegate.redb";
/// Where a new store is built before it is renamed to [`STORE_FILE`], so that a store file,
/// once there, is always a whole store: a start interrupted while creating it leaves this one,
/// which the next start replaces.
pub(super) const CREATING_FILE: &str = "rolegate.redb.creating";

/// Opens the database file with redb's default settings.
fn open_file(path: &Path, open: Open) -> Result<Database, redb::DatabaseError> {
    match open {
        Open::Create => Database::create(path),
        // The check verifies the checksum of every page of the stored trees: a file altered
        // outside redb (a bad disk, a stray write) fails here instead of being trusted. It reads
        // the whole file once per start, about 15% more than the open without it.
        Open::Existing => Database::builder()
            .set_check_integrity_on_open(true)
            .open(path),
    }
}

/// The redb file and its tables.
pub(crate) struct Store {
    /// `None` between a failed close and a reopen. redb refuses every transaction after an I/O
    /// error until the database is reopened, so the writer reopens it (see `writer::Writer::recover`).
    db: std::sync::RwLock<Option<Database>>,
    pub(super) path: PathBuf,
    opener: Opener,
}

impl Store {
    /// Opens `dir/rolegate.redb`; returns the stored model and revision. A new store is made
    /// only when the directory holds no store file: a file that is there but empty, truncated,
    /// not a store, or unreadable is an error naming it, never taken for a new store.
    pub(crate) fn open(dir: &Path) -> Result<(Store, Model, u64), StoreError> {
        Self::open_with(dir, Box::new(open_file))
    }

    /// Like [`Store::open`], with the way the database file is opened given (tests put a
    /// failing storage backend under it).
    pub(super) fn open_with(dir: &Path, opener: Opener) -> Result<(Store, Model, u64), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        // Not `metadata`: a symlink to a missing file is not a missing store.
        let (db, (model, revision)) = match std::fs::symlink_metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Self::create(dir, &path, &opener)?
            }
            Err(source) => return Err(StoreError::Unreadable { path, source }),
            Ok(_) => Self::open_existing(&path, &opener)?,
        };
        let store = Store {
            db: std::sync::RwLock::new(Some(db)),
            path,
            opener,
        };
        Ok((store, model, revision))
    }

    /// Makes a new store: built aside, made durable, then renamed into place.
    fn create(
        dir: &Path,
        path: &Path,
        opener: &Opener,
    ) -> Result<(Database, (Model, u64)), StoreError> {
        let creating = dir.join(CREATING_FILE);
        let open_err = |message: String| StoreError::Open {
            path: creating.clone(),
            message,
        };
        // A start interrupted while creating the store left this; nothing was ever served
        // from it.
        match std::fs::remove_file(&creating) {
            Ok(()) => tracing::warn!(
                file = %creating.display(),
                "removed a store left half-created by an interrupted start"
            ),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(open_err(err.to_string())),
        }
        let db = opener(&creating, Open::Create).map_err(|e| open_err(e.to_string()))?;
        // Creates the tables and the history id, in a durable commit.
        let loaded = Self::load(&db, &creating)?;
        std::fs::rename(&creating, path).map_err(|e| open_err(e.to_string()))?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| open_err(format!("syncing the data directory: {e}")))?;
        tracing::info!(file = %path.display(), "created a new store");
        Ok((db, loaded))
    }

    /// Opens the store file that is there; any failure says the file is damaged (or cannot be
    /// read), never that a new store should be made.
    fn open_existing(path: &Path, opener: &Opener) -> Result<(Database, (Model, u64)), StoreError> {
        let damaged = |problem: String| StoreError::Damaged {
            path: path.to_owned(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|source| StoreError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(damaged("it is not a regular file".into()));
        }
        if meta.len() == 0 {
            return Err(damaged("the file is empty (0 bytes)".into()));
        }
        // redb documents that a file altered outside it may make it panic rather than fail:
        // that is a damaged file too, reported as such.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = opener(path, Open::Existing).map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Io(source))
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    StoreError::Unreadable {
                        path: path.to_owned(),
                        source,
                    }
                }
                redb::DatabaseError::DatabaseAlreadyOpen
                | redb::DatabaseError::LockProtocolMismatch => StoreError::Open {
                    path: path.to_owned(),
                    message: format!("{e} (is another rolegate serving this data directory?)"),
                },
                other => damaged(other.to_string()),
            })?;
            let loaded = Self::load(&db, path).map_err(|e| match e {
                StoreError::Open { message, .. } => damaged(message),
                other => other,
            })?;
            Ok((db, loaded))
        }));
        opened.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the store library failed while reading it".into());
            Err(damaged(message))
        })
    }

    /// Closes and reopens the database; returns what it holds.
    pub(super) fn reopen(&self) -> Result<(Model, u64), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must be gone before the file can be opened again.
        slot.take();
        let db = (self.opener)(&self.path, Open::Existing).map_err(|e| StoreError::Open {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let loaded = Self::load(&db, &self.path)?;
        *slot = Some(db);
        Ok(loaded)
    }

    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, redb::Error>,
    ) -> Result<R, redb::Error> {
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(db) => f(db),
            None => Err(redb::Error::Io(std::io::Error::other(
                "the store is closed after an I/O error and could not be reopened",
            ))),
        }
    }

    /// Creates the tables when missing and reads the model and revision.
    fn load(db: &Database, path: &Path) -> Result<(Model, u64), StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        };
        // Create the tables up front so that readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| open_err(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| open_err(&e))?;
            txn.open_table(OBJECTS).map_err(|e| open_err(&e))?;
            txn.open_table(LOG).map_err(|e| open_err(&e))?;
            txn.open_table(UNDO).map_err(|e| open_err(&e))?;
            txn.open_table(GRANTS).map_err(|e| open_err(&e))?;
            txn.open_table(ADMIN_HISTORY).map_err(|e| open_err(&e))?;
            let has_history = meta.get(HISTORY).map_err(|e| open_err(&e))?.is_some();
            if !has_history {
                // Made once, in the transaction that creates the store (or, for a store from
                // before history ids were kept, at its first start with them).
                let id: u64 = rand::random();
                meta.insert(HISTORY, id).map_err(|e| open_err(&e))?;
            }
        }
        txn.commit().map_err(|e| open_err(&e))?;

        let read = db.begin_read().map_err(|e| open_err(&e))?;
        let revision = read
            .open_table(META)
            .map_err(|e| open_err(&e))?
            .get("revision")
            .map_err(|e| open_err(&e))?
            .map_or(0, |v| v.value());
        let mut model = Model::default();
        let objects = read.open_table(OBJECTS).map_err(|e| open_err(&e))?;
        let mut changes = Vec::new();
        // One id, role list and team list shared by every object that names it.
        let mut ids = Interner::default();
        for item in objects.iter().map_err(|e| open_err(&e))? {
            let (k, v) = item.map_err(|e| open_err(&e))?;
            let change =
                record::decode_object(&mut ids, k.value(), v.value()).map_err(|source| {
                    StoreError::Corrupt {
                        path: path.to_owned(),
                        source,
                    }
                })?;
            changes.push(change);
        }
        // Entitlements and roles first, so that the order of the table does not matter.
        changes.sort_by_key(|c| match c {
            Change::PutEntitlement(_) => 0,
            Change::PutRole(_) | Change::RemoveRole(_) => 1,
            _ => 2,
        });
        for change in &changes {
            model.apply(change);
        }
        drop(objects);
        drop(read);
        Ok((model, revision))
    }

    /// The revision that last changed the route table (0: never, or a store from before it was
    /// recorded).
    pub(crate) fn routes_revision(&self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let read = db.begin_read()?;
            let meta = read.open_table(META)?;
            Ok(meta.get(ROUTES_REVISION)?.map_or(0, |v| v.value()))
        })
        .map_err(|e| StoreError::Open {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// The id of the store's revision sequence, as the change log shows it.
    pub(crate) fn history(&self) -> Result<String, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: self.path.clone(),
            message: e.to_string(),
        };
        self.with_db(|db| {
            let read = db.begin_read()?;
            let meta = read.open_table(META)?;
            Ok(meta.get(HISTORY)?.map(|v| v.value()))
        })
        .map_err(|e| err(&e))?
        .map(history_text)
        .ok_or_else(|| err(&"the store has no history id"))
    }

    /// Commits several revisions in one transaction: the change log entries with their undo,
    /// the objects they put or remove, and the new last revision; with them, `grants` records
    /// which requestors' grants earlier revisions changed, and `history` who made the
    /// revisions (the history older than the last `keep_history` revisions is pruned). All or
    /// nothing; durable when it returns Ok.
    pub(super) fn commit(
        &self,
        sets: &[(u64, &[Change], &[Change])],
        grants: &[(u64, Vec<RequestorId>)],
        history: &[HistoryEntry],
        keep_history: u64,
    ) -> Result<(), redb::Error> {
        self.with_db(|db| Self::commit_in(db, sets, grants, history, keep_history))
    }

    fn commit_in(
        db: &Database,
        sets: &[(u64, &[Change], &[Change])],
        grants: &[(u64, Vec<RequestorId>)],
        history: &[HistoryEntry],
        keep_history: u64,
    ) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        if !history.is_empty() {
            let mut table = txn.open_table(ADMIN_HISTORY)?;
            for entry in history {
                table.insert(
                    entry.revision,
                    history::encode(std::slice::from_ref(entry)).as_slice(),
                )?;
            }
            let newest = history.iter().map(|e| e.revision).max().unwrap_or(0);
            let cutoff = newest.saturating_sub(keep_history);
            prune_through(&mut table, cutoff)?;
        }
        {
            let mut log = txn.open_table(LOG)?;
            let mut undo_log = txn.open_table(UNDO)?;
            let mut grants_log = txn.open_table(GRANTS)?;
            for (revision, ids) in grants {
                grants_log.insert(*revision, record::encode_requestors(ids).as_slice())?;
            }
            let mut objects = txn.open_table(OBJECTS)?;
            let mut meta = txn.open_table(META)?;
            let mut last = 0;
            for (revision, changes, undo) in sets {
                if changes
                    .iter()
                    .any(|c| matches!(c, Change::PutRoutes(_) | Change::ResetRoutes))
                {
                    meta.insert(ROUTES_REVISION, *revision)?;
                }
                log.insert(*revision, record::encode_changes(changes).as_slice())?;
                undo_log.insert(*revision, record::encode_changes(undo).as_slice())?;
                for change in *changes {
                    match record::object_entry(change) {
                        (key, Some(value)) => {
                            objects.insert(key.as_str(), value.as_slice())?;
                        }
                        (key, None) => {
                            objects.remove(key.as_str())?;
                        }
                    }
                }
                last = *revision;
            }
            // With only grants recorded, the revision stays.
            if !sets.is_empty() {
                meta.insert("revision", last)?;
            }
            let cutoff = last.saturating_sub(KEPT_REVISIONS);
            for table in [&mut log, &mut undo_log, &mut grants_log] {
                prune_through(table, cutoff)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The administration history of the revisions after `after`, oldest first, at most
    /// `limit` revisions of it.
    pub(crate) fn history_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        let rows = self
            .with_db(|db| {
                let read = db.begin_read()?;
                let table = read.open_table(ADMIN_HISTORY)?;
                let mut rows = Vec::new();
                for item in table.range(after.saturating_add(1)..)?.take(limit) {
                    let (k, v) = item?;
                    rows.push((k.value(), v.value().to_vec()));
                }
                Ok(rows)
            })
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (revision, bytes) in rows {
            entries.extend(history::decode(revision, &bytes)?);
        }
        Ok(entries)
    }

    #[cfg(test)]
    /// The change sets after `revision` still kept in the log, oldest first (for Watch to
    /// resume across a restart). `None` when `revision` is older than the kept history.
    pub(crate) fn changes_since(
        &self,
        revision: u64,
    ) -> Result<Option<Vec<crate::state::ChangeSet>>, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = slot
            .as_ref()
            .ok_or_else(|| err(&"the store is closed after an I/O error"))?;
        let read = db.begin_read().map_err(|e| err(&e))?;
        let log = read.open_table(LOG).map_err(|e| err(&e))?;
        let first = log.first().map_err(|e| err(&e))?.map(|(k, _)| k.value());
        if first.is_some_and(|f| revision + 1 < f) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for item in log.range(revision + 1..).map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let changes =
                record::decode_changes(v.value()).map_err(|source| StoreError::Corrupt {
                    path: self.path.clone(),
                    source,
                })?;
            out.push(crate::state::ChangeSet {
                revision: k.value(),
                changes,
            });
        }
        Ok(Some(out))
    }

    /// The newest revisions up to `head` that can be replayed, at most `max` of them, oldest
    /// first, each with its changes and their undo. Stops (going back from `head`) at the first
    /// revision whose log entry or undo is missing: older ones cannot be rebuilt.
    pub(super) fn replay_window(&self, head: u64, max: usize) -> Result<Vec<Replayed>, StoreError> {
        let corrupt = |source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        };
        let from = head.saturating_sub(max as u64) + 1;
        let rows = self
            .with_db(|db| {
                let read = db.begin_read()?;
                let log = read.open_table(LOG)?;
                let undo = read.open_table(UNDO)?;
                let grants = read.open_table(GRANTS)?;
                let mut rows = Vec::new();
                for revision in (from..=head).rev() {
                    let (Some(c), Some(u)) = (log.get(revision)?, undo.get(revision)?) else {
                        break;
                    };
                    let g = grants.get(revision)?.map(|g| g.value().to_vec());
                    rows.push((revision, c.value().to_vec(), u.value().to_vec(), g));
                }
                Ok(rows)
            })
            .map_err(|e| StoreError::Open {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        rows.into_iter()
            .rev()
            .map(|(revision, c, u, g)| {
                Ok(Replayed {
                    revision,
                    changes: record::decode_changes(&c).map_err(corrupt)?,
                    undo: record::decode_changes(&u).map_err(corrupt)?,
                    grants_changed: g
                        .map(|g| record::decode_requestors(&g))
                        .transpose()
                        .map_err(corrupt)?,
                })
            })
            .collect()
    }
}

/// The `META` key of the history id.
const HISTORY: &str = "history";
/// The `META` key of the revision that last changed the route table: after a restart the table
/// is shown as installed then, even when the change log no longer keeps that revision.
const ROUTES_REVISION: &str = "routes_revision";

/// Removes the entries of a revision-keyed table up to and including revision `cutoff`.
fn prune_through(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    cutoff: u64,
) -> Result<(), redb::Error> {
    loop {
        let oldest = table.first()?.map(|(k, _)| k.value());
        match oldest {
            Some(revision) if revision <= cutoff => {
                table.remove(revision)?;
            }
            _ => return Ok(()),
        }
    }
}

/// The history id as the change log and Watch show it.
fn history_text(id: u64) -> String {
    format!("{id:016x}")
}

/// One kept revision, read back to rebuild the change log at start.
pub(super) struct Replayed {
    pub(super) revision: u64,
    pub(super) changes: Vec<Change>,
    pub(super) undo: Vec<Change>,
    /// `None`: not recorded (the writer stopped before it could).
    pub(super) grants_changed: Option<Vec<RequestorId>>,
}
