//! What one dependent memory access costs on this machine, by working-set size: the floor under
//! any lookup whose steps each wait for the previous one (a hash table's control bytes, its slot,
//! the entry the slot points to).
//!
//! Chases a random cyclic permutation of cache lines through buffers of 1 MiB to 1 GiB (4 KiB
//! pages, like the server's heap) and prints nanoseconds per step.
//!
//! `cargo run --release --example memory_latency`

use std::{hint::black_box, time::Instant};

/// usize words per 64-byte cache line: one step per line.
const LINE_WORDS: usize = 8;
const STEPS: usize = 5_000_000;

/// A buffer in which line `i` holds the index of the next line of one random cycle through all
/// lines (Sattolo's shuffle), so that every load depends on the one before.
fn cycle(lines: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x = seed | 1;
    for i in (1..lines).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let j = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % i as u64) as usize;
        order.swap(i, j);
    }
    let mut buf = vec![0usize; lines * LINE_WORDS];
    for (i, &line) in order.iter().enumerate() {
        buf[line * LINE_WORDS] = order[(i + 1) % lines] * LINE_WORDS;
    }
    buf
}

fn main() {
    for mib in [1usize, 8, 32, 128, 512, 1024] {
        let buf = cycle(mib * 1024 * 1024 / 64, 0x9E37_79B9_7F4A_7C15);
        let mut at = 0;
        for _ in 0..STEPS / 10 {
            at = buf[at];
        }
        let start = Instant::now();
        for _ in 0..STEPS {
            at = buf[at];
        }
        let ns = start.elapsed().as_nanos() as f64 / STEPS as f64;
        println!("{mib:>5} MiB: {ns:>6.1} ns per dependent access");
        black_box(at);
    }
}
