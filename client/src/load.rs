//! The load engine: P sender/receiver pairs (1:1), or one sender fanning out to
//! M receivers, driven thread-per-core on monoio with a bounded in-flight window
//! per pair so nothing is dropped. Used by `ringrouter-load`, the criterion
//! end-to-end benchmarks and `python -m ringrouter.load`.
//!
//! Fan-out (M > 1) against ringrouter goes through a real room: before the run
//! the sender's user creates a room named after the user prefix (so concurrent
//! runs do not collide), each receiver joins it by its join code right after
//! logging in, and the sender sends each message once, to the room. The room is
//! deleted when the run ends. Against NATS, fan-out is M direct subjects.
//! Against Redis (pub/sub, RESP2), 1:1 pairs use one channel per receiver and
//! fan-out uses one channel per sender that all its receivers subscribe to (the
//! equivalent of a room): the sender publishes each message once.
//!
//! Every ringrouter connection acks what it received, cumulatively (every 1024
//! messages or 100 ms, and at the end), since the router keeps every unacked
//! delivery and closes a session that never acks as a slow consumer.

use std::time::Duration;

mod resp;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Router address, `host:port`.
    pub addr: String,
    /// Sender/receiver pairs (ignored with `fanout`).
    pub pairs: usize,
    /// Payload size in bytes (at least 16 carries a timestamp for latency).
    pub size: usize,
    /// Messages to send in total (over all pairs; with fanout, sent by the one sender).
    pub messages: Option<u64>,
    /// Or: send for this long.
    pub duration: Option<Duration>,
    /// One sender to this many receivers instead of pairs (more than one:
    /// through a room against ringrouter, one channel against Redis).
    pub fanout: Option<usize>,
    /// Paced total send rate in msgs/s (None: as fast as the window allows).
    pub rate: Option<f64>,
    /// Most messages in flight per pair (sent, not yet delivered).
    pub window: usize,
    /// Engine threads (0: one per core).
    pub threads: usize,
    /// Give up waiting for stragglers after this long once sending stopped.
    pub drain_timeout: Duration,
    /// Prefix of the user names the engine logs in as.
    pub user_prefix: String,
    /// Wire protocol of the server under test.
    pub protocol: Protocol,
}

/// The server the engine drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// ringrouter: Login, Send{to_user} (or to_room for fan-out), Deliver.
    #[default]
    Ringrouter,
    /// NATS core protocol (for comparisons): one subject per receiver, PUB/SUB over plain TCP.
    Nats,
    /// Redis pub/sub (for comparisons), RESP2 over plain TCP: PUBLISH/SUBSCRIBE,
    /// one channel per receiver, or per sender with fan-out (like a room).
    Redis,
}

/// What a run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Deliveries expected (messages x recipients).
    pub sent: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// `sent - delivered`.
    pub lost: u64,
    /// Deliveries out of order or duplicated.
    pub out_of_order: u64,
    /// Wall time from first send to last delivery.
    pub seconds: f64,
    /// Delivered messages per second.
    pub msgs_per_sec: f64,
    /// Delivered payload MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// One-way latency percentiles, µs.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Max latency.
    pub max_us: f64,
    /// Receivers.
    pub receivers: usize,
    /// Slowest receiver, msgs/s.
    pub receiver_min_msgs_per_sec: f64,
    /// Mean over receivers, msgs/s.
    pub receiver_avg_msgs_per_sec: f64,
    /// Fastest receiver, msgs/s.
    pub receiver_max_msgs_per_sec: f64,
    /// CPU seconds the engine's process used (user + system) during the run.
    pub engine_cpu_seconds: f64,
    /// (seconds since start, deliveries so far), sampled every 100 ms.
    pub timeline: Vec<(f64, u64)>,
    /// (latency µs upper bound, count) buckets of the latency histogram.
    pub latency_buckets: Vec<(f64, u64)>,
}

use std::cell::Cell;
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::Poll;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use ringrouter_proto::codec::{decode_server, encode_frame, peek_varint};
use ringrouter_proto::fast::{parse_server, ServerView};
use ringrouter_proto::send::{put_send_header, SendHeader, Target};
use ringrouter_proto::v1::{
    client_frame, server_frame, Ack, ClientFrame, JoinRoom, Login, Logout, Pong,
};

use crate::{Client, ClientConfig, ClientError, Status};

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: "127.0.0.1:7878".into(),
            pairs: 16,
            size: 64,
            messages: Some(1_000_000),
            duration: None,
            fanout: None,
            rate: None,
            window: 1000,
            threads: 0,
            drain_timeout: Duration::from_secs(10),
            user_prefix: format!("load{}-", std::process::id()),
            protocol: Protocol::Ringrouter,
        }
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad configuration.
    #[error("invalid load config: {0}")]
    Config(String),
    /// Could not connect or log in.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Router address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// An engine thread failed.
    #[error("load engine failed: {0}")]
    Engine(String),
}

/// A progress sample, passed to the callback of [`run_with_progress`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Seconds since sending began.
    pub elapsed: f64,
    /// Deliveries expected so far (messages sent x recipients).
    pub sent: u64,
    /// Deliveries so far.
    pub delivered: u64,
}

/// Smallest payload that carries a send timestamp and a sequence number.
const STAMP: usize = 16;
/// Ack after this many unacked deliveries...
const ACK_EVERY: u64 = 1024;
/// ... or once the oldest unacked one is this old (checked after each read).
const ACK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a sender waits, after its end marker, for its own copy of room
/// messages (the router delivers them to the sender's session too) so that it
/// can ack them before it logs out.
const ECHO_GRACE: Duration = Duration::from_secs(2);
/// Frames written per write call, at most.
const MAX_BATCH: usize = 512;

/// Counters shared between a sender and its receivers (possibly other threads).
struct Flow {
    /// Messages sent (per recipient).
    sent: AtomicU64,
    /// Deliveries, summed over the flow's receivers.
    delivered: AtomicU64,
    /// Recipients per message.
    fan: u64,
    sender_done: AtomicBool,
    sender: AtomicWaker,
    /// Receivers that finished (end marker seen, or gave up).
    receivers_done: AtomicU64,
}

struct Shared {
    cfg: LoadConfig,
    addr: SocketAddr,
    epoch: Instant,
    start: Mutex<Option<Instant>>,
    delivered: AtomicU64,
    sent: AtomicU64,
    failed: Mutex<Option<String>>,
    senders_left: AtomicU64,
    /// Receiver sockets, cut by the watchdog when deliveries stop coming.
    receiver_fds: Mutex<Vec<i32>>,
}

/// What one receiver measured.
struct RecvResult {
    delivered: u64,
    out_of_order: u64,
    last: Option<Instant>,
}

/// Runs the load described by `cfg` and reports what it measured.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport, LoadError> {
    run_with_progress(cfg, Duration::from_secs(3600), |_| {})
}

/// Like [`run`], calling `progress` every `every` while it runs.
pub fn run_with_progress(
    cfg: &LoadConfig,
    every: Duration,
    mut progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    if cfg.messages.is_none() && cfg.duration.is_none() {
        return Err(LoadError::Config("give messages or duration".into()));
    }
    if cfg.size == 0 {
        return Err(LoadError::Config(
            "size must be at least 1 byte (an empty payload is the end marker)".into(),
        ));
    }
    if cfg.window == 0 {
        return Err(LoadError::Config("window must be at least 1".into()));
    }
    let (senders, fan) = match cfg.fanout {
        Some(0) => return Err(LoadError::Config("fanout must be at least 1".into())),
        Some(m) => (1usize, m),
        None if cfg.pairs == 0 => return Err(LoadError::Config("pairs must be at least 1".into())),
        None => (cfg.pairs, 1usize),
    };
    if let Some(r) = cfg.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(LoadError::Config("rate must be a positive number".into()));
        }
    }
    let addr = cfg
        .addr
        .to_socket_addrs()
        .map_err(|e| LoadError::Connect {
            addr: cfg.addr.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| LoadError::Connect {
            addr: cfg.addr.clone(),
            reason: "no address".into(),
        })?;
    let threads = if cfg.threads > 0 {
        cfg.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let threads = threads.min(senders * fan).max(1);

    // Flows and their quotas (messages per sender).
    let flows: Vec<Arc<Flow>> = (0..senders)
        .map(|_| {
            Arc::new(Flow {
                sent: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                fan: fan as u64,
                sender_done: AtomicBool::new(false),
                sender: AtomicWaker::new(),
                receivers_done: AtomicU64::new(0),
            })
        })
        .collect();
    let quota = |i: usize| -> Option<u64> {
        cfg.messages
            .map(|m| m / senders as u64 + u64::from((i as u64) < m % senders as u64))
    };

    // Fan-out through rooms: create them now (deleted when `rooms` is dropped,
    // however the run ends).
    let use_rooms = fan > 1 && cfg.protocol == Protocol::Ringrouter;
    // Fan-out through one Redis channel per sender (the equivalent of a room).
    let shared_channel = fan > 1 && cfg.protocol == Protocol::Redis;
    let mut rooms = Rooms {
        addr,
        timeout: cfg.drain_timeout,
        created: Vec::new(),
    };
    let mut join_codes = Vec::new();
    if use_rooms {
        for i in 0..senders {
            let owner = sender_name(&cfg.user_prefix, i);
            let room = room_name(&cfg.user_prefix, i);
            let code = rooms
                .create(&owner, &room)
                .map_err(|reason| LoadError::Connect {
                    addr: cfg.addr.clone(),
                    reason,
                })?;
            join_codes.push(code);
        }
    }

    // Assign work: senders round-robin, receivers round-robin (pairs: with their sender).
    struct SenderJob {
        flow: Arc<Flow>,
        user: String,
        to: Vec<Dest>,
        quota: Option<u64>,
    }
    struct RecvJob {
        flow: Arc<Flow>,
        user: String,
        /// Join this room (by its join code) after logging in.
        join: Option<String>,
        /// NATS subject or Redis channel to subscribe to.
        channel: String,
    }
    let mut sender_jobs: Vec<Vec<SenderJob>> = (0..threads).map(|_| Vec::new()).collect();
    let mut recv_jobs: Vec<Vec<RecvJob>> = (0..threads).map(|_| Vec::new()).collect();
    let p = &cfg.user_prefix;
    for (i, flow) in flows.iter().enumerate() {
        let receivers: Vec<String> = (0..fan).map(|j| format!("{p}r{i}-{j}")).collect();
        let join = join_codes.get(i).cloned();
        for (j, user) in receivers.iter().enumerate() {
            let t = if fan == 1 { i % threads } else { j % threads };
            recv_jobs[t].push(RecvJob {
                flow: flow.clone(),
                user: user.clone(),
                join: join.clone(),
                channel: if shared_channel {
                    room_name(p, i)
                } else {
                    user.clone()
                },
            });
        }
        let to = if use_rooms || shared_channel {
            vec![Dest::Room(room_name(p, i))]
        } else {
            receivers.into_iter().map(Dest::User).collect()
        };
        sender_jobs[i % threads].push(SenderJob {
            flow: flow.clone(),
            user: sender_name(p, i),
            to,
            quota: quota(i),
        });
    }

    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        addr,
        epoch: Instant::now(),
        start: Mutex::new(None),
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        failed: Mutex::new(None),
        senders_left: AtomicU64::new(senders as u64),
        receiver_fds: Mutex::new(Vec::new()),
    });
    let barrier = Arc::new(Barrier::new(threads + 1));
    let cpu0 = cpu_seconds();
    let mut handles = Vec::new();
    for (t, (sj, rj)) in sender_jobs.into_iter().zip(recv_jobs).enumerate() {
        let shared = shared.clone();
        let barrier = barrier.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(
                move || -> Result<(Vec<RecvResult>, Histogram<u64>), String> {
                    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .enable_timer()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async move {
                        // Connect and log in everyone first: receivers, then senders.
                        let mut receivers = Vec::new();
                        let mut err = None;
                        for j in &rj {
                            let join = j.join.as_deref();
                            let sub = Some(j.channel.as_str());
                            match connect(shared.cfg.protocol, shared.addr, &j.user, sub, join)
                                .await
                            {
                                Ok(s) => receivers.push(s),
                                Err(e) => {
                                    err = Some(e);
                                    break;
                                }
                            }
                        }
                        let mut senders = Vec::new();
                        if err.is_none() {
                            for j in &sj {
                                match connect(shared.cfg.protocol, shared.addr, &j.user, None, None)
                                    .await
                                {
                                    Ok(s) => senders.push(s),
                                    Err(e) => {
                                        err = Some(e);
                                        break;
                                    }
                                }
                            }
                        }
                        if let Some(e) = &err {
                            shared.failed.lock().map(|mut f| *f = Some(e.clone())).ok();
                        }
                        barrier.wait();
                        // second barrier: the caller checked for failures and set the start
                        barrier.wait();
                        if err.is_some()
                            || shared.failed.lock().map(|f| f.is_some()).unwrap_or(true)
                        {
                            return Err(
                                err.unwrap_or_else(|| "another engine thread failed".into())
                            );
                        }
                        let hist = Rc::new(std::cell::RefCell::new(new_hist()));
                        let mut tasks = Vec::new();
                        if let Ok(mut fds) = shared.receiver_fds.lock() {
                            fds.extend(
                                receivers
                                    .iter()
                                    .map(|c| std::os::fd::AsRawFd::as_raw_fd(&c.stream)),
                            );
                        }
                        for (job, stream) in rj.into_iter().zip(receivers) {
                            tasks.push(monoio::spawn(receiver(
                                shared.clone(),
                                job.flow,
                                stream,
                                hist.clone(),
                            )));
                        }
                        let mut send_tasks = Vec::new();
                        for (job, stream) in sj.into_iter().zip(senders) {
                            send_tasks.push(monoio::spawn(sender(
                                shared.clone(),
                                job.flow,
                                stream,
                                job.to,
                                job.quota,
                            )));
                        }
                        for s in send_tasks {
                            s.await;
                        }
                        let mut results = Vec::new();
                        for t in tasks {
                            results.push(t.await);
                        }
                        let h = hist.borrow().clone();
                        Ok((results, h))
                    })
                },
            )
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        handles.push(h);
    }
    barrier.wait();
    if let Some(e) = shared.failed.lock().ok().and_then(|f| f.clone()) {
        barrier.wait();
        for h in handles {
            let _ = h.join();
        }
        return Err(LoadError::Connect {
            addr: cfg.addr.clone(),
            reason: e,
        });
    }
    let start = Instant::now();
    if let Ok(mut s) = shared.start.lock() {
        *s = Some(start);
    }
    barrier.wait();

    // Sample progress until the engine threads finish.
    let mut timeline = Vec::new();
    let mut next_progress = start + every;
    let sample = Duration::from_millis(100);
    let mut next_sample = start + sample;
    let mut last_progress = (0u64, Instant::now());
    let mut cut = false;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        // Watchdog: once every sender is done, receivers that stop getting
        // anything for drain_timeout are cut loose (what they miss is lost).
        let d = shared.delivered.load(Ordering::Relaxed);
        if d != last_progress.0 {
            last_progress = (d, now);
        } else if !cut
            && shared.senders_left.load(Ordering::Acquire) == 0
            && now.duration_since(last_progress.1) >= cfg.drain_timeout
        {
            cut = true;
            if let Ok(fds) = shared.receiver_fds.lock() {
                for &fd in fds.iter() {
                    // Safety: shutdown(2) on a socket the engine still owns; it only wakes the reader.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            }
        }
        if now >= next_sample {
            next_sample += sample;
            timeline.push((
                now.duration_since(start).as_secs_f64(),
                shared.delivered.load(Ordering::Relaxed),
            ));
        }
        if now >= next_progress {
            next_progress += every;
            progress(&Progress {
                elapsed: now.duration_since(start).as_secs_f64(),
                sent: shared.sent.load(Ordering::Relaxed),
                delivered: shared.delivered.load(Ordering::Relaxed),
            });
        }
    }
    let cpu = cpu_seconds() - cpu0;
    let mut hist = new_hist();
    let mut results = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok((r, hh))) => {
                results.extend(r);
                let _ = hist.add(&hh);
            }
            Ok(Err(e)) => return Err(LoadError::Engine(e)),
            Err(_) => return Err(LoadError::Engine("an engine thread panicked".into())),
        }
    }
    if let Some(e) = shared.failed.lock().ok().and_then(|f| f.clone()) {
        return Err(LoadError::Engine(e));
    }
    let sent: u64 = flows
        .iter()
        .map(|f| f.sent.load(Ordering::Relaxed) * f.fan)
        .sum();
    let delivered: u64 = results.iter().map(|r| r.delivered).sum();
    let out_of_order: u64 = results.iter().map(|r| r.out_of_order).sum();
    let end = results.iter().filter_map(|r| r.last).max().unwrap_or(start);
    let seconds = end.duration_since(start).as_secs_f64().max(1e-9);
    let rates: Vec<f64> = results
        .iter()
        .map(|r| {
            r.last.map_or(0.0, |l| {
                r.delivered as f64 / l.duration_since(start).as_secs_f64().max(1e-9)
            })
        })
        .collect();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let mut latency_buckets = Vec::new();
    if !hist.is_empty() {
        for v in hist.iter_log(1000, 1.5) {
            if v.count_since_last_iteration() > 0 {
                latency_buckets.push((
                    v.value_iterated_to() as f64 / 1000.0,
                    v.count_since_last_iteration(),
                ));
            }
        }
    }
    timeline.push((seconds, delivered));
    Ok(LoadReport {
        sent,
        delivered,
        lost: sent.saturating_sub(delivered),
        out_of_order,
        seconds,
        msgs_per_sec: delivered as f64 / seconds,
        mb_per_sec: delivered as f64 * cfg.size as f64 / 1e6 / seconds,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: hist.max() as f64 / 1000.0,
        receivers: results.len(),
        receiver_min_msgs_per_sec: rates
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(f64::MAX),
        receiver_avg_msgs_per_sec: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
        receiver_max_msgs_per_sec: rates.iter().copied().fold(0.0, f64::max),
        engine_cpu_seconds: cpu,
        timeline,
        latency_buckets,
    })
}

impl LoadReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table (the shape `nats bench` prints).
    pub fn table(&self) -> String {
        format!(
            "delivered {} of {} (lost {}, out of order {}) in {:.3} s\n\
             {:>12.0} msgs/s  {:>9.2} MB/s\n\
             latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
             receivers {}: min {:.0}  avg {:.0}  max {:.0} msgs/s\n\
             engine CPU {:.2} s (router and engine share this machine's cores)",
            self.delivered,
            self.sent,
            self.lost,
            self.out_of_order,
            self.seconds,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.receivers,
            self.receiver_min_msgs_per_sec,
            self.receiver_avg_msgs_per_sec,
            self.receiver_max_msgs_per_sec,
            self.engine_cpu_seconds,
        )
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant figures; bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: getrusage writes into the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Where a sender sends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    /// A user (ringrouter), a subject (NATS) or a channel (Redis).
    User(String),
    /// A room (ringrouter fan-out), or the channel all of a sender's receivers
    /// subscribe to (Redis fan-out).
    Room(String),
}

fn sender_name(prefix: &str, i: usize) -> String {
    format!("{prefix}s{i}")
}

/// The fan-out room of sender `i`: named after the user prefix, so that
/// concurrent runs (each with its own prefix) never share one.
fn room_name(prefix: &str, i: usize) -> String {
    format!("{prefix}room{i}")
}

/// The fan-out rooms of a run, created before it and deleted (best effort)
/// when this is dropped, however the run ends.
struct Rooms {
    addr: SocketAddr,
    timeout: Duration,
    /// (owner, room).
    created: Vec<(String, String)>,
}

impl Rooms {
    fn owner_client(&self, owner: &str) -> Result<Client, ClientError> {
        let mut cfg = ClientConfig::new(owner);
        cfg.device = "load-setup".into();
        cfg.timeout = self.timeout;
        Client::connect(self.addr, cfg)
    }

    /// Creates `room` owned by `owner`; returns its join code. A room of that
    /// name left behind by an earlier run with the same prefix (same owner) is
    /// deleted and created afresh.
    fn create(&mut self, owner: &str, room: &str) -> Result<String, String> {
        let what = |e: ClientError| format!("creating fan-out room {room} as {owner}: {e}");
        let mut c = self.owner_client(owner).map_err(what)?;
        let code = match c.create_room(room, None) {
            Err(e) if e.code() == Some(Status::Conflict) => {
                match c.delete_room(room) {
                    Err(e) if e.code() == Some(Status::Forbidden) => {
                        return Err(format!(
                            "creating fan-out room {room}: the name is taken by another \
                             user's room (choose another user prefix)"
                        ))
                    }
                    other => other.map_err(what)?,
                }
                c.create_room(room, None)
            }
            other => other,
        }
        .map_err(what)?;
        self.created.push((owner.to_owned(), room.to_owned()));
        let _ = c.close();
        Ok(code)
    }
}

impl Drop for Rooms {
    fn drop(&mut self) {
        for (owner, room) in std::mem::take(&mut self.created) {
            if let Ok(mut c) = self.owner_client(&owner) {
                let _ = c.delete_room(&room);
                let _ = c.close();
            }
        }
    }
}

/// A logged-in connection and the bytes read past its handshake.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Connects as `user` (ringrouter: logs in, joins the room of join code
/// `join`) and, for a receiver, subscribes to `subscribe` (NATS subject or
/// Redis channel), waiting until the server confirmed the subscription.
async fn connect(
    protocol: Protocol,
    addr: SocketAddr,
    user: &str,
    subscribe: Option<&str>,
    join: Option<&str>,
) -> Result<Conn, String> {
    match protocol {
        Protocol::Ringrouter => connect_login(addr, user, join).await,
        Protocol::Nats => connect_nats(addr, subscribe).await,
        Protocol::Redis => connect_redis(addr, subscribe).await,
    }
}

/// NATS handshake: INFO, CONNECT, optional SUB, then PING until PONG (which
/// proves the subscription is registered).
async fn connect_nats(addr: SocketAddr, subscribe: Option<&str>) -> Result<Conn, String> {
    let mut s = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut hello =
        String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true}\r\n");
    if let Some(subj) = subscribe {
        hello.push_str(&format!("SUB {subj} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    let (r, _) = s.write_all(hello.into_bytes()).await;
    r.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        if let Some(i) = buf.windows(6).position(|w| w == b"PONG\r\n") {
            buf.advance(i + 6);
            return Ok(Conn { stream: s, buf });
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"-ERR") {
            return Err(String::from_utf8_lossy(&buf[i..]).into_owned());
        }
        buf = read_more(&mut s, buf, "NATS handshake").await?;
    }
}

/// Redis handshake: a receiver SUBSCRIBEs and waits for the confirmation (only
/// then is it sure to get what is published next); a sender PINGs and waits for
/// the PONG (proving it talks to a Redis server).
async fn connect_redis(addr: SocketAddr, subscribe: Option<&str>) -> Result<Conn, String> {
    let mut s = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut hello = BytesMut::new();
    match subscribe {
        Some(channel) => resp::put_command(&mut hello, &[b"SUBSCRIBE", channel.as_bytes()]),
        None => resp::put_command(&mut hello, &[b"PING"]),
    }
    let (r, _) = s.write_all(hello).await;
    r.map_err(|e| e.to_string())?;
    let what = match subscribe {
        Some(channel) => format!("Redis SUBSCRIBE {channel}"),
        None => "Redis PING".to_owned(),
    };
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // (bytes used, whether it was the answer), or not complete yet.
        let step = match resp::next(&buf).map_err(|e| format!("{what}: {e}"))? {
            None => None,
            Some((resp::Resp::Error(e), _)) => {
                return Err(format!("{what}: {}", String::from_utf8_lossy(e)))
            }
            Some((resp::Resp::Subscribed { channel, .. }, n)) => {
                Some((n, subscribe.is_some_and(|c| c.as_bytes() == channel)))
            }
            Some((resp::Resp::Simple(b"PONG"), n)) => Some((n, subscribe.is_none())),
            Some((_, n)) => Some((n, false)),
        };
        match step {
            Some((n, answered)) => {
                buf.advance(n);
                if answered {
                    return Ok(Conn { stream: s, buf });
                }
            }
            None => buf = read_more(&mut s, buf, &what).await?,
        }
    }
}

/// One item scanned from a receiver's buffer.
enum Item<'a> {
    /// A delivered payload (empty: the sender's end marker), with the router's
    /// seq (0 for NATS and Redis).
    Msg(&'a [u8], u64),
    /// Redis' answer to a PUBLISH (how many subscribers got the message: not
    /// needed, the receivers count what they get).
    Published,
    /// Anything else (already answered if it needed an answer).
    Control,
}

/// Scans the next item at `*pos`; `Ok(None)` when it is not complete yet.
fn next_item<'a>(
    protocol: Protocol,
    buf: &'a [u8],
    pos: &mut usize,
    out: &mut BytesMut,
) -> Result<Option<Item<'a>>, String> {
    let rest = &buf[*pos..];
    match protocol {
        Protocol::Ringrouter => {
            let Some((flen, n)) = peek_varint(rest).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let end = n + flen as usize;
            if end > rest.len() {
                return Ok(None);
            }
            let body = &rest[n..end];
            *pos += end;
            match parse_server(body).map_err(|e| e.to_string())? {
                ServerView::Deliver { seq, payload, .. } => Ok(Some(Item::Msg(payload, seq))),
                ServerView::Other => {
                    let f = decode_server(bytes::Bytes::copy_from_slice(body))
                        .map_err(|e| e.to_string())?;
                    match f.kind {
                        Some(server_frame::Kind::Ping(p)) => encode_frame(
                            &ClientFrame {
                                kind: Some(client_frame::Kind::Pong(Pong { nonce: p.nonce })),
                            },
                            out,
                        ),
                        Some(server_frame::Kind::Error(e)) => {
                            return Err(format!("router error: {}", e.reason))
                        }
                        _ => {}
                    }
                    Ok(Some(Item::Control))
                }
            }
        }
        Protocol::Nats => {
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let line = &rest[..eol];
            if let Some(hdr) = line.strip_prefix(b"MSG ") {
                let len: usize = hdr
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("bad MSG line {:?}", String::from_utf8_lossy(line)))?;
                let total = eol + 2 + len + 2;
                if rest.len() < total {
                    return Ok(None);
                }
                *pos += total;
                return Ok(Some(Item::Msg(&rest[eol + 2..eol + 2 + len], 0)));
            }
            *pos += eol + 2;
            if line == b"PING" {
                out.extend_from_slice(b"PONG\r\n");
            } else if line.starts_with(b"-ERR") {
                return Err(String::from_utf8_lossy(line).into_owned());
            }
            Ok(Some(Item::Control))
        }
        Protocol::Redis => {
            let Some((r, n)) = resp::next(rest)? else {
                return Ok(None);
            };
            *pos += n;
            match r {
                resp::Resp::Message { payload, .. } => Ok(Some(Item::Msg(payload, 0))),
                resp::Resp::Int(_) => Ok(Some(Item::Published)),
                resp::Resp::Error(e) => Err(format!("redis: {}", String::from_utf8_lossy(e))),
                _ => Ok(Some(Item::Control)),
            }
        }
    }
}

/// Appends one message for `to` to `out` in the protocol's framing, header first;
/// the caller appends `len` payload bytes, then calls [`end_message`].
fn begin_message(protocol: Protocol, out: &mut BytesMut, to: &Dest, len: usize) {
    match (protocol, to) {
        (Protocol::Ringrouter, Dest::User(u)) => {
            put_send_header(out, &SendHeader::to(Target::User(u)), len)
        }
        (Protocol::Ringrouter, Dest::Room(r)) => {
            put_send_header(out, &SendHeader::to(Target::Room(r)), len)
        }
        (Protocol::Nats, Dest::User(subject) | Dest::Room(subject)) => {
            use std::fmt::Write as _;
            let _ = write!(NatsLine(out), "PUB {subject} {len}\r\n");
        }
        (Protocol::Redis, Dest::User(channel) | Dest::Room(channel)) => {
            resp::put_publish_header(out, channel.as_bytes(), len)
        }
    }
}

fn end_message(protocol: Protocol, out: &mut BytesMut) {
    match protocol {
        Protocol::Ringrouter => {}
        Protocol::Nats => out.extend_from_slice(b"\r\n"),
        Protocol::Redis => out.extend_from_slice(resp::END),
    }
}

struct NatsLine<'a>(&'a mut BytesMut);

impl std::fmt::Write for NatsLine<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Reads more bytes onto the end of `buf` during a handshake (10 s limit; the
/// connection is dropped on failure, so cancelling the read is harmless).
async fn read_more(s: &mut TcpStream, mut buf: BytesMut, what: &str) -> Result<BytesMut, String> {
    buf.reserve(4096);
    let (len, cap) = (buf.len(), buf.capacity());
    let (r, b) = monoio::time::timeout(
        Duration::from_secs(10),
        s.read(monoio::buf::IoBufMut::slice_mut(buf, len..cap)),
    )
    .await
    .map_err(|_| format!("{what}: timed out"))?;
    match r {
        Ok(0) => Err(format!("{what}: connection closed")),
        Ok(_) => Ok(b.into_inner()),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Reads onto the end of `buf`, first growing it by `grow` when less than `min_free`
/// is free. Returns the buffer and whether bytes arrived (false: closed or failed).
async fn read_into<R: AsyncReadRent>(
    rd: &mut R,
    mut buf: BytesMut,
    min_free: usize,
    grow: usize,
) -> (BytesMut, bool) {
    if buf.capacity() - buf.len() < min_free {
        buf.reserve(grow);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (r, b) = rd
        .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
        .await;
    (b.into_inner(), matches!(r, Ok(n) if n > 0))
}

/// Logs in as `user` (and joins the room with join code `join`), returning the
/// connection with whatever arrived behind the answers (room events of other
/// receivers joining, say), which belongs to the stream that follows.
async fn connect_login(addr: SocketAddr, user: &str, join: Option<&str>) -> Result<Conn, String> {
    let mut s = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let login = client_frame::Kind::Login(Login {
        user: user.to_owned(),
        device: "load".into(),
        request_id: 1,
        ..Default::default()
    });
    let mut buf = BytesMut::with_capacity(4096);
    buf = request(&mut s, buf, login, &format!("login {user}"), |k| match k {
        server_frame::Kind::LoginResult(r) => Some((r.status, r.reason)),
        _ => None,
    })
    .await?;
    if let Some(code) = join {
        let join = client_frame::Kind::JoinRoom(JoinRoom {
            request_id: 2,
            room: code.to_owned(),
            password: String::new(),
        });
        let what = format!("{user} joining the fan-out room");
        buf = request(&mut s, buf, join, &what, |k| match k {
            server_frame::Kind::RoomResult(r) if r.request_id == 2 => Some((r.status, r.reason)),
            _ => None,
        })
        .await?;
    }
    Ok(Conn { stream: s, buf })
}

/// Sends `req` and reads until `answer` recognises the answer (its status and
/// reason); frames before it are skipped, an Error frame is a failure. Returns
/// the bytes read past the answer.
async fn request(
    s: &mut TcpStream,
    mut buf: BytesMut,
    req: client_frame::Kind,
    what: &str,
    answer: impl Fn(server_frame::Kind) -> Option<(i32, String)>,
) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    encode_frame(&ClientFrame { kind: Some(req) }, &mut out);
    let (r, _) = s.write_all(out).await;
    r.map_err(|e| format!("{what}: {e}"))?;
    loop {
        while let Some((len, n)) = peek_varint(&buf).map_err(|e| format!("{what}: {e}"))? {
            if buf.len() < n + len as usize {
                break;
            }
            buf.advance(n);
            let body = buf.split_to(len as usize).freeze();
            let f = decode_server(body).map_err(|e| format!("{what}: {e}"))?;
            match f.kind {
                Some(server_frame::Kind::Error(e)) => {
                    return Err(format!(
                        "{what}: {}: {}",
                        crate::core::status(e.code).short_name(),
                        e.reason
                    ))
                }
                Some(k) => {
                    if let Some((status, reason)) = answer(k) {
                        let st = crate::core::status(status);
                        if st != Status::Ok {
                            return Err(format!("{what}: {}: {reason}", st.short_name()));
                        }
                        return Ok(buf);
                    }
                }
                None => {}
            }
        }
        buf = read_more(s, buf, what).await?;
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// What a sender's connection receives, shared between its reader task and
/// the sending loop (one thread).
#[derive(Default)]
struct Echo {
    /// Highest seq delivered to the sender (its own room messages).
    last_seq: Cell<u64>,
    /// The sender's own end marker came back.
    saw_end: Cell<bool>,
    /// The read side ended.
    closed: Cell<bool>,
    /// Redis: PUBLISH replies read (one per message and destination).
    published: Cell<u64>,
    /// Frames to send back (pongs).
    control: std::cell::RefCell<BytesMut>,
}

/// Reads everything the router sends a sender: answers pings, tracks the
/// deliveries of its own room messages (to ack them), reports router errors.
async fn sender_reader(
    shared: Arc<Shared>,
    flow: Arc<Flow>,
    mut rd: monoio::net::tcp::TcpOwnedReadHalf,
    mut buf: BytesMut,
    echo: Rc<Echo>,
) {
    let protocol = shared.cfg.protocol;
    let mut out = BytesMut::new();
    loop {
        let mut pos = 0usize;
        let published = echo.published.get();
        loop {
            match next_item(protocol, &buf, &mut pos, &mut out) {
                Ok(Some(Item::Msg(payload, seq))) => {
                    echo.last_seq.set(echo.last_seq.get().max(seq));
                    if payload.is_empty() {
                        echo.saw_end.set(true);
                    }
                }
                Ok(Some(Item::Published)) => echo.published.set(echo.published.get() + 1),
                Ok(Some(Item::Control)) => {}
                Ok(None) => break,
                Err(e) => {
                    if let Ok(mut fl) = shared.failed.lock() {
                        fl.get_or_insert(format!("sender: {e}"));
                    }
                    echo.closed.set(true);
                    return;
                }
            }
        }
        buf.advance(pos);
        if echo.published.get() != published {
            // The sending loop's window counts these too.
            flow.sender.wake();
        }
        if !out.is_empty() {
            echo.control.borrow_mut().extend_from_slice(&out);
            out.clear();
        }
        let (b, more) = read_into(&mut rd, buf, 16 * 1024, 64 * 1024).await;
        buf = b;
        if !more {
            break;
        }
    }
    echo.closed.set(true);
}

/// Cumulative acks of a connection's deliveries: every [`ACK_EVERY`] or
/// after [`ACK_INTERVAL`].
struct Acker {
    acked: u64,
    last_ack: Instant,
}

impl Acker {
    fn new() -> Self {
        Acker {
            acked: 0,
            last_ack: Instant::now(),
        }
    }

    /// Appends an Ack to `out` if one is due for deliveries up to `last_seq`
    /// (or, with `force`, if anything is unacked).
    fn maybe_ack(&mut self, last_seq: u64, now: Instant, force: bool, out: &mut BytesMut) {
        if last_seq <= self.acked {
            return;
        }
        if force
            || last_seq - self.acked >= ACK_EVERY
            || now.duration_since(self.last_ack) >= ACK_INTERVAL
        {
            self.acked = last_seq;
            self.last_ack = now;
            encode_frame(
                &ClientFrame {
                    kind: Some(client_frame::Kind::Ack(Ack {
                        up_to_seq: last_seq,
                    })),
                },
                out,
            );
        }
    }
}

fn put_logout(out: &mut BytesMut) {
    encode_frame(
        &ClientFrame {
            kind: Some(client_frame::Kind::Logout(Logout {})),
        },
        out,
    );
}

async fn sender(
    shared: Arc<Shared>,
    flow: Arc<Flow>,
    conn: Conn,
    to: Vec<Dest>,
    quota: Option<u64>,
) {
    let cfg = &shared.cfg;
    let protocol = cfg.protocol;
    let (rd, mut wr) = conn.stream.into_split();
    // Read whatever the router sends the sender (pings, errors, its own room
    // messages) so that its socket never fills.
    let echo = Rc::new(Echo::default());
    monoio::spawn(sender_reader(
        shared.clone(),
        flow.clone(),
        rd,
        conn.buf,
        echo.clone(),
    ));
    let mut acker = Acker::new();
    let size = cfg.size;
    let window = cfg.window as u64;
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let per_sender_rate = cfg.rate.map(|r| r / shared_senders(cfg) as f64);
    let filler = vec![0x5Au8; size.saturating_sub(STAMP)];
    let mut buf = BytesMut::with_capacity(MAX_BATCH * (size + 64) * to.len());
    let mut sent: u64 = 0;
    let mut write_failed = false;
    loop {
        if quota.is_some_and(|q| sent >= q) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Window: messages sent but not yet delivered to every recipient (and,
        // with Redis, not yet answered: its PUBLISH replies count too).
        let in_flight = |f: &Flow| {
            let mut done = f.delivered.load(Ordering::Acquire) / f.fan;
            if protocol == Protocol::Redis {
                done = done.min(echo.published.get() / to.len() as u64);
            }
            sent.saturating_sub(done)
        };
        if in_flight(&flow) >= window {
            poll_fn(|cx| {
                flow.sender.register(cx.waker());
                if in_flight(&flow) < window {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            continue;
        }
        let mut n = (window - in_flight(&flow)).min(MAX_BATCH as u64);
        if let Some(q) = quota {
            n = n.min(q - sent);
        }
        if let Some(rate) = per_sender_rate {
            let allowed = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
            if allowed <= sent {
                let wait = Duration::from_secs_f64(
                    ((sent + 1) as f64 / rate - started.elapsed().as_secs_f64()).max(0.0),
                );
                monoio::time::sleep(wait.max(Duration::from_micros(20))).await;
                continue;
            }
            n = n.min(allowed - sent);
        }
        buf.clear();
        put_control(&echo, &mut acker, false, &mut buf);
        let ts = nanos_since(shared.epoch);
        for k in 0..n {
            let seq = sent + k + 1;
            for dest in &to {
                begin_message(protocol, &mut buf, dest, size);
                if size >= STAMP {
                    buf.extend_from_slice(&ts.to_le_bytes());
                    buf.extend_from_slice(&seq.to_le_bytes());
                    buf.extend_from_slice(&filler);
                } else {
                    buf.extend_from_slice(&vec![0u8; size]);
                }
                end_message(protocol, &mut buf);
            }
        }
        sent += n;
        flow.sent.store(sent, Ordering::Release);
        shared.sent.fetch_add(n * flow.fan, Ordering::Relaxed);
        let (r, b) = wr.write_all(buf).await;
        buf = b;
        if r.is_err() {
            write_failed = true;
            break;
        }
    }
    // End marker: an empty payload to every recipient, after everything else.
    buf.clear();
    for dest in &to {
        begin_message(protocol, &mut buf, dest, 0);
        end_message(protocol, &mut buf);
    }
    let (r, b) = wr.write_all(buf).await;
    buf = b;
    write_failed |= r.is_err();
    flow.sender_done.store(true, Ordering::Release);
    shared.senders_left.fetch_sub(1, Ordering::AcqRel);
    if protocol == Protocol::Redis && !write_failed {
        // Every PUBLISH, end markers included, is answered before the
        // connection goes away (unread replies would make closing it a reset).
        let expect = (sent + 1) * to.len() as u64;
        let since = Instant::now();
        while echo.published.get() < expect
            && !echo.closed.get()
            && since.elapsed() < cfg.drain_timeout
        {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        return;
    }
    if protocol != Protocol::Ringrouter || write_failed {
        return;
    }
    // The router delivers room messages to the sender's own session too: ack
    // them all before logging out, or the router would keep them for the
    // sender's next login. Wait for the end marker to come back (if anything
    // came back at all) once the receivers have theirs.
    if to.iter().any(|d| matches!(d, Dest::Room(_))) {
        let mut receivers_finished_at = None;
        while !echo.saw_end.get() && !echo.closed.get() {
            if flow.receivers_done.load(Ordering::Acquire) >= flow.fan {
                let since = *receivers_finished_at.get_or_insert_with(Instant::now);
                if echo.last_seq.get() == 0 || since.elapsed() >= ECHO_GRACE {
                    break;
                }
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    buf.clear();
    put_control(&echo, &mut acker, true, &mut buf);
    put_logout(&mut buf);
    let _ = wr.write_all(buf).await;
}

/// Appends the sender's pending pongs and a due ack to `out`.
fn put_control(echo: &Echo, acker: &mut Acker, force: bool, out: &mut BytesMut) {
    {
        let mut control = echo.control.borrow_mut();
        if !control.is_empty() {
            out.extend_from_slice(&control);
            control.clear();
        }
    }
    acker.maybe_ack(echo.last_seq.get(), Instant::now(), force, out);
}

fn shared_senders(cfg: &LoadConfig) -> usize {
    if cfg.fanout.is_some() {
        1
    } else {
        cfg.pairs.max(1)
    }
}

async fn receiver(
    shared: Arc<Shared>,
    flow: Arc<Flow>,
    conn: Conn,
    hist: Rc<std::cell::RefCell<Histogram<u64>>>,
) -> RecvResult {
    let res = receive(&shared, &flow, conn, &hist).await;
    flow.receivers_done.fetch_add(1, Ordering::AcqRel);
    res
}

async fn receive(
    shared: &Shared,
    flow: &Flow,
    conn: Conn,
    hist: &std::cell::RefCell<Histogram<u64>>,
) -> RecvResult {
    let Conn {
        mut stream,
        mut buf,
    } = conn;
    let mut out = BytesMut::new();
    let mut res = RecvResult {
        delivered: 0,
        out_of_order: 0,
        last: None,
    };
    let mut expect_seq = 1u64;
    let mut last_seq = 0u64;
    let mut acker = Acker::new();
    let protocol = shared.cfg.protocol;
    let mut done = false;
    // Bytes that arrived behind the handshake are scanned before the first read.
    let mut read_first = buf.is_empty();
    while !done {
        if read_first {
            let (b, more) = read_into(&mut stream, buf, 64 * 1024, 256 * 1024).await;
            buf = b;
            if !more {
                break;
            }
        }
        read_first = true;
        let now_ns = nanos_since(shared.epoch);
        let mut pos = 0usize;
        let mut got = 0u64;
        {
            let mut h = hist.borrow_mut();
            loop {
                match next_item(protocol, &buf, &mut pos, &mut out) {
                    Ok(Some(Item::Msg([], seq))) => {
                        // The sender's end marker: everything it sent before has arrived.
                        last_seq = last_seq.max(seq);
                        done = true;
                    }
                    Ok(Some(Item::Msg(payload, seq))) => {
                        got += 1;
                        last_seq = last_seq.max(seq);
                        if payload.len() >= STAMP {
                            let mut ts = [0u8; 8];
                            ts.copy_from_slice(&payload[..8]);
                            let mut sq = [0u8; 8];
                            sq.copy_from_slice(&payload[8..16]);
                            let (ts, sq) = (u64::from_le_bytes(ts), u64::from_le_bytes(sq));
                            if sq != expect_seq {
                                res.out_of_order += 1;
                            }
                            expect_seq = sq + 1;
                            let _ = h.record(now_ns.saturating_sub(ts).max(1));
                        }
                    }
                    Ok(Some(Item::Control | Item::Published)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        if let Ok(mut fl) = shared.failed.lock() {
                            fl.get_or_insert(e);
                        }
                        done = true;
                        break;
                    }
                }
            }
        }
        buf.advance(pos);
        if got > 0 {
            res.delivered += got;
            res.last = Some(Instant::now());
            flow.delivered.fetch_add(got, Ordering::AcqRel);
            shared.delivered.fetch_add(got, Ordering::Relaxed);
            flow.sender.wake();
        }
        if protocol == Protocol::Ringrouter {
            // Everything received is acked before this connection goes away, so
            // the router keeps nothing of the run for the receiver's next login.
            acker.maybe_ack(last_seq, Instant::now(), done, &mut out);
            if done {
                put_logout(&mut out);
            }
        }
        if !out.is_empty() {
            let (r, b) = stream.write_all(std::mem::take(&mut out)).await;
            out = b;
            out.clear();
            if r.is_err() {
                break;
            }
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringrouter_proto::codec::{decode_client, next_frame};

    fn frames_in(mut b: BytesMut) -> Vec<client_frame::Kind> {
        let mut out = Vec::new();
        while let Some(body) = next_frame(&mut b, 1 << 20).expect("framing") {
            out.extend(decode_client(body).expect("decodes").kind);
        }
        assert!(b.is_empty(), "a partial frame left over");
        out
    }

    #[test]
    fn acks_are_cumulative_every_1024_or_100ms_and_forced_at_the_end() {
        let t0 = Instant::now();
        let mut a = Acker {
            acked: 0,
            last_ack: t0,
        };
        let mut out = BytesMut::new();
        a.maybe_ack(0, t0, true, &mut out);
        assert!(out.is_empty(), "nothing received, nothing to ack");
        a.maybe_ack(ACK_EVERY - 1, t0, false, &mut out);
        assert!(out.is_empty(), "not due yet");
        a.maybe_ack(ACK_EVERY, t0, false, &mut out);
        a.maybe_ack(ACK_EVERY + 5, t0 + ACK_INTERVAL / 2, false, &mut out);
        // 100 ms after the last ack: due.
        a.maybe_ack(ACK_EVERY + 6, t0 + ACK_INTERVAL, false, &mut out);
        // Forced (the end): whatever is unacked.
        a.maybe_ack(ACK_EVERY + 7, t0 + ACK_INTERVAL, true, &mut out);
        a.maybe_ack(ACK_EVERY + 7, t0 + 10 * ACK_INTERVAL, true, &mut out);
        let acks: Vec<u64> = frames_in(out)
            .into_iter()
            .map(|k| match k {
                client_frame::Kind::Ack(a) => a.up_to_seq,
                other => panic!("expected an Ack, got {other:?}"),
            })
            .collect();
        assert_eq!(acks, [ACK_EVERY, ACK_EVERY + 6, ACK_EVERY + 7]);
        // By time: 100 ms after the last ack, one more message is enough.
        let mut a = Acker {
            acked: 10,
            last_ack: t0,
        };
        let mut out = BytesMut::new();
        a.maybe_ack(11, t0 + ACK_INTERVAL, false, &mut out);
        assert!(matches!(
            frames_in(out).as_slice(),
            [client_frame::Kind::Ack(Ack { up_to_seq: 11 })]
        ));
    }

    #[test]
    fn room_and_user_messages_are_sends_with_the_right_target() {
        let mut b = BytesMut::new();
        for (dest, payload) in [
            (Dest::User("bob".into()), &b"12345678abcdefgh"[..]),
            (Dest::Room("load1-room0".into()), &b"12345678abcdefgh"[..]),
            (Dest::Room("load1-room0".into()), &b""[..]),
        ] {
            begin_message(Protocol::Ringrouter, &mut b, &dest, payload.len());
            b.extend_from_slice(payload);
            end_message(Protocol::Ringrouter, &mut b);
        }
        let sends: Vec<(String, String, usize)> = frames_in(b)
            .into_iter()
            .map(|k| match k {
                client_frame::Kind::Send(s) => (s.to_user, s.to_room, s.payload.len()),
                other => panic!("expected a Send, got {other:?}"),
            })
            .collect();
        assert_eq!(
            sends,
            [
                ("bob".into(), "".into(), 16),
                ("".into(), "load1-room0".into(), 16),
                ("".into(), "load1-room0".into(), 0),
            ]
        );
    }

    #[test]
    fn redis_messages_are_publishes_to_the_channel() {
        let mut b = BytesMut::new();
        for (dest, payload) in [
            (
                Dest::User("load1-r0-0".into()),
                &b"12345678\r\n345678abc"[..],
            ),
            (Dest::Room("load1-room0".into()), &b""[..]),
        ] {
            begin_message(Protocol::Redis, &mut b, &dest, payload.len());
            b.extend_from_slice(payload);
            end_message(Protocol::Redis, &mut b);
        }
        assert_eq!(
            &b[..],
            &b"*3\r\n$7\r\nPUBLISH\r\n$10\r\nload1-r0-0\r\n$19\r\n12345678\r\n345678abc\r\n\
               *3\r\n$7\r\nPUBLISH\r\n$11\r\nload1-room0\r\n$0\r\n\r\n"[..]
        );
    }

    #[test]
    fn redis_pushes_replies_and_errors_are_told_apart() {
        let b = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n:64\r\n\
                  *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n+OK\r\n*3\r\n$7\r\nmess";
        let mut pos = 0;
        let mut out = BytesMut::new();
        let mut items = Vec::new();
        while let Some(item) = next_item(Protocol::Redis, b, &mut pos, &mut out).expect("parses") {
            items.push(match item {
                Item::Msg(p, seq) => format!("msg {} {seq}", String::from_utf8_lossy(p)),
                Item::Published => "published".into(),
                Item::Control => "control".into(),
            });
        }
        assert_eq!(items, ["msg hi 0", "published", "msg  0", "control"]);
        assert_eq!(&b[pos..], b"*3\r\n$7\r\nmess", "the partial push waits");
        assert!(out.is_empty(), "nothing to answer");
        let mut pos = 0;
        let err = next_item(Protocol::Redis, b"-OOM no\r\n", &mut pos, &mut out);
        assert!(matches!(err, Err(e) if e.contains("OOM no")));
    }

    #[test]
    fn fan_out_rooms_are_named_after_the_prefix() {
        assert_eq!(room_name("load42-", 0), "load42-room0");
        assert_ne!(room_name("load42-", 0), room_name("load43-", 0));
        assert_ne!(room_name("p-", 1), sender_name("p-", 1));
    }

    #[test]
    fn a_receivers_deliveries_and_room_events_are_told_apart() {
        use ringrouter_proto::v1::{Deliver, RoomEvent, ServerFrame};
        let mut b = BytesMut::new();
        for kind in [
            server_frame::Kind::RoomEvent(RoomEvent {
                kind: 1,
                room: "r".into(),
                user: "u".into(),
            }),
            server_frame::Kind::Deliver(Deliver {
                seq: 3,
                to_room: "r".into(),
                payload: bytes::Bytes::from_static(b"hi"),
                ..Default::default()
            }),
            server_frame::Kind::Ping(ringrouter_proto::v1::Ping { nonce: 9 }),
        ] {
            encode_frame(&ServerFrame { kind: Some(kind) }, &mut b);
        }
        let mut pos = 0;
        let mut out = BytesMut::new();
        let mut items = Vec::new();
        while let Some(item) =
            next_item(Protocol::Ringrouter, &b, &mut pos, &mut out).expect("parses")
        {
            items.push(match item {
                Item::Msg(p, seq) => format!("msg {} {seq}", String::from_utf8_lossy(p)),
                Item::Published => "published".into(),
                Item::Control => "control".into(),
            });
        }
        assert_eq!(items, ["control", "msg hi 3", "control"]);
        assert_eq!(pos, b.len());
        assert!(matches!(
            frames_in(out).as_slice(),
            [client_frame::Kind::Pong(Pong { nonce: 9 })]
        ));
    }
}
