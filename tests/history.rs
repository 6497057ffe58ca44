//! The administration history over real gRPC: on the embedded store and on a real etcd, every
//! committed write is listed with its caller's key prefix, its RPC (or Apply) and its time;
//! `since_revision` and paging; `audit.read` required, and each scope (ALL, TEAM, OWN) sees its
//! entries only; retention prunes; the history survives a restart; a policy-file server and a
//! follower keep none and say so.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{BOOTSTRAP, Origin, TestServer, call, etcd::Etcd, keys, seed_example};
use rolegate::grpc::pb::{self, admin_client::AdminClient};
use tonic::{Code, transport::Channel};

const BOOTSTRAP_PREFIX: &str = "RolegateBootstrap01";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every entry `key` may read after `since`, page by page (`page_size` each).
async fn history(
    admin: &mut AdminClient<Channel>,
    key: &str,
    since: u64,
    page_size: u32,
) -> Result<Vec<pb::HistoryEntry>, tonic::Status> {
    let mut all = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = admin
            .list_history(call(
                key,
                pb::ListHistoryRequest {
                    since_revision: since,
                    page_size,
                    page_token: token,
                },
            ))
            .await?
            .into_inner();
        all.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
    panic!("the pages never ended");
}

/// (revision, caller, action) of each entry.
fn summary(entries: &[pb::HistoryEntry]) -> Vec<(u64, &str, &str)> {
    entries
        .iter()
        .map(|e| (e.revision, e.caller.as_str(), e.action.as_str()))
        .collect()
}

fn team(id: &str, name: &str) -> pb::TeamRequest {
    pb::TeamRequest {
        team: Some(pb::Team {
            id: id.into(),
            name: name.into(),
            active: true,
        }),
    }
}

fn team_key(user: &str, team: &str, roles: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        key_type: pb::KeyType::Team as i32,
        user: user.into(),
        team: team.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

/// The writes every scenario makes, by three callers; returns their (revision, caller,
/// action), in order.
async fn write_some(admin: &mut AdminClient<Channel>) -> Vec<(u64, String, &'static str)> {
    let mut made = Vec::new();
    let applied = seed_example(admin).await;
    made.push((applied, BOOTSTRAP_PREFIX.to_owned(), "Apply"));
    // An acme admin creates a key in acme.
    let created = admin
        .create_key(call(
            keys::ADAM_ADMIN,
            team_key("devin", "acme", &["DEVELOPER"]),
        ))
        .await
        .expect("adam creates a key")
        .into_inner();
    let adam = keys::prefix(keys::ADAM_ADMIN).to_owned();
    made.push((created.revision, adam, "CreateKey"));
    // The bootstrap key creates, changes and deletes a team.
    let r = admin
        .create_team(call(BOOTSTRAP, team("initech", "Initech")))
        .await
        .unwrap()
        .into_inner();
    made.push((r.revision, BOOTSTRAP_PREFIX.into(), "CreateTeam"));
    let r = admin
        .update_team(call(
            BOOTSTRAP,
            pb::UpdateTeamRequest {
                id: "initech".into(),
                name: Some("Initech Ltd".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    made.push((r.revision, BOOTSTRAP_PREFIX.into(), "UpdateTeam"));
    let r = admin
        .delete_team(call(
            BOOTSTRAP,
            pb::DeleteRequest {
                id: "initech".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    made.push((r.revision, BOOTSTRAP_PREFIX.into(), "DeleteTeam"));
    // A globex admin renames globex.
    let r = admin
        .update_team(call(
            keys::DANA_GLOBEX_ADMIN,
            pb::UpdateTeamRequest {
                id: "globex".into(),
                name: Some("Globex Corporation".into()),
                ..Default::default()
            },
        ))
        .await
        .expect("dana renames globex")
        .into_inner();
    made.push((
        r.revision,
        keys::prefix(keys::DANA_GLOBEX_ADMIN).into(),
        "UpdateTeam",
    ));
    made
}

fn owned<'a>(made: &'a [(u64, String, &'static str)]) -> Vec<(u64, &'a str, &'a str)> {
    made.iter().map(|(r, c, a)| (*r, c.as_str(), *a)).collect()
}

#[tokio::test]
async fn every_write_is_listed_with_its_caller_action_and_time() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    let started = now_ms();
    let made = write_some(&mut admin).await;
    let ended = now_ms();

    // ALL (the bootstrap key, SYSTEM_OWNER; the auditor): revision 1 is the store's own, then
    // every write, in order, each at the revision its answer gave.
    let all = history(&mut admin, BOOTSTRAP, 0, 0).await.unwrap();
    assert_eq!(summary(&all[..1]), [(1, BOOTSTRAP_PREFIX, "Bootstrap")]);
    assert_eq!(all[0].teams, ["system"], "{:?}", all[0]);
    assert_eq!(summary(&all[1..]), owned(&made));
    for e in &all[1..] {
        assert!(
            (started..=ended).contains(&e.time_unix_ms),
            "{e:?} not within [{started}, {ended}]"
        );
    }
    let auditor = history(&mut admin, keys::ARIA_AUDITOR, 0, 0).await.unwrap();
    assert_eq!(auditor, all);
    // What each touched.
    let by_action = |action: &str, caller: &str| {
        all.iter()
            .find(|e| e.action == action && e.caller == caller)
            .unwrap()
            .clone()
    };
    let adam = keys::prefix(keys::ADAM_ADMIN);
    assert_eq!(by_action("CreateKey", adam).teams, ["acme"]);
    assert!(!by_action("CreateKey", adam).beyond_teams);
    assert_eq!(by_action("DeleteTeam", BOOTSTRAP_PREFIX).teams, ["initech"]);
    let apply = by_action("Apply", BOOTSTRAP_PREFIX);
    assert!(apply.beyond_teams && apply.teams.contains(&"globex".to_string()));
    // No secret anywhere in what is listed.
    let shown = format!("{all:?}");
    for key in [BOOTSTRAP, keys::ADAM_ADMIN, keys::DANA_GLOBEX_ADMIN] {
        assert!(!shown.contains(key.split_once('.').unwrap().1), "{shown}");
    }

    // Since a revision: only the later ones.
    let since = made[2].0;
    let later = history(&mut admin, BOOTSTRAP, since, 0).await.unwrap();
    assert_eq!(summary(&later), owned(&made[3..]));
    let none = history(&mut admin, BOOTSTRAP, made[5].0, 0).await.unwrap();
    assert!(none.is_empty(), "{none:?}");

    // Paging: pages of 2 give the same list; a bad token is refused.
    let first = admin
        .list_history(call(
            BOOTSTRAP,
            pb::ListHistoryRequest {
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 2);
    assert!(!first.next_page_token.is_empty());
    assert!(first.revision >= made[5].0);
    assert_eq!(history(&mut admin, BOOTSTRAP, 0, 2).await.unwrap(), all);
    assert_eq!(history(&mut admin, BOOTSTRAP, 0, 1).await.unwrap(), all);
    let bad = admin
        .list_history(call(
            BOOTSTRAP,
            pb::ListHistoryRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
}

#[tokio::test]
async fn audit_read_is_required_and_each_scope_sees_its_own() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    let made = write_some(&mut admin).await;

    // Without audit.read (a developer), or without a key: refused.
    let refused = history(&mut admin, keys::DEVIN_DEVELOPER, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("audit.read"), "{refused:?}");
    let anonymous = admin
        .list_history(tonic::Request::new(pb::ListHistoryRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // TEAM (an account admin): the writes that touched only its team.
    let adam = history(&mut admin, keys::ADAM_ADMIN, 0, 0).await.unwrap();
    assert_eq!(
        summary(&adam),
        owned(&made[1..2]),
        "acme: the key adam made"
    );
    let dana = history(&mut admin, keys::DANA_GLOBEX_ADMIN, 0, 0)
        .await
        .unwrap();
    assert_eq!(summary(&dana), owned(&made[5..6]), "globex: its rename");

    // OWN: a custom role with audit.read at OWN sees what its user made, nothing else.
    admin
        .create_role(call(
            BOOTSTRAP,
            pb::RoleRequest {
                role: Some(pb::Role {
                    id: "SELF_AUDIT".into(),
                    r#type: "user".into(),
                    grants: ["audit.read", "keys.update"]
                        .iter()
                        .map(|e| pb::Grant {
                            entitlement: e.to_string(),
                            scope: "OWN".into(),
                        })
                        .collect(),
                    prebuilt: false,
                }),
            },
        ))
        .await
        .expect("create the role");
    let gus = admin
        .create_key(call(BOOTSTRAP, team_key("gus", "globex", &["SELF_AUDIT"])))
        .await
        .expect("a key for gus")
        .into_inner();
    let gus_prefix = gus.key.unwrap().prefix;
    let seen = history(&mut admin, &gus.api_key, 0, 0).await.unwrap();
    assert!(seen.is_empty(), "gus made nothing yet: {seen:?}");
    let replaced = admin
        .replace_key_secret(call(
            &gus.api_key,
            pb::GetRequest {
                id: gus_prefix.clone(),
            },
        ))
        .await
        .expect("gus replaces his own key's secret")
        .into_inner();
    let seen = history(&mut admin, &replaced.api_key, 0, 0).await.unwrap();
    assert_eq!(
        summary(&seen),
        [(replaced.revision, gus_prefix.as_str(), "ReplaceKeySecret")]
    );
    // The globex admin sees gus's write too (it touched globex only); acme's does not.
    let dana = history(&mut admin, keys::DANA_GLOBEX_ADMIN, 0, 0)
        .await
        .unwrap();
    assert_eq!(dana.last().unwrap().action, "ReplaceKeySecret");
    let adam_after = history(&mut admin, keys::ADAM_ADMIN, 0, 0).await.unwrap();
    assert_eq!(adam_after, adam);
}

#[tokio::test]
async fn retention_prunes_and_the_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::with(Origin::StoreAt(data.clone()))
        .config(|c| c.history_revisions = 3)
        .start()
        .await;
    let mut admin = server.admin().await;
    let made = write_some(&mut admin).await;
    let kept = history(&mut admin, BOOTSTRAP, 0, 0).await.unwrap();
    assert_eq!(summary(&kept), owned(&made[3..]), "the last 3 revisions");
    server.stop().await.unwrap();

    // Restarted with the default retention: the same entries, and new ones after them.
    let server = TestServer::store_at(data).await;
    let mut admin = server.admin().await;
    assert_eq!(history(&mut admin, BOOTSTRAP, 0, 0).await.unwrap(), kept);
    let r = admin
        .create_team(call(BOOTSTRAP, team("hooli", "Hooli")))
        .await
        .unwrap()
        .into_inner();
    let after = history(&mut admin, BOOTSTRAP, 0, 0).await.unwrap();
    assert_eq!(after.len(), 4);
    assert_eq!(
        summary(&after[3..]),
        [(r.revision, BOOTSTRAP_PREFIX, "CreateTeam")]
    );
}

#[tokio::test]
async fn a_policy_file_server_or_a_follower_keeps_no_history_and_says_so() {
    let server = TestServer::policy(&common::example_policy()).await;
    let mut admin = server.admin().await;
    let refused = history(&mut admin, keys::OLIVIA_OWNER, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("(policy_file origin) keeps no administration history"),
        "{refused:?}"
    );

    // A follower of a store hub: the hub lists it; the follower sends the caller there.
    let hub = TestServer::store().await;
    let mut hub_admin = hub.admin().await;
    let made = write_some(&mut hub_admin).await;
    let follower = TestServer::follower(&hub).await;
    let mut follower_admin = follower.admin().await;
    let refused = history(&mut follower_admin, BOOTSTRAP, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("ask the hub"), "{refused:?}");
    let listed = history(&mut hub_admin, BOOTSTRAP, 0, 0).await.unwrap();
    assert_eq!(summary(&listed[1..]), owned(&made));
}

/// Two instances on one real etcd: a write through either is listed by both, at the revision
/// its answer gave; retention prunes in the write's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_every_instance_lists_every_write() {
    let Some(etcd) = Etcd::start("history::on_etcd").await else {
        return;
    };
    let instance = |keep: u64| {
        TestServer::with(Origin::Etcd {
            endpoints: etcd.endpoints(),
            prefix: "/rolegate/".into(),
        })
        .config(move |c| c.history_revisions = keep)
        .start()
    };
    let a = instance(10_000).await;
    let b = instance(10_000).await;
    let mut via_a = a.admin().await;
    let mut via_b = b.admin().await;
    let made = write_some(&mut via_a).await;
    let r = via_b
        .create_team(call(BOOTSTRAP, team("hooli", "Hooli")))
        .await
        .unwrap()
        .into_inner();

    for admin in [&mut via_a, &mut via_b] {
        let all = history(admin, BOOTSTRAP, 0, 0).await.unwrap();
        assert_eq!(all[0].action, "Bootstrap");
        assert_eq!(summary(&all[1..7]), owned(&made));
        assert_eq!(
            summary(&all[7..]),
            [(r.revision, BOOTSTRAP_PREFIX, "CreateTeam")]
        );
        // Since, paging and scopes as on the store.
        let later = history(admin, BOOTSTRAP, made[4].0, 2).await.unwrap();
        assert_eq!(summary(&later), summary(&all[6..]));
        let dana = history(admin, keys::DANA_GLOBEX_ADMIN, 0, 0).await.unwrap();
        assert_eq!(summary(&dana), owned(&made[5..6]));
        let refused = history(admin, keys::DEVIN_DEVELOPER, 0, 0)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
    }

    // An instance that keeps 3 revisions prunes the older entries as it writes.
    let c = instance(3).await;
    let mut via_c = c.admin().await;
    let mut last = Vec::new();
    for i in 0..3 {
        let r = via_c
            .create_team(call(BOOTSTRAP, team(&format!("pruned{i}"), "Pruned")))
            .await
            .unwrap()
            .into_inner();
        last.push((r.revision, BOOTSTRAP_PREFIX, "CreateTeam"));
    }
    let kept = history(&mut via_a, BOOTSTRAP, 0, 0).await.unwrap();
    assert_eq!(summary(&kept), last, "only the last 3 revisions are kept");
}
