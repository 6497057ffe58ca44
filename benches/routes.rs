//! Route matching stays O(path length): the cost per decision with 100 and with 10,000 routes.
//!
//! - `route_match/N`: normalize the request path and find its route in a map of N routes
//!   (N/4 services × 4 patterns: `/svc{i}/v1/items`, `/svc{i}/v1/items/{id}`,
//!   `/svc{i}/v1/items/{id}/parts/{part}`, `/svc{i}/v1/files/*`), for probes spread over the
//!   whole map (one per pattern kind, services cycling).
//! - `authz_decision/N`: the whole ext_authz decision path (`Authz::authorize`: method check,
//!   normalization, matching, resource extraction, credential parsing, `State::check`, the
//!   upstream headers) with the example policy's state and the same maps.
//!
//! Every probe is asserted to match (and to be allowed) once before measuring.
//! Run: `cargo bench --bench routes` (quicker: `-- --warm-up-time 1 --measurement-time 3`).
//!
//! On a shared, noisy machine, count instructions instead: `ROLEGATE_FIXED=<group>/<N>:<iters>`
//! runs exactly `iters` iterations in `measure_fixed`, which callgrind can count alone:
//! `ROLEGATE_FIXED=route_match/10000:100000 valgrind --tool=callgrind
//! --toggle-collect='*measure_fixed*' target/release/deps/routes-<hash>` (Ir / iters = the cost
//! of one match).

use std::{collections::HashMap, hint::black_box, sync::Arc};

use criterion::{BenchmarkId, Criterion, criterion_group};
use rolegate::{
    authz::{
        Authz, AuthzConfig, AuthzRequest, ProxyDecision, path::normalize_path, routes::RouteTable,
    },
    domain::{RouteSpec, ValueSource},
    origin::policy_file,
    state::State,
};

const SIZES: [usize; 2] = [100, 10_000];
const KEY: &str = "DevinDevKey000000001.dev-only-devindevkey";

fn routes(n: usize) -> Vec<RouteSpec> {
    let spec = |method: &str, path: String, param: Option<&str>| RouteSpec {
        method: method.into(),
        path,
        entitlement: "jobs.read".into(),
        team: None,
        owner_key: param.map(|p| ValueSource::Path(p.into())),
        owner_user: None,
    };
    (0..n / 4)
        .flat_map(|i| {
            [
                spec("GET", format!("/svc{i}/v1/items"), None),
                spec("GET", format!("/svc{i}/v1/items/{{id}}"), Some("id")),
                spec(
                    "GET",
                    format!("/svc{i}/v1/items/{{id}}/parts/{{part}}"),
                    Some("id"),
                ),
                spec("GET", format!("/svc{i}/v1/files/*"), None),
            ]
        })
        .collect()
}

fn probes(n: usize) -> Vec<String> {
    let services = n / 4;
    (0..64)
        .map(|j| {
            let i = (j * 7919) % services;
            match j % 4 {
                0 => format!("/svc{i}/v1/items?limit=50"),
                1 => format!("/svc{i}/v1/items/DevinDevKey000000001"),
                2 => format!("/svc{i}/v1/items/DevinDevKey000000001/parts/p-{j}"),
                _ => format!("/svc{i}/v1/files/2024/report%20{j}.csv"),
            }
        })
        .collect()
}

fn state() -> Arc<State> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/policy.yaml"
    ))
    .unwrap();
    let policy = policy_file::parse(&text, "policy.yaml").unwrap();
    Arc::new(State::from_model(&policy.model, 1).unwrap())
}

/// Runs `f` on the probes, round robin, `iters` times (the only code callgrind counts).
#[inline(never)]
fn measure_fixed<T>(probes: &[String], iters: usize, mut f: impl FnMut(&str) -> T) {
    for i in 0..iters {
        black_box(f(black_box(&probes[i % probes.len()])));
    }
}

fn fixed(spec: &str) {
    let (what, iters) = spec.split_once(':').expect("<group>/<N>:<iters>");
    let (group, n) = what.split_once('/').expect("<group>/<N>");
    let (n, iters): (usize, usize) = (n.parse().unwrap(), iters.parse().unwrap());
    let probes = probes(n);
    match group {
        "route_match" => {
            let table = RouteTable::compile(&routes(n)).unwrap();
            measure_fixed(&probes, iters, |p| {
                let path = normalize_path(p).unwrap();
                table.find("GET", &path.segments).map(|m| m.params.len())
            });
        }
        "authz_decision" => {
            let authz = Authz::new(state(), AuthzConfig::default());
            authz.set_routes(Some(&routes(n))).unwrap();
            let headers = headers();
            measure_fixed(&probes, iters, |p| {
                let v = authz
                    .authorize(&AuthzRequest {
                        method: "GET",
                        path: p,
                        headers: &headers,
                        context: None,
                    })
                    .unwrap();
                assert!(matches!(v, ProxyDecision::Allow(_)));
                v
            });
        }
        other => panic!("unknown group {other}"),
    }
    println!("{what}: {iters} iterations");
}

fn headers() -> HashMap<String, String> {
    [
        ("authorization".to_owned(), format!("ApiKey {KEY}")),
        (":authority".to_owned(), "app.internal".to_owned()),
        ("user-agent".to_owned(), "bench".to_owned()),
    ]
    .into()
}

fn benches(c: &mut Criterion) {
    let state = state();
    let mut group = c.benchmark_group("route_match");
    for n in SIZES {
        let table = RouteTable::compile(&routes(n)).unwrap();
        assert_eq!(table.len(), n);
        let probes = probes(n);
        for p in &probes {
            let path = normalize_path(p).unwrap();
            assert!(table.find("GET", &path.segments).is_some(), "{p}");
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                let path = normalize_path(black_box(&probes[i])).unwrap();
                black_box(table.find("GET", &path.segments).map(|m| m.params.len()))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("authz_decision");
    let headers = headers();
    for n in SIZES {
        let authz = Authz::new(state.clone(), AuthzConfig::default());
        authz.set_routes(Some(&routes(n))).unwrap();
        let probes = probes(n);
        let decide = |p: &str| {
            authz
                .authorize(&AuthzRequest {
                    method: "GET",
                    path: p,
                    headers: &headers,
                    context: None,
                })
                .unwrap()
        };
        for p in &probes {
            assert!(matches!(decide(p), ProxyDecision::Allow(_)), "{p}");
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                black_box(decide(black_box(&probes[i])))
            })
        });
    }
    group.finish();
}

criterion_group!(route_benches, benches);

fn main() {
    if let Ok(spec) = std::env::var("ROLEGATE_FIXED") {
        fixed(&spec);
        return;
    }
    route_benches();
    Criterion::default().configure_from_args().final_summary();
}
