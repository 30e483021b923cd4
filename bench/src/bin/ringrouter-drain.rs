//! Offline queue benchmark: fills one user's offline queue with N messages (the
//! store's append rate as a sender sees it), then logs the user in and times the
//! backlog until the last message arrives (the drain rate at login).
//!
//! ```text
//! ringrouter-drain --addr 127.0.0.1:7878 --messages 100000 --size 64 [--json]
//! ```
//! The router must allow N queued messages (`--max-offline-per-user`, default 100000).

use std::time::{Duration, Instant};

use clap::Parser;
use ringrouter_client::{Client, ClientConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "ringrouter-drain", version)]
struct Args {
    /// Router address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// Messages to queue.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Prefix of the two user names (unique per run by default).
    #[arg(long)]
    user_prefix: Option<String>,
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
        eprintln!("ringrouter-drain: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let prefix = a.user_prefix.clone().unwrap_or_else(|| {
        format!(
            "drain{}-{}-",
            std::process::id(),
            Instant::now().elapsed().as_nanos() % 1000
        )
    });
    let (sender, receiver) = (format!("{prefix}tx"), format!("{prefix}rx"));
    // The receiver exists from its first login; then it goes away.
    drop(Client::connect(&a.addr, cfg(&receiver))?);
    let mut tx = Client::connect(&a.addr, cfg(&sender))?;
    let payload = vec![0x5au8; a.size];
    let t0 = Instant::now();
    let mut left = a.messages.saturating_sub(1);
    while left > 0 {
        let n = left.min(4096);
        tx.send_many(&receiver, (0..n).map(|_| &payload[..]))?;
        left -= n;
    }
    // In order per sender: the last one confirmed means every one is stored.
    tx.send_wait(&receiver, &payload)?;
    let fill = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut rx = Client::connect(&a.addr, cfg(&receiver))?;
    let mut got = 0u64;
    while got < a.messages {
        match rx.recv(Some(Duration::from_secs(30)))? {
            Some(_) => got += 1,
            None => return Err(format!("backlog stalled after {got} of {}", a.messages).into()),
        }
    }
    let drain = t1.elapsed().as_secs_f64();
    rx.ack_all()?;
    let (fill_rate, drain_rate) = (a.messages as f64 / fill, a.messages as f64 / drain);
    if a.json {
        println!(
            "{{\"messages\":{},\"size\":{},\"fill_seconds\":{fill:.4},\"fill_msgs_per_sec\":{fill_rate:.0},\"drain_seconds\":{drain:.4},\"drain_msgs_per_sec\":{drain_rate:.0}}}",
            a.messages, a.size
        );
    } else {
        println!(
            "{} x {} B: queued in {fill:.3} s ({fill_rate:.0} msgs/s), drained at login in {drain:.3} s ({drain_rate:.0} msgs/s)",
            a.messages, a.size
        );
    }
    Ok(())
}
