//! The server's JSON log as a log collector reads it: one JSON object a line, no terminal
//! colours when stderr is not a terminal, fields as JSON values (no Rust debug text), and
//! decision reasons spelled as the gRPC API spells them.

mod common;

use std::{
    io::{BufRead, BufReader},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{BOOTSTRAP, check, store_command};
use rolegate::grpc::pb::authorizer_client::AuthorizerClient;

#[tokio::test]
async fn json_logs_are_plain_json_with_api_reason_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = store_command(dir.path())
        .env("RUST_LOG", "info,rolegate=debug")
        .spawn()
        .expect("spawn rolegate");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let wait_for = |what: &dyn Fn(&serde_json::Value) -> bool| {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let found = lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| what(v));
            if let Some(v) = found {
                return v;
            }
            assert!(
                Instant::now() < until,
                "not logged: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let serving = wait_for(&|v| v.get("grpc").is_some());
    let addr = format!("http://{}", serving["grpc"].as_str().unwrap());
    assert!(
        serving["probe"].is_null(),
        "no probe listener is null, not debug text: {serving}"
    );

    let mut authz = AuthorizerClient::connect(addr).await.unwrap();
    let answer = authz
        .check(check(BOOTSTRAP, "keys.read", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed);
    let logged = wait_for(&|v| v["message"] == "check");
    assert_eq!(logged["reason"], "ALLOWED", "{logged}");
    assert_eq!(logged["key"], "RolegateBootstrap01", "{logged}");

    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.lock().unwrap();
    for line in lines.iter() {
        assert!(
            !line.contains('\u{1b}'),
            "a terminal colour code in: {line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        for (name, value) in v.as_object().unwrap() {
            if let Some(text) = value.as_str() {
                assert!(
                    !text.starts_with("Some(") && !text.contains(" { "),
                    "field {name} is debug text: {line}"
                );
            }
        }
    }
}

/// A hub that answers a follower's watch with PermissionDenied (here: a developer's key, which
/// may not read the whole state) is logged as a refusal at error level, not as a lost connection.
// Two workers: the hub serves in this process while the test waits on the follower's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_refusing_the_follower_is_logged_as_a_refusal() {
    let hub = common::TestServer::policy(&common::example_policy()).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["serve", "--upstream", &hub.url()])
        .args(["--upstream-key", common::keys::DEVIN_DEVELOPER])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the follower");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let left = until.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the follower logs the refusal");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("disconnected"),
            "a refusal logged as a disconnect: {line}"
        );
        if message.contains("refuses") {
            break v;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(refusal["level"], "ERROR", "{refusal}");
    assert!(
        refusal["error"]
            .as_str()
            .is_some_and(|e| e.contains("PermissionDenied") || e.contains("permission")),
        "{refusal}"
    );
}
