//! `deploy/quickstart.sh` as a user runs it: rolegate (the binary under test), Envoy and the echo
//! app on free ports; the three requests it prints, sent as printed; then SIGTERM, after which
//! nothing it started is left running.

mod common;
mod proxy;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::repo_path;
use proxy::{UNAUTHENTICATED_MESSAGE, free_port, send};

/// One printed `curl` line: method, target on the listener, headers.
#[derive(Debug)]
struct Curl {
    method: String,
    addr: SocketAddr,
    target: String,
    headers: Vec<(String, String)>,
}

/// Splits a shell line into words: spaces separate, single quotes group (all the script uses).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if any {
        words.push(word);
    }
    words
}

/// Reads `curl [-i] [-X METHOD] [-H 'Name: value']… http://HOST:PORT/TARGET`.
fn parse_curl(line: &str) -> Curl {
    let words = shell_words(line);
    assert_eq!(words[0], "curl", "{line}");
    let (mut method, mut headers, mut url) = ("GET".to_owned(), Vec::new(), None);
    let mut rest = words[1..].iter();
    while let Some(w) = rest.next() {
        match w.as_str() {
            "-i" | "-s" | "-sS" => {}
            "-X" => method = rest.next().expect("-X METHOD").clone(),
            "-H" => {
                let h = rest.next().expect("-H HEADER");
                let (k, v) = h.split_once(':').expect("Name: value");
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            u if u.starts_with("http://") => url = Some(u.to_owned()),
            other => panic!("unexpected {other:?} in {line:?}"),
        }
    }
    let url = url.expect("a URL");
    let rest = url.strip_prefix("http://").unwrap();
    let (host, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Curl {
        method,
        addr: host.parse().expect("an IP:port host"),
        target: if target.is_empty() { "/" } else { target }.to_owned(),
        headers,
    }
}

/// The script's process; SIGKILLed with its process group if the test ends early.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            for pid in descendants(self.0.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The parent pid of every process (from /proc).
fn parents() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<u32> {
    let all = parents();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        after.split_whitespace().next() != Some("Z")
    })
}

fn python(test: &str) -> Option<PathBuf> {
    common::require_tool("python3", "ROLEGATE_PYTHON_BIN", test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_script_runs_envoy_in_front_of_rolegate() {
    let test = "the_quickstart_script_runs_envoy_in_front_of_rolegate";
    let Some(envoy) = common::require_tool("envoy", "ROLEGATE_ENVOY_BIN", test) else {
        return;
    };
    let Some(python) = python(test) else {
        return;
    };
    let (listen, admin, app, grpc, http) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut script = Script(
        Command::new("bash")
            .arg(repo_path("deploy/quickstart.sh"))
            .args(["--envoy-port", &listen.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(["--app-port", &app.to_string()])
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--http-port", &http.to_string()])
            .env("ROLEGATE_BIN", env!("CARGO_BIN_EXE_rolegate"))
            .env("ENVOY_BIN", &envoy)
            .env("PYTHON", &python)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = script.0.id();

    // Its output, line by line, until the three curl lines after "Try these:".
    let stdout = script.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr =
        |log: &tempfile::NamedTempFile| std::fs::read_to_string(log.path()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_try = false;
    let mut curls = Vec::new();
    let mut printed = String::new();
    while curls.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no 'Try these:' and three curl lines within 60 s; stdout:\n{printed}\nstderr:\n{}",
                stderr(&log)
            )
        });
        printed.push_str(&line);
        printed.push('\n');
        if line.trim() == "Try these:" {
            seen_try = true;
        } else if seen_try && line.starts_with("curl ") {
            curls.push(parse_curl(&line));
        }
    }
    let listen_addr: SocketAddr = ([127, 0, 0, 1], listen).into();
    for c in &curls {
        assert_eq!(c.addr, listen_addr, "{printed}");
    }

    let request = async |c: &Curl| {
        let headers: Vec<(&str, &[u8])> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        send(c.addr, &c.method, &c.target, &headers).await
    };

    // Allowed: through Envoy to the echo app, with rolegate's identity headers and no credential.
    let r = request(&curls[0]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.seen();
    assert_eq!(seen["x-rolegate-key"], "DevinDevKey000000001", "{seen:?}");
    assert_eq!(seen["x-rolegate-user"], "devin", "{seen:?}");
    assert_eq!(seen["x-rolegate-team"], "acme", "{seen:?}");
    assert_eq!(seen["x-rolegate-scope"], "OWN", "{seen:?}");
    assert!(seen.contains_key("x-rolegate-revision"), "{seen:?}");
    assert!(!seen.contains_key("authorization"), "{seen:?}");
    assert_eq!(r.json()["path"], curls[0].target.as_str());

    // Denied: 403 with rolegate's own JSON body.
    let r = request(&curls[1]).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["statusCode"], 403);
    assert_eq!(v["status"], "Forbidden");
    assert!(
        v["message"].as_str().unwrap().contains("models.deploy"),
        "{v}"
    );

    // No key: 401.
    assert!(curls[2].headers.is_empty(), "{printed}");
    let r = request(&curls[2]).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("www-authenticate"), Some("ApiKey"));
    assert_eq!(r.json()["message"], UNAUTHENTICATED_MESSAGE);

    // SIGTERM: the script stops what it started, then exits.
    let children = descendants(pid);
    assert!(
        children.len() >= 3,
        "rolegate, the echo app, Envoy: {children:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(code) = script.0.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the script still runs 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code.code(), Some(143), "stderr:\n{}", stderr(&log));
    let left: Vec<u32> = children.into_iter().filter(|&p| running(p)).collect();
    assert!(left.is_empty(), "still running after the script: {left:?}");
}
