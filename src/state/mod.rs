//! The cache: one `DashMap<prefix, Arc<KeyEntry>>` that every front end reads, changed only by
//! applying an origin's [`ChangeSet`]s, each under a revision that only grows.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use compact_str::CompactString;
use dashmap::DashMap;
use smallvec::SmallVec;
use tokio::sync::watch;

pub mod changelog;
#[cfg(test)]
mod first_load_tests;

use changelog::{ChangeLog, LoggedChange};

use crate::domain::{
    ApiKey, Catalog, Decision, IdMap, KeyEntry, Model, Reason, Requestor, RequestorId, ResourceRef,
    RouteSpec, authenticate, decide_presented,
    entry::{GrantInterner, build_requestor},
    explain::Explanation,
    model::Change,
};

/// Changes committed by an origin under one revision, applied all together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    pub revision: u64,
    pub changes: Vec<Change>,
}

/// Why a change set was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("revision {given} is not after the applied revision {applied}")]
    StaleRevision { given: u64, applied: u64 },
}

/// Why a request could not be answered at all, whichever front end it came through (each maps
/// it to its own "unavailable": gRPC `UNAVAILABLE`, HTTP 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswerable {
    #[error("rolegate is not ready: no state has been loaded yet")]
    NotReady,
    #[error(
        "revision {wanted} has not been applied here in time; this instance has revision {have}"
    )]
    Lagging { wanted: u64, have: u64 },
}

/// The answer to one check, with what the front ends report besides the decision.
#[derive(Clone, Debug)]
pub struct CheckedDecision {
    pub decision: Decision,
    /// The presented key's entry, once the key is authenticated (also when forbidden).
    pub(crate) entry: Option<Arc<KeyEntry>>,
    /// The applied revision when the check started: the answer reflects at least this state.
    pub(crate) revision: u64,
}

/// The writer's side: the model the cache is built from and the indexes that find which entries
/// a change touches. Behind a std `Mutex`: writers are rare and never hold it across an await.
struct Writer {
    model: Model,
    catalog: Arc<Catalog>,
    /// Every requestor that has keys, as last built; its `owned_key_prefixes` are its keys.
    requestors: IdMap<Arc<Requestor>>,
    interner: GrantInterner,
    /// The newest snapshot view, while some Watch stream still reads it ([`State::snapshot_view`]).
    view: Weak<ModelView>,
}

/// The model as of one revision, immutable, shared by every Watch snapshot that reads it: a
/// stream that stalls holds a reference, not a copy of the state.
#[derive(Debug)]
pub(crate) struct ModelView {
    pub(crate) revision: u64,
    /// The history `revision` belongs to.
    pub(crate) history: Arc<str>,
    pub(crate) model: Model,
}

/// The writer's own maps, hashed for speed: their keys come from the origin, not from callers.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The requestors a change set touches, each with all its keys after it.
type Touched = FastMap<RequestorId, KeyList>;

/// A requestor's keys while a change set is applied: held in the map's slot (most requestors
/// have one or two keys), so a first load does not interleave a million short-lived lists with
/// the records it keeps.
type KeyList = SmallVec<[CompactString; 2]>;

/// The cache's map. Keys are held inline (prefixes up to 24 bytes), so a lookup compares the
/// prefix without reading another allocation. Only the writer inserts, so a hasher built for
/// speed over flooding resistance is enough: a caller cannot choose what the map holds.
type KeyMap = DashMap<CompactString, Arc<KeyEntry>, foldhash::fast::RandomState>;

/// Counts of the objects in the state, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub keys: usize,
    pub(crate) teams: usize,
    pub(crate) users: usize,
    pub(crate) projects: usize,
    pub(crate) roles: usize,
}

/// The route table of the state, as the proxy front ends follow it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ActiveRoutes {
    /// `None`: the built-in default table.
    pub(crate) specs: Option<Arc<[RouteSpec]>>,
    /// The revision of the change set that installed this table (0: the default table, never
    /// changed since this state was created).
    pub(crate) revision: u64,
}

/// The in-memory authorization state.
pub struct State {
    keys: KeyMap,
    writer: Mutex<Writer>,
    /// The route table, published by `apply` (before the revision) when a change set changes it.
    routes: watch::Sender<ActiveRoutes>,
    /// `routes.revision`, readable without a lock on every proxied request: a front end compares
    /// it with the table it compiled.
    routes_revision: AtomicU64,
    /// The applied revision; 0 until the first change set. Waiters (`min_revision`) subscribe.
    revision: watch::Sender<u64>,
    /// The recent revisions, for Watch; appended by `apply` before the revision is published.
    log: ChangeLog,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix seconds now; the clock every check uses.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl State {
    pub fn new() -> Self {
        let model = Model::default();
        State {
            keys: KeyMap::default(),
            writer: Mutex::new(Writer {
                catalog: Arc::new(model.catalog.clone()),
                model,
                requestors: IdMap::default(),
                interner: GrantInterner::default(),
                view: Weak::new(),
            }),
            revision: watch::Sender::new(0),
            log: ChangeLog::default(),
            routes: watch::Sender::new(ActiveRoutes::default()),
            routes_revision: AtomicU64::new(0),
        }
    }

    /// A state holding `model`, applied as one change set under `revision` (which must be
    /// above 0, the revision of an empty state).
    pub fn from_model(model: &Model, revision: u64) -> Result<Self, StateError> {
        let state = State::new();
        let changes = state.model().diff(model);
        state.apply(ChangeSet { revision, changes })?;
        Ok(state)
    }

    /// The applied revision (0: nothing applied yet).
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Whether a first change set has been applied.
    pub(crate) fn is_loaded(&self) -> bool {
        self.revision() > 0
    }

    /// The cache entry of a key prefix.
    pub fn lookup(&self, prefix: &str) -> Option<Arc<KeyEntry>> {
        self.keys.get(prefix).map(|e| e.value().clone())
    }

    /// Decides one request: parse the key, look it up, authenticate it, decide.
    pub fn check(
        &self,
        api_key: &str,
        entitlement: &str,
        resource: ResourceRef<'_>,
        now: i64,
    ) -> CheckedDecision {
        let revision = self.revision();
        let denied = |reason| CheckedDecision {
            decision: Decision::denied(reason),
            entry: None,
            revision,
        };
        let key = match ApiKey::parse(api_key) {
            Ok(key) => key,
            Err(malformed) => return denied(malformed.into()),
        };
        // The entry is read in place under the shard's read lock and cloned only once decided:
        // an `Arc` clone is a locked instruction, after which the CPU may not start the loads
        // and the hashing that follow, so cloning first serialised them behind the entry's miss.
        let slot = self.keys.get(key.prefix);
        let entry = slot.as_ref().map(|slot| slot.value());
        if let Err(reason) = authenticate(entry.map(|e| &**e), &key, now) {
            return denied(reason);
        }
        let entry = entry.expect("authenticate accepts only a present entry");
        CheckedDecision {
            decision: decide_presented(entry, key.prefix, entitlement, resource, now),
            entry: Some(entry.clone()),
            revision,
        }
    }

    /// Decides one request for the key `key`, given whole (`<prefix>.<secret>`, judged as
    /// [`State::check`] judges it) or as its prefix alone: then the secret is not checked, the
    /// rest is (the key's status, expiry, team and user). For offline checks of a policy file,
    /// whose tests know prefixes, never secrets.
    pub fn check_prefix(
        &self,
        key: &str,
        entitlement: &str,
        resource: ResourceRef<'_>,
        now: i64,
    ) -> CheckedDecision {
        if key.contains('.') {
            return self.check(key, entitlement, resource, now);
        }
        let revision = self.revision();
        let denied = |reason| CheckedDecision {
            decision: Decision::denied(reason),
            entry: None,
            revision,
        };
        if !crate::domain::key::is_valid_prefix(key) {
            return denied(Reason::MalformedKey);
        }
        let Some(entry) = self.lookup(key) else {
            return denied(Reason::UnknownKey);
        };
        if let Err(reason) = crate::domain::decide::usable(&entry, now) {
            return denied(reason);
        }
        CheckedDecision {
            decision: decide_presented(&entry, key, entitlement, resource, now),
            entry: Some(entry),
            revision,
        }
    }

    /// The check of the key `prefix` (no secret) with its explanation: the same decision as
    /// [`State::check_prefix`], recorded as it is made.
    pub fn explain(
        &self,
        prefix: &str,
        entitlement: &str,
        resource: ResourceRef<'_>,
        now: i64,
    ) -> (CheckedDecision, Explanation) {
        let revision = self.revision();
        let prefix = prefix.split_once('.').map_or(prefix, |(p, _)| p);
        if !crate::domain::key::is_valid_prefix(prefix) {
            let decision = Decision::denied(Reason::MalformedKey);
            let explanation = Explanation {
                decision: decision.clone(),
                requestor: String::new(),
                keys: Vec::new(),
                decided_by: None,
                covers: String::new(),
                coverage: format!("{prefix:?} is not a key prefix"),
            };
            let checked = CheckedDecision {
                decision,
                entry: None,
                revision,
            };
            return (checked, explanation);
        }
        let entry = self.lookup(prefix);
        let explanation = crate::domain::explain::explain(
            entry.as_deref(),
            prefix,
            entitlement,
            resource,
            now,
            |p| self.lookup(p),
        );
        let authenticated = !explanation.decision.reason.is_unauthenticated();
        let checked = CheckedDecision {
            decision: explanation.decision.clone(),
            entry: entry.filter(|_| authenticated),
            revision,
        };
        (checked, explanation)
    }

    /// Waits until `min` is applied, at most `timeout`. Returns the applied revision, or, past
    /// the timeout, `Err` with the revision this instance has.
    pub(crate) async fn wait_for_revision(&self, min: u64, timeout: Duration) -> Result<u64, u64> {
        let mut rx = self.revision.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= min)).await;
        match reached {
            Ok(Ok(rev)) => Ok(*rev),
            _ => Err(self.revision()),
        }
    }

    /// A receiver of the applied revision, for whoever must follow it.
    pub fn subscribe_revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The route table and the revision that installed it.
    pub(crate) fn routes(&self) -> ActiveRoutes {
        self.routes.borrow().clone()
    }

    /// The revision that installed the route table (0: the default, never changed): one atomic
    /// load, for the proxy front ends to tell whether the table they compiled is current.
    pub(crate) fn routes_revision(&self) -> u64 {
        self.routes_revision.load(Ordering::Acquire)
    }

    /// Records that the route table in force was installed at `revision`, an earlier revision
    /// than the change set that loaded it (a durable store's start: the table may be older than
    /// the revisions it replays). Only moves the revision back; the table is unchanged.
    pub(crate) fn date_routes(&self, revision: u64) {
        let _writer = self.lock();
        let current = self.routes.borrow().revision;
        if revision < current {
            self.routes.send_modify(|r| r.revision = revision);
            self.routes_revision.store(revision, Ordering::Release);
        }
    }

    /// A receiver of the route table, notified when a change set changes it.
    pub(crate) fn subscribe_routes(&self) -> watch::Receiver<ActiveRoutes> {
        self.routes.subscribe()
    }

    /// A copy of the model the cache is built from.
    pub fn model(&self) -> Model {
        self.lock().model.clone()
    }

    /// Reads the model without copying it (the Admin API's lookups). `f` must be quick: writers
    /// wait while it runs.
    pub(crate) fn read_model<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.lock().model)
    }

    /// How many objects the state holds.
    pub fn counts(&self) -> Counts {
        let w = self.lock();
        Counts {
            keys: w.model.keys.len(),
            teams: w.model.teams.len(),
            users: w.model.users.len(),
            projects: w.model.projects.len(),
            roles: w.model.catalog.roles().count(),
        }
    }

    /// The change log Watch streams read.
    pub fn change_log(&self) -> &ChangeLog {
        &self.log
    }

    /// The state for a Watch snapshot: the newest view still in use when the change log still
    /// holds every revision after it (the stream replays them from the log), else a copy of the
    /// model as of the applied revision. However many snapshot streams run, and however slowly
    /// their clients read, they share one copy of the state (two while an old one is let go):
    /// a stream whose view's next revision leaves the log is reset (see `grpc::watch`).
    pub(crate) fn snapshot_view(&self) -> Arc<ModelView> {
        let mut w = self.lock();
        let history = self.log.history();
        if let Some(view) = w.view.upgrade()
            && view.history == history
            && view.revision + 1 >= self.log.oldest_kept()
        {
            return view;
        }
        let view = Arc::new(ModelView {
            revision: self.revision(),
            history,
            model: w.model.clone(),
        });
        w.view = Arc::downgrade(&view);
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding the lock would leave the model half-applied; it cannot happen
        // short of a bug, and serving the last entries is the best that can be done then.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies an origin's change set: updates the model, rebuilds the entries of every
    /// requestor the changes touch, then publishes the revision. The origin has validated the
    /// resulting model.
    pub fn apply(&self, set: ChangeSet) -> Result<u64, StateError> {
        let mut w = self.lock();
        let w = &mut *w;
        let applied = self.revision();
        if set.revision <= applied {
            return Err(StateError::StaleRevision {
                given: set.revision,
                applied,
            });
        }
        // A revision too large for the log is not described: nobody could replay it.
        let unlogged = self.log.too_large(set.changes.len());
        let touches = w.apply_changes(&set.changes, !unlogged);
        for prefix in &touches.removed_keys {
            if !w.model.keys.contains_key(&**prefix) {
                self.keys.remove(&**prefix);
            }
        }
        let mut grants_changed: Vec<RequestorId> = Vec::new();
        let rebuilt = self.rebuild(w, touches.requestors, unix_now(), !unlogged);
        for (id, requestor, changed) in rebuilt {
            match requestor {
                Some(requestor) => w.requestors.put(requestor),
                None => w.requestors.remove(&id),
            };
            if changed {
                grants_changed.push(id);
            }
        }
        if touches.all || !touches.removed_keys.is_empty() {
            w.interner.prune();
        }
        grants_changed.sort();
        if touches.routes && w.model.routes != self.routes.borrow().specs {
            // Published before the revision: a request answered at this revision finds the
            // table's revision changed and does not use the old table.
            self.routes.send_replace(ActiveRoutes {
                specs: w.model.routes.clone(),
                revision: set.revision,
            });
            self.routes_revision.store(set.revision, Ordering::Release);
        }
        // Logged before the revision is published: a stream woken by the new revision finds it.
        if unlogged {
            self.log.append_too_large(set.revision);
        } else {
            self.log
                .append(set.revision, touches.logged, grants_changed);
        }
        self.revision.send_replace(set.revision);
        Ok(set.revision)
    }
}

/// Below this many requestors to rebuild, one thread does it; above, a first load or a catalog
/// change, the rebuild is split over the CPUs (it is two thirds of loading a million keys).
const PARALLEL_REBUILD_MIN: usize = 32_768;

/// A rebuilt requestor: its id, the requestor (`None` when it has no keys left) and whether its
/// effective grants changed.
type Rebuilt = (RequestorId, Option<Arc<Requestor>>, bool);

impl State {
    /// Rebuilds every requestor of `touched` and the cache entries of its keys, from the model
    /// as this change set leaves it. The writer's requestor index still holds the previous
    /// requestors (to tell whether grants changed, when `describe`); the caller updates it.
    fn rebuild(&self, w: &mut Writer, touched: Touched, now: i64, describe: bool) -> Vec<Rebuilt> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        if touched.len() < PARALLEL_REBUILD_MIN || threads < 2 {
            let mut interner = std::mem::take(&mut w.interner);
            let rebuilt = self.rebuild_batch(w, touched, now, describe, &mut interner);
            w.interner = interner;
            return rebuilt;
        }
        let mut batches: Vec<Vec<(RequestorId, KeyList)>> = (0..threads)
            .map(|_| Vec::with_capacity(touched.len() / threads + 1))
            .collect();
        for (i, item) in touched.into_iter().enumerate() {
            batches[i % threads].push(item);
        }
        // Each thread shares role grants through its own copy of the interner; the sets new to
        // a copy are merged back (a role list seen first by two threads keeps one set per
        // thread until the next prune: a few kilobytes).
        let w_ref: &Writer = w;
        let done: Vec<(Vec<Rebuilt>, GrantInterner)> = std::thread::scope(|scope| {
            let handles: Vec<_> = batches
                .into_iter()
                .map(|batch| {
                    let mut interner = w_ref.interner.clone();
                    scope.spawn(move || {
                        let rebuilt =
                            self.rebuild_batch(w_ref, batch, now, describe, &mut interner);
                        (rebuilt, interner)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(done) => done,
                    // A panic in a rebuild is a bug; carry it to the writer as one would have.
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        let mut all = Vec::new();
        for (rebuilt, interner) in done {
            w.interner.absorb(interner);
            all.extend(rebuilt);
        }
        all
    }

    /// [`State::rebuild`] of one batch, on the calling thread.
    fn rebuild_batch(
        &self,
        w: &Writer,
        batch: impl IntoIterator<Item = (RequestorId, KeyList)>,
        now: i64,
        describe: bool,
        interner: &mut GrantInterner,
    ) -> Vec<Rebuilt> {
        let batch = batch.into_iter();
        let mut rebuilt = Vec::with_capacity(batch.size_hint().0);
        for (id, mut prefixes) in batch {
            prefixes.sort();
            prefixes.dedup();
            let (requestor, entries) =
                build_requestor(&w.model, &w.catalog, &id, &prefixes, now, interner);
            for entry in entries {
                self.keys.insert(entry.spec.prefix.clone(), entry);
            }
            let new = (!requestor.owned_key_prefixes.is_empty()).then_some(requestor);
            let changed = describe
                && changelog::grants_differ(w.requestors.get(&id).map(|r| &**r), new.as_deref());
            rebuilt.push((id, new, changed));
        }
        rebuilt
    }
}

/// What a change set touches, gathered while its changes are applied to the model.
#[derive(Default)]
struct Touches {
    /// The requestors to rebuild, each with all its keys after the change set.
    requestors: Touched,
    /// A role or entitlement changed: every requestor is rebuilt, with a new catalog.
    all: bool,
    /// Teams put or removed.
    teams: HashSet<Arc<str>>,
    removed_keys: Vec<Arc<str>>,
    /// The route table was put or reset.
    routes: bool,
    /// The change log's description of each change (empty when not described).
    logged: Vec<LoggedChange>,
}

impl Writer {
    /// Applies `changes` to the model and returns what they touch, with the change log's
    /// description of each when `describe`.
    fn apply_changes(&mut self, changes: &[Change], describe: bool) -> Touches {
        let mut t = Touches::default();
        // A first load brings every object at once: size the maps once rather than doubling.
        // (Only then: most puts of a later large set replace objects already counted.)
        if self.model.keys.is_empty() && changes.len() > 1024 {
            let puts = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
            let new_keys = puts(|c| matches!(c, Change::PutKey(_)));
            let new_users = puts(|c| matches!(c, Change::PutUser(_)));
            self.model.keys.reserve(new_keys);
            self.model.users.reserve(new_users);
            self.requestors.reserve(new_users);
            t.requestors.reserve(new_users);
        }
        // Without keys before, every key after this set was put by it, so its requestor is
        // touched already: a team change needs no search for the keys in that team.
        let had_keys = !self.model.keys.is_empty();
        for change in changes {
            if describe {
                t.logged.push(LoggedChange::describe(&self.model, change));
            }
            self.touch(&mut t, change);
            self.model.apply(change);
        }
        if t.all {
            self.catalog = Arc::new(self.model.catalog.clone());
            self.interner = GrantInterner::default();
            let all: Vec<RequestorId> = self.requestors.keys().cloned().collect();
            for id in all {
                self.keys_of(&mut t.requestors, id);
            }
        } else if !t.teams.is_empty() && had_keys {
            let in_teams: Vec<RequestorId> = self
                .model
                .keys
                .values()
                .filter(|spec| {
                    (self.model.key_team(spec)).is_some_and(|team| t.teams.contains(team))
                })
                .map(|spec| RequestorId::of(spec))
                .collect();
            for id in in_teams {
                self.keys_of(&mut t.requestors, id);
            }
        }
        t
    }

    /// Records what `change` touches, before it is applied to the model.
    fn touch(&self, t: &mut Touches, change: &Change) {
        let touched = &mut t.requestors;
        match change {
            Change::PutEntitlement(_)
            | Change::RemoveEntitlement(_)
            | Change::PutRole(_)
            | Change::RemoveRole(_) => t.all = true,
            Change::PutTeam(team) => {
                t.teams.insert(team.id.clone());
            }
            Change::RemoveTeam(id) => {
                t.teams.insert(id.clone());
            }
            Change::PutUser(user) => {
                self.keys_of(touched, RequestorId::User(user.id.clone()));
            }
            Change::RemoveUser(id) => {
                self.keys_of(touched, RequestorId::User(id.clone()));
            }
            Change::PutProject(project) => {
                self.keys_of(touched, RequestorId::Project(project.id.clone()));
            }
            Change::RemoveProject(id) => {
                self.keys_of(touched, RequestorId::Project(id.clone()));
            }
            Change::PutKey(spec) => {
                self.unlist_key(touched, &spec.prefix);
                self.keys_of(touched, RequestorId::of(spec))
                    .push(spec.prefix.clone());
            }
            Change::RemoveKey(prefix) => {
                self.unlist_key(touched, prefix);
                t.removed_keys.push(prefix.clone());
            }
            // The table changes no key's grants: the front ends recompile it.
            Change::PutRoutes(_) | Change::ResetRoutes => t.routes = true,
        }
    }

    /// The keys of requestor `id` as this change set leaves them, starting from those it had.
    fn keys_of<'t>(&self, touched: &'t mut Touched, id: RequestorId) -> &'t mut KeyList {
        touched.entry(id).or_insert_with_key(|id| {
            self.requestors
                .get(id)
                .map(|r| r.owned_key_prefixes.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Takes `prefix` off the key list of the requestor it belonged to before this change.
    fn unlist_key(&self, touched: &mut Touched, prefix: &str) {
        let Some(id) = self.model.keys.get(prefix).map(|old| RequestorId::of(old)) else {
            return;
        };
        self.keys_of(touched, id).retain(|p| p != prefix);
    }
}

impl CheckedDecision {
    /// The reason, for logs and metrics.
    pub fn reason(&self) -> Reason {
        self.decision.reason
    }
}

#[cfg(test)]
mod tests;
