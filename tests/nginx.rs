//! rolegate behind a real nginx (Debian `nginx`, `auth_request`), running
//! `deploy/nginx/nginx.conf` as shipped with only its ports replaced.

mod common;
mod proxy;

use common::{TestServer, example_policy, keys};
use proxy::{
    EchoApp, Nginx, expect, forged_identity_is_replaced, header_sources_fail_closed, matrix,
    near_miss_paths_are_refused, policy_with_report_routes, query_sources_fail_closed, run_matrix,
    send, send_underscore_forgeries, unauthenticated_callers_learn_nothing,
    underscore_forgeries_removed, wait_for_report_routes,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_end_to_end() {
    let Some(bin) = common::require_tool(
        "nginx",
        "ROLEGATE_NGINX_BIN",
        "nginx_auth_request_end_to_end",
    ) else {
        return;
    };
    let policy = example_policy();
    let server = TestServer::policy(&policy).await;
    let app = EchoApp::start().await;
    let nginx = Nginx::start(&bin, app.addr.port(), server.http_addr.port()).await;

    run_matrix(nginx.listen, &app, &matrix()).await;

    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);

    // rolegate's answer replaces the identity headers a client sends; the credential is dropped.
    forged_identity_is_replaced(
        nginx.listen,
        &[
            ("X-Rolegate-Scope", b"ALL"),
            ("X-Rolegate-Project", b"fraud-detector"),
            ("X-Rolegate-Filter-Teams", b"acme,globex"),
            ("X-Rolegate-Filter-Owner-User", b"olivia"),
        ],
    )
    .await;

    // Paths a server might serve as another route: 400 (rolegate says 403 with
    // X-Rolegate-Status: 400, which nginx.conf turns back into a 400).
    near_miss_paths_are_refused(nginx.listen, &app).await;
    // One 401 whatever is wrong with the key.
    unauthenticated_callers_learn_nothing(nginx.listen, &app).await;

    // Identity headers forged with '_': nginx's defaults drop such headers before anything
    // else sees them. Any other x-rolegate-* name nginx cannot remove: rolegate refuses it.
    underscore_forgeries_removed(&send_underscore_forgeries(nginx.listen).await);
    let devin_h: Vec<(&str, &[u8])> = vec![("Authorization", devin.as_bytes())];
    let mut admin = devin_h.clone();
    admin.push(("x-rolegate-admin", b"yes"));
    expect(nginx.listen, &app, "GET", "/api/jobs", &admin, 400).await;

    // Suspicious paths and credentials: a definite denial; the app never sees them. (nginx
    // passes the raw $request_uri on; rolegate refuses what it will not guess at.)
    let aria = format!("ApiKey {}", keys::ARIA_AUDITOR);
    let dup: Vec<(&str, &[u8])> = vec![
        ("Authorization", devin.as_bytes()),
        ("Authorization", aria.as_bytes()),
    ];
    let with = |v: &'static [u8]| vec![("Authorization", v)];
    let aria_h: Vec<(&str, &[u8])> = vec![("Authorization", aria.as_bytes())];
    let bad: Vec<proxy::BadRequest<'_>> = vec![
        ("DELETE", "/api/models/../jobs/j-1", aria_h.clone(), &[400]),
        ("DELETE", "/api/jobs%2Fj-1", aria_h.clone(), &[400]),
        ("DELETE", "/api//jobs/j-1", aria_h.clone(), &[400]),
        (
            "DELETE",
            "/api/jobs/j-1?/api/models",
            aria_h.clone(),
            &[403],
        ),
        ("GET", "/api/jobs", with(b"Bearer abc.def"), &[401]),
        // nginx itself refuses a repeated Authorization header (400).
        ("GET", "/api/jobs", dup, &[400, 401]),
    ];
    for (method, path, headers, want) in bad {
        let before = app.hits();
        let r = send(nginx.listen, method, path, &headers).await;
        assert!(
            want.contains(&r.status),
            "{method} {path}: got {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(app.hits(), before, "{method} {path} reached the app");
    }

    // A route's resource named by a query parameter or a header: missing is 400.
    server.write_policy(&policy_with_report_routes(&policy));
    wait_for_report_routes(nginx.listen).await;
    query_sources_fail_closed(nginx.listen, &app).await;
    header_sources_fail_closed(nginx.listen, &app).await;

    // rolegate stopped: nginx fails the request (auth_request error), the app sees nothing.
    server.stop().await.unwrap();
    let before = app.hits();
    let r = send(
        nginx.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    assert!(r.status >= 500, "got {}", r.status);
    assert_eq!(app.hits(), before);
}

/// With `underscores_in_headers on`, nginx passes `x_rolegate_user` on, and cannot remove it on
/// rolegate's word: rolegate refuses the request (400), so it never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_underscores_in_headers_refuses_forged_identity() {
    let Some(bin) = common::require_tool(
        "nginx",
        "ROLEGATE_NGINX_BIN",
        "nginx_with_underscores_in_headers_refuses_forged_identity",
    ) else {
        return;
    };
    let server = TestServer::policy(&example_policy()).await;
    let app = EchoApp::start().await;
    let listen = "listen 127.0.0.1:8088;";
    let nginx = Nginx::start_with(
        &bin,
        app.addr.port(),
        server.http_addr.port(),
        &[(
            listen,
            format!("{listen}\n        underscores_in_headers on;"),
        )],
    )
    .await;
    let before = app.hits();
    let r = send_underscore_forgeries(nginx.listen).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["statusCode"], 400);
    assert_eq!(app.hits(), before, "the forged request reached the app");
    // Counted as the denial it is.
    let (_, metrics) = server.http_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"rolegate_decisions_total{front_end="http_auth",allowed="false",reason="FORGED_HEADER"} 1"#
        ),
        "{metrics}"
    );

    // Without them, the same request is allowed: the refusal is for the forged headers.
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let r = send(
        nginx.listen,
        "GET",
        "/api/jobs",
        &[("Authorization", devin.as_bytes())],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen()["x-rolegate-user"], "devin");
}
