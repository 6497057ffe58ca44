//! Operating rolegate: `/metrics` scraped by a real Prometheus (Debian `prometheus`; its
//! `promtool` checks the exposition), and the decision log (`--decision-log`): one JSON line per
//! decision with the documented fields, its filters, no secret, and a reader that never comes
//! does not stall a check.
//!
//! `cargo test --test telemetry`

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Origin, TestServer, envoy_check, example_policy, http_get, keys};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use rolegate::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// How long Prometheus may take to scrape the final counts: a bound, not a delay.
const SCRAPED_WITHIN: Duration = Duration::from_secs(60);

fn check(key: &str, team: &str) -> pb::CheckRequest {
    common::check(key, "jobs.cancel", team, "")
}

/// A request to the HTTP auth endpoint for Envoy: (status, body).
async fn http_auth(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} /authz/ext{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The decisions every test below asks for, through every front end: 5 allowed and 2 denied
/// Checks, one CheckBatch of 3 (2 allowed), 3 ext_authz (2 allowed), 2 HTTP auth (1 allowed).
/// Returns the number of decisions (allowed, denied).
async fn decide_some(server: &TestServer) -> (usize, usize) {
    let mut authorizer = server.authorizer().await;
    for _ in 0..5 {
        let mut req = tonic::Request::new(check(keys::DANA_SCIENTIST, "globex"));
        req.metadata_mut()
            .insert("traceparent", TRACEPARENT.parse().unwrap());
        assert!(authorizer.check(req).await.unwrap().into_inner().allowed);
    }
    for _ in 0..2 {
        let wrong = format!("{}x", keys::DANA_SCIENTIST);
        assert!(!server.check(check(&wrong, "globex")).await.allowed);
    }
    let batch = pb::CheckBatchRequest {
        api_key: keys::DANA_SCIENTIST.into(),
        checks: vec![
            check("", "globex"),
            check("", "globex"),
            common::check("", "jobs.cancel", "acme", ""),
        ],
        min_revision: 0,
    };
    let results = authorizer
        .check_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        [true, true, false]
    );
    let mut envoy = AuthorizationClient::new(server.channel().await);
    let dana = format!("ApiKey {}", keys::DANA_SCIENTIST);
    for headers in [
        vec![
            ("authorization", dana.as_str()),
            ("traceparent", TRACEPARENT),
        ],
        vec![("authorization", dana.as_str())],
        vec![],
    ] {
        envoy
            .check(envoy_check(
                "DELETE",
                "/api/jobs/job-1?token=hidden",
                &headers,
            ))
            .await
            .unwrap();
    }
    let ok = http_auth(
        server.http_addr,
        "DELETE",
        "/api/jobs/job-1",
        &[("authorization", &dana), ("traceparent", TRACEPARENT)],
    )
    .await;
    assert_eq!(ok, 200);
    let unauthenticated = http_auth(server.http_addr, "GET", "/api/jobs", &[]).await;
    assert_eq!(unauthenticated, 401);
    (5 + 2 + 2 + 1, 2 + 1 + 1 + 1)
}

/// A Prometheus scraping `target` every 100 ms, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &Path, target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\nscrape_configs:\n  - job_name: rolegate\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query that yields one series (None: no series, or not up yet).
    async fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}"))
            .await
            .ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query}: more than one series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` yields `want` (the scrape after the decisions), at most
    /// [`SCRAPED_WITHIN`]; panics with the last value otherwise.
    async fn expect(&self, query: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + SCRAPED_WITHIN;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            last = self.value(query).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{query}: wanted {want}, Prometheus has {last:?}");
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_grpc_and_decision_series() {
    let test = "prometheus_scrapes_the_grpc_and_decision_series";
    let promtool = common::require_tool("promtool", "ROLEGATE_PROMTOOL_BIN", test);
    let prometheus = common::require_tool("prometheus", "ROLEGATE_PROMETHEUS_BIN", test);
    let server = TestServer::policy(&example_policy()).await;
    decide_some(&server).await;

    let (code, text) = server.http_get("/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "grpc_server_started_total{",
        "grpc_server_handling_seconds_bucket{",
        "rolegate_decisions_total{front_end=\"check\",allowed=\"true\",reason=\"ALLOWED\"} 5",
        "rolegate_http_auth_requests_total{endpoint=\"envoy\",status=\"401\"} 1",
        "rolegate_keys ",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(series), "/metrics lacks {series}:\n{text}");
    }
    // Bounded cardinality: no key, user or team in any label.
    for name in ["DanaScienceKey", "dana", "globex"] {
        assert!(!text.contains(name), "/metrics names {name}");
    }

    if let Some(promtool) = promtool {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let Some(prometheus) = prometheus else { return };
    let prom = Prometheus::start(&prometheus, server.http_addr);
    let authorizer = r#"grpc_service="rolegate.v1.Authorizer""#;
    let envoy = r#"grpc_service="envoy.service.auth.v3.Authorization""#;
    for (query, want) in [
        (
            format!(r#"grpc_server_handled_total{{{authorizer},grpc_method="Check",grpc_type="unary",grpc_code="OK"}}"#),
            7.0,
        ),
        (
            format!(r#"grpc_server_started_total{{{authorizer},grpc_method="CheckBatch"}}"#),
            1.0,
        ),
        (
            format!(r#"grpc_server_msg_received_total{{{authorizer},grpc_method="Check"}}"#),
            7.0,
        ),
        (
            format!(r#"grpc_server_msg_sent_total{{{authorizer},grpc_method="Check"}}"#),
            7.0,
        ),
        (
            format!(r#"grpc_server_handling_seconds_count{{{authorizer},grpc_method="Check"}}"#),
            7.0,
        ),
        (
            format!(r#"grpc_server_handled_total{{{envoy},grpc_method="Check",grpc_code="OK"}}"#),
            3.0,
        ),
        (
            r#"rolegate_decisions_total{front_end="check",allowed="true",reason="ALLOWED"}"#.into(),
            5.0,
        ),
        (
            r#"rolegate_decisions_total{front_end="check",allowed="false",reason="WRONG_SECRET"}"#
                .into(),
            2.0,
        ),
        (
            r#"sum(rolegate_decisions_total{front_end="check_batch"})"#.into(),
            3.0,
        ),
        (
            r#"rolegate_decisions_total{front_end="ext_authz",allowed="true"}"#.into(),
            2.0,
        ),
        (
            r#"rolegate_decisions_total{front_end="ext_authz",allowed="false",reason="MISSING_CREDENTIAL"}"#.into(),
            1.0,
        ),
        (
            r#"rolegate_decisions_total{front_end="http_auth",allowed="true"}"#.into(),
            1.0,
        ),
        (r#"rolegate_revision"#.into(), 1.0),
        (r#"up{job="rolegate"}"#.into(), 1.0),
    ] {
        prom.expect(&query, want).await;
    }
}

/// A server of the example policy writing its decision log to `target` with `tweak`.
async fn logging_server(
    target: &Path,
    tweak: impl FnOnce(&mut rolegate::config::ServeConfig),
) -> TestServer {
    let target = target.to_str().unwrap().to_owned();
    TestServer::with(Origin::policy(&example_policy()))
        .config(move |c| {
            c.decision_log = Some(target);
            tweak(c);
        })
        .start()
        .await
}

/// The log's lines once it has `n` of them (bounded wait: the writer is a thread of its own).
async fn lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<_> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || tokio::time::Instant::now() > deadline {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The secrets of the keys the tests use: none may appear in a log.
fn secrets() -> Vec<&'static str> {
    [keys::DANA_SCIENTIST]
        .map(|k| k.split_once('.').unwrap().1)
        .to_vec()
}

#[tokio::test]
async fn the_decision_log_has_a_line_per_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let server = logging_server(&path, |_| {}).await;
    let (allowed, denied) = decide_some(&server).await;
    let log = lines(&path, allowed + denied).await;
    // Give a straggler the chance to show up: exactly one line per decision.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log_again = lines(&path, allowed + denied).await;
    assert_eq!(log.len(), allowed + denied);
    assert_eq!(log_again.len(), allowed + denied);

    let text = std::fs::read_to_string(&path).unwrap();
    for secret in secrets() {
        assert!(!text.contains(secret), "the log holds a secret");
    }
    assert!(!text.contains("hidden"), "a query string was logged");
    for line in &log {
        for field in [
            "decision_id",
            "timestamp",
            "revision",
            "input",
            "result",
            "latency_ns",
        ] {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
        for field in ["front_end", "key_prefix", "entitlement", "resource"] {
            assert!(
                line["input"].get(field).is_some(),
                "input.{field} missing: {line}"
            );
        }
        for field in ["allowed", "scope", "reason"] {
            assert!(
                line["result"].get(field).is_some(),
                "result.{field} missing: {line}"
            );
        }
    }
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| log.iter().filter(|l| f(l)).count();
    assert_eq!(count(&|l| l["result"]["allowed"] == true), allowed);
    assert_eq!(count(&|l| l["input"]["front_end"] == "check"), 7);
    assert_eq!(count(&|l| l["input"]["front_end"] == "check_batch"), 3);
    assert_eq!(count(&|l| l["input"]["front_end"] == "ext_authz"), 3);
    assert_eq!(count(&|l| l["input"]["front_end"] == "http_auth"), 2);
    // Traced: 5 Checks, one ext_authz and one HTTP auth request.
    assert_eq!(
        count(&|l| l["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
            && l["span_id"] == "00f067aa0ba902b7"),
        7
    );
    let check = log
        .iter()
        .find(|l| l["input"]["front_end"] == "check" && l["result"]["allowed"] == true)
        .unwrap();
    assert_eq!(check["input"]["key_prefix"], "DanaScienceKey000001");
    assert_eq!(check["input"]["entitlement"], "jobs.cancel");
    assert_eq!(check["input"]["resource"]["team_id"], "globex");
    assert_eq!(check["result"]["reason"], "ALLOWED");
    assert_eq!(check["result"]["scope"], "TEAM");
    assert_eq!(check["requested_by"], "user:dana");
    assert_eq!(check["revision"], 1);
    let wrong = log
        .iter()
        .find(|l| l["result"]["reason"] == "WRONG_SECRET")
        .unwrap();
    assert_eq!(wrong["input"]["key_prefix"], "DanaScienceKey000001");
    let proxied = log
        .iter()
        .find(|l| l["input"]["front_end"] == "ext_authz" && l["result"]["allowed"] == true)
        .unwrap();
    assert_eq!(proxied["input"]["route"]["method"], "DELETE");
    assert_eq!(proxied["input"]["route"]["path"], "/api/jobs/job-1");
    assert_eq!(proxied["input"]["entitlement"], "jobs.cancel");
    let ids: std::collections::HashSet<_> = log.iter().map(|l| l["decision_id"].clone()).collect();
    assert_eq!(ids.len(), log.len(), "decision ids are unique");
}

#[tokio::test]
async fn the_decision_log_filters_denied_only_and_samples_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let denied_only = dir.path().join("denied.log");
    let server = logging_server(&denied_only, |c| c.decision_log_denied_only = true).await;
    let (_, denied) = decide_some(&server).await;
    let log = lines(&denied_only, denied).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&denied_only, denied).await.len(), denied);
    assert!(log.iter().all(|l| l["result"]["allowed"] == false));
    drop(server);

    // Sampling nothing of the allowed: the denials still all go.
    let none = dir.path().join("sampled.log");
    let server = logging_server(&none, |c| c.decision_log_sample_allowed = 0.0).await;
    let (_, denied) = decide_some(&server).await;
    lines(&none, denied).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = lines(&none, denied).await;
    assert_eq!(log.len(), denied);
    assert!(log.iter().all(|l| l["result"]["allowed"] == false));
}

/// `/metrics`' value of an unlabelled series.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let (_, text) = server.http_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test]
async fn a_pipe_nobody_reads_never_stalls_a_check() {
    let test = "a_pipe_nobody_reads_never_stalls_a_check";
    let dir = tempfile::tempdir().unwrap();
    let fifo: PathBuf = dir.path().join("decisions.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        common::skip_without("mkfifo", "it could not make a FIFO", test);
        return;
    }
    let server = logging_server(&fifo, |_| {}).await;
    let mut authorizer = server.authorizer().await;
    // More decisions than the queue holds, while nobody opens the FIFO: the writer waits for
    // a reader, the queue fills, and every further record is dropped; each batch is answered.
    let batches = 20;
    let per_batch = 1000;
    for _ in 0..batches {
        let batch = pb::CheckBatchRequest {
            api_key: keys::DANA_SCIENTIST.into(),
            checks: vec![check("", "globex"); per_batch],
            min_revision: 0,
        };
        let results = authorizer
            .check_batch(batch)
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), per_batch);
    }
    let decided = (batches * per_batch) as f64;
    let dropped = metric(&server, "rolegate_decision_log_dropped_total").await;
    // The queue holds 16,384 records; the writer holds at most one buffer of 128 KiB (a few
    // hundred records) while it waits for the FIFO's reader.
    assert!(
        dropped >= decided - 16.0 * 1024.0 - 1000.0,
        "{dropped} of {decided} records dropped"
    );
    assert_eq!(
        metric(&server, "rolegate_decision_log_written_total").await,
        0.0
    );
    // A reader finally comes: the writer goes on (what was queued is written).
    let reader = std::fs::File::open(&fifo).unwrap();
    drop(reader);
}
