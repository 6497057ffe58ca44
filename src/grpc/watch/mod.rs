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

pub(crate) use crate::domain::Interner;

mod access;
mod decode;
mod events;
mod subscriber;

use access::*;
pub use decode::{BadEvent, change_of, change_of_interned};
use events::*;
use subscriber::*;

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
pub(crate) const SNAPSHOT_QUEUE: usize = 64;

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

/// The most events [`BatchedStream`] packs into one message.
const BATCH_EVENTS: usize = 1024;
/// About the most bytes [`BatchedStream`] packs into one message (one event may pass it).
const BATCH_BYTES: usize = 1 << 20;

impl WatchStream {
    /// The same stream, with the events already queued packed into one message each time.
    pub(crate) fn batched(self) -> BatchedStream {
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

/// Starts a Watch: authenticates the caller, validates the request, takes a subscriber's place,
/// then hands the stream to its task.
pub(crate) fn start(
    state: Arc<State>,
    metadata: &MetadataMap,
    req: pb::WatchRequest,
) -> Result<WatchStream, Status> {
    let head = state.revision();
    if !state.is_loaded() {
        return Err(Unanswerable::NotReady.into());
    }
    let credential = admit(&state, metadata, &req, head)?;
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
    let (tx, rx) = mpsc::channel(log.limits().subscriber_buffer.max(1));
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
    let (start, snapshot) = if !req.snapshot && !req.history.is_empty() && *req.history != *history
    {
        log.stats.start_resets.fetch_add(1, Ordering::Relaxed);
        let reason = format!(
            "the revisions asked for are of history {}; this instance serves history {history}",
            req.history
        );
        let reset = pb::watch_event::Event::Reset(pb::Reset {
            oldest_kept: log.oldest_kept(),
            reason,
        });
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(control(head, &history, reset)));
        (None, None)
    } else if req.snapshot {
        let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE);
        (Some(Start::Snapshot(tx)), Some(rx))
    } else if req.start_revision == 0 {
        (Some(Start::From(head + 1)), None)
    } else {
        (Some(Start::From(req.start_revision)), None)
    };
    if let Some(start) = start {
        tokio::spawn(task.run(start));
    }
    Ok(WatchStream {
        snapshot,
        rx,
        last,
        _slot: slot,
    })
}

/// The caller's credential, once its key may watch and the request is one this instance can
/// answer. The key is judged before anything else is said about the state (even its revision,
/// in a refusal).
fn admit(
    state: &State,
    metadata: &MetadataMap,
    req: &pb::WatchRequest,
    head: u64,
) -> Result<Credential, WatchRefused> {
    let key = presented_key(metadata, &req.api_key)
        .inspect_err(|refused| tracing::info!(key = "-", reason = %refused, "watch refused"))?;
    // Only a well-formed key's prefix is logged: a malformed one may be a bare secret.
    let prefix = ApiKey::parse(&key).map_or_else(|_| "-".to_owned(), |k| k.prefix.to_owned());
    let credential = Credential::establish(state, key, req.include_secret_hashes, unix_now())
        .map_err(WatchRefused::from)
        .inspect_err(|refused| tracing::info!(key = %prefix, reason = %refused, "watch refused"))?;
    if req.snapshot && req.start_revision != 0 {
        return Err(WatchRefused::SnapshotWithStart);
    }
    if req.start_revision > head + 1 {
        return Err(WatchRefused::FutureRevision {
            asked: req.start_revision,
            have: head,
        });
    }
    Ok(credential)
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
