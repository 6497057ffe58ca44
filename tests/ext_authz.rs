//! `envoy.service.auth.v3.Authorization/Check` and the HTTP auth endpoint called directly on a
//! real server: the requests a proxy could send that a well-configured Envoy never does.

mod common;

use std::collections::HashMap;

use common::{Origin, TestServer, envoy_check, example_policy, http_get, keys};
use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderValue, HttpResponse},
    pb::envoy::{
        config::core::v3::HeaderMap, service::auth::v3::authorization_client::AuthorizationClient,
    },
};
use rolegate::grpc::pb::Reason;

/// (gRPC status code, HTTP status of the denied response or 200, the response).
fn outcome(r: &CheckResponse) -> (i32, u16) {
    let code = r.status.as_ref().map_or(-1, |s| s.code);
    let http = match &r.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code as u16),
        _ => 0,
    };
    (code, http)
}

#[tokio::test]
async fn ext_authz_check_over_grpc_judges_and_refuses_bad_requests() {
    let server = TestServer::policy(&example_policy()).await;
    let mut client = AuthorizationClient::new(server.channel().await);
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let mut call = async |req: CheckRequest| client.check(req).await.unwrap().into_inner();

    // Allowed: OK status, headers for the upstream, the same facts as dynamic metadata.
    let r = call(envoy_check(
        "GET",
        "/api/jobs",
        &[("authorization", &devin), ("x-rolegate-x", "1")],
    ))
    .await;
    assert_eq!(outcome(&r), (0, 200));
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!()
    };
    let set: HashMap<_, _> = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(set["x-rolegate-key"], "DevinDevKey000000001");
    assert_eq!(set["x-rolegate-scope"], "OWN");
    assert_eq!(ok.headers_to_remove, ["authorization", "x-rolegate-x"]);
    let meta = &r.dynamic_metadata.as_ref().unwrap().fields;
    for field in [
        "key",
        "user",
        "team",
        "scope",
        "filter_owner_keys",
        "revision",
        "entitlement",
    ] {
        assert!(meta.contains_key(field), "dynamic_metadata lacks {field}");
    }

    // The path may come only as the :path pseudo-header.
    let r = call(envoy_check(
        "",
        "",
        &[
            (":method", "GET"),
            (":path", "/api/jobs"),
            ("authorization", &devin),
        ],
    ))
    .await;
    assert_eq!(outcome(&r), (0, 200));

    // No HTTP attributes, no path at all: 400 with the JSON body, as an OK RPC.
    let r = call(CheckRequest { attributes: None }).await;
    assert_eq!(outcome(&r), (3, 400));
    let r = call(envoy_check("GET", "", &[("authorization", &devin)])).await;
    assert_eq!(outcome(&r), (3, 400));
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!()
    };
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(body["statusCode"], 400);
    assert!(d.headers.iter().any(|h| {
        h.header
            .as_ref()
            .is_some_and(|h| h.key == "content-type" && h.value == "application/json")
    }));

    // Raw headers (encode_raw_headers): a repeated credential is refused, not picked from.
    let mut raw = envoy_check("GET", "/api/jobs", &[]);
    let http = raw
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: [keys::DEVIN_DEVELOPER, keys::OLIVIA_OWNER]
            .iter()
            .map(|k| HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: format!("ApiKey {k}").into_bytes(),
            })
            .collect(),
    });
    let r = call(raw).await;
    assert_eq!(outcome(&r), (16, 401));
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!()
    };
    assert!(d.headers.iter().any(|h| {
        h.header
            .as_ref()
            .is_some_and(|h| h.key == "www-authenticate" && h.value == "ApiKey")
    }));
    assert!(!d.body.contains("dev-only"), "the secret is never echoed");

    // Suspicious paths: 400; unknown routes: 403; never allowed.
    for (path, want) in [
        ("/api/jobs/../models", 400),
        ("/api/jobs%2fx", 400),
        ("/api//jobs", 400),
        ("/api/jobs/%00", 400),
        ("/nothing/here", 403),
        ("/api/jobs/statistics;x", 400),
        ("/api/jobs/STATISTICS", 400),
        ("/api/jobs/statistics.json", 400),
    ] {
        let r = call(envoy_check("GET", path, &[("authorization", &devin)])).await;
        assert_eq!(outcome(&r).1, want, "{path}");
    }

    // Identity headers forged with '_' (or any case) are named for removal.
    let r = call(envoy_check(
        "GET",
        "/api/jobs",
        &[
            ("authorization", &devin),
            ("x_rolegate_user", "olivia"),
            ("X_ROLEGATE_SCOPE", "ALL"),
        ],
    ))
    .await;
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("{r:?}")
    };
    let mut remove = ok.headers_to_remove.clone();
    remove.sort();
    assert_eq!(
        remove,
        ["authorization", "x_rolegate_scope", "x_rolegate_user"]
    );

    // Through ext_authz, every authentication failure is the same answer; rolegate's own Check
    // still tells a backend the precise reason.
    let presented = [
        ("NoSuchKeyPrefix00001.secret", Reason::UnknownKey),
        ("OliviaOwnerKey000001.wrong-secret", Reason::WrongSecret),
        (keys::DEVIN_OLD_INACTIVE, Reason::KeyInactive),
    ];
    let mut answers = Vec::new();
    let mut authorizer = server.authorizer().await;
    for (key, reason) in presented {
        let r = call(envoy_check(
            "GET",
            "/api/jobs",
            &[("authorization", &format!("ApiKey {key}"))],
        ))
        .await;
        assert_eq!(outcome(&r), (16, 401), "{key}");
        assert_eq!(r.status.as_ref().unwrap().message, "unauthenticated");
        answers.push(r);
        let own = authorizer
            .check(common::check(key, "jobs.read", "acme", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((own.allowed, own.reason()), (false, reason), "{key}");
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
}

#[tokio::test]
async fn http_auth_endpoint_serves_nginx_and_envoy_http_mode() {
    let server = TestServer::policy(&example_policy()).await;
    let addr = server.http_addr;
    let raw = async |req: String| {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        buf
    };
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let nginx = |method: &str, uri: &str| {
        format!(
            "GET /authz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Original-Method: {method}\r\nX-Original-URI: {uri}\r\nAuthorization: {devin}\r\n\r\n"
        )
    };
    let r = raw(nginx("GET", "/api/jobs")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("x-rolegate-scope: own"),
        "{r}"
    );
    // nginx passes on only 401/403: a malformed request is a 403 there, with the status
    // meant beside it for nginx.conf to turn back into a 400.
    for uri in ["/api/jobs%2Fx", "/api/jobs/x;y", "/api/jobs/STATISTICS"] {
        let r = raw(nginx("GET", uri)).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{uri}: {r}");
        assert!(
            r.to_ascii_lowercase().contains("x-rolegate-status: 400"),
            "{uri}: {r}"
        );
    }
    // nginx cannot remove a header on rolegate's word: one it does not overwrite is refused.
    let with_header = |name: &str| {
        nginx("GET", "/api/jobs").replace("\r\n\r\n", &format!("\r\n{name}: x\r\n\r\n"))
    };
    for (name, refused) in [
        ("x_rolegate_user", true),
        ("x-rolegate-admin", true),
        ("x-rolegate-user", false),
        ("x-other", false),
    ] {
        let r = raw(with_header(name)).await;
        let status = if refused {
            "HTTP/1.1 403"
        } else {
            "HTTP/1.1 200"
        };
        assert!(r.starts_with(status), "{name}: {r}");
        assert_eq!(
            r.to_ascii_lowercase().contains("x-rolegate-status: 400"),
            refused,
            "{name}: {r}"
        );
    }
    let r = raw(nginx("DELETE", "/api/jobs/1")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw("GET /authz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");

    // Envoy http_service: the original method and path follow the prefix.
    let envoy = |method: &str, path: &str, auth: &str| {
        format!(
            "{method} /authz/ext{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n"
        )
    };
    let r = raw(envoy("DELETE", "/api/jobs/1", &devin)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-envoy-auth-headers-to-remove: authorization"),
        "{r}"
    );
    // Envoy removes what it is told: forged names with '_' are on the list.
    let forged = envoy("GET", "/api/jobs", &devin)
        .replace("\r\n\r\n", "\r\nx_rolegate_user: olivia\r\n\r\n");
    let r = raw(forged).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-envoy-auth-headers-to-remove: authorization,x_rolegate_user"),
        "{r}"
    );
    let r = raw(envoy("GET", "/api/jobs/statistics.json", &devin)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(envoy("GET", "/api/audit-log", &devin)).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains(r#""statusCode":403"#), "{r}");
    let r = raw(envoy("GET", "/api/jobs", "ApiKey nope")).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(
        r.ends_with(
            r#""message":"a valid API key is required","status":"Unauthorized","statusCode":401}"#
        ),
        "{r}"
    );
    assert!(
        r.to_ascii_lowercase().contains("www-authenticate: apikey"),
        "{r}"
    );
    let r = raw(envoy("GET", "/api/x/../jobs", &devin)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // The endpoint does not shadow the status endpoints.
    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200);
}

#[tokio::test]
async fn exact_upstream_paths_lets_a_near_miss_parameter_through() {
    let devin = format!("ApiKey {}", keys::DEVIN_DEVELOPER);
    let judge = async |server: &TestServer, path: &str| {
        let mut client = AuthorizationClient::new(server.channel().await);
        let r = client
            .check(envoy_check("GET", path, &[("authorization", &devin)]))
            .await
            .unwrap()
            .into_inner();
        outcome(&r).1
    };
    let strict = TestServer::policy(&example_policy()).await;
    let exact = TestServer::with(Origin::policy(&example_policy()))
        .config(|c| c.authz.exact_upstream_paths = true)
        .start()
        .await;
    for (path, by_default, when_exact) in [
        ("/api/jobs/STATISTICS", 400, 200),
        ("/api/jobs/statistics.json", 400, 200),
        ("/api/jobs/statistics", 403, 403),
        ("/api/jobs/statistics;x", 400, 400),
    ] {
        assert_eq!(judge(&strict, path).await, by_default, "{path}");
        assert_eq!(judge(&exact, path).await, when_exact, "{path} (exact)");
    }
}

/// `rolegate bench --mode ext-authz --baseline` with `args` (2 callers on 1 connection, no
/// warm-up) against a server on the example policy.
async fn ext_authz_bench(args: &[&str]) -> std::process::Output {
    let server = TestServer::policy(&example_policy()).await;
    let addr = format!("http://{}", server.grpc_addr);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
            .args([
                "bench",
                "--mode",
                "ext-authz",
                "--baseline",
                "--addr",
                &addr,
                "--key",
                keys::DANA_SCIENTIST,
            ])
            .args(["--warmup", "0s", "--concurrency", "2", "--connections", "1"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_ext_authz_against_the_server_and_the_baseline() {
    let out = ext_authz_bench(&["--duration", "300ms"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("rolegate"))
        .expect("a rolegate line");
    // "(N requests, N allowed, 0 errors)": every Envoy-shaped request was judged and allowed.
    let counts: Vec<u64> = line
        .rsplit_once('(')
        .unwrap()
        .1
        .split(',')
        .map(|p| p.trim().split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(counts[0] > 0, "{line}");
    assert_eq!(counts[1], counts[0], "{line}");
    assert_eq!(counts[2], 0, "{line}");
    assert!(
        text.contains("no-op ext_authz") && text.contains("ratio"),
        "{text}"
    );
}

/// `rolegate bench … --rounds N` output, parsed: per round, the labels of its lines in order,
/// and the printed figures.
struct RoundsOutput {
    /// (round, label) of every line that starts with "round".
    lines: Vec<(usize, String)>,
    /// Per round: (baseline req/s, target req/s, printed ratio).
    figures: Vec<(f64, f64, f64)>,
    /// The last line's median.
    median: String,
}

fn parse_rounds(text: &str, rounds: usize, baseline: &str) -> RoundsOutput {
    let rate = |rest: &str| -> f64 {
        rest.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no req/s in {rest:?}"))
    };
    let mut lines = Vec::new();
    let mut figures = vec![(0.0, 0.0, 0.0); rounds];
    for line in text.lines().filter(|l| l.starts_with("round ")) {
        let (head, rest) = line["round ".len()..].split_once("  ").unwrap();
        let (i, n) = head.split_once('/').unwrap();
        assert_eq!(n.parse::<usize>().unwrap(), rounds, "{line}");
        let i: usize = i.parse().unwrap();
        let rest = rest.trim_start();
        let label = [baseline, "rolegate", "ratio"]
            .into_iter()
            .find(|l| rest.starts_with(l))
            .unwrap_or_else(|| panic!("unknown line {line:?}"));
        let value = &rest[label.len()..];
        match label {
            "ratio" => figures[i - 1].2 = value.trim().parse().unwrap(),
            "rolegate" => {
                figures[i - 1].1 = rate(value);
                // "(N requests, N allowed, 0 errors)": every call answered and allowed.
                let counts: Vec<u64> = value
                    .rsplit_once('(')
                    .unwrap()
                    .1
                    .split(',')
                    .map(|p| p.trim().split(' ').next().unwrap().parse().unwrap())
                    .collect();
                assert!(
                    counts[0] > 0 && counts[1] == counts[0] && counts[2] == 0,
                    "{line}"
                );
            }
            _ => figures[i - 1].0 = rate(value),
        }
        lines.push((i, label.to_owned()));
    }
    let last = text.lines().last().unwrap_or_default();
    let median = last
        .split_once("median ")
        .and_then(|(_, m)| m.split_whitespace().next())
        .unwrap_or_else(|| panic!("no median in the last line: {text}"))
        .to_owned();
    assert!(last.contains(&format!("of {rounds} rounds")), "{last}");
    RoundsOutput {
        lines,
        figures,
        median,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rounds_alternate_baseline_and_server_and_report_the_median_ratio() {
    let out = ext_authz_bench(&["--rounds", "3", "--duration", "200ms"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = parse_rounds(&text, 3, "no-op ext_authz");
    // Baseline, server, ratio; round after round.
    let expected: Vec<(usize, String)> = (1..=3)
        .flat_map(|i| ["no-op ext_authz", "rolegate", "ratio"].map(|l| (i, l.to_owned())))
        .collect();
    assert_eq!(parsed.lines, expected, "{text}");
    // Each round's ratio is that round's server over that round's baseline (the printed req/s
    // are rounded to whole requests), and the summary is the median of the three.
    for &(base, target, ratio) in &parsed.figures {
        assert!(
            (target / base - ratio).abs() < 0.01 * ratio + 0.002,
            "{target} / {base} is not {ratio}: {text}"
        );
    }
    let mut ratios: Vec<f64> = parsed.figures.iter().map(|f| f.2).collect();
    ratios.sort_by(f64::total_cmp);
    assert_eq!(parsed.median, format!("{:.3}", ratios[1]), "{text}");
}

#[test]
fn bench_refuses_zero_rounds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["bench", "--rounds", "0", "--addr", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rounds"), "{err}");
}

/// The descriptors of `symbol` as a reflection client (grpcurl) gathers them: the file that
/// declares it, then each file it imports that it does not have yet, by name.
async fn reflected_pool(server: &TestServer, symbol: &str) -> prost_reflect::DescriptorPool {
    use prost::Message;
    use prost_types::FileDescriptorProto;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let mut ask = async |request: MessageRequest| {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap().message_response
    };
    let Some(MessageResponse::ListServicesResponse(list)) =
        ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("reflection does not list services");
    };
    assert!(
        list.service.iter().any(|s| s.name == symbol),
        "{symbol} is listed: {list:?}"
    );

    let mut files: Vec<FileDescriptorProto> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol(symbol.into())];
    while let Some(request) = wanted.pop() {
        let Some(MessageResponse::FileDescriptorResponse(answer)) = ask(request).await else {
            panic!("reflection has no file for a name it gave");
        };
        for bytes in answer.file_descriptor_proto {
            let file = FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor");
            if files.iter().any(|f| f.name == file.name) {
                continue;
            }
            for import in &file.dependency {
                if !files.iter().any(|f| f.name() == import) {
                    wanted.push(MessageRequest::FileByFilename(import.clone()));
                }
            }
            files.push(file);
        }
    }
    // Imports first.
    let mut pool = prost_reflect::DescriptorPool::new();
    while !files.is_empty() {
        let ready = files
            .iter()
            .position(|f| {
                f.dependency
                    .iter()
                    .all(|d| pool.get_file_by_name(d).is_some())
            })
            .expect("every import was served");
        pool.add_file_descriptor_proto(files.remove(ready))
            .expect("the reflected files resolve");
    }
    pool
}

/// A client with nothing but reflection (grpcurl's way): it writes the request as JSON, encodes
/// it with the reflected descriptors, and reads the answer back through them. The bytes it sends
/// are Envoy's wire format, and the answer it reads is rolegate's.
#[tokio::test]
async fn reflection_serves_envoy_ext_authz_so_a_client_without_protos_can_call_it() {
    use prost::Message;
    use prost_reflect::{DynamicMessage, SerializeOptions};

    let server = TestServer::policy(&example_policy()).await;
    let pool = reflected_pool(&server, "envoy.service.auth.v3.Authorization").await;
    let service = pool
        .get_service_by_name("envoy.service.auth.v3.Authorization")
        .unwrap();
    let method = service.methods().find(|m| m.name() == "Check").unwrap();
    let mut client = AuthorizationClient::new(server.channel().await);

    let ask = async |client: &mut AuthorizationClient<_>, json: serde_json::Value| {
        let request = DynamicMessage::deserialize(method.input(), json).unwrap();
        let wire = CheckRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let answer = client.check(wire).await.unwrap().into_inner();
        let read = DynamicMessage::decode(method.output(), answer.encode_to_vec().as_slice())
            .expect("the answer decodes with the reflected descriptor");
        let options = SerializeOptions::new().stringify_64_bit_integers(false);
        read.serialize_with_options(serde_json::value::Serializer, &options)
            .unwrap()
    };
    let request = |path: &str, key: &str| {
        serde_json::json!({"attributes": {"request": {"http": {
            "method": "GET",
            "path": path,
            "headers": {"authorization": format!("ApiKey {key}")},
        }}}})
    };

    let allowed = ask(&mut client, request("/api/jobs", keys::DEVIN_DEVELOPER)).await;
    assert!(allowed["status"].get("code").is_none(), "OK: {allowed}");
    let headers = allowed["okResponse"]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h["header"]["key"] == "x-rolegate-key"),
        "{allowed}"
    );

    let denied = ask(&mut client, request("/api/jobs", "Nobody00000001.x")).await;
    assert_eq!(denied["status"]["code"], 16, "UNAUTHENTICATED: {denied}");
    assert_eq!(
        denied["deniedResponse"]["status"]["code"], "Unauthorized",
        "{denied}"
    );
    let body: serde_json::Value =
        serde_json::from_str(denied["deniedResponse"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["statusCode"], 401, "{body}");
    server.stop().await.unwrap();
}
