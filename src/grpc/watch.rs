//! `Authorizer.Watch`: one task per stream reads the change log from its own position and feeds
//! a bounded channel towards the client. Writers only append to the log, so a slow stream never
//! slows them or another stream; a stream whose next revision leaves the log ends with a reset.
//!
//! A stream shows the whole state, so it is open only to a key that could read all of it:
//! the caller's key (`authorization: ApiKey <key>` metadata, or `api_key`) must hold the reads of
//! [`crate::domain::WATCH_READS`] at ALL scope, and `keys.replicate` at ALL for the secret hashes
//! ([`watch_access`]). The grant is checked again before each revision is sent and when an
//! expiry that matters passes; a stream whose key lost it ends with `UNAUTHENTICATED` (the key no
//! longer authenticates) or `PERMISSION_DENIED` (it lacks a grant), after the events of the
//! revisions it could still see.
//!
//! Bounded: at most `max_subscribers` streams at once, and a snapshot is read from a view of the
//! state shared by all snapshot streams ([`State::snapshot_view`]), with at most
//! [`SNAPSHOT_QUEUE`] of its events queued per stream: a client that stops reading pins neither a
//! copy of the state nor a long queue.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, metadata::MetadataMap};

pub use crate::domain::Interner;

use crate::{
    domain::{
        ApiKey, Expiry, KeyEntry, KeySpec, KeyStatus, KeyType, Model, Project, RequestorId, Role,
        RoleType, Scope, SecretHash, Team, TeamList, User, WatchDenied, authenticate, entry::NEVER,
        model::Change, watch_access,
    },
    grpc::{pb, status::WatchRefused},
    state::{
        ModelView, State, Unanswerable,
        changelog::{LoggedChange, LoggedRevision, Read},
        unix_now,
    },
};

/// Bookmark intervals shorter than this are raised to it.
const MIN_BOOKMARK: Duration = Duration::from_millis(10);

/// Snapshot events queued towards the client at most. Small, because a client may stop reading
/// in the middle of a snapshot: each waiting stream then holds this many events (about 500 bytes
/// each) besides its share of the view. A reading client empties it as fast as the task fills
/// it; `WatchBatched` packs what is queued, and more arrives while a batch is written.
pub const SNAPSHOT_QUEUE: usize = 64;

/// Snapshot events queued at a time: one wait for room per chunk instead of one per event (a
/// snapshot of a million keys is a bulk transfer).
const SNAPSHOT_CHUNK: usize = 32;

type Item = Result<pb::WatchEvent, Status>;

/// The stream handed to tonic: the snapshot's events (if one was asked for), then the events
/// queued by the stream's task, then, if the task ended the stream early (a slow client, a key
/// that lost its grant, shutdown), the reset or status it left behind.
pub struct WatchStream {
    /// The snapshot's own small queue, until the task closes it; then `rx`.
    snapshot: Option<mpsc::Receiver<pb::WatchEvent>>,
    rx: mpsc::Receiver<Item>,
    last: Arc<Mutex<Option<Item>>>,
    /// This stream's place among the `max_subscribers`, given back when tonic drops the stream
    /// (the call ended, or the client went away).
    _slot: SubscriberSlot,
}

impl Stream for WatchStream {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(snapshot) = &mut self.snapshot {
            match snapshot.poll_recv(cx) {
                Poll::Ready(Some(ev)) => return Poll::Ready(Some(Ok(ev))),
                Poll::Ready(None) => self.snapshot = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                Poll::Ready(self.last.lock().unwrap_or_else(|p| p.into_inner()).take())
            }
            other => other,
        }
    }
}

/// One of the `max_subscribers` places; counted in `WatchStats::subscribers` while held.
struct SubscriberSlot(Arc<State>);

impl SubscriberSlot {
    /// Takes a place, or refuses when every place is taken.
    fn take(state: &Arc<State>) -> Result<Self, WatchRefused> {
        let log = state.change_log();
        let limit = log.limits().max_subscribers;
        let taken =
            log.stats
                .subscribers
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                    (open < limit as u64).then_some(open + 1)
                });
        match taken {
            Ok(_) => Ok(SubscriberSlot(state.clone())),
            Err(_) => {
                log.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                Err(WatchRefused::TooManySubscribers { limit })
            }
        }
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0
            .change_log()
            .stats
            .subscribers
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// The key a stream was opened with, kept so that its grant can be checked again as the state
/// changes. It holds the key itself, to authenticate it again when its cache entry is rebuilt;
/// it is never logged (only the prefix is), and has no `Debug`.
struct Credential {
    key: String,
    /// The cache entry the grant was last decided on.
    entry: Arc<KeyEntry>,
    secrets: bool,
    /// Unix seconds; from then on the same entry may answer otherwise (an expiry).
    recheck_at: i64,
}

impl Credential {
    /// Authenticates `key` and decides whether it may Watch (with secrets when asked for).
    fn establish(state: &State, key: String, secrets: bool, now: i64) -> Result<Self, WatchDenied> {
        let parsed = ApiKey::parse(&key).map_err(|e| WatchDenied::Unauthenticated(e.into()))?;
        let entry = authenticated(state.lookup(parsed.prefix), &parsed, now)?;
        let access = watch_access(&entry, secrets, now)?;
        Ok(Credential {
            entry,
            secrets: access.secrets,
            recheck_at: access.recheck_at,
            key,
        })
    }

    /// Checks the grant again at `now`: one cache lookup, and while the key's entry is the one
    /// already decided on and no expiry has passed, nothing more (entries are immutable: any
    /// change to the key, its requestor, their teams or the roles builds new ones). Otherwise
    /// the key is authenticated and decided afresh.
    fn recheck(&mut self, state: &State, now: i64) -> Result<(), WatchDenied> {
        let current = state.lookup(&self.entry.spec.prefix);
        if current
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
            && now < self.recheck_at
        {
            return Ok(());
        }
        let parsed =
            ApiKey::parse(&self.key).map_err(|e| WatchDenied::Unauthenticated(e.into()))?;
        let entry = authenticated(current, &parsed, now)?;
        let access = watch_access(&entry, self.secrets, now)?;
        self.entry = entry;
        self.recheck_at = access.recheck_at;
        Ok(())
    }

    fn prefix(&self) -> &str {
        &self.entry.spec.prefix
    }
}

fn authenticated(
    entry: Option<Arc<KeyEntry>>,
    key: &ApiKey<'_>,
    now: i64,
) -> Result<Arc<KeyEntry>, WatchDenied> {
    authenticate(entry.as_deref(), key, now).map_err(WatchDenied::Unauthenticated)?;
    Ok(entry.expect("authenticate accepts only a present entry"))
}

/// The caller's key: from `authorization: ApiKey <key>` metadata (as for the Admin API) or from
/// the request's `api_key`; both may be given only when they are the same key.
fn presented_key(metadata: &MetadataMap, api_key: &str) -> Result<String, WatchRefused> {
    let from_metadata = match metadata.get("authorization") {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| WatchRefused::BadAuthorization)?;
            let key = value
                .strip_prefix("ApiKey ")
                .ok_or(WatchRefused::BadAuthorization)?;
            Some(key.trim())
        }
    };
    match (from_metadata, api_key) {
        (None, "") => Err(WatchRefused::NoKey),
        (Some(key), "") => Ok(key.to_owned()),
        (None, key) => Ok(key.to_owned()),
        (Some(a), b) if a == b => Ok(b.to_owned()),
        (Some(_), _) => Err(WatchRefused::TwoKeys),
    }
}

/// The most events [`BatchedStream`] packs into one message.
const BATCH_EVENTS: usize = 1024;
/// About the most bytes [`BatchedStream`] packs into one message (one event may pass it).
const BATCH_BYTES: usize = 1 << 20;

impl WatchStream {
    /// The same stream, with the events already queued packed into one message each time.
    pub fn batched(self) -> BatchedStream {
        BatchedStream {
            inner: self,
            held: None,
        }
    }
}

/// `WatchBatched`: the events of a [`WatchStream`], packed. It takes whatever the stream's task
/// has queued when tonic asks for the next message, so a busy stream (a snapshot) goes out in
/// large messages and a quiet one still gets each event at once; the task, its bounded queue
/// and its resets are those of `Watch`.
pub struct BatchedStream {
    inner: WatchStream,
    /// An error that came after events of the batch in hand: it goes out next.
    held: Option<Status>,
}

impl Stream for BatchedStream {
    type Item = Result<pb::WatchEvents, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(status) = self.held.take() {
            return Poll::Ready(Some(Err(status)));
        }
        let mut events: Vec<pb::WatchEvent> = Vec::new();
        let mut bytes = 0;
        while events.len() < BATCH_EVENTS && bytes < BATCH_BYTES {
            let polled = match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(polled) => polled,
                Poll::Pending if events.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            };
            match polled {
                Some(Ok(ev)) => {
                    bytes += prost::Message::encoded_len(&ev);
                    events.push(ev);
                }
                Some(Err(status)) if events.is_empty() => return Poll::Ready(Some(Err(status))),
                Some(Err(status)) => {
                    self.held = Some(status);
                    break;
                }
                None if events.is_empty() => return Poll::Ready(None),
                None => break,
            }
        }
        Poll::Ready(Some(Ok(pb::WatchEvents { events })))
    }
}

/// Which events a stream passes.
#[derive(Debug, Default)]
struct Filter {
    teams: HashSet<String>,
    users: HashSet<String>,
    prefixes: HashSet<String>,
    kinds: HashSet<i32>,
}

impl Filter {
    fn from_request(req: &pb::WatchRequest) -> Self {
        Filter {
            teams: req.team_ids.iter().cloned().collect(),
            users: req.user_ids.iter().cloned().collect(),
            prefixes: req.key_prefixes.iter().cloned().collect(),
            kinds: req.kinds.iter().copied().collect(),
        }
    }

    fn passes(
        &self,
        kind: pb::EventKind,
        team: Option<&str>,
        user: Option<&str>,
        key: Option<&str>,
    ) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&(kind as i32)) {
            return false;
        }
        if self.teams.is_empty() && self.users.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        team.is_some_and(|t| self.teams.contains(t))
            || user.is_some_and(|u| self.users.contains(u))
            || key.is_some_and(|k| self.prefixes.contains(k))
    }
}

/// The wire form of a key.
fn key_event(spec: &KeySpec, team: Option<&Arc<str>>, secrets: bool) -> pb::KeyUpserted {
    pb::KeyUpserted {
        prefix: spec.prefix.to_string(),
        key_type: pb::KeyType::from(spec.key_type) as i32,
        user_id: spec.user().map(|u| u.to_string()).unwrap_or_default(),
        team_id: team.map(|t| t.to_string()).unwrap_or_default(),
        project_id: spec.project().map(|p| p.to_string()).unwrap_or_default(),
        roles: spec.roles.iter().map(|r| r.to_string()).collect(),
        status: spec.status.as_str().to_owned(),
        expires_at: spec.expires_at.unix().unwrap_or(0),
        secret_sha256: if secrets {
            spec.secret_hash.to_hex()
        } else {
            String::new()
        },
    }
}

fn role_def(role: &Role) -> pb::RoleDefinition {
    pb::RoleDefinition {
        id: role.id.to_string(),
        role_type: role.role_type.as_str().to_owned(),
        grants: role
            .grants
            .iter()
            .map(|g| pb::RoleGrant {
                entitlement: g.entitlement.to_string(),
                scope: pb::Scope::from(g.scope) as i32,
            })
            .collect(),
        prebuilt: role.prebuilt,
    }
}

/// The wire event of one logged change, unless the filter drops it.
fn change_event(
    c: &LoggedChange,
    filter: &Filter,
    secrets: bool,
) -> Option<pb::watch_event::Event> {
    use pb::{EventKind as K, watch_event::Event as E};
    let team = c.team.as_deref();
    let user = c.user.as_deref();
    let (kind, key, event) = match &c.change {
        Change::PutKey(spec) => (
            K::Key,
            Some(&*spec.prefix),
            E::KeyUpserted(key_event(spec, c.team.as_ref(), secrets)),
        ),
        Change::RemoveKey(p) => (K::Key, Some(&**p), E::KeyRemoved(p.to_string())),
        Change::PutRole(role) if c.existed => (K::Role, None, E::RoleChanged(role_def(role))),
        Change::PutRole(role) => (K::Role, None, E::RoleDefined(role_def(role))),
        Change::RemoveRole(id) => (K::Role, None, E::RoleRemoved(id.to_string())),
        Change::PutTeam(t) => (
            K::Team,
            None,
            E::TeamChanged(pb::TeamDefinition {
                id: t.id.to_string(),
                name: t.name.clone(),
                active: t.active,
            }),
        ),
        Change::RemoveTeam(id) => (K::Team, None, E::TeamRemoved(id.to_string())),
        Change::PutUser(u) => (
            K::User,
            None,
            E::UserChanged(pb::UserDefinition {
                id: u.id.to_string(),
                name: u.name.to_string(),
                active: u.active,
                team_ids: u.teams.iter().map(|t| t.to_string()).collect(),
            }),
        ),
        Change::RemoveUser(id) => (K::User, None, E::UserRemoved(id.to_string())),
        Change::PutProject(p) => (
            K::Project,
            None,
            E::ProjectChanged(pb::ProjectDefinition {
                id: p.id.to_string(),
                team_id: p.team.to_string(),
                name: p.name.clone(),
            }),
        ),
        Change::RemoveProject(id) => (K::Project, None, E::ProjectRemoved(id.to_string())),
        Change::PutEntitlement(e) => (K::Entitlement, None, E::EntitlementAdded(e.to_string())),
        Change::RemoveEntitlement(e) => {
            (K::Entitlement, None, E::EntitlementRemoved(e.to_string()))
        }
        Change::PutRoutes(routes) => (
            K::Routes,
            None,
            E::RoutesChanged(pb::RouteTable {
                routes: routes.iter().map(pb::RouteDefinition::from).collect(),
            }),
        ),
        Change::ResetRoutes => (K::Routes, None, E::RoutesDefault(pb::RoutesDefault {})),
    };
    filter.passes(kind, team, user, key).then_some(event)
}

/// The whole model as "defined" changes, in the order a diff from the empty model lists them
/// (entitlements, roles, teams, users, projects, keys, the route table unless it is the
/// default), described for the filter directly
/// rather than by diffing and looking each object up again.
fn snapshot_objects(model: &Model) -> impl Iterator<Item = LoggedChange> + '_ {
    let logged = |change: Change, team: Option<Arc<str>>, user: Option<Arc<str>>| LoggedChange {
        change,
        team,
        user,
        existed: false,
    };
    let defaults = crate::domain::Catalog::default();
    let mut roles: Vec<Arc<Role>> = model
        .catalog
        .roles()
        .filter(|r| defaults.role(&r.id) != Some(*r))
        .cloned()
        .collect();
    roles.sort_by(|a, b| a.id.cmp(&b.id));
    let entitlements = model.catalog.added_entitlements();
    entitlements
        .into_iter()
        .map(move |e| logged(Change::PutEntitlement(e), None, None))
        .chain(
            roles
                .into_iter()
                .map(move |r| logged(Change::PutRole(r), None, None)),
        )
        .chain(
            model
                .teams
                .values()
                .map(move |t| logged(Change::PutTeam(t.clone()), Some(t.id.clone()), None)),
        )
        .chain(
            model
                .users
                .values()
                .map(move |u| logged(Change::PutUser(u.clone()), None, Some(u.id.clone()))),
        )
        .chain(
            model
                .projects
                .values()
                .map(move |p| logged(Change::PutProject(p.clone()), Some(p.team.clone()), None)),
        )
        .chain(model.keys.values().map(move |k| {
            logged(
                Change::PutKey(k.clone()),
                model.key_team(k).cloned(),
                k.user().cloned(),
            )
        }))
        .chain(
            model
                .routes
                .iter()
                .map(move |r| logged(Change::PutRoutes(r.clone()), None, None)),
        )
}

/// The events of one revision that pass the filter; the last one is marked.
fn revision_events(rev: &LoggedRevision, filter: &Filter, secrets: bool) -> Vec<pb::WatchEvent> {
    let mut out: Vec<pb::WatchEvent> = rev
        .changes
        .iter()
        .filter_map(|c| change_event(c, filter, secrets))
        .chain(rev.grants_changed.iter().filter_map(|id| {
            let (user, project) = match id {
                RequestorId::User(u) => (u.to_string(), String::new()),
                RequestorId::Project(p) => (String::new(), p.to_string()),
            };
            let user_ref = (!user.is_empty()).then_some(user.as_str());
            filter
                .passes(pb::EventKind::Grants, None, user_ref, None)
                .then(|| {
                    pb::watch_event::Event::GrantsChanged(pb::GrantsChanged {
                        user_id: user.clone(),
                        project_id: project,
                    })
                })
        }))
        .map(|event| pb::WatchEvent {
            revision: rev.revision,
            end_of_revision: false,
            history: String::new(),
            event: Some(event),
        })
        .collect();
    if let Some(last) = out.last_mut() {
        last.end_of_revision = true;
    }
    out
}

fn control(revision: u64, history: &str, event: pb::watch_event::Event) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        end_of_revision: true,
        history: history.to_owned(),
        event: Some(event),
    }
}

/// Starts a Watch: authenticates the caller, validates the request, takes a subscriber's place,
/// then hands the stream to its task.
pub fn start(
    state: Arc<State>,
    metadata: &MetadataMap,
    req: pb::WatchRequest,
) -> Result<WatchStream, Status> {
    let head = state.revision();
    if !state.is_loaded() {
        return Err(Unanswerable::NotReady.into());
    }
    // Before anything else is said about the state (even its revision, in a refusal).
    let key = presented_key(metadata, &req.api_key)
        .inspect_err(|refused| tracing::info!(key = "-", reason = %refused, "watch refused"))?;
    // Only a well-formed key's prefix is logged: a malformed one may be a bare secret.
    let prefix = ApiKey::parse(&key).map_or_else(|_| "-".to_owned(), |k| k.prefix.to_owned());
    let credential = Credential::establish(&state, key, req.include_secret_hashes, unix_now())
        .map_err(WatchRefused::from)
        .inspect_err(|refused| tracing::info!(key = %prefix, reason = %refused, "watch refused"))?;
    if req.snapshot && req.start_revision != 0 {
        return Err(WatchRefused::SnapshotWithStart.into());
    }
    if req.start_revision > head + 1 {
        return Err(WatchRefused::FutureRevision {
            asked: req.start_revision,
            have: head,
        }
        .into());
    }
    let slot = SubscriberSlot::take(&state).inspect_err(|refused| {
        tracing::warn!(key = credential.prefix(), reason = %refused, "watch refused");
    })?;
    tracing::debug!(
        key = credential.prefix(),
        snapshot = req.snapshot,
        secrets = credential.secrets,
        "watch started"
    );
    let log = state.change_log();
    let buffer = log.limits().subscriber_buffer.max(1);
    let (tx, rx) = mpsc::channel(buffer);
    let last = Arc::new(Mutex::new(None));
    let history = log.history();
    let bookmark = (req.bookmark_interval_ms > 0)
        .then(|| Duration::from_millis(req.bookmark_interval_ms.into()).max(MIN_BOOKMARK));
    let task = Subscriber {
        filter: Filter::from_request(&req),
        credential,
        tx,
        last: last.clone(),
        bookmark,
        history: history.to_string(),
        revisions: state.subscribe_revision(),
        closing: log.closing(),
        state: state.clone(),
    };
    log.stats.streams_started.fetch_add(1, Ordering::Relaxed);
    // A snapshot starts the client's view afresh, so only a replay is bound to a history.
    if !req.snapshot && !req.history.is_empty() && *req.history != *history {
        log.stats.start_resets.fetch_add(1, Ordering::Relaxed);
        let reset = control(
            head,
            &history,
            pb::watch_event::Event::Reset(pb::Reset {
                oldest_kept: log.oldest_kept(),
                reason: format!(
                    "the revisions asked for are of history {}; this instance serves history {history}",
                    req.history
                ),
            }),
        );
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(reset));
        drop(task);
        return Ok(WatchStream {
            snapshot: None,
            rx,
            last,
            _slot: slot,
        });
    }
    let (start, snapshot) = if req.snapshot {
        let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE);
        (Start::Snapshot(tx), Some(rx))
    } else if req.start_revision == 0 {
        (Start::From(head + 1), None)
    } else {
        (Start::From(req.start_revision), None)
    };
    tokio::spawn(task.run(start));
    Ok(WatchStream {
        snapshot,
        rx,
        last,
        _slot: slot,
    })
}

/// Where a stream's task begins.
enum Start {
    /// With a snapshot, queued on its own channel.
    Snapshot(mpsc::Sender<pb::WatchEvent>),
    /// From this revision of the log.
    From(u64),
}

/// What to do after trying to send.
enum Flow {
    Go,
    Stop,
}

struct Subscriber {
    state: Arc<State>,
    filter: Filter,
    credential: Credential,
    tx: mpsc::Sender<Item>,
    last: Arc<Mutex<Option<Item>>>,
    bookmark: Option<Duration>,
    history: String,
    revisions: tokio::sync::watch::Receiver<u64>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Subscriber {
    /// Serves the stream: the snapshot (if asked for), then the log from where it starts.
    async fn run(mut self, start: Start) {
        let mut next = match start {
            Start::From(from) => from,
            Start::Snapshot(tx) => match self.snapshot(tx).await {
                Some(next) => next,
                None => return,
            },
        };
        let mut idle_since = tokio::time::Instant::now();
        loop {
            let published = *self.revisions.borrow_and_update();
            if next <= published {
                let entries = match self.state.change_log().read(next, published) {
                    Read::Entries(entries) => entries,
                    Read::Compacted { oldest_kept } => {
                        self.reset(next, oldest_kept, false);
                        return;
                    }
                };
                let after = entries.last().map_or(published, |e| e.revision) + 1;
                for entry in &entries {
                    // Before any event of the revision: the state the cache holds now is at
                    // least this revision, so a key that lost its grant in it sees none of it.
                    if !self.still_allowed() {
                        return;
                    }
                    for ev in revision_events(entry, &self.filter, self.credential.secrets) {
                        if let Flow::Stop = self.send(ev, after).await {
                            return;
                        }
                        idle_since = tokio::time::Instant::now();
                    }
                }
                next = after.max(published + 1);
                continue;
            }
            let bookmark_at = self.bookmark.map(|b| idle_since + b);
            let recheck_at = instant_of(self.credential.recheck_at);
            enum Woke {
                Changed,
                Gone,
                Closing,
                Bookmark,
                Recheck,
            }
            let woke = tokio::select! {
                changed = self.revisions.changed() => if changed.is_err() { Woke::Gone } else { Woke::Changed },
                () = self.tx.closed() => Woke::Gone,
                _ = self.closing.wait_for(|c| *c) => Woke::Closing,
                () = sleep_until(bookmark_at) => Woke::Bookmark,
                () = sleep_until(recheck_at) => Woke::Recheck,
            };
            match woke {
                Woke::Changed => {}
                Woke::Gone => return,
                Woke::Closing => {
                    self.shutting_down();
                    return;
                }
                Woke::Recheck => {
                    if !self.still_allowed() {
                        return;
                    }
                }
                Woke::Bookmark => {
                    let ev = control(
                        next - 1,
                        &self.history,
                        pb::watch_event::Event::Bookmark(pb::Bookmark {}),
                    );
                    if let Flow::Stop = self.send(ev, next).await {
                        return;
                    }
                    idle_since = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Whether the stream's key may still Watch; if not, leaves the status that ends the stream
    /// (after what is already queued, all of it from revisions the key could see).
    fn still_allowed(&mut self) -> bool {
        let Err(denied) = self.credential.recheck(&self.state, unix_now()) else {
            return true;
        };
        let refused = WatchRefused::from(denied);
        tracing::info!(
            key = self.credential.prefix(),
            reason = %refused,
            "watch ended: the key may no longer watch"
        );
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Err(WatchRefused::Lost(Box::new(refused)).into()));
        false
    }

    /// Leaves the shutdown status, after what is queued, whether or not the queue has room now
    /// (a send that found it full used to end the stream without a status, as if complete).
    fn shutting_down(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(Status::unavailable(
            "rolegate is shutting down; watch again from the next revision",
        )));
    }

    /// Sends the state as of one revision, then the snapshot-end marker. Returns the next
    /// revision to read from the log.
    ///
    /// The state is a view shared with every other snapshot stream, and only
    /// [`SNAPSHOT_QUEUE`] events of it wait for the client at a time, so a client that stops
    /// reading costs little. While it does not read, the task follows the log: once the
    /// revision after the view's is no longer kept, the stream could not continue without a
    /// gap, so it ends with a reset at once (letting go of the view) rather than at the end of
    /// the snapshot. The key's grant is checked again at each new revision meanwhile.
    async fn snapshot(&mut self, tx: mpsc::Sender<pb::WatchEvent>) -> Option<u64> {
        let view = self.state.snapshot_view();
        self.history = view.history.to_string();
        let mut chunk: Vec<pb::WatchEvent> = Vec::with_capacity(SNAPSHOT_CHUNK);
        for logged in snapshot_objects(&view.model) {
            if let Some(event) = change_event(&logged, &self.filter, self.credential.secrets) {
                chunk.push(pb::WatchEvent {
                    revision: view.revision,
                    end_of_revision: false,
                    history: String::new(),
                    event: Some(event),
                });
                if chunk.len() == SNAPSHOT_CHUNK {
                    self.queue_snapshot(&tx, &mut chunk, &view).await?;
                }
            }
        }
        self.queue_snapshot(&tx, &mut chunk, &view).await?;
        // The client reads the rest of the stream from the main queue once this one is drained.
        drop(tx);
        let end = control(
            view.revision,
            &self.history,
            pb::watch_event::Event::SnapshotEnd(pb::SnapshotEnd {}),
        );
        self.tx.send(Ok(end)).await.ok()?;
        Some(view.revision + 1)
    }

    /// Queues the events of `chunk` (emptying it) on the snapshot's queue, waiting for room for
    /// all of them at once. `None` when the stream ends instead.
    async fn queue_snapshot(
        &mut self,
        tx: &mpsc::Sender<pb::WatchEvent>,
        chunk: &mut Vec<pb::WatchEvent>,
        view: &ModelView,
    ) -> Option<()> {
        if chunk.is_empty() {
            return Some(());
        }
        let n = chunk.len();
        let state = self.state.clone();
        let stats = &state.change_log().stats;
        loop {
            enum Woke {
                Room,
                Gone,
                Changed,
                Closing,
            }
            let woke = tokio::select! {
                permits = tx.reserve_many(n) => match permits {
                    Ok(permits) => {
                        for (permit, ev) in permits.zip(chunk.drain(..)) {
                            permit.send(ev);
                        }
                        Woke::Room
                    }
                    Err(_) => Woke::Gone,
                },
                changed = self.revisions.changed() => if changed.is_err() { Woke::Gone } else { Woke::Changed },
                _ = self.closing.wait_for(|c| *c) => Woke::Closing,
            };
            match woke {
                Woke::Room => {
                    stats.events_sent.fetch_add(n as u64, Ordering::Relaxed);
                    return Some(());
                }
                Woke::Gone => return None,
                Woke::Closing => {
                    self.shutting_down();
                    return None;
                }
                Woke::Changed => {
                    if !self.still_allowed() {
                        return None;
                    }
                    let log = state.change_log();
                    let oldest_kept = log.oldest_kept();
                    if oldest_kept > view.revision + 1 || *log.history() != *view.history {
                        stats.slow_resets.fetch_add(1, Ordering::Relaxed);
                        self.reset(view.revision + 1, oldest_kept, true);
                        return None;
                    }
                }
            }
        }
    }

    /// Queues one event. While the client is not reading, watches the log: once the revision
    /// after those in hand (`after`) is no longer kept, the stream cannot continue without a
    /// gap, so it ends with a reset.
    async fn send(&mut self, ev: pb::WatchEvent, after: u64) -> Flow {
        let state = self.state.clone();
        let stats = &state.change_log().stats;
        let oldest = loop {
            tokio::select! {
                permit = self.tx.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(Ok(ev));
                        stats.events_sent.fetch_add(1, Ordering::Relaxed);
                        return Flow::Go;
                    }
                    Err(_) => return Flow::Stop,
                },
                changed = self.revisions.changed() => {
                    if changed.is_err() { return Flow::Stop }
                    let oldest = state.change_log().oldest_kept();
                    if oldest > after {
                        break oldest;
                    }
                }
                _ = self.closing.wait_for(|c| *c) => return Flow::Stop,
            }
        };
        stats.slow_resets.fetch_add(1, Ordering::Relaxed);
        self.reset(ev.revision, oldest, true);
        Flow::Stop
    }

    /// Leaves a reset for the client, after whatever is already queued.
    fn reset(&self, at: u64, oldest_kept: u64, slow: bool) {
        let stats = &self.state.change_log().stats;
        let reason = if slow {
            format!(
                "this stream fell behind: revision {oldest_kept} is the oldest kept; take a snapshot"
            )
        } else {
            stats.start_resets.fetch_add(1, Ordering::Relaxed);
            format!(
                "revision {at} is no longer kept (the oldest kept is {oldest_kept}); take a snapshot"
            )
        };
        let ev = control(
            at.saturating_sub(1),
            &self.history,
            pb::watch_event::Event::Reset(pb::Reset {
                oldest_kept,
                reason,
            }),
        );
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(ev));
    }
}

/// The tokio instant of a unix time in seconds (`NEVER`: none). Reached no earlier than the
/// unix second itself, so a check then sees the expiry.
fn instant_of(unix: i64) -> Option<tokio::time::Instant> {
    if unix == NEVER {
        return None;
    }
    let wait = u64::try_from(unix.saturating_sub(unix_now())).unwrap_or(0);
    Some(tokio::time::Instant::now() + Duration::from_secs(wait))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---- events back into changes (a follower) --------------------------------------------------

/// Why an event cannot be turned into a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {revision}: {message}")]
pub struct BadEvent {
    pub revision: u64,
    pub message: String,
}

fn scope_from(scope: i32) -> Option<Scope> {
    match pb::Scope::try_from(scope).ok()? {
        pb::Scope::Own => Some(Scope::Own),
        pb::Scope::Team => Some(Scope::Team),
        pb::Scope::All => Some(Scope::All),
        pb::Scope::Unspecified => None,
    }
}

/// A proto3 string field, absent when empty.
fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Makes the `Arc`s of a conversion: fresh ones, or shared through an [`Interner`].
struct Ids<'i>(Option<&'i mut Interner>);

impl Ids<'_> {
    fn id(&mut self, s: &str) -> Arc<str> {
        match &mut self.0 {
            Some(interner) => interner.id(s),
            None => Arc::from(s),
        }
    }

    fn opt(&mut self, s: &str) -> Option<Arc<str>> {
        (!s.is_empty()).then(|| self.id(s))
    }

    fn teams(&mut self, teams: &[String]) -> TeamList {
        match &mut self.0 {
            Some(interner) => interner.teams(teams),
            None => teams.iter().map(|t| Arc::from(t.as_str())).collect(),
        }
    }

    fn roles(&mut self, roles: &[String]) -> Arc<[Arc<str>]> {
        match &mut self.0 {
            Some(interner) => interner.roles(roles),
            None => roles
                .iter()
                .map(|r| Arc::from(r.as_str()))
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

/// The change a data event stands for; `Ok(None)` for events that carry no change
/// (grants changed, control events).
pub fn change_of(ev: &pb::WatchEvent) -> Result<Option<Change>, BadEvent> {
    convert_event(ev, Ids(None))
}

/// [`change_of`], with the ids and role lists shared through `interner`.
pub fn change_of_interned(
    ev: &pb::WatchEvent,
    interner: &mut Interner,
) -> Result<Option<Change>, BadEvent> {
    convert_event(ev, Ids(Some(interner)))
}

fn convert_event(ev: &pb::WatchEvent, mut ids: Ids<'_>) -> Result<Option<Change>, BadEvent> {
    use pb::watch_event::Event as E;
    let bad = |message: String| BadEvent {
        revision: ev.revision,
        message,
    };
    let Some(event) = &ev.event else {
        return Err(bad("an event without a body".into()));
    };
    Ok(Some(match event {
        E::KeyUpserted(k) => {
            let key_type = match pb::KeyType::try_from(k.key_type) {
                Ok(pb::KeyType::Team) => KeyType::Team,
                Ok(pb::KeyType::Project) => KeyType::Project,
                _ => {
                    return Err(bad(format!(
                        "key {}: unknown key type {}",
                        k.prefix, k.key_type
                    )));
                }
            };
            let secret_hash: SecretHash = k.secret_sha256.parse().map_err(|_| {
                bad(format!(
                    "key {}: no secret hash (the upstream key needs keys.replicate at ALL: the FOLLOWER role)",
                    k.prefix
                ))
            })?;
            let status: KeyStatus = k.status.parse().map_err(|e: String| bad(e))?;
            let owner = KeySpec::owner_of(key_type, nonempty(&k.user_id), nonempty(&k.project_id))
                .map_err(|e| bad(format!("key {}: {e}", k.prefix)))?;
            let expires_at = Expiry::from_unix((k.expires_at != 0).then_some(k.expires_at))
                .map_err(|e| bad(format!("key {}: {e}", k.prefix)))?;
            Change::PutKey(Arc::new(KeySpec {
                prefix: k.prefix.as_str().into(),
                secret_hash,
                key_type,
                // User ids are nearly unique (see `Interner`); projects own several keys.
                owner: match key_type {
                    KeyType::Team => Arc::from(owner),
                    KeyType::Project => ids.id(owner),
                },
                team: if key_type == KeyType::Team {
                    ids.opt(&k.team_id)
                } else {
                    None
                },
                roles: ids.roles(&k.roles),
                status,
                expires_at,
            }))
        }
        E::KeyRemoved(p) => Change::RemoveKey(Arc::from(p.as_str())),
        E::RoleDefined(r) | E::RoleChanged(r) => {
            let role_type = match r.role_type.as_str() {
                "user" => RoleType::User,
                "system" => RoleType::System,
                "implicit" => RoleType::Implicit,
                other => return Err(bad(format!("role {}: unknown role type {other:?}", r.id))),
            };
            let grants = r
                .grants
                .iter()
                .map(|g| {
                    Ok(crate::domain::Grant {
                        entitlement: Arc::from(g.entitlement.as_str()),
                        scope: scope_from(g.scope)
                            .ok_or_else(|| bad(format!("role {}: grant without a scope", r.id)))?,
                    })
                })
                .collect::<Result<Vec<_>, BadEvent>>()?;
            Change::PutRole(Arc::new(Role {
                id: Arc::from(r.id.as_str()),
                role_type,
                grants,
                prebuilt: r.prebuilt,
            }))
        }
        E::RoleRemoved(id) => Change::RemoveRole(Arc::from(id.as_str())),
        E::TeamChanged(t) => Change::PutTeam(Team {
            id: ids.id(&t.id),
            name: t.name.clone(),
            active: t.active,
        }),
        E::TeamRemoved(id) => Change::RemoveTeam(Arc::from(id.as_str())),
        E::UserChanged(u) => Change::PutUser(Arc::new(User {
            id: Arc::from(u.id.as_str()),
            name: u.name.as_str().into(),
            active: u.active,
            teams: ids.teams(&u.team_ids),
        })),
        E::UserRemoved(id) => Change::RemoveUser(Arc::from(id.as_str())),
        E::ProjectChanged(p) => Change::PutProject(Project {
            id: ids.id(&p.id),
            team: ids.id(&p.team_id),
            name: p.name.clone(),
        }),
        E::ProjectRemoved(id) => Change::RemoveProject(Arc::from(id.as_str())),
        E::EntitlementAdded(e) => Change::PutEntitlement(Arc::from(e.as_str())),
        E::EntitlementRemoved(e) => Change::RemoveEntitlement(Arc::from(e.as_str())),
        E::RoutesChanged(table) => Change::PutRoutes(
            table
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    crate::domain::RouteSpec::try_from(r)
                        .map_err(|e| bad(format!("routes[{i}]: {e}")))
                })
                .collect::<Result<_, BadEvent>>()?,
        ),
        E::RoutesDefault(_) => Change::ResetRoutes,
        E::GrantsChanged(_) | E::Bookmark(_) | E::SnapshotEnd(_) | E::Reset(_) => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_the_metadata_or_the_request_and_only_one_key() {
        let metadata = |value: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", value.parse().unwrap());
            m
        };
        let none = MetadataMap::new();
        let cases: &[(&MetadataMap, &str, Result<&str, WatchRefused>)] = &[
            (&none, "", Err(WatchRefused::NoKey)),
            (&none, "Key01.secret", Ok("Key01.secret")),
            (&metadata("ApiKey Key01.secret"), "", Ok("Key01.secret")),
            (&metadata("ApiKey  Key01.secret "), "", Ok("Key01.secret")),
            (
                &metadata("ApiKey Key01.secret"),
                "Key01.secret",
                Ok("Key01.secret"),
            ),
            (
                &metadata("ApiKey Key01.secret"),
                "Key02.other",
                Err(WatchRefused::TwoKeys),
            ),
            (
                &metadata("Bearer Key01.secret"),
                "",
                Err(WatchRefused::BadAuthorization),
            ),
            (
                &metadata("Key01.secret"),
                "Key01.secret",
                Err(WatchRefused::BadAuthorization),
            ),
        ];
        for (m, field, want) in cases {
            let got = presented_key(m, field);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{m:?} {field:?}"
            );
        }
    }
}
