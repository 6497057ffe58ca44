//! The shared decision path, judged against the example policy.

use super::*;
use crate::{origin::policy_file, state::State};

const DEVIN: &str = "DevinDevKey000000001.dev-only-devindevkey";
const ADAM: &str = "AdamAdminKey00000001.dev-only-adamadminke";
const ARIA: &str = "AriaAuditKey00000001.dev-only-ariaauditke";

fn authz(config: AuthzConfig) -> Authz {
    let text = include_str!("../../deploy/examples/policy.yaml");
    let policy = policy_file::parse(text, "policy.yaml").unwrap();
    let state = Arc::new(State::from_model(&policy.model, 1).unwrap());
    Authz::new(state, config)
}

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run(a: &Authz, method: &str, path: &str, h: &HashMap<String, String>) -> Verdict {
    a.authorize(&AuthzRequest {
        method,
        path,
        headers: h,
        context: None,
    })
    .unwrap()
}

fn status(v: &Verdict) -> u16 {
    match v {
        Verdict::Allow(_) => 200,
        Verdict::Deny(d) => d.status,
    }
}

fn header<'v>(v: &'v Verdict, name: &str) -> &'v str {
    let Verdict::Allow(a) = v else {
        panic!("denied: {v:?}")
    };
    a.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn key(k: &str) -> HashMap<String, String> {
    headers(&[("authorization", &format!("ApiKey {k}"))])
}

#[test]
fn allowed_requests_carry_identity_and_filters() {
    let a = authz(AuthzConfig::default());
    let v = run(&a, "DELETE", "/api/jobs/j-1", &key(DEVIN));
    assert_eq!(header(&v, "x-rolegate-key"), "DevinDevKey000000001");
    assert_eq!(header(&v, "x-rolegate-user"), "devin");
    assert_eq!(header(&v, "x-rolegate-team"), "acme");
    assert_eq!(header(&v, "x-rolegate-scope"), "OWN");
    assert_eq!(header(&v, "x-rolegate-project"), "");
    assert_eq!(header(&v, "x-rolegate-filter-teams"), "");
    assert_eq!(
        header(&v, "x-rolegate-filter-owner-keys"),
        "DevinDevKey000000001,DevinOldKey000000001"
    );
    assert_eq!(header(&v, "x-rolegate-revision"), "1");
    let v = run(&a, "GET", "/api/jobs", &key(ADAM));
    assert_eq!(header(&v, "x-rolegate-scope"), "TEAM");
    assert_eq!(header(&v, "x-rolegate-filter-teams"), "acme");
    // The owner key's team is the resource's team: the admin covers devin's key, not gus's.
    let own_team = run(
        &a,
        "GET",
        "/api/accounting/access-keys/DevinDevKey000000001",
        &key(ADAM),
    );
    assert_eq!(header(&own_team, "x-rolegate-scope"), "TEAM");
    let other = run(
        &a,
        "GET",
        "/api/accounting/access-keys/GusDevKey00000000001",
        &key(ADAM),
    );
    assert_eq!(status(&other), 403);
}

#[test]
fn denials_are_401_or_403_with_the_json_body() {
    let a = authz(AuthzConfig::default());
    let Verdict::Deny(d) = run(&a, "DELETE", "/api/jobs/j-1", &key(ARIA)) else {
        panic!()
    };
    assert_eq!(d.status, 403);
    assert_eq!(d.www_authenticate, None);
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(body["statusCode"], 403);
    assert_eq!(body["status"], "Forbidden");
    assert!(body["message"].as_str().unwrap().contains("jobs.cancel"));

    let secret = "dev-only-devindevkez";
    let wrong = format!("DevinDevKey000000001.{secret}");
    for (h, reason) in [
        (headers(&[]), "missing_credential"),
        (key(&wrong), "wrong_secret"),
        (
            key("DevinOldKey000000001.dev-only-devinoldkey"),
            "key_inactive",
        ),
        (key("nodot"), "malformed_key"),
        (
            headers(&[("authorization", &format!("Bearer {DEVIN}"))]),
            "malformed_credential",
        ),
        (
            headers(&[("authorization", &format!("ApiKey  {DEVIN}"))]),
            "malformed_credential",
        ),
        (
            headers(&[("authorization", &format!("ApiKey {DEVIN} x"))]),
            "malformed_credential",
        ),
        (
            headers(&[("authorization", &format!("ApiKey {DEVIN},ApiKey {ADAM}"))]),
            "duplicate_credential",
        ),
        (
            headers(&[("authorization", &format!("ApiKey {}", "A".repeat(70_000)))]),
            "malformed_key",
        ),
    ] {
        let Verdict::Deny(d) = run(&a, "GET", "/api/jobs", &h) else {
            panic!("{reason}: allowed")
        };
        assert_eq!((d.status, d.reason), (401, reason));
        assert_eq!(d.www_authenticate.as_deref(), Some("ApiKey"));
        assert!(!d.body.contains(secret), "the secret is never echoed");
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["statusCode"], 401);
    }
    // The scheme is case-insensitive.
    let v = run(
        &a,
        "GET",
        "/api/jobs",
        &headers(&[("authorization", &format!("apikey {DEVIN}"))]),
    );
    assert_eq!(status(&v), 200);
}

#[test]
fn suspicious_paths_and_unmatched_routes_never_pass() {
    let a = authz(AuthzConfig::default());
    let h = key(ARIA);
    for (method, path, want) in [
        // Aria may read models but not cancel jobs: no path trick turns one into the other.
        ("DELETE", "/api/models/../jobs/j-1", 400),
        ("DELETE", "/api/jobs%2Fj-1", 400),
        ("DELETE", "/api//jobs/j-1", 400),
        ("DELETE", "/api/jobs/j-1?/api/models", 403),
        ("DELETE", "/api/jobs/%2e%2e", 400),
        ("DELETE", "", 400),
        ("DELETE", "api/jobs/j-1", 400),
        ("", "/api/jobs", 400),
        ("get", "/api/jobs", 400),
        ("GET", "/api/nothing-here", 403),
        ("GET", "/api/jobs/a\u{0}b", 400),
    ] {
        let v = run(&a, method, path, &h);
        assert_eq!(status(&v), want, "{method} {path:?}");
    }
    // The query string never selects a route: only the path does.
    assert_eq!(status(&run(&a, "GET", "/api/models?x=1", &h)), 200);
}

#[test]
fn forged_identity_headers_and_the_credential_are_removed() {
    let a = authz(AuthzConfig::default());
    let mut h = key(DEVIN);
    h.insert("x-rolegate-scope".into(), "ALL".into());
    h.insert("x-rolegate-admin".into(), "yes".into());
    let Verdict::Allow(ok) = run(&a, "GET", "/api/jobs", &h) else {
        panic!()
    };
    assert!(ok.remove.contains(&"authorization".to_owned()));
    assert!(ok.remove.contains(&"x-rolegate-admin".to_owned()));
    // x-rolegate-scope is overwritten rather than removed.
    assert!(
        ok.headers
            .iter()
            .any(|(k, v)| *k == "x-rolegate-scope" && v == "OWN")
    );

    let keep = authz(AuthzConfig {
        keep_credential: true,
        allow_unmatched: true,
        credential_header: "x-api-key".into(),
        scheme: "Key".into(),
    });
    let mut h = headers(&[("x-api-key", &format!("Key {DEVIN}"))]);
    h.insert("x-rolegate-scope".into(), "ALL".into());
    let Verdict::Allow(ok) = run(&keep, "GET", "/api/jobs", &h) else {
        panic!()
    };
    assert!(!ok.remove.contains(&"x-api-key".to_owned()));
    // Unmatched routes pass when so configured, without identity and without forged headers.
    let Verdict::Allow(open) = run(&keep, "GET", "/public/page", &h) else {
        panic!()
    };
    assert!(open.headers.is_empty());
    assert_eq!(open.remove, ["x-rolegate-scope"]);
}

#[test]
fn context_extensions_and_policy_routes_override_the_map() {
    let a = authz(AuthzConfig::default());
    let h = key(ADAM);
    let ctx: HashMap<String, String> = [
        ("entitlement".to_owned(), "accounts.update".to_owned()),
        ("team".to_owned(), "header.x-team".to_owned()),
    ]
    .into();
    let judge = |path: &str, h: &HashMap<String, String>, ctx| {
        status(
            &a.authorize(&AuthzRequest {
                method: "POST",
                path,
                headers: h,
                context: ctx,
            })
            .unwrap(),
        )
    };
    let mut acme = h.clone();
    acme.insert("x-team".into(), "acme".into());
    let mut globex = h.clone();
    globex.insert("x-team".into(), "globex".into());
    assert_eq!(judge("/anything", &acme, Some(&ctx)), 200);
    assert_eq!(judge("/anything", &globex, Some(&ctx)), 403);
    assert_eq!(judge("/anything", &acme, None), 403);

    // A policy's routes replace the default map; query sources are decoded; repeats refused.
    let spec = RouteSpec {
        method: "GET".into(),
        path: "/reports/*".into(),
        entitlement: "accounts.read".into(),
        team: Some(ValueSource::Query("team".into())),
        owner_key: None,
        owner_user: None,
    };
    a.set_routes(Some(&[spec])).unwrap();
    let get = |path: &str| status(&run(&a, "GET", path, &h));
    assert_eq!(get("/reports/q1?team=acme"), 200);
    assert_eq!(get("/reports/q1?team=glo%62ex"), 403);
    assert_eq!(get("/reports/q1?team=acme&team=globex"), 400);
    assert_eq!(get("/api/jobs"), 403);
    a.set_routes(None).unwrap();
    assert_eq!(get("/api/jobs"), 200);
}

#[test]
fn not_ready_is_an_error_not_a_denial() {
    let a = Authz::new(Arc::new(State::new()), AuthzConfig::default());
    let h = key(DEVIN);
    let r = a.authorize(&AuthzRequest {
        method: "GET",
        path: "/api/jobs",
        headers: &h,
        context: None,
    });
    assert_eq!(r, Err(Unanswerable::NotReady));
}

#[test]
fn the_policy_file_refuses_unusable_and_duplicate_routes() {
    let text = r#"version: 1
routes:
  - { method: GET, path: "/a/{x}", entitlement: jobs.read }
  - { method: GET, path: "/a/{y}", entitlement: jobs.read }
  - { method: GET, path: "/b/*/c", entitlement: jobs.read }
  - { method: GET, path: "/c/%2F", entitlement: jobs.read }
"#;
    let err = policy_file::parse(text, "p.yaml").unwrap_err();
    let all = err.to_string();
    assert_eq!(err.problems.len(), 3, "{all}");
    assert!(all.contains("routes[1] (GET /a/{y})"), "{all}");
    assert!(all.contains("same requests as routes[0]"), "{all}");
    assert!(all.contains("'*' may only be the last segment"), "{all}");
    assert!(all.contains("%2F"), "{all}");
    assert!(err.problems.iter().all(|p| p.line > 0), "{all}");
}

#[test]
fn the_error_body_is_what_serde_json_writes() {
    for (status, text, message) in [
        (
            403,
            "Forbidden",
            "the API key's roles do not grant jobs.cancel",
        ),
        (
            401,
            "Unauthorized",
            "quote \" backslash \\ newline \n tab \t nul \u{0} é ✓",
        ),
        (400, "Bad Request", ""),
    ] {
        let want = serde_json::json!({ "statusCode": status, "status": text, "message": message });
        assert_eq!(error_body(status, text, message), want.to_string());
    }
}

#[test]
fn the_map_follows_the_state_route_table() {
    let a = authz(AuthzConfig::default());
    let state = a.state.clone();
    let h = key(DEVIN);
    let get = |path: &str| status(&run(&a, "GET", path, &h));
    assert_eq!(get("/api/jobs"), 200);
    assert_eq!(get("/reports"), 403, "no route of the default map");
    assert_eq!(a.route_status().table, "default");

    let mut model = state.model();
    model.routes = Some(Arc::from(vec![RouteSpec {
        method: "GET".into(),
        path: "/reports".into(),
        entitlement: "jobs.read".into(),
        team: None,
        owner_key: None,
        owner_user: None,
    }]));
    let changes = state.model().diff(&model);
    state
        .apply(crate::state::ChangeSet {
            revision: 2,
            changes,
        })
        .unwrap();
    // The next request finds the table changed: no task needs to have run.
    assert_eq!(get("/reports"), 200);
    assert_eq!(
        get("/api/jobs"),
        403,
        "the state's table replaces the default map"
    );
    let shown = a.route_status();
    assert_eq!((shown.table, shown.routes, shown.revision), ("state", 1, 2));

    // A table that does not compile (the model refuses it; a bug or a damaged origin could
    // still bring one) keeps the map in force and is reported.
    model.routes = Some(Arc::from(vec![RouteSpec {
        method: "GET".into(),
        path: "/a/*/b".into(),
        entitlement: "jobs.read".into(),
        team: None,
        owner_key: None,
        owner_user: None,
    }]));
    let changes = state.model().diff(&model);
    state
        .apply(crate::state::ChangeSet {
            revision: 3,
            changes,
        })
        .unwrap();
    assert_eq!(get("/reports"), 200, "the previous map stays");
    let shown = a.route_status();
    assert_eq!(shown.table, "state");
    let failure = shown.last_error.expect("the failure is reported");
    assert_eq!(failure.revision, 3);
    assert!(
        failure.error.contains("'*' may only be the last segment"),
        "{failure:?}"
    );

    model.routes = None;
    let changes = state.model().diff(&model);
    assert_eq!(changes, vec![crate::domain::model::Change::ResetRoutes]);
    state
        .apply(crate::state::ChangeSet {
            revision: 4,
            changes,
        })
        .unwrap();
    assert_eq!(get("/api/jobs"), 200, "back to the default map");
    assert_eq!(a.route_status().last_error, None);
}
