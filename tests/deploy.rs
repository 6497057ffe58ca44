//! The files in deploy/ stay in step with the code: the example policy validates, and every
//! flag the Kubernetes manifest passes to `rolegate serve` exists.

mod common;

use std::process::Command;

use common::repo_path;

#[test]
fn the_kubernetes_sidecar_uses_only_real_flags() {
    let manifest = std::fs::read_to_string(repo_path("deploy/kubernetes/sidecar.yaml")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert!(flags.len() >= 5, "{flags:?}");
    for flag in flags {
        assert!(
            help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
            "serve has no --{flag}"
        );
    }
    // The probes point at endpoints the server has.
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
