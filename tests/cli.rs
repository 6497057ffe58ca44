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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serving {
    child: Child,
    grpc: String,
    http: std::net::SocketAddr,
}

fn serve(policy: &std::path::Path, extra_env: &[(&str, &str)]) -> Serving {
    let (g, h) = (free_port(), free_port());
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
    let out = Command::new(BIN).args(args).output().unwrap();
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
    assert!(logs.contains("p.yaml:0:0: the file is empty"), "{logs}");
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
    let addr = format!("http://{}", server.grpc_addr);
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
