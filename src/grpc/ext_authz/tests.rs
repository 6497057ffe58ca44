//! The hand-written messages against the generated ones: what [`wire::CheckRequest`] reads is
//! what the generated `CheckRequest` decodes, and an allowed [`WireResponse`] decodes, with the
//! generated `CheckResponse`, to exactly the message rolegate built with the generated types
//! before the lean codec (kept below as the reference).

use std::collections::HashMap;

use envoy_types::{
    ext_authz::v3::pb::{self, OkHttpResponse},
    pb::{
        envoy::{
            config::core::v3::HeaderMap,
            service::auth::v3::{AttributeContext, attribute_context},
        },
        google::protobuf::{Struct, Value, value::Kind},
    },
};
use prost::Message;

use super::*;
use crate::{
    authz::{Allowed, AuthzConfig, HeaderText},
    envoy_request::envoy_like_request,
    origin::policy_file,
    state::State,
};

const DANA: &str = "DanaScienceKey000001.dev-only-danascience";
const DEVIN: &str = "DevinDevKey000000001.dev-only-devindevkey";

fn service() -> ExtAuthzService {
    let text = include_str!("../../../deploy/examples/policy.yaml");
    let policy = policy_file::parse(text, "policy.yaml").unwrap();
    let state = Arc::new(State::from_model(&policy.model, 7).unwrap());
    ExtAuthzService::new(Arc::new(Authz::new(state, AuthzConfig::default())))
}

fn attributes_of(req: &mut pb::CheckRequest) -> &mut AttributeContext {
    req.attributes.as_mut().unwrap()
}

/// The HTTP request inside a request that has one.
fn http_of(req: &mut pb::CheckRequest) -> &mut attribute_context::HttpRequest {
    attributes_of(req)
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
}

/// Decodes `req`'s bytes both ways and checks that every field rolegate reads agrees.
fn same_reading(req: &pb::CheckRequest) -> CheckRequest {
    let bytes = req.encode_to_vec();
    let lean = CheckRequest::decode(&bytes[..]).unwrap();
    let full = pb::CheckRequest::decode(&bytes[..]).unwrap();
    let http = full
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    assert_eq!(lean.has_http(), http.is_some());
    if let Some(http) = http {
        assert_eq!(lean.method(), http.method);
        assert_eq!(lean.path(), http.path);
        for (k, v) in &http.headers {
            assert_eq!(lean.header(k), Some(v.as_str()), "{k}");
        }
        let mut names: Vec<_> = lean.header_names().collect();
        names.sort();
        names.dedup();
        let mut want: Vec<_> = http.headers.keys().map(String::as_str).collect();
        want.sort();
        assert_eq!(names, want);
        assert_eq!(lean.header("no-such-header"), None);
        let raw: Vec<_> = http
            .header_map
            .iter()
            .flat_map(|m| &m.headers)
            .map(|h| {
                let value = if h.raw_value.is_empty() {
                    Some(h.value.as_str())
                } else {
                    std::str::from_utf8(&h.raw_value).ok()
                };
                (h.key.as_str(), value)
            })
            .collect();
        assert_eq!(lean.raw_headers().collect::<Vec<_>>(), raw);
    }
    let context = full.attributes.as_ref().map(|a| &a.context_extensions);
    assert_eq!(lean.has_context(), context.is_some_and(|c| !c.is_empty()));
    for (k, v) in context.into_iter().flatten() {
        assert_eq!(lean.context(k), Some(v.as_str()));
    }
    lean
}

#[test]
fn the_lean_request_reads_what_the_generated_one_decodes() {
    let mut req = envoy_like_request(DANA, "DELETE", "/api/jobs/job-1234");
    same_reading(&req);

    // Raw headers, text and binary; context extensions; a missing http request.
    let http = http_of(&mut req);
    http.header_map = Some(HeaderMap {
        headers: vec![
            pb::HeaderValue {
                key: "Authorization".into(),
                value: String::new(),
                raw_value: b"ApiKey a.b".to_vec(),
            },
            pb::HeaderValue {
                key: "x-bin".into(),
                value: String::new(),
                raw_value: vec![0xff, 0xfe],
            },
            pb::HeaderValue {
                key: "x-plain".into(),
                value: "v".into(),
                raw_value: Vec::new(),
            },
        ],
    });
    attributes_of(&mut req).context_extensions =
        HashMap::from([("entitlement".to_owned(), "reports.export".to_owned())]);
    let lean = same_reading(&req);
    assert_eq!(lean.context("entitlement"), Some("reports.export"));
    assert_eq!(lean.raw_headers().nth(1), Some(("x-bin", None)));
    attributes_of(&mut req).request = None;
    assert!(!same_reading(&req).has_http());
    assert!(!same_reading(&pb::CheckRequest { attributes: None }).has_http());
}

#[test]
fn a_message_sent_twice_merges_as_protobuf_says() {
    // Two serialized messages back to back are their merge: the second path wins, the header
    // maps add up with the later value of a repeated name.
    let first = envoy_like_request(DANA, "GET", "/api/jobs");
    let mut second = envoy_like_request(DEVIN, "GET", "/api/models");
    let http = http_of(&mut second);
    http.headers = HashMap::from([
        ("authorization".to_owned(), format!("ApiKey {DEVIN}")),
        ("x-extra".to_owned(), "1".to_owned()),
    ]);
    let mut bytes = first.encode_to_vec();
    bytes.extend(second.encode_to_vec());
    let full = pb::CheckRequest::decode(&bytes[..]).unwrap();
    let lean = CheckRequest::decode(&bytes[..]).unwrap();
    assert_eq!(lean.path(), "/api/models");
    assert_eq!(
        lean.header("authorization"),
        Some(&*format!("ApiKey {DEVIN}"))
    );
    let http = full.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.headers.len(), 10);
    for (k, v) in &http.headers {
        assert_eq!(lean.header(k), Some(v.as_str()), "{k}");
    }
}

#[test]
fn bad_bytes_fail_as_they_do_with_the_generated_type() {
    let good = envoy_like_request(DANA, "GET", "/api/jobs").encode_to_vec();
    // Every truncation of a valid message: the two decoders agree on failing or not.
    for cut in 0..good.len() {
        let bytes = &good[..cut];
        assert_eq!(
            CheckRequest::decode(bytes).is_ok(),
            pb::CheckRequest::decode(bytes).is_ok(),
            "cut at {cut}"
        );
    }
    // A method that is not UTF-8.
    let mut req = envoy_like_request(DANA, "GET", "/api/jobs");
    http_of(&mut req).method = "GXT".into();
    let mut bytes = req.encode_to_vec();
    let at = bytes.windows(3).position(|w| w == b"GXT").unwrap();
    bytes[at + 1] = 0xff;
    assert!(pb::CheckRequest::decode(&bytes[..]).is_err());
    assert!(CheckRequest::decode(&bytes[..]).is_err());
    // attributes (1) sent as a varint: the wrong wire type.
    assert!(pb::CheckRequest::decode(&[0x08, 0x01][..]).is_err());
    assert!(CheckRequest::decode(&[0x08, 0x01][..]).is_err());
    // Unknown fields of every wire type are skipped.
    let unknown = [
        0x78, 0x01, 0x7a, 0x01, 0x00, 0x7d, 0, 0, 0, 0, 0x79, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert!(pb::CheckRequest::decode(&unknown[..]).is_ok());
    assert!(CheckRequest::decode(&unknown[..]).is_ok());
}

/// The allowed answer as rolegate built it with the generated types before the lean codec.
fn reference(ok: &Allowed) -> pb::CheckResponse {
    let string_value = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut fields: HashMap<String, Value> = HashMap::new();
    for (k, v) in &ok.headers {
        fields.insert(wire::metadata_field(k).to_owned(), string_value(v));
    }
    if !ok.entitlement.is_empty() {
        fields.insert("entitlement".into(), string_value(&ok.entitlement));
    }
    pb::CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: ok.headers.iter().map(|(k, v)| header(k, v)).collect(),
            headers_to_remove: ok.remove.clone(),
            ..Default::default()
        })),
    }
}

fn written(answer: &WireResponse) -> pb::CheckResponse {
    let mut buf = Vec::new();
    answer.encode(&mut buf).unwrap();
    assert_eq!(buf.len(), answer.encoded_len());
    pb::CheckResponse::decode(&buf[..]).unwrap()
}

#[test]
fn an_allowed_answer_is_the_message_the_generated_types_would_build() {
    let service = service();
    let mut checked = 0;
    for (key, method, path, extra) in [
        (DANA, "DELETE", "/api/jobs/job-1234", None),
        (DEVIN, "GET", "/api/jobs", Some(("x-rolegate-scope", "ALL"))),
        (DEVIN, "GET", "/api/jobs", Some(("x-rolegate-forged", "1"))),
        (
            DEVIN,
            "GET",
            "/api/jobs",
            Some(("x_rolegate_user", "olivia")),
        ),
        (DANA, "GET", "/api/models/m-1", None),
    ] {
        let mut req = envoy_like_request(key, method, path);
        if let Some((k, v)) = extra {
            let http = http_of(&mut req);
            http.headers.insert(k.into(), v.into());
        }
        let lean = CheckRequest::decode(&req.encode_to_vec()[..]).unwrap();
        let answer = service.answer(&lean).unwrap();
        let WireResponse::Allowed(ok) = &answer else {
            panic!("{method} {path}: {answer:?}")
        };
        assert_eq!(written(&answer), reference(ok), "{method} {path}");
        if let Some((forged, _)) = extra.filter(|(k, _)| *k != "x-rolegate-scope") {
            assert!(ok.remove.iter().any(|r| r == forged), "{forged}: {ok:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 5);

    // Edge shapes: no headers (passed unmatched), long values (multi-byte lengths), several
    // removals.
    for ok in [
        Allowed {
            headers: Vec::new(),
            remove: vec!["authorization".into()],
            entitlement: HeaderText::Static(""),
        },
        Allowed {
            headers: vec![
                ("x-rolegate-filter-teams", wire_text(&"t".repeat(300))),
                (
                    "x-rolegate-revision",
                    HeaderText::Number(crate::authz::Digits::new(u64::MAX)),
                ),
            ],
            remove: vec![
                "authorization".into(),
                "x-rolegate-a".into(),
                "x".repeat(200),
            ],
            entitlement: wire_text(&"e".repeat(130)),
        },
    ] {
        let answer = WireResponse::Allowed(ok.clone());
        assert_eq!(written(&answer), reference(&ok));
    }
}

fn wire_text(s: &str) -> HeaderText {
    HeaderText::Owned(s.to_owned())
}

#[test]
fn denials_and_not_ready_keep_their_shape() {
    let service = service();
    let req = envoy_like_request("Nope00000000000000000.secret", "GET", "/api/jobs");
    let answer = service
        .answer(&CheckRequest::decode(&req.encode_to_vec()[..]).unwrap())
        .unwrap();
    let WireResponse::Other(message) = &answer else {
        panic!("{answer:?}")
    };
    assert_eq!(&written(&answer), message);
    assert_eq!(
        message.status.as_ref().unwrap().code,
        tonic::Code::Unauthenticated as i32
    );
    // An unknown prefix and a wrong secret: the same answer, byte for byte (the reason is only
    // in the log).
    let wrong = envoy_like_request("DanaScienceKey000001.not-her-secret", "GET", "/api/jobs");
    let wrong = service
        .answer(&CheckRequest::decode(&wrong.encode_to_vec()[..]).unwrap())
        .unwrap();
    let mut a = Vec::new();
    let mut b = Vec::new();
    answer.encode(&mut a).unwrap();
    wrong.encode(&mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(message.status.as_ref().unwrap().message, "unauthenticated");

    let empty = Arc::new(State::new());
    let not_ready = ExtAuthzService::new(Arc::new(Authz::new(empty, AuthzConfig::default())));
    let status = not_ready
        .answer(&CheckRequest::decode(&req.encode_to_vec()[..]).unwrap())
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[test]
fn the_revision_is_written_in_decimal() {
    for n in [0, 7, 10, 99, 1_000_001, u64::MAX] {
        assert_eq!(crate::authz::Digits::new(n).as_str(), n.to_string());
    }
}
