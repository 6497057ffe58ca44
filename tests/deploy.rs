//! The files in deploy/ stay in step with the code: the example policy validates, the sidecar
//! runs locked down and shows only its probes on the pod IP, and the server started with the
//! manifest's flags does so. The other manifests, the Dockerfile and the Grafana dashboard:
//! tests/deploy/manifests.rs.

mod common;
#[path = "deploy/manifests.rs"]
mod manifests;
#[path = "deploy/schema.rs"]
mod schema;

use std::process::Command;

use common::repo_path;

#[test]
fn the_kubernetes_sidecar_probes_real_endpoints() {
    let manifest = std::fs::read_to_string(repo_path("deploy/kubernetes/sidecar.yaml")).unwrap();
    assert!(manifest.contains("path: /readyz") && manifest.contains("path: /healthz"));
}

#[test]
fn the_example_policy_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .arg("validate")
        .arg(repo_path("deploy/examples/policy.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifest, as JSON values.
fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_path("deploy/kubernetes/sidecar.yaml")).unwrap();
    serde_saphyr::from_str(&text).expect("the manifest is YAML")
}

/// The rolegate container of the manifest.
fn rolegate_container(manifest: &serde_json::Value) -> serde_json::Value {
    manifest["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "rolegate")
        .expect("a rolegate container")
        .clone()
}

/// The value of `--flag=value` in the container's args.
fn arg(container: &serde_json::Value, flag: &str) -> Option<String> {
    container["args"]
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix(&format!("--{flag}=")))
        .map(str::to_owned)
        .next()
}

#[test]
fn the_kubernetes_sidecar_runs_locked_down() {
    let c = rolegate_container(&manifest());
    let sc = &c["securityContext"];
    for id in ["runAsUser", "runAsGroup"] {
        assert!(
            sc[id].as_u64().is_some_and(|v| v > 0),
            "{id} non-root: {sc}"
        );
    }
    assert_eq!(sc["runAsNonRoot"], true, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    assert!(sc["capabilities"].get("add").is_none(), "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");
}

#[test]
fn only_the_probes_are_on_the_pod_ip() {
    let c = rolegate_container(&manifest());
    let addr = |flag: &str| -> std::net::SocketAddr {
        arg(&c, flag)
            .unwrap_or_else(|| panic!("--{flag} is set"))
            .parse()
            .unwrap()
    };
    // gRPC (Check, Watch, Admin) and HTTP (the auth endpoint, /status) on loopback only.
    assert!(addr("grpc-listen").ip().is_loopback());
    assert!(addr("http-listen").ip().is_loopback());
    // The probe listener is what the pod IP shows, and the only declared port.
    let probe = addr("probe-listen");
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["containerPort"], probe.port());
    for (probe_kind, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe_kind]["httpGet"];
        assert_eq!(get["path"], path, "{probe_kind}");
        assert_eq!(
            get["port"], ports[0]["name"],
            "{probe_kind} uses the probe port"
        );
    }
}

#[tokio::test]
async fn the_manifests_flags_serve_probes_apart_from_the_auth_endpoint() {
    // The manifest's args, with the example policy and free ports on loopback (same roles).
    let c = rolegate_container(&manifest());
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (grpc, http, probe) = (port(), port(), port());
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.split_once('=') {
                Some(("--policy", _)) => format!(
                    "--policy={}",
                    repo_path("deploy/examples/policy.yaml").display()
                ),
                Some(("--grpc-listen", _)) => format!("--grpc-listen=127.0.0.1:{grpc}"),
                Some(("--http-listen", _)) => format!("--http-listen=127.0.0.1:{http}"),
                Some(("--probe-listen", _)) => format!("--probe-listen=127.0.0.1:{probe}"),
                _ => a.to_owned(),
            }
        })
        .collect();
    /// Stops the server however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_rolegate"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe_addr: std::net::SocketAddr = ([127, 0, 0, 1], probe).into();
    let http_addr: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    common::wait_until_ready(probe_addr, std::time::Duration::from_secs(30)).await;
    assert_eq!(
        common::http_get(probe_addr, "/healthz").await.unwrap().0,
        200
    );
    for path in ["/status", "/authz", "/authz/ext/api/jobs"] {
        let (code, _) = common::http_get(probe_addr, path).await.unwrap();
        assert_eq!(code, 404, "{path} is not on the probe listener");
    }
    assert_eq!(common::http_get(http_addr, "/status").await.unwrap().0, 200);
}

/// The hubs-on-etcd manifest passes only flags `rolegate serve` has, and its sidecars list every
/// hub of the StatefulSet.
#[test]
fn the_etcd_hubs_manifest_uses_only_real_flags() {
    let manifest = std::fs::read_to_string(repo_path("deploy/kubernetes/etcd-hubs.yaml")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let args: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .collect();
    assert!(args.len() >= 20, "{args:?}");
    for arg in &args {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
            "serve has no --{flag}"
        );
    }
    let upstream = args
        .iter()
        .find_map(|a| a.strip_prefix("upstream="))
        .expect("the sidecars follow the hubs");
    assert_eq!(upstream.split(',').count(), 3, "{upstream}");
    assert!(manifest.contains("replicas: 3"));
}
