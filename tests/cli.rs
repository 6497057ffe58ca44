//! The `rolegate` binary as a user runs it: serve, check, validate, keys; SIGTERM drains and
//! exits 0; no secret reaches the logs; `--help` names every command group and its commands.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{keys, repo_path};

const BIN: &str = env!("CARGO_BIN_EXE_rolegate");

struct Serving {
    child: Child,
    grpc: String,
    http: std::net::SocketAddr,
}

fn serve(policy: &std::path::Path, extra_env: &[(&str, &str)]) -> Serving {
    let (g, h) = (common::free_port(), common::free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--policy"])
        .arg(policy)
        .env("ROLEGATE_GRPC_LISTEN", format!("127.0.0.1:{g}"))
        .env("ROLEGATE_HTTP_LISTEN", format!("127.0.0.1:{h}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    Serving {
        child,
        grpc: format!("http://127.0.0.1:{g}"),
        http: ([127, 0, 0, 1], h).into(),
    }
}

async fn wait_ready(s: &Serving) {
    common::wait_until_ready(s.http, Duration::from_secs(10)).await;
}

fn rolegate(args: &[&str]) -> (i32, String, String) {
    rolegate_env(args, &[])
}

/// `rolegate args` with `env` and none of the client variables the test runner may have set.
fn rolegate_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in ["ROLEGATE_ADDR", "ROLEGATE_API_KEY", "ROLEGATE_CHECK_KEY"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_check_and_sigterm() {
    let policy = repo_path("deploy/examples/policy.yaml");
    let mut s = serve(&policy, &[("ROLEGATE_LOG_FORMAT", "json")]);
    wait_ready(&s).await;

    let (code, out, _) = rolegate(&[
        "check",
        "--addr",
        &s.grpc,
        "--key",
        keys::DANA_SCIENTIST,
        "--entitlement",
        "jobs.cancel",
        "--team",
        "globex",
        "--owner-key",
        "GusDevKey00000000001",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed:  true") && out.contains("scope:    TEAM"),
        "{out}"
    );

    let (code, out, _) = rolegate(&[
        "check",
        "--addr",
        &s.grpc,
        "--key",
        keys::ARIA_AUDITOR,
        "--entitlement",
        "jobs.cancel",
        "--team",
        "acme",
        "--output",
        "json",
    ]);
    assert_eq!(code, 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["reason"], "NO_GRANT");
    assert_eq!(json["principal"]["user_id"], "aria");

    let (code, out, _) = rolegate(&[
        "check",
        "--addr",
        &s.grpc,
        "--key",
        keys::DEVIN_DEVELOPER,
        "--entitlement",
        "jobs.read",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("owner keys [DevinDevKey000000001, DevinOldKey000000001]"),
        "{out}"
    );

    // An error (bad request) is exit 2, not "denied".
    let (code, _, err) = rolegate(&[
        "check",
        "--addr",
        &s.grpc,
        "--key",
        keys::DEVIN_DEVELOPER,
        "--entitlement",
        "",
    ]);
    assert_eq!(code, 2, "{err}");

    // SIGTERM: drains and exits 0.
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    for line in BufReader::new(s.child.stderr.take().unwrap()).lines() {
        logs.push_str(&line.unwrap());
        logs.push('\n');
    }
    // JSON logs, with the decisions at debug level naming the key prefix only.
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(logs.contains("DanaScienceKey000001"), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
    for secret_part in [
        "dev-only-danascience",
        "dev-only-ariaauditke",
        "dev-only-devindevkey",
    ] {
        assert!(!logs.contains(secret_part), "a secret reached the logs");
    }
}

#[test]
fn a_bad_policy_stops_serve_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "teams:\n  - id: acme\n    bogus: 1\n").unwrap();
    let mut s = serve(&path, &[]);
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut s.child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("p.yaml:3:"), "{logs}");

    // An empty file is no policy: refused at start too.
    std::fs::write(&path, "\n  \n").unwrap();
    let mut s = serve(&path, &[]);
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut s.child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("p.yaml: the file is empty"), "{logs}");
}

#[test]
fn validate_reports_every_problem_with_its_location() {
    let (code, out, _) = rolegate(&[
        "validate",
        repo_path("deploy/examples/policy.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("ok (2 teams, 7 users, 2 projects, 11 keys"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let hash = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    std::fs::write(
        &path,
        format!(
            "teams:\n  - id: acme\nprojects:\n  - {{ id: p1, team: acme }}\nkeys:\n  - {{ prefix: ProjKey001, secret_sha256: {hash}, type: project, project: p1, roles: [DEVELOPER] }}\n  - {{ prefix: TeamKey001, secret_sha256: {hash}, type: team, user: ghost, team: acme, roles: [SYSTEM_KEY] }}\n"
        ),
    )
    .unwrap();
    let (code, _, err) = rolegate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("p.yaml:6:5: keys[0] (prefix ProjKey001): roles: role DEVELOPER is a user role and cannot be bound to a project key"), "{err}");
    assert!(
        err.contains(
            "p.yaml:7:5: keys[1] (prefix TeamKey001): roles: role SYSTEM_KEY is a system role"
        ),
        "{err}"
    );
    assert!(
        err.contains("p.yaml:7:5: keys[1] (prefix TeamKey001): user: user ghost does not exist"),
        "{err}"
    );
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn keys_new_and_hash_agree() {
    let (code, out, err) = rolegate(&["keys", "new", "--prefix", "MyNewKeyPrefix001"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let key = lines.next().unwrap();
    let hash_line = lines.next().unwrap();
    assert!(key.starts_with("MyNewKeyPrefix001."));
    assert!(hash_line.starts_with("secret_sha256: "));
    let (code, out, _) = rolegate(&["keys", "hash", key]);
    assert_eq!(code, 0);
    assert!(out.contains(hash_line), "{out}");
    assert!(out.contains("prefix: MyNewKeyPrefix001"));
    let (code, _, err) = rolegate(&["keys", "new", "--prefix", "no"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = rolegate(&["keys", "hash", "nodot"]);
    assert_eq!(code, 2);
}

/// `rolegate bench` with `args`, briefly (200 ms a round, 2 callers on 1 connection), against a
/// server on the example policy.
async fn short_bench(args: &[&str]) -> (i32, String, String) {
    let server = common::TestServer::policy(&common::example_policy()).await;
    // HOST:PORT, without a scheme: http://.
    let addr = server.grpc_addr.to_string();
    let all: Vec<String> = [
        "bench",
        "--addr",
        &addr,
        "--duration",
        "200ms",
        "--warmup",
        "0s",
    ]
    .into_iter()
    .chain(["--concurrency", "2", "--connections", "1"])
    .chain(["--key", keys::DANA_SCIENTIST])
    .chain(args.iter().copied())
    .map(String::from)
    .collect();
    tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        rolegate(&all)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rounds_without_baseline_report_each_round_and_the_median_rate() {
    let (code, out, err) = short_bench(&["--rounds", "2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    // The load line, one line per round, the median.
    assert_eq!(lines.len(), 4, "{out}");
    let rate = |line: &str, prefix: &str| -> f64 {
        let rest = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let r1 = rate(lines[1], "round 1/2  rolegate");
    let r2 = rate(lines[2], "round 2/2  rolegate");
    assert!(r1 > 0.0 && r2 > 0.0, "{out}");
    assert!(!out.contains("ratio"), "no baseline, no ratio: {out}");
    let median = rate(lines[3], "rolegate     median");
    // The median of two is their mean (each printed rounded to a whole request).
    assert!((median - (r1 + r2) / 2.0).abs() <= 1.0, "{out}");
    assert!(lines[3].ends_with("req/s of 2 rounds"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_baseline_measures_the_no_op_service_then_the_server_each_round() {
    let (code, out, err) = short_bench(&["--baseline", "--rounds", "2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    // The load line; per round the no-op, rolegate and their ratio; the median ratio.
    assert_eq!(lines.len(), 8, "{out}");
    for round in 1..=2 {
        let at = 1 + (round - 1) * 3;
        let prefix = format!("round {round}/2  ");
        assert!(
            lines[at].starts_with(&format!("{prefix}no-op tonic")),
            "{out}"
        );
        assert!(
            lines[at + 1].starts_with(&format!("{prefix}rolegate")),
            "{out}"
        );
        // Every check the example key makes of its own team is allowed, against the server.
        assert!(lines[at + 1].contains(" 0 errors"), "{out}");
        assert!(!lines[at + 1].contains(" 0 allowed"), "{out}");
        let ratio: f64 = lines[at + 2]
            .strip_prefix(&format!("{prefix}ratio"))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ratio in {:?}", lines[at + 2]));
        assert!(ratio > 0.0, "{out}");
    }
    assert!(
        lines[7].starts_with("ratio") && lines[7].contains("of 2 rounds"),
        "{out}"
    );
}

/// `check` judges the key of `--key` or `ROLEGATE_CHECK_KEY`, never the caller's key the Admin
/// commands read from `ROLEGATE_API_KEY`: exporting an admin key does not make `check` test it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_key_to_check_from_its_own_variable() {
    let server = common::TestServer::policy(&common::example_policy()).await;
    let addr = format!("http://{}", server.grpc_addr);
    let run = move |env: Vec<(&'static str, &'static str)>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let args = [
                "check",
                "--addr",
                &addr,
                "--entitlement",
                "jobs.cancel",
                "--team",
                "globex",
                "--owner-key",
                "GusDevKey00000000001",
            ];
            rolegate_env(&args, &env)
        })
    };
    // Only the admin key exported: no check, and the error names the variable to use.
    let (code, out, err) = run(vec![("ROLEGATE_API_KEY", keys::OLIVIA_OWNER)])
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("--key")
            && err.contains("ROLEGATE_CHECK_KEY")
            && err.contains("ROLEGATE_API_KEY"),
        "{err}"
    );
    // Both exported: the key checked is ROLEGATE_CHECK_KEY's.
    let (code, out, err) = run(vec![
        ("ROLEGATE_API_KEY", keys::OLIVIA_OWNER),
        ("ROLEGATE_CHECK_KEY", keys::DANA_SCIENTIST),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("key:      DanaScienceKey000001"), "{out}");
}

/// `bench` has no built-in key: without `--key` or `ROLEGATE_CHECK_KEY` it stops before any
/// load, saying what to give.
#[test]
fn bench_needs_a_key_to_check() {
    for mode in ["check", "ext-authz"] {
        let (code, out, err) = rolegate_env(
            &["bench", "--mode", mode, "--addr", "http://127.0.0.1:1"],
            &[("ROLEGATE_API_KEY", keys::OLIVIA_OWNER)],
        );
        assert_eq!(code, 2, "{out}{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("no key to check: give --key or set ROLEGATE_CHECK_KEY"),
            "{err}"
        );
    }
}

/// `--addr HOST:PORT`, without a scheme, means `http://HOST:PORT` for every command that takes
/// `--addr` (`bench` is covered by the bench tests, https by tests/tls.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_takes_host_and_port_without_a_scheme() {
    let server = common::TestServer::policy(&common::example_policy()).await;
    let addr = server.grpc_addr.to_string();
    assert!(!addr.contains("://"), "{addr}");
    let runs: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "check",
                "--key",
                keys::DANA_SCIENTIST,
                "--entitlement",
                "jobs.read",
            ],
            "allowed:  true",
        ),
        (
            vec![
                "watch",
                "--snapshot",
                "--count",
                "1",
                "--key",
                keys::OLIVIA_OWNER,
            ],
            " ",
        ),
        (vec!["teams", "list", "--key", keys::OLIVIA_OWNER], "globex"),
        (vec!["routes", "list", "--key", keys::OLIVIA_OWNER], "GET"),
    ];
    for (mut args, expected) in runs {
        args.extend(["--addr", &addr]);
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            rolegate(&args)
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains(expected), "{args:?}: {out}");
    }
}

#[test]
fn max_staleness_is_a_follower_setting_of_at_least_three_seconds() {
    let (code, _, err) = rolegate(&[
        "serve",
        "--upstream",
        "http://127.0.0.1:1",
        "--max-staleness",
        "1s",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--max-staleness") && err.contains("at least 3s"),
        "{err}"
    );
    for origin in [["--policy", "p.yaml"], ["--data-dir", "d"]] {
        let mut args = vec!["serve", "--max-staleness", "10s"];
        args.extend(origin);
        let (code, _, err) = rolegate(&args);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("'--max-staleness <MAX_STALENESS>' cannot be used with"),
            "{err}"
        );
    }
    let (code, _, err) = rolegate(&["serve", "--max-staleness", "10s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--upstream"), "{err}");
}

/// The commands `--help` lists (its `Commands:` section, without `help`), each with its help
/// line; panics when one has none.
fn listed_commands(help: &str) -> Vec<String> {
    let section = help
        .split("\nCommands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Commands section in:\n{help}"));
    section
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            assert!(words.next().is_some(), "{name} has no help line:\n{help}");
            (name != "help").then_some(name)
        })
        .collect()
}

/// `rolegate [GROUP] --help` for the binary and each command group: it succeeds and lists
/// exactly these commands, each with a help line.
const GROUPS: [(&str, &[&str]); 7] = [
    (
        "",
        &[
            "serve",
            "check",
            "validate",
            "keys",
            "bench",
            "roles",
            "teams",
            "users",
            "projects",
            "routes",
            "apply",
            "bench-writes",
            "watch",
            "test",
            "diff",
            "who-can",
            "history",
            "bench-etcd",
        ],
    ),
    (
        "keys",
        &[
            "new",
            "hash",
            "create",
            "list",
            "get",
            "update",
            "revoke",
            "replace-secret",
            "delete",
        ],
    ),
    (
        "roles",
        &["list", "create", "update", "delete", "add-entitlements"],
    ),
    ("teams", &["list", "get", "create", "update", "delete"]),
    ("users", &["list", "get", "create", "update", "delete"]),
    ("projects", &["list", "get", "create", "update", "delete"]),
    ("routes", &["list"]),
];

#[test]
fn help_names_every_command_group_and_its_commands() {
    for (group, expected) in GROUPS {
        let (args, usage) = match group {
            "" => (vec!["--help"], "Usage: rolegate <COMMAND>".to_owned()),
            _ => (
                vec![group, "--help"],
                format!("Usage: rolegate {group} <COMMAND>"),
            ),
        };
        let (code, out, err) = rolegate(&args);
        assert_eq!(code, 0, "rolegate {group} --help: {err}");
        assert!(out.contains(&usage), "{out}");
        assert_eq!(
            listed_commands(&out),
            expected,
            "rolegate {group} --help:\n{out}"
        );
    }
    // The commands without subcommands.
    for command in [
        "serve",
        "check",
        "validate",
        "bench",
        "apply",
        "bench-writes",
        "watch",
        "test",
        "diff",
        "who-can",
        "history",
        "bench-etcd",
    ] {
        let (code, out, err) = rolegate(&[command, "--help"]);
        assert_eq!(code, 0, "rolegate {command} --help: {err}");
        assert!(
            out.contains(&format!("Usage: rolegate {command} ")),
            "{out}"
        );
        assert!(
            out.contains("\nOptions:\n") && !out.contains("\nCommands:\n"),
            "{out}"
        );
    }
}

/// A client pointed at rolegate's HTTP port instead of its gRPC port is told so, with where gRPC
/// is; an error from the gRPC port itself carries no such hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_the_http_port_is_told_to_use_the_grpc_port() {
    let server = common::TestServer::policy(&common::example_policy()).await;
    let (http, grpc) = (server.http_addr.to_string(), server.grpc_addr.to_string());
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rolegate(&args)
        })
    };
    let owned = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for args in [
        owned(&[
            "check",
            "--key",
            keys::DANA_SCIENTIST,
            "--entitlement",
            "jobs.read",
        ]),
        owned(&["teams", "list", "--key", keys::OLIVIA_OWNER]),
        owned(&["watch", "--key", keys::OLIVIA_OWNER, "--count", "1"]),
    ] {
        let mut on_http = args.clone();
        on_http.extend(["--addr".to_owned(), http.clone()]);
        let (code, out, err) = run(on_http).await.unwrap();
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("this looks like rolegate's HTTP port") && err.contains("--grpc-listen"),
            "{args:?}: {err}"
        );
    }
    // A refusal from the gRPC port is not mistaken for it.
    let (code, out, err) = run(owned(&[
        "teams",
        "list",
        "--key",
        "NoSuchKey0000001.not-a-secret",
        "--addr",
        &grpc,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(!err.contains("HTTP port"), "{err}");
}

/// A port already taken stops `serve` with exit 1 and an error naming the listener, its flag and
/// the address.
#[test]
fn serve_names_the_listener_whose_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let policy = repo_path("deploy/examples/policy.yaml");
    let policy = policy.to_str().unwrap();
    for (name, flag) in [
        ("gRPC", "--grpc-listen"),
        ("HTTP", "--http-listen"),
        ("probe", "--probe-listen"),
    ] {
        let mut args = vec!["serve", "--policy", policy];
        for other in ["--grpc-listen", "--http-listen"] {
            if other != flag {
                args.extend([other, "127.0.0.1:0"]);
            }
        }
        args.extend([flag, &busy]);
        let (code, out, err) = rolegate(&args);
        assert_eq!(code, 1, "{flag}: {out}{err}");
        assert!(
            err.contains(&format!(
                "the {name} listener cannot listen on {busy} ({flag})"
            )),
            "{flag}: {err}"
        );
    }
    drop(taken);
}

/// Follow mode without `--upstream-key` is refused at start, naming the flag.
#[test]
fn serve_upstream_needs_an_upstream_key() {
    let (code, out, err) = rolegate(&["serve", "--upstream", "http://127.0.0.1:1"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--upstream-key"), "{err}");
}

/// `rolegate serve --data-dir DIR` on fixed ports, with the bootstrap key of the tests; ready
/// when this returns.
async fn serve_store(dir: &std::path::Path, grpc: u16, http: u16) -> Child {
    let child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--bootstrap-key-sha256", &common::bootstrap_hash()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until_ready(([127, 0, 0, 1], http).into(), Duration::from_secs(20)).await;
    child
}

/// SIGTERM, then the exit status.
fn stop(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap()
}

/// Each line `child` prints, as it prints it.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The lines received until one contains `needle` (included); panics after `within`.
fn until(rx: &std::sync::mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!("no line with {needle:?} ({e}); seen: {seen:#?}"),
        }
    }
}

/// `rolegate watch` outlives a restart of the server: it reconnects to the same address, resumes
/// after the last revision it printed, and prints the changes made after the restart, each once.
/// With `--no-reconnect` it ends with the stream, as it used to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (grpc, http) = (common::free_port(), common::free_port());
    let addr = format!("127.0.0.1:{grpc}");
    let mut server = serve_store(&data, grpc, http).await;
    let admin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--addr", &addr]);
        let (code, out, err) = rolegate_env(&all, &[("ROLEGATE_API_KEY", common::BOOTSTRAP)]);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    };
    let watch = |extra: &[&str]| {
        Command::new(BIN)
            .args(["watch", "--addr", &addr, "--snapshot", "--kind", "team"])
            .args(["--output", "json"])
            .args(extra)
            .env("ROLEGATE_API_KEY", common::BOOTSTRAP)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut follower = watch(&[]);
    let mut quitter = watch(&["--no-reconnect"]);
    let (events, quitter_events) = (lines_of(&mut follower), lines_of(&mut quitter));
    // Both streams are open once their snapshots have ended.
    until(&events, "snapshot_end", Duration::from_secs(10));
    until(&quitter_events, "snapshot_end", Duration::from_secs(10));

    admin(&["teams", "create", "before-restart"]);
    until(&events, "before-restart", Duration::from_secs(10));

    assert_eq!(stop(&mut server).code(), Some(0));
    // --no-reconnect: the stream's end is the command's (the server said it was shutting down).
    let status = quitter.wait().unwrap();
    assert_eq!(status.code(), Some(2));

    let mut server = serve_store(&data, grpc, http).await;
    admin(&["teams", "create", "after-restart"]);
    let seen = until(&events, "after-restart", Duration::from_secs(30));
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the watch is still running"
    );
    // Nothing printed twice: the team made before the restart is not printed again.
    assert!(
        !seen.iter().any(|l| l.contains("before-restart")),
        "{seen:#?}"
    );
    let _ = follower.kill();
    let _ = follower.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("resuming from revision"), "{stderr}");
    assert_eq!(stop(&mut server).code(), Some(0));
}
