//! `Authorizer.Watch`: one task per stream reads the change log from its own position and feeds
//! a bounded channel towards the client. Writers only append to the log, so a slow stream never
//! slows them or another stream; a stream whose next revision leaves the log ends with a reset.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

pub use crate::domain::Interner;

use crate::{
    domain::{
        Expiry, KeySpec, KeyStatus, KeyType, Model, Project, RequestorId, ResourceRef, Role,
        RoleType, Scope, SecretHash, Team, TeamList, User, model::Change,
    },
    grpc::{pb, status::WatchRefused},
    state::{
        State,
        changelog::{LoggedChange, LoggedRevision, Read},
        unix_now,
    },
};

/// Bookmark intervals shorter than this are raised to it.
const MIN_BOOKMARK: Duration = Duration::from_millis(10);

type Item = Result<pb::WatchEvent, Status>;

/// The stream handed to tonic: the events queued by the stream's task, then, if the task gave
/// up on a slow client, the reset it left behind.
pub struct WatchStream {
    rx: mpsc::Receiver<Item>,
    last: Arc<Mutex<Option<Item>>>,
}

impl Stream for WatchStream {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                Poll::Ready(self.last.lock().unwrap_or_else(|p| p.into_inner()).take())
            }
            other => other,
        }
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

/// Objects a snapshot queues at a time.
const SNAPSHOT_CHUNK: usize = 256;

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

/// Starts a Watch: validates the request, then hands the stream to its task.
pub fn start(state: Arc<State>, req: pb::WatchRequest) -> Result<WatchStream, Status> {
    let head = state.revision();
    if !state.is_loaded() {
        return Err(crate::grpc::status::Unanswerable::NotReady.into());
    }
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
    let secrets = req.include_secret_hashes;
    if secrets {
        let outcome = state.check(
            &req.api_key,
            "keys.read",
            ResourceRef::default(),
            unix_now(),
        );
        if !(outcome.decision.is_allowed() && outcome.decision.scope == Some(Scope::All)) {
            return Err(WatchRefused::SecretsDenied.into());
        }
    }
    let log = state.change_log();
    let buffer = log.limits().subscriber_buffer.max(1);
    let (tx, rx) = mpsc::channel(buffer);
    let last = Arc::new(Mutex::new(None));
    let history = log.history();
    let bookmark = (req.bookmark_interval_ms > 0)
        .then(|| Duration::from_millis(req.bookmark_interval_ms.into()).max(MIN_BOOKMARK));
    let task = Subscriber {
        filter: Filter::from_request(&req),
        secrets,
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
        return Ok(WatchStream { rx, last });
    }
    let from = if req.snapshot {
        None
    } else if req.start_revision == 0 {
        Some(head + 1)
    } else {
        Some(req.start_revision)
    };
    tokio::spawn(task.run(from));
    Ok(WatchStream { rx, last })
}

/// What to do after trying to send.
enum Flow {
    Go,
    Stop,
}

struct Subscriber {
    state: Arc<State>,
    filter: Filter,
    secrets: bool,
    tx: mpsc::Sender<Item>,
    last: Arc<Mutex<Option<Item>>>,
    bookmark: Option<Duration>,
    history: String,
    revisions: tokio::sync::watch::Receiver<u64>,
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Counts the stream among the subscribers while its task runs.
struct Counted(Arc<State>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .change_log()
            .stats
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Subscriber {
    /// Serves the stream: the snapshot (when `from` is None), then the log from `from` on.
    async fn run(mut self, from: Option<u64>) {
        self.state
            .change_log()
            .stats
            .subscribers
            .fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(self.state.clone());
        let mut next = match from {
            Some(from) => from,
            None => match self.snapshot().await {
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
                    for ev in revision_events(entry, &self.filter, self.secrets) {
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
            enum Woke {
                Changed,
                Gone,
                Closing,
                Bookmark,
            }
            let woke = tokio::select! {
                changed = self.revisions.changed() => if changed.is_err() { Woke::Gone } else { Woke::Changed },
                () = self.tx.closed() => Woke::Gone,
                _ = self.closing.wait_for(|c| *c) => Woke::Closing,
                () = sleep_until(bookmark_at) => Woke::Bookmark,
            };
            match woke {
                Woke::Changed => {}
                Woke::Gone => return,
                Woke::Closing => {
                    // After what is queued, whether or not the queue has room now: a send that
                    // found it full used to end the stream without a status, as if complete.
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Err(Status::unavailable(
                            "rolegate is shutting down; watch again from the next revision",
                        )));
                    return;
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

    /// Sends the state as of one revision, then the snapshot-end marker. Returns the next
    /// revision to read from the log.
    async fn snapshot(&mut self) -> Option<u64> {
        let (revision, model) = self.state.snapshot();
        // Queued a chunk at a time: one wait for room per chunk instead of one per object (a
        // snapshot of a million keys is a bulk transfer). A snapshot is read at the client's
        // pace: only the log's bound (checked when the live part starts) decides whether the
        // client kept up.
        let chunk_len = SNAPSHOT_CHUNK.min(self.tx.max_capacity());
        let mut chunk: Vec<pb::WatchEvent> = Vec::with_capacity(chunk_len);
        for logged in snapshot_objects(&model) {
            if let Some(event) = change_event(&logged, &self.filter, self.secrets) {
                chunk.push(pb::WatchEvent {
                    revision,
                    end_of_revision: false,
                    history: String::new(),
                    event: Some(event),
                });
                if chunk.len() == chunk_len {
                    self.queue_chunk(&mut chunk).await?;
                }
            }
        }
        self.queue_chunk(&mut chunk).await?;
        let end = control(
            revision,
            &self.history,
            pb::watch_event::Event::SnapshotEnd(pb::SnapshotEnd {}),
        );
        self.tx.send(Ok(end)).await.ok()?;
        Some(revision + 1)
    }

    /// Queues the events of `chunk` (emptying it), waiting for room for all of them at once.
    async fn queue_chunk(&self, chunk: &mut Vec<pb::WatchEvent>) -> Option<()> {
        if chunk.is_empty() {
            return Some(());
        }
        let n = chunk.len();
        let permits = self.tx.reserve_many(n).await.ok()?;
        for (permit, ev) in permits.zip(chunk.drain(..)) {
            permit.send(Ok(ev));
        }
        self.state
            .change_log()
            .stats
            .events_sent
            .fetch_add(n as u64, Ordering::Relaxed);
        Some(())
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
                    "key {}: no secret hash (the upstream key needs keys.read at ALL)",
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
