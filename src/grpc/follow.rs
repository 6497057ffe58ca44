//! The follower's side of the wire: opens the hub's `WatchBatched` stream and turns its events
//! into the domain-level [`FeedItem`]s that `origin::upstream` stages and applies.

use std::{collections::VecDeque, time::Duration};

use tokio::sync::mpsc;
use tonic::{
    Code, Streaming,
    transport::{Channel, Endpoint},
};

use crate::{
    domain::model::Change,
    grpc::{
        pb::{self, authorizer_client::AuthorizerClient, watch_event::Event},
        watch::{Interner, change_of, change_of_interned},
    },
    origin::upstream::{BOOKMARK_INTERVAL, Feed, FeedItem, Hub, Start, UpstreamError},
    tls::client::ClientTls,
};

/// The largest message accepted from the hub (a batch of events is at most about 1 MiB plus one
/// event; a role with very many grants could be larger).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A rolegate hub reached over gRPC.
pub struct GrpcHub {
    url: String,
    /// TLS towards an `https://` hub; its files are read again at every connection, so that a
    /// rotated client certificate is used from the next one.
    tls: ClientTls,
    /// Presented to the hub as `authorization: ApiKey <key>` metadata: a key with the FOLLOWER
    /// role (the reads at ALL, and keys.replicate for the secret hashes). Never logged.
    key: String,
}

impl GrpcHub {
    /// A hub at `url` (`http://HOST:PORT`, or `https://…` for TLS with `tls`), asked for with
    /// `key`: how `serve --upstream` reaches its hub (the [`crate::origin::upstream::Dial`] given
    /// to [`crate::origin::start`]).
    pub fn new(url: &str, key: String, tls: ClientTls) -> Result<Self, UpstreamError> {
        let hub = GrpcHub {
            url: url.to_owned(),
            tls,
            key,
        };
        // The address and the TLS files are checked now, so that a mistake stops the start.
        hub.endpoint().map_err(|e| UpstreamError::BadUrl {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        Ok(hub)
    }

    fn endpoint(&self) -> Result<Endpoint, crate::tls::TlsError> {
        Ok(crate::tls::client::endpoint(&self.url, &self.tls)?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            // A snapshot is a bulk transfer: large windows keep the hub sending while the
            // follower stages what it received.
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024)))
    }
}

/// An error with its causes, `outer: inner: …`: a transport error alone does not say that the
/// hub refused the follower's certificate, or the follower the hub's.
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let more = err.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = err.source();
    }
    text
}

impl Hub for GrpcHub {
    type Feed = GrpcFeed;

    fn address(&self) -> &str {
        &self.url
    }

    async fn open(&self, start: Start) -> Result<GrpcFeed, UpstreamError> {
        let channel: Channel = self
            .endpoint()
            .map_err(|e| UpstreamError::Connect(e.to_string()))?
            .connect()
            .await
            .map_err(|e| UpstreamError::Connect(with_causes(&e)))?;
        let mut client = AuthorizerClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let (start_revision, snapshot, history) = match &start {
            Start::Snapshot => (0, true, String::new()),
            Start::Resume { from, history } => (*from, false, history.clone()),
        };
        let mut request = tonic::Request::new(pb::WatchRequest {
            start_revision,
            snapshot,
            include_secret_hashes: true,
            history,
            bookmark_interval_ms: BOOKMARK_INTERVAL.as_millis() as u32,
            ..Default::default()
        });
        // The key travels as the Admin API's does; a key that cannot be sent as metadata is
        // refused here rather than sent some other way.
        let authorization = format!("ApiKey {}", self.key).parse().map_err(|_| {
            UpstreamError::Refused("the upstream key has characters that cannot be sent".into())
        })?;
        request
            .metadata_mut()
            .insert("authorization", authorization);
        let stream = client
            .watch_batched(request)
            .await
            .map_err(|status| {
                if !snapshot && status.code() == Code::OutOfRange {
                    UpstreamError::HubBehind(status.message().to_owned())
                } else {
                    let causes = std::error::Error::source(&status)
                        .map(|cause| format!(" ({})", with_causes(cause)))
                        .unwrap_or_default();
                    let text = format!("{}: {}{causes}", status.code(), status.message());
                    match status.code() {
                        // The hub answered and said no: the key, not the network, is the problem.
                        Code::PermissionDenied | Code::Unauthenticated => {
                            UpstreamError::Refused(text)
                        }
                        _ => UpstreamError::Connect(text),
                    }
                }
            })?
            .into_inner();
        let mut decoder = Decoder {
            stream,
            queued: VecDeque::new(),
            in_snapshot: snapshot,
            interner: snapshot.then(Interner::default),
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
    /// Shares team and project ids and role lists among the objects of the snapshot (see
    /// [`Interner`]); dropped at its end, so that a long-lived feed does not keep every id it
    /// ever saw.
    interner: Option<Interner>,
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
    fn convert(&mut self, ev: &pb::WatchEvent) -> Result<Option<Change>, UpstreamError> {
        match &mut self.interner {
            Some(interner) => change_of_interned(ev, interner),
            None => change_of(ev),
        }
        .map_err(bad)
    }

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
                self.interner = None;
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
        changes.extend(self.convert(&first)?);
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
            changes.extend(self.convert(&ev)?);
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
    use std::sync::Arc;

    use super::*;
    use crate::domain::SecretHash;

    #[test]
    fn a_snapshot_shares_team_ids_and_role_lists_and_converts_to_the_same_changes() {
        use pb::watch_event::Event as E;
        let ev = |event| pb::WatchEvent {
            revision: 7,
            event: Some(event),
            ..Default::default()
        };
        let key = |prefix: &str, key_type: pb::KeyType, user: &str, project: &str| {
            ev(E::KeyUpserted(pb::KeyUpserted {
                prefix: prefix.into(),
                key_type: key_type as i32,
                user_id: user.into(),
                team_id: "acme".into(),
                project_id: project.into(),
                roles: if project.is_empty() {
                    vec!["AUDITOR".into(), "DEVELOPER".into()]
                } else {
                    vec!["SYSTEM_KEY".into()]
                },
                status: "active".into(),
                secret_sha256: SecretHash::of_secret(prefix).to_hex(),
                ..Default::default()
            }))
        };
        let events = [
            ev(E::TeamChanged(pb::TeamDefinition {
                id: "acme".into(),
                name: "Acme".into(),
                active: true,
            })),
            ev(E::UserChanged(pb::UserDefinition {
                id: "alice".into(),
                name: "Alice".into(),
                active: true,
                team_ids: vec!["acme".into()],
            })),
            ev(E::ProjectChanged(pb::ProjectDefinition {
                id: "fraud".into(),
                team_id: "acme".into(),
                name: "Fraud".into(),
            })),
            key("AliceKey01", pb::KeyType::Team, "alice", ""),
            key("AliceKey02", pb::KeyType::Team, "alice", ""),
            key("FraudKey01", pb::KeyType::Project, "", "fraud"),
        ];
        let mut interner = Interner::default();
        let shared: Vec<Change> = events
            .iter()
            .map(|e| change_of_interned(e, &mut interner).unwrap().unwrap())
            .collect();
        let plain: Vec<Change> = events
            .iter()
            .map(|e| change_of(e).unwrap().unwrap())
            .collect();
        assert_eq!(shared, plain, "sharing changes no value");
        let [
            Change::PutTeam(team),
            Change::PutUser(user),
            Change::PutProject(project),
            Change::PutKey(k1),
            Change::PutKey(k2),
            Change::PutKey(k3),
        ] = &shared[..]
        else {
            panic!("{shared:?}");
        };
        assert!(Arc::ptr_eq(&team.id, &user.teams[0]));
        assert!(Arc::ptr_eq(&team.id, &project.team));
        assert!(Arc::ptr_eq(&team.id, k1.team.as_ref().unwrap()));
        assert!(Arc::ptr_eq(&team.id, k2.team.as_ref().unwrap()));
        assert!(Arc::ptr_eq(&project.id, k3.project().unwrap()));
        assert!(Arc::ptr_eq(&k1.roles, &k2.roles));
        assert!(!Arc::ptr_eq(&k1.roles, &k3.roles));
        let [.., Change::PutKey(p1), Change::PutKey(p2), _] = &plain[..] else {
            panic!("{plain:?}");
        };
        assert!(
            !Arc::ptr_eq(&p1.roles, &p2.roles),
            "only the interner shares"
        );
    }

    #[test]
    fn a_hub_url_must_be_http() {
        let plain = ClientTls::default;
        assert!(matches!(
            GrpcHub::new("hub:50051", String::new(), plain()),
            Err(UpstreamError::BadUrl { .. })
        ));
        assert!(GrpcHub::new("http://127.0.0.1:1", String::new(), plain()).is_ok());
        assert!(GrpcHub::new("https://127.0.0.1:1", String::new(), plain()).is_ok());
        // TLS options on a plaintext URL would be silently ignored: refused.
        let with_ca = ClientTls {
            ca: Some("ca.pem".into()),
            ..plain()
        };
        assert!(matches!(
            GrpcHub::new("http://127.0.0.1:1", String::new(), with_ca),
            Err(UpstreamError::BadUrl { .. })
        ));
    }
}
