//! The in-process cost of one `envoy.service.auth.v3.Authorization/Check`: what rolegate's server
//! does per call besides HTTP/2 and tokio — decode the request body, decide it, encode the answer.
//!
//! - `ext_authz_call/allowed`: an Envoy-shaped CheckRequest (`rolegate bench --mode ext-authz`'s:
//!   pseudo-headers, nine headers, peers) for `DELETE /api/jobs/job-1234` with DATA_SCIENTIST
//!   dana's key — allowed at TEAM scope with filters, so the answer carries every header and
//!   the dynamic metadata.
//! - `ext_authz_call/forbidden`: the same request for `PATCH /api/accounting/roles/r-1` (dana's
//!   roles lack `roles.update`): a 403 with the JSON body.
//! - `noop_call`: what the no-op `Authorization` service of `rolegate bench --baseline` does per
//!   call — decode the full CheckRequest with the generated types and encode an OK status.
//!
//! Each request is checked once for the expected outcome before measuring.
//! Run: `cargo bench --bench ext_authz` (quicker: `-- --warm-up-time 1 --measurement-time 3`).
//!
//! On a shared, noisy machine, count instructions instead: `ROLEGATE_FIXED=<name>:<iters>` (name:
//! `allowed`, `forbidden` or `noop`) runs exactly `iters` calls in `measure_fixed`, which
//! callgrind can count alone: `ROLEGATE_FIXED=allowed:20000 valgrind --tool=callgrind
//! --toggle-collect='*measure_fixed*' target/release/deps/ext_authz-<hash>` (Ir / iters = the
//! cost of one call).

// The request `rolegate bench --mode ext-authz` sends (the load tool is part of the binary).
#[path = "../src/cli/bench/envoy_request.rs"]
mod envoy_request;

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group};
use envoy_request::envoy_like_request;
use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse},
    pb::google::rpc,
};
use prost::Message;
use rolegate::{
    authz::{Authz, AuthzConfig},
    grpc::ext_authz::{ExtAuthzService, WireRequest},
    origin::policy_file,
    state::State,
};

const DANA: &str = "DanaScienceKey000001.dev-only-danascience";

fn state() -> Arc<State> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/policy.yaml"
    ))
    .unwrap();
    let policy = policy_file::parse(&text, "policy.yaml").unwrap();
    Arc::new(State::from_model(&policy.model, 1).unwrap())
}

/// The request bodies, as Envoy would put them on the wire.
fn body(method: &str, path: &str) -> Vec<u8> {
    envoy_like_request(DANA, method, path).encode_to_vec()
}

/// One call of rolegate's server minus HTTP/2: decode, decide, encode into `out`.
fn call(service: &ExtAuthzService, body: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let request = WireRequest::decode(body).unwrap();
    let response = service.answer(&request).unwrap();
    response.encode(out).unwrap();
    out.len()
}

/// One call of the no-op baseline service minus HTTP/2.
fn noop(body: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let request = CheckRequest::decode(body).unwrap();
    black_box(&request);
    let response = CheckResponse {
        status: Some(rpc::Status::default()),
        ..Default::default()
    };
    response.encode(out).unwrap();
    out.len()
}

/// The HTTP status an encoded answer carries (200 for an OK response), read with the generated
/// types, to check each case once before measuring.
fn http_status(answer: &[u8]) -> i32 {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    match CheckResponse::decode(answer).unwrap().http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
        _ => 0,
    }
}

struct Fixture {
    service: ExtAuthzService,
    allowed: Vec<u8>,
    forbidden: Vec<u8>,
}

fn fixture() -> Fixture {
    let service = ExtAuthzService::new(Arc::new(Authz::new(state(), AuthzConfig::default())));
    let f = Fixture {
        service,
        allowed: body("DELETE", "/api/jobs/job-1234"),
        forbidden: body("PATCH", "/api/accounting/roles/r-1"),
    };
    let mut out = Vec::new();
    call(&f.service, &f.allowed, &mut out);
    assert_eq!(http_status(&out), 200);
    call(&f.service, &f.forbidden, &mut out);
    assert_eq!(http_status(&out), 403);
    f
}

/// Runs `f` `iters` times (the only code callgrind counts).
#[inline(never)]
fn measure_fixed(iters: usize, mut f: impl FnMut() -> usize) {
    for _ in 0..iters {
        black_box(f());
    }
}

fn fixed(spec: &str) {
    let (name, iters) = spec.split_once(':').expect("<name>:<iters>");
    let iters: usize = iters.parse().unwrap();
    let f = fixture();
    let mut out = Vec::with_capacity(4096);
    match name {
        "allowed" => measure_fixed(iters, || call(&f.service, black_box(&f.allowed), &mut out)),
        "forbidden" => measure_fixed(iters, || {
            call(&f.service, black_box(&f.forbidden), &mut out)
        }),
        "noop" => measure_fixed(iters, || noop(black_box(&f.allowed), &mut out)),
        other => panic!("unknown case {other}"),
    }
    println!("{name}: {iters} iterations");
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("ext_authz_call");
    group.bench_function("allowed", |b| {
        b.iter(|| call(&f.service, black_box(&f.allowed), &mut out))
    });
    group.bench_function("forbidden", |b| {
        b.iter(|| call(&f.service, black_box(&f.forbidden), &mut out))
    });
    group.finish();
    c.bench_function("noop_call", |b| {
        b.iter(|| noop(black_box(&f.allowed), &mut out))
    });
}

criterion_group!(ext_authz_benches, benches);

fn main() {
    if let Ok(spec) = std::env::var("ROLEGATE_FIXED") {
        fixed(&spec);
        return;
    }
    ext_authz_benches();
    Criterion::default().configure_from_args().final_summary();
}
