//! One stream's task: reads the change log from its position and feeds the client's queue.

use super::*;

/// Where a stream's task begins.
pub(super) enum Start {
    /// With a snapshot, queued on its own channel.
    Snapshot(mpsc::Sender<pb::WatchEvent>),
    /// From this revision of the log.
    From(u64),
}

/// What to do after trying to send.
pub(super) enum Flow {
    Go,
    Stop,
}

pub(super) struct Subscriber {
    pub(super) state: Arc<State>,
    pub(super) filter: Filter,
    pub(super) credential: Credential,
    pub(super) tx: mpsc::Sender<Item>,
    pub(super) last: Arc<Mutex<Option<Item>>>,
    pub(super) bookmark: Option<Duration>,
    pub(super) history: String,
    pub(super) revisions: tokio::sync::watch::Receiver<u64>,
    pub(super) closing: tokio::sync::watch::Receiver<bool>,
}

impl Subscriber {
    /// Serves the stream: the snapshot (if asked for), then the log from where it starts.
    pub(super) async fn run(mut self, start: Start) {
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
    pub(super) fn still_allowed(&mut self) -> bool {
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
    pub(super) fn shutting_down(&self) {
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
    pub(super) async fn snapshot(&mut self, tx: mpsc::Sender<pb::WatchEvent>) -> Option<u64> {
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
    pub(super) async fn queue_snapshot(
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
    pub(super) async fn send(&mut self, ev: pb::WatchEvent, after: u64) -> Flow {
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
    pub(super) fn reset(&self, at: u64, oldest_kept: u64, slow: bool) {
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
pub(super) fn instant_of(unix: i64) -> Option<tokio::time::Instant> {
    if unix == NEVER {
        return None;
    }
    let wait = u64::try_from(unix.saturating_sub(unix_now())).unwrap_or(0);
    Some(tokio::time::Instant::now() + Duration::from_secs(wait))
}

pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---- events back into changes (a follower) --------------------------------------------------
