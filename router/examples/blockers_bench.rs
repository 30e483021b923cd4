//! What a user blocked by many costs when its contact list is loaded, through a real
//! store: every blocker loaded (what each login did before `--max-loaded-blockers`)
//! against the first `--loaded` of them, and the store read that answers for one of the
//! others (`StoreHandle::blockers_among`).
//!
//! ```text
//! cargo run --release -p ringrouter --example blockers_bench
//! cargo run --release -p ringrouter --example blockers_bench -- --blockers 1000000 --data-dir /tmp/bb
//! ```
//!
//! `--blockers` users (`blk0000000`, ...) block `spammer`. With `--data-dir` the store is
//! left there, closed, for a router to open (`bench/blocked-by-many.py` does).
//!
//! Prints, for each way of loading, the load's time (median of `--rounds`, taken in
//! alternation) and what the loaded blockers weigh in memory (`store::contacts::list_weight`).

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use common::call;
use ringrouter::store::contacts::list_weight;
use ringrouter::store::{Durability, Store};

#[derive(Debug, Parser)]
#[command(about = "ringrouter: loading the list of a user blocked by many")]
struct Args {
    /// Users that block `spammer`.
    #[arg(long, default_value_t = 100_000)]
    blockers: usize,
    /// Blockers loaded with the list (the router's `--max-loaded-blockers`).
    #[arg(long, default_value_t = 1_024)]
    loaded: usize,
    /// Loads of each kind, alternating.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Where to make the store (kept); a temporary directory if not given.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The name of blocker `i`.
fn blocker(i: usize) -> String {
    format!("blk{i:07}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let h = Store::open(&dir, Durability::Memory).expect("open store");
    let t = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..args.blockers {
        let tx = tx.clone();
        h.note_blocker("spammer", &blocker(i), true, move |r| {
            let _ = tx.send(r.is_ok());
        })
        .expect("queued");
    }
    drop(tx);
    assert_eq!(rx.iter().filter(|ok| *ok).count(), args.blockers);
    call(|cb| h.flush(cb));
    println!(
        "{} blockers noted in {:.2} s",
        args.blockers,
        t.elapsed().as_secs_f64()
    );
    let (mut all_ms, mut capped_ms) = (Vec::new(), Vec::new());
    let (mut all_w, mut capped_w) = (0, 0);
    for _ in 0..args.rounds {
        for (max, ms, w) in [
            (usize::MAX, &mut all_ms, &mut all_w),
            (args.loaded, &mut capped_ms, &mut capped_w),
        ] {
            let t = Instant::now();
            let rec = call(|cb| h.get_contacts("spammer", max, cb));
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            *w = list_weight("spammer", &rec);
        }
    }
    let mut probe_ms = Vec::new();
    for i in 0..args.rounds * 10 {
        let peer = blocker((i * 7919) % args.blockers);
        let t = Instant::now();
        let found = call(|cb| h.blockers_among("spammer", vec![peer], cb));
        probe_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found, [true]);
    }
    println!(
        "all {} loaded: {:.2} ms a load, {:.1} KiB in memory",
        args.blockers,
        median(all_ms),
        all_w as f64 / 1024.0
    );
    println!(
        "{} loaded: {:.3} ms a load, {:.1} KiB in memory; one other read from the store: {:.3} ms",
        args.loaded.min(args.blockers),
        median(capped_ms),
        capped_w as f64 / 1024.0,
        median(probe_ms)
    );
    h.shutdown().expect("shutdown");
}
