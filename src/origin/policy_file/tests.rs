use std::sync::Arc;

use super::*;
use crate::domain::{Reason, ResourceRef, ValueSource, is_valid_entitlement};

const HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/policy.yaml"
    ))
    .unwrap()
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, "p.yaml") {
        Ok(_) => vec![],
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

fn assert_error(text: &str, want: &str) {
    let got = errors(text);
    assert!(
        got.iter().any(|e| e == want),
        "wanted {want:?}, got {got:#?}"
    );
}

const BASE: &str =
    "teams:\n  - id: acme\nusers:\n  - id: alice\nprojects:\n  - id: fraud\n    team: acme\n";

#[test]
fn the_example_policy_loads() {
    let policy = parse(&example(), "policy.yaml").unwrap_or_else(|e| panic!("{e}"));
    let m = &policy.model;
    assert_eq!((m.teams.len(), m.projects.len()), (2, 2));
    assert_eq!(m.keys.len(), 11);
    assert!(m.catalog.role("MODEL_REVIEWER").is_some());
    assert!(m.catalog.has_entitlement("reports.export"));
    assert_eq!(policy.model.routes, None);
    let rita = &m.keys["RitaReviewKey0000001"];
    assert_eq!(rita.expires_at.unix(), Some(4_070_908_800));
}

#[test]
fn an_empty_document_is_an_empty_state_but_an_empty_file_is_refused() {
    // A document (e.g. one sent to Apply) may be empty...
    let policy = parse("", "p.yaml").unwrap();
    assert!(policy.model.keys.is_empty());
    assert!(parse("version: 1\n", "p.yaml").is_ok());
    // ...a file with no content is taken for one not written yet.
    for blank in [
        "",
        "\n",
        "  \n\t\n   ",
        "# the policy\n\n  # more\n",
        "---\n...\n",
    ] {
        let err = parse_file(blank, "p.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("p.yaml: the file is empty"),
            "{blank:?}: {err}"
        );
    }
    // Content, even an explicitly empty mapping, is a policy.
    assert!(parse_file("{}\n", "p.yaml").unwrap().model.keys.is_empty());
    assert!(parse_file("# header\nversion: 1\n", "p.yaml").is_ok());
}

#[test]
fn syntax_errors_and_unknown_fields_have_locations() {
    let got = errors("teams:\n  - id: acme\n    colour: red\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("p.yaml:3:"), "{got:?}");
    assert!(got[0].contains("colour"), "{got:?}");
    let got = errors("teams: [\n");
    assert!(got[0].starts_with("p.yaml:"), "{got:?}");
    // The position is said once, in front.
    assert_error("teams: 3\n", "p.yaml:1:8: expected sequence start");
    let got = errors("teams:\n  - { bad: [ }\n");
    assert!(!got[0].contains(" at line "), "{got:?}");
    assert_error(
        "version: 2\n",
        "p.yaml:1:10: version: unsupported version 2 (expected 1)",
    );
}

#[test]
fn duplicates_are_refused_at_the_second_definition() {
    assert_error(
        "teams:\n  - id: acme\n  - id: acme\n",
        "p.yaml:3:5: teams[1] (acme): duplicate team acme; first defined at line 2",
    );
}

#[test]
fn dangling_references_and_role_types_name_the_key() {
    let text = format!(
        "{BASE}keys:\n\
         \x20 - {{ prefix: KeyOne0001, secret_sha256: {HASH}, type: team, user: bob, team: acme, roles: [DEVELOPER] }}\n\
         \x20 - {{ prefix: KeyTwo0001, secret_sha256: {HASH}, type: project, project: fraud, roles: [DATA_SCIENTIST] }}\n\
         \x20 - {{ prefix: KeyThree01, secret_sha256: {HASH}, type: team, user: alice, team: acme, roles: [SYSTEM_KEY] }}\n\
         \x20 - {{ prefix: KeyFour001, secret_sha256: {HASH}, type: project, project: nope, roles: [PROJECT] }}\n"
    );
    assert_error(
        &text,
        "p.yaml:9:5: keys[0] (prefix KeyOne0001): user: user bob does not exist",
    );
    assert_error(
        &text,
        "p.yaml:10:5: keys[1] (prefix KeyTwo0001): roles: role DATA_SCIENTIST is a user role and cannot be bound to a project key",
    );
    assert_error(
        &text,
        "p.yaml:11:5: keys[2] (prefix KeyThree01): roles: role SYSTEM_KEY is a system role and cannot be bound to a team key",
    );
    assert_error(
        &text,
        "p.yaml:12:5: keys[3] (prefix KeyFour001): project: project nope does not exist",
    );
}

#[test]
fn bad_values_are_refused() {
    let key = |fields: &str| {
        format!(
            "{BASE}keys:\n  - {{ prefix: KeyOne0001, type: team, user: alice, team: acme, {fields} }}\n"
        )
    };
    assert_error(
        &key("secret_sha256: abc"),
        "p.yaml:9:5: keys[0] (prefix KeyOne0001): secret_sha256 must be 64 lower-case hex digits (the SHA-256 of the part after the first dot)",
    );
    let got = errors(&key(&format!("secret_sha256: {HASH}, status: paused")));
    assert!(got[0].contains("unknown key status \"paused\""), "{got:?}");
    let got = errors(&key(&format!(
        "secret_sha256: {HASH}, expires_at: tomorrow"
    )));
    assert!(got[0].contains("is not an RFC 3339 time"), "{got:?}");
    assert_error(
        &key(&format!(
            "secret_sha256: {HASH}, expires_at: '2200-01-01T00:00:00Z'"
        )),
        "p.yaml:9:5: keys[0] (prefix KeyOne0001): expires_at \"2200-01-01T00:00:00Z\" is out of range: a key expires between 1970-01-01T00:00:00Z and 2106-02-07T06:28:14Z",
    );
    let got = errors(&format!(
        "{BASE}keys:\n  - {{ prefix: 'a b', secret_sha256: {HASH}, type: team, user: alice, team: acme }}\n"
    ));
    assert!(
        got[0].contains("prefix: a prefix is 4 to 64 characters"),
        "{got:?}"
    );
}

#[test]
fn a_key_names_the_owner_its_type_has() {
    let key = |fields: &str| {
        format!("{BASE}keys:\n  - {{ prefix: KeyOne0001, secret_sha256: {HASH}, {fields} }}\n")
    };
    let at = "p.yaml:9:5: keys[0] (prefix KeyOne0001)";
    assert_error(
        &key("type: team, team: acme"),
        &format!("{at}: user: a team key names its user"),
    );
    assert_error(
        &key("type: team, user: alice, team: acme, project: fraud"),
        &format!("{at}: project: a team key has no project (use type: project)"),
    );
    assert_error(
        &key("type: project"),
        &format!("{at}: project: a project key names its project"),
    );
    assert_error(
        &key("type: project, project: fraud, user: alice"),
        &format!("{at}: user: a project key has no user (use type: team)"),
    );
    assert!(errors(&key("type: project, project: fraud")).is_empty());
}

/// A million keys name a few hundred thousand users and a thousand teams: each id is stored
/// once, and users of the same teams share one list.
#[test]
fn ids_and_team_lists_are_stored_once() {
    let policy = parse(
        &format!(
            "teams:\n  - id: acme\nusers:\n  - {{ id: alice, teams: [acme] }}\n  - {{ id: bob, teams: [acme] }}\nkeys:\n  - {{ prefix: AliceKey01, secret_sha256: {HASH}, type: team, user: alice, team: acme }}\n"
        ),
        "p.yaml",
    )
    .unwrap();
    let m = &policy.model;
    let (alice, bob) = (&m.users["alice"], &m.users["bob"]);
    let key = &m.keys["AliceKey01"];
    assert!(Arc::ptr_eq(&key.owner, &alice.id));
    assert!(Arc::ptr_eq(key.team.as_ref().unwrap(), &m.teams["acme"].id));
    assert!(Arc::ptr_eq(&alice.teams[0], &m.teams["acme"].id));
    assert!(std::ptr::eq(&alice.teams[..], &bob.teams[..]));
}

#[test]
fn roles_are_checked() {
    assert_error(
        "roles:\n  - id: DEVELOPER\n    grants: []\n",
        "p.yaml:2:5: roles[0] (DEVELOPER): DEVELOPER is a prebuilt role; add `override: true` to redefine its grants",
    );
    assert_error(
        "roles:\n  - id: NEW_ROLE\n    type: user\n    grants: [{ entitlement: reports.export, scope: TEAM }]\n",
        "p.yaml:2:5: roles[0] (NEW_ROLE): grants: entitlement reports.export is not in the catalog (add it under entitlements:)",
    );
    let got = errors(
        "roles:\n  - id: NEW_ROLE\n    type: user\n    grants: [{ entitlement: jobs.read, scope: EVERYTHING }]\n",
    );
    assert!(got[0].contains("unknown scope \"EVERYTHING\""), "{got:?}");
    let policy = parse(
        "roles:\n  - id: DEVELOPER\n    override: true\n    grants: [{ entitlement: jobs.read, scope: TEAM }]\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(
        policy.model.catalog.role("DEVELOPER").unwrap().grants.len(),
        1
    );
}

#[test]
fn routes_are_parsed_and_checked() {
    let policy = parse(
        "routes:\n  - method: GET\n    path: /api/teams/{teamId}/reports/*\n    entitlement: jobs.read\n    resource: { team: path.teamId, owner_key: header.X-Owner }\n",
        "p.yaml",
    )
    .unwrap();
    let routes = policy.model.routes.unwrap();
    assert_eq!(routes[0].team, Some(ValueSource::Path("teamId".into())));
    assert_eq!(
        routes[0].owner_key,
        Some(ValueSource::Header("x-owner".into()))
    );
    assert_error(
        "routes:\n  - method: GET\n    path: /api/jobs\n    entitlement: jobs.read\n    resource: { team: path.teamId }\n",
        "p.yaml:2:5: routes[0] (GET /api/jobs): resource.team: the path has no {teamId}",
    ); // The model checks the table against the catalog; the file names the route's location.
    assert_error(
        "routes:\n  - { method: GET, path: /ok, entitlement: jobs.read }\n  - method: GET\n    path: /reports\n    entitlement: reports.export\n",
        "p.yaml:3:5: routes[1] (GET /reports): entitlement: reports.export is not in the catalog (add it under entitlements:)",
    );
    let policy = parse(
        "entitlements: [{ id: reports.export }]\nroutes:\n  - { method: GET, path: /reports, entitlement: reports.export }\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(
        policy.model.routes.unwrap()[0].entitlement,
        "reports.export"
    );
}

#[test]
fn entitlement_ids_are_resource_dot_action() {
    assert!(is_valid_entitlement("reports.export"));
    for bad in ["reports", "Reports.export", "a.b.c", ".x", "x.", "a b.c"] {
        assert!(!is_valid_entitlement(bad), "{bad}");
    }
}

fn check(state: &State, key: &str, ent: &str) -> Reason {
    state
        .check(key, ent, ResourceRef::default(), crate::state::unix_now())
        .decision
        .reason
}

#[test]
fn reloads_follow_the_file_and_a_bad_file_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, example()).unwrap();
    let state = Arc::new(State::new());
    let origin =
        PolicyFileOrigin::start(path.clone(), Duration::from_secs(1), state.clone()).unwrap();
    assert_eq!(state.revision(), 1);
    let devin = "DevinDevKey000000001.dev-only-devindevkey";
    assert_eq!(check(&state, devin, "jobs.read"), Reason::Allowed);

    // Nothing changed: no new revision.
    assert_eq!(origin.reload_if_changed().unwrap(), None);

    // Deactivate devin's key.
    let edited = example().replacen(
        "roles: [DEVELOPER]\n    status: active",
        "roles: [DEVELOPER]\n    status: inactive",
        1,
    );
    assert_ne!(edited, example());
    std::fs::write(&path, &edited).unwrap();
    assert_eq!(origin.reload().unwrap(), Some(2));
    assert_eq!(check(&state, devin, "jobs.read"), Reason::KeyInactive);

    // A broken file: refused, the state stays at revision 2, the error is reported.
    std::fs::write(&path, "keys: [ {").unwrap();
    assert!(origin.reload().is_err());
    assert_eq!(state.revision(), 2);
    assert_eq!(check(&state, devin, "jobs.read"), Reason::KeyInactive);
    let status = origin.reload_status();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("policy.yaml:1:"),
        "{status:?}"
    );
    assert_eq!(status.failed_reloads, 1);

    // Fixed again: the error clears.
    std::fs::write(&path, example()).unwrap();
    assert_eq!(origin.reload().unwrap(), Some(3));
    assert_eq!(origin.reload_status().last_error, None);
}

#[test]
fn a_configmap_style_symlink_swap_is_seen() {
    // Kubernetes mounts a ConfigMap as `policy.yaml -> ..data/policy.yaml`, `..data -> ..v1`,
    // and updates it by pointing `..data` at a new directory.
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..v1");
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("policy.yaml"), example()).unwrap();
    std::fs::write(
        v2.join("policy.yaml"),
        example().replace("status: active", "status: inactive"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("policy.yaml");
    std::os::unix::fs::symlink("..data/policy.yaml", &path).unwrap();

    let state = Arc::new(State::new());
    let origin = PolicyFileOrigin::start(path, Duration::from_secs(1), state.clone()).unwrap();
    let devin = "DevinDevKey000000001.dev-only-devindevkey";
    assert_eq!(check(&state, devin, "jobs.read"), Reason::Allowed);

    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    assert_eq!(origin.reload_if_changed().unwrap(), Some(2));
    assert_ne!(check(&state, devin, "jobs.read"), Reason::Allowed);
}

#[test]
fn start_on_an_empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    for blank in ["", " \n\n\t\n"] {
        std::fs::write(&path, blank).unwrap();
        let state = Arc::new(State::new());
        let err = PolicyFileOrigin::start(path.clone(), Duration::from_secs(1), state.clone())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("the file is empty"), "{err}");
        assert!(!state.is_loaded());
    }
}

/// The example with devin's key deactivated, and the text up to (not including) that status
/// line: as YAML, the first half is a valid policy in which devin's key is active and every
/// key after it is missing.
fn deactivation_in_two_halves() -> (String, String, String) {
    let edited = example().replacen(
        "roles: [DEVELOPER]\n    status: active",
        "roles: [DEVELOPER]\n    status: inactive",
        1,
    );
    let cut = edited.find("    status: inactive").unwrap();
    let (first, second) = edited.split_at(cut);
    assert!(
        parse(first, "half").is_ok(),
        "the half is a valid policy on its own"
    );
    (edited.clone(), first.to_owned(), second.to_owned())
}

/// Lets the paused clock run `d` (the watcher's polls due in it run, and the reloads they start
/// finish: a blocking task holds the paused clock).
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_file_written_in_place_in_two_halves_is_never_served_half_written() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, example()).unwrap();
    let state = Arc::new(State::new());
    let origin =
        PolicyFileOrigin::start(path.clone(), Duration::from_secs(1), state.clone()).unwrap();
    let (edited, first, second) = deactivation_in_two_halves();
    let before = parse(&example(), "p").unwrap().model;
    let after = parse(&edited, "p").unwrap().model;
    let half = parse(&first, "p").unwrap().model;
    assert!(half != before && half != after);
    let devin = "DevinDevKey000000001.dev-only-devindevkey";
    let aria = "AriaAuditKey00000001.dev-only-ariaauditke";

    let interval = Duration::from_secs(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(origin.clone().watch(stopped));
    // Half-way between polls (at 0 s, 1 s, 2 s, ...) from here on.
    run_for(interval / 2).await;
    // Whatever the watcher has loaded is one of the whole files, never the half.
    let served = || {
        let model = state.model();
        assert!(model != half, "the half-written file was served");
        assert!(model == before || model == after, "an unknown state");
        model == after
    };

    // In place: truncate, write the first half, and (one poll later) the rest.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    run_for(interval).await; // the poll at 1 s sees the half
    assert!(!served());
    assert_eq!(check(&state, devin, "jobs.read"), Reason::Allowed);
    assert_eq!(check(&state, aria, "jobs.read"), Reason::Allowed);
    file.write_all(second.as_bytes()).unwrap();
    drop(file);
    run_for(interval).await; // the poll at 2 s sees the whole file, changed since
    assert!(!served(), "not yet: it changed since the last poll");
    run_for(interval).await; // the poll at 3 s sees it unchanged: loaded
    assert!(served(), "the whole file, once settled");
    assert_eq!(state.revision(), 2, "one revision: the half never made one");
    assert_eq!(check(&state, devin, "jobs.read"), Reason::KeyInactive);
    assert_eq!(check(&state, aria, "jobs.read"), Reason::Allowed);
    let status = origin.reload_status();
    assert_eq!((status.failed_reloads, &status.last_error), (0, &None));

    stop.send(true).unwrap();
    watcher.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn empty_and_blank_files_are_refused_as_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, example()).unwrap();
    let state = Arc::new(State::new());
    let origin =
        PolicyFileOrigin::start(path.clone(), Duration::from_secs(1), state.clone()).unwrap();
    let interval = Duration::from_secs(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(origin.clone().watch(stopped));
    run_for(interval / 2).await;
    let devin = "DevinDevKey000000001.dev-only-devindevkey";

    for (n, blank) in ["", "  \n\n\t \n"].into_iter().enumerate() {
        std::fs::write(&path, blank).unwrap();
        run_for(interval * 3).await;
        let status = origin.reload_status();
        assert_eq!(status.failed_reloads, n as u64 + 1, "{blank:?}: {status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("policy.yaml: the file is empty")),
            "{blank:?}: {status:?}"
        );
        assert_eq!(
            state.revision(),
            1,
            "{blank:?}: the last good state keeps serving"
        );
        assert_eq!(check(&state, devin, "jobs.read"), Reason::Allowed);
    }
    // A good file again clears the error.
    std::fs::write(&path, example().replace("version: 1", "version: 1 # again")).unwrap();
    run_for(interval * 3).await;
    let status = origin.reload_status();
    assert_eq!(
        (&status.last_error, status.reloads),
        (&None, 2),
        "{status:?}"
    );
    stop.send(true).unwrap();
    watcher.await.unwrap();
}

#[test]
fn a_file_that_cannot_be_read_is_named_without_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let err = load(&path).unwrap_err().to_string();
    let name = path.display().to_string();
    assert!(err.starts_with(&format!("{name}: ")), "{err}");
    assert!(!err.contains(":0:0"), "{err}");
}
