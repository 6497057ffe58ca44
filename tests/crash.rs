//! Crash safety of the embedded store with the real binary: writers issue writes against
//! `rolegate serve --data-dir`, the process is killed with SIGKILL at a random moment, restarted
//! on the same directory, and every acknowledged write must be there, no write half-present, and
//! revisions must continue. Repeated, alternating two kinds of writes:
//! - concurrent single-object writes (grouped into shared commits by the writer);
//! - multi-object writes (`Apply` adding a team and a user in one revision), which must be all
//!   or nothing.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{BOOTSTRAP, call, example_with_bootstrap, spawn_store};
use rand::Rng;
use rolegate::grpc::pb::{self, admin_client::AdminClient};
use tonic::transport::Channel;

async fn connect(addr: &str) -> AdminClient<Channel> {
    AdminClient::new(
        Channel::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
            .expect("connect"),
    )
}

/// Every user id (all pages) and the state's revision.
async fn users(admin: &mut AdminClient<Channel>) -> (BTreeSet<String>, u64) {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    let mut revision = 0;
    loop {
        let page = admin
            .list_users(call(
                BOOTSTRAP,
                pb::ListRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        revision = revision.max(page.revision);
        out.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            return (out, revision);
        }
        token = page.next_page_token;
    }
}

async fn teams(admin: &mut AdminClient<Channel>) -> BTreeSet<String> {
    admin
        .list_teams(call(
            BOOTSTRAP,
            pb::ListRequest {
                page_size: 1000,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .teams
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// Concurrent single-object writes; returns the acknowledged (id, revision) pairs.
async fn concurrent_writes(addr: &str, round: usize) -> Vec<(String, u64)> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut admin = connect(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let id = format!("r{round}-w{w}-{i}");
                let result = admin
                    .create_user(call(
                        BOOTSTRAP,
                        pb::UserRequest {
                            user: Some(pb::User {
                                id: id.clone(),
                                name: "crash".into(),
                                active: true,
                                teams: vec![],
                            }),
                        },
                    ))
                    .await;
                match result {
                    Ok(r) => acked.push((id, r.into_inner().revision)),
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

/// The document of step `n` of an Apply round: the example policy plus teams and users 0..=n.
fn document(round: usize, n: usize) -> String {
    let mut doc = example_with_bootstrap();
    let mut teams = String::new();
    let mut users = String::new();
    for i in 0..=n {
        teams.push_str(&format!("  - {{ id: a{round}-{i}, name: A }}\n"));
        users.push_str(&format!(
            "  - {{ id: b{round}-{i}, name: B, teams: [a{round}-{i}] }}\n"
        ));
    }
    doc = doc.replacen("\nteams:\n", &format!("\nteams:\n{teams}"), 1);
    doc.replacen("\nusers:\n", &format!("\nusers:\n{users}"), 1)
}

/// Sequential multi-object writes; returns the last acknowledged step and its revision.
async fn apply_writes(addr: &str, round: usize) -> Option<(usize, u64)> {
    let mut admin = connect(addr).await;
    let mut last = None;
    for n in 0.. {
        let result = admin
            .apply(call(
                BOOTSTRAP,
                pb::ApplyRequest {
                    document: document(round, n),
                    dry_run: false,
                    prune: true,
                    name: String::new(),
                },
            ))
            .await;
        match result {
            Ok(r) => last = Some((n, r.into_inner().revision)),
            Err(_) => return last,
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = rand::rng();
    let mut max_acked_revision = 0;
    const ROUNDS: usize = 20;
    let mut total_acked = 0;

    for round in 0..ROUNDS {
        let (mut child, addr) = spawn_store(&data, &[]);
        let kill_after = Duration::from_millis(rng.random_range(50..400));
        let apply_round = round % 2 == 1;
        let writer = {
            let addr = addr.clone();
            tokio::spawn(async move {
                if apply_round {
                    (Vec::new(), apply_writes(&addr, round).await)
                } else {
                    (concurrent_writes(&addr, round).await, None)
                }
            })
        };
        tokio::time::sleep(kill_after).await;
        child.kill().expect("SIGKILL"); // std's kill sends SIGKILL on Unix
        let _ = child.wait();
        let (acked, applied) = writer.await.unwrap();

        // Restart on the same directory and verify.
        let (mut child, addr) = spawn_store(&data, &[]);
        let mut admin = connect(&addr).await;
        let (present, revision) = users(&mut admin).await;
        let present_teams = teams(&mut admin).await;
        for (_, rev) in &acked {
            max_acked_revision = max_acked_revision.max(*rev);
        }
        total_acked += acked.len();
        if !apply_round {
            // Apply rounds replace the whole state, so each concurrent round checks its own.
            for (id, _) in &acked {
                assert!(
                    present.contains(id),
                    "round {round}: acknowledged {id} is missing"
                );
            }
        } else {
            // All or nothing: team a{round}-i and user b{round}-i exist for the same i, and
            // every acknowledged step is there.
            let steps = |prefix: &str, set: &BTreeSet<String>| -> BTreeSet<usize> {
                set.iter()
                    .filter_map(|s| s.strip_prefix(&format!("{prefix}{round}-"))?.parse().ok())
                    .collect()
            };
            let team_steps = steps("a", &present_teams);
            let user_steps = steps("b", &present);
            assert_eq!(
                team_steps, user_steps,
                "round {round}: a half-applied document"
            );
            let expect_upto = team_steps.iter().max().copied();
            if let Some((n, rev)) = applied {
                max_acked_revision = max_acked_revision.max(rev);
                total_acked += n + 1;
                assert!(
                    expect_upto.is_some_and(|k| k >= n),
                    "round {round}: acknowledged step {n} lost (have {team_steps:?})"
                );
            }
            // The steps present are exactly 0..=k: each document contains all the previous.
            if let Some(k) = expect_upto {
                assert_eq!(team_steps, (0..=k).collect(), "round {round}");
            }
        }
        eprintln!(
            "round {round}: killed after {kill_after:?}; {} acknowledged concurrent writes, last acknowledged Apply step {:?}; revision {revision} after restart",
            acked.len(),
            applied
        );
        assert!(
            revision >= max_acked_revision,
            "round {round}: revision {revision} is behind an acknowledged {max_acked_revision}"
        );
        // Revisions continue after the restart.
        let next = admin
            .create_team(call(
                BOOTSTRAP,
                pb::TeamRequest {
                    team: Some(pb::Team {
                        id: format!("after-{round}"),
                        name: "after".into(),
                        active: true,
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.team.unwrap().id, format!("after-{round}"));
        let (_, after) = users(&mut admin).await;
        assert_eq!(
            after,
            revision + 1,
            "round {round}: the next write takes the next revision"
        );
        max_acked_revision = after;
        child.kill().unwrap();
        let _ = child.wait();
    }
    assert!(
        total_acked > ROUNDS,
        "the writers made progress before the kills ({total_acked} acknowledged writes)"
    );
}

/// Runs `rolegate serve --data-dir dir` (no bootstrap hash given: a new store would print a
/// generated key) until it exits; panics if it is still running after a minute.
fn serve_until_exit(dir: &std::path::Path) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rolegate");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("rolegate kept running on a damaged store");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

#[tokio::test]
async fn a_damaged_store_file_stops_serve_with_exit_2_and_no_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = data.join("rolegate.redb");

    // A real store with some writes in it, stopped.
    let (mut child, addr) = spawn_store(&data, &[]);
    let mut admin = connect(&addr).await;
    for i in 0..5 {
        admin
            .create_team(call(
                BOOTSTRAP,
                pb::TeamRequest {
                    team: Some(pb::Team {
                        id: format!("team-{i}"),
                        name: "T".into(),
                        active: true,
                    }),
                },
            ))
            .await
            .unwrap();
    }
    child.kill().unwrap();
    let _ = child.wait();
    let whole = std::fs::read(&file).unwrap();

    let mut garbage = vec![0u8; whole.len()];
    rand::rng().fill(&mut garbage[..]);
    let cases: [(&str, &[u8]); 3] = [
        ("0 bytes", b""),
        ("truncated", &whole[..whole.len() / 2]),
        ("garbage", &garbage),
    ];
    for (what, bytes) in cases {
        std::fs::write(&file, bytes).unwrap();
        let (code, stdout, stderr) = serve_until_exit(&data);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string())
                && stderr.contains("damaged")
                && stderr.contains("restore the file from a backup"),
            "{what}: the message names the file and what to do: {stderr}"
        );
        assert!(
            !stdout.contains("bootstrap") && !stderr.contains("bootstrap SYSTEM_OWNER"),
            "{what}: no new bootstrap key: {stdout}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bytes,
            "{what}: the file is left as it was"
        );
    }
    // A file without read permission: meaningless when running as root, who reads it anyway.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&file, &whole).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::File::open(&file).is_err() {
            let (code, _, stderr) = serve_until_exit(&data);
            assert_eq!(code, Some(2), "{stderr}");
            assert!(
                stderr.contains(&file.display().to_string()) && stderr.contains("permissions"),
                "{stderr}"
            );
        } else {
            eprintln!("(the unreadable-file case is skipped: this user reads any file)");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // The file restored: it serves its data again.
    std::fs::write(&file, &whole).unwrap();
    let (mut child, addr) = spawn_store(&data, &[]);
    let mut admin = connect(&addr).await;
    let teams = teams(&mut admin).await;
    assert!(teams.contains("team-4"), "{teams:?}");
    child.kill().unwrap();
    let _ = child.wait();
}
