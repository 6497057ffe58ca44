//! The Admin API over real gRPC against the embedded store: key lifecycle, the authorization
//! matrix with escalation attempts, bad input with field violations, Apply, the policy-file mode,
//! concurrent writers and restarts.

mod common;

use std::collections::HashSet;

use common::{
    BOOTSTRAP, TestServer, call, check_at, example_with_bootstrap, field_violations, keys,
    seed_example,
};
use rolegate::grpc::pb::{self, admin_client::AdminClient};
use tonic::{Code, transport::Channel};

fn team_key(prefix: &str, user: &str, team: &str, roles: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        prefix: prefix.into(),
        key_type: pb::KeyType::Team as i32,
        user: user.into(),
        team: team.into(),
        project: String::new(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expires_at: 0,
    }
}

async fn started() -> (TestServer, AdminClient<Channel>) {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    seed_example(&mut admin).await;
    (server, admin)
}

#[tokio::test]
async fn key_lifecycle_end_to_end() {
    let (server, mut admin) = started().await;
    let mut authz = server.authorizer().await;

    // Create: the whole key comes back once; reads never show a secret.
    let created = admin
        .create_key(call(
            BOOTSTRAP,
            team_key("", "devin", "acme", &["DEVELOPER"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let key = created.api_key.clone();
    let prefix = created.key.as_ref().unwrap().prefix.clone();
    assert_eq!(prefix.len(), 20, "a generated prefix");
    assert!(key.starts_with(&format!("{prefix}.")));
    let got = admin
        .get_key(call(BOOTSTRAP, pb::GetRequest { id: prefix.clone() }))
        .await
        .unwrap()
        .into_inner();
    let shown = format!("{got:?}");
    assert!(!shown.contains(key.split_once('.').unwrap().1), "{shown}");

    // Check at the revision the write returned: allowed.
    let ok = authz
        .check(check_at(&key, "jobs.create", "", &prefix, created.revision))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.allowed, "{ok:?}");
    assert!(ok.revision >= created.revision);

    // Revoke: at the revoke's revision the key is unauthenticated.
    let revoked = admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: prefix.clone(),
                status: Some("inactive".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revision > created.revision);
    assert_eq!(revoked.key.unwrap().status, "inactive");
    let denied = authz
        .check(check_at(&key, "jobs.create", "", &prefix, revoked.revision))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    assert_eq!(denied.reason(), pb::Reason::KeyInactive);

    // Reactivate, then replace the secret: the old one fails, the new one works.
    admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: prefix.clone(),
                status: Some("active".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let replaced = admin
        .replace_key_secret(call(BOOTSTRAP, pb::GetRequest { id: prefix.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(replaced.api_key, key);
    assert!(replaced.api_key.starts_with(&format!("{prefix}.")));
    let old = authz
        .check(check_at(
            &key,
            "jobs.create",
            "",
            &prefix,
            replaced.revision,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.reason(), pb::Reason::WrongSecret);
    let new = authz
        .check(check_at(
            &replaced.api_key,
            "jobs.create",
            "",
            &prefix,
            replaced.revision,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(new.allowed, "{new:?}");

    // Delete: unknown from then on.
    let deleted = admin
        .delete_key(call(BOOTSTRAP, pb::DeleteRequest { id: prefix.clone() }))
        .await
        .unwrap()
        .into_inner();
    let gone = authz
        .check(check_at(
            &replaced.api_key,
            "jobs.create",
            "",
            &prefix,
            deleted.revision,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.reason(), pb::Reason::UnknownKey);
}

#[tokio::test]
async fn missing_or_bad_caller_keys_are_unauthenticated() {
    let (_server, mut admin) = started().await;
    let no_key = admin
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::Unauthenticated);
    for key in [
        "RolegateBootstrap01.wrong-secret",
        "nodot",
        keys::DEVIN_OLD_INACTIVE,
    ] {
        let err = admin
            .list_keys(call(key, pb::ListKeysRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{key}: {err:?}");
    }
}

/// Each caller role × each call × own team (acme) / other team (globex).
#[tokio::test]
async fn authorization_matrix() {
    let (_server, mut admin) = started().await;
    // A data scientist with no other key (dana also administers globex).
    admin
        .create_user(call(
            BOOTSTRAP,
            pb::UserRequest {
                user: Some(pb::User {
                    id: "sam".into(),
                    name: "Sam".into(),
                    active: true,
                    teams: vec!["acme".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let sam = admin
        .create_key(call(
            BOOTSTRAP,
            team_key("SamScienceKey0000001", "sam", "acme", &["DATA_SCIENTIST"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;

    let callers: Vec<(&str, String)> = vec![
        ("SYSTEM_OWNER", keys::OLIVIA_OWNER.into()),
        ("ACCOUNT_ADMIN", keys::ADAM_ADMIN.into()),
        ("DATA_SCIENTIST", sam),
        ("DEVELOPER", keys::DEVIN_DEVELOPER.into()),
        ("AUDITOR", keys::ARIA_AUDITOR.into()),
        ("SYSTEM_KEY", keys::FRAUD_PROJECT.into()),
    ];
    // (call, [(role, allowed in acme, allowed in globex)])
    let expect: &[(&str, [(bool, bool); 6])] = &[
        // owner, admin, scientist, developer, auditor, project
        (
            "CreateKey",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (false, false),
                (false, false),
            ],
        ),
        (
            "GetKey",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (true, true),
                (false, false),
            ],
        ),
        (
            "DeactivateKey",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (false, false),
                (false, false),
            ],
        ),
        (
            "DeleteKey",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (false, false),
                (false, false),
            ],
        ),
        (
            "UpdateTeam",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (false, false),
                (false, false),
            ],
        ),
        (
            "CreateUser",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (false, false),
                (false, false),
            ],
        ),
        (
            // SYSTEM_OWNER holds no projects.create, but a team's administration
            // (accounts.update over it) covers its projects.
            "CreateProject",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (false, false),
                (false, false),
            ],
        ),
        (
            "GetProject",
            [
                (true, true),
                (true, false),
                (false, false),
                (false, false),
                (true, true),
                (false, false),
            ],
        ),
    ];

    let users = [("acme", "devin"), ("globex", "gus")];
    // Keys of users who are none of the callers and live in one team (a user with keys in
    // another team is outside a team admin's administration).
    let victims = ["vicky", "rita"];
    admin
        .create_user(call(
            BOOTSTRAP,
            pb::UserRequest {
                user: Some(pb::User {
                    id: "vicky".into(),
                    name: "Vicky".into(),
                    active: true,
                    teams: vec!["acme".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let others = [
        ("acme", "AdamAdminKey00000001"),
        ("globex", "GusDevKey00000000001"),
    ];
    let projects = [("acme", "fraud-detector"), ("globex", "globex-proj")];
    admin
        .create_project(call(
            keys::DANA_GLOBEX_ADMIN,
            pb::ProjectRequest {
                project: Some(pb::Project {
                    id: "globex-proj".into(),
                    team: "globex".into(),
                    name: "G".into(),
                }),
            },
        ))
        .await
        .unwrap();

    let mut n = 0;
    let mut failures = Vec::new();
    for (call_name, row) in expect {
        for (ci, (role, key)) in callers.iter().enumerate() {
            for (ti, team) in ["acme", "globex"].into_iter().enumerate() {
                n += 1;
                let want = if ti == 0 { row[ci].0 } else { row[ci].1 };
                // A victim key for the calls that change one.
                let victim = format!("Victim{n:04}xxxxxxxx");
                if matches!(*call_name, "DeactivateKey" | "DeleteKey") {
                    admin
                        .create_key(call(BOOTSTRAP, team_key(&victim, victims[ti], team, &[])))
                        .await
                        .unwrap();
                }
                let result: Result<(), tonic::Status> = match *call_name {
                    "CreateKey" => admin
                        .create_key(call(
                            key,
                            team_key(&format!("Made{n:04}xxxxxxxx"), users[ti].1, team, &[]),
                        ))
                        .await
                        .map(drop),
                    "GetKey" => admin
                        .get_key(call(
                            key,
                            pb::GetRequest {
                                id: others[ti].1.into(),
                            },
                        ))
                        .await
                        .map(drop),
                    "DeactivateKey" => admin
                        .update_key(call(
                            key,
                            pb::UpdateKeyRequest {
                                prefix: victim.clone(),
                                status: Some("inactive".into()),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(drop),
                    "DeleteKey" => admin
                        .delete_key(call(key, pb::DeleteRequest { id: victim.clone() }))
                        .await
                        .map(drop),
                    "UpdateTeam" => admin
                        .update_team(call(
                            key,
                            pb::UpdateTeamRequest {
                                id: team.into(),
                                name: Some(format!("{team} renamed {n}")),
                                active: None,
                            },
                        ))
                        .await
                        .map(drop),
                    "CreateUser" => admin
                        .create_user(call(
                            key,
                            pb::UserRequest {
                                user: Some(pb::User {
                                    id: format!("user{n}"),
                                    name: "U".into(),
                                    active: true,
                                    teams: vec![team.into()],
                                }),
                            },
                        ))
                        .await
                        .map(drop),
                    "CreateProject" => admin
                        .create_project(call(
                            key,
                            pb::ProjectRequest {
                                project: Some(pb::Project {
                                    id: format!("proj{n}"),
                                    team: team.into(),
                                    name: "P".into(),
                                }),
                            },
                        ))
                        .await
                        .map(drop),
                    "GetProject" => admin
                        .get_project(call(
                            key,
                            pb::GetRequest {
                                id: projects[ti].1.into(),
                            },
                        ))
                        .await
                        .map(drop),
                    other => unreachable!("{other}"),
                };
                let ok = match &result {
                    Ok(()) => true,
                    Err(s) if s.code() == Code::PermissionDenied => false,
                    Err(s) => panic!("{call_name} by {role} in {team}: unexpected {s:?}"),
                };
                if ok != want {
                    failures.push(format!(
                        "{call_name} by {role} in {team}: allowed={ok}, want {want} ({result:?})"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(n, 8 * 6 * 2);

    // Lists are filtered to what the caller's grants cover.
    let users: HashSet<String> = admin
        .list_users(call(keys::ADAM_ADMIN, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .users
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert!(
        users.contains("devin") && users.contains("dana"),
        "{users:?}"
    );
    assert!(
        !users.contains("gus") && !users.contains("aria"),
        "{users:?}"
    );
    let visible = |key: &'static str| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_keys(call(key, pb::ListKeysRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .keys
                .into_iter()
                .map(|k| (k.prefix, k.team, k.user))
                .collect::<Vec<_>>()
        }
    };
    assert!(
        visible(keys::ADAM_ADMIN)
            .await
            .iter()
            .all(|(_, t, _)| t == "acme")
    );
    // A developer sees its own keys only (TEAM_ROLE's keys.read at OWN).
    let own = visible(keys::DEVIN_DEVELOPER).await;
    assert!(own.iter().all(|(_, _, u)| u == "devin"), "{own:?}");
    assert!(own.iter().any(|(p, _, _)| p == "DevinOldKey000000001"));
    let all = visible(keys::ARIA_AUDITOR).await;
    assert!(all.iter().any(|(_, t, _)| t == "acme") && all.iter().any(|(_, t, _)| t == "globex"));
}

#[tokio::test]
async fn escalation_attempts_are_refused() {
    let (_server, mut admin) = started().await;

    // An ACCOUNT_ADMIN granting SYSTEM_OWNER, in its own team.
    let err = admin
        .create_key(call(
            keys::ADAM_ADMIN,
            team_key("AdamMadeOwner0001", "devin", "acme", &["SYSTEM_OWNER"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("escalation"), "{}", err.message());
    assert!(err.message().contains("SYSTEM_OWNER"), "{}", err.message());
    // …or promoting an existing key to it.
    let err = admin
        .update_key(call(
            keys::ADAM_ADMIN,
            pb::UpdateKeyRequest {
                prefix: "DevinDevKey000000001".into(),
                replace_roles: true,
                roles: vec!["SYSTEM_OWNER".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Binding its own role in its own team is no escalation.
    admin
        .update_key(call(
            keys::ADAM_ADMIN,
            pb::UpdateKeyRequest {
                prefix: "DevinDevKey000000001".into(),
                replace_roles: true,
                roles: vec!["DEVELOPER".into(), "ACCOUNT_ADMIN".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("an admin binds ACCOUNT_ADMIN in its own team");
    admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: "DevinDevKey000000001".into(),
                replace_roles: true,
                roles: vec!["DEVELOPER".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // A DEVELOPER giving itself ACCOUNT_ADMIN.
    let err = admin
        .update_key(call(
            keys::DEVIN_DEVELOPER,
            pb::UpdateKeyRequest {
                prefix: "DevinDevKey000000001".into(),
                replace_roles: true,
                roles: vec!["DEVELOPER".into(), "ACCOUNT_ADMIN".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // It may read and deactivate its own key, but not reactivate it.
    admin
        .get_key(call(
            keys::DEVIN_DEVELOPER,
            pb::GetRequest {
                id: "DevinDevKey000000001".into(),
            },
        ))
        .await
        .expect("a key holder reads its own key");
    let err = admin
        .update_key(call(
            keys::DEVIN_DEVELOPER,
            pb::UpdateKeyRequest {
                prefix: "DevinOldKey000000001".into(),
                status: Some("active".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    admin
        .update_key(call(
            keys::DEVIN_DEVELOPER,
            pb::UpdateKeyRequest {
                prefix: "DevinOldKey000000001".into(),
                status: Some("deleted".into()),
                ..Default::default()
            },
        ))
        .await
        .expect("a key holder deactivates its own key");

    // A project key cannot change roles, not even its own.
    let err = admin
        .update_key(call(
            keys::FRAUD_PROJECT,
            pb::UpdateKeyRequest {
                prefix: "FraudProjectKey00001".into(),
                replace_roles: true,
                roles: vec![],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("keys.update at TEAM"),
        "{}",
        err.message()
    );

    // A custom role wider than its creator: the creator may define roles but holds models.read
    // only at TEAM.
    admin
        .create_role(call(
            BOOTSTRAP,
            pb::RoleRequest {
                role: Some(pb::Role {
                    id: "ROLE_MAKER".into(),
                    r#type: "user".into(),
                    grants: vec![grant("roles.create", "ALL"), grant("models.read", "TEAM")],
                    prebuilt: false,
                }),
            },
        ))
        .await
        .unwrap();
    let maker = admin
        .create_key(call(
            BOOTSTRAP,
            team_key("RoleMakerKey00001", "gus", "globex", &["ROLE_MAKER"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let role = |id: &str, grants: Vec<pb::Grant>| pb::RoleRequest {
        role: Some(pb::Role {
            id: id.into(),
            r#type: "user".into(),
            grants,
            prebuilt: false,
        }),
    };
    admin
        .create_role(call(
            &maker,
            role("NARROW", vec![grant("models.read", "TEAM")]),
        ))
        .await
        .expect("a role within the creator's grants");
    // Defining a role hands out nothing at ALL that the definer lacks at ALL; grants that stop
    // at TEAM or OWN are bound only by those who administer a team, so they may be defined.
    let err = admin
        .create_role(call(
            &maker,
            role("WIDER", vec![grant("models.read", "ALL")]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("models.read at ALL"),
        "{}",
        err.message()
    );
    admin
        .create_role(call(
            &maker,
            role(
                "TEAM_TOOLS",
                vec![grant("models.deploy", "OWN"), grant("keys.update", "TEAM")],
            ),
        ))
        .await
        .expect("a role whose grants stop at TEAM and OWN");
    // The maker administers no team, so it cannot bind what it defined.
    let err = admin
        .create_key(call(
            &maker,
            team_key("GusToolsKey000001", "gus", "globex", &["TEAM_TOOLS"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

fn grant(entitlement: &str, scope: &str) -> pb::Grant {
    pb::Grant {
        entitlement: entitlement.into(),
        scope: scope.into(),
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_with_field_violations() {
    let (_server, mut admin) = started().await;
    let fraud_key = |roles: &[&str]| pb::CreateKeyRequest {
        prefix: "FraudKey2xxxxx".into(),
        key_type: pb::KeyType::Project as i32,
        project: "fraud-detector".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::CreateKeyRequest, &str)> = vec![
        (
            "a user role on a project key",
            fraud_key(&["DATA_SCIENTIST"]),
            "keys[FraudKey2xxxxx].roles",
        ),
        (
            "SYSTEM_KEY on a team key",
            team_key("TeamSysKey000001", "devin", "acme", &["SYSTEM_KEY"]),
            "keys[TeamSysKey000001].roles",
        ),
        (
            "a key for a user outside its team",
            team_key("GusInAcme0000001", "gus", "acme", &[]),
            "keys[GusInAcme0000001].team",
        ),
        (
            "a dangling user",
            team_key("Nobody0000000001", "nobody", "acme", &[]),
            "keys[Nobody0000000001].user",
        ),
        (
            "an unknown role",
            team_key("NoRole0000000001", "devin", "acme", &["NO_SUCH_ROLE"]),
            "keys[NoRole0000000001].roles",
        ),
        (
            "an unknown role on a key whose prefix the server generates",
            team_key("", "devin", "acme", &["NO_SUCH_ROLE"]),
            "roles",
        ),
        (
            "a duplicate prefix",
            team_key("DevinDevKey000000001", "devin", "acme", &[]),
            "keys[DevinDevKey000000001].prefix",
        ),
        (
            "a bad prefix",
            team_key("no/slash", "devin", "acme", &[]),
            "prefix",
        ),
        (
            "an expiry after 2106",
            pb::CreateKeyRequest {
                expires_at: 7_258_118_400,
                ..team_key("Late000000000001", "devin", "acme", &[])
            },
            "expires_at",
        ),
        (
            "an expiry before 1970",
            pb::CreateKeyRequest {
                expires_at: -1,
                ..team_key("Early00000000001", "devin", "acme", &[])
            },
            "expires_at",
        ),
    ];
    for (what, req, field) in cases {
        let err = admin.create_key(call(BOOTSTRAP, req)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        let fields = field_violations(&err);
        assert!(
            fields.iter().any(|(f, _)| f == field),
            "{what}: want {field} in {fields:?}"
        );
    }

    // A dangling team, through a user.
    let err = admin
        .create_user(call(
            BOOTSTRAP,
            pb::UserRequest {
                user: Some(pb::User {
                    id: "zed".into(),
                    name: "Z".into(),
                    active: true,
                    teams: vec!["nowhere".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    // The caller cannot cover a team that does not exist… but SYSTEM_OWNER covers ALL, so the
    // model's rule answers.
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        field_violations(&err)
            .iter()
            .any(|(f, _)| f == "users[zed].teams")
    );

    // Unknown entitlements in a role.
    let err = admin
        .create_role(call(
            BOOTSTRAP,
            pb::RoleRequest {
                role: Some(pb::Role {
                    id: "EXPORTER".into(),
                    r#type: "user".into(),
                    grants: vec![grant("nothing.here", "TEAM")],
                    prebuilt: false,
                }),
            },
        ))
        .await
        .unwrap_err();
    // SYSTEM_OWNER binds any role, so the model's rule answers (not the escalation check).
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        field_violations(&err)
            .iter()
            .any(|(f, _)| f == "roles[EXPORTER].grants")
    );

    // Deleting a role still bound names the keys.
    let err = admin
        .delete_role(call(
            BOOTSTRAP,
            pb::DeleteRequest {
                id: "MODEL_REVIEWER".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("RitaReviewKey0000001"),
        "{}",
        err.message()
    );

    // Removing a team that keys still use.
    let err = admin
        .delete_team(call(
            BOOTSTRAP,
            pb::DeleteRequest {
                id: "globex".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!field_violations(&err).is_empty());

    // Nothing of the refused writes is in the state.
    let listed = admin
        .list_keys(call(BOOTSTRAP, pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let prefixes: HashSet<_> = listed.keys.iter().map(|k| k.prefix.as_str()).collect();
    for p in [
        "FraudKey2xxxxx",
        "TeamSysKey000001",
        "GusInAcme0000001",
        "Nobody0000000001",
    ] {
        assert!(!prefixes.contains(p), "{p} was written");
    }
}

#[tokio::test]
async fn apply_diffs_the_document_and_commits_one_revision() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    let doc = example_with_bootstrap();
    let dry = admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: doc.clone(),
                dry_run: true,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(dry.dry_run);
    assert_eq!(dry.revision, 1, "a dry run commits nothing");
    assert!(
        dry.changes
            .contains(&"put key AdamAdminKey00000001".to_string()),
        "{:?}",
        dry.changes
    );
    let applied = admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: doc.clone(),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.revision, 2, "the whole document is one revision");
    assert_eq!(applied.changes, dry.changes);
    let again = admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: doc.clone(),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty());
    assert_eq!(again.revision, 2, "no change, no revision");

    // A document without the caller's key would lock the caller out.
    let err = admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: common::example_policy(),
                dry_run: true,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A bad document: located field violations.
    let err = admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: doc.replace("roles: [DEVELOPER]", "roles: [SYSTEM_KEY]"),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        field_violations(&err)
            .iter()
            .any(|(f, _)| f.starts_with("document:"))
    );
    // An Apply is judged change by change with the escalation rule: a team admin may apply a
    // document that changes only what it administers…
    let within = doc.replace("name: Devin (developer)", "name: Devin D.");
    let applied = admin
        .apply(call(
            keys::ADAM_ADMIN,
            pb::ApplyRequest {
                document: within,
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .expect("a team admin applies a change within its team")
        .into_inner();
    assert_eq!(applied.changes, ["put user devin"]);
    // …and nothing beyond it, dry run or not.
    let beyond = doc.replace("name: Gus (developer)", "name: Gus G.");
    for dry_run in [true, false] {
        let err = admin
            .apply(call(
                keys::ADAM_ADMIN,
                pb::ApplyRequest {
                    document: beyond.clone(),
                    dry_run,
                    prune: true,
                    name: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("users.update"), "{}", err.message());
    }
}

#[tokio::test]
async fn policy_file_mode_refuses_writes_with_failed_precondition() {
    let server = TestServer::policy(&common::example_policy()).await;
    let mut admin = AdminClient::new(server.channel().await);
    let err = admin
        .create_team(call(
            keys::OLIVIA_OWNER,
            pb::TeamRequest {
                team: Some(pb::Team {
                    id: "initech".into(),
                    name: "Initech".into(),
                    active: true,
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("source of truth"),
        "{}",
        err.message()
    );
    // Reads are served from the file's state.
    let keys = admin
        .list_keys(call(keys::ADAM_ADMIN, pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        keys.keys.iter().all(|k| k.team == "acme"),
        "{:?}",
        keys.keys
    );
    assert!(!keys.keys.is_empty());
}

#[tokio::test]
async fn concurrent_writers_lose_no_update_and_revisions_strictly_increase() {
    let (server, _admin) = started().await;
    const WRITERS: usize = 16;
    const EACH: usize = 25;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut admin = server.admin().await;
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..EACH {
                let r = admin
                    .create_key(call(
                        BOOTSTRAP,
                        team_key(&format!("Conc{w:02}x{i:03}xxxx"), "devin", "acme", &[]),
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .revision;
                revisions.push(r);
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "per client: {revs:?}");
        all.extend(revs);
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        WRITERS * EACH,
        "every write has its own revision"
    );
    let mut admin = server.admin().await;
    let listed = admin
        .list_keys(call(
            BOOTSTRAP,
            pb::ListKeysRequest {
                page_size: 1000,
                user: "devin".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let conc = listed
        .keys
        .iter()
        .filter(|k| k.prefix.starts_with("Conc"))
        .count();
    assert_eq!(conc, WRITERS * EACH, "no lost update");
    assert_eq!(listed.revision, *all.iter().max().unwrap());

    // Paging walks the same keys, each once, in prefix order.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_keys(call(
                BOOTSTRAP,
                pb::ListKeysRequest {
                    page_size: 7,
                    page_token: token,
                    user: "devin".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 7);
        paged.extend(page.keys.into_iter().map(|k| k.prefix));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut whole: Vec<String> = listed.keys.into_iter().map(|k| k.prefix).collect();
    whole.sort();
    assert_eq!(paged, whole);
}

#[tokio::test]
async fn state_and_revisions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::store_at(data.clone()).await;
    let mut admin = server.admin().await;
    let seeded = seed_example(&mut admin).await;
    let created = admin
        .create_key(call(
            BOOTSTRAP,
            team_key("Survivor00000001", "devin", "acme", &["DEVELOPER"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.revision > seeded);
    drop(admin);
    server.stop().await.unwrap();

    let server = TestServer::store_at(data).await;
    let mut admin = server.admin().await;
    let got = admin
        .get_key(call(
            BOOTSTRAP,
            pb::GetRequest {
                id: "Survivor00000001".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.revision, created.revision, "the revision continues");
    let (code, body) = common::http_get(server.http_addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["origin"]["kind"], "embedded", "{body}");
    assert_eq!(status["revision"], created.revision, "{body}");
    let mut authz = server.authorizer().await;
    let ok = authz
        .check(check_at(
            &created.api_key,
            "jobs.create",
            "",
            "Survivor00000001",
            created.revision,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.allowed);
    let next = admin
        .delete_key(call(
            BOOTSTRAP,
            pb::DeleteRequest {
                id: "Survivor00000001".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.revision, created.revision + 1);
}

/// Each Update RPC changes only the fields it names: a status set alone keeps the name, a name
/// set alone keeps the status (an operator's deactivation is never undone by a rename).
#[tokio::test]
async fn updates_change_only_the_fields_they_name() {
    let (server, mut admin) = started().await;
    let mut authz = server.authorizer().await;
    let team = |admin: &mut AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_team(call(
                    BOOTSTRAP,
                    pb::GetRequest {
                        id: "globex".into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .team
                .unwrap()
        }
    };

    // Teams.
    let before = team(&mut admin).await;
    let off = admin
        .update_team(call(
            BOOTSTRAP,
            pb::UpdateTeamRequest {
                id: "globex".into(),
                active: Some(false),
                name: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let t = off.team.unwrap();
    assert_eq!((t.name.as_str(), t.active), (before.name.as_str(), false));
    admin
        .update_team(call(
            BOOTSTRAP,
            pb::UpdateTeamRequest {
                id: "globex".into(),
                name: Some("Globex 2".into()),
                active: None,
            },
        ))
        .await
        .unwrap();
    let t = team(&mut admin).await;
    assert_eq!((t.name.as_str(), t.active), ("Globex 2", false));
    // The team's keys stay unauthenticated.
    let gus = authz
        .check(check_at(keys::GUS_DEVELOPER, "jobs.read", "", "", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!gus.allowed);
    assert_eq!(gus.reason, pb::Reason::TeamInactive as i32, "{gus:?}");

    // Users.
    let user = |admin: &mut AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_user(call(BOOTSTRAP, pb::GetRequest { id: "rita".into() }))
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap()
        }
    };
    let before = user(&mut admin).await;
    admin
        .update_user(call(
            BOOTSTRAP,
            pb::UpdateUserRequest {
                id: "rita".into(),
                active: Some(false),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let u = user(&mut admin).await;
    assert_eq!(
        (&u.name, &u.teams, u.active),
        (&before.name, &before.teams, false)
    );
    admin
        .update_user(call(
            BOOTSTRAP,
            pb::UpdateUserRequest {
                id: "rita".into(),
                name: Some("Rita R.".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let u = user(&mut admin).await;
    assert_eq!(
        (u.name.as_str(), &u.teams, u.active),
        ("Rita R.", &before.teams, false)
    );
    assert!(!u.teams.is_empty());
    admin
        .update_user(call(
            BOOTSTRAP,
            pb::UpdateUserRequest {
                id: "rita".into(),
                replace_teams: true,
                teams: vec![],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let u = user(&mut admin).await;
    assert_eq!(
        (u.name.as_str(), u.teams.len(), u.active),
        ("Rita R.", 0, false)
    );

    // Projects.
    let project = |admin: &mut AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_project(call(
                    BOOTSTRAP,
                    pb::GetRequest {
                        id: "fraud-detector".into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .project
                .unwrap()
        }
    };
    let before = project(&mut admin).await;
    admin
        .update_project(call(
            BOOTSTRAP,
            pb::UpdateProjectRequest {
                id: "fraud-detector".into(),
                name: Some("Fraud 2".into()),
                team: None,
            },
        ))
        .await
        .unwrap();
    let p = project(&mut admin).await;
    assert_eq!((p.name.as_str(), &p.team), ("Fraud 2", &before.team));

    // Keys: a status alone keeps the roles and the expiry.
    let key = |admin: &mut AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_key(call(
                    BOOTSTRAP,
                    pb::GetRequest {
                        id: keys::prefix(keys::DEVIN_DEVELOPER).into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .key
                .unwrap()
        }
    };
    admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: keys::prefix(keys::DEVIN_DEVELOPER).into(),
                expires_at: Some(4_000_000_000),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let before = key(&mut admin).await;
    admin
        .update_key(call(
            BOOTSTRAP,
            pb::UpdateKeyRequest {
                prefix: keys::prefix(keys::DEVIN_DEVELOPER).into(),
                status: Some("inactive".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let k = key(&mut admin).await;
    assert_eq!(
        (&k.roles, k.expires_at, k.status.as_str()),
        (&before.roles, 4_000_000_000, "inactive")
    );
}

/// An apply of a document (here, the example policy, which does not name the bootstrap key)
/// puts its objects and keeps the rest; only with prune does the state become the document, and
/// a prune that would remove the calling key is refused.
#[tokio::test]
async fn apply_keeps_what_the_document_does_not_name_unless_pruned() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    let apply = |prune: bool, dry_run: bool| pb::ApplyRequest {
        document: common::example_policy(),
        dry_run,
        prune,
        name: "seed.yaml".into(),
    };

    let refused = admin
        .apply(call(BOOTSTRAP, apply(true, true)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("RolegateBootstrap01"),
        "{}",
        refused.message()
    );

    let merged = admin
        .apply(call(BOOTSTRAP, apply(false, false)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        merged.changes.iter().all(|c| !c.starts_with("remove")),
        "{:?}",
        merged.changes
    );
    assert!(
        merged
            .kept
            .iter()
            .any(|k| k.contains("RolegateBootstrap01")),
        "the bootstrap key is listed as kept: {:?}",
        merged.kept
    );
    let mut authz = server.authorizer().await;
    let devin = authz
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "acme",
            "DevinDevKey000000001",
            merged.revision,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(devin.allowed, "the document's keys are in: {devin:?}");
    let owner = admin
        .get_key(call(
            BOOTSTRAP,
            pb::GetRequest {
                id: "RolegateBootstrap01".into(),
            },
        ))
        .await;
    assert!(owner.is_ok(), "the caller's key is kept: {owner:?}");

    // Applying the same document again changes nothing and still keeps the bootstrap objects.
    let again = admin
        .apply(call(BOOTSTRAP, apply(false, true)))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(!again.kept.is_empty());
}

/// `--seed` starts an empty store from a policy file, beside the bootstrap key; once the store
/// holds a revision the seed is not read again (here it no longer exists).
#[tokio::test]
async fn a_seed_fills_an_empty_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, common::example_policy()).unwrap();
    let data = dir.path().join("data");
    let seeded = seed.clone();
    let server = TestServer::with(common::Origin::StoreAt(data.clone()))
        .config(move |c| c.seed = Some(seeded))
        .start()
        .await;
    let mut authz = server.authorizer().await;
    let devin = authz
        .check(check_at(
            keys::DEVIN_DEVELOPER,
            "jobs.read",
            "acme",
            "DevinDevKey000000001",
            1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        devin.allowed,
        "the seed's keys serve from revision 1: {devin:?}"
    );
    let mut admin = server.admin().await;
    let owner = admin
        .get_key(call(
            BOOTSTRAP,
            pb::GetRequest {
                id: "RolegateBootstrap01".into(),
            },
        ))
        .await;
    assert!(
        owner.is_ok(),
        "the bootstrap key is made beside the seed: {owner:?}"
    );
    server.stop().await.unwrap();

    std::fs::remove_file(&seed).unwrap();
    let again = TestServer::with(common::Origin::StoreAt(data))
        .config(move |c| c.seed = Some(seed))
        .start()
        .await;
    let status = again.status().await;
    assert_eq!(status["revision"], 1, "{status}");
}
