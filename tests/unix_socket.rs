//! `rolegate serve --grpc-listen unix:PATH --http-listen unix:PATH`, as a user runs it: the socket
//! files (mode 0660) serve gRPC and HTTP, the client commands and `bench` reach the server with
//! `--addr unix:PATH`, a socket file left by a killed process is replaced, anything else at the
//! path is an error that leaves it alone, TLS is refused on a socket, and SIGTERM removes the
//! files.

mod common;

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{keys, repo_path};

const BIN: &str = env!("CARGO_BIN_EXE_rolegate");

/// A `rolegate serve` on the example policy with both ports on sockets in a directory of its own.
struct Served {
    child: Child,
    dir: tempfile::TempDir,
}

impl Served {
    fn start(extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--policy"])
            .arg(repo_path("deploy/examples/policy.yaml"))
            .arg(format!(
                "--grpc-listen=unix:{}",
                dir.path().join("grpc.sock").display()
            ))
            .arg(format!(
                "--http-listen=unix:{}",
                dir.path().join("http.sock").display()
            ))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Served { child, dir }
    }

    fn grpc(&self) -> PathBuf {
        self.dir.path().join("grpc.sock")
    }

    fn http(&self) -> PathBuf {
        self.dir.path().join("http.sock")
    }

    fn addr(&self) -> String {
        format!("unix:{}", self.grpc().display())
    }

    /// Waits (bounded) until `/readyz` on the HTTP socket answers 200.
    async fn wait_ready(&mut self) {
        for _ in 0..400 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rolegate exited before it was ready: {status}");
            }
            if get(&self.http(), "/readyz")
                .await
                .is_ok_and(|(c, _)| c == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("rolegate did not become ready on {}", self.http().display());
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("rolegate did not stop on SIGTERM");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over the Unix socket at `path`: (status code, body).
async fn get(path: &Path, target: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(path).await?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: rolegate\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((code, body.unwrap_or_default()))
}

/// `rolegate args` (without the client variables a test runner may have set), off the runtime's
/// threads: (exit code, stdout, stderr).
async fn rolegate(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(&args);
        for var in ["ROLEGATE_ADDR", "ROLEGATE_API_KEY", "ROLEGATE_CHECK_KEY"] {
            cmd.env_remove(var);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_serve_on_unix_sockets_and_sigterm_removes_them() {
    let mut served = Served::start(&[]);
    served.wait_ready().await;
    for path in [served.grpc(), served.http()] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket(), "{}", path.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o660,
            "{}",
            path.display()
        );
    }
    let (code, body) = get(&served.http(), "/status").await.unwrap();
    assert_eq!(code, 200, "{body}");

    // Every kind of client command reaches the gRPC socket with --addr unix:PATH.
    let addr = served.addr();
    let runs: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec![
                "check",
                "--key",
                keys::DANA_SCIENTIST,
                "--entitlement",
                "jobs.read",
            ],
            0,
            "allowed:  true",
        ),
        (
            vec![
                "check",
                "--key",
                keys::ARIA_AUDITOR,
                "--entitlement",
                "jobs.cancel",
                "--team",
                "acme",
            ],
            1,
            "allowed:  false",
        ),
        (
            vec![
                "watch",
                "--snapshot",
                "--count",
                "1",
                "--key",
                keys::OLIVIA_OWNER,
            ],
            0,
            " ",
        ),
        (
            vec!["teams", "list", "--key", keys::OLIVIA_OWNER],
            0,
            "globex",
        ),
        (
            vec!["routes", "list", "--key", keys::OLIVIA_OWNER],
            0,
            "GET",
        ),
    ];
    for (list, want, expected) in runs {
        let mut all = args(&list);
        all.extend(args(&["--addr", &addr]));
        let (code, out, err) = rolegate(all).await;
        assert_eq!(code, want, "{list:?}: {out}{err}");
        assert!(out.contains(expected), "{list:?}: {out}");
    }
    // A Unix socket is plaintext: TLS options with it are a clear error.
    let (code, _, err) = rolegate(args(&[
        "check",
        "--addr",
        &addr,
        "--ca",
        "/nonexistent/ca.pem",
        "--key",
        keys::DANA_SCIENTIST,
        "--entitlement",
        "jobs.read",
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("a Unix socket is plaintext"), "{err}");

    // A second server on the same socket: refused, and the first keeps its socket.
    let dir = served.dir.path().to_owned();
    let (code, _, err) = rolegate(vec![
        "serve".into(),
        "--policy".into(),
        repo_path("deploy/examples/policy.yaml")
            .display()
            .to_string(),
        format!("--grpc-listen=unix:{}", dir.join("grpc.sock").display()),
        format!(
            "--http-listen=unix:{}",
            dir.join("other-http.sock").display()
        ),
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another process is serving on"), "{err}");
    assert!(err.contains("--grpc-listen"), "{err}");
    assert_eq!(get(&served.http(), "/readyz").await.unwrap().0, 200);

    let status = served.terminate();
    assert!(status.success(), "{status}");
    assert!(
        !served.grpc().exists() && !served.http().exists(),
        "socket files removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_anything_else_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let policy = repo_path("deploy/examples/policy.yaml")
        .display()
        .to_string();
    let serve = |grpc: &Path, http: &Path| {
        vec![
            "serve".to_owned(),
            "--policy".to_owned(),
            policy.clone(),
            format!("--grpc-listen=unix:{}", grpc.display()),
            format!("--http-listen=unix:{}", http.display()),
            "--shutdown-grace=1s".to_owned(),
        ]
    };

    // A regular file, a directory: errors naming the flag, and the file is untouched.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let (code, _, err) = rolegate(serve(&file, &dir.path().join("h.sock"))).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is a file that is not a socket") && err.contains("--grpc-listen"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let (code, _, err) = rolegate(serve(&dir.path().join("g.sock"), dir.path())).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is a directory") && err.contains("--http-listen"),
        "{err}"
    );

    // TLS is served on TCP only.
    let mut tls = serve(&dir.path().join("g.sock"), &dir.path().join("h.sock"));
    tls.extend(args(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]));
    let (code, _, err) = rolegate(tls).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("TLS (--tls-cert) is served on TCP only"),
        "{err}"
    );

    // A socket file nobody accepts on (its process was killed): replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(
        std::fs::symlink_metadata(&stale)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let mut served = Served {
        child: Command::new(BIN)
            .args(serve(&stale, &dir.path().join("h.sock")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        dir: tempfile::tempdir().unwrap(),
    };
    // `Served` reads its sockets from its own directory: wait on this one's HTTP socket here.
    let http = dir.path().join("h.sock");
    let mut ready = false;
    for _ in 0..400 {
        if get(&http, "/readyz").await.is_ok_and(|(c, _)| c == 200) {
            ready = true;
            break;
        }
        assert!(
            served.child.try_wait().unwrap().is_none(),
            "rolegate exited"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        ready,
        "rolegate did not become ready on a stale socket's path"
    );
    let (code, out, err) = rolegate(args(&[
        "check",
        "--addr",
        &format!("unix:{}", stale.display()),
        "--key",
        keys::DANA_SCIENTIST,
        "--entitlement",
        "jobs.read",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(served.terminate().success());
}

/// `rolegate bench --addr unix:PATH --baseline-addr HOST:PORT`: both sides measured, round by
/// round, and their ratio printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_compares_a_unix_socket_with_loopback_tcp() {
    let tcp = common::TestServer::policy(&common::example_policy()).await;
    let mut served = Served::start(&[]);
    served.wait_ready().await;
    let tcp_addr = tcp.grpc_addr.to_string();
    let (code, out, err) = rolegate(args(&[
        "bench",
        "--addr",
        &served.addr(),
        "--baseline-addr",
        &tcp_addr,
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--concurrency",
        "2",
        "--connections",
        "1",
        "--rounds",
        "2",
        "--key",
        keys::DANA_SCIENTIST,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let rounds: Vec<&str> = out.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(rounds.len(), 6, "{out}");
    for round in rounds.chunks(3) {
        assert!(round[0].contains(&tcp_addr), "{out}");
        assert!(
            round[1].contains(&served.addr()) && round[1].contains(" 0 errors"),
            "{out}"
        );
        assert!(!round[1].contains(" 0 allowed"), "{out}");
        assert!(round[2].contains("ratio"), "{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("ratio") && l.contains(&format!("× {tcp_addr}'s"))),
        "{out}"
    );
}
