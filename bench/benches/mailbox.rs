//! Cross-shard mailbox: batches (`Vec` of small items) pushed by one thread and
//! popped by another through `ringrouter::mailbox::mesh`, with the doorbell
//! protocol the shards use (the consumer parks only after `Inbox::park` says the
//! rings are empty; the producer rings after every push).
//!
//! `mailbox/push_pop/{1,16,64,256}`: batch size. Throughput is items moved from the
//! producer's hands to the consumer's (a fresh `Vec` per batch, freed by the
//! consumer, as the router does with its outboxes).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringrouter::mailbox::{mesh, Outboxes};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Same as the router's ring capacity (batches per ring).
const RING_CAPACITY: usize = 512;
/// Items moved per criterion iteration (at least 64 batches).
const ITEMS_PER_ITER: u64 = 4096;

type Item = u64;

struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A consumer thread that pops everything shard 0 sends shard 1 and counts items.
struct Consumer {
    popped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
    out: Outboxes<Vec<Item>>,
}

impl Consumer {
    fn start() -> Self {
        let mut m = mesh::<Vec<Item>>(2, RING_CAPACITY);
        let (_, mut inbox) = m.remove(1);
        let (out, _) = m.remove(0);
        let popped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (popped.clone(), stop.clone());
        let handle = thread::Builder::new()
            .name("mailbox-consumer".into())
            .spawn(move || {
                let waker = Waker::from(Arc::new(Unparker(thread::current())));
                let mut sum = 0u64;
                loop {
                    let mut got = 0u64;
                    while let Some(batch) = inbox.pop(0) {
                        got += batch.len() as u64;
                        for v in &batch {
                            sum = sum.wrapping_add(*v);
                        }
                        drop(black_box(batch));
                    }
                    if got > 0 {
                        p.fetch_add(got, Ordering::Release);
                        continue;
                    }
                    if s.load(Ordering::Acquire) {
                        return sum;
                    }
                    if inbox.park(&waker, |_| true) {
                        // Timeout only guards against a missed stop; wake-ups come from the bell.
                        thread::park_timeout(Duration::from_millis(50));
                        inbox.unpark();
                    }
                }
            })
            .expect("spawn consumer");
        Consumer {
            popped,
            stop,
            handle: Some(handle),
            out,
        }
    }

    /// Pushes `batches` fresh batches of `size` items and waits until all are popped.
    fn run(&mut self, batches: u64, size: usize) -> Duration {
        let target = self.popped.load(Ordering::Acquire) + batches * size as u64;
        let start = Instant::now();
        let mut next: Item = 0;
        for _ in 0..batches {
            let mut batch: Vec<Item> = Vec::with_capacity(size);
            for _ in 0..size {
                batch.push(next);
                next += 1;
            }
            let mut b = black_box(batch);
            loop {
                match self.out.push(1, b) {
                    Ok(()) => break,
                    Err(back) => {
                        // Ring full: backpressure, make sure the consumer is awake.
                        b = back;
                        self.out.ring(1);
                        thread::yield_now();
                    }
                }
            }
            self.out.ring(1);
        }
        while self.popped.load(Ordering::Acquire) < target {
            std::hint::spin_loop();
            thread::yield_now();
        }
        start.elapsed()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for b in self.out.bells() {
            b.force();
        }
        if let Some(h) = self.handle.take() {
            black_box(h.join().expect("consumer thread"));
        }
    }
}

fn push_pop(c: &mut Criterion) {
    let mut g = c.benchmark_group("mailbox/push_pop");
    for size in [1usize, 16, 64, 256] {
        // Enough batches per iteration that the final wait for the consumer is amortised.
        let batches = (ITEMS_PER_ITER / size as u64).max(64);
        g.throughput(Throughput::Elements(batches * size as u64));
        let mut consumer = Consumer::start();
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += consumer.run(batches, size);
                }
                total
            })
        });
        drop(consumer);
    }
    g.finish();
}

criterion_group!(benches, push_pop);
criterion_main!(benches);
