//! The policy-as-code questions on a synthetic world of 1,000,000 keys
//! (`benches/support/world.rs`):
//!
//! - `who_can/keys.update`: every key holding `keys.update` (every key does, at OWN through
//!   TEAM_ROLE: a million holders, sorted), as `rolegate who-can keys.update` answers it;
//! - `who_can/keys.update first 50000`: the same, keeping the first 50,000 as the Admin
//!   `WhoCan` RPC answers (with the total);
//! - `who_can/keys.update --team`: the same narrowed to one team;
//! - `who_can/models.approve`: an entitlement only ACCOUNT_ADMIN keys hold (about 15%), all of
//!   them and the first 50,000;
//! - `privilege_diff/one key`: the gains and losses of adding one key to a user.
//!
//! Run: `cargo bench --bench policy` (setting the world up takes a few seconds and about a
//! gigabyte of memory).

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use rolegate::{
    domain::{
        IndexedModel, KeySpec, Model,
        model::Change,
        privileges::{privilege_diff, who_can},
    },
    state::unix_now,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/world.rs"]
mod world;

const KEYS: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let world = world::generate(KEYS, 0x5EED_0001);
    let mut model = Model::default();
    for change in &world.changes {
        model.apply(change);
    }
    assert_eq!(model.keys.len(), KEYS);
    let now = unix_now();
    let mut group = c.benchmark_group("who_can");
    group.sample_size(10);
    for (name, entitlement, team, limit) in [
        ("keys.update", "keys.update", None, usize::MAX),
        ("keys.update first 50000", "keys.update", None, 50_000),
        (
            "keys.update --team",
            "keys.update",
            Some("team-0007"),
            usize::MAX,
        ),
        ("models.approve", "models.approve", None, usize::MAX),
        ("models.approve first 50000", "models.approve", None, 50_000),
    ] {
        let n = who_can(&model, entitlement, team, now, limit)
            .unwrap()
            .total;
        assert!(n > 0, "{name}: some key holds it");
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    who_can(&model, entitlement, team, now, limit)
                        .unwrap()
                        .total,
                )
            })
        });
    }
    group.finish();

    let old = IndexedModel::from(model);
    let mut new = old.clone();
    let some = old.model().keys.values().next().unwrap().clone();
    let mut added = KeySpec::clone(&some);
    added.prefix = "AddedKeyForTheBench01".into();
    new.apply(&Change::PutKey(Arc::new(added)));
    let mut group = c.benchmark_group("privilege_diff");
    group.sample_size(10);
    group.bench_function("one key", |b| {
        b.iter(|| black_box(privilege_diff(&old, &new, now).len()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
