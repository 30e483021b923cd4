//! What to run ([`LoadConfig`], [`Protocol`]) and how a run is laid out
//! ([`Plan`]): who sends to whom, on which engine thread.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::engine::{Dest, Flow, RecvJob, SenderJob, ThreadJobs};
use super::link::LinkConfig;
use super::ringrouter::room_name;
use super::LoadError;
use crate::Transport;

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
    /// Redis: the senders turn replies off (`CLIENT REPLY OFF`) and never read
    /// any; the window then counts deliveries only.
    pub redis_reply_off: bool,
    /// ringrouter, pairs: the router's shard count, to name every pair's
    /// receiver so that it lives on another shard than its sender (0 or 1: names
    /// as usual).
    pub split_shards: usize,
    /// ringrouter: TCP (default) or WebSocket (`addr` is then the HTTP port),
    /// with or without TLS. NATS and Redis: plain TCP only.
    pub transport: Transport,
    /// ringrouter: number the Sends (`Send.client_seq`), so that the router
    /// acknowledges them with SendAck as it does for a resuming client (what resume
    /// costs the router).
    pub client_seq: bool,
    /// The server's process id, to report its CPU over the measured span
    /// ([`super::LoadReport::server_cpu_s`]); the server must run on this machine.
    pub server_pid: Option<u32>,
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
            redis_reply_off: false,
            split_shards: 0,
            client_seq: false,
            server_pid: None,
            transport: Transport::default(),
        }
    }
}

/// A checked configuration and the shape of the run.
pub(super) struct Plan {
    pub(super) addr: SocketAddr,
    /// Senders (pairs, or the one fan-out sender).
    pub(super) senders: usize,
    /// Recipients per message.
    pub(super) fan: usize,
    /// Engine threads.
    pub(super) threads: usize,
    /// A paced run (`rate`) with two threads or more: thread 0 runs every sender
    /// and nothing else, the others the receivers.
    pub(super) paced: bool,
    /// Fan-out through ringrouter rooms.
    pub(super) use_rooms: bool,
    /// Fan-out through one Redis channel or NATS subject per sender (the
    /// equivalent of a room): one publish per message.
    pub(super) shared_channel: bool,
    /// How ringrouter connections are made (TLS configuration loaded).
    pub(super) link: LinkConfig,
}

/// Largest payload a run sends (a router's frame limit is far below it).
const MAX_SIZE: usize = 64 << 20;
/// Largest in-flight window per sender.
const MAX_WINDOW: usize = 100_000_000;
/// Most engine threads.
const MAX_THREADS: usize = 1024;
/// Most connections a run opens (senders and receivers).
const MAX_CONNECTIONS: usize = 1_000_000;
/// Longest run by duration (a year).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Plan {
    /// Checks `cfg` (every count and size within what one process can run: a clear
    /// error, not an allocation that aborts) and plans the run.
    pub(super) fn new(cfg: &LoadConfig) -> Result<Plan, LoadError> {
        let invalid = |why: &str| Err(LoadError::Config(why.into()));
        if cfg.messages.is_none() && cfg.duration.is_none() {
            return invalid("give messages or duration");
        }
        if cfg.size < super::engine::STAMP {
            // A shorter payload could not carry what latency and order are measured from:
            // its percentiles would read 0 and its order go unchecked.
            return Err(LoadError::Config(format!(
                "size must be at least {} bytes (each payload carries its send time and \
                 its number)",
                super::engine::STAMP
            )));
        }
        if cfg.size > MAX_SIZE {
            return Err(LoadError::Config(format!(
                "size must be at most {MAX_SIZE} bytes (the largest frame a router takes)"
            )));
        }
        if cfg.window == 0 {
            return invalid("window must be at least 1");
        }
        if cfg.window > MAX_WINDOW {
            return Err(LoadError::Config(format!(
                "window must be at most {MAX_WINDOW}"
            )));
        }
        if cfg.threads > MAX_THREADS {
            return Err(LoadError::Config(format!(
                "threads must be at most {MAX_THREADS} (0: one per core)"
            )));
        }
        if cfg.messages == Some(0) {
            return invalid("messages must be at least 1");
        }
        if cfg
            .duration
            .is_some_and(|d| d.is_zero() || d > MAX_DURATION)
        {
            return Err(LoadError::Config(format!(
                "duration must be more than 0 and at most {} seconds",
                MAX_DURATION.as_secs()
            )));
        }
        // Every receiver and sender is a connection of this process: past these the
        // run could never start (and its tables would not fit in memory).
        let (senders, fan) = match cfg.fanout {
            Some(0) => return invalid("fanout must be at least 1"),
            Some(m) if m > MAX_CONNECTIONS => {
                return Err(LoadError::Config(format!(
                    "fanout must be at most {MAX_CONNECTIONS}"
                )))
            }
            Some(m) => (1usize, m),
            None if cfg.pairs == 0 => return invalid("pairs must be at least 1"),
            None if cfg.pairs > MAX_CONNECTIONS / 2 => {
                return Err(LoadError::Config(format!(
                    "pairs must be at most {}",
                    MAX_CONNECTIONS / 2
                )))
            }
            None => (cfg.pairs, 1usize),
        };
        if cfg.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return invalid("rate must be a positive number");
        }
        if cfg.protocol != Protocol::Ringrouter && !cfg.transport.is_plain() {
            return invalid("TLS and WebSocket transports are for ringrouter only");
        }
        let link = LinkConfig::new(&cfg.transport, &cfg.addr).map_err(LoadError::Config)?;
        let connect_err = |reason: String| LoadError::Connect {
            addr: cfg.addr.clone(),
            reason,
        };
        let addr = cfg
            .addr
            .to_socket_addrs()
            .map_err(|e| connect_err(e.to_string()))?
            .next()
            .ok_or_else(|| connect_err("no address".into()))?;
        let threads = if cfg.threads > 0 {
            cfg.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        // Paced (--rate): the senders get a thread of their own (a lone one sleeps between
        // sends on a fine timer, see `engine::fine_pacing`), the receivers the others.
        let paced = cfg.rate.is_some() && threads >= 2;
        let needed = senders * fan + usize::from(paced);
        Ok(Plan {
            addr,
            senders,
            fan,
            paced,
            threads: threads.min(needed).max(1),
            use_rooms: fan > 1 && cfg.protocol == Protocol::Ringrouter,
            shared_channel: fan > 1 && matches!(cfg.protocol, Protocol::Redis | Protocol::Nats),
            link,
        })
    }

    /// Messages sender `i` sends (None: until the duration is over).
    fn quota(&self, cfg: &LoadConfig, i: usize) -> Option<u64> {
        let senders = self.senders as u64;
        cfg.messages
            .map(|m| m / senders + u64::from((i as u64) < m % senders))
    }

    /// Assigns the work to the engine threads: senders round-robin, receivers
    /// round-robin (pairs: with their sender). A paced run (`rate`, two threads or
    /// more) puts every sender on thread 0 and the receivers on the others.
    /// `join_codes[i]`: the join code of sender `i`'s fan-out room.
    pub(super) fn jobs(
        &self,
        cfg: &LoadConfig,
        flows: &[Arc<Flow>],
        join_codes: &[String],
    ) -> Vec<ThreadJobs> {
        let threads = self.threads;
        let fan = self.fan;
        let mut jobs: Vec<ThreadJobs> = (0..threads).map(|_| ThreadJobs::default()).collect();
        let p = &cfg.user_prefix;
        let split = fan == 1 && cfg.split_shards > 1 && cfg.protocol == Protocol::Ringrouter;
        for (i, flow) in flows.iter().enumerate() {
            let receivers: Vec<String> = if split {
                vec![split_receiver(p, i, cfg.split_shards)]
            } else {
                (0..fan).map(|j| format!("{p}r{i}-{j}")).collect()
            };
            let join = join_codes.get(i).cloned();
            for (j, user) in receivers.iter().enumerate() {
                let t = if self.paced {
                    1 + (i * fan + j) % (threads - 1)
                } else if fan == 1 {
                    i % threads
                } else {
                    j % threads
                };
                jobs[t].receivers.push(RecvJob {
                    flow: flow.clone(),
                    user: user.clone(),
                    join: join.clone(),
                    channel: if self.shared_channel {
                        room_name(p, i)
                    } else {
                        user.clone()
                    },
                });
            }
            let to = if self.use_rooms || self.shared_channel {
                vec![Dest::Room(room_name(p, i))]
            } else {
                receivers.into_iter().map(Dest::User).collect()
            };
            let t = if self.paced { 0 } else { i % threads };
            jobs[t].senders.push(SenderJob {
                flow: flow.clone(),
                user: sender_name(p, i),
                to,
                quota: self.quota(cfg, i),
            });
        }
        jobs
    }
}

pub(super) fn sender_name(prefix: &str, i: usize) -> String {
    format!("{prefix}s{i}")
}

/// The receiver of pair `i` named to live on another of `shards` shards than
/// its sender: `{prefix}r{i}-0`, or `{prefix}r{i}-0x{k}` for the first `k`
/// that moves it.
fn split_receiver(prefix: &str, i: usize, shards: usize) -> String {
    let home = home_shard(sender_name(prefix, i).as_bytes(), shards);
    let plain = format!("{prefix}r{i}-0");
    if home_shard(plain.as_bytes(), shards) != home {
        return plain;
    }
    (0..)
        .map(|k| format!("{plain}x{k}"))
        .find(|u| home_shard(u.as_bytes(), shards) != home)
        .expect("some name lands on another shard")
}

/// The router's home shard of a name (one definition, in proto).
pub use ringrouter_proto::home_shard;
