//! How long the storage thread's idle-user sweep holds other requests, through a real
//! store: other users' requests (`UserExists`) are timed while the sweep forgets idle
//! passwordless users.
//!
//! ```text
//! cargo run --release -p ringrouter --example sweep_bench
//! cargo run --release -p ringrouter --example sweep_bench -- --scenario cached --cached 100000
//! ```
//!
//! Scenarios:
//! - `long` (default): one idle user with a direct conversation (and the peer's read
//!   mark) with each of `--peers` idle peers, written to disk; the sweep forgets them all.
//! - `cached`: `--idle` idle users with no history, while `--cached` direct
//!   conversations of 460 users with passwords (never forgotten) are in the history
//!   cache in memory.
//!
//! Prints the time from the moment the users are idle until the sweep is done, and the
//! other requests' waits meanwhile (n, p50 / p99 / max).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::call;
use ringrouter::store::history::{dm_conv, HistChunk, HistoryOptions};
use ringrouter::store::{Durability, Store, StoreHandle, StoreOptions, StoreResult};

#[derive(Debug, Parser)]
#[command(about = "ringrouter idle-user sweep benchmark")]
struct Args {
    /// `long` or `cached` (see the module's documentation).
    #[arg(long, default_value = "long")]
    scenario: String,
    /// `long`: the idle user's peers (each a conversation).
    #[arg(long, default_value_t = 20_000)]
    peers: usize,
    /// `cached`: idle users to forget.
    #[arg(long, default_value_t = 2_000)]
    idle: usize,
    /// `cached`: conversations held in the history cache.
    #[arg(long, default_value_t = 100_000)]
    cached: usize,
}

/// Users are forgotten this long after they were last seen.
const FORGET: Duration = Duration::from_millis(1500);

/// Sends `n` requests made by `f` without waiting for each, then waits for them all.
fn all<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize, Box<dyn FnOnce(StoreResult<T>) + Send>) -> StoreResult<()>,
) {
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        f(
            i,
            Box::new(move |r: StoreResult<T>| {
                let _ = tx.send(r.is_ok());
            }),
        )
        .expect("queued");
    }
    drop(tx);
    assert_eq!(rx.iter().filter(|ok| *ok).count(), n, "requests failed");
}

fn dm(from: &str, to: &str, id: u64) -> HistChunk {
    let mut c = HistChunk {
        conv: dm_conv(from.as_bytes(), to.as_bytes()),
        ..Default::default()
    };
    c.push(from.as_bytes(), id, now_us(), format!("hi {id}").as_bytes());
    c
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `long`: one idle user who talked to `peers` idle peers.
fn long(h: &StoreHandle, peers: usize) -> u64 {
    call(|cb| h.ensure_user("talker", cb));
    all(peers, |i, cb| h.ensure_user(&format!("peer{i}"), cb));
    all(peers.div_ceil(100), |i, cb| {
        let chunks = (i * 100..(i * 100 + 100).min(peers))
            .map(|p| dm("talker", &format!("peer{p}"), p as u64 + 1))
            .collect();
        h.history_append(chunks, cb)
    });
    all(peers, |i, cb| {
        h.history_mark(
            &format!("peer{i}"),
            Some("talker".into()),
            None,
            i as u64 + 1,
            cb,
        )
    });
    call(|cb| h.flush(cb));
    peers as u64 + 1
}

/// `cached`: `idle` idle users, `cached` conversations of others in memory.
fn cached(h: &StoreHandle, idle: usize, cached: usize) -> u64 {
    const ACTIVE: usize = 460;
    all(ACTIVE, |i, cb| {
        h.register(&format!("act{i}"), "pw-123456", cb)
    });
    let pairs: Vec<(usize, usize)> = (0..ACTIVE)
        .flat_map(|a| (a + 1..ACTIVE).map(move |b| (a, b)))
        .take(cached)
        .collect();
    for chunk in pairs.chunks(1000) {
        let chunks = chunk
            .iter()
            .map(|&(a, b)| dm(&format!("act{a}"), &format!("act{b}"), 1))
            .collect();
        call(|cb| h.history_append(chunks, cb));
    }
    all(idle, |i, cb| h.ensure_user(&format!("idle{i}"), cb));
    idle as u64
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = StoreOptions {
        argon2_cheap: true,
        forget_idle_after: Some(FORGET),
        history: HistoryOptions {
            per_conversation: 100,
            memory_bytes: 256 << 20,
            flush_every: Duration::from_secs(3600),
            ..HistoryOptions::default()
        },
        ..StoreOptions::default()
    };
    let h = Store::open_with(dir.path(), Durability::Memory, opts).expect("open store");
    call(|cb| h.register("probe", "pw-123456", cb));
    let made = Instant::now();
    let forget = match args.scenario.as_str() {
        "long" => long(&h, args.peers),
        "cached" => cached(&h, args.idle, args.cached),
        other => panic!("unknown scenario {other:?} (long, cached)"),
    };
    // Timed from when the last of them is idle.
    std::thread::sleep(FORGET.saturating_sub(made.elapsed()));
    let t0 = Instant::now();
    let mut waits = Vec::new();
    while h.stats().forgotten < forget || h.stats().deletions_pending > 0 {
        assert!(t0.elapsed() < Duration::from_secs(600), "{:?}", h.stats());
        let t = Instant::now();
        call(|cb| h.user_exists("probe", cb));
        waits.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = t0.elapsed();
    waits.sort_by(f64::total_cmp);
    let at = |p: f64| waits[((waits.len() - 1) as f64 * p) as usize];
    println!(
        "{}: {} users forgotten in {:.2} s; others' waits meanwhile n={} p50={:.2} p99={:.2} max={:.2} ms",
        args.scenario,
        h.stats().forgotten,
        took.as_secs_f64(),
        waits.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    h.shutdown().expect("shutdown");
}
