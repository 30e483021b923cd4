//! The end-to-end benches with the router inside this process (`e2e_inproc/...`): the
//! bench's threads and the router's share one address space and allocator, mimalloc,
//! as in the `ringrouter` binary. See `e2e_common`.

use criterion::{criterion_group, criterion_main, Criterion};

mod e2e_common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn in_process(c: &mut Criterion) {
    e2e_common::IN_PROCESS.store(true, std::sync::atomic::Ordering::Relaxed);
    e2e_common::pairs(c);
    e2e_common::fanout(c);
}

criterion_group!(benches, in_process);
criterion_main!(benches);
