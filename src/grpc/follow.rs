//! The follower's side of the wire: opens the hub's `WatchBatched` stream and turns its events
//! into the domain-level [`FeedItem`]s that `origin::upstream` stages and applies.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tonic::{
    Code, Streaming,
    transport::{Channel, Endpoint},
};

use crate::{
    domain::model::Change,
    grpc::{
        pb::{self, authorizer_client::AuthorizerClient, watch_event::Event},
        watch::change_of,
    },
    origin::upstream::{Feed, FeedItem, Hub, Start, UpstreamError, UpstreamOrigin},
    state::State,
};

/// The largest message accepted from the hub (a batch of events is at most about 1 MiB plus one
/// event; a role with very many grants could be larger).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A rolegate hub reached over gRPC.
pub struct GrpcHub {
    url: String,
    endpoint: Endpoint,
    /// Presented to the hub for the secret hashes; never logged.
    key: String,
}

impl GrpcHub {
    /// A hub at `url` (`http://HOST:PORT` or `https://…`), asked for with `key`.
    pub fn new(url: &str, key: String) -> Result<Self, UpstreamError> {
        let bad = |message: String| UpstreamError::BadUrl {
            url: url.to_owned(),
            message,
        };
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(bad("it must start with http:// or https://".into()));
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            // A snapshot is a bulk transfer: large windows keep the hub sending while the
            // follower stages what it received.
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024));
        Ok(GrpcHub {
            url: url.to_owned(),
            endpoint,
            key,
        })
    }
}

/// A follower of the hub at `url` (what `serve --upstream` runs).
pub fn follower(
    url: &str,
    key: String,
    state: Arc<State>,
) -> Result<Arc<UpstreamOrigin<GrpcHub>>, UpstreamError> {
    Ok(UpstreamOrigin::new(GrpcHub::new(url, key)?, state))
}

impl Hub for GrpcHub {
    type Feed = GrpcFeed;

    fn address(&self) -> &str {
        &self.url
    }

    async fn open(&self, start: Start) -> Result<GrpcFeed, UpstreamError> {
        let channel: Channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let mut client = AuthorizerClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let (start_revision, snapshot, history) = match &start {
            Start::Snapshot => (0, true, String::new()),
            Start::Resume { from, history } => (*from, false, history.clone()),
        };
        let request = pb::WatchRequest {
            start_revision,
            snapshot,
            include_secret_hashes: true,
            api_key: self.key.clone(),
            history,
            bookmark_interval_ms: 1000,
            ..Default::default()
        };
        let stream = client
            .watch_batched(request)
            .await
            .map_err(|status| {
                if !snapshot && status.code() == Code::OutOfRange {
                    UpstreamError::HubBehind(status.message().to_owned())
                } else {
                    UpstreamError::Refused(format!("{}: {}", status.code(), status.message()))
                }
            })?
            .into_inner();
        let mut decoder = Decoder {
            stream,
            queued: VecDeque::new(),
            in_snapshot: snapshot,
        };
        // Decoding and converting run in a task of their own, ahead of the follower staging
        // and applying what it already has: a snapshot is received while it is staged.
        let (tx, items) = mpsc::channel(FEED_AHEAD);
        let task = tokio::spawn(async move {
            loop {
                let item = decoder.next().await;
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(GrpcFeed { items, task })
    }
}

/// Items decoded ahead of the follower.
const FEED_AHEAD: usize = 16;

/// One `WatchBatched` stream, decoded by a task of its own. Dropping the feed stops the task,
/// which drops the stream and closes the connection.
pub struct GrpcFeed {
    items: mpsc::Receiver<Result<FeedItem, UpstreamError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed for GrpcFeed {
    async fn next(&mut self) -> Result<FeedItem, UpstreamError> {
        self.items.recv().await.unwrap_or(Err(UpstreamError::Ended))
    }
}

/// Turns the events of one `WatchBatched` stream into feed items.
struct Decoder {
    stream: Streaming<pb::WatchEvents>,
    /// Events of the last message not yet turned into items.
    queued: VecDeque<pb::WatchEvent>,
    /// Data events are snapshot objects until the snapshot end.
    in_snapshot: bool,
}

impl Decoder {
    /// Refills `queued` from the next message.
    async fn receive(&mut self) -> Result<(), UpstreamError> {
        match self.stream.message().await {
            Ok(Some(batch)) => {
                self.queued.extend(batch.events);
                Ok(())
            }
            Ok(None) => Err(UpstreamError::Ended),
            Err(status) => Err(UpstreamError::Stream(format!(
                "{}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}

fn bad(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::BadEvent(e.to_string())
}

impl Decoder {
    /// Control events become items of their own; consecutive data events of the message in hand
    /// become one item (snapshot objects, or a part of one revision).
    async fn next(&mut self) -> Result<FeedItem, UpstreamError> {
        while self.queued.is_empty() {
            self.receive().await?;
        }
        let first = self.queued.pop_front().expect("not empty");
        match &first.event {
            Some(Event::Reset(reset)) => {
                return Ok(FeedItem::Reset {
                    reason: reset.reason.clone(),
                });
            }
            Some(Event::SnapshotEnd(_)) => {
                if !self.in_snapshot {
                    return Err(bad("a snapshot end without a snapshot"));
                }
                self.in_snapshot = false;
                return Ok(FeedItem::SnapshotEnd {
                    revision: first.revision,
                    history: first.history,
                });
            }
            Some(Event::Bookmark(_)) => {
                return Ok(FeedItem::Bookmark {
                    revision: first.revision,
                });
            }
            _ => {}
        }
        let revision = first.revision;
        let mut complete = first.end_of_revision;
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(change_of(&first).map_err(bad)?);
        // The rest of this revision (or of the snapshot) that is already here.
        while !complete || self.in_snapshot {
            let Some(ev) = self.queued.front() else { break };
            let control = matches!(
                ev.event,
                Some(Event::Reset(_) | Event::SnapshotEnd(_) | Event::Bookmark(_))
            );
            if control || ev.revision != revision {
                break;
            }
            let ev = self.queued.pop_front().expect("peeked");
            changes.extend(change_of(&ev).map_err(bad)?);
            complete = ev.end_of_revision;
        }
        Ok(if self.in_snapshot {
            FeedItem::SnapshotPart(changes)
        } else {
            FeedItem::Changes {
                revision,
                changes,
                complete,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_url_must_be_http() {
        assert!(matches!(
            GrpcHub::new("hub:50051", String::new()),
            Err(UpstreamError::BadUrl { .. })
        ));
        assert!(GrpcHub::new("http://127.0.0.1:1", String::new()).is_ok());
    }
}
