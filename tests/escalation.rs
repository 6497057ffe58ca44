//! The escalation and lock-out rules through the real Admin API: a team admin's attempts to
//! reach beyond its team (each one a way it once worked), the work a team admin must be able to
//! do, the last owner key, and the audit trail every call leaves.

mod common;

use std::{
    io::{BufRead, BufReader},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{BOOTSTRAP, TestServer, call, check_at, keys, seed_example, store_command};
use rolegate::grpc::pb::{self, admin_client::AdminClient};
use tonic::{Code, transport::Channel};

fn team_key(prefix: &str, user: &str, team: &str, roles: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        prefix: prefix.into(),
        key_type: pb::KeyType::Team as i32,
        user: user.into(),
        team: team.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

fn status_of(prefix: &str, status: &str) -> pb::UpdateKeyRequest {
    pb::UpdateKeyRequest {
        prefix: prefix.into(),
        status: Some(status.into()),
        ..Default::default()
    }
}

async fn seeded() -> (TestServer, AdminClient<Channel>) {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    seed_example(&mut admin).await;
    (server, admin)
}

/// Asserts that `result` was refused by the escalation rule.
#[track_caller]
fn escalation<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    assert!(
        err.message().starts_with("escalation refused"),
        "{what}: {}",
        err.message()
    );
}

#[tokio::test]
async fn a_team_admin_cannot_reach_beyond_its_team() {
    let (server, mut admin) = seeded().await;
    let mut authz = server.authorizer().await;
    let olivia = keys::prefix(keys::OLIVIA_OWNER);

    // Minting a credential for a more powerful user: Olivia (SYSTEM_OWNER), Dana (an admin of
    // globex), the bootstrap user (SYSTEM_OWNER in its own team).
    for (user, why) in [
        ("olivia", "holds SYSTEM_OWNER's grants"),
        ("dana", "holds a key in globex"),
        ("bootstrap", "holds SYSTEM_OWNER's grants"),
    ] {
        let minted = admin
            .create_key(call(
                keys::ADAM_ADMIN,
                team_key(&format!("Minted{user}0001"), user, "acme", &[]),
            ))
            .await;
        escalation(&format!("a key for {user}, who {why}"), minted);
    }

    // Re-keying a more powerful key: refused, and Olivia's secret keeps working.
    escalation(
        "re-keying Olivia's key",
        admin
            .replace_key_secret(call(keys::ADAM_ADMIN, pb::GetRequest { id: olivia.into() }))
            .await,
    );
    let still = authz
        .check(check_at(keys::OLIVIA_OWNER, "keys.update", "globex", "", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(still.allowed, "Olivia's key still acts: {still:?}");

    // Acting against a more powerful principal whose key is in Adam's team.
    escalation(
        "deactivating Olivia's key",
        admin
            .update_key(call(keys::ADAM_ADMIN, status_of(olivia, "inactive")))
            .await,
    );
    escalation(
        "stripping Olivia's key",
        admin
            .update_key(call(
                keys::ADAM_ADMIN,
                pb::UpdateKeyRequest {
                    prefix: olivia.into(),
                    replace_roles: true,
                    ..Default::default()
                },
            ))
            .await,
    );
    escalation(
        "deleting Olivia's key",
        admin
            .delete_key(call(
                keys::ADAM_ADMIN,
                pb::DeleteRequest { id: olivia.into() },
            ))
            .await,
    );
    escalation(
        "deactivating the user olivia",
        admin
            .update_user(call(
                keys::ADAM_ADMIN,
                pb::UpdateUserRequest {
                    id: "olivia".into(),
                    active: Some(false),
                    ..Default::default()
                },
            ))
            .await,
    );
    escalation(
        "deactivating the team acme, where Olivia's key is",
        admin
            .update_team(call(
                keys::ADAM_ADMIN,
                pb::UpdateTeamRequest {
                    id: "acme".into(),
                    name: None,
                    active: Some(false),
                },
            ))
            .await,
    );
    // Binding what Adam does not hold at ALL, or outside acme.
    escalation(
        "binding AUDITOR to Devin's key",
        admin
            .update_key(call(
                keys::ADAM_ADMIN,
                pb::UpdateKeyRequest {
                    prefix: keys::prefix(keys::DEVIN_DEVELOPER).into(),
                    replace_roles: true,
                    roles: vec!["DEVELOPER".into(), "AUDITOR".into()],
                    ..Default::default()
                },
            ))
            .await,
    );
    escalation(
        "binding ACCOUNT_ADMIN to Gus's key in globex",
        admin
            .update_key(call(
                keys::ADAM_ADMIN,
                pb::UpdateKeyRequest {
                    prefix: keys::prefix(keys::GUS_DEVELOPER).into(),
                    replace_roles: true,
                    roles: vec!["ACCOUNT_ADMIN".into()],
                    ..Default::default()
                },
            ))
            .await,
    );
    // Nothing of it reached the state.
    let olivia_key = admin
        .get_key(call(
            keys::OLIVIA_OWNER,
            pb::GetRequest { id: olivia.into() },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(olivia_key.status, "active");
    assert_eq!(olivia_key.roles, ["SYSTEM_OWNER"]);
}

#[tokio::test]
async fn a_team_admin_gives_its_members_any_role_without_all_grants() {
    let (server, mut admin) = seeded().await;
    let mut authz = server.authorizer().await;
    for (prefix, role, entitlement) in [
        ("DevinDeveloper002", "DEVELOPER", "jobs.create"),
        ("DevinScientist001", "DATA_SCIENTIST", "models.deploy"),
    ] {
        let created = admin
            .create_key(call(
                keys::ADAM_ADMIN,
                team_key(prefix, "devin", "acme", &[role]),
            ))
            .await
            .unwrap_or_else(|e| panic!("Adam gives Devin {role}: {e:?}"))
            .into_inner();
        // The new key acts with the role: its own data.
        let decided = authz
            .check(check_at(
                &created.api_key,
                entitlement,
                "",
                prefix,
                created.revision,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(decided.allowed, "{role} key: {decided:?}");
    }
    // And manages them: deactivate, re-key, reactivate.
    let revoked = admin
        .update_key(call(
            keys::ADAM_ADMIN,
            status_of("DevinScientist001", "inactive"),
        ))
        .await
        .expect("Adam deactivates Devin's key");
    assert_eq!(revoked.into_inner().key.unwrap().status, "inactive");
    admin
        .replace_key_secret(call(
            keys::ADAM_ADMIN,
            pb::GetRequest {
                id: "DevinDeveloper002".into(),
            },
        ))
        .await
        .expect("Adam re-keys Devin's key");
    admin
        .update_key(call(
            keys::ADAM_ADMIN,
            status_of("DevinScientist001", "active"),
        ))
        .await
        .expect("Adam reactivates Devin's key");
}

#[tokio::test]
async fn the_last_owner_key_cannot_be_removed() {
    // A fresh store: the bootstrap key is the only SYSTEM_OWNER key.
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    let boot = keys::prefix(BOOTSTRAP);
    for (what, result) in [
        (
            "deleting the bootstrap key",
            admin
                .delete_key(call(BOOTSTRAP, pb::DeleteRequest { id: boot.into() }))
                .await
                .map(drop),
        ),
        (
            "deactivating the bootstrap key",
            admin
                .update_key(call(BOOTSTRAP, status_of(boot, "inactive")))
                .await
                .map(drop),
        ),
        (
            "taking SYSTEM_OWNER from the bootstrap key",
            admin
                .update_key(call(
                    BOOTSTRAP,
                    pb::UpdateKeyRequest {
                        prefix: boot.into(),
                        replace_roles: true,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
    ] {
        let err = result.expect_err(what);
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
        assert!(err.message().contains("SYSTEM_OWNER"), "{}", err.message());
    }
    // With a second owner key, the first may go.
    let second = admin
        .create_key(call(
            BOOTSTRAP,
            team_key(
                "SecondOwnerKey001",
                "bootstrap",
                "system",
                &["SYSTEM_OWNER"],
            ),
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    admin
        .delete_key(call(BOOTSTRAP, pb::DeleteRequest { id: boot.into() }))
        .await
        .expect("another owner key remains");
    // Which is now the last one.
    let err = admin
        .delete_key(call(
            &second,
            pb::DeleteRequest {
                id: "SecondOwnerKey001".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

/// Collects the lines a child process writes to stderr.
fn collect_stderr(child: &mut std::process::Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[tokio::test]
async fn every_admin_call_leaves_one_audit_line_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = store_command(dir.path()).spawn().expect("spawn rolegate");
    let lines = collect_stderr(&mut child);
    let addr = {
        let mut found = None;
        for _ in 0..400 {
            found = lines.lock().unwrap().iter().find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()?
                    .get("grpc")?
                    .as_str()
                    .map(str::to_owned)
            });
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        found.expect("the server logs its gRPC address")
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(channel);

    // Allowed: a team, then a key (whose secret must appear nowhere in the log).
    let team = admin
        .create_team(call(
            BOOTSTRAP,
            pb::TeamRequest {
                team: Some(pb::Team {
                    id: "audited".into(),
                    name: "Audited".into(),
                    active: true,
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    admin
        .create_user(call(
            BOOTSTRAP,
            pb::UserRequest {
                user: Some(pb::User {
                    id: "auditee".into(),
                    name: "Auditee".into(),
                    active: true,
                    teams: vec!["audited".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let made = admin
        .create_key(call(
            BOOTSTRAP,
            team_key("AuditedKey0000001", "auditee", "audited", &["DEVELOPER"]),
        ))
        .await
        .unwrap()
        .into_inner();
    // Refused: no key; a key without the rights; a bad secret.
    let anonymous = admin
        .list_teams(tonic::Request::new(pb::ListRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let refused = admin
        .delete_team(call(
            &made.api_key,
            pb::DeleteRequest {
                id: "audited".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let wrong = "AuditedKey0000001.not-the-secret-at-all";
    admin
        .get_team(call(
            wrong,
            pb::GetRequest {
                id: "audited".into(),
            },
        ))
        .await
        .unwrap_err();

    // The lines arrive asynchronously: wait for the six calls.
    let audit = || -> Vec<serde_json::Value> {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "rolegate::audit")
            .collect()
    };
    for _ in 0..400 {
        if audit().len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let audit = audit();
    let summary: Vec<(String, String, String, String)> = audit
        .iter()
        .map(|v| {
            (
                v["rpc"].as_str().unwrap_or_default().to_owned(),
                v["caller"].as_str().unwrap_or_default().to_owned(),
                v["object"].as_str().unwrap_or_default().to_owned(),
                v["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let row = |rpc: &str, caller: &str, object: &str, outcome: &str| {
        (rpc.into(), caller.into(), object.into(), outcome.into())
    };
    assert_eq!(
        summary,
        vec![
            row(
                "CreateTeam",
                "RolegateBootstrap01",
                "team audited",
                "allowed"
            ),
            row(
                "CreateUser",
                "RolegateBootstrap01",
                "user auditee",
                "allowed"
            ),
            row(
                "CreateKey",
                "RolegateBootstrap01",
                "key AuditedKey0000001",
                "allowed"
            ),
            row("ListTeams", "-", "teams", "refused"),
            row("DeleteTeam", "AuditedKey0000001", "team audited", "refused"),
            row("GetTeam", "AuditedKey0000001", "team audited", "refused"),
        ],
        "{audit:#?}"
    );
    // Writes carry their revision; refusals their code.
    assert_eq!(audit[0]["revision"], team.revision);
    assert_eq!(audit[4]["code"], "PermissionDenied");
    assert_eq!(audit[3]["code"], "Unauthenticated");
    // No secret, of the created key or the bootstrap key, anywhere in the log.
    let log = lines.lock().unwrap().join("\n");
    for secret in [
        made.api_key.split_once('.').unwrap().1,
        BOOTSTRAP.split_once('.').unwrap().1,
        "not-the-secret-at-all",
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}
