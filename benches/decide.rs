//! The cost of one decision, on a synthetic world of 10,000 and of 1,000,000 keys
//! (`benches/support/world.rs`: ~1,000 teams, users with one or two keys, the four user roles,
//! ~5% project keys).
//!
//! - `check_allow/N`: the whole allow path of `State::check` — parse `prefix.secret`, read the
//!   revision, look the prefix up in the cache, SHA-256 the secret and compare it, decide
//!   `jobs.read` on a named resource (the key's team, owned by the key). The keys cycle through
//!   every active key of the world in shuffled order, so consecutive lookups hit different map
//!   slots and, at 1M keys, mostly miss the CPU caches as real traffic would.
//! - `check_deny_wrong_secret/N`: the same keys with a wrong secret: parse, lookup, hash, deny.
//! - `decide_only/N`: `domain::decide_presented` alone on entries fetched beforehand (no parse, lookup or
//!   hash).
//!
//! Every probe is asserted to be allowed (or denied with `WrongSecret`) once before measuring.
//!
//! Run: `cargo bench --bench decide` (quicker: `cargo bench --bench decide -- --warm-up-time 1
//! --measurement-time 3`; one size: `cargo bench --bench decide -- /10000`). Setting up the 1M
//! world takes a few seconds and about a gigabyte of memory.

use std::{hint::black_box, sync::Arc};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rolegate::{
    domain::{KeyEntry, Reason, ResourceRef, decide_presented},
    state::{State, unix_now},
};

// The allocator of the `rolegate` binary: where the cache's entries lie in memory (and whether
// they sit on transparent huge pages) is part of what a cold check costs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/world.rs"]
mod world;

use world::{ENTITLEMENT, Probe};

const SIZES: [usize; 2] = [10_000, 1_000_000];
const SEED: u64 = 0x5EED_0001;

/// Cycles through `items` without a division per step.
struct Cycle<'a, T> {
    items: &'a [T],
    next: usize,
}

impl<'a, T> Cycle<'a, T> {
    fn new(items: &'a [T]) -> Self {
        assert!(!items.is_empty());
        Cycle { items, next: 0 }
    }

    #[inline]
    fn step(&mut self) -> &'a T {
        let item = &self.items[self.next];
        self.next += 1;
        if self.next == self.items.len() {
            self.next = 0;
        }
        item
    }
}

fn bench_size(c: &mut Criterion, keys: usize) {
    let (state, probes): (State, Vec<Probe>) = world::load(keys, SEED);
    let now = unix_now();

    for p in &probes {
        let reason = state
            .check(p.key(), ENTITLEMENT, p.resource(), now)
            .reason();
        assert_eq!(reason, Reason::Allowed, "{} on {:?}", p.key(), p.resource());
    }
    let wrong: Vec<(String, &Probe)> = probes.iter().map(|p| (p.wrong_key(), p)).collect();
    for (key, p) in &wrong {
        let reason = state.check(key, ENTITLEMENT, p.resource(), now).reason();
        assert_eq!(reason, Reason::WrongSecret, "{key}");
    }
    let entries: Vec<(Arc<KeyEntry>, ResourceRef<'_>)> = probes
        .iter()
        .map(|p| (state.lookup(p.prefix()).expect("loaded"), p.resource()))
        .collect();

    let id = BenchmarkId::from_parameter(keys);

    let mut group = c.benchmark_group("check_allow");
    group.throughput(Throughput::Elements(1));
    group.bench_function(id.clone(), |b| {
        let mut next = Cycle::new(&probes);
        b.iter(|| {
            let p = next.step();
            state.check(
                black_box(p.key()),
                black_box(ENTITLEMENT),
                black_box(p.resource()),
                now,
            )
        })
    });
    group.finish();

    // The same path over a hot set of 1,000 keys of the loaded state: what a sidecar sees when
    // its traffic comes from a bounded number of callers. The gap between this and the cycle
    // over every key is memory latency (each cold check misses the cache several times), not
    // work done.
    let hot = &probes[..probes.len().min(1_000)];
    let mut group = c.benchmark_group("check_allow_hot_1000");
    group.throughput(Throughput::Elements(1));
    group.bench_function(id.clone(), |b| {
        let mut next = Cycle::new(hot);
        b.iter(|| {
            let p = next.step();
            state.check(
                black_box(p.key()),
                black_box(ENTITLEMENT),
                black_box(p.resource()),
                now,
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("check_deny_wrong_secret");
    group.throughput(Throughput::Elements(1));
    group.bench_function(id.clone(), |b| {
        let mut next = Cycle::new(&wrong);
        b.iter(|| {
            let (key, p) = next.step();
            state.check(
                black_box(key),
                black_box(ENTITLEMENT),
                black_box(p.resource()),
                now,
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("decide_only");
    group.throughput(Throughput::Elements(1));
    group.bench_function(id, |b| {
        let mut next = Cycle::new(&entries);
        b.iter(|| {
            let (entry, resource) = next.step();
            // As `State::check` calls it: the presented key is the resource's owner.
            decide_presented(
                black_box(entry),
                black_box(resource.owner_key_prefix),
                black_box(ENTITLEMENT),
                black_box(*resource),
                now,
            )
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    for keys in SIZES {
        bench_size(c, keys);
    }
}

criterion_group!(decide_benches, benches);
criterion_main!(decide_benches);
