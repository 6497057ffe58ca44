//! The real `rolegate` binary as a child process on the embedded store, for the tests that kill
//! it (SIGKILL, a full disk) or read its logs; everything else uses [`super::TestServer`].

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::admin::bootstrap_hash;

/// The real `rolegate` binary: `serve` with the `origin` flags on ephemeral ports, logging JSON
/// (info) to a piped stderr, where the gRPC address is read from.
pub fn serve_command<S: AsRef<OsStr>>(origin: &[S]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rolegate"));
    command
        .arg("serve")
        .args(origin)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The real binary serving the embedded store in `dir` ([`serve_command`]), with the bootstrap
/// key of [`super::BOOTSTRAP`].
pub fn store_command(dir: &Path) -> Command {
    let mut command = serve_command(&[OsStr::new("--data-dir"), dir.as_os_str()]);
    command.args(["--bootstrap-key-sha256", &bootstrap_hash()]);
    command
}

/// [`store_command`] with `extra` flags, started; returns the child and its gRPC address.
pub fn spawn_store(dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut command = store_command(dir);
    command.args(extra);
    spawn_logging(command)
}

/// The real binary on the etcd origin at `endpoints` under `prefix`, with the bootstrap key of
/// [`super::BOOTSTRAP`], started; returns the child and its gRPC address.
pub fn spawn_on_etcd(endpoints: &str, prefix: &str) -> (Child, String) {
    let mut command = serve_command(&["--etcd-endpoints", endpoints, "--etcd-prefix", prefix]);
    command.args(["--bootstrap-key-sha256", &bootstrap_hash()]);
    spawn_logging(command)
}

/// The real binary serving the policy file `policy` with `extra` flags, started; returns the
/// child and its gRPC address.
pub fn spawn_policy(policy: &Path, extra: &[&str]) -> (Child, String) {
    let mut command = serve_command(&[OsStr::new("--policy"), policy.as_os_str()]);
    command.args(extra);
    spawn_logging(command)
}

/// Starts `command` (JSON logs on a piped stderr) and reads its gRPC address from the log.
fn spawn_logging(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().expect("spawn rolegate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v.get("grpc").and_then(|a| a.as_str())
            {
                let _ = tx.send(addr.to_owned());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs its gRPC address");
    (child, format!("http://{addr}"))
}
