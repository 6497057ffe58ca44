//! The follower's state machine against a scripted feed: backoff, staleness, and a snapshot that
//! breaks off before its end marker leaving the previous state in place. The wire is tested with
//! real processes in `tests/follow.rs`.

use std::collections::VecDeque;

use super::*;
use crate::domain::{KeySpec, KeyStatus, KeyType, SecretHash, Team, User, model::canonical_roles};

#[test]
fn backoff_grows_to_its_cap_with_jitter_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    let steps: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
    for (i, cap) in [100, 200, 400, 800, 800, 800].into_iter().enumerate() {
        let cap = Duration::from_millis(cap);
        assert!(
            steps[i] <= cap && steps[i] >= cap / 2,
            "step {i}: {:?}",
            steps[i]
        );
    }
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(100));
}

#[test]
fn staleness_is_measured_from_the_last_moment_in_sync() {
    let s = UpstreamStatus {
        last_event_unix_ms: Some(4_000),
        in_sync_unix_ms: Some(1_000),
        ..Default::default()
    };
    assert_eq!(s.at(4_500).staleness_ms, Some(3_500));
    assert_eq!(UpstreamStatus::default().at(9).staleness_ms, None);
}

/// A hub whose sessions are scripted: each `open` takes the next script; a script's items are
/// delivered in order, then the feed breaks.
struct Scripted {
    sessions: Mutex<VecDeque<Vec<FeedItem>>>,
    opened: Mutex<Vec<Start>>,
}

struct ScriptedFeed(VecDeque<FeedItem>);

impl Feed for ScriptedFeed {
    async fn next(&mut self) -> Result<FeedItem, UpstreamError> {
        self.0
            .pop_front()
            .ok_or_else(|| UpstreamError::Stream("connection reset by peer".into()))
    }
}

impl Hub for Scripted {
    type Feed = ScriptedFeed;
    fn address(&self) -> &str {
        "scripted"
    }
    async fn open(&self, start: Start) -> Result<ScriptedFeed, UpstreamError> {
        self.opened.lock().unwrap().push(start);
        match self.sessions.lock().unwrap().pop_front() {
            Some(items) => Ok(ScriptedFeed(items.into())),
            None => Err(UpstreamError::Connect("refused".into())),
        }
    }
}

fn world(keys: &[&str]) -> Vec<Change> {
    let mut out = vec![
        Change::PutTeam(Team {
            id: "acme".into(),
            name: "Acme".into(),
            active: true,
        }),
        Change::PutUser(User {
            id: "u".into(),
            name: "U".into(),
            active: true,
            teams: vec![],
        }),
    ];
    for prefix in keys {
        out.push(Change::PutKey(Arc::new(KeySpec {
            prefix: (*prefix).into(),
            secret_hash: SecretHash::of_secret("s"),
            key_type: KeyType::Team,
            user: Some("u".into()),
            team: Some("acme".into()),
            project: None,
            roles: canonical_roles(["DEVELOPER"]),
            status: KeyStatus::Active,
            expires_at: None,
        })));
    }
    out
}

fn keys_of(state: &State) -> Vec<String> {
    let mut keys: Vec<String> =
        state.read_model(|m| m.keys.keys().map(|k| k.to_string()).collect());
    keys.sort();
    keys
}

#[tokio::test]
async fn a_snapshot_cut_off_before_its_end_leaves_the_previous_state() {
    let state = Arc::new(State::new());
    let full = |keys: &[&str], revision: u64| {
        vec![
            FeedItem::SnapshotPart(world(keys)),
            FeedItem::SnapshotEnd {
                revision,
                history: "h2".into(),
            },
        ]
    };
    let hub = Scripted {
        sessions: Mutex::new(VecDeque::from([
            // 1: the first snapshot, then a reset (the hub restarted under a new history).
            vec![
                FeedItem::SnapshotPart(world(&["OldKey01"])),
                FeedItem::SnapshotEnd {
                    revision: 3,
                    history: "h1".into(),
                },
                FeedItem::Reset {
                    reason: "another history".into(),
                },
            ],
            // 2: half of the new snapshot, then the connection breaks.
            vec![FeedItem::SnapshotPart(world(&["NewKey01"]))],
            // 3: the whole new snapshot.
            full(&["NewKey01", "NewKey02"], 5),
        ])),
        opened: Mutex::new(Vec::new()),
    };
    let follower = UpstreamOrigin::new(hub, state.clone());
    let status = follower.status();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(follower.clone().run(stop_rx));

    let mut revisions = state.subscribe_revision();
    revisions.wait_for(|r| *r == 3).await.unwrap();
    assert_eq!(keys_of(&state), ["OldKey01"]);
    // After session 2 broke off, the state is still the first snapshot.
    tokio::time::timeout(Duration::from_secs(60), async {
        while status.lock().unwrap().snapshots_abandoned == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the partial snapshot was abandoned");
    {
        let s = status.lock().unwrap().clone();
        assert!(!s.snapshot_in_progress && !s.connected, "{s:?}");
        assert_eq!(s.snapshots, 1);
    }
    assert_eq!(state.revision(), 3);
    assert_eq!(keys_of(&state), ["OldKey01"]);
    // Session 3 completes: the difference lands as one revision.
    revisions.wait_for(|r| *r > 3).await.unwrap();
    assert_eq!(keys_of(&state), ["NewKey01", "NewKey02"]);
    assert_eq!(state.revision(), 5);
    let opened = follower.hub.opened.lock().unwrap().clone();
    assert_eq!(opened, [Start::Snapshot, Start::Snapshot, Start::Snapshot]);
    stop_tx.send_replace(true);
    task.await.unwrap();
}
