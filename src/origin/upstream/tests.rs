//! The follower's state machine against a scripted feed: backoff, staleness, and a snapshot that
//! breaks off before its end marker leaving the previous state in place. The wire is tested with
//! real processes in `tests/follow.rs`.

use std::collections::VecDeque;

use super::*;
use crate::domain::{
    Expiry, KeySpec, KeyStatus, KeyType, SecretHash, Team, TeamList, User, model::canonical_roles,
};

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

#[tokio::test(start_paused = true)]
async fn a_follower_is_stale_once_the_hub_is_silent_for_max_staleness() {
    use tokio::time::{Instant, advance};
    let view = FollowerView {
        status: Arc::new(Mutex::new(UpstreamStatus {
            hub: "http://hub:50051".into(),
            ..Default::default()
        })),
        max_staleness: Some(Duration::from_secs(3)),
    };
    // Never heard from: not stale (a follower without its first snapshot is not ready anyway).
    assert_eq!(view.stale_reason(Instant::now()), None);
    assert_eq!(view.stale_at(), None);
    let contact = Instant::now();
    view.status.lock().unwrap().last_contact = Some(contact);
    assert_eq!(view.stale_at(), Some(contact + Duration::from_secs(3)));
    advance(Duration::from_millis(2_999)).await;
    assert_eq!(view.stale_reason(Instant::now()), None);
    advance(Duration::from_millis(1)).await;
    let why = view
        .stale_reason(Instant::now())
        .expect("stale at the bound");
    assert_eq!(
        why,
        "no contact with the hub http://hub:50051 for 3s (more than --max-staleness 3s)"
    );
    view.status.lock().unwrap().last_error = Some("the hub refused the watch: x".into());
    advance(Duration::from_millis(1_500)).await;
    let why = view.stale_reason(Instant::now()).unwrap();
    assert!(
        why.ends_with(
            "for 4s 500ms (more than --max-staleness 3s); last error: the hub refused the watch: x"
        ),
        "{why}"
    );
    // Heard from again: fresh.
    view.status.lock().unwrap().last_contact = Some(Instant::now());
    assert_eq!(view.stale_reason(Instant::now()), None);
    // Without a bound, never stale.
    let unbounded = FollowerView {
        max_staleness: None,
        ..view.clone()
    };
    advance(Duration::from_secs(3_600)).await;
    assert_eq!(unbounded.stale_reason(Instant::now()), None);
    assert!(view.stale_reason(Instant::now()).is_some());
}

/// A hub whose sessions are scripted: open number `i` waits until the test lets `i` sessions
/// through, then takes the next script; a script's items are delivered in order, then the feed
/// breaks.
struct Scripted {
    sessions: Mutex<VecDeque<Vec<FeedItem>>>,
    opened: Mutex<Vec<Start>>,
    gate: tokio::sync::watch::Receiver<usize>,
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
        let n = {
            let mut opened = self.opened.lock().unwrap();
            opened.push(start);
            opened.len()
        };
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|g| *g >= n).await;
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
        Change::PutUser(Arc::new(User {
            id: "u".into(),
            name: "U".into(),
            active: true,
            teams: TeamList::default(),
        })),
    ];
    for prefix in keys {
        out.push(Change::PutKey(Arc::new(KeySpec {
            prefix: (*prefix).into(),
            secret_hash: SecretHash::of_secret("s"),
            key_type: KeyType::Team,
            owner: "u".into(),
            team: Some("acme".into()),
            roles: canonical_roles(["DEVELOPER"]),
            status: KeyStatus::Active,
            expires_at: Expiry::NEVER,
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

async fn until(status: &Arc<Mutex<UpstreamStatus>>, ok: impl Fn(&UpstreamStatus) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !ok(&status.lock().unwrap()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the follower got there");
}

#[tokio::test]
async fn a_snapshot_cut_off_or_invalid_leaves_the_previous_state() {
    let state = Arc::new(State::new());
    let end = |revision: u64| FeedItem::SnapshotEnd {
        revision,
        history: "h2".into(),
    };
    // A key of a user the snapshot does not hold.
    let mut invalid = world(&["NewKey01"]);
    invalid.remove(1);
    let (gate_tx, gate) = tokio::sync::watch::channel(1usize);
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
            // 2: part of the new snapshot, then the connection breaks.
            vec![FeedItem::SnapshotPart(world(&["NewKey01"]))],
            // 3: a whole snapshot that is not a valid state.
            vec![FeedItem::SnapshotPart(invalid), end(4)],
            // 4: the whole new snapshot.
            vec![
                FeedItem::SnapshotPart(world(&["NewKey01"])),
                FeedItem::SnapshotPart(world(&["NewKey02"])),
                end(5),
            ],
        ])),
        opened: Mutex::new(Vec::new()),
        gate,
    };
    let follower = UpstreamOrigin::new(hub, state.clone());
    let status = follower.view().status;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(follower.clone().follow(stop_rx));

    let mut revisions = state.subscribe_revision();
    revisions.wait_for(|r| *r == 3).await.unwrap();
    assert_eq!(keys_of(&state), ["OldKey01"]);

    gate_tx.send_replace(2);
    until(&status, |s| s.snapshots_abandoned == 1 && !s.connected).await;
    assert_eq!(
        (state.revision(), keys_of(&state)),
        (3, vec!["OldKey01".into()])
    );

    gate_tx.send_replace(3);
    until(&status, |s| s.snapshots_abandoned == 2 && !s.connected).await;
    {
        let s = status.lock().unwrap().clone();
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("not a valid state"),
            "{s:?}"
        );
        assert_eq!(s.snapshots, 1);
    }
    assert_eq!(
        (state.revision(), keys_of(&state)),
        (3, vec!["OldKey01".into()])
    );

    // The whole snapshot: the difference lands as one revision.
    gate_tx.send_replace(4);
    revisions.wait_for(|r| *r > 3).await.unwrap();
    assert_eq!(keys_of(&state), ["NewKey01", "NewKey02"]);
    assert_eq!(state.revision(), 5);
    until(&status, |s| s.snapshots == 2).await;
    let timing = status.lock().unwrap().last_snapshot.unwrap();
    assert_eq!(timing.objects, 6, "two parts of three objects");
    let opened = follower.hub().opened.lock().unwrap().clone();
    assert_eq!(opened, vec![Start::Snapshot; 4]);
    stop_tx.send_replace(true);
    task.await.unwrap();
}

/// A staged snapshot of `prefixes` keys; the keys at `dangling` name a user that does not exist.
fn staged(prefixes: &[&str], dangling: &[usize]) -> Staged {
    let mut changes = world(prefixes);
    for &i in dangling {
        let Change::PutKey(key) = &mut changes[2 + i] else {
            unreachable!("world() puts the keys after a team and a user")
        };
        let mut spec = (**key).clone();
        spec.owner = "nobody".into();
        *key = Arc::new(spec);
    }
    let mut stage = Staged::default();
    // In parts, as a feed delivers them.
    for part in changes.chunks(1000) {
        stage.add(part.to_vec());
    }
    stage
}

/// What checking everything in order on one thread answers.
fn checked_in_order(stage: &Staged) -> Option<String> {
    let mut problems = stage.model.validate();
    if problems.is_empty() {
        problems = stage
            .model
            .validate_keys(stage.changes.iter().filter_map(|c| match c {
                Change::PutKey(k) => Some(&**k),
                _ => None,
            }));
    }
    problems.first().map(ToString::to_string)
}

#[test]
fn a_large_snapshot_checked_on_several_threads_gets_the_answer_of_one_pass() {
    let n = 3 * PARALLEL_CHECK_FROM;
    let names: Vec<String> = (0..n).map(|i| format!("BulkKey{i:07}")).collect();
    let prefixes: Vec<&str> = names.iter().map(String::as_str).collect();

    let valid = staged(&prefixes, &[]);
    assert_eq!(valid.first_problem(), None);

    // Bad keys in several slices: the first received is the one reported, whichever thread
    // finishes first.
    for dangling in [vec![n - 1], vec![n - 1, n / 2], vec![n - 1, n / 2, 5]] {
        let stage = staged(&prefixes, &dangling);
        let first = *dangling.iter().min().unwrap();
        let problem = stage.first_problem().expect("a dangling user is found");
        assert!(
            problem.contains(&*names[first]) && problem.contains("nobody"),
            "{problem}"
        );
        assert_eq!(Some(problem), checked_in_order(&stage));
    }

    // A rule broken outside the keys comes first, as in one pass.
    let mut stage = staged(&prefixes, &[n / 2]);
    stage.add(vec![Change::PutUser(Arc::new(User {
        id: "v".into(),
        name: "V".into(),
        active: true,
        teams: ["nowhere".into()].into(),
    }))]);
    let problem = stage.first_problem().unwrap();
    assert!(problem.contains("team nowhere does not exist"), "{problem}");
    assert_eq!(Some(problem), checked_in_order(&stage));
}
