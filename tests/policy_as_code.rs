//! Policy as code: offline checks agree with a served policy (a property test over random
//! policies and checks), `check --explain` online and offline, the Explain and WhoCan RPCs and
//! their guards, `rolegate test` on passing and failing suites (exit codes, JUnit parsed back),
//! and privilege diffs of hand-made policy pairs with known gains and losses.

mod common;

use std::{path::Path, process::Command};

use common::{TestServer, call, keys, repo_path};
use proptest::{prelude::*, test_runner::TestRunner};
use rolegate::{
    domain::{
        IndexedModel, KeyStatus, KeyType, Model, ResourceRef, Role, Scope, SecretHash,
        privileges::{PrivilegeChange, privilege_diff, who_can},
    },
    grpc::pb,
    origin::policy_file,
    state::{State, unix_now},
};

const BIN: &str = env!("CARGO_BIN_EXE_rolegate");

fn rolegate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run rolegate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn offline_state(text: &str) -> State {
    let policy = policy_file::parse(text, "policy.yaml").expect("a valid policy");
    State::from_model(&policy.model, 1).unwrap()
}

/// A check answer without the revision (a served policy and an offline one count differently).
fn comparable(mut r: pb::CheckResponse) -> pb::CheckResponse {
    r.revision = 0;
    r
}

// ---- the property: offline and served decisions agree ------------------------------------------

const TEAMS: [&str; 3] = ["t0", "t1", "t2"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const USER_ROLES: [&str; 5] = [
    "DEVELOPER",
    "DATA_SCIENTIST",
    "ACCOUNT_ADMIN",
    "AUDITOR",
    "SYSTEM_OWNER",
];
const ENTITLEMENTS: [&str; 7] = [
    "jobs.read",
    "keys.update",
    "models.read",
    "audit.read",
    "profile.read",
    "models.deploy",
    "no.such",
];
const STATUSES: [&str; 2] = ["active", "inactive"];
const EXPIRIES: [&str; 3] = ["", "2001-01-01T00:00:00Z", "2099-01-01T00:00:00Z"];

#[derive(Clone, Debug)]
struct KeyGen {
    /// A user index, or `None` for the project p0's key.
    user: Option<usize>,
    team: usize,
    roles: Vec<usize>,
    status: usize,
    expiry: usize,
}

#[derive(Clone, Debug)]
struct World {
    team_active: Vec<bool>,
    user_active: Vec<bool>,
    keys: Vec<KeyGen>,
}

fn world() -> impl Strategy<Value = World> {
    let key = (
        prop::option::weighted(0.85, 0..USERS.len()),
        0..TEAMS.len(),
        prop::collection::vec(0..USER_ROLES.len(), 0..3),
        prop::sample::select(vec![0usize, 0, 0, 1]),
        prop::sample::select(vec![0usize, 0, 1, 2]),
    )
        .prop_map(|(user, team, roles, status, expiry)| KeyGen {
            user,
            team,
            roles,
            status,
            expiry,
        });
    (
        prop::collection::vec(prop::bool::weighted(0.85), TEAMS.len()),
        prop::collection::vec(prop::bool::weighted(0.85), USERS.len()),
        prop::collection::vec(key, 1..8),
    )
        .prop_map(|(team_active, user_active, keys)| World {
            team_active,
            user_active,
            keys,
        })
}

fn prefix(i: usize) -> String {
    format!("Key{i:04}")
}

fn secret(i: usize) -> String {
    format!("secret-{i}")
}

fn policy_text(w: &World) -> String {
    let mut out = String::from("version: 1\nteams:\n");
    for (t, active) in TEAMS.iter().zip(&w.team_active) {
        let status = if *active { "active" } else { "inactive" };
        out.push_str(&format!("  - {{ id: {t}, status: {status} }}\n"));
    }
    out.push_str("users:\n");
    for (u, active) in USERS.iter().zip(&w.user_active) {
        let status = if *active { "active" } else { "inactive" };
        out.push_str(&format!("  - {{ id: {u}, status: {status} }}\n"));
    }
    out.push_str("projects:\n  - { id: p0, team: t0 }\nkeys:\n");
    for (i, k) in w.keys.iter().enumerate() {
        let hash = SecretHash::of_secret(&secret(i)).to_hex();
        let owner = match k.user {
            Some(u) => format!(
                "type: team, user: {}, team: {}, roles: [{}]",
                USERS[u],
                TEAMS[k.team],
                {
                    let mut roles: Vec<&str> = k.roles.iter().map(|r| USER_ROLES[*r]).collect();
                    roles.sort();
                    roles.dedup();
                    roles.join(", ")
                }
            ),
            None => "type: project, project: p0, roles: [SYSTEM_KEY]".to_owned(),
        };
        let expiry = match EXPIRIES[k.expiry] {
            "" => String::new(),
            at => format!(", expires_at: \"{at}\""),
        };
        out.push_str(&format!(
            "  - {{ prefix: {}, secret_sha256: {hash}, {owner}, status: {}{expiry} }}\n",
            prefix(i),
            STATUSES[k.status]
        ));
    }
    out
}

#[derive(Clone, Debug)]
struct CheckGen {
    key: usize,
    entitlement: usize,
    team: usize,
    owner_key: usize,
    owner_user: usize,
}

fn checks() -> impl Strategy<Value = Vec<CheckGen>> {
    prop::collection::vec(
        (
            0..9usize,
            0..ENTITLEMENTS.len(),
            0..4usize,
            0..10usize,
            0..6usize,
        )
            .prop_map(|(key, entitlement, team, owner_key, owner_user)| CheckGen {
                key,
                entitlement,
                team,
                owner_key,
                owner_user,
            }),
        1..24,
    )
}

/// The `i`th of the world's keys, or an unknown one past them.
fn pick(i: usize, n: usize) -> String {
    if i < n { prefix(i) } else { prefix(100 + i) }
}

#[test]
fn offline_and_served_decisions_agree() {
    let cases = std::env::var("ROLEGATE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&(world(), checks()), |(w, checks)| {
            let text = policy_text(&w);
            let offline = offline_state(&text);
            runtime.block_on(async {
                let server = TestServer::policy(&text).await;
                let mut client = server.authorizer().await;
                let n = w.keys.len();
                for c in &checks {
                    let prefix = pick(c.key, n);
                    let key = format!("{prefix}.{}", secret(c.key));
                    let team = TEAMS.get(c.team).copied().unwrap_or("");
                    let owner_key = if c.owner_key < 9 {
                        pick(c.owner_key, n)
                    } else {
                        String::new()
                    };
                    let owner_user = USERS.get(c.owner_user).copied().unwrap_or("");
                    let entitlement = ENTITLEMENTS[c.entitlement];
                    let served = client
                        .check(pb::CheckRequest {
                            api_key: key.clone(),
                            entitlement: entitlement.into(),
                            resource: Some(pb::Resource {
                                team_id: team.into(),
                                owner_key_prefix: owner_key.clone(),
                                owner_user_id: owner_user.into(),
                            }),
                            min_revision: 0,
                        })
                        .await
                        .expect("Check answers")
                        .into_inner();
                    let resource = ResourceRef {
                        team_id: team,
                        owner_key_prefix: &owner_key,
                        owner_user_id: owner_user,
                    };
                    // Offline by prefix (no secret), as `check --policy` and `rolegate test` do.
                    let by_prefix =
                        offline.check_prefix(&prefix, entitlement, resource, unix_now());
                    let by_prefix = pb::CheckResponse::from(&by_prefix);
                    prop_assert_eq!(
                        comparable(served.clone()),
                        comparable(by_prefix),
                        "{} {} {:?}\n{}",
                        prefix,
                        entitlement,
                        resource,
                        text
                    );
                    // The explanation reports the same decision.
                    let (explained, _) =
                        offline.explain(&prefix, entitlement, resource, unix_now());
                    let explained = pb::CheckResponse::from(&explained);
                    prop_assert_eq!(comparable(served), comparable(explained));
                }
                server.stop().await.unwrap();
                Ok(())
            })
        })
        .unwrap();
}

// ---- check --policy and --explain through the binary ---------------------------------------

// The binary blocks this test's thread while the server answers it on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_policy_prints_what_the_server_says() {
    let example = repo_path("deploy/examples/policy.yaml");
    let example = example.to_str().unwrap();
    let server = TestServer::policy(&common::example_policy()).await;
    let url = server.url();
    let cases: [(&str, &str, &str, &str); 4] = [
        (keys::DANA_SCIENTIST, "keys.update", "globex", ""),
        (
            keys::DEVIN_DEVELOPER,
            "jobs.cancel",
            "acme",
            "GusDevKey00000000001",
        ),
        (keys::DEVIN_DEVELOPER, "jobs.read", "", ""),
        (keys::DEVIN_OLD_INACTIVE, "jobs.read", "", ""),
    ];
    for (key, entitlement, team, owner) in cases {
        let args = |extra: &[&str]| {
            let mut a = vec![
                "check",
                "--key",
                key,
                "--entitlement",
                entitlement,
                "--team",
                team,
                "--owner-key",
                owner,
                "--output",
                "json",
            ];
            a.extend_from_slice(extra);
            a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let run = |a: Vec<String>| {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            rolegate(&a)
        };
        let (online_code, online, err) = run(args(&["--addr", &url]));
        assert!(err.is_empty(), "{err}");
        let (offline_code, offline, err) = run(args(&["--policy", example]));
        assert!(err.is_empty(), "{err}");
        let strip = |s: &str| {
            let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
            v["revision"] = 0.into();
            v
        };
        assert_eq!(online_code, offline_code, "{key} {entitlement}");
        assert_eq!(strip(&online), strip(&offline), "{key} {entitlement}");
        // By prefix alone offline: the same answer.
        let prefix = keys::prefix(key);
        let (code, by_prefix, _) = rolegate(&[
            "check",
            "--policy",
            example,
            "--key",
            prefix,
            "--entitlement",
            entitlement,
            "--team",
            team,
            "--owner-key",
            owner,
            "--output",
            "json",
        ]);
        assert_eq!(code, offline_code);
        assert_eq!(strip(&by_prefix), strip(&offline));
        // --explain online (Aria, the auditor, may) and offline say the same.
        let (_, online_explained, err) = run(args(&[
            "--addr",
            &url,
            "--explain",
            "--api-key",
            keys::ARIA_AUDITOR,
        ]));
        assert!(err.is_empty(), "{err}");
        let (_, offline_explained, _) = run(args(&["--policy", example, "--explain"]));
        let online_explained = strip(&online_explained);
        assert_eq!(online_explained, strip(&offline_explained));
        assert!(online_explained["explanation"]["keys"].is_array());
    }
    server.stop().await.unwrap();
}

#[test]
fn explain_text_names_the_keys_the_grant_and_the_coverage() {
    let example = repo_path("deploy/examples/policy.yaml");
    let (code, out, _) = rolegate(&[
        "check",
        "--policy",
        example.to_str().unwrap(),
        "--key",
        "DanaScienceKey000001",
        "--entitlement",
        "keys.update",
        "--team",
        "globex",
        "--explain",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("requestor: user dana"), "{out}");
    assert!(
        out.contains("key DanaGlobexAdmin00001 (team globex, roles [ACCOUNT_ADMIN]): considered"),
        "{out}"
    );
    assert!(
        out.contains("decided by: TEAM from role ACCOUNT_ADMIN on key DanaGlobexAdmin00001"),
        "{out}"
    );
    assert!(out.contains("a TEAM grant covers team globex"), "{out}");

    let (code, out, _) = rolegate(&[
        "check",
        "--policy",
        example.to_str().unwrap(),
        "--key",
        "DevinDevKey000000001",
        "--entitlement",
        "jobs.cancel",
        "--team",
        "acme",
        "--owner-key",
        "AdamAdminKey00000001",
        "--explain",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("key DevinOldKey000000001 (team acme, roles [DEVELOPER]): skipped: inactive"),
        "{out}"
    );
    assert!(out.contains("the resource is not covered"), "{out}");
    assert!(out.contains("not owner key AdamAdminKey00000001"), "{out}");
}

// ---- who-can: the fast pass equals a plain reference --------------------------------------
/// A holder as the reference lists it: prefix, scope, team of a TEAM grant, role.
type Listed = (String, Scope, Option<String>, String);

/// who-can the plain way: every key, every role of the key, every grant of the role.
fn who_can_reference(
    model: &Model,
    entitlement: &str,
    team: Option<&str>,
    now: i64,
) -> Vec<Listed> {
    let catalog = &model.catalog;
    let mut out = Vec::new();
    for spec in model.keys.values() {
        let key_team = match spec.key_type {
            KeyType::Team => spec.team.clone(),
            KeyType::Project => model.projects.get(&*spec.owner).map(|p| p.team.clone()),
        };
        let Some(key_team) = key_team else {
            continue;
        };
        let requestor_active = match spec.key_type {
            KeyType::Team => model.users.get(&*spec.owner).is_some_and(|u| u.active),
            KeyType::Project => model.projects.contains_key(&*spec.owner),
        };
        let usable = spec.status == KeyStatus::Active
            && !spec.expires_at.is_reached(now)
            && model.teams.get(&*key_team).is_some_and(|t| t.active)
            && requestor_active;
        if !usable {
            continue;
        }
        let roles: Vec<&Role> = std::iter::once(&**catalog.team_role())
            .chain(
                spec.roles
                    .iter()
                    .filter_map(|r| catalog.role(r).map(|r| &**r)),
            )
            .collect();
        for scope in [Scope::All, Scope::Team, Scope::Own] {
            if scope != Scope::All && team.is_some_and(|t| t != &*key_team) {
                continue;
            }
            let granting = roles.iter().find(|r| {
                r.grants
                    .iter()
                    .any(|g| &*g.entitlement == entitlement && g.scope == scope)
            });
            if let Some(role) = granting {
                let over = (scope == Scope::Team).then(|| key_team.to_string());
                out.push((spec.prefix.to_string(), scope, over, role.id.to_string()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    out
}

#[test]
fn who_can_equals_a_plain_reference_over_random_policies() {
    let cases = std::env::var("ROLEGATE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&world(), |w| {
            let text = policy_text(&w);
            let model = policy_file::parse(&text, "policy.yaml").unwrap().model;
            let now = unix_now();
            for entitlement in ENTITLEMENTS {
                for team in [None, Some("t0"), Some("t1"), Some("t2"), Some("nope")] {
                    let Ok(all) = who_can(&model, entitlement, team, now, usize::MAX) else {
                        prop_assert_eq!(entitlement, "no.such");
                        continue;
                    };
                    let expected = who_can_reference(&model, entitlement, team, now);
                    for limit in [usize::MAX, 0, 1, 2, 3] {
                        let answer = if limit == usize::MAX {
                            all.clone()
                        } else {
                            who_can(&model, entitlement, team, now, limit).unwrap()
                        };
                        let listed: Vec<Listed> = answer
                            .first
                            .iter()
                            .map(|h| {
                                let over = h.team.map(str::to_owned);
                                (h.prefix().to_owned(), h.scope, over, h.role.to_owned())
                            })
                            .collect();
                        prop_assert_eq!(answer.total, expected.len());
                        prop_assert_eq!(
                            &listed[..],
                            &expected[..limit.min(expected.len())],
                            "{} {:?} first {}\n{}",
                            entitlement,
                            team,
                            limit,
                            text
                        );
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

// The binary blocks this test's thread while the server answers it on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_can_prints_the_same_online_and_offline() {
    let example = repo_path("deploy/examples/policy.yaml");
    let example = example.to_str().unwrap();
    let server = TestServer::policy(&common::example_policy()).await;
    let url = server.url();
    let model = policy_file::parse(&common::example_policy(), "policy.yaml")
        .unwrap()
        .model;
    for (entitlement, team) in [("keys.update", Some("globex")), ("jobs.read", None)] {
        let answer = who_can(&model, entitlement, team, unix_now(), usize::MAX).unwrap();
        assert!(answer.total > 1, "{entitlement}: several holders");
        for output in ["json", "text"] {
            let mut args = vec!["who-can", entitlement, "--output", output];
            if let Some(team) = team {
                args.extend(["--team", team]);
            }
            let (code, offline, err) = rolegate(&[&args[..], &["--policy", example]].concat());
            assert_eq!(code, 0, "{offline}{err}");
            let online_args = ["--addr", url.as_str(), "--api-key", keys::ARIA_AUDITOR];
            let (code, online, err) = rolegate(&[&args[..], &online_args].concat());
            assert_eq!(code, 0, "{online}{err}");
            assert_eq!(online, offline, "{entitlement} {output}");
            if output == "json" {
                let v: serde_json::Value = serde_json::from_str(&offline).unwrap();
                assert_eq!(v["total"], answer.total, "{offline}");
                let listed = v["holders"].as_array().unwrap();
                assert_eq!(listed.len(), answer.total);
                for (h, want) in listed.iter().zip(&answer.first) {
                    assert_eq!(h["key_prefix"], want.prefix());
                    assert_eq!(h["requestor"], want.requestor_name());
                    assert_eq!(h["role"], want.role);
                    assert_eq!(h["team_id"], want.team.unwrap_or_default());
                    let scope = serde_json::to_value(want.scope).unwrap();
                    assert_eq!(h["scope"], scope);
                }
                continue;
            }
            // A header, a line per holder in order, padded to the columns, and the count.
            let lines: Vec<&str> = offline.lines().collect();
            assert_eq!(lines.len(), answer.total + 2, "{offline}");
            assert!(lines[0].starts_with("REQUESTOR  "), "{offline}");
            let key_column = lines[0].find("KEY").unwrap();
            for (line, want) in lines[1..].iter().zip(&answer.first) {
                assert!(line.starts_with(&want.requestor_name()), "{line}");
                assert_eq!(&line[key_column..][..want.prefix().len()], want.prefix());
                assert!(line.ends_with(want.role), "{line}");
            }
            assert_eq!(
                lines[answer.total + 1],
                format!("{} holder(s)", answer.total)
            );
        }
    }
    server.stop().await.unwrap();
}

// ---- the Explain and WhoCan RPCs -------------------------------------------------------------

fn explain_request(prefix: &str, entitlement: &str, team: &str) -> pb::ExplainRequest {
    pb::ExplainRequest {
        key_prefix: prefix.into(),
        entitlement: entitlement.into(),
        resource: Some(pb::Resource {
            team_id: team.into(),
            ..Default::default()
        }),
        min_revision: 0,
    }
}

#[tokio::test]
async fn explain_needs_audit_read_over_every_team_of_the_requestor() {
    let server = TestServer::policy(&common::example_policy()).await;
    let mut admin = server.admin().await;
    let devin = explain_request("DevinDevKey000000001", "jobs.read", "");
    // Adam administers acme, where Devin's keys are.
    let r = admin
        .explain(call(keys::ADAM_ADMIN, devin.clone()))
        .await
        .expect("an ACCOUNT_ADMIN explains a key of its team")
        .into_inner();
    let e = r.explanation.unwrap();
    assert_eq!(e.requestor, "user devin");
    assert_eq!(e.keys.len(), 2);
    assert!(r.check.unwrap().allowed);
    // A developer never may, not even about himself.
    let refused = admin
        .explain(call(keys::DEVIN_DEVELOPER, devin.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Dana has a key in globex, which Adam does not administer.
    let dana = explain_request("DanaScienceKey000001", "jobs.read", "acme");
    let refused = admin
        .explain(call(keys::ADAM_ADMIN, dana.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    admin
        .explain(call(keys::ARIA_AUDITOR, dana))
        .await
        .expect("the auditor reads every team's audit");
    // An unknown prefix is told only to a caller reading every team.
    let unknown = explain_request("NoSuchKey00000000001", "jobs.read", "");
    let refused = admin
        .explain(call(keys::ADAM_ADMIN, unknown.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let r = admin
        .explain(call(keys::OLIVIA_OWNER, unknown))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.check.unwrap().reason(), pb::Reason::UnknownKey);
    // No key at all.
    let refused = admin.explain(tonic::Request::new(devin)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn who_can_online_matches_offline_and_needs_reads_at_all() {
    let text = common::example_policy();
    let server = TestServer::policy(&text).await;
    let mut admin = server.admin().await;
    let request = pb::WhoCanRequest {
        entitlement: "keys.update".into(),
        team_id: "globex".into(),
    };
    let refused = admin
        .who_can(call(keys::ADAM_ADMIN, request.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let online = admin
        .who_can(call(keys::ARIA_AUDITOR, request))
        .await
        .unwrap()
        .into_inner();
    let model = policy_file::parse(&text, "policy.yaml").unwrap().model;
    let offline = who_can(
        &model,
        "keys.update",
        Some("globex"),
        unix_now(),
        usize::MAX,
    )
    .unwrap();
    let offline: Vec<pb::Holder> = offline.first.iter().map(pb::Holder::from).collect();
    assert_eq!(online.holders, offline);
    assert_eq!(online.total as usize, offline.len());
    // Who can update keys in globex: Dana's globex admin key at TEAM, Olivia at ALL; Adam
    // (acme only) is not among them.
    let at = |key: &str, scope: pb::Scope| {
        offline
            .iter()
            .any(|h| h.key_prefix == key && h.scope() == scope)
    };
    assert!(at("DanaGlobexAdmin00001", pb::Scope::Team));
    assert!(at("OliviaOwnerKey000001", pb::Scope::All));
    assert!(
        !offline
            .iter()
            .any(|h| h.key_prefix == "AdamAdminKey00000001")
    );
    let unknown = admin
        .who_can(call(
            keys::ARIA_AUDITOR,
            pb::WhoCanRequest {
                entitlement: "no.such".into(),
                team_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    server.stop().await.unwrap();
}

// ---- rolegate test -------------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_example_suite_passes() {
    let suite = repo_path("deploy/examples/policy.test.yaml");
    let (code, out, err) = rolegate(&["test", suite.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn a_failing_suite_exits_1_and_its_junit_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), common::example_policy()).unwrap();
    let suite = write(
        dir.path(),
        "mixed.test.yaml",
        "policy: policy.yaml\ncases:\n\
         - { name: passes, key: DevinDevKey000000001, entitlement: jobs.read, expect: allowed, scope: OWN }\n\
         - { name: wrong scope, key: DevinDevKey000000001, entitlement: jobs.read, expect: allowed, scope: TEAM }\n\
         - { name: wrong outcome, key: DevinDevKey000000001, entitlement: jobs.cancel, resource: { team: acme, owner_key: GusDevKey00000000001 }, expect: allowed }\n",
    );
    let junit = dir.path().join("junit.xml");
    let (code, out, err) = rolegate(&["test", &suite, "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL"), "{out}");
    assert!(out.contains("expected: allowed at TEAM"), "{out}");
    assert!(out.contains("actual:   allowed at OWN"), "{out}");
    assert!(out.contains("actual:   denied (OUT_OF_SCOPE)"), "{out}");
    assert!(
        out.contains("because: the resource is not covered"),
        "{out}"
    );
    assert!(out.contains("1 passed, 2 failed"), "{out}");

    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("well-formed JUnit XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("3"));
    assert_eq!(root.attribute("failures"), Some("2"));
    let cases: Vec<_> = root
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 3);
    let failed: Vec<&str> = cases
        .iter()
        .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
        .map(|c| c.attribute("name").unwrap())
        .collect();
    assert_eq!(failed, ["wrong scope", "wrong outcome"]);

    // A passing suite found by folder exits 0.
    let good = tempfile::tempdir().unwrap();
    std::fs::write(good.path().join("policy.yaml"), common::example_policy()).unwrap();
    write(
        good.path(),
        "ok.test.yaml",
        "policy: policy.yaml\ncases:\n\
         - { key: AdamAdminKey00000001, entitlement: keys.update, resource: { team: acme }, expect: allowed, scope: TEAM, reason: ALLOWED }\n",
    );
    let (code, out, err) = rolegate(&["test", good.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");

    // An invalid test file is an error (2), named with its line.
    let bad = write(
        good.path(),
        "bad.test.yaml",
        "policy: policy.yaml\ncases:\n  - { key: A, entitlement: jobs.read, expect: maybe }\n",
    );
    let (code, _, err) = rolegate(&["test", &bad]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.test.yaml:3"), "{err}");
}

// ---- privilege diffs -----------------------------------------------------------------------

fn diff(old: &str, new: &str) -> Vec<PrivilegeChange> {
    let load = |t: &str| IndexedModel::from(policy_file::parse(t, "p.yaml").unwrap().model);
    privilege_diff(&load(old), &load(new), unix_now())
}

fn base(keys: &str) -> String {
    format!(
        "teams: [{{ id: acme }}, {{ id: globex }}]\n\
         users: [{{ id: dana }}, {{ id: olivia }}, {{ id: gus }}]\n\
         keys:\n{keys}"
    )
}

fn key(prefix: &str, user: &str, team: &str, roles: &str) -> String {
    format!(
        "  - {{ prefix: {prefix}, secret_sha256: {}, type: team, user: {user}, team: {team}, roles: [{roles}] }}\n",
        "0".repeat(64)
    )
}

fn lines(changes: &[PrivilegeChange]) -> Vec<String> {
    changes.iter().map(|c| c.to_string()).collect()
}

#[test]
fn a_team_admin_key_in_another_team_gains_team_grants_over_it() {
    let old = base(&key("DanaKey1", "dana", "acme", "ACCOUNT_ADMIN"));
    let new = base(
        &(key("DanaKey1", "dana", "acme", "ACCOUNT_ADMIN")
            + &key("DanaKey2", "dana", "globex", "ACCOUNT_ADMIN")),
    );
    let changes = diff(&old, &new);
    let text = lines(&changes);
    assert!(
        text.contains(&"user dana: + keys.update TEAM over globex".to_owned()),
        "{text:#?}"
    );
    assert!(changes.iter().all(|c| c.gained), "{text:#?}");
    assert!(!changes.iter().any(|c| c.widens_to_all), "{text:#?}");
    assert!(
        changes
            .iter()
            .any(|c| c.key == "DanaKey2" && c.scope == Scope::Team),
        "the new key is listed: {text:#?}"
    );
    // And back: the same grants lost.
    let back = diff(&new, &old);
    assert_eq!(back.len(), changes.len());
    assert!(back.iter().all(|c| !c.gained));
    assert!(
        lines(&back).contains(&"user dana: - keys.update TEAM over globex".to_owned()),
        "{back:#?}"
    );
}

#[test]
fn a_key_added_to_a_user_holding_all_elsewhere_is_flagged() {
    let old = base(&key("OliviaKey1", "olivia", "acme", "SYSTEM_OWNER"));
    let new = base(
        &(key("OliviaKey1", "olivia", "acme", "SYSTEM_OWNER")
            + &key("OliviaKey2", "olivia", "globex", "DEVELOPER")),
    );
    let changes = diff(&old, &new);
    let text = lines(&changes);
    // No grant at ALL is new, but the new key acts with all of Olivia's: flagged.
    let key = changes
        .iter()
        .find(|c| c.key == "OliviaKey2")
        .unwrap_or_else(|| panic!("{text:#?}"));
    assert!(key.gained && key.scope == Scope::All && key.widens_to_all);
    assert!(
        text.contains(&"user olivia: + models.read TEAM over globex".to_owned()),
        "{text:#?}"
    );
    assert!(!changes.iter().any(|c| !c.gained), "{text:#?}");
}

#[test]
fn a_role_widened_to_all_is_flagged_for_every_holder() {
    let role = |scope: &str| {
        format!(
            "roles:\n  - {{ id: READER, type: user, grants: [{{ entitlement: jobs.read, scope: {scope} }}] }}\n"
        )
    };
    let keys = key("GusKey01", "gus", "acme", "READER") + &key("DanaKey1", "dana", "globex", "");
    let old = role("TEAM") + &base(&keys);
    let new = role("ALL") + &base(&keys);
    let changes = diff(&old, &new);
    assert_eq!(
        lines(&changes),
        [
            "user gus: - jobs.read TEAM over acme",
            "user gus: + jobs.read ALL over every team  [widens to ALL]",
        ]
    );
    // Deactivating a key loses what only it carried.
    let inactive = base(
        &(key("GusKey01", "gus", "acme", "DEVELOPER").replace("roles", "status: inactive, roles")),
    );
    let active = base(&key("GusKey01", "gus", "acme", "DEVELOPER"));
    let changes = diff(&active, &inactive);
    assert!(changes.iter().all(|c| !c.gained));
    assert!(
        lines(&changes).contains(&"user gus: - jobs.create OWN over its own data".to_owned()),
        "{changes:#?}"
    );
    assert!(diff(&active, &active).is_empty());
}

#[test]
fn diff_command_prints_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(
        dir.path(),
        "old.yaml",
        &base(&key("OliviaKey1", "olivia", "acme", "SYSTEM_OWNER")),
    );
    let new = write(
        dir.path(),
        "new.yaml",
        &base(
            &(key("OliviaKey1", "olivia", "acme", "SYSTEM_OWNER")
                + &key("GusKey01", "gus", "globex", "AUDITOR")),
        ),
    );
    let (code, out, err) = rolegate(&["diff", &old, &new]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("user gus: + audit.read ALL over every team   <- widens to ALL"),
        "{out}"
    );
    assert!(out.contains("WARNING"), "{out}");
    let (code, out, _) = rolegate(&["diff", &old, &new, "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["widens_to_all"], true);
    assert!(v["privileges"].as_array().unwrap().iter().any(|c| {
        c["requestor"] == "user gus" && c["entitlement"] == "audit.read" && c["scope"] == "ALL"
    }));
}

#[tokio::test]
async fn apply_dry_run_reports_privileges() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    common::seed_example(&mut admin).await;
    let document = common::example_with_bootstrap().replace(
        "    user: gus\n    team: globex\n    roles: [DEVELOPER]",
        "    user: gus\n    team: globex\n    roles: [DEVELOPER, AUDITOR]",
    );
    let r = admin
        .apply(call(
            common::BOOTSTRAP,
            pb::ApplyRequest {
                document,
                dry_run: true,
                prune: false,
                name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.dry_run);
    assert!(
        r.privileges.iter().any(|p| p.requestor == "user gus"
            && p.gained
            && p.entitlement == "audit.read"
            && p.widens_to_all),
        "{:#?}",
        r.privileges
    );
    assert!(r.privileges.iter().all(|p| p.requestor == "user gus"));
    server.stop().await.unwrap();
}
