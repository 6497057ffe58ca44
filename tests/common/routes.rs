//! The route table as the HTTP auth endpoint enforces it: a table with a route the built-in
//! one lacks, and which of the two a server enforces.

use std::{net::SocketAddr, time::Duration};

use super::{example_with_bootstrap, keys};

/// A route only these tests' table has: the built-in table has no `/api/reports`.
pub const REPORTS_ROUTE: &str = "  - { method: GET, path: /api/reports, entitlement: jobs.read }\n";

/// The example policy (with the bootstrap key) and a route table of `routes` lines.
pub fn document_with_routes(routes: &str) -> String {
    format!("{}\nroutes:\n{routes}", example_with_bootstrap())
}

/// What the HTTP auth endpoint (Envoy `http_service` form) answers for devin's key.
pub async fn auth(http: SocketAddr, method: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!(
        "{method} /authz/ext{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: ApiKey {}\r\n\r\n",
        keys::DEVIN_DEVELOPER
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Whether the server enforces the reports table (`/api/reports` allowed, `/api/jobs` without a
/// route) or the built-in one (the reverse); `changing` when the two requests saw different
/// tables (a table applied between them).
pub async fn enforced(http: SocketAddr) -> &'static str {
    match (
        auth(http, "GET", "/api/reports").await,
        auth(http, "GET", "/api/jobs").await,
    ) {
        (200, 403) => "reports",
        (403, 200) => "default",
        (200, 200) | (403, 403) => "changing",
        other => panic!("neither table is enforced: {other:?}"),
    }
}

/// Waits (bounded) until the server enforces `table`; an origin that follows a file or a hub
/// gets there on its own time.
pub async fn wait_enforced(http: SocketAddr, table: &str) {
    for _ in 0..800 {
        if enforced(http).await == table {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server on {http} never enforced the {table} table");
}
