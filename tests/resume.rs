//! Watch across restarts of the real binary on `serve --data-dir`: a subscriber whose stream
//! ended with the process (SIGKILL or SIGTERM) resumes from its last revision + 1 on the
//! restarted process and gets exactly the events a subscriber that never disconnected gets — no
//! gap, no duplicate, the same history id — while a resume from before the kept history is
//! reset.

mod common;

use std::{
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{BOOTSTRAP, call, seed_example, spawn_store};
use rolegate::grpc::pb::{
    self, admin_client::AdminClient, authorizer_client::AuthorizerClient, watch_event::Event,
};
use tonic::transport::Channel;

fn sigkill(mut child: Child) {
    child.kill().expect("SIGKILL"); // std's kill sends SIGKILL on Unix
    let _ = child.wait();
}

fn sigterm(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    let exit = child.wait().expect("wait for rolegate");
    assert!(exit.success(), "a SIGTERM'd server exits cleanly: {exit:?}");
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// One Watch stream recording every event and how the stream ended.
struct Watcher {
    events: Arc<Mutex<Vec<pb::WatchEvent>>>,
    ended: Arc<Mutex<Option<Result<(), tonic::Status>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(addr: &str, req: pb::WatchRequest) -> Watcher {
        let mut client = AuthorizerClient::new(channel(addr).await);
        let mut stream = client
            .watch(call(BOOTSTRAP, req))
            .await
            .expect("watch")
            .into_inner();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let task = {
            let (events, ended) = (events.clone(), ended.clone());
            tokio::spawn(async move {
                let end = loop {
                    match stream.message().await {
                        Ok(Some(ev)) => events.lock().unwrap().push(ev),
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                };
                *ended.lock().unwrap() = Some(end);
            })
        };
        Watcher {
            events,
            ended,
            task,
        }
    }

    fn all(&self) -> Vec<pb::WatchEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The data events (bookmarks left out; resets and snapshot ends kept, so that they fail
    /// the comparisons).
    fn data(&self) -> Vec<pb::WatchEvent> {
        self.all()
            .into_iter()
            .filter(|e| !matches!(e.event, Some(Event::Bookmark(_))))
            .collect()
    }

    /// Waits until revision `rev` has been received whole (bounded, so a broken server fails
    /// the test instead of hanging it).
    async fn wait_for(&self, rev: u64) {
        for _ in 0..2000 {
            if self
                .all()
                .iter()
                .any(|e| e.revision >= rev && e.end_of_revision)
            {
                return;
            }
            if self.ended.lock().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "revision {rev} never arrived; got {:#?}, ended {:?}",
            self.all(),
            self.ended.lock().unwrap()
        );
    }

    /// Waits for the stream to end (the server went away) and returns how it ended.
    async fn ended(self) -> (Vec<pb::WatchEvent>, Result<(), tonic::Status>) {
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the stream ends when its server dies")
            .unwrap();
        let end = self.ended.lock().unwrap().take().unwrap();
        let events = self.events.lock().unwrap().clone();
        (events, end)
    }

    /// The history id the server announced (on a bookmark or reset).
    async fn history(&self) -> String {
        for _ in 0..2000 {
            if let Some(h) = self
                .all()
                .iter()
                .find(|e| !e.history.is_empty())
                .map(|e| e.history.clone())
            {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no bookmark announced the history");
    }
}

/// A replay from `start_revision` of the history `history` (empty: any), with bookmarks (which
/// announce the history id). Sent with the bootstrap SYSTEM_OWNER key (Watch needs the reads at
/// ALL scope).
fn req(start_revision: u64, history: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        start_revision,
        history: history.to_owned(),
        bookmark_interval_ms: 20,
        ..Default::default()
    }
}

fn data_of(events: Vec<pb::WatchEvent>) -> Vec<pb::WatchEvent> {
    events
        .into_iter()
        .filter(|e| !matches!(e.event, Some(Event::Bookmark(_))))
        .collect()
}

/// Asserts that `events` are the revisions `first..=last`, each whole (its events together, the
/// last one marked), none twice, none missing, and no control event among them.
fn assert_contiguous(events: &[pb::WatchEvent], first: u64, last: u64) {
    let mut expect = first;
    let mut open = false;
    for (i, e) in events.iter().enumerate() {
        assert!(
            !matches!(
                e.event,
                Some(Event::Reset(_) | Event::SnapshotEnd(_) | Event::Bookmark(_)) | None
            ),
            "event {i} is not a data event: {e:?}"
        );
        if open {
            assert_eq!(e.revision, expect - 1, "event {i}: a revision was split");
        } else {
            assert_eq!(e.revision, expect, "event {i}: a gap or a duplicate");
            expect += 1;
        }
        open = !e.end_of_revision;
    }
    assert!(!open, "the last revision was not closed");
    assert_eq!(expect, last + 1, "revisions {first}..={last} all present");
}

/// Writes of every kind Watch reports: a team, a user, a key, the key's roles (its holder's
/// grants), its status. Returns the last revision.
async fn writes(admin: &mut AdminClient<Channel>, tag: &str) -> u64 {
    let team = format!("{tag}-team");
    let user = format!("{tag}-user");
    admin
        .create_team(call(
            BOOTSTRAP,
            pb::TeamRequest {
                team: Some(pb::Team {
                    id: team.clone(),
                    name: tag.into(),
                    active: true,
                }),
            },
        ))
        .await
        .unwrap();
    admin
        .create_user(call(
            BOOTSTRAP,
            pb::UserRequest {
                user: Some(pb::User {
                    id: user.clone(),
                    name: tag.into(),
                    active: true,
                    teams: vec![team.clone()],
                }),
            },
        ))
        .await
        .unwrap();
    let key = admin
        .create_key(call(
            BOOTSTRAP,
            pb::CreateKeyRequest {
                key_type: pb::KeyType::Team as i32,
                user,
                team,
                roles: vec!["DEVELOPER".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: key.prefix.clone(),
                replace_roles: true,
                roles: vec!["ACCOUNT_ADMIN".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: key.prefix,
                status: Some("inactive".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// The revision the server is at, without writing.
async fn revision(admin: &mut AdminClient<Channel>) -> u64 {
    admin
        .list_teams(call(
            BOOTSTRAP,
            pb::ListRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumes_across_sigkill_and_sigterm_restarts_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // ---- process 1: writes under two watchers, one of which disconnects early; then SIGKILL.
    let (p1, addr) = spawn_store(&data, &[]);
    let mut admin = AdminClient::new(channel(&addr).await);
    let all1 = Watcher::start(&addr, req(1, "")).await;
    let early = Watcher::start(&addr, req(1, "")).await;
    let seeded = seed_example(&mut admin).await;
    assert_eq!(seeded, 2, "revision 1 is the bootstrap");
    let early_head = writes(&mut admin, "a").await;
    early.wait_for(early_head).await;
    early.task.abort();
    let early_events = data_of(early.events.lock().unwrap().clone());
    let head1 = writes(&mut admin, "b").await;
    all1.wait_for(head1).await;
    let history = all1.history().await;
    assert_eq!(history.len(), 16, "{history}");
    sigkill(p1);
    let (events1, end1) = all1.ended().await;
    assert!(end1.is_err(), "the stream broke with the process: {end1:?}");
    let seen1 = data_of(events1);
    assert_contiguous(&seen1, 1, head1);
    assert_contiguous(&early_events, 1, early_head);

    // ---- process 2: the restart adds no revision; writes made while nobody watched are
    // replayed to the resumed streams, which continue with the same history.
    let (p2, addr) = spawn_store(&data, &[]);
    let mut admin = AdminClient::new(channel(&addr).await);
    assert_eq!(
        revision(&mut admin).await,
        head1,
        "loading the store is not a revision"
    );
    let missed = writes(&mut admin, "c").await;
    assert_eq!(missed, head1 + 5, "revisions continue");
    let resumed2 = Watcher::start(&addr, req(head1 + 1, &history)).await;
    let early2 = Watcher::start(&addr, req(early_head + 1, &history)).await;
    let reference2 = Watcher::start(&addr, req(1, "")).await;
    let head2 = writes(&mut admin, "d").await;
    for w in [&resumed2, &early2, &reference2] {
        w.wait_for(head2).await;
    }
    assert_eq!(
        resumed2.history().await,
        history,
        "the store's history id survives the restart"
    );
    let reference = reference2.data();
    assert_contiguous(&reference, 1, head2);
    let mut joined = seen1.clone();
    joined.extend(resumed2.data());
    assert_eq!(
        joined, reference,
        "events before the SIGKILL + after the resume = a never-disconnected subscriber's"
    );
    let mut joined_early = early_events.clone();
    joined_early.extend(early2.data());
    assert_eq!(
        joined_early, reference,
        "a resume from a revision logged before the SIGKILL replays it as first sent"
    );
    reference2.task.abort();
    early2.task.abort();

    // ---- a clean restart: the stream ends with Unavailable and resumes on process 3.
    sigterm(p2);
    let (events2, end2) = resumed2.ended().await;
    let status = end2.expect_err("a shutdown ends the stream with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let seen2 = data_of(events2);
    let last2 = seen2.last().unwrap().revision;
    assert_eq!(last2, head2);

    let (p3, addr) = spawn_store(&data, &[]);
    let mut admin = AdminClient::new(channel(&addr).await);
    assert_eq!(revision(&mut admin).await, head2);
    let resumed3 = Watcher::start(&addr, req(last2 + 1, &history)).await;
    let reference3 = Watcher::start(&addr, req(1, "")).await;
    let head3 = writes(&mut admin, "e").await;
    resumed3.wait_for(head3).await;
    reference3.wait_for(head3).await;
    let reference = reference3.data();
    assert_contiguous(&reference, 1, head3);
    let mut joined = seen1;
    joined.extend(seen2);
    joined.extend(resumed3.data());
    assert_eq!(
        joined, reference,
        "three processes' streams joined = one never-disconnected subscriber's"
    );
    sigkill(p3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_from_before_the_kept_history_is_reset_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keep = ["--watch-log-revisions", "4"];
    let (p1, addr) = spawn_store(&data, &keep);
    let mut admin = AdminClient::new(channel(&addr).await);
    seed_example(&mut admin).await;
    let head = writes(&mut admin, "a").await;
    assert_eq!(head, 7);
    let tail = Watcher::start(&addr, req(head - 3, "")).await;
    tail.wait_for(head).await;
    let history = tail.history().await;
    let before = tail.data();
    sigkill(p1);

    let (p2, addr) = spawn_store(&data, &keep);
    // The oldest kept revision replays exactly as before the crash.
    let kept = Watcher::start(&addr, req(head - 3, &history)).await;
    kept.wait_for(head).await;
    assert_contiguous(&kept.data(), head - 3, head);
    assert_eq!(kept.data(), before);
    // One older: no longer kept, so a reset naming the oldest kept revision.
    let mut client = AuthorizerClient::new(channel(&addr).await);
    for (from, hist) in [
        (head - 4, history.as_str()),
        (1, ""),
        (head, "0123456789abcdef"),
    ] {
        let mut stream = client
            .watch(call(BOOTSTRAP, req(from, hist)))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an answer")
            .unwrap()
            .expect("an event");
        let Some(Event::Reset(reset)) = first.event else {
            panic!("from {from} (history {hist:?}): expected a reset, got {first:?}");
        };
        assert_eq!(reset.oldest_kept, head - 3, "{reset:?}");
        assert_eq!(first.history, history);
        assert!(stream.message().await.unwrap().is_none(), "the stream ends");
    }
    sigkill(p2);
}

/// Keys created for one user by 4 concurrent clients until the server dies (each key changes the
/// user's grants, so every revision also has a `grants_changed` event).
async fn key_writers(addr: &str) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut admin = AdminClient::new(channel(addr).await);
        tasks.push(tokio::spawn(async move {
            let mut acked = 0;
            loop {
                let created = admin
                    .create_key(call(
                        BOOTSTRAP,
                        pb::CreateKeyRequest {
                            key_type: pb::KeyType::Team as i32,
                            user: "crasher".into(),
                            team: "crash".into(),
                            ..Default::default()
                        },
                    ))
                    .await;
                match created {
                    Ok(_) => acked += 1,
                    Err(_) => return acked,
                }
            }
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    acked
}

/// The events up to the last whole revision (a stream cut mid-revision drops the partial one
/// and resumes from it).
fn whole_revisions(mut events: Vec<pb::WatchEvent>) -> Vec<pb::WatchEvent> {
    let keep = events
        .iter()
        .rposition(|e| e.end_of_revision)
        .map_or(0, |i| i + 1);
    events.truncate(keep);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumes_across_sigkill_at_random_points_under_concurrent_writes() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = rand::rng();
    let mut joined: Vec<pb::WatchEvent> = Vec::new();
    let mut history = String::new();
    let mut acked_total = 0;
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let (child, addr) = spawn_store(&data, &[]);
        if round == 0 {
            let mut admin = AdminClient::new(channel(&addr).await);
            writes(&mut admin, "crash").await;
            for (id, team) in [("crash", ""), ("crasher", "crash")] {
                if team.is_empty() {
                    admin
                        .create_team(call(
                            BOOTSTRAP,
                            pb::TeamRequest {
                                team: Some(pb::Team {
                                    id: id.into(),
                                    name: id.into(),
                                    active: true,
                                }),
                            },
                        ))
                        .await
                        .unwrap();
                } else {
                    admin
                        .create_user(call(
                            BOOTSTRAP,
                            pb::UserRequest {
                                user: Some(pb::User {
                                    id: id.into(),
                                    name: id.into(),
                                    active: true,
                                    teams: vec![team.into()],
                                }),
                            },
                        ))
                        .await
                        .unwrap();
                }
            }
        }
        // Resume from the last whole revision received, with the history seen so far. Revisions
        // committed but not yet sent when the process died come from the rebuilt log.
        let from = joined.last().map_or(1, |e| e.revision + 1);
        let head = revision(&mut AdminClient::new(channel(&addr).await)).await;
        let missed = (head + 1).saturating_sub(from);
        let watcher = Watcher::start(&addr, req(from, &history)).await;
        if history.is_empty() {
            history = watcher.history().await;
        }
        let writer = {
            let addr = addr.clone();
            tokio::spawn(async move { key_writers(&addr).await })
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        sigkill(child);
        acked_total += writer.await.unwrap();
        let (events, end) = watcher.ended().await;
        assert!(end.is_err(), "round {round}: the stream broke: {end:?}");
        let got = whole_revisions(data_of(events));
        assert!(
            got.first().is_none_or(|e| e.revision == from),
            "round {round}: the resume started at {from}: {:?}",
            got.first()
        );
        joined.extend(got);
        eprintln!(
            "round {round}: resumed from {from} ({missed} revisions committed but not yet \
             received), now at revision {}",
            joined.last().map_or(0, |e| e.revision)
        );
    }

    // A last process: resume once more, and compare with a subscriber that never disconnected.
    let (child, addr) = spawn_store(&data, &[]);
    let mut admin = AdminClient::new(channel(&addr).await);
    let head = revision(&mut admin).await;
    let from = joined.last().map_or(1, |e| e.revision + 1);
    let resumed = Watcher::start(&addr, req(from, &history)).await;
    let reference = Watcher::start(&addr, req(1, "")).await;
    resumed.wait_for(head).await;
    reference.wait_for(head).await;
    joined.extend(resumed.data());
    let reference = reference.data();
    assert_contiguous(&reference, 1, head);
    assert_eq!(joined.len(), reference.len());
    for (i, (got, want)) in joined.iter().zip(&reference).enumerate() {
        assert_eq!(got, want, "event {i}");
    }
    let grants = reference
        .iter()
        .filter(|e| matches!(&e.event, Some(Event::GrantsChanged(g)) if g.user_id == "crasher"))
        .count();
    assert!(
        acked_total > ROUNDS && grants >= acked_total,
        "the writers made progress ({acked_total} acknowledged keys, {grants} grants events)"
    );
    sigkill(child);
}
