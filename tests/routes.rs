//! The route table is part of the state: a store keeps it (Apply, restart), Watch carries it, a
//! follower serves its hub's from the snapshot, and `rolegate routes list` shows it. Every case
//! is judged by the real HTTP auth endpoint of a real server. A table changed through each
//! origin (a policy file's reload, Apply on a store, Apply on a follower's hub):
//! tests/origins.rs.

mod common;

use std::time::Duration;

use common::{
    BOOTSTRAP, TestServer, call, example_with_bootstrap, http_get, keys,
    routes::{REPORTS_ROUTE, document_with_routes, enforced, wait_enforced},
};
use rolegate::grpc::pb::{self, admin_client::AdminClient, watch_event::Event};
use tonic::transport::Channel;

async fn apply(
    admin: &mut AdminClient<Channel>,
    document: String,
    dry_run: bool,
) -> pb::ApplyResponse {
    admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document,
                dry_run,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .expect("apply")
        .into_inner()
}

async fn list_routes(admin: &mut AdminClient<Channel>, key: &str) -> pb::ListRoutesResponse {
    admin
        .list_routes(call(key, pb::ListRoutesRequest {}))
        .await
        .expect("list routes")
        .into_inner()
}

#[tokio::test]
async fn the_store_keeps_applied_routes_and_enforces_them_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::store_at(data.clone()).await;
    let mut admin = server.admin().await;
    apply(&mut admin, example_with_bootstrap(), false).await;
    assert_eq!(enforced(server.http_addr).await, "default");
    let listed = list_routes(&mut admin, keys::ARIA_AUDITOR).await;
    assert_eq!(
        (listed.source.as_str(), listed.routes_revision),
        ("default", 0)
    );
    assert!(listed.routes.len() > 60, "the built-in table is listed");

    // A dry run names the table and changes nothing.
    let document = document_with_routes(REPORTS_ROUTE);
    let dry = apply(&mut admin, document.clone(), true).await;
    assert_eq!(dry.changes, ["put routes"], "{dry:?}");
    assert_eq!(enforced(server.http_addr).await, "default");

    let applied = apply(&mut admin, document.clone(), false).await;
    assert_eq!(applied.changes, ["put routes"]);
    // Enforced as soon as Apply answers: the next request compiles the new table.
    assert_eq!(enforced(server.http_addr).await, "reports");
    // Like roles, the table is shown to roles.read at any scope, and only to it.
    let denied = admin
        .list_routes(call(keys::DEVIN_DEVELOPER, pb::ListRoutesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let listed = list_routes(&mut admin, keys::ARIA_AUDITOR).await;
    assert_eq!(listed.source, "store");
    assert_eq!(listed.origin, data.display().to_string());
    assert_eq!(listed.routes_revision, applied.revision);
    assert_eq!(listed.revision, applied.revision);
    assert_eq!(
        listed
            .routes
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.entitlement.as_str()))
            .collect::<Vec<_>>(),
        [("GET", "/api/reports", "jobs.read")]
    );
    // The same document again changes nothing.
    assert!(apply(&mut admin, document, false).await.changes.is_empty());
    let (_, status) = http_get(server.http_addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["routes"]["table"], "state", "{status}");
    assert_eq!(status["routes"]["routes"], 1, "{status}");
    drop(admin);
    server.stop().await.unwrap();

    // A restart serves the stored table, installed at the revision that wrote it.
    let server = TestServer::store_at(data).await;
    let mut admin = server.admin().await;
    assert_eq!(enforced(server.http_addr).await, "reports");
    let listed = list_routes(&mut admin, BOOTSTRAP).await;
    assert_eq!(
        (listed.source.as_str(), listed.routes_revision),
        ("store", applied.revision)
    );

    // A document without `routes:` puts back the default table.
    let reset = apply(&mut admin, example_with_bootstrap(), false).await;
    assert_eq!(
        reset.changes,
        ["reset routes (to the built-in default table)"]
    );
    assert_eq!(enforced(server.http_addr).await, "default");
    assert_eq!(list_routes(&mut admin, BOOTSTRAP).await.source, "default");
}

#[tokio::test]
async fn a_table_naming_an_unknown_entitlement_is_refused_with_its_location() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    let err = admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: document_with_routes(
                    "  - { method: GET, path: /api/reports, entitlement: reports.archive }\n",
                ),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "routes[0] (GET /api/reports): entitlement: reports.archive is not in the catalog"
        ),
        "{}",
        err.message()
    );
    // The table decides which entitlement every proxied request needs: a team administrator
    // may not change it, even in a document that changes nothing else.
    apply(&mut admin, example_with_bootstrap(), false).await;
    let refused = admin
        .apply(call(
            keys::ADAM_ADMIN,
            pb::ApplyRequest {
                document: document_with_routes(REPORTS_ROUTE),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("change the route table"),
        "{}",
        refused.message()
    );
    assert_eq!(enforced(server.http_addr).await, "default");
    // A caller without roles.read sees no table.
    let denied = admin
        .list_routes(call("NoSuchKey0001.secret", pb::ListRoutesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
}

/// Every section of a document is kept by the store: read back through the Admin API after the
/// Apply and after a restart.
#[tokio::test]
async fn apply_keeps_every_section_of_a_document_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let document = format!(
        "{}\nroutes:\n  - {{ method: GET, path: \"/api/exports/{{teamId}}\", entitlement: exports.run, resource: {{ team: path.teamId }} }}\n",
        example_with_bootstrap()
            .replacen(
                "\nteams:\n",
                "\nteams:\n  - { id: initech, name: Initech }\n",
                1,
            )
            .replacen(
                "\nentitlements:\n",
                "\nentitlements:\n  - { id: exports.run }\n",
                1,
            )
            .replacen(
                "\nroles:\n",
                "\nroles:\n  - { id: EXPORTER, type: user, grants: [{ entitlement: exports.run, scope: TEAM }] }\n",
                1,
            )
    );
    let server = TestServer::store_at(data.clone()).await;
    let mut admin = server.admin().await;
    let applied = apply(&mut admin, document.clone(), false).await;
    for section in [
        "put entitlement exports.run",
        "put role EXPORTER",
        "put team initech",
        "put user devin",
        "put project fraud-detector",
        "put key DevinDevKey000000001",
        "put routes",
    ] {
        assert!(
            applied.changes.iter().any(|c| c == section),
            "{section} missing from {:?}",
            applied.changes
        );
    }
    let read_back = async |admin: &mut AdminClient<Channel>| {
        let get = |id: &str| pb::GetRequest { id: id.into() };
        let team = admin
            .get_team(call(BOOTSTRAP, get("initech")))
            .await
            .unwrap();
        let user = admin.get_user(call(BOOTSTRAP, get("devin"))).await.unwrap();
        let project = admin
            .get_project(call(BOOTSTRAP, get("fraud-detector")))
            .await
            .unwrap();
        let key = admin
            .get_key(call(BOOTSTRAP, get("DevinDevKey000000001")))
            .await
            .unwrap();
        let roles = admin
            .list_roles(call(
                BOOTSTRAP,
                pb::ListRequest {
                    page_size: 1000,
                    page_token: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let exporter = roles.roles.iter().find(|r| r.id == "EXPORTER").cloned();
        let routes = list_routes(admin, BOOTSTRAP).await;
        (
            team.into_inner().team.unwrap().name,
            user.into_inner().user.unwrap().teams,
            project.into_inner().project.unwrap().team,
            key.into_inner().key.unwrap().roles,
            exporter.map(|r| (r.grants[0].entitlement.clone(), r.grants[0].scope.clone())),
            routes
                .routes
                .iter()
                .map(|r| format!("{} {} {} team={}", r.method, r.path, r.entitlement, r.team))
                .collect::<Vec<_>>(),
        )
    };
    let before = read_back(&mut admin).await;
    assert_eq!(
        before,
        (
            "Initech".to_owned(),
            vec!["acme".to_owned()],
            "acme".to_owned(),
            vec!["DEVELOPER".to_owned()],
            Some(("exports.run".to_owned(), "TEAM".to_owned())),
            vec!["GET /api/exports/{teamId} exports.run team=path.teamId".to_owned()],
        )
    );
    drop(admin);
    server.stop().await.unwrap();

    let server = TestServer::store_at(data).await;
    let mut admin = server.admin().await;
    assert_eq!(
        read_back(&mut admin).await,
        before,
        "the same after a restart"
    );
    assert!(
        apply(&mut admin, document, true).await.changes.is_empty(),
        "nothing of the document was lost"
    );
}

/// The next complete revision's events of a Watch stream (or the snapshot up to its end).
async fn next_events(stream: &mut tonic::Streaming<pb::WatchEvent>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("an event in time")
            .expect("the stream is healthy")
            .expect("the stream goes on");
        let end = ev.end_of_revision;
        match ev.event {
            Some(Event::Bookmark(_)) => continue,
            Some(event) => out.push(event),
            None => panic!("an event without a body"),
        }
        if end {
            return out;
        }
    }
}

#[tokio::test]
async fn watch_carries_the_route_table_in_a_snapshot_and_live() {
    let server = TestServer::store().await;
    let mut admin = server.admin().await;
    apply(&mut admin, document_with_routes(REPORTS_ROUTE), false).await;
    let mut authorizer = server.authorizer().await;
    let mut stream = authorizer
        .watch(pb::WatchRequest {
            snapshot: true,
            kinds: vec![pb::EventKind::Routes as i32],
            api_key: BOOTSTRAP.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = next_events(&mut stream).await;
    let [Event::RoutesChanged(table), Event::SnapshotEnd(_)] = &snapshot[..] else {
        panic!("a snapshot of the table alone: {snapshot:?}");
    };
    assert_eq!(table.routes.len(), 1);
    assert_eq!(table.routes[0].path, "/api/reports");

    // Live: a new table, then the default one.
    let two = format!(
        "{REPORTS_ROUTE}  - {{ method: GET, path: \"/api/reports/{{teamId}}\", entitlement: jobs.read, resource: {{ team: path.teamId }} }}\n"
    );
    apply(&mut admin, document_with_routes(&two), false).await;
    let live = next_events(&mut stream).await;
    let [Event::RoutesChanged(table)] = &live[..] else {
        panic!("the new table: {live:?}");
    };
    assert_eq!(table.routes[1].team, "path.teamId");
    apply(&mut admin, example_with_bootstrap(), false).await;
    let live = next_events(&mut stream).await;
    assert!(
        matches!(&live[..], [Event::RoutesDefault(_)]),
        "back to the default: {live:?}"
    );

    // A snapshot of a state on the default table carries no table.
    let mut stream = authorizer
        .watch(pb::WatchRequest {
            snapshot: true,
            kinds: vec![pb::EventKind::Routes as i32],
            api_key: BOOTSTRAP.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = next_events(&mut stream).await;
    assert!(
        matches!(&snapshot[..], [Event::SnapshotEnd(_)]),
        "{snapshot:?}"
    );
}

/// A follower started after its hub has a table enforces it from the snapshot and lists the
/// hub as its source. (A table changed later, on every origin: tests/origins.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_the_routes_of_its_hub_from_the_snapshot() {
    let hub = TestServer::store().await;
    let mut admin = hub.admin().await;
    apply(&mut admin, document_with_routes(REPORTS_ROUTE), false).await;

    let follower = TestServer::follower(&hub).await;
    wait_enforced(follower.http_addr, "reports").await;
    let listed = list_routes(&mut follower.admin().await, BOOTSTRAP).await;
    assert_eq!(listed.source, "hub");
    assert_eq!(listed.origin, hub.url());
    assert_eq!(listed.routes.len(), 1);
    follower.stop().await.unwrap();
}

fn rolegate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(args)
        .env_remove("ROLEGATE_API_KEY")
        .env_remove("ROLEGATE_ADDR")
        .output()
        .expect("run rolegate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_list_shows_the_table_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::store_at(data.clone()).await;
    let mut admin = server.admin().await;
    let addr = format!("http://{}", server.grpc_addr);
    apply(&mut admin, example_with_bootstrap(), false).await;
    let list = |key: &'static str, json: bool| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["routes", "list", "--addr", &addr, "--key", key];
            if json {
                args.extend(["--output", "json"]);
            }
            rolegate(&args)
        })
    };
    let (code, out, err) = list(keys::ARIA_AUDITOR, false).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap();
    assert!(
        first.ends_with("route(s) from the built-in default table (state at revision 2)"),
        "{out}"
    );
    assert!(out.contains("DELETE  /api/jobs/{id}"), "{out}");

    let applied = apply(&mut admin, document_with_routes(REPORTS_ROUTE), false).await;
    let (code, out, err) = list(keys::ARIA_AUDITOR, false).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "1 route(s) from store {} (installed at revision {r}; state at revision {r})\n\
             METHOD  PATH          ENTITLEMENT  RESOURCE\n\
             GET     /api/reports  jobs.read\n",
            data.display(),
            r = applied.revision
        )
    );
    let (code, out, err) = list(keys::ARIA_AUDITOR, true).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["source"], "store");
    assert_eq!(v["routes_revision"], applied.revision);
    assert_eq!(v["routes"][0]["path"], "/api/reports");
    assert_eq!(v["routes"][0]["team"], serde_json::Value::Null);

    // A key that does not authenticate: the server's answer, exit 2.
    let (code, _, err) = list("NoSuchKey0001.secret", false).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Unauthenticated"), "{err}");

    // Offline, from a policy file.
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, document_with_routes(REPORTS_ROUTE)).unwrap();
    let (code, out, err) = rolegate(&["routes", "list", "--policy", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        format!("1 route(s) from policy file {}", file.display())
    );
    std::fs::write(
        &file,
        "routes:\n  - { method: GET, path: /a/*/b, entitlement: jobs.read }\n",
    )
    .unwrap();
    let (code, _, err) = rolegate(&["routes", "list", "--policy", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("policy.yaml:2:5: routes[0]"), "{err}");
}
