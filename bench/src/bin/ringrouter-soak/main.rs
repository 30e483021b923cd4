//! Soak driver: mixed well-behaved and hostile traffic against a running router
//! for N minutes, checking every message and sampling the router's RSS and fds.
//!
//! ```text
//! ringrouter-soak --addr 127.0.0.1:PORT --router-pid PID --minutes 3 --out target/soak
//! ```
//! `scripts/soak.sh` builds and starts the router, runs this, stops the router
//! and plots the CSV. See `--help` for the mix and its intensities.
//!
//! Well-behaved traffic (a fixed total rate, `--rate`): DM users exchanging
//! direct messages (a second device now and then; going offline by Logout or
//! by dropping the connection, and coming back), long-lived rooms, slow
//! readers, room visitors and temporary rooms. Every payload names its stream
//! (sending device, target) and its counter; receivers check no loss, per-sender
//! order, dedupe and payload integrity. At the end every sender confirms what it
//! wrote (Ping round trip), every receiver logs in afresh and drains its queue.
//!
//! Hostile traffic: never-readers, garbage, connection churn (see `hostile.rs`).
//!
//! Writes `samples.csv` (time_s, rss_kib, fds, sent, delivered, phase) and
//! `summary.json` into `--out`, prints a summary and the pass criteria it can
//! check (loss, order, integrity, RSS, fds) and exits 1 if one fails.

mod actors;
mod check;
mod hostile;
mod payload;
mod sample;
mod session;
mod shared;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use clap::Parser;
use ringrouter_client::{Client, ClientConfig};
use serde_json::json;

use crate::actors::Outcome;
use crate::check::{CheckStats, Checker, SentMap};
use crate::hostile::NrLife;
use crate::payload::{Kind, Names};
use crate::sample::{proc_sample, Row, Samples};
use crate::shared::Shared;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Soak driver for ringrouter: mixed traffic, loss/order checks, RSS and fd samples.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringrouter-soak", version)]
pub struct Args {
    /// Router address.
    #[arg(long)]
    pub addr: String,
    /// Router process id (RSS and fd samples; without it they are skipped).
    #[arg(long)]
    pub router_pid: Option<u32>,
    /// The router's --data-dir: its store's files are told apart from other fds.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Length of the traffic phase, in minutes.
    #[arg(long, default_value_t = 3.0)]
    pub minutes: f64,
    /// Output directory (samples.csv, summary.json).
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    /// Total rate of messages sent by well-behaved clients (msgs/s).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// DM users (they also are the long-lived rooms' members).
    #[arg(long, default_value_t = 24)]
    pub dm_users: usize,
    /// Long-lived rooms.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Members of each long-lived room.
    #[arg(long, default_value_t = 5)]
    pub room_members: usize,
    /// A DM user goes offline on average once in this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub offline_every: f64,
    /// Longest offline period (seconds; each is 1..=this).
    #[arg(long, default_value_t = 8)]
    pub offline_max: u64,
    /// A DM user opens a second device on average once in this many seconds.
    #[arg(long, default_value_t = 20.0)]
    pub second_device_every: f64,
    /// Slow readers (10% of the rate goes to them).
    #[arg(long, default_value_t = 4)]
    pub slow_readers: usize,
    /// Receive buffer of a slow reader's socket (bytes).
    #[arg(long, default_value_t = 32768)]
    pub slow_rcvbuf: usize,
    /// A slow reader stalls (1-3 s) on average once in this many seconds.
    #[arg(long, default_value_t = 20.0)]
    pub slow_stall_every: f64,
    /// Room visitors (each with a buddy for temporary rooms; 5% of the rate).
    #[arg(long, default_value_t = 3)]
    pub visitors: usize,
    /// Never-reading clients at any time (0: none).
    #[arg(long, default_value_t = 2)]
    pub nonreaders: usize,
    /// Pings per second each never-reader writes (a tenth of it in its sending lives).
    #[arg(long, default_value_t = 2000.0)]
    pub nonreader_pings: f64,
    /// Messages per second a never-reader sends itself, every other life (0: never).
    #[arg(long, default_value_t = 200.0)]
    pub nonreader_sends: f64,
    /// Payload bytes of those messages.
    #[arg(long, default_value_t = 16384)]
    pub nonreader_send_size: usize,
    /// Longest life of a never-reader (seconds) if the router does not close it.
    #[arg(long, default_value_t = 30.0)]
    pub nonreader_life: f64,
    /// Garbage connections per second.
    #[arg(long, default_value_t = 2.0)]
    pub garbage_rate: f64,
    /// Churn connections per second (half log in and drop, half never log in).
    #[arg(long, default_value_t = 10.0)]
    pub churn_rate: f64,
    /// Pings per second of the never-logging-in connections that ping (a quarter of them).
    #[arg(long, default_value_t = 20.0)]
    pub prelogin_pings: f64,
    /// The router's --login-timeout (seconds): never-logging-in connections must
    /// be closed by then (plus 3 s).
    #[arg(long, default_value_t = 10.0)]
    pub login_timeout: f64,
    /// The router's --max-prelogin-frame-bytes (oversize prefixes go past it).
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_prelogin_frame: u64,
    /// The router's --max-frame-bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_frame: u64,
    /// Seconds between RSS / fd samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_secs: f64,
    /// After the driver disconnected, wait at most this long for the fds to come back down.
    #[arg(long, default_value_t = 60.0)]
    pub settle_secs: f64,
    /// RSS at the end may exceed RSS at minute 2 (at half time in runs shorter
    /// than 4 minutes) by this fraction.
    #[arg(long, default_value_t = 0.10)]
    pub rss_tolerance: f64,
    /// Each side of the RSS comparison is the median of this many neighbouring
    /// samples (1: the single samples at minute 2 and at the end).
    #[arg(long, default_value_t = 3)]
    pub rss_window: usize,
    /// Seed of every random choice (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prefix of every user and room name (default: unique per run).
    #[arg(long)]
    pub prefix: Option<String>,
}

impl Args {
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }
}

fn main() {
    let mut args = Args::parse();
    if args.seed.is_none() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        args.seed = Some(t);
    }
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ringrouter-soak: {e}");
            std::process::exit(2);
        }
    }
}

/// Room r's members: a spread over the DM users, rooms overlapping.
fn room_members(n_dm: usize, rooms: usize, members: usize) -> Vec<Vec<u32>> {
    (0..rooms)
        .map(|r| {
            let mut m: Vec<u32> = Vec::new();
            for j in 0..members {
                let u = ((r * 3 + j * 5) % n_dm.max(1)) as u32;
                if !m.contains(&u) {
                    m.push(u);
                }
            }
            m
        })
        .collect()
}

/// Logs every checked user in once (under open auth a user exists from its
/// first login: a message to a user never seen is refused), creates the
/// long-lived rooms (first member owns) and has the others join.
fn setup(addr: SocketAddr, names: &Names, members: &[Vec<u32>]) -> Result<Vec<String>, String> {
    let cfg = |u: u32| {
        let mut c = ClientConfig::new(names.users[u as usize].clone());
        c.timeout = session::CLIENT_TIMEOUT;
        c
    };
    for u in 0..names.users.len() as u32 {
        let c = Client::connect(addr, cfg(u)).map_err(|e| format!("setup login: {e}"))?;
        let _ = c.close();
    }
    let mut codes = Vec::new();
    for (r, m) in members.iter().enumerate() {
        let room = &names.rooms[r];
        let mut owner =
            Client::connect(addr, cfg(m[0])).map_err(|e| format!("setup login: {e}"))?;
        let code = owner
            .create_room(room, None)
            .map_err(|e| format!("creating {room}: {e}"))?;
        let _ = owner.close();
        for (j, &u) in m.iter().enumerate().skip(1) {
            let mut c = Client::connect(addr, cfg(u)).map_err(|e| format!("setup login: {e}"))?;
            let by = if j % 2 == 0 { &code } else { room };
            c.join_room(by, None)
                .map_err(|e| format!("{} joining {room} by {by}: {e}", names.users[u as usize]))?;
            let _ = c.close();
        }
        codes.push(code);
    }
    Ok(codes)
}

fn spawn<T: Send + 'static>(name: String, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawning a driver thread")
}

/// Deliveries missing: every stream sent, against every user that must have got it.
struct Loss {
    expected: u64,
    lost: u64,
    uncertain: u64,
    /// (stream, receiver) pairs.
    streams: usize,
    /// (missing, description).
    lines: Vec<(u64, String)>,
    /// Receivers with something missing.
    receivers: std::collections::BTreeSet<u32>,
}

fn loss(sh: &Shared, final_sent: &SentMap, checkers: &HashMap<u32, Checker>) -> Loss {
    let mut l = Loss {
        expected: 0,
        lost: 0,
        uncertain: 0,
        streams: 0,
        lines: Vec::new(),
        receivers: Default::default(),
    };
    for (k, info) in final_sent {
        let receivers: Vec<u32> = match k.kind {
            Kind::Dm => vec![k.target],
            Kind::Room => sh.room_members[k.target as usize]
                .iter()
                .copied()
                .filter(|&u| u != k.sender)
                .collect(),
            _ => continue,
        };
        for u in receivers {
            l.streams += 1;
            let unc = info.uncertain.len() as u64;
            l.expected += info.max - unc;
            l.uncertain += unc;
            let st = checkers.get(&u).and_then(|c| c.streams.get(k));
            let missing = match st {
                Some(st) => st.missing(info.max, &info.uncertain).0,
                None => info.max - unc,
            };
            if missing > 0 {
                l.lost += missing;
                l.receivers.insert(u);
                let runs = st.map_or_else(
                    || vec![format!("1-{}", info.max)],
                    |st| st.missing_runs(info.max, &info.uncertain, 5),
                );
                l.lines.push((
                    missing,
                    format!(
                        "{} missing {missing} of {} from {} d{} ({:?} target {}): #{}",
                        sh.names.users[u as usize],
                        info.max,
                        sh.names.users[k.sender as usize],
                        k.device,
                        k.kind,
                        k.target,
                        runs.join(", #")
                    ),
                ));
            }
        }
    }
    l
}

fn run(args: Args) -> Result<bool, String> {
    let addr = args
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {}: {e}", args.addr))?
        .next()
        .ok_or("--addr resolves to nothing")?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let samples = Arc::new(
        Samples::create(
            &args.out.join("samples.csv"),
            args.router_pid,
            args.data_dir.as_deref(),
        )
        .map_err(|e| format!("samples.csv: {e}"))?,
    );
    if let Some(pid) = args.router_pid {
        proc_sample(pid, None).ok_or(format!("cannot read /proc/{pid}"))?;
    }
    let t0 = Instant::now();
    let baseline = samples.take_at(0.0, 0, 0, "baseline");

    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("s{:x}-", args.seed() % 0x10_0000));
    let n_dm = args.dm_users.max(2);
    let rooms = if args.room_members >= 2 {
        args.rooms
    } else {
        0
    };
    let names = Names::new(
        &prefix,
        n_dm,
        args.slow_readers,
        args.visitors,
        args.nonreaders,
        rooms,
    );
    let members = room_members(n_dm, rooms, args.room_members);
    let codes = setup(addr, &names, &members)?;
    let barrier = n_dm + args.slow_readers + args.visitors;
    let sh = Arc::new(Shared::new(
        args.clone(),
        addr,
        names,
        members,
        codes,
        barrier,
        t0,
    ));
    let deadline = t0 + Duration::from_secs_f64(args.minutes * 60.0);

    // The sampler.
    let sampler_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (sh, samples, done) = (
            Arc::clone(&sh),
            Arc::clone(&samples),
            Arc::clone(&sampler_done),
        );
        spawn("sampler".into(), move || {
            let every = Duration::from_secs_f64(sh.args.sample_secs.max(0.5));
            let mut k = 1u32;
            loop {
                let at = sh.t0 + every * k;
                while Instant::now() < at && !done.load(Relaxed) {
                    sleep(Duration::from_millis(50));
                }
                if done.load(Relaxed) {
                    break;
                }
                k += 1;
                if !sh.stopping() {
                    // The sample at the deadline is the main thread's "load-end".
                    if at + Duration::from_millis(500) < deadline {
                        samples.take(&sh, "load");
                    }
                } else {
                    samples.take(&sh, "drain");
                }
            }
        })
    };

    let mut actors: Vec<JoinHandle<Outcome>> = Vec::new();
    for u in 0..n_dm as u32 {
        let sh = Arc::clone(&sh);
        actors.push(spawn(format!("dm{u}"), move || actors::dm_user(sh, u)));
    }
    for i in 0..args.slow_readers {
        let sh = Arc::clone(&sh);
        let me = (sh.names.slow0 + i) as u32;
        actors.push(spawn(format!("slow{i}"), move || {
            actors::slow_reader(sh, me)
        }));
    }
    for v in 0..args.visitors as u32 {
        let sh = Arc::clone(&sh);
        actors.push(spawn(format!("visitor{v}"), move || actors::visitor(sh, v)));
    }
    let mut nonreaders = Vec::new();
    for s in 0..args.nonreaders as u32 {
        let sh = Arc::clone(&sh);
        nonreaders.push(spawn(format!("nonreader{s}"), move || {
            hostile::nonreader(sh, s)
        }));
    }
    let hostile = {
        let sh = Arc::clone(&sh);
        spawn("hostile".into(), move || hostile::hostile(sh))
    };
    eprintln!(
        "ringrouter-soak: {} users, {} rooms, {:.0} msgs/s for {:.1} min against {addr} (seed {}, prefix {prefix})",
        sh.names.users.len(),
        sh.names.rooms.len(),
        args.rate,
        args.minutes,
        args.seed()
    );

    // The traffic phase, with a progress line per sample interval.
    let mut next_report = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        sleep(Duration::from_millis(200));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            let p = args.router_pid.and_then(|pid| proc_sample(pid, None));
            eprintln!(
                "  t={:>4.0}s sent {} delivered {} router rss {} fds {} anomalies {:?}",
                sh.secs(),
                sh.sent.load(Relaxed),
                sh.delivered.load(Relaxed),
                p.map_or("-".into(), |p| format!("{} KiB", p.rss_kib)),
                p.map_or("-".into(), |p| p.fds.to_string()),
                sh.notes.counts()
            );
        }
    }
    let load_secs = sh.secs();
    let sent_at_end = sh.sent.load(Relaxed);
    let delivered_at_end = sh.delivered.load(Relaxed);
    let load_end = samples.take(&sh, "load-end");
    sh.stop.store(true, Relaxed);
    eprintln!("ringrouter-soak: traffic stopped at t={load_secs:.0}s; confirming, draining, disconnecting");

    let _ = hostile.join();
    let mut lives: Vec<NrLife> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for h in nonreaders {
        match h.join() {
            Ok(r) => {
                lives.extend(r.lives);
                outcomes.push(r.out);
            }
            Err(_) => sh
                .notes
                .note("driver", "a never-reader thread panicked".into()),
        }
    }
    for h in actors {
        match h.join() {
            Ok(o) => outcomes.push(o),
            Err(_) => sh.notes.note("driver", "an actor thread panicked".into()),
        }
    }
    let drained_secs = sh.secs();

    // Wait for the router to close everything (its store may hold more files
    // than at the start: those are not connections).
    let settle_start = Instant::now();
    let mut settled = None;
    let dir = args
        .data_dir
        .as_deref()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_owned()));
    if let (Some(pid), Some(base)) = (args.router_pid, baseline.as_ref()) {
        loop {
            let now = proc_sample(pid, dir.as_deref());
            let done = now.is_some_and(|p| p.fds - p.store_fds <= base.fds - base.store_fds);
            if done || settle_start.elapsed().as_secs_f64() >= args.settle_secs || now.is_none() {
                break;
            }
            sleep(Duration::from_millis(500));
        }
        settled = samples.take(&sh, "settled");
    }
    sampler_done.store(true, Relaxed);
    let _ = sampler.join();

    // Loss: every stream sent, against every user that must have got it.
    let mut checkers: HashMap<u32, Checker> = HashMap::new();
    let mut stats = CheckStats::default();
    let mut window_loss = 0u64;
    let mut details: Vec<String> = Vec::new();
    for o in outcomes {
        stats += o.extra;
        window_loss += o.window_loss;
        details.extend(o.details);
        if let Some(c) = o.checker {
            stats += c.st;
            details.extend(c.details.iter().cloned());
            checkers.insert(c.me, c);
        }
    }
    let final_sent = sh
        .final_sent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let first = loss(&sh, &final_sent, &checkers);
    // What is missing may still be queued for a later login (a session that
    // ended just as the final drain logged in): look once more, to tell late
    // from lost.
    let mut late = 0;
    let report = if first.lost > 0 {
        sleep(Duration::from_secs(2));
        for u in &first.receivers {
            if let Some(c) = checkers.get_mut(u) {
                actors::recheck(&sh, *u, c);
            }
        }
        let again = loss(&sh, &final_sent, &checkers);
        late = first.lost - again.lost.min(first.lost);
        again
    } else {
        first
    };
    let Loss {
        expected,
        lost,
        uncertain,
        streams,
        mut lines,
        ..
    } = report;
    if late > 0 {
        sh.notes.note(
            "late-delivery",
            format!("{late} messages missing at the final drain arrived at a later login"),
        );
    }
    let mut loss_lines = std::mem::take(&mut lines);
    loss_lines.sort_by_key(|l| std::cmp::Reverse(l.0));
    let total_loss = lost + window_loss;
    let integrity = stats.corrupt + stats.misrouted + stats.msgid_changed + stats.msgid_collision;

    // RSS: the end of the traffic phase against minute 2 (or half time).
    let rows = samples.rows();
    let load_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.phase == "load" || r.phase == "load-end")
        .collect();
    let (ref_t, ref_label) = if args.minutes >= 4.0 {
        (120.0, "minute 2".to_string())
    } else {
        let t = args.minutes * 30.0;
        (
            t,
            format!("half time (t={t:.0}s; the run is shorter than 4 minutes)"),
        )
    };
    let ref_i = (0..load_rows.len()).min_by(|&a, &b| {
        (load_rows[a].time_s - ref_t)
            .abs()
            .total_cmp(&(load_rows[b].time_s - ref_t).abs())
    });
    let ref_row = ref_i.map(|i| load_rows[i]);
    // A transient allocation caught by one sample is not growth: each side of
    // the comparison is the median of `--rss-window` neighbouring samples.
    let w = args.rss_window.max(1);
    let median = |rows: &[&Row]| -> Option<u64> {
        let mut v: Vec<u64> = rows.iter().map(|r| r.rss_kib).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let ref_rss = ref_i.and_then(|i| {
        let lo = i
            .saturating_sub(w / 2)
            .min(load_rows.len().saturating_sub(w));
        median(&load_rows[lo..(lo + w).min(load_rows.len())])
    });
    let end_rss = median(&load_rows[load_rows.len().saturating_sub(w)..]);
    let rss_min = load_rows.iter().map(|r| r.rss_kib).min();
    let rss_max = rows.iter().map(|r| r.rss_kib).max();
    let fds_max = rows.iter().map(|r| r.fds).max();

    let mut checks: Vec<(String, bool, String)> = Vec::new();
    checks.push((
        "no loss".into(),
        total_loss == 0,
        format!(
            "{lost} of {expected} expected deliveries missing over {streams} (stream, receiver) pairs ({late} more arrived only at a later login); {window_loss} missing in visit windows, temporary rooms and never-readers' requeued messages; {uncertain} uncertain (written just before an unexpected close) not counted"
        ),
    ));
    checks.push((
        "no reordering".into(),
        stats.reorders == 0,
        format!(
            "{} new messages came after a later one of their stream in the same session",
            stats.reorders
        ),
    ));
    checks.push((
        "integrity".into(),
        integrity == 0,
        format!(
            "{} corrupt payloads, {} misrouted, {} redelivered with another msg_id, {} msg_id collisions",
            stats.corrupt, stats.misrouted, stats.msgid_changed, stats.msgid_collision
        ),
    ));
    let mut rss_growth = None;
    match (ref_row, load_end.as_ref(), ref_rss, end_rss) {
        (Some(r), Some(e), Some(ref_rss), Some(end_rss)) => {
            let growth = end_rss as f64 / ref_rss.max(1) as f64 - 1.0;
            rss_growth = Some(growth);
            let shrink_note = if growth < -args.rss_tolerance {
                " (it shrank: not a failure)"
            } else {
                ""
            };
            let how = if w == 1 {
                "single samples".to_string()
            } else {
                format!(
                    "medians of {w} samples; single samples {} KiB at t={:.0}s vs {} KiB at t={:.0}s",
                    e.rss_kib, e.time_s, r.rss_kib, r.time_s
                )
            };
            checks.push((
                "RSS stable".into(),
                growth <= args.rss_tolerance,
                format!(
                    "{end_rss} KiB at the end vs {ref_rss} KiB at {ref_label}: {:+.1}%, limit +{:.0}%{shrink_note} ({how})",
                    growth * 100.0,
                    args.rss_tolerance * 100.0
                ),
            ));
        }
        _ => checks.push((
            "RSS stable".into(),
            args.router_pid.is_none(),
            "no RSS samples (no --router-pid, or the router is gone)".into(),
        )),
    }
    match (baseline.as_ref(), settled.as_ref()) {
        (Some(b), Some(s)) => checks.push((
            "fds back to baseline".into(),
            s.fds - s.store_fds <= b.fds - b.store_fds,
            format!(
                "{} fds ({} sockets, {} store files) before the driver connected, {} at the peak, {} ({} sockets, {} store files) {:.1} s after the driver disconnected{}",
                b.fds,
                b.sockets,
                b.store_fds,
                fds_max.unwrap_or(0),
                s.fds,
                s.sockets,
                s.store_fds,
                settle_start.elapsed().as_secs_f64(),
                if args.data_dir.is_some() {
                    "; store files (under --data-dir) are not counted"
                } else {
                    ""
                }
            ),
        )),
        _ => checks.push((
            "fds back to baseline".into(),
            args.router_pid.is_none(),
            "no fd samples (no --router-pid, or the router is gone)".into(),
        )),
    }
    let passed = checks.iter().all(|c| c.1);

    // Worth a look, but not pass criteria.
    let notes_now = sh.notes.counts();
    let note = |k: &str| notes_now.get(k).copied().unwrap_or(0);
    let mut warnings: Vec<String> = Vec::new();
    if note("good-session-closed") > 0 {
        warnings.push(format!(
            "{} well-behaved sessions were closed by the router or failed (see the anomalies)",
            note("good-session-closed")
        ));
    }
    if note("hostile-not-closed") > 0 {
        warnings.push(format!(
            "{} misbehaving connections were not closed by the router within their bound",
            note("hostile-not-closed")
        ));
    }
    if late > 0 {
        warnings.push(format!(
            "{late} messages arrived only at a login after the one that should have brought them"
        ));
    }
    let outlived = sh.ev.nonreader_outlived.load(Relaxed);
    if outlived > 0 {
        warnings.push(format!(
            "{outlived} never-readers were neither paused nor closed within their {:.0} s life (at {:.0} pings/s the router may rightly hold their Pongs; raise --nonreader-pings to go past its bounds)",
            args.nonreader_life, args.nonreader_pings
        ));
    }

    // The summary.
    let ev: Vec<(&str, u64)> = sh.ev.snapshot();
    let evm: HashMap<&str, u64> = ev.iter().copied().collect();
    let e = |k: &str| evm.get(k).copied().unwrap_or(0);
    let mib = |k: u64| k as f64 / 1024.0;
    let nr_closed: Vec<f64> = lives.iter().filter_map(|l| l.closed_after).collect();
    let nr_paused: Vec<f64> = lives.iter().filter_map(|l| l.paused_after).collect();
    let range = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.1}-{hi:.1} s")
        }
    };
    let sent_total = sh.sent.load(Relaxed);
    let delivered_total = sh.delivered.load(Relaxed);
    let para = format!(
        "Soak of {:.1} min (traffic {:.0} s, then {:.0} s to confirm, drain and disconnect) against {addr}, seed {}: \
         well-behaved clients sent {sent_total} messages ({:.0} msgs/s in the traffic phase, target {:.0}) and received \
         {delivered_total} deliveries ({:.0}/s; {} unique, {} duplicates: second devices' copies and redeliveries after reconnects); {} of {expected} expected \
         deliveries lost, {} reordered. Router RSS {} MiB at start, min {} / max {} MiB during the run, {} MiB at the end \
         of traffic ({}), {} MiB after settling; fds {} at baseline, {} at the peak, {} at the end. Sessions: {} logins, \
         {} offline periods, {} second devices, {} logouts, {} drops without logout, {} unexpected closes of well-behaved \
         sessions; {} room visits, {} temporary rooms, {} slow-reader stalls. Never-readers: {} sessions, {} closed by \
         the router (after {}), {} paused (after {}), {} outlived their {:.0} s life; {} of {} self-sent messages came \
         back at the next login. Garbage: {} connections, {} closed in time ({} still within their bound at the end), {} Error frames. Churn: {} login+drop, {} \
         never logged in ({} of them pinging), {} of which closed by the router while held.",
        args.minutes,
        load_secs,
        drained_secs - load_secs,
        args.seed(),
        sent_at_end as f64 / load_secs,
        args.rate,
        delivered_at_end as f64 / load_secs,
        stats.unique,
        stats.dups,
        total_loss,
        stats.reorders,
        baseline.as_ref().map_or("-".into(), |r| format!("{:.1}", mib(r.rss_kib))),
        rss_min.map_or("-".into(), |v| format!("{:.1}", mib(v))),
        rss_max.map_or("-".into(), |v| format!("{:.1}", mib(v))),
        load_end.as_ref().map_or("-".into(), |r| format!(
            "{:.1} (anonymous {:.1}, file-backed {:.1})",
            mib(r.rss_kib),
            mib(r.rss_anon_kib),
            mib(r.rss_file_kib)
        )),
        rss_growth.map_or("-".into(), |g| format!("{:+.1}% in the RSS check", g * 100.0)),
        settled.as_ref().map_or("-".into(), |r| format!("{:.1}", mib(r.rss_kib))),
        baseline.as_ref().map_or("-".into(), |r| r.fds.to_string()),
        fds_max.map_or("-".into(), |v| v.to_string()),
        settled.as_ref().map_or("-".into(), |r| r.fds.to_string()),
        e("logins"),
        e("offline_periods"),
        e("second_devices"),
        e("logouts"),
        e("drops"),
        e("unexpected_closes"),
        e("room_visits"),
        e("temp_rooms"),
        e("slow_stalls"),
        e("nonreader_sessions"),
        e("nonreader_closed_by_router"),
        range(&nr_closed),
        e("nonreader_paused"),
        range(&nr_paused),
        e("nonreader_outlived"),
        args.nonreader_life,
        e("nonreader_self_recovered"),
        e("nonreader_self_sent"),
        e("garbage_conns"),
        e("garbage_closed_in_time"),
        e("garbage_open_at_end"),
        e("garbage_error_frames"),
        e("churn_login_drops"),
        e("churn_prelogin"),
        e("churn_prelogin_pingers"),
        e("churn_prelogin_closed_by_router"),
    );
    println!("\n{para}\n");
    let notes = sh.notes.counts();
    if !notes.is_empty() {
        println!("Anomalies by category: {notes:?}");
        for n in sh.notes.list().iter().take(30) {
            println!("  {n}");
        }
    }
    if !loss_lines.is_empty() || !details.is_empty() {
        println!("Delivery problems (first ones):");
        for (_, l) in loss_lines.iter().take(15) {
            println!("  {l}");
        }
        for d in details.iter().take(20) {
            println!("  {d}");
        }
    }
    if !lives.is_empty() {
        println!("Never-reader lives (slot/life mode: written, paused after, closed after):");
        for l in lives.iter().take(12) {
            println!(
                "  {}/{} {}: {:.1} MiB, {} pings, {} self-sends; paused {}, closed {}",
                l.slot,
                l.life,
                if l.sends { "sends" } else { "pings" },
                l.bytes_written as f64 / (1 << 20) as f64,
                l.pings,
                l.self_sent,
                l.paused_after
                    .map_or("never".into(), |t| format!("after {t:.1} s")),
                l.closed_after
                    .map_or("never (outlived)".into(), |t| format!("after {t:.1} s")),
            );
        }
        if lives.len() > 12 {
            println!("  ... {} lives in all", lives.len());
        }
    }
    println!("Driver checks:");
    for (name, ok, what) in &checks {
        println!("  {} {name}: {what}", if *ok { "PASS" } else { "FAIL" });
    }
    for w in &warnings {
        println!("  WARN {w}");
    }

    let summary = json!({
        "minutes": args.minutes,
        "seed": args.seed(),
        "addr": addr.to_string(),
        "rate_target": args.rate,
        "traffic_seconds": load_secs,
        "drain_seconds": drained_secs - load_secs,
        "sent": sent_total,
        "sent_rate": sent_at_end as f64 / load_secs,
        "delivered": delivered_total,
        "delivered_rate": delivered_at_end as f64 / load_secs,
        "unique": stats.unique,
        "redeliveries": stats.dups,
        "expected": expected,
        "lost": lost,
        "late": late,
        "window_loss": window_loss,
        "uncertain": uncertain,
        "reorders": stats.reorders,
        "late_across_devices": stats.late_across_devices,
        "corrupt": stats.corrupt,
        "misrouted": stats.misrouted,
        "msgid_changed": stats.msgid_changed,
        "msgid_collision": stats.msgid_collision,
        "rss_kib": {
            "baseline": baseline.as_ref().map(|r| r.rss_kib),
            "reference": ref_rss,
            "reference_sample": ref_row.map(|r| r.rss_kib),
            "reference_time_s": ref_row.map(|r| r.time_s),
            "min": rss_min,
            "max": rss_max,
            "end": end_rss,
            "end_sample": load_end.as_ref().map(|r| r.rss_kib),
            "end_anon": load_end.as_ref().map(|r| r.rss_anon_kib),
            "end_file": load_end.as_ref().map(|r| r.rss_file_kib),
            "settled": settled.as_ref().map(|r| r.rss_kib),
            "growth": rss_growth,
        },
        "fds": {
            "baseline": baseline.as_ref().map(|r| r.fds),
            "max": fds_max,
            "settled": settled.as_ref().map(|r| r.fds),
            "baseline_sockets": baseline.as_ref().map(|r| r.sockets),
            "settled_sockets": settled.as_ref().map(|r| r.sockets),
            "baseline_store_files": baseline.as_ref().map(|r| r.store_fds),
            "settled_store_files": settled.as_ref().map(|r| r.store_fds),
        },
        "events": ev.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "anomalies": notes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "checks": checks.iter().map(|(n, ok, what)| json!({"name": n, "pass": ok, "detail": what})).collect::<Vec<_>>(),
        "warnings": warnings,
        "pass": passed,
        "summary": para,
    });
    let path = args.out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(passed)
}
