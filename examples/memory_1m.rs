//! Memory and single-thread speed of the cache at 1,000,000 keys (and speed at 10,000).
//!
//! Loads the synthetic world of `benches/support/world.rs` into a `State` in one change set and
//! prints the resident set size (VmRSS of /proc/self/status) before generating, after
//! generating, after loading, and after dropping the generator's data; then times 1,000,000
//! allowed `State::check` calls on one thread. RSS counts what the allocator holds; like the
//! `rolegate` binary, this example uses mimalloc, which returns freed memory to the system.
//!
//! `cargo run --release --example memory_1m`

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use rolegate::state::{ChangeSet, State, unix_now};

// The allocator of the `rolegate` binary, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/support/world.rs"]
mod world;

use world::{ENTITLEMENT, Probe};

const SEED: u64 = 0x5EED_0001;
const CHECKS: usize = 1_000_000;

/// A `/proc/self/status` field in kB (`VmRSS`, `VmHWM`), as MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    kb / 1024.0
}

fn rss(label: &str) -> f64 {
    let mib = status_mib("VmRSS");
    println!("  RSS {label:<44} {mib:>9.1} MiB");
    mib
}

/// Times `CHECKS` allowed checks, cycling through `probes`; returns ns per check.
fn time_checks(state: &State, probes: &[Probe]) -> f64 {
    let now = unix_now();
    // One pass to warm up (and to check that every probe is allowed).
    for p in probes.iter().take(CHECKS) {
        let out = state.check(p.key(), ENTITLEMENT, p.resource(), now);
        assert!(
            out.decision.is_allowed(),
            "{} on {:?}",
            p.key(),
            p.resource()
        );
    }
    let start = Instant::now();
    let mut allowed = 0usize;
    for p in probes.iter().cycle().take(CHECKS) {
        let out = state.check(
            black_box(p.key()),
            ENTITLEMENT,
            black_box(p.resource()),
            now,
        );
        allowed += usize::from(black_box(out).decision.is_allowed());
    }
    let elapsed = start.elapsed();
    assert_eq!(allowed, CHECKS);
    elapsed.as_nanos() as f64 / CHECKS as f64
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Generates and loads `keys` keys, printing memory as it goes; returns ns per check.
fn run(keys: usize) -> f64 {
    println!("{keys} keys:");
    let start = rss("before generating");

    let t = Instant::now();
    let world = world::generate(keys, SEED);
    let generated = t.elapsed();
    println!(
        "  generated {} teams, {} users, {} projects, {} keys ({} active probes) in {}",
        world.teams,
        world.users,
        world.projects,
        world.keys,
        world.probes.len(),
        secs(generated)
    );
    rss("after generating (changes + probes)");

    let state = State::new();
    let t = Instant::now();
    state
        .apply(ChangeSet {
            revision: 1,
            changes: world.changes,
        })
        .expect("the first change set applies");
    println!("  loaded in {} (one change set)", secs(t.elapsed()));
    assert_eq!(state.counts().keys, keys);
    let probes = world.probes;
    let loaded = rss("after loading (state + probes; changes dropped)");

    let ns = time_checks(&state, &probes);
    println!(
        "  {CHECKS} allowed checks, one thread, cycling over {} keys: {ns:.1} ns/check",
        probes.len()
    );

    let probe_bytes: usize = probes.capacity() * std::mem::size_of::<Probe>();
    drop(probes);
    let state_only = rss("after dropping the probes (state only)");
    println!(
        "  state: {:.1} MiB over the start, {:.0} bytes per key (probes were {:.1} MiB; RSS \
         after loading was {:.1} MiB over the start)",
        state_only - start,
        (state_only - start) * 1024.0 * 1024.0 / keys as f64,
        probe_bytes as f64 / (1024.0 * 1024.0),
        loaded - start,
    );
    println!("  peak RSS so far (VmHWM): {:.1} MiB", status_mib("VmHWM"));
    drop(state);
    rss("after dropping the state");
    ns
}

fn main() {
    // The small world first, so that each starts from what the previous one freed at most.
    let small = run(10_000);
    println!();
    let big = run(1_000_000);
    println!();
    println!("ns/check: {small:.1} at 10,000 keys, {big:.1} at 1,000,000 keys");
}
