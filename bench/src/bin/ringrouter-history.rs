//! History query latency: fills one direct conversation with N messages (both users
//! online), then times History requests of `--limit` messages, one at a time on one
//! connection: from the newest message, paging back (each `before` the previous page's
//! oldest message), and from a random point (`before` a random msg_id of the
//! conversation: the router scans back to find it). Prints p50 / p99 / max in µs for each.
//!
//! ```text
//! ringrouter-history --addr 127.0.0.1:7878 --messages 10000 --limit 50 --queries 2000 [--json]
//! ```
//! The router must keep N messages (`--history-per-conversation`, default 10000).

use std::time::{Duration, Instant};

use clap::Parser;
use ringrouter_bench::percentiles;
use ringrouter_client::{Client, ClientConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "ringrouter-history", version)]
struct Args {
    /// Router address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// Messages in the conversation.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per History request.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Requests timed per case.
    #[arg(long, default_value_t = 2_000)]
    queries: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn cfg(user: &str) -> ClientConfig {
    ringrouter_bench::client_config(user, Duration::from_secs(30), 1024)
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("ringrouter-history: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let prefix = format!("hist{}-", std::process::id());
    let (sender, receiver) = (format!("{prefix}tx"), format!("{prefix}rx"));
    let mut rx = Client::connect(&a.addr, cfg(&receiver))?;
    let mut tx = Client::connect(&a.addr, cfg(&sender))?;
    let payload = vec![0x5au8; a.size];
    let mut left = a.messages.saturating_sub(1);
    while left > 0 {
        let n = left.min(4096);
        tx.send_many(&receiver, (0..n).map(|_| &payload[..]))?;
        left -= n;
        // Keep the receiver's socket drained.
        while rx.recv(Some(Duration::ZERO))?.is_some() {}
    }
    tx.send_wait(&receiver, &payload)?;
    drop(rx);
    // Every msg_id of the conversation (paging back through it).
    let mut ids = Vec::new();
    let mut before = 0;
    loop {
        let page = tx.history_with(&receiver, before, 500)?;
        let Some(first) = page.first() else { break };
        before = first.msg_id;
        ids.extend(page.iter().map(|m| m.msg_id));
    }
    if (ids.len() as u64) < a.messages {
        return Err(format!("history holds {} of {} messages", ids.len(), a.messages).into());
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut time =
        |before: &mut dyn FnMut() -> u64| -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
            let mut v = Vec::with_capacity(a.queries);
            for _ in 0..a.queries {
                let b = before();
                let t = Instant::now();
                let page = tx.history_with(&receiver, b, a.limit)?;
                v.push(t.elapsed());
                if page.is_empty() {
                    return Err("empty page".into());
                }
            }
            Ok(v)
        };
    let newest = percentiles(time(&mut || 0)?);
    // Random points with at least `limit` messages before them.
    let span = ids.len().saturating_sub(a.limit as usize).max(1);
    let random = percentiles(time(&mut || ids[(rand() as usize) % span])?);
    // Paging back: each request's `before` is the previous page's oldest message.
    let mut paging = Vec::with_capacity(a.queries);
    let mut before = 0;
    while paging.len() < a.queries {
        let t = Instant::now();
        let page = tx.history_with(&receiver, before, a.limit)?;
        paging.push(t.elapsed());
        before = page.first().map_or(0, |m| m.msg_id);
    }
    let paging = percentiles(paging);
    if a.json {
        println!(
            "{{\"messages\":{},\"limit\":{},\"queries\":{},\"newest_p50_us\":{:.0},\"newest_p99_us\":{:.0},\"newest_max_us\":{:.0},\"paging_p50_us\":{:.0},\"paging_p99_us\":{:.0},\"paging_max_us\":{:.0},\"random_p50_us\":{:.0},\"random_p99_us\":{:.0},\"random_max_us\":{:.0}}}",
            a.messages, a.limit, a.queries, newest.0, newest.1, newest.2, paging.0, paging.1, paging.2, random.0, random.1, random.2
        );
    } else {
        println!(
            "{} of {} messages, {} queries each: newest p50 {:.0} µs p99 {:.0} µs max {:.0} µs; paging back p50 {:.0} µs p99 {:.0} µs max {:.0} µs; random point p50 {:.0} µs p99 {:.0} µs max {:.0} µs",
            a.limit, a.messages, a.queries, newest.0, newest.1, newest.2, paging.0, paging.1, paging.2, random.0, random.1, random.2
        );
    }
    Ok(())
}
