//! The Admin CLI against the real binary serving the embedded store: the bootstrap key printed
//! once, `keys create|list|get|update|revoke|replace-secret`, `teams|users|projects`, `roles`,
//! `apply -f`, `history`, JSON output and field violations on bad input.

mod common;

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

struct Server {
    child: Child,
    addr: String,
    bootstrap: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rolegate serve --data-dir` on ephemeral ports; reads the bootstrap key from stdout
/// and the address from the JSON log.
fn serve(dir: &Path) -> Server {
    // No bootstrap key given: the store makes one and prints it on stdout.
    let mut child = common::serve_command(&[OsStr::new("--data-dir"), dir.as_os_str()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let bootstrap = line.rsplit(' ').next().unwrap().trim().to_owned();
    assert!(bootstrap.starts_with("RolegateBootstrap01."), "{line}");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(a) = v.get("grpc").and_then(Value::as_str)
            {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("address");
    Server {
        child,
        addr: format!("http://{addr}"),
        bootstrap,
    }
}

fn cli(server: &Server, key: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(args)
        .env("ROLEGATE_ADDR", &server.addr)
        .env("ROLEGATE_API_KEY", key)
        .output()
        .unwrap()
}

/// Creates the DEVELOPER key `AliceKey0001` of user alice in team acme (both made already) and
/// returns its whole API key, as `keys create --output json` printed it.
fn create_alice_key(server: &Server, owner: &str) -> String {
    let created: Value = serde_json::from_str(&ok(cli(
        server,
        owner,
        &[
            "keys",
            "create",
            "--user",
            "alice",
            "--team",
            "acme",
            "--role",
            "DEVELOPER",
            "--prefix",
            "AliceKey0001",
            "--output",
            "json",
        ],
    )))
    .unwrap();
    created["api_key"].as_str().unwrap().to_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_admin_cli_drives_a_key_through_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"));
    let owner = server.bootstrap.clone();

    ok(cli(
        &server,
        &owner,
        &["teams", "create", "acme", "--name", "Acme"],
    ));
    ok(cli(
        &server,
        &owner,
        &["users", "create", "alice", "--team", "acme"],
    ));
    ok(cli(&server, &owner, &["projects", "list"]));
    let alice = create_alice_key(&server, &owner);
    assert!(alice.starts_with("AliceKey0001."));

    // The table lists it; JSON too; neither shows a secret.
    let table = ok(cli(&server, &owner, &["keys", "list"]));
    assert!(
        table.contains("AliceKey0001") && table.contains("DEVELOPER"),
        "{table}"
    );
    assert!(!table.contains(alice.split_once('.').unwrap().1));
    let listed: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &["keys", "list", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // Alice reads her own key, and may not promote it.
    ok(cli(&server, &alice, &["keys", "get", "AliceKey0001"]));
    let denied = cli(
        &server,
        &alice,
        &["keys", "update", "AliceKey0001", "--roles", "ACCOUNT_ADMIN"],
    );
    assert_eq!(denied.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"));

    // Bad input: the problem is printed once, against the key and field at fault.
    let bad = cli(
        &server,
        &owner,
        &["keys", "update", "AliceKey0001", "--role", "SYSTEM_KEY"],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("key AliceKey0001 (roles)"), "{err}");
    assert_eq!(err.matches("SYSTEM_KEY").count(), 1, "said once: {err}");

    // A new key with an unknown role and no --prefix: the error speaks of the new key and its
    // --role, never of a prefix the server made up and the caller never saw.
    let unknown = cli(
        &server,
        &owner,
        &[
            "keys",
            "create",
            "--user",
            "alice",
            "--team",
            "acme",
            "--role",
            "NO_SUCH_ROLE",
        ],
    );
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("the new key (roles): role NO_SUCH_ROLE does not exist"),
        "{err}"
    );
    assert_eq!(err.matches("NO_SUCH_ROLE").count(), 1, "said once: {err}");
    assert!(!err.contains("keys["), "no generated prefix: {err}");

    // `--role` replaces the roles (repeatable; `--roles` is an alias), `--no-roles` clears them.
    let two: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &[
            "keys",
            "update",
            "AliceKey0001",
            "--role",
            "DEVELOPER",
            "--roles",
            "AUDITOR",
            "--output",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(
        two["key"]["roles"],
        serde_json::json!(["AUDITOR", "DEVELOPER"]),
        "{two}"
    );
    let none: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &[
            "keys",
            "update",
            "AliceKey0001",
            "--no-roles",
            "--output",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(none["key"]["roles"], serde_json::json!([]), "{none}");
    ok(cli(
        &server,
        &owner,
        &["keys", "update", "AliceKey0001", "--role", "DEVELOPER"],
    ));

    // Replace the secret, then revoke.
    let replaced: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &["keys", "replace-secret", "AliceKey0001", "--output", "json"],
    )))
    .unwrap();
    let new_key = replaced["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, alice);
    let old_fails = cli(&server, &alice, &["keys", "get", "AliceKey0001"]);
    assert!(String::from_utf8_lossy(&old_fails.stderr).contains("Unauthenticated"));
    ok(cli(&server, &new_key, &["keys", "get", "AliceKey0001"]));
    let revoked: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &["keys", "revoke", "AliceKey0001", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(revoked["key"]["status"], "inactive");
    let after = cli(&server, &new_key, &["keys", "get", "AliceKey0001"]);
    assert!(String::from_utf8_lossy(&after.stderr).contains("Unauthenticated"));

    // Roles.
    ok(cli(
        &server,
        &owner,
        &["roles", "create", "REVIEWER", "--grant", "models.read:TEAM"],
    ));
    let roles = ok(cli(&server, &owner, &["roles", "list"]));
    assert!(roles.contains("REVIEWER"), "{roles}");

    // Apply: a dry run shows the diff and writes nothing.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nteams:\n  - {{ id: system }}\n  - {{ id: initech }}\nusers:\n  - {{ id: bootstrap }}\nkeys:\n  - {{ prefix: RolegateBootstrap01, secret_sha256: {}, type: team, user: bootstrap, team: system, roles: [SYSTEM_OWNER] }}\n",
            rolegate::domain::ApiKey::parse(&owner)
                .unwrap()
                .secret_hash()
                .to_hex()
        ),
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    // A broken file: its problem is located in the file, by its name, and said once.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "version: 1\nteams:\n  - { id: Not A Team }\n").unwrap();
    let out = cli(&server, &owner, &["apply", "-f", broken.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", broken.display())) && !stderr.contains("document:"),
        "{stderr}"
    );
    let first_line = stderr
        .lines()
        .find(|l| l.contains("broken.yaml:3:"))
        .unwrap();
    let problem = first_line.rsplit(": ").next().unwrap();
    assert_eq!(stderr.matches(problem).count(), 1, "said once: {stderr}");
    let dry = ok(cli(&server, &owner, &["apply", "-f", policy, "--dry-run"]));
    assert!(
        dry.contains("put team initech") && dry.contains("dry run"),
        "{dry}"
    );
    let teams = ok(cli(&server, &owner, &["teams", "list"]));
    assert!(!teams.contains("initech"));
    // Without --prune the file's objects are put and the rest is kept, and said so.
    let merged = ok(cli(&server, &owner, &["apply", "-f", policy]));
    assert!(
        merged.contains("put team initech")
            && merged.contains("kept")
            && merged.contains("key AliceKey0001")
            && !merged.contains("remove key"),
        "{merged}"
    );
    let pruning = ok(cli(
        &server,
        &owner,
        &["apply", "-f", policy, "--prune", "--dry-run"],
    ));
    assert!(pruning.contains("remove key AliceKey0001"), "{pruning}");
    let applied = ok(cli(&server, &owner, &["apply", "-f", policy, "--prune"]));
    assert!(applied.contains("remove key AliceKey0001"), "{applied}");
    let teams = ok(cli(&server, &owner, &["teams", "list"]));
    assert!(
        teams.contains("initech") && !teams.contains("acme"),
        "{teams}"
    );
}

#[test]
fn list_commands_follow_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"));
    let owner = server.bootstrap.clone();

    // More teams than the server puts in one page (1,000 at most).
    const TEAMS: usize = 1_200;
    let mut doc = String::from("version: 1\nteams:\n  - { id: system }\n");
    for i in 0..TEAMS {
        doc.push_str(&format!("  - {{ id: team-{i:04} }}\n"));
    }
    doc.push_str(&format!(
        "users:\n  - {{ id: bootstrap }}\nkeys:\n  - {{ prefix: RolegateBootstrap01, secret_sha256: {}, type: team, user: bootstrap, team: system, roles: [SYSTEM_OWNER] }}\n",
        rolegate::domain::ApiKey::parse(&owner)
            .unwrap()
            .secret_hash()
            .to_hex()
    ));
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, doc).unwrap();
    ok(cli(
        &server,
        &owner,
        &["apply", "-f", policy.to_str().unwrap()],
    ));

    let listed: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &["teams", "list", "--output", "json"],
    )))
    .unwrap();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), TEAMS + 1, "every team once, across pages");
}

/// `teams|users|projects update` send only the flags given: a rename keeps a deactivation.
#[test]
fn updates_from_the_cli_change_only_the_flags_given() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"));
    let owner = server.bootstrap.clone();
    ok(cli(
        &server,
        &owner,
        &["teams", "create", "globex", "--name", "Globex"],
    ));
    ok(cli(
        &server,
        &owner,
        &[
            "users", "create", "gus", "--name", "Gus", "--team", "globex",
        ],
    ));
    ok(cli(
        &server,
        &owner,
        &[
            "projects", "create", "p1", "--team", "globex", "--name", "P",
        ],
    ));
    let get = |what: &str, id: &str| -> Value {
        let out = ok(cli(&server, &owner, &[what, "get", id, "--output", "json"]));
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array().and_then(|a| a.first()).cloned().unwrap_or(v)
    };

    ok(cli(
        &server,
        &owner,
        &["teams", "update", "globex", "--inactive"],
    ));
    ok(cli(
        &server,
        &owner,
        &["teams", "update", "globex", "--name", "Globex 2"],
    ));
    let team = get("teams", "globex");
    assert_eq!(
        (&team["name"], &team["active"]),
        (&Value::from("Globex 2"), &Value::from(false)),
        "{team}"
    );
    ok(cli(
        &server,
        &owner,
        &["teams", "update", "globex", "--active"],
    ));
    assert_eq!(get("teams", "globex")["active"], true);
    // --active and --inactive together are refused.
    let both = cli(
        &server,
        &owner,
        &["teams", "update", "globex", "--active", "--inactive"],
    );
    assert!(!both.status.success());

    ok(cli(
        &server,
        &owner,
        &["users", "update", "gus", "--inactive"],
    ));
    ok(cli(
        &server,
        &owner,
        &["users", "update", "gus", "--name", "Gus G."],
    ));
    let gus = get("users", "gus");
    assert_eq!(gus["name"], "Gus G.", "{gus}");
    assert_eq!(gus["active"], false, "{gus}");
    assert_eq!(gus["teams"], serde_json::json!(["globex"]), "{gus}");

    ok(cli(
        &server,
        &owner,
        &["projects", "update", "p1", "--name", "P 2"],
    ));
    let p1 = get("projects", "p1");
    assert_eq!(
        (&p1["name"], &p1["team"]),
        (&Value::from("P 2"), &Value::from("globex")),
        "{p1}"
    );
}

/// `--output` takes the same values everywhere, `text` and `json`; the Admin commands still
/// take `table`, the name they used for `text`.
#[test]
fn every_command_prints_text_or_json_and_table_is_still_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"));
    let owner = server.bootstrap.clone();
    ok(cli(&server, &owner, &["teams", "create", "acme"]));

    let default = ok(cli(&server, &owner, &["teams", "list"]));
    let text = ok(cli(&server, &owner, &["teams", "list", "--output", "text"]));
    let table = ok(cli(
        &server,
        &owner,
        &["teams", "list", "--output", "table"],
    ));
    assert!(default.contains("acme"), "{default}");
    assert_eq!(text, default);
    assert_eq!(table, default);
    let json: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &["teams", "list", "--output", "json"],
    )))
    .unwrap();
    assert!(json.to_string().contains("acme"), "{json}");

    // Every command offers exactly these two values (the alias is not advertised).
    for command in [
        &["check", "--key", "k", "--entitlement", "e"][..],
        &["watch"],
        &["teams", "list"],
        &["keys", "list"],
        &["routes", "list"],
        &["apply", "-f", "p.yaml"],
        &["history"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--output", "nope"]);
        let out = cli(&server, &owner, &args);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("[possible values: text, json]"),
            "{command:?}: {err}"
        );
    }
}

/// `rolegate history`: who made each revision, as a table or JSON, `--since` a revision; a key
/// without audit.read is refused with the reason.
#[test]
fn history_lists_who_made_each_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"));
    let owner = server.bootstrap.clone();
    let owner_prefix = owner.split_once('.').unwrap().0.to_owned();
    ok(cli(&server, &owner, &["teams", "create", "acme"]));
    ok(cli(
        &server,
        &owner,
        &["users", "create", "alice", "--team", "acme"],
    ));
    let alice = create_alice_key(&server, &owner);
    ok(cli(
        &server,
        &owner,
        &["teams", "update", "acme", "--name", "Acme Corp"],
    ));

    let table = ok(cli(&server, &owner, &["history"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REVISION"), "{table}");
    let actions: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "Bootstrap",
            "CreateTeam",
            "CreateUser",
            "CreateKey",
            "UpdateTeam"
        ],
        "{table}"
    );
    assert!(
        lines[1..].iter().all(|l| l.contains(&owner_prefix)),
        "{table}"
    );
    assert!(!table.contains(owner.split_once('.').unwrap().1), "{table}");

    let json: Value = serde_json::from_str(&ok(cli(
        &server,
        &owner,
        &["history", "--since", "3", "--output", "json"],
    )))
    .unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{json}");
    assert_eq!(entries[0]["revision"], 4);
    assert_eq!(entries[0]["action"], "CreateKey");
    assert_eq!(entries[0]["caller"], owner_prefix.as_str());
    assert_eq!(entries[0]["teams"], serde_json::json!(["acme"]));
    assert!(
        entries[1]["time"].as_str().unwrap().ends_with('Z'),
        "{json}"
    );

    let refused = cli(&server, &alice, &["history"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("audit.read"), "{err}");
}
