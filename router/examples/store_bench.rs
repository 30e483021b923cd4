//! Micro benchmark of the embedded store: offline appends per second with many concurrent
//! producers (group commit), in `memory` and `sync` durability, then the offline drain rate
//! (paged loads + removes, as at login).
//!
//! ```text
//! cargo run --release -p ringrouter --example store_bench -- --producers 8 --window 256
//! ```
//!
//! Each producer thread keeps `window` single-message appends in flight (a shard sending
//! for its users) and waits for completions; the storage thread groups whatever is queued
//! into one batch and, in `sync`, one fdatasync.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use ringrouter::store::{Durability, Store, StoreHandle, StoredMsg};

#[derive(Debug, Parser)]
#[command(about = "ringrouter store micro benchmark")]
struct Args {
    /// Durability modes to run: memory, sync or both.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Producer threads.
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Appends in flight per producer.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Messages per mode (total over all producers).
    #[arg(long, default_value_t = 400_000)]
    msgs: u64,
    /// Messages per append request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Users per producer (the queues written).
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Directory for the databases (default: a temporary directory under the system temp
    /// dir, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn append_run(h: &StoreHandle, args: &Args) -> (f64, Vec<u32>) {
    let per_producer = args.msgs / args.producers as u64;
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let start = Instant::now();
    let threads: Vec<_> = (0..args.producers)
        .map(|p| {
            let h = h.clone();
            let payload = payload.clone();
            let (window, batch, users) = (args.window, args.batch.max(1), args.users.max(1));
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::channel::<u32>();
                let mut lat = Vec::with_capacity((per_producer as usize) / batch + 1);
                let mut sent = 0u64;
                let mut inflight = 0usize;
                let mut k = 0usize;
                while sent < per_producer || inflight > 0 {
                    while inflight < window && sent < per_producer {
                        let n = (batch as u64).min(per_producer - sent) as usize;
                        let msgs: Vec<StoredMsg> = (0..n as u64)
                            .map(|i| StoredMsg {
                                from_user: "sender".into(),
                                to_room: String::new(),
                                payload: payload.clone(),
                                server_ts_us: 0,
                                msg_id: ((p as u64) << 40) | (sent + i),
                                room_event: 0,
                                contact_event: 0,
                            })
                            .collect();
                        let tx = tx.clone();
                        let t0 = Instant::now();
                        h.append(&format!("p{p}u{}", k % users), msgs, move |r| {
                            if let Err(e) = r {
                                eprintln!("append failed: {e}");
                            }
                            let _ = tx.send(t0.elapsed().as_micros() as u32);
                        })
                        .expect("store closed");
                        k += 1;
                        sent += n as u64;
                        inflight += 1;
                    }
                    match rx.recv_timeout(Duration::from_secs(60)) {
                        Ok(us) => {
                            lat.push(us);
                            inflight -= 1;
                        }
                        Err(_) => panic!("no completion for 60 s"),
                    }
                    while let Ok(us) = rx.try_recv() {
                        lat.push(us);
                        inflight -= 1;
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().expect("producer panicked"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    ((per_producer * args.producers as u64) as f64 / secs, lat)
}

/// Pages through every queue (1000 at a time) and removes each page, as a login drain does.
fn drain_run(h: &StoreHandle, args: &Args) -> (u64, f64) {
    let start = Instant::now();
    let mut total = 0u64;
    for p in 0..args.producers {
        for u in 0..args.users.max(1) {
            let user = format!("p{p}u{u}");
            loop {
                let (tx, rx) = mpsc::channel();
                h.load(&user, 1000, move |r| {
                    let _ = tx.send(r);
                })
                .expect("store closed");
                let page = rx.recv().expect("no answer").expect("load failed");
                let Some(&(last, _)) = page.last() else { break };
                total += page.len() as u64;
                // Fire and forget: the next load is ordered after this remove.
                h.remove_up_to(&user, last, |_| {}).expect("store closed");
            }
        }
    }
    (total, total as f64 / start.elapsed().as_secs_f64())
}

/// Registers 40 accounts at once: the hashing pool's rate with the real Argon2id parameters.
fn register_run(h: &StoreHandle) -> (usize, f64) {
    const N: usize = 40;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..N {
        let tx = tx.clone();
        h.register(
            &format!("bench-user-{i}"),
            "correct horse battery staple",
            move |r| {
                let _ = tx.send(r);
            },
        )
        .expect("store closed");
    }
    drop(tx);
    for r in rx {
        r.expect("register failed");
    }
    (N, N as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    let args = Args::parse();
    let modes: Vec<(&str, Durability)> = match args.mode.as_str() {
        "memory" => vec![("memory", Durability::Memory)],
        "sync" => vec![("sync", Durability::Sync)],
        _ => vec![("memory", Durability::Memory), ("sync", Durability::Sync)],
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "store_bench: {} producers x window {}, {} msgs of {} B, {} msg/append, {} cores (producers and storage thread share them)",
        args.producers, args.window, args.msgs, args.payload, args.batch, cores
    );
    for (name, durability) in modes {
        let tmp;
        let dir = match &args.dir {
            Some(d) => d.join(name),
            None => {
                tmp = tempfile::Builder::new()
                    .prefix("store_bench")
                    .tempdir()
                    .expect("temp dir");
                tmp.path().to_path_buf()
            }
        };
        let h = Store::open(&dir, durability).expect("open store");
        let (rate, lat) = append_run(&h, &args);
        let s = h.stats();
        let rounds = s.rounds.max(1);
        println!(
            "{name:>6}: {rate:>10.0} msgs/s appended | completion latency p50 {} us p99 {} us p99.9 {} us | {} rounds, {:.1} req/round (max {}), {} fsyncs ({:.0} us avg), commit {:.1} us/round",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            s.rounds,
            s.requests as f64 / rounds as f64,
            s.max_round,
            s.fsyncs,
            s.fsync_us as f64 / s.fsyncs.max(1) as f64,
            s.commit_us as f64 / rounds as f64,
        );
        let (n, drain) = drain_run(&h, &args);
        println!("{name:>6}: {drain:>10.0} msgs/s drained (load 1000 + remove_up_to, {n} msgs)");
        let (regs, per_sec) = register_run(&h);
        println!(
            "{name:>6}: {per_sec:>10.1} registrations/s ({regs} accounts, real Argon2id parameters, hashing pool)"
        );
        h.shutdown().expect("shutdown");
    }
}
