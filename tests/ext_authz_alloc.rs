//! How many heap allocations one ext_authz Check costs the server between the body and the
//! answer (decode, judge, encode; HTTP/2 and tonic not included): every proxied request of the
//! mesh pays them. An allowed answer for `DELETE /api/jobs/job-1234` (DATA_SCIENTIST dana, TEAM
//! scope with filters: every header and the dynamic metadata) must stay within
//! [`MAX_ALLOWED`]; the counts are printed (`-- --nocapture`) for docs/ext-authz.md.
//!
//! Counting uses the `allocation-counter` dev-dependency's per-thread counting allocator (see
//! tests/no_alloc.rs for why not a hand-written one).
//!
//! `cargo test --test ext_authz_alloc -- --nocapture`

// The request `rolegate bench --mode ext-authz` sends (the load tool is part of the binary).
#[path = "../src/cli/bench/envoy_request.rs"]
mod envoy_request;

use std::{hint::black_box, sync::Arc};

use allocation_counter::measure;
use envoy_request::envoy_like_request;
use prost::Message;
use rolegate::{
    authz::{Authz, AuthzConfig},
    grpc::ext_authz::{ExtAuthzService, WireRequest},
    origin::policy_file,
    state::State,
};

/// The bound for one allowed call: the lean codec needs 8 (the request's string buffer and
/// entry list, the path's segments, the route's captures, the header list, the joined
/// owner-key filter, the removal list and its credential name); with the generated types it
/// took 77 (measured with this test at commit fc68510).
const MAX_ALLOWED: u64 = 12;
const CALLS: u64 = 1_000;
const DANA: &str = "DanaScienceKey000001.dev-only-danascience";

fn service() -> ExtAuthzService {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/policy.yaml"
    ))
    .unwrap();
    let policy = policy_file::parse(&text, "policy.yaml").unwrap();
    let state = Arc::new(State::from_model(&policy.model, 1).unwrap());
    ExtAuthzService::new(Arc::new(Authz::new(state, AuthzConfig::default())))
}

/// Allocations per call over `CALLS` calls of `method path`.
fn per_call(service: &ExtAuthzService, method: &str, path: &str) -> u64 {
    let body = envoy_like_request(DANA, method, path).encode_to_vec();
    let mut out = Vec::with_capacity(4096);
    let mut call = || {
        out.clear();
        let request = WireRequest::decode(black_box(&body[..])).unwrap();
        let answer = service.answer(&request).unwrap();
        answer.encode(&mut out).unwrap();
        black_box(out.len());
    };
    call(); // warm: lazily built state (tracing callsites, …) is not per call
    let info = measure(|| (0..CALLS).for_each(|_| call()));
    info.count_total / CALLS
}

#[test]
fn an_ext_authz_call_makes_few_allocations() {
    let service = service();
    let allowed = per_call(&service, "DELETE", "/api/jobs/job-1234");
    let forbidden = per_call(&service, "PATCH", "/api/accounting/roles/r-1");
    println!("allocations per ext_authz call: allowed {allowed}, forbidden {forbidden}");
    assert!(
        allowed <= MAX_ALLOWED,
        "an allowed ext_authz call makes {allowed} allocations (at most {MAX_ALLOWED})"
    );
}
