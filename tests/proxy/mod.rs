//! Helpers of the proxy tests (real Envoy, real nginx): an upstream app that echoes the headers
//! it received, a raw HTTP/1.1 client (so that malformed requests can be sent as they are), the
//! proxies started from the very files in deploy/ with their ports replaced, and the matrix of
//! requests over the default route map with the example policy's keys.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{keys, repo_path};

/// The upstream app: answers every request with `{"method", "path", "headers"}` as it saw them.
pub struct EchoApp {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl EchoApp {
    pub async fn start() -> Self {
        use axum::{Json, extract::Request};
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut headers = BTreeMap::<String, String>::new();
                for (k, v) in req.headers() {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    headers
                        .entry(k.as_str().to_owned())
                        .and_modify(|old| {
                            old.push('\n');
                            old.push_str(&v);
                        })
                        .or_insert(v);
                }
                Json(serde_json::json!({
                    "method": req.method().as_str(),
                    "path": req.uri().to_string(),
                    "headers": headers,
                }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        EchoApp { addr, hits }
    }

    /// How many requests reached the app.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The headers the echo app received (for a request that reached it).
    pub fn seen(&self) -> BTreeMap<String, String> {
        serde_json::from_value(self.json()["headers"].clone()).unwrap()
    }
}

/// Sends one request over a fresh connection, exactly as given (the target is not checked or
/// encoded), and reads the reply.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n")
        .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(&req).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A proxy that answers before reading the whole request (431 for a huge
                // header) may reset the connection after its answer: keep what came.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !buf.is_empty() => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("the proxy answered within 10 s")
        .expect("the proxy answered");
    parse_reply(&buf)
}

fn parse_reply(buf: &[u8]) -> Reply {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// Replaces each `from` in `text` with `to`; every `from` must occur (so a changed deploy file
/// fails the test instead of silently running with the file's own ports).
pub fn substitute(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert!(out.contains(from), "the deploy file no longer has {from:?}");
        out = out.replace(from, to);
    }
    out
}

pub use crate::common::free_port;

/// A child process that is stopped when dropped.
pub struct Proc {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers on it, where SIGKILL would leave the
        // worker running (and holding its port) after the test. SIGKILL if it is not gone in 5 s.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// The process's log (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

fn spawn(bin: &Path, args: &[&str], dir: tempfile::TempDir) -> Proc {
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = Command::new(bin)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Proc { child, dir }
}

/// Waits until `addr` accepts connections (bounded).
pub async fn wait_listening(addr: SocketAddr, proc: &mut Proc) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("the process exited ({status}):\n{}", proc.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not start listening:\n{}", proc.log());
}

/// A running Envoy and its ports.
pub struct Envoy {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy on `deploy/envoy/<file>` with its listener, admin and app ports replaced,
    /// and the `rolegate` replacements (e.g. the sidecar's port) applied.
    pub async fn start(bin: &Path, file: &str, app: u16, rolegate: &[(&str, String)]) -> Self {
        let text = std::fs::read_to_string(repo_path(&format!("deploy/envoy/{file}"))).unwrap();
        let (listen, admin) = (free_port(), free_port());
        let mut pairs = vec![
            ("port_value: 10000", format!("port_value: {listen}")),
            ("port_value: 9901", format!("port_value: {admin}")),
            ("port_value: 8000", format!("port_value: {app}")),
        ];
        pairs.extend(rolegate.iter().cloned());
        let config = substitute(&text, &pairs);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut proc = spawn(
            bin,
            &[
                "-c",
                &path,
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warn",
            ],
            dir,
        );
        let listen: SocketAddr = ([127, 0, 0, 1], listen).into();
        let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
        wait_listening(admin, &mut proc).await;
        for _ in 0..100 {
            let (code, _) = crate::common::http_get(admin, "/ready")
                .await
                .unwrap_or((0, String::new()));
            if code == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_listening(listen, &mut proc).await;
        Envoy {
            proc,
            listen,
            admin,
        }
    }

    /// The value of one counter from the admin port's `/stats`.
    pub async fn counter(&self, name: &str) -> u64 {
        let (_, body) = crate::common::http_get(self.admin, "/stats?filter=ext_authz")
            .await
            .unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A running nginx on `deploy/nginx/nginx.conf`.
pub struct Nginx {
    pub proc: Proc,
    pub listen: SocketAddr,
}

impl Nginx {
    pub async fn start(bin: &Path, app: u16, rolegate_http: u16) -> Self {
        Nginx::start_with(bin, app, rolegate_http, &[]).await
    }

    /// Starts nginx on the deploy file with `extra` replacements besides the ports (made
    /// first, on the file as shipped).
    pub async fn start_with(
        bin: &Path,
        app: u16,
        rolegate_http: u16,
        extra: &[(&str, String)],
    ) -> Self {
        let conf = repo_path("deploy/nginx/nginx.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        let listen = free_port();
        // The extra replacements first: they may name a port line as the file has it.
        let mut pairs = extra.to_vec();
        pairs.extend([
            ("127.0.0.1:8088", format!("127.0.0.1:{listen}")),
            ("127.0.0.1:8000", format!("127.0.0.1:{app}")),
            ("127.0.0.1:8080", format!("127.0.0.1:{rolegate_http}")),
        ]);
        let config = substitute(&text, &pairs);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let path: PathBuf = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let prefix = format!("{}/", dir.path().display());
        let path = path.to_str().unwrap().to_owned();
        // -e: nginx opens its default error log before reading the config; keep it in the prefix.
        let mut proc = spawn(bin, &["-p", &prefix, "-c", &path, "-e", "stderr"], dir);
        let listen: SocketAddr = ([127, 0, 0, 1], listen).into();
        wait_listening(listen, &mut proc).await;
        Nginx { proc, listen }
    }
}

/// A request that must be denied: method, target, headers, the statuses that count as denied.
pub type BadRequest<'a> = (&'a str, &'a str, Vec<(&'a str, &'a [u8])>, &'a [u16]);

/// One request of the matrix and what must come of it.
#[derive(Clone, Debug)]
pub struct Case {
    pub key: Option<&'static str>,
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    /// For 200: the scope and filters the app must see.
    pub scope: &'static str,
    pub filter_teams: &'static str,
    pub filter_owner_keys: &'static str,
}

fn case(key: &'static str, method: &'static str, path: &str, status: u16) -> Case {
    Case {
        key: Some(key),
        method,
        path: path.to_owned(),
        status,
        scope: "",
        filter_teams: "",
        filter_owner_keys: "",
    }
}

fn ok(key: &'static str, method: &'static str, path: &str, scope: &'static str) -> Case {
    Case {
        scope,
        ..case(key, method, path, 200)
    }
}

fn ok_filtered(
    key: &'static str,
    method: &'static str,
    path: &str,
    scope: &'static str,
    filter_teams: &'static str,
    filter_owner_keys: &'static str,
) -> Case {
    Case {
        filter_teams,
        filter_owner_keys,
        ..ok(key, method, path, scope)
    }
}

/// Roles × routes × own / same-team / other-team data over the default route map, with the
/// example policy (acme: olivia owner, adam admin, dana scientist, devin developer, the
/// fraud-detector project; globex: aria auditor, gus developer, dana admin).
pub fn matrix() -> Vec<Case> {
    use keys::*;
    let key_path = |p: &str| format!("/api/accounting/access-keys/{}", prefix(p));
    let (devin, adam, gus) = (
        key_path(DEVIN_DEVELOPER),
        key_path(ADAM_ADMIN),
        key_path(GUS_DEVELOPER),
    );
    vec![
        // keys.read on one key: the key's team is the data's team.
        ok(OLIVIA_OWNER, "GET", &devin, "ALL"),
        ok(OLIVIA_OWNER, "GET", &gus, "ALL"),
        ok(ADAM_ADMIN, "GET", &adam, "TEAM"),
        ok(ADAM_ADMIN, "GET", &devin, "TEAM"),
        case(ADAM_ADMIN, "GET", &gus, 403),
        ok(DEVIN_DEVELOPER, "GET", &devin, "OWN"),
        case(DEVIN_DEVELOPER, "GET", &adam, 403),
        case(DEVIN_DEVELOPER, "GET", &gus, 403),
        ok(ARIA_AUDITOR, "GET", &devin, "ALL"),
        ok(FRAUD_PROJECT, "GET", &key_path(FRAUD_PROJECT), "OWN"),
        case(FRAUD_PROJECT, "GET", &devin, 403),
        // dana's globex admin key widens what her acme key may do, in globex only.
        ok(DANA_SCIENTIST, "GET", &gus, "TEAM"),
        case(DANA_SCIENTIST, "GET", &adam, 403),
        // keys.update on a key's roles.
        ok(ADAM_ADMIN, "PUT", &format!("{devin}/roles"), "TEAM"),
        case(ADAM_ADMIN, "PUT", &format!("{gus}/roles"), 403),
        // accounts.read on a team.
        ok(ADAM_ADMIN, "GET", "/api/accounting/accounts/acme", "TEAM"),
        case(ADAM_ADMIN, "GET", "/api/accounting/accounts/globex", 403),
        case(DEVIN_DEVELOPER, "GET", "/api/accounting/accounts/acme", 403),
        ok(ARIA_AUDITOR, "GET", "/api/accounting/accounts/acme", "ALL"),
        ok(
            OLIVIA_OWNER,
            "GET",
            "/api/accounting/accounts/globex",
            "ALL",
        ),
        // jobs.cancel names no owner in the path: allowed at the widest scope, with the filter.
        ok(OLIVIA_OWNER, "DELETE", "/api/jobs/job-1", "ALL"),
        ok_filtered(ADAM_ADMIN, "DELETE", "/api/jobs/job-1", "TEAM", "acme", ""),
        ok_filtered(
            DEVIN_DEVELOPER,
            "DELETE",
            "/api/jobs/job-1",
            "OWN",
            "",
            "DevinDevKey000000001,DevinOldKey000000001",
        ),
        ok_filtered(
            DANA_SCIENTIST,
            "DELETE",
            "/api/jobs/job-1",
            "TEAM",
            "globex",
            "DanaGlobexAdmin00001,DanaScienceKey000001",
        ),
        ok_filtered(
            FRAUD_PROJECT,
            "DELETE",
            "/api/jobs/job-1",
            "OWN",
            "",
            "FraudProjectKey00001",
        ),
        case(ARIA_AUDITOR, "DELETE", "/api/jobs/job-1", 403),
        // models.deploy: data scientists only.
        ok_filtered(
            DANA_SCIENTIST,
            "POST",
            "/api/models",
            "OWN",
            "",
            "DanaGlobexAdmin00001,DanaScienceKey000001",
        ),
        case(DEVIN_DEVELOPER, "POST", "/api/models", 403),
        case(ADAM_ADMIN, "POST", "/api/models", 403),
        // audit.read (an invented path).
        ok(ARIA_AUDITOR, "GET", "/api/audit-log", "ALL"),
        case(DEVIN_DEVELOPER, "GET", "/api/audit-log", 403),
        // No route: denied; to a caller without a valid key, 401 like any other path.
        case(OLIVIA_OWNER, "GET", "/api/no-such-route", 403),
        Case {
            key: None,
            ..case("", "GET", "/api/no-such-route", 401)
        },
        // Unauthenticated: inactive key, wrong secret, unknown prefix, no key.
        case(DEVIN_OLD_INACTIVE, "GET", "/api/jobs", 401),
        case(
            "DevinDevKey000000001.dev-only-wrongsecret",
            "GET",
            "/api/jobs",
            401,
        ),
        case(
            "NoSuchKey00000000001.dev-only-wrongsecret",
            "GET",
            "/api/jobs",
            401,
        ),
        Case {
            key: None,
            ..case("", "GET", "/api/jobs", 401)
        },
    ]
}

/// The one message of every 401 through a proxy (rolegate's `UNAUTHENTICATED_MESSAGE`, and
/// nginx.conf's own body).
pub const UNAUTHENTICATED_MESSAGE: &str = "a valid API key is required";

/// Sends every case of the matrix through the proxy at `addr` and checks what the client got and
/// what the app saw. `json_message`: the denial body carries rolegate's own message (Envoy); nginx
/// answers with the same JSON shape and a generic message.
pub async fn run_matrix(addr: SocketAddr, app: &EchoApp, cases: &[Case]) {
    for c in cases {
        let auth = c.key.map(|k| format!("ApiKey {k}"));
        let headers: Vec<(&str, &[u8])> = auth
            .iter()
            .map(|a| ("Authorization", a.as_bytes()))
            .collect();
        let before = app.hits();
        let r = send(addr, c.method, &c.path, &headers).await;
        let who = c.key.map_or("-", keys::prefix);
        let label = format!("{who} {} {}", c.method, c.path);
        assert_eq!(
            r.status,
            c.status,
            "{label}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if c.status == 200 {
            let seen = r.seen();
            let get = |h: &str| seen.get(h).map_or("", String::as_str);
            assert_eq!(get("x-rolegate-key"), who, "{label}");
            assert_eq!(get("x-rolegate-scope"), c.scope, "{label}");
            assert_eq!(get("x-rolegate-filter-teams"), c.filter_teams, "{label}");
            assert_eq!(
                get("x-rolegate-filter-owner-keys"),
                c.filter_owner_keys,
                "{label}"
            );
            assert!(!get("x-rolegate-team").is_empty(), "{label}");
            assert!(!get("x-rolegate-revision").is_empty(), "{label}");
            assert_eq!(
                get("authorization"),
                "",
                "{label}: the credential reached the app"
            );
            assert_eq!(app.hits(), before + 1);
        } else {
            assert_eq!(
                app.hits(),
                before,
                "{label}: a denied request reached the app"
            );
            assert_eq!(
                r.header("content-type"),
                Some("application/json"),
                "{label}"
            );
            assert_eq!(r.json()["statusCode"], c.status, "{label}");
            if c.status == 401 {
                assert_eq!(r.header("www-authenticate"), Some("ApiKey"), "{label}");
                assert_eq!(r.json()["message"], UNAUTHENTICATED_MESSAGE, "{label}");
            }
        }
    }
}

/// Envoy's own answer when rolegate cannot be asked (down, not ready, its certificate refused):
/// 503 with the JSON shape of rolegate's denials (the deploy configs' `local_reply_config`).
pub fn unavailable_in_rolegate_s_shape(r: &Reply) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 503, "{body}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{body}");
    let v = r.json();
    let fields: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["message", "status", "statusCode"], "{body}");
    assert_eq!(v["statusCode"], 503, "{body}");
    assert_eq!(v["status"], "Service Unavailable", "{body}");
    assert_eq!(
        v["message"], "the authorization service is unavailable",
        "{body}"
    );
}

/// Sends Devin's allowed `GET /api/jobs` through the proxy at `addr` with `forged` identity
/// headers besides his credential, and asserts that rolegate's answer replaced them: the app
/// sees his key at OWN scope and his user as the owner filter, and none of the other forged
/// headers nor the credential.
pub async fn forged_identity_is_replaced(addr: SocketAddr, forged: &[(&str, &[u8])]) {
    let credential = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let mut headers: Vec<(&str, &[u8])> = vec![("Authorization", credential.as_bytes())];
    headers.extend_from_slice(forged);
    let r = send(addr, "GET", "/api/jobs", &headers).await;
    assert_eq!(r.status, 200);
    let seen = r.seen();
    assert_eq!(seen["x-rolegate-scope"], "OWN");
    assert_eq!(seen["x-rolegate-key"], "DevinDevKey000000001");
    // A collection call at OWN: the owner filter names his user.
    assert_eq!(seen["x-rolegate-filter-owner-user"], "devin");
    let answered = [
        "x-rolegate-scope",
        "x-rolegate-key",
        "x-rolegate-filter-owner-user",
    ];
    let gone = forged
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .filter(|name| !answered.contains(&name.as_str()))
        .chain(["authorization".to_owned()]);
    for gone in gone {
        assert!(
            !seen.contains_key(&gone),
            "{gone} reached the app: {seen:?}"
        );
    }
}

/// Sends `method target` with `headers` and asserts the status and, for a denial, that the app
/// saw nothing; returns the reply.
pub async fn expect(
    addr: SocketAddr,
    app: &EchoApp,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
    status: u16,
) -> Reply {
    let before = app.hits();
    let r = send(addr, method, target, headers).await;
    assert_eq!(
        r.status,
        status,
        "{method} {target}: {}",
        String::from_utf8_lossy(&r.body)
    );
    if status != 200 {
        assert_eq!(app.hits(), before, "{method} {target} reached the app");
        assert_eq!(r.json()["statusCode"], status, "{method} {target}");
    }
    r
}

/// Paths that a server might serve as `/api/jobs/statistics` (statistics.read, which a
/// developer lacks) while they read as `/api/jobs/{id}` (jobs.read, which they hold): each is
/// 400 for Devin. Without a key: a `;` is refused as syntax (400, before the credential: it
/// says nothing about the route map); the others are 401 like every path.
pub async fn near_miss_paths_are_refused(addr: SocketAddr, app: &EchoApp) {
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let auth: &[(&str, &[u8])] = &[("Authorization", devin.as_bytes())];
    expect(addr, app, "GET", "/api/jobs/job-1", auth, 200).await;
    expect(addr, app, "GET", "/api/jobs/statistics", auth, 403).await;
    for (path, anonymous) in [
        ("/api/jobs/statistics;x", 400),
        ("/api/jobs/statistics;jsessionid=1", 400),
        ("/api/jobs/STATISTICS", 401),
        ("/api/jobs/Statistics", 401),
        ("/api/jobs/statistics.json", 401),
    ] {
        expect(addr, app, "GET", path, auth, 400).await;
        expect(addr, app, "GET", path, &[], anonymous).await;
    }
}

/// An unknown prefix, a wrong secret, an inactive key, a malformed key and no key at all get
/// the very same 401: status, `www-authenticate` and body, byte for byte.
pub async fn unauthenticated_callers_learn_nothing(addr: SocketAddr, app: &EchoApp) {
    let presented = [
        Some("NoSuchKey00000000001.dev-only-devindevkey".to_owned()),
        Some("DevinDevKey000000001.dev-only-wrongsecret".to_owned()),
        Some(keys::DEVIN_OLD_INACTIVE.to_owned()),
        Some("no-dot-here".to_owned()),
        None,
    ];
    let mut seen = Vec::new();
    for key in &presented {
        let auth = key.as_ref().map(|k| format!("ApiKey {k}"));
        let headers: Vec<(&str, &[u8])> = auth
            .iter()
            .map(|a| ("Authorization", a.as_bytes()))
            .collect();
        for path in [
            "/api/jobs",
            "/api/accounting/roles/r-1",
            "/api/no-such-route",
        ] {
            let r = expect(addr, app, "GET", path, &headers, 401).await;
            seen.push((
                r.header("www-authenticate").map(str::to_owned),
                r.header("content-type").map(str::to_owned),
                r.body,
            ));
        }
    }
    let first = seen[0].clone();
    assert_eq!(first.0.as_deref(), Some("ApiKey"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&first.2).unwrap()["message"],
        UNAUTHENTICATED_MESSAGE
    );
    for (i, other) in seen.iter().enumerate() {
        assert_eq!(other, &first, "answer {i} differs from the first");
    }
}

/// Devin's allowed `GET /api/jobs` with identity headers forged with underscores (and another
/// case): the reply, for the caller to judge (removed, or refused).
pub async fn send_underscore_forgeries(addr: SocketAddr) -> Reply {
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    send(
        addr,
        "GET",
        "/api/jobs",
        &[
            ("Authorization", devin.as_bytes()),
            ("x_rolegate_user", b"olivia"),
            ("X_Rolegate_Scope", b"ALL"),
            ("x-rolegate_team", b"globex"),
        ],
    )
    .await
}

/// The reply to [`send_underscore_forgeries`] came through, with rolegate's identity and none
/// of the forged headers.
pub fn underscore_forgeries_removed(r: &Reply) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.seen();
    assert_eq!(seen["x-rolegate-user"], "devin");
    assert_eq!(seen["x-rolegate-scope"], "OWN");
    assert_eq!(seen["x-rolegate-team"], "acme");
    for name in ["x_rolegate_user", "x_rolegate_scope", "x-rolegate_team"] {
        assert!(!seen.contains_key(name), "{name} reached the app: {seen:?}");
    }
    assert!(
        !seen.values().any(|v| v == "olivia" || v == "globex"),
        "a forged value reached the app: {seen:?}"
    );
}

/// The example policy with routes whose team comes from `?team=` and from `X-Team` (both
/// reports.export, which Rita holds at TEAM in globex). They replace the default map.
pub fn policy_with_report_routes(policy: &str) -> String {
    format!(
        "{policy}\nroutes:\n  - method: GET\n    path: /reports/{{name}}\n    entitlement: reports.export\n    resource: {{ team: query.team }}\n  - method: GET\n    path: /reports/{{name}}/by-header\n    entitlement: reports.export\n    resource: {{ team: header.x-team }}\n"
    )
}

/// Waits (bounded) until Rita's `GET /reports/usage?team=globex` is allowed through `addr`:
/// the policy's routes are installed.
pub async fn wait_for_report_routes(addr: SocketAddr) {
    let rita = format!("ApiKey {}", keys::RITA_REVIEWER);
    for _ in 0..200 {
        let r = send(
            addr,
            "GET",
            "/reports/usage?team=globex",
            &[("Authorization", rita.as_bytes())],
        )
        .await;
        if r.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the policy's report routes were not installed");
}

/// With [`policy_with_report_routes`] in force: the query parameter is matched by exact name,
/// and a missing or empty one is 400, never a collection check (which Rita would pass).
pub async fn query_sources_fail_closed(addr: SocketAddr, app: &EchoApp) {
    let rita = format!("ApiKey {}", keys::RITA_REVIEWER);
    let auth: &[(&str, &[u8])] = &[("Authorization", rita.as_bytes())];
    let r = expect(addr, app, "GET", "/reports/usage?team=globex", auth, 200).await;
    assert_eq!(r.seen()["x-rolegate-scope"], "TEAM");
    expect(addr, app, "GET", "/reports/usage?team=acme", auth, 403).await;
    for target in [
        "/reports/usage",
        "/reports/usage?team=",
        "/reports/usage?TEAM=globex",
        "/reports/usage?Team=globex&x=1",
    ] {
        expect(addr, app, "GET", target, auth, 400).await;
    }
}

/// With [`policy_with_report_routes`] in force: the header is found whatever its case, and a
/// missing or empty one is 400.
pub async fn header_sources_fail_closed(addr: SocketAddr, app: &EchoApp) {
    let rita = format!("ApiKey {}", keys::RITA_REVIEWER);
    let with = |team: Option<(&'static str, &'static [u8])>| {
        let mut h: Vec<(&str, Vec<u8>)> = vec![("Authorization", rita.as_bytes().to_vec())];
        h.extend(team.map(|(k, v)| (k, v.to_vec())));
        h
    };
    let path = "/reports/usage/by-header";
    for (team, status) in [
        (Some(("x-team", &b"globex"[..])), 200),
        (Some(("X-TEAM", &b"globex"[..])), 200),
        (Some(("x-team", &b"acme"[..])), 403),
        (Some(("x-team", &b""[..])), 400),
        (None, 400),
    ] {
        let h = with(team);
        let h: Vec<(&str, &[u8])> = h.iter().map(|(k, v)| (*k, &v[..])).collect();
        expect(addr, app, "GET", path, &h, status).await;
    }
}
