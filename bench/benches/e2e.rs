//! End to end over loopback against the `ringrouter` binary, a fresh process per load
//! run (see `e2e_common`): `e2e/pairs16/64B`, `e2e/pairs16/1KiB`, `e2e/fanout64/64B`.
//!
//! The load engine runs here under the system allocator, as it does in
//! `ringrouter-load` and in `python -m ringrouter.load`, whose figures this bench is
//! meant to match: under mimalloc, in this long-lived process, the engine measured
//! 4.9–5.1M msgs/s at 16 × 64 B where both drivers measured 4.2–4.3M (BENCHMARKS.md,
//! eighteenth pass). `e2e_inproc` runs the router in-process, under mimalloc.

use criterion::{criterion_group, criterion_main};

mod e2e_common;

use e2e_common::{fanout, pairs};

criterion_group!(benches, pairs, fanout);
criterion_main!(benches);
