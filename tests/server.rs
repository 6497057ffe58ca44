//! The server end to end: a real `app::run` on ephemeral loopback ports, called with the
//! generated gRPC clients.

mod common;

use common::{Origin, TestServer, check, example_policy, http_get, keys, with_key_status};
use rolegate::grpc::pb::{self, Reason};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Keys that cannot be parsed are denied before any lookup; a request without an entitlement is
/// invalid, not denied. (How each origin's keys are judged: tests/origins.rs.)
#[tokio::test]
async fn malformed_keys_are_denied_and_bad_requests_are_invalid() {
    let server = TestServer::policy(&example_policy()).await;
    let mut client = server.authorizer().await;
    let long = format!("OliviaOwnerKey000001.{}", "s".repeat(300));
    for key in ["", "Olivia\u{e9}Key000001.secret", ".secret", &long] {
        let r = client
            .check(check(key, "jobs.read", "acme", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.allowed, r.reason()),
            (false, Reason::MalformedKey),
            "{key:?}"
        );
        assert!(r.principal.is_none(), "{r:?}");
    }

    // An empty entitlement is a bad request, not a denial.
    let err = client
        .check(check(keys::OLIVIA_OWNER, "", "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("entitlement"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn requests_over_the_maximum_size_are_rejected() {
    let server = TestServer::with(Origin::policy(&example_policy()))
        .config(|c| c.max_message_bytes = 4096)
        .start()
        .await;
    let mut client = server.authorizer().await;
    let mut req = check(keys::OLIVIA_OWNER, "jobs.read", "", "");
    req.resource.as_mut().unwrap().owner_user_id = "u".repeat(8192);
    let err = client.check(req).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // The server keeps serving.
    let r = client
        .check(check(keys::OLIVIA_OWNER, "jobs.read", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn check_batch_answers_in_order() {
    let server = TestServer::policy(&example_policy()).await;
    let mut client = server.authorizer().await;
    let mut mixed = check(
        keys::GUS_DEVELOPER,
        "jobs.cancel",
        "globex",
        "GusDevKey00000000001",
    );
    mixed.api_key = keys::GUS_DEVELOPER.into();
    let batch = pb::CheckBatchRequest {
        api_key: keys::ADAM_ADMIN.into(),
        checks: vec![
            check("", "jobs.cancel", "acme", ""),
            check("", "jobs.cancel", "globex", ""),
            mixed,
            check("", "nope.nope", "", ""),
        ],
        min_revision: 0,
    };
    let r = client.check_batch(batch).await.unwrap().into_inner();
    let got: Vec<_> = r.results.iter().map(|c| (c.allowed, c.reason())).collect();
    assert_eq!(
        got,
        [
            (true, Reason::Allowed),
            (false, Reason::OutOfScope),
            (true, Reason::Allowed),
            (false, Reason::UnknownEntitlement)
        ]
    );
    assert_eq!(r.results[2].principal.as_ref().unwrap().user_id, "gus");
    assert_eq!(r.revision, 1);

    // Too many checks: refused as a whole.
    let big = pb::CheckBatchRequest {
        api_key: keys::ADAM_ADMIN.into(),
        checks: vec![check("", "jobs.read", "", ""); 1001],
        min_revision: 0,
    };
    assert_eq!(
        client.check_batch(big).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // One bad check: the error names it.
    let bad = pb::CheckBatchRequest {
        api_key: keys::ADAM_ADMIN.into(),
        checks: vec![check("", "jobs.read", "", ""), check("", "", "", "")],
        min_revision: 0,
    };
    let err = client.check_batch(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("check 1:"), "{}", err.message());
    server.stop().await.unwrap();
}

/// A policy file that does not parse: the last good state keeps serving and `/status` says why.
/// (Edits that parse, seen at their revision: tests/origins.rs.)
#[tokio::test]
async fn a_broken_policy_file_is_ignored_and_the_last_good_state_serves() {
    let server = TestServer::policy(&example_policy()).await;
    let mut client = server.authorizer().await;
    // A good edit first, so that the last good state is not the first one: devin's key revoked.
    server.write_policy(&with_key_status(
        &example_policy(),
        keys::prefix(keys::DEVIN_DEVELOPER),
        "inactive",
    ));
    let mut req = check(keys::DEVIN_DEVELOPER, "jobs.read", "", "");
    req.min_revision = 2;
    let r = client.check(req.clone()).await.unwrap().into_inner();
    assert_eq!((r.reason(), r.revision), (Reason::KeyInactive, 2));

    server.write_policy("keys:\n  - prefix: [unclosed\n");
    let mut status = String::new();
    for _ in 0..200 {
        let (_, body) = http_get(server.http_addr, "/status").await.unwrap();
        if body.contains("\"last_error\":\"") {
            status = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(status.contains("policy.yaml:2:"), "{status}");
    assert!(status.contains("\"revision\":2"), "{status}");
    let r = client.check(req).await.unwrap().into_inner();
    assert_eq!((r.reason(), r.revision), (Reason::KeyInactive, 2));
    assert_eq!(http_get(server.http_addr, "/readyz").await.unwrap().0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_reflection_and_http_endpoints() {
    let server = TestServer::policy(&example_policy()).await;
    assert_eq!(server.health().await, [ServingStatus::Serving; 2]);

    // Reflection lists the services, so grpcurl works without the protos.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"rolegate.v1.Authorizer"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization"),
        "{names:?}"
    );

    assert_eq!(http_get(server.http_addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(server.http_addr, "/readyz").await.unwrap().0, 200);
    let (code, body) = http_get(server.http_addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["revision"], 1);
    assert_eq!(status["counts"]["keys"], 11);
    assert_eq!(status["origin"]["last_error"], serde_json::Value::Null);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_policy_at_start_is_an_error_naming_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "teams:\n  - id: acme\n  - id: acme\n").unwrap();
    let err = TestServer::with(Origin::PolicyAt(path))
        .no_wait()
        .start()
        .await
        .join()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad.yaml:3:5: teams[1] (acme): duplicate team acme"),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish() {
    let server = TestServer::policy(&example_policy()).await;
    let mut client = server.authorizer().await;
    // A call that is still waiting (for a revision that will not come) when shutdown starts.
    let mut waiting = check(keys::OLIVIA_OWNER, "jobs.read", "", "");
    waiting.min_revision = 2;
    let mut request = tonic::Request::new(waiting);
    request.set_timeout(std::time::Duration::from_millis(1500));
    let in_flight = tokio::spawn(async move { client.check(request).await });
    // Let the call reach the server before stopping it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!in_flight.is_finished());
    server.stop().await.expect("a clean shutdown");
    // The call got its answer from the server (not a reset connection).
    let err = in_flight.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("this instance has revision 1"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn an_empty_policy_file_is_refused_at_start_and_on_reload() {
    // At start: an error naming the file, so that the server does not start on it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    std::fs::write(&path, "").unwrap();
    let err = TestServer::with(Origin::PolicyAt(path))
        .no_wait()
        .start()
        .await
        .join()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("empty.yaml: the file is empty"),
        "{err}"
    );

    // On reload: refused like any invalid file; the last good state keeps serving and /status
    // says why.
    let server = TestServer::policy(&example_policy()).await;
    let mut client = server.authorizer().await;
    for (n, blank) in ["", " \n\t\n\n"].into_iter().enumerate() {
        server.write_policy(blank);
        let mut origin = serde_json::Value::Null;
        for _ in 0..400 {
            let (_, body) = http_get(server.http_addr, "/status").await.unwrap();
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            if status["origin"]["failed_reloads"] == n as u64 + 1 {
                origin = status["origin"].clone();
                assert_eq!(status["revision"], 1, "{status}");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(
            origin["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("policy.yaml: the file is empty")),
            "{blank:?}: {origin}"
        );
        let r = client
            .check(check(keys::DEVIN_DEVELOPER, "jobs.read", "", ""))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed && r.revision == 1, "{blank:?}: {r:?}");
        assert_eq!(http_get(server.http_addr, "/readyz").await.unwrap().0, 200);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_probe_listener_serves_only_liveness_and_readiness() {
    let server = TestServer::with(Origin::policy(&example_policy()))
        .probe()
        .no_wait()
        .start()
        .await;
    let (http_addr, probe_addr) = (server.http_addr, server.probe_addr.unwrap());
    common::wait_until_ready(probe_addr, common::READY_WITHIN).await;
    assert_eq!(
        http_get(probe_addr, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
    let (code, body) = http_get(probe_addr, "/readyz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // Nothing else: no state, no decisions.
    for path in ["/status", "/authz", "/authz/ext/api/jobs", "/metrics"] {
        let (code, _) = http_get(probe_addr, path).await.unwrap();
        assert_eq!(code, 404, "{path} on the probe listener");
    }
    // The main HTTP port still has them.
    assert_eq!(http_get(http_addr, "/status").await.unwrap().0, 200);
    assert_eq!(http_get(http_addr, "/readyz").await.unwrap().0, 200);
    server.stop().await.unwrap();
}
