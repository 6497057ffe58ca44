//! rolegate behind a real nginx (Debian `nginx`, `auth_request`), running
//! `deploy/nginx/nginx.conf` as shipped with only its ports replaced.

mod common;
mod proxy;

use common::{TestServer, example_policy, keys};
use proxy::{EchoApp, Nginx, forged_identity_is_replaced, matrix, run_matrix, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_end_to_end() {
    let Some(bin) = common::require_tool(
        "nginx",
        "ROLEGATE_NGINX_BIN",
        "nginx_auth_request_end_to_end",
    ) else {
        return;
    };
    let server = TestServer::start(&example_policy()).await;
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
        ],
    )
    .await;

    // Suspicious paths and credentials: a definite denial; the app never sees them. (nginx
    // passes the raw $request_uri on; rolegate refuses what it will not guess at, and sends
    // 403 where it would say 400, since auth_request passes on only 401 and 403.)
    let aria = format!("ApiKey {}", keys::ARIA_AUDITOR);
    let dup: Vec<(&str, &[u8])> = vec![
        ("Authorization", devin.as_bytes()),
        ("Authorization", aria.as_bytes()),
    ];
    let with = |v: &'static [u8]| vec![("Authorization", v)];
    let aria_h: Vec<(&str, &[u8])> = vec![("Authorization", aria.as_bytes())];
    let bad: Vec<proxy::BadRequest<'_>> = vec![
        (
            "DELETE",
            "/api/models/../jobs/j-1",
            aria_h.clone(),
            &[400, 403],
        ),
        ("DELETE", "/api/jobs%2Fj-1", aria_h.clone(), &[403]),
        ("DELETE", "/api//jobs/j-1", aria_h.clone(), &[403]),
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
