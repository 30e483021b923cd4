//! The load engine: P sender/receiver pairs (1:1), or one sender fanning out to
//! M receivers, driven thread-per-core on monoio with a bounded in-flight window
//! per pair so nothing is dropped. Used by `ringrouter-load`, the criterion
//! end-to-end benchmarks and `python -m ringrouter.load`.
//!
//! Fan-out (M > 1) against ringrouter goes through a real room: before the run
//! the sender's user creates a room named after the user prefix (so concurrent
//! runs do not collide), each receiver joins it by its join code right after
//! logging in, and the sender sends each message once, to the room. The room is
//! deleted when the run ends. Against NATS and Redis (pub/sub, RESP2), 1:1
//! pairs use one subject / channel per receiver and fan-out uses one subject /
//! channel per sender that all its receivers subscribe to (the equivalent of a
//! room): the sender publishes each message once.
//!
//! Every ringrouter connection acks what it received, cumulatively (every 1024
//! messages or 100 ms, and at the end), since the router keeps every unacked
//! delivery and closes a session that never acks as a slow consumer.

//!
//! # Layout
//! - [`LoadConfig`] and the run's layout (`config`), [`LoadReport`] (`report`);
//! - `engine`: the engine threads, senders, receivers and the monitor, over
//!   any target protocol;
//! - one module per target protocol: `ringrouter`, `nats`, `resp` (Redis);
//! - `link`: ringrouter over TLS or WebSocket ([`crate::transport`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod config;
mod engine;
mod link;
mod nats;
mod report;
mod resp;
mod ringrouter;

pub use config::{home_shard, LoadConfig, Protocol};
pub use report::LoadReport;

use config::Plan;
use engine::{Flow, Shared};
use report::Measured;

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
    /// The run failed once measuring had begun (a connection the router ended, say):
    /// `report` holds what was measured up to then, `lost` included, and the error.
    #[error("load engine failed: {error} (delivered {} of {}, lost {})", report.delivered, report.sent, report.lost)]
    Failed {
        /// What went wrong.
        error: String,
        /// The run's report up to the failure (its `error` set).
        report: Box<LoadReport>,
    },
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

/// Runs the load described by `cfg` and reports what it measured.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport, LoadError> {
    run_with_progress(cfg, Duration::from_secs(3600), |_| {})
}

/// Like [`run`], calling `progress` every `every` while it runs.
pub fn run_with_progress(
    cfg: &LoadConfig,
    every: Duration,
    progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    let plan = Plan::new(cfg)?;
    let flows: Vec<Arc<Flow>> = (0..plan.senders)
        .map(|_| Arc::new(Flow::new(plan.fan as u64)))
        .collect();
    // Fan-out through rooms: created now, deleted when `rooms` is dropped,
    // however the run ends.
    let mut rooms = ringrouter::Rooms {
        addr: plan.addr,
        transport: plan.link.room_transport(),
        timeout: cfg.drain_timeout,
        created: Vec::new(),
    };
    let mut join_codes = Vec::new();
    if plan.use_rooms {
        for i in 0..plan.senders {
            let owner = config::sender_name(&cfg.user_prefix, i);
            let room = ringrouter::room_name(&cfg.user_prefix, i);
            let code = rooms
                .create(&owner, &room)
                .map_err(|reason| LoadError::Connect {
                    addr: cfg.addr.clone(),
                    reason,
                })?;
            join_codes.push(code);
        }
    }
    let jobs = plan.jobs(cfg, &flows, &join_codes);
    let shared = Arc::new(Shared::new(cfg, plan.addr, plan.senders, plan.link.clone()));
    let barrier = Arc::new(Barrier::new(plan.threads + 1));
    let mut handles = Vec::new();
    for (t, jobs) in jobs.into_iter().enumerate() {
        handles.push(engine::spawn_thread(
            t,
            jobs,
            shared.clone(),
            barrier.clone(),
        )?);
    }
    // Everyone connected (or failed); then the start.
    barrier.wait();
    if let Some(e) = shared.failure() {
        barrier.wait();
        for h in handles {
            let _ = h.join();
        }
        return Err(LoadError::Connect {
            addr: cfg.addr.clone(),
            reason: e,
        });
    }
    // Logins and room joins are done: the measured span starts here.
    let cpu0 = report::Cpu::now(cfg.server_pid);
    let start = Instant::now();
    barrier.wait();
    let (timeline, cpu1) = engine::monitor(&handles, &shared, start, every, progress);
    let cpu = cpu0.until(cpu1);
    let mut hist = engine::new_hist();
    let mut results = Vec::new();
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(Ok((r, hh))) => {
                results.extend(r);
                let _ = hist.add(&hh);
            }
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some("an engine thread panicked".into())),
        }
    }
    let failed = shared.failure().or(failed);
    let sent = flows
        .iter()
        .map(|f| f.sent.load(Ordering::Relaxed) * f.fan)
        .sum();
    let mut report = Measured {
        sent,
        results,
        hist,
        start,
        timeline,
        cpu,
        size: cfg.size,
    }
    .report();
    match failed {
        None => Ok(report),
        // What was sent and not delivered by then is lost: the report says how much.
        Some(error) => {
            report.error = Some(error.clone());
            Err(LoadError::Failed {
                error,
                report: Box::new(report),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::config::sender_name;
    use super::engine::{begin_message, end_message, next_item, Dest, Item};
    use super::ringrouter::{room_name, Acker, ACK_EVERY, ACK_INTERVAL};
    use super::*;
    use bytes::BytesMut;
    use ringrouter_proto::codec::{decode_client, encode_frame, next_frame};
    use ringrouter_proto::v1::{client_frame, server_frame, Ack, Pong};

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
        let mut a = Acker::at(t0);
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
        let mut a = Acker::at(t0);
        let mut out = BytesMut::new();
        a.maybe_ack(10, t0, true, &mut out);
        out.clear();
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
    fn a_numbered_template_header_patched_in_place_is_the_send_with_that_client_seq() {
        use ringrouter_proto::fast::{parse_client, Inbound};
        for size in [1usize, 64, 127, 128, 70_000] {
            let mut h = BytesMut::new();
            let to = Dest::User("bob".into());
            ringrouter::begin_message(&mut h, &to, size, ringrouter::CLIENT_SEQ_BASE);
            let at = ringrouter::client_seq_at(h.len(), size);
            for n in [1u64, 2, 300, (1 << 28) - (1 << 21) - 1] {
                let mut f = h.clone();
                let end = at + ringrouter::CLIENT_SEQ_WIDTH;
                ringrouter::patch_client_seq(&mut f[at..end], n);
                f.extend_from_slice(&vec![7u8; size]);
                let body = ringrouter_proto::codec::next_frame(&mut f, 1 << 20)
                    .expect("frame")
                    .expect("whole");
                let Ok(Inbound::Send(v)) = parse_client(body) else {
                    panic!("not a Send");
                };
                assert_eq!(v.client_seq, ringrouter::CLIENT_SEQ_BASE + n, "size {size}");
                assert_eq!((v.to_user_str(), v.payload.len()), ("bob", size));
            }
        }
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
    fn split_pairs_put_every_receiver_on_another_shard() {
        for shards in [2, 3, 4] {
            let cfg = LoadConfig {
                pairs: 20,
                split_shards: shards,
                user_prefix: "split-".into(),
                ..LoadConfig::default()
            };
            let plan = config::Plan::new(&cfg).expect("plan");
            let flows: Vec<Arc<Flow>> = (0..20).map(|_| Arc::new(Flow::new(1))).collect();
            let jobs = plan.jobs(&cfg, &flows, &[]);
            let senders: Vec<_> = jobs.iter().flat_map(|j| &j.senders).collect();
            let receivers: Vec<_> = jobs.iter().flat_map(|j| &j.receivers).collect();
            assert_eq!(receivers.len(), 20);
            for s in senders {
                let i: usize = s.user["split-s".len()..].parse().expect("index");
                let r = receivers
                    .iter()
                    .find(|r| r.user.starts_with(&format!("split-r{i}-0")))
                    .expect("its receiver");
                assert_eq!(s.to, [engine::Dest::User(r.user.clone())]);
                assert_ne!(
                    home_shard(s.user.as_bytes(), shards),
                    home_shard(r.user.as_bytes(), shards)
                );
            }
        }
    }

    #[test]
    fn paced_runs_give_the_senders_a_thread_of_their_own() {
        for (pairs, threads, fanout) in [(1, 2, None), (3, 2, None), (4, 3, None), (1, 3, Some(5))]
        {
            let cfg = LoadConfig {
                pairs,
                threads,
                fanout,
                rate: Some(10_000.0),
                ..LoadConfig::default()
            };
            let plan = config::Plan::new(&cfg).expect("plan");
            let senders = if fanout.is_some() { 1 } else { pairs };
            let fan = fanout.unwrap_or(1);
            let flows: Vec<Arc<Flow>> = (0..senders)
                .map(|_| Arc::new(Flow::new(fan as u64)))
                .collect();
            let jobs = plan.jobs(&cfg, &flows, &vec![String::new(); senders]);
            assert_eq!(jobs.len(), threads, "{pairs} pairs, {threads} threads");
            assert_eq!(jobs[0].senders.len(), senders);
            assert!(
                jobs[0].receivers.is_empty(),
                "thread 0 sleeps between sends"
            );
            assert!(jobs[1..].iter().all(|j| j.senders.is_empty()));
            let receivers: usize = jobs[1..].iter().map(|j| j.receivers.len()).sum();
            assert_eq!(receivers, senders * fan);
        }
        // Unpaced, or on one thread: as before (pairs stay with their sender).
        for (rate, threads) in [(None, 2), (Some(10_000.0), 1)] {
            let cfg = LoadConfig {
                pairs: 2,
                threads,
                rate,
                ..LoadConfig::default()
            };
            let plan = config::Plan::new(&cfg).expect("plan");
            let flows: Vec<Arc<Flow>> = (0..2).map(|_| Arc::new(Flow::new(1))).collect();
            let jobs = plan.jobs(&cfg, &flows, &[]);
            assert!(jobs.iter().all(|j| j.senders.len() == j.receivers.len()));
        }
    }

    #[test]
    fn counts_and_sizes_past_what_a_process_can_run_are_refused() {
        let base = LoadConfig {
            messages: Some(10),
            ..LoadConfig::default()
        };
        let huge = 1_000_000_000_000usize;
        let cases = [
            (
                "pairs",
                LoadConfig {
                    pairs: huge,
                    ..base.clone()
                },
            ),
            (
                "fanout",
                LoadConfig {
                    fanout: Some(huge),
                    ..base.clone()
                },
            ),
            (
                "size",
                LoadConfig {
                    size: huge,
                    ..base.clone()
                },
            ),
            (
                "window",
                LoadConfig {
                    window: huge,
                    ..base.clone()
                },
            ),
            (
                "threads",
                LoadConfig {
                    threads: huge,
                    ..base.clone()
                },
            ),
            (
                "messages",
                LoadConfig {
                    messages: Some(0),
                    ..base.clone()
                },
            ),
            (
                "duration",
                LoadConfig {
                    messages: None,
                    duration: Some(Duration::ZERO),
                    ..base.clone()
                },
            ),
            (
                "duration",
                LoadConfig {
                    messages: None,
                    duration: Some(Duration::from_secs(1 << 40)),
                    ..base.clone()
                },
            ),
        ];
        for (name, cfg) in cases {
            match config::Plan::new(&cfg) {
                Err(LoadError::Config(why)) => assert!(why.starts_with(name), "{name}: {why}"),
                other => panic!("{name}: {:?}", other.map(|_| ())),
            }
        }
        assert!(config::Plan::new(&base).is_ok());
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
                seq: 0,
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
