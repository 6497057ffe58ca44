//! The allow path of `State::check` does not touch the heap: 1,000 allowed checks, with a named
//! resource and as a collection call (no resource), must make zero allocations on the calling
//! thread.
//!
//! Counting uses the `allocation-counter` dev-dependency, which installs a per-thread counting
//! global allocator. A hand-written `GlobalAlloc` cannot live here: the package's `[lints]`
//! forbid `unsafe_code` in every target, tests included, and `forbid` cannot be relaxed by an
//! `#![allow]` in the file (E0453).
//!
//! When a count is not zero, the failure message breaks it down by stage (parse, revision read,
//! lookup, authenticate, decide, and the whole check again), measured one stage at a time over the
//! same probes, to say which part of the path allocates.
//!
//! `cargo test --test no_alloc`

use std::hint::black_box;

use allocation_counter::{AllocationInfo, measure};
use rolegate::{
    domain::{ApiKey, Reason, ResourceRef, authenticate, decide},
    state::{State, unix_now},
};

#[path = "../benches/support/world.rs"]
mod world;

use world::{ENTITLEMENT, Probe};

const CHECKS: usize = 1_000;

/// The probes used for the measured loops: `CHECKS` of them, cycling.
fn cycle(probes: &[Probe]) -> impl Iterator<Item = &Probe> {
    probes.iter().cycle().take(CHECKS)
}

/// How many allocations each stage of `State::check` makes over `CHECKS` probes, measured one
/// stage at a time: what to read when the whole path is found to allocate.
fn by_stage(state: &State, probes: &[Probe], collection: bool, now: i64) -> String {
    let resource = |p| {
        if collection {
            ResourceRef::default()
        } else {
            Probe::resource(p)
        }
    };
    let parsed: Vec<_> = cycle(probes)
        .map(|p| ApiKey::parse(p.key()).unwrap())
        .collect();
    let entries: Vec<_> = parsed
        .iter()
        .map(|k| state.lookup(k.prefix).unwrap())
        .collect();
    let stages: [(&str, AllocationInfo); 6] = [
        (
            "ApiKey::parse",
            measure(|| {
                cycle(probes).for_each(|p| {
                    let _ = black_box(ApiKey::parse(p.key()));
                })
            }),
        ),
        (
            "State::revision",
            measure(|| {
                (0..CHECKS).for_each(|_| {
                    let _ = black_box(state.revision());
                })
            }),
        ),
        (
            "State::lookup",
            measure(|| {
                parsed
                    .iter()
                    .for_each(|k| drop(black_box(state.lookup(k.prefix))))
            }),
        ),
        (
            "authenticate",
            measure(|| {
                parsed.iter().zip(&entries).for_each(|(k, e)| {
                    black_box(authenticate(Some(e), k, now)).unwrap();
                })
            }),
        ),
        (
            "decide",
            measure(|| {
                cycle(probes).zip(&entries).for_each(|(p, e)| {
                    drop(black_box(decide(e, ENTITLEMENT, resource(p), now)));
                })
            }),
        ),
        (
            "State::check, whole",
            measure(|| {
                cycle(probes).for_each(|p| {
                    drop(black_box(state.check(
                        p.key(),
                        ENTITLEMENT,
                        resource(p),
                        now,
                    )));
                })
            }),
        ),
    ];
    stages
        .iter()
        .map(|(stage, info)| {
            format!(
                "\n  {stage}: {} allocations, {} bytes",
                info.count_total, info.bytes_total
            )
        })
        .collect()
}

#[test]
fn the_counter_counts_this_thread() {
    let info = measure(|| drop(black_box(vec![1u8; 64])));
    assert_eq!((info.count_total, info.bytes_total), (1, 64), "{info:?}");
}

#[test]
fn allowed_checks_do_not_allocate() {
    let (state, probes) = world::load(500, 7);
    assert!(
        probes.len() > 400,
        "a few hundred allowed keys, got {}",
        probes.len()
    );
    let now = unix_now();
    let collection = ResourceRef::default();

    // Warm up: every probe once, both ways, and check that each is allowed.
    for p in &probes {
        let named = state.check(p.key(), ENTITLEMENT, p.resource(), now);
        assert_eq!(
            named.reason(),
            Reason::Allowed,
            "{} on {:?}",
            p.key(),
            p.resource()
        );
        let all = state.check(p.key(), ENTITLEMENT, collection, now);
        assert_eq!(
            all.reason(),
            Reason::Allowed,
            "{} on the collection",
            p.key()
        );
    }

    // A named resource: the key's team, owned by the key.
    let mut allowed = 0;
    let info = measure(|| {
        for p in cycle(&probes) {
            let out = state.check(
                black_box(p.key()),
                ENTITLEMENT,
                black_box(p.resource()),
                now,
            );
            allowed += usize::from(black_box(out).decision.is_allowed());
        }
    });
    assert_eq!(allowed, CHECKS);
    assert_eq!(
        info.count_total,
        0,
        "{CHECKS} allowed checks on a named resource allocated: {info:?}; by stage:{}",
        by_stage(&state, &probes, false, now)
    );

    // A collection call: the answer carries the filters, shared with the cache.
    let (mut allowed, mut filtered) = (0, 0);
    let info = measure(|| {
        for p in cycle(&probes) {
            let out = black_box(state.check(black_box(p.key()), ENTITLEMENT, collection, now));
            allowed += usize::from(out.decision.is_allowed());
            filtered += usize::from(out.decision.filter_owner_key_prefixes.is_some());
        }
    });
    assert_eq!(allowed, CHECKS);
    assert!(
        filtered > 0,
        "some collection answers carry an owner filter"
    );
    assert_eq!(
        info.count_total,
        0,
        "{CHECKS} allowed collection checks allocated: {info:?}; by stage:{}",
        by_stage(&state, &probes, true, now)
    );
}
