//! Shared helpers of the integration tests, compiled into every test binary that declares
//! `mod common;`:
//!
//! - [`TestServer`] (server.rs): a real server in this process on ephemeral loopback ports, on
//!   any origin (a policy file, the embedded store, a follower of another server);
//! - the Admin API's callers (admin.rs): `authorization: ApiKey` metadata, the bootstrap key,
//!   the example policy seeded through `Apply`;
//! - real etcd members on loopback (etcd.rs), over TLS with certificates made for the test
//!   (pki.rs);
//! - the real binary as a child process on the embedded store or a policy file (process.rs);
//! - the route table as the HTTP auth endpoint enforces it (`routes`);
//! - here: the example policy and its development keys, Check requests, a raw HTTP GET, and the
//!   rule for tests that need outside tools.
//!
//! Every binary uses only part of this, hence `dead_code` allowed for the whole module tree.

#![allow(dead_code, unreachable_pub, unused_imports)]

mod admin;
pub mod etcd;
pub mod pki;
mod process;
pub mod routes;
mod server;

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use admin::{
    BOOTSTRAP, bootstrap_hash, call, example_with_bootstrap, field_violations, seed_example,
};
pub use process::{serve_command, spawn_on_etcd, spawn_policy, spawn_store, store_command};
use rolegate::grpc::pb;
pub use server::{Origin, READY_WITHIN, Start, TestServer};

/// Development keys of `deploy/examples/policy.yaml` (examples only).
pub mod keys {
    pub const OLIVIA_OWNER: &str = "OliviaOwnerKey000001.dev-only-oliviaowner";
    pub const ADAM_ADMIN: &str = "AdamAdminKey00000001.dev-only-adamadminke";
    pub const DANA_SCIENTIST: &str = "DanaScienceKey000001.dev-only-danascience";
    pub const DANA_GLOBEX_ADMIN: &str = "DanaGlobexAdmin00001.dev-only-danaglobexa";
    pub const DEVIN_DEVELOPER: &str = "DevinDevKey000000001.dev-only-devindevkey";
    pub const DEVIN_OLD_INACTIVE: &str = "DevinOldKey000000001.dev-only-devinoldkey";
    pub const ARIA_AUDITOR: &str = "AriaAuditKey00000001.dev-only-ariaauditke";
    pub const GUS_DEVELOPER: &str = "GusDevKey00000000001.dev-only-gusdevkey00";
    pub const FRAUD_PROJECT: &str = "FraudProjectKey00001.dev-only-fraudprojec";
    /// A project key with the FOLLOWER role: Watch with secret hashes (`serve --upstream`).
    pub const FOLLOWER: &str = "FollowerKey000000001.dev-only-followerkey";
    pub const RITA_REVIEWER: &str = "RitaReviewKey0000001.dev-only-ritareviewe";

    /// The public prefix of a key.
    pub fn prefix(key: &str) -> &str {
        key.split_once('.').map_or(key, |(p, _)| p)
    }
}

/// The example policy shipped in `deploy/examples/policy.yaml`.
pub fn example_policy() -> String {
    std::fs::read_to_string(repo_path("deploy/examples/policy.yaml")).expect("example policy")
}

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The policy `text` with the `status:` line of the key `prefix` set to `status`.
pub fn with_key_status(text: &str, prefix: &str, status: &str) -> String {
    let at = text
        .find(&format!("prefix: {prefix}"))
        .unwrap_or_else(|| panic!("no key {prefix} in the policy"));
    let start = at + text[at..].find("status: ").expect("a status line") + "status: ".len();
    let end = start + text[start..].find('\n').expect("a line end");
    format!("{}{status}{}", &text[..start], &text[end..])
}

/// A check of `key` for `entitlement` over a resource of `team` owned by the key `owner_key`
/// (all empty: a collection call).
pub fn check(key: &str, entitlement: &str, team: &str, owner_key: &str) -> pb::CheckRequest {
    check_at(key, entitlement, team, owner_key, 0)
}

/// [`check`], fresh at least at `revision` (`min_revision`).
pub fn check_at(
    key: &str,
    entitlement: &str,
    team: &str,
    owner_key: &str,
    revision: u64,
) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: key.into(),
        entitlement: entitlement.into(),
        resource: Some(pb::Resource {
            team_id: team.into(),
            owner_key_prefix: owner_key.into(),
            owner_user_id: String::new(),
        }),
        min_revision: revision,
    }
}

/// Waits until the server whose HTTP port is `http` answers `/readyz` with 200 (its state is
/// loaded and its ports serve); panics after `within`.
pub async fn wait_until_ready(http: SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if http_get(http, "/readyz")
            .await
            .is_ok_and(|(code, _)| code == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server on {http} did not become ready within {within:?}");
}

/// A minimal HTTP/1.1 GET over a fresh connection: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Whether tests must fail, rather than skip, when an outside tool is missing. The README's
/// test command (`scripts/test.sh`) installs the tools and sets this.
pub fn tools_required() -> bool {
    std::env::var("ROLEGATE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Finds an outside tool: the environment variable `env_var` if set, else `name` on PATH.
/// Missing: a visible skip message (written straight to stderr, past the test harness's output
/// capture) and `None`, or a failure when [`tools_required`].
pub fn require_tool(name: &str, env_var: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os(env_var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            !tools_required(),
            "{test}: {name} is required (ROLEGATE_REQUIRE_TOOLS=1) but was not found; set {env_var} or put it on PATH"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {name} not found (set {env_var} or run scripts/test.sh, which installs it)"
        );
    }
    found
}

/// For a test that needs something of the machine other than a tool (e.g. root, to mount a
/// tmpfs): the same rule as [`require_tool`] — a visible skip message, or a failure when
/// [`tools_required`]. `why` says what was tried and how it failed.
pub fn skip_without(what: &str, why: &str, test: &str) {
    assert!(
        !tools_required(),
        "{test}: {what} is required (ROLEGATE_REQUIRE_TOOLS=1) but unavailable: {why}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs {what}: {why}");
}

/// A free loopback TCP port, never one this test process was given before: the system may hand
/// a port it has just taken back to the next `bind(0)`, and two servers of one test told the same
/// port would meet.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An Envoy ext_authz request for `method path` carrying `headers`.
pub fn envoy_check(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Request},
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
