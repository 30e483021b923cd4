//! `ringrouter-load`: drives the load engine of `ringrouter-client` at a router
//! and prints delivered msgs/s, MB/s and latency percentiles (or one JSON object).

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use ringrouter_client::load::{run_with_progress, LoadConfig, LoadError, LoadReport, Protocol};
use ringrouter_client::Transport;

// No mimalloc here: measured on the 2-core machine, the engine with the system
// allocator uses ~15% less CPU per message (mimalloc kept faulting in fresh pages
// for the receive buffers), which leaves more of the shared cores to the server
// under test, and it matches the Python driver, which runs under the system
// allocator too.

/// Load generator for ringrouter.
#[derive(Debug, Parser)]
#[command(name = "ringrouter-load", version)]
struct Args {
    /// Router address (with `--transport ws`: the router's HTTP port, e.g.
    /// 127.0.0.1:7880).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// ringrouter: `tcp` (length-delimited frames on the TCP port) or `ws`
    /// (WebSocket, subprotocol ringrouter.v1, on the HTTP port's /ws).
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    transport: TransportArg,
    /// ringrouter: TLS (with `--transport ws`: wss), verified against
    /// `--ca-file` or the webpki roots, for the host of `--addr`.
    #[arg(long)]
    tls: bool,
    /// With `--tls`: trust the certificates of this PEM file.
    #[arg(long, requires = "tls")]
    ca_file: Option<std::path::PathBuf>,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Payload size in bytes (at least 16: each payload carries its send time and number).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Total messages to send (default 1 000 000, or unlimited with --duration).
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Or: seconds to send for.
    #[arg(long)]
    duration: Option<f64>,
    /// One sender to M receivers (M > 1: through a room the sender creates and
    /// the receivers join, deleted at the end; with redis, through one channel
    /// they all subscribe to; with nats, one subject likewise).
    #[arg(long)]
    fanout: Option<usize>,
    /// Paced total rate, msgs/s.
    #[arg(long)]
    rate: Option<f64>,
    /// In-flight window per pair.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Engine threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Server protocol: ringrouter, or nats or redis (pub/sub) for side-by-side
    /// comparisons.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Ringrouter)]
    protocol: ProtocolArg,
    /// Prefix of the engine's user names (default: per process); fixing it fixes
    /// which shards the senders and receivers live on.
    #[arg(long)]
    user_prefix: Option<String>,
    /// Redis: `off` makes every sender send `CLIENT REPLY OFF` first and never
    /// read a reply (the window then counts deliveries only); `on`: pipelined
    /// PUBLISHes whose replies are read in bulk.
    #[arg(long, value_enum, default_value_t = RedisReply::On)]
    redis_reply: RedisReply,
    /// ringrouter, pairs: the router's shard count; every pair's receiver is
    /// then named so that it lives on another shard than its sender.
    #[arg(long, default_value_t = 0)]
    split_shards: usize,
    /// ringrouter: number the Sends (Send.client_seq), as a resuming client does: the
    /// router acknowledges them with SendAck (what resume costs).
    #[arg(long)]
    client_seq: bool,
    /// The server's process id (on this machine): the report then has its CPU
    /// seconds over the measured span (`server_cpu_s`), logins and joins left out.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RedisReply {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TransportArg {
    Tcp,
    Ws,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Ringrouter,
    Nats,
    Redis,
}

fn main() {
    let a = Args::parse();
    let messages = match (a.messages, a.duration) {
        (None, None) => Some(1_000_000),
        (m, _) => m,
    };
    let duration = match a.duration.map(Duration::try_from_secs_f64) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            eprintln!("ringrouter-load: --duration must be a positive number of seconds");
            std::process::exit(2);
        }
    };
    let mut transport = match a.transport {
        TransportArg::Tcp => Transport::tcp(),
        TransportArg::Ws => Transport::websocket(),
    };
    if a.tls {
        transport = transport.with_tls(a.ca_file);
    }
    let cfg = LoadConfig {
        transport,
        addr: a.addr,
        pairs: a.pairs,
        size: a.size,
        messages,
        duration,
        fanout: a.fanout,
        rate: a.rate,
        window: a.window,
        threads: a.threads,
        protocol: match a.protocol {
            ProtocolArg::Ringrouter => Protocol::Ringrouter,
            ProtocolArg::Nats => Protocol::Nats,
            ProtocolArg::Redis => Protocol::Redis,
        },
        redis_reply_off: a.redis_reply == RedisReply::Off,
        split_shards: a.split_shards,
        client_seq: a.client_seq,
        server_pid: a.server_pid,
        ..LoadConfig::default()
    };
    let cfg = match a.user_prefix {
        Some(p) => LoadConfig {
            user_prefix: p,
            ..cfg
        },
        None => cfg,
    };
    let quiet = a.json;
    let res = run_with_progress(&cfg, Duration::from_secs(1), |p| {
        if !quiet {
            let rate = if p.elapsed > 0.0 {
                p.delivered as f64 / p.elapsed
            } else {
                0.0
            };
            eprint!(
                "\r{:6.1} s  sent {:>12}  delivered {:>12}  {:>12.0} msgs/s",
                p.elapsed, p.sent, p.delivered, rate
            );
            let _ = std::io::stderr().flush();
        }
    });
    let print = |r: &LoadReport| {
        if a.server_pid.is_some() && r.server_cpu_s.is_none() {
            eprintln!("ringrouter-load: cannot read the CPU of --server-pid (no such process on this machine?)");
        }
        // (A reader that went away, `| head`, is not an error of the run.)
        let mut out = std::io::stdout().lock();
        if a.json {
            let _ = writeln!(out, "{}", r.to_json());
        } else {
            eprintln!();
            let _ = writeln!(out, "{}", r.table());
        }
    };
    match res {
        Ok(r) => {
            print(&r);
            if r.lost > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            // A run that failed while measuring still reports what it measured (its
            // `lost`, and the `error`).
            if let LoadError::Failed { report, .. } = &e {
                print(report);
            }
            eprintln!("ringrouter-load: {e}");
            std::process::exit(2);
        }
    }
}
