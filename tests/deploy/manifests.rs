//! deploy/kubernetes/, the Dockerfile and deploy/grafana/ stay in step with the code and with
//! each other:
//!
//! - every manifest validates against the Kubernetes schemas (`kubernetes-validate --strict`,
//!   offline; PyPI). It has no schema for custom resources and only warns about them, so the
//!   ServiceMonitor, PodMonitor, ServiceEntry and AuthorizationPolicy (and Istio's mesh config)
//!   are checked against structural subsets of their CRDs' schemas in tests/k8s-schemas/,
//!   written here: the fields these manifests may use, with their types and enums, anything
//!   else refused;
//! - every flag and `ROLEGATE_*` variable a manifest or the Dockerfile gives rolegate exists;
//! - every rolegate container runs locked down;
//! - the pieces point at each other: followers at the hub's Service, the app at its sidecar's
//!   socket, Prometheus at the HTTP port, Istio's provider at rolegate in the same pod;
//! - the Dockerfile is multi-stage and runs as a non-root user;
//! - the dashboard is JSON and queries only documented metrics.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
};

use rolegate::app::ListenAddr;
use serde_json::Value;

use crate::{common, common::repo_path, schema};

/// The kinds of custom resources the manifests use, and their schema files.
const CUSTOM: [(&str, &str); 4] = [
    ("ServiceMonitor", "servicemonitor.json"),
    ("PodMonitor", "podmonitor.json"),
    ("ServiceEntry", "serviceentry.json"),
    ("AuthorizationPolicy", "authorizationpolicy.json"),
];

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// Every document of every manifest, with its file's name.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for path in manifest_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
        docs.extend(
            parsed
                .into_iter()
                .filter(|d| !d.is_null())
                .map(|d| (name.clone(), d)),
        );
    }
    docs
}

/// The one document of `kind` in `file`.
fn document(file: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = documents()
        .into_iter()
        .filter(|(f, d)| f == file && d["kind"] == kind)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in {file}");
    found.remove(0)
}

/// The pod template's spec of a workload.
fn pod_spec(doc: &Value) -> Option<&Value> {
    let spec = &doc["spec"]["template"]["spec"];
    spec.is_object().then_some(spec)
}

fn containers(doc: &Value) -> Vec<&Value> {
    pod_spec(doc)
        .and_then(|s| s["containers"].as_array())
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

/// The rolegate containers of a workload.
fn rolegate_containers(doc: &Value) -> Vec<&Value> {
    containers(doc)
        .into_iter()
        .filter(|c| {
            c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("rolegate:"))
        })
        .collect()
}

fn container<'a>(doc: &'a Value, name: &str) -> &'a Value {
    containers(doc)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("a container {name}"))
}

/// The value of `--flag=value` in a container's args.
fn arg(container: &Value, flag: &str) -> Option<String> {
    container["args"]
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix(&format!("--{flag}=")))
        .map(str::to_owned)
        .next()
}

fn listen(container: &Value, flag: &str) -> ListenAddr {
    let value = arg(container, flag).unwrap_or_else(|| panic!("--{flag} is set"));
    ListenAddr::from_str(&value).unwrap()
}

/// The value of a container's environment variable `name`.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn help(command: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args([command, "--help"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `help` lists `--flag`.
fn has_flag(help: &str, flag: &str) -> bool {
    help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n"))
}

/// The flags of `args` (`--name=value` or `--name`), after the `serve` command.
fn flags_of<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    args.into_iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|f| f.split('=').next().unwrap().to_owned())
        .collect()
}

/// The Dockerfile's instructions (continuation lines joined), as (INSTRUCTION, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((word.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The Dockerfile's `CMD` or `ENTRYPOINT` (exec form) as its words.
fn exec_form(instructions: &[(String, String)], which: &str) -> Vec<String> {
    let (_, rest) = instructions
        .iter()
        .rfind(|(i, _)| i == which)
        .unwrap_or_else(|| panic!("a {which}"));
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{which} in exec (JSON) form: {e}"))
}

#[test]
fn every_flag_and_variable_given_to_rolegate_exists() {
    let serve = help("serve");
    let check = help("check");
    let mut seen = 0;
    for (file, doc) in documents() {
        for c in rolegate_containers(&doc) {
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: rolegate has args"))
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(args[0], "serve", "{file}");
            for flag in flags_of(args[1..].iter().copied()) {
                assert!(has_flag(&serve, &flag), "{file}: serve has no --{flag}");
                seen += 1;
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap();
                if name.starts_with("ROLEGATE_") {
                    assert!(
                        serve.contains(&format!("[env: {name}")),
                        "{file}: serve reads no {name}"
                    );
                    seen += 1;
                }
            }
        }
        // The apps' client settings: what `rolegate check` and the other commands read.
        for c in containers(&doc) {
            if let Some(addr) = env(c, "ROLEGATE_ADDR") {
                assert!(check.contains("[env: ROLEGATE_ADDR"), "{file}");
                let addr = addr["value"].as_str().unwrap();
                assert!(
                    addr.starts_with("http://") || addr.starts_with("unix:/"),
                    "{file}: {addr}"
                );
            }
        }
    }
    let docker = dockerfile();
    let cmd = exec_form(&docker, "CMD");
    assert_eq!(cmd[0], "serve");
    for flag in flags_of(cmd[1..].iter().map(String::as_str)) {
        assert!(has_flag(&serve, &flag), "Dockerfile: serve has no --{flag}");
        seen += 1;
    }
    assert!(seen >= 25, "{seen} flags and variables checked");
}

#[test]
fn every_rolegate_container_runs_locked_down() {
    let mut checked = 0;
    for (file, doc) in documents() {
        for c in rolegate_containers(&doc) {
            let sc = &c["securityContext"];
            for id in ["runAsUser", "runAsGroup"] {
                assert!(sc[id].as_u64().is_some_and(|v| v > 0), "{file}: {id}");
            }
            assert_eq!(sc["runAsNonRoot"], true, "{file}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{file}"
            );
            assert!(sc["capabilities"].get("add").is_none(), "{file}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{file}");
            // Probed on the probe-only listener.
            let probe = listen(c, "probe-listen");
            let ListenAddr::Tcp(probe) = probe else {
                panic!("{file}: probes over TCP")
            };
            for kind in ["readinessProbe", "livenessProbe"] {
                let port = &c[kind]["httpGet"]["port"];
                let declared = c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| &p["name"] == port)
                    .unwrap_or_else(|| panic!("{file}: {kind} names a declared port"));
                assert_eq!(declared["containerPort"], probe.port(), "{file}: {kind}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked}");
}

#[test]
fn every_kubernetes_manifest_validates_against_the_kubernetes_schemas() {
    let test = "every_kubernetes_manifest_validates_against_the_kubernetes_schemas";
    let Some(bin) = common::require_tool(
        "kubernetes-validate",
        "ROLEGATE_KUBERNETES_VALIDATE_BIN",
        test,
    ) else {
        return;
    };
    let files = manifest_files();
    let out = Command::new(&bin)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let docs = documents();
    let custom: Vec<&str> = CUSTOM.iter().map(|(k, _)| *k).collect();
    let core = docs
        .iter()
        .filter(|(_, d)| !custom.contains(&d["kind"].as_str().unwrap()))
        .count();
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, core, "every core resource passed:\n{text}");
    // What it has no schema for: only the custom resources, checked below.
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            custom
                .iter()
                .any(|k| line.contains(&format!("schema for kind {k} "))),
            "{line}"
        );
    }
    // It does refuse what the schemas do not allow (so a pass means something).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let sidecar = std::fs::read_to_string(repo_path("deploy/kubernetes/sidecar.yaml")).unwrap();
    std::fs::write(
        &bad,
        sidecar.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
    )
    .unwrap();
    let out = Command::new(&bin)
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `schema` (a file of tests/k8s-schemas/) and its problems with `value`.
fn schema_problems(file: &str, value: &Value) -> Vec<String> {
    let path = repo_path("tests/k8s-schemas").join(file);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    schema::problems(&schema, value)
}

/// Istio's mesh config, as the `istio` ConfigMap of istio.yaml holds it.
fn mesh_config() -> Value {
    let cm = document("istio.yaml", "ConfigMap");
    serde_saphyr::from_str(cm["data"]["mesh"].as_str().unwrap()).unwrap()
}

#[test]
fn custom_resources_match_their_crd_schemas() {
    let mut checked = BTreeSet::new();
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap();
        if let Some((_, schema)) = CUSTOM.iter().find(|(k, _)| *k == kind) {
            let problems = schema_problems(schema, &doc);
            assert!(problems.is_empty(), "{file}: {kind}: {problems:#?}");
            checked.insert(kind.to_owned());
        }
    }
    assert_eq!(checked.len(), CUSTOM.len(), "{checked:?}");
    let problems = schema_problems("meshconfig.json", &mesh_config());
    assert!(problems.is_empty(), "istio.yaml mesh: {problems:#?}");

    // The checker refuses a misspelled field, a wrong enum value and a wrong type.
    let mut policy = document("istio.yaml", "AuthorizationPolicy");
    policy["spec"]["action"] = "custom".into();
    policy["spec"]["provider"] = serde_json::json!({ "nmae": "rolegate" });
    policy["spec"]["rules"][0]["to"][0]["operation"]["paths"] = "/api/*".into();
    let problems = schema_problems("authorizationpolicy.json", &policy);
    assert_eq!(problems.len(), 4, "{problems:#?}"); // action, nmae, the missing name, paths
}

#[test]
fn istio_asks_rolegate_in_the_same_pod() {
    let policy = document("istio.yaml", "AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    let provider = policy["spec"]["provider"]["name"].as_str().unwrap();
    let mesh = mesh_config();
    let entry = mesh["extensionProviders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == provider)
        .unwrap_or_else(|| panic!("an extension provider named {provider}"));
    let grpc = &entry["envoyExtAuthzGrpc"];
    assert_eq!(grpc["failOpen"], false, "failure closes");
    // The provider's host is a ServiceEntry on the pod's loopback, at rolegate's gRPC port.
    let service_entry = document("istio.yaml", "ServiceEntry");
    let se = &service_entry["spec"];
    assert!(se["hosts"].as_array().unwrap().contains(&grpc["service"]));
    assert_eq!(se["endpoints"][0]["address"], "127.0.0.1");
    assert_eq!(se["ports"][0]["number"], grpc["port"]);
    assert_eq!(se["ports"][0]["protocol"], "GRPC");
    // The policy selects the pods of sidecar.yaml, whose rolegate listens there.
    let sidecar = document("sidecar.yaml", "Deployment");
    let labels = &sidecar["spec"]["template"]["metadata"]["labels"];
    for (k, v) in policy["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "the policy selects sidecar.yaml's pods");
    }
    let ListenAddr::Tcp(grpc_listen) = listen(rolegate_containers(&sidecar)[0], "grpc-listen")
    else {
        panic!("sidecar.yaml's gRPC on TCP")
    };
    assert!(grpc_listen.ip().is_loopback());
    assert_eq!(grpc["port"], grpc_listen.port());
}

#[test]
fn prometheus_scrapes_metrics_on_the_http_ports() {
    // The hub: through its Service's port that leads to --http-listen, over TLS.
    let hub = document("hub.yaml", "StatefulSet");
    let hub_rolegate = rolegate_containers(&hub)[0];
    let service = document("hub.yaml", "Service");
    let monitor = document("monitoring.yaml", "ServiceMonitor");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "selects the hub's Service"
        );
    }
    assert!(
        monitor["spec"]["namespaceSelector"]["matchNames"]
            .as_array()
            .unwrap()
            .contains(&service["metadata"]["namespace"])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the endpoint names a Service port");
    let container_port = hub_rolegate["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service port leads to a container port");
    let ListenAddr::Tcp(http) = listen(hub_rolegate, "http-listen") else {
        panic!("the hub's HTTP port on TCP")
    };
    assert_eq!(container_port["containerPort"], http.port());
    assert!(arg(hub_rolegate, "tls-cert").is_some());
    assert_eq!(endpoint["scheme"], "https", "the hub serves TLS");

    // The follower sidecars: each pod's port named in the PodMonitor is rolegate's HTTP port.
    let app = document("followers.yaml", "Deployment");
    let follower = rolegate_containers(&app)[0];
    let pod_monitor = document("monitoring.yaml", "PodMonitor");
    for (k, v) in pod_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&app["spec"]["template"]["metadata"]["labels"][k], v);
    }
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let ListenAddr::Tcp(http) = listen(follower, "http-listen") else {
        panic!("the follower's HTTP port on TCP, for Prometheus")
    };
    let declared = follower["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the PodMonitor names a port of the sidecar");
    assert_eq!(declared["containerPort"], http.port());
}

#[test]
fn followers_follow_the_hub_and_their_app_uses_the_socket() {
    let hub = document("hub.yaml", "StatefulSet");
    assert_eq!(hub["spec"]["replicas"], 1, "one writer");
    let hub_rolegate = rolegate_containers(&hub)[0];
    // The store on the StatefulSet's volume claim.
    let data = arg(hub_rolegate, "data-dir").unwrap();
    let mount = hub_rolegate["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == data.as_str())
        .expect("the data directory is a mounted volume");
    let claims = hub["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == mount["name"])
    );
    assert!(env(hub_rolegate, "ROLEGATE_BOOTSTRAP_KEY_SHA256").is_some());

    // The follower dials the hub's Service at its gRPC port, over TLS.
    let service = document("hub.yaml", "Service");
    let grpc_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap()["port"]
        .clone();
    let app = document("followers.yaml", "Deployment");
    let follower = rolegate_containers(&app)[0];
    let upstream = arg(follower, "upstream").unwrap();
    assert_eq!(
        upstream,
        format!(
            "https://{}.{}.svc:{grpc_port}",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        )
    );
    assert!(arg(follower, "upstream-ca").is_some());
    let key = env(follower, "ROLEGATE_UPSTREAM_KEY").unwrap();
    assert!(
        key["valueFrom"]["secretKeyRef"].is_object(),
        "the key from a Secret"
    );

    // The app reaches the sidecar's socket in a volume both mount, as the socket's group.
    let ListenAddr::Unix(socket) = listen(follower, "grpc-listen") else {
        panic!("the follower's gRPC on a Unix socket")
    };
    let app_container = container(&app, "app");
    assert_eq!(
        env(app_container, "ROLEGATE_ADDR").unwrap()["value"],
        format!("unix:{}", socket.display())
    );
    let dir = socket.parent().unwrap();
    let volume_at = |c: &Value| -> Option<String> {
        c["volumeMounts"].as_array()?.iter().find_map(|m| {
            (Path::new(m["mountPath"].as_str()?) == dir).then(|| m["name"].as_str().unwrap().into())
        })
    };
    let volume = volume_at(follower).expect("the socket's directory is a volume");
    assert_eq!(
        volume_at(app_container),
        Some(volume),
        "mounted by the app too"
    );
    assert_eq!(
        app["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
        follower["securityContext"]["runAsGroup"],
        "the socket's group is every container's"
    );
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_as_a_non_root_user() {
    let docker = dockerfile();
    let stages: Vec<&String> = docker
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, rest)| rest)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let build = stages[0]
        .split_once(" AS ")
        .or_else(|| stages[0].split_once(" as "))
        .expect("the build stage is named")
        .1
        .trim();
    // The last stage starts afresh and takes only the build's output.
    let last = docker.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let runtime = &docker[last..];
    assert!(!runtime[0].1.starts_with(build), "{:?}", runtime[0]);
    assert!(
        runtime
            .iter()
            .any(|(i, rest)| i == "COPY" && rest.contains(&format!("--from={build}"))),
        "the runtime copies the binary from the build stage"
    );
    assert!(
        !runtime.iter().any(|(i, _)| i == "RUN" || i == "ADD"),
        "nothing built or fetched in the runtime stage"
    );
    let user = runtime
        .iter()
        .rfind(|(i, _)| i == "USER")
        .expect("a USER in the runtime stage")
        .1
        .clone();
    let uid = user.split(':').next().unwrap();
    let uid: u32 = uid
        .parse()
        .expect("a numeric uid (runAsNonRoot can check it)");
    assert!(uid > 0, "{user}");
    assert_eq!(
        exec_form(&docker, "ENTRYPOINT"),
        vec!["/usr/local/bin/rolegate".to_owned()]
    );
    // The manifests' securityContext user is the image's.
    for (file, doc) in documents() {
        for c in rolegate_containers(&doc) {
            assert_eq!(c["securityContext"]["runAsUser"], uid, "{file}");
        }
    }
}

/// Metric names in a PromQL expression: the words that start as rolegate's, the gRPC server's
/// and the process's metrics do (label names such as `grpc_method` do not).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| {
            ["rolegate_", "grpc_server_", "process_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

/// The metric names documented in docs/operations.md's metrics reference (its section whose
/// heading starts with "Metrics").
fn documented_metrics() -> BTreeSet<String> {
    let ops = std::fs::read_to_string(repo_path("docs/operations.md")).unwrap();
    let mut section = String::new();
    let mut inside = false;
    for line in ops.lines() {
        if line.starts_with('#') {
            let title = line.trim_start_matches('#').trim();
            inside = title.starts_with("Metrics");
        } else if inside {
            section.push_str(line);
            section.push('\n');
        }
    }
    let names: BTreeSet<String> = section
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(metric_names)
        .collect();
    assert!(
        !names.is_empty(),
        "docs/operations.md has a metrics reference (a section headed \"Metrics\")"
    );
    names
}

#[test]
fn the_grafana_dashboard_queries_documented_metrics() {
    let text = std::fs::read_to_string(repo_path("deploy/grafana/rolegate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let documented = documented_metrics();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr} queries no metric");
        for name in names {
            // A histogram's series: NAME_bucket, NAME_sum, NAME_count.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| documented.contains(*b))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                documented.contains(&base),
                "{name} is not documented ({expr})"
            );
            used.insert(base);
        }
    }
    for name in [
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "rolegate_decisions_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(name), "the dashboard shows {name}");
    }
}

/// A CA and a server certificate for `localhost` (standing in for the hub Service's name),
/// written as the hub's TLS Secret would hold them: tls.crt, tls.key, ca.crt.
fn hub_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), leaf_key.serialize_pem()).unwrap();
}

/// A rolegate process, killed however the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the rolegate container of a manifest with its own args, each flag that names a place
/// (`--data-dir`, an address, a file) replaced as `places` says, every other flag as given; and
/// its `ROLEGATE_*` variables from Secrets given the values of `secrets`.
fn run_container(c: &Value, places: &[(&str, String)], secrets: &[(&str, &str)]) -> Running {
    let mut args = Vec::new();
    for a in c["args"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        let replaced = a
            .strip_prefix("--")
            .and_then(|f| f.split_once('='))
            .and_then(|(flag, _)| places.iter().find(|(f, _)| *f == flag))
            .map(|(flag, value)| format!("--{flag}={value}"));
        args.push(replaced.unwrap_or_else(|| a.to_owned()));
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rolegate"));
    cmd.args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        match e["value"].as_str() {
            Some(value) => cmd.env(name, value),
            None => {
                let (_, value) = secrets
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("a value for {name}"));
                cmd.env(name, value)
            }
        };
    }
    Running(cmd.spawn().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// hub.yaml's and followers.yaml's rolegate, each run with its own flags (addresses and files
/// moved into a temporary directory, the hub's name as localhost): the follower follows the hub
/// over TLS and answers a check on its Unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_and_a_follower_run_with_the_manifests_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hub_certificates(d);
    let (grpc, http, probe) = (free_port(), free_port(), free_port());
    let hub = document("hub.yaml", "StatefulSet");
    let _hub = run_container(
        rolegate_containers(&hub)[0],
        &[
            ("data-dir", d.join("data").display().to_string()),
            ("grpc-listen", format!("127.0.0.1:{grpc}")),
            ("http-listen", format!("127.0.0.1:{http}")),
            ("probe-listen", format!("127.0.0.1:{probe}")),
            ("tls-cert", d.join("tls.crt").display().to_string()),
            ("tls-key", d.join("tls.key").display().to_string()),
        ],
        &[("ROLEGATE_BOOTSTRAP_KEY_SHA256", &common::bootstrap_hash())],
    );
    common::wait_until_ready(([127, 0, 0, 1], probe).into(), common::READY_WITHIN).await;

    // The FOLLOWER key (and the rest of the example) on the hub, as an operator would.
    let policy = d.join("policy.yaml");
    std::fs::write(&policy, common::example_with_bootstrap()).unwrap();
    let hub_addr = format!("https://localhost:{grpc}");
    let ca = d.join("ca.crt").display().to_string();
    let apply = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["apply", "-f", policy.to_str().unwrap(), "--addr", &hub_addr])
        .args(["--ca", &ca, "--key", common::BOOTSTRAP])
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );

    let app = document("followers.yaml", "Deployment");
    let socket = d.join("grpc.sock");
    let probe = free_port();
    let _follower = run_container(
        rolegate_containers(&app)[0],
        &[
            ("upstream", hub_addr.clone()),
            ("upstream-ca", ca.clone()),
            ("grpc-listen", format!("unix:{}", socket.display())),
            ("http-listen", format!("127.0.0.1:{}", free_port())),
            ("probe-listen", format!("127.0.0.1:{probe}")),
        ],
        &[("ROLEGATE_UPSTREAM_KEY", common::keys::FOLLOWER)],
    );
    common::wait_until_ready(([127, 0, 0, 1], probe).into(), common::READY_WITHIN).await;
    let check = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["check", "--addr", &format!("unix:{}", socket.display())])
        .args([
            "--key",
            common::keys::DANA_SCIENTIST,
            "--entitlement",
            "jobs.read",
        ])
        .env_remove("ROLEGATE_CHECK_KEY")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("allowed:  true"), "{out}");
}
