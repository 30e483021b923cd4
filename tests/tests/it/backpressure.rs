//! Slow consumers: a session that stops reading while a sender floods it is
//! closed after `--slow-consumer-timeout` over `--max-pending-bytes`; meanwhile
//! and afterwards everyone else keeps exchanging messages, the flooding sender
//! included. Nothing is lost: what the cut session had not acked, and what was sent
//! after the cut, is delivered at the user's next login, in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringrouter_client::{Client, Status};
use ringrouter_proto::v1::server_frame;
use ringrouter_tests::{
    cfg, connect_small_rcvbuf, send_frame_bytes, tcp_queues, users_on_shards, Pair, Raw,
    RouterProc, T,
};

/// Bound on the whole flood; the router closes the slow consumer after ~300 ms.
const FLOOD_LIMIT: Duration = Duration::from_secs(20);
/// Messages per round between two confirmed probes.
const ROUND: usize = 64;

/// Offline queue bound of these routers: once the slow consumer is cut, its
/// messages are queued until this many, then senders get RATE_LIMITED.
const MAX_OFFLINE: &str = "1000";

/// A 1 KiB payload numbered `i`.
fn numbered(i: u64) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.resize(1024, 0x55);
    p
}

fn number_of(payload: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[..8]);
    u64::from_be_bytes(b)
}

/// Floods `to` with numbered 1 KiB messages, each round followed by a confirmed
/// probe (numbered too), until a probe says the offline queue `to` was moved to
/// when it was cut is full (RATE_LIMITED). Returns the client and the number of the
/// last confirmed probe.
fn flood(mut f: Client, to: String, sent: Arc<AtomicU64>) -> Result<(Client, u64), String> {
    let deadline = Instant::now() + FLOOD_LIMIT;
    let mut next = 0u64;
    let mut confirmed = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "{to} still has a session after {} messages",
                sent.load(Ordering::Relaxed)
            ));
        }
        let round: Vec<Vec<u8>> = (next..next + ROUND as u64).map(numbered).collect();
        next += ROUND as u64;
        let sent_round = f.send_many(&to, round.iter().map(|p| &p[..]));
        match sent_round {
            Ok(_) => {}
            Err(e) if e.code() == Some(Status::RateLimited) => return Ok((f, confirmed)),
            Err(e) => return Err(format!("flooding: {e}")),
        }
        sent.fetch_add(ROUND as u64, Ordering::Relaxed);
        match f.send_wait(&to, &numbered(next)) {
            Ok(_) => {
                confirmed = next;
                next += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.code() == Some(Status::RateLimited) => return Ok((f, confirmed)),
            Err(e) => return Err(format!("probe: {e}")),
        };
    }
}

fn slow_consumer_is_cut(shards: usize) {
    let shard_arg = shards.to_string();
    let r = RouterProc::start(&[
        "--shards",
        &shard_arg,
        "--max-pending-bytes",
        "64k",
        "--slow-consumer-timeout",
        "300ms",
        "--max-offline-per-user",
        MAX_OFFLINE,
    ]);
    let p = format!("slow{shards}-");
    // Flooder on shard 0, slow consumer on shard 1 when there are two.
    let (flooder, slow_user) = if shards >= 2 {
        let homes = users_on_shards(&p, shards);
        (homes[0].clone(), homes[1].clone())
    } else {
        (format!("{p}flooder"), format!("{p}slow"))
    };
    let healthy_user = format!("{p}healthy");

    // The slow consumer: logs in, then never reads. A small receive buffer makes
    // its kernel buffers fill after a few KiB instead of megabytes.
    let mut slow = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 8 * 1024));
    let lr = slow.login(&slow_user);
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    let mut healthy = r.client(&healthy_user);
    let mut pair = Pair::new(&r, &format!("{p}pair"), shards);
    pair.exchange("before the flood");

    let f = r.client_with(cfg(&flooder)).expect("flooder login");
    // A router that never lets the flooder's writes through fails the test
    // instead of hanging it.
    f.stream()
        .set_write_timeout(Some(FLOOD_LIMIT))
        .expect("set_write_timeout");
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let flood_thread = {
        let (to, sent) = (slow_user.clone(), sent.clone());
        thread::spawn(move || flood(f, to, sent))
    };

    // Meanwhile: the pair keeps exchanging (each exchange bounded by T).
    let mut during = 0;
    let mut slowest = Duration::ZERO;
    while !flood_thread.is_finished() {
        assert!(
            started.elapsed() < FLOOD_LIMIT + T,
            "the flood did not end (sent {})",
            sent.load(Ordering::Relaxed)
        );
        let t = Instant::now();
        pair.exchange("during the flood");
        slowest = slowest.max(t.elapsed());
        during += 1;
    }
    let (mut f, confirmed) = flood_thread
        .join()
        .expect("flood thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "{shards} shard(s): slow consumer cut after {sent} messages, {:?}; \
         {during} pair exchanges meanwhile, slowest {slowest:?}",
        started.elapsed()
    );
    assert!(during >= 1);

    // Afterwards: the pair, and the flooder towards a healthy user.
    pair.exchange("after the flood");
    f.send_wait(&healthy_user, b"to a healthy user")
        .expect("the flooder can still send");
    let m = healthy.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(
        (m.sender.as_str(), &m.payload[..]),
        (flooder.as_str(), &b"to a healthy user"[..])
    );

    // The slow consumer, reading at last: what fitted in the socket buffers, in
    // order, maybe a SLOW_CONSUMER error, then the end of the connection.
    // A hard cut can land inside a frame that was being written: a truncated
    // last frame is part of being cut.
    let (frames, _end) = slow.read_until_end(T);
    let mut delivered = 0u64;
    for fr in &frames {
        match &fr.kind {
            Some(server_frame::Kind::Deliver(d)) => {
                delivered += 1;
                assert_eq!(d.seq, delivered, "Delivers to the slow consumer in order");
            }
            Some(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code, Status::SlowConsumer as i32, "{e:?}")
            }
            other => panic!("unexpected frame for the slow consumer: {other:?}"),
        }
    }
    // The cut itself is shown by the end of the connection (`read_until_end` fails on
    // one still open) and by the flooder's RATE_LIMITED (only an offline queue gives it).
    // What reached the consumer's socket before the cut may be everything that was
    // sent: on a loaded host the shard can run its slow-consumer check after a stall
    // before it reaps the write the kernel already took (seen 2 runs in ~20).
    assert!(
        delivered <= sent,
        "no more delivered than sent ({delivered} of {sent})"
    );

    // The user comes back with a new session: it gets every message that was
    // accepted (none acked: the cut session never acked), in order, from the first
    // one, at least up to the last confirmed probe; then live messages again.
    let mut back = r.client(&slow_user);
    let mut expect = 0u64;
    while let Some(m) = back.recv(Some(Duration::from_secs(2))).expect("recv") {
        assert_eq!(number_of(&m.payload), expect, "backlog in order, no gap");
        expect += 1;
    }
    assert!(
        expect > confirmed,
        "every confirmed message came back: {expect} received, last confirmed {confirmed}"
    );
    f.send_wait(&slow_user, b"welcome back")
        .expect("send to the new session");
    let m = back.recv(Some(T)).expect("recv").expect("message");
    assert_eq!((m.seq, &m.payload[..]), (expect + 1, &b"welcome back"[..]));
}

#[test]
fn slow_consumer_is_cut_same_shard() {
    slow_consumer_is_cut(1);
}

#[test]
fn slow_consumer_is_cut_across_shards() {
    slow_consumer_is_cut(2);
}

#[test]
fn a_reader_that_keeps_up_is_not_cut() {
    // Same limits, but the receiver reads: far more than max-pending-bytes goes
    // through without a slow-consumer close.
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-pending-bytes",
        "64k",
        "--slow-consumer-timeout",
        "300ms",
    ]);
    let u = users_on_shards("keepup", 2);
    let mut tx = r.client_with(cfg(&u[0])).expect("login");
    let mut rx = r.client_with(cfg(&u[1])).expect("login");
    tx.stream()
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("set_write_timeout");
    const N: u64 = 4096; // 4 MiB of 1 KiB messages
    let reader = thread::spawn(move || -> Result<Client, String> {
        for i in 1..=N {
            match rx.recv(Some(T)) {
                Ok(Some(m)) if m.seq == i => {}
                Ok(Some(m)) => return Err(format!("seq {} instead of {i}", m.seq)),
                Ok(None) => return Err(format!("message {i} missing")),
                Err(e) => return Err(format!("message {i}: {e}")),
            }
        }
        Ok(rx)
    });
    let payload = [1u8; 1024];
    let to = u[1].clone();
    tx.send_many(&to, std::iter::repeat_n(&payload[..], N as usize))
        .expect("send");
    let mut rx = reader
        .join()
        .expect("reader")
        .unwrap_or_else(|e| panic!("{e}"));
    tx.send_wait(&to, b"still there")
        .expect("the reader still has its session");
    let m = rx.recv(Some(T)).expect("recv").expect("message");
    assert_eq!((m.seq, &m.payload[..]), (N + 1, &b"still there"[..]));
}

/// What the flood thread of [`one_slow_reader_pauses_its_sender`] saw.
struct Flood {
    raw: Raw,
    /// Bytes of Send frames the kernel took from the flooder.
    written: u64,
    /// Length of one Send frame.
    frame_len: u64,
}

/// Writes numbered 1 KiB Sends to `to` (no SendResult asked) until a write blocks for
/// the socket's write timeout: the router stopped reading the flooder, its buffers
/// filled. That is the pause; it must come within `limit`. Counts the bytes written
/// exactly (a write may take part of a frame).
fn flood_until_blocked(mut f: Raw, to: &str, limit: Duration) -> Result<Flood, String> {
    use std::io::{ErrorKind, Write};
    let frame_len = send_frame_bytes(to, &numbered(0), false, 0).len() as u64;
    let deadline = Instant::now() + limit;
    let mut written = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "the flooder was never paused: {written} bytes went in"
            ));
        }
        // A round from the first frame not written completely, resumed where the
        // last write stopped inside it.
        let first = written / frame_len;
        let mut bytes = Vec::new();
        for i in first..first + ROUND as u64 {
            bytes.extend(send_frame_bytes(to, &numbered(i), false, 0));
        }
        let mut at = (written % frame_len) as usize;
        while at < bytes.len() {
            match f.stream.write(&bytes[at..]) {
                Ok(0) => return Err("the router closed the flooder".into()),
                Ok(n) => {
                    at += n;
                    written += n as u64;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Flood {
                        raw: f,
                        written,
                        frame_len,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("flooding: {e}")),
            }
        }
    }
}

/// The slow consumer stays over its bound for the whole test (the timeout is long):
/// its sender must be paused (its writes block: the router stops reading it), the
/// router must hold no more for it than the bound allows, the traffic of everyone else
/// must keep flowing meanwhile, and the slow session must still work afterwards: once
/// it reads, it gets every message, in order, and the sender is resumed.
fn one_slow_reader_pauses_its_sender(shards: usize) {
    const MAX_PENDING: u64 = 64 * 1024;
    let shard_arg = shards.to_string();
    let r = RouterProc::start(&[
        "--shards",
        &shard_arg,
        "--max-pending-bytes",
        "64k",
        "--slow-consumer-timeout",
        "60s",
    ]);
    let p = format!("hol{shards}-");
    let (flooder, slow_user) = if shards >= 2 {
        let homes = users_on_shards(&p, shards);
        (homes[0].clone(), homes[1].clone())
    } else {
        (format!("{p}flooder"), format!("{p}slow"))
    };
    let mut slow = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 8 * 1024));
    assert_eq!(slow.login(&slow_user).status, Status::Ok as i32);
    let mut pair = Pair::new(&r, &format!("{p}pair"), shards);

    let f = r.raw_login(&flooder);
    // A paused sender's writes block once its socket buffers fill: after 2 s blocked
    // the write fails with a timeout, the pause observable.
    f.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("set_write_timeout");
    let flood_thread = {
        let to = slow_user.clone();
        thread::spawn(move || flood_until_blocked(f, &to, Duration::from_secs(20)))
    };
    let mut exchanges = 0;
    let mut slowest = Duration::ZERO;
    while !flood_thread.is_finished() || exchanges < 10 {
        let t = Instant::now();
        pair.exchange(&format!("exchange {exchanges}"));
        slowest = slowest.max(t.elapsed());
        exchanges += 1;
    }
    let Flood {
        raw: mut f,
        written,
        frame_len,
    } = flood_thread
        .join()
        .expect("flood thread")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{shards} shard(s): {written} bytes went in before the pause; {exchanges} exchanges meanwhile, slowest {slowest:?}");

    // Where the flood is now, from the kernel's socket queues: not yet taken by the
    // router (flooder's send queue, router's receive queue), past the router (router's
    // send queue to the slow consumer, its receive queue). The rest is inside the router.
    let (f_local, f_router) = (
        f.stream.local_addr().unwrap(),
        f.stream.peer_addr().unwrap(),
    );
    let (s_local, s_router) = (
        slow.stream.local_addr().unwrap(),
        slow.stream.peer_addr().unwrap(),
    );
    let q = |l, p| tcp_queues(l, p).expect("socket in /proc/net/tcp");
    let not_taken = q(f_local, f_router).0 + q(f_router, f_local).1;
    let past = q(s_router, s_local).0 + q(s_local, s_router).1;
    let taken = written - not_taken;

    // The slow consumer reads at last: every message the flooder wrote, in order.
    // The flooder finishes the frame it was writing (once the router reads it again)
    // and sends a confirmed fence.
    let messages = written.div_ceil(frame_len);
    let finish = {
        let rest = messages * frame_len - written;
        let to = slow_user.clone();
        thread::spawn(move || {
            let last = send_frame_bytes(&to, &numbered(messages - 1), false, 0);
            let tail = &last[last.len() - rest as usize..];
            f.stream
                .set_write_timeout(Some(T))
                .expect("set_write_timeout");
            f.write(tail).expect("the rest of the last frame");
            f.send_to(&to, b"fence", 1);
            assert_eq!(
                f.wait_send_result(1),
                Status::Ok as i32,
                "the sender resumed"
            );
        })
    };
    let mut deliver_len = 0u64;
    for i in 0..messages {
        let body = slow
            .next_body(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("message {i} of {messages}: {e:?}"));
        deliver_len = deliver_len.max(body.len() as u64 + 2);
        let frame = ringrouter_proto::codec::decode_server(body).expect("a frame");
        match frame.kind {
            Some(server_frame::Kind::Deliver(d)) => {
                assert_eq!(
                    (d.seq, number_of(&d.payload)),
                    (i + 1, i),
                    "in order, none lost"
                );
                if d.seq % 1000 == 0 {
                    slow.ack(d.seq);
                }
            }
            other => panic!("message {i}: expected a Deliver, got {other:?}"),
        }
    }
    let fence = slow.delivers(1, T).remove(0);
    assert_eq!(
        (fence.seq, &fence.payload[..]),
        (messages + 1, &b"fence"[..])
    );
    finish.join().expect("the flooder resumed after the drain");

    // Inside the router at the pause: what it took, less what it had passed on (counted
    // in Deliver frames, a little longer than the Send frames they came from).
    let past_as_send_bytes = past * frame_len / deliver_len;
    let inside = taken.saturating_sub(past_as_send_bytes);
    // The bound: the session's queue (--max-pending-bytes), plus one read of the
    // flooder (its reader checks the pause before each read, and a read takes at most
    // the read buffer: 64 KiB, or one frame of up to --max-frame-bytes, 1 MiB), plus,
    // across shards, the pipeline to the recipient's shard (PIPELINE_HIGH_WATER): what
    // the sender's shard forwarded before the recipient's shard, handling it, could
    // see the queue over its bound and pause the sender.
    let read_slack = 64 * 1024 + 1024 * 1024;
    let pipeline = if shards >= 2 {
        ringrouter::shard::PIPELINE_HIGH_WATER as u64
    } else {
        0
    };
    let bound = MAX_PENDING + read_slack + pipeline;
    eprintln!("inside the router at the pause: {inside} bytes (bound {bound}); taken {taken}, past {past}");
    assert!(
        inside <= bound,
        "the router held {inside} bytes for a session over its 64 KiB bound (allowed {bound})"
    );
    pair.exchange("after");
}

#[test]
fn one_slow_reader_pauses_its_sender_not_the_other_shards_traffic() {
    one_slow_reader_pauses_its_sender(2);
}

#[test]
fn one_slow_reader_pauses_its_same_shard_sender_not_the_others() {
    one_slow_reader_pauses_its_sender(1);
}

/// A sender the router stopped reading (its recipient is over its bound) is not cut at
/// the heartbeat timeout: what it sent waits unread in its socket, so it is alive, and
/// its Pong is behind that. Before, a pause longer than the heartbeat interval and
/// timeout closed it (and the slow reader, which keeps writing, the same way).
#[test]
fn a_sender_the_router_does_not_read_is_not_cut_at_the_heartbeat_timeout() {
    use ringrouter_proto::v1::{client_frame, Ping};
    use ringrouter_tests::client_frame_bytes;
    use std::io::Write;
    let r = RouterProc::start(&[
        "--max-pending-bytes",
        "64k",
        "--slow-consumer-timeout",
        "60s",
        "--heartbeat-interval",
        "200ms",
    ]);
    let (flooder, slow_user) = ("hbp-flooder", "hbp-slow");
    let mut slow = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 8 * 1024));
    assert_eq!(slow.login(slow_user).status, Status::Ok as i32);
    // The slow reader keeps writing (pings) while it reads nothing.
    let mut pinger = slow.stream.try_clone().expect("clone");
    let pinging = thread::spawn(move || {
        for nonce in 1..=40u64 {
            let ping = client_frame_bytes(client_frame::Kind::Ping(Ping { nonce }));
            if pinger.write_all(&ping).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let f = r.raw_login(flooder);
    f.stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("set_write_timeout");
    let Flood {
        raw: mut f,
        written,
        frame_len,
    } = flood_until_blocked(f, slow_user, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    // Paused for well past the heartbeat interval and timeout (200 + 400 ms).
    pinging.join().expect("pinger");
    let messages = written.div_ceil(frame_len);
    let finish = thread::spawn(move || {
        let rest = messages * frame_len - written;
        let last = send_frame_bytes(slow_user, &numbered(messages - 1), false, 0);
        f.stream
            .set_write_timeout(Some(T))
            .expect("set_write_timeout");
        f.write(&last[last.len() - rest as usize..])
            .expect("the rest of the last frame");
        f.send_to(slow_user, b"fence", 1);
        f.wait_send_result(1)
    });
    let mut got = 0u64;
    loop {
        let body = slow
            .next_body(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("after {got} of {messages}: {e:?}"));
        match ringrouter_proto::codec::decode_server(body)
            .expect("a frame")
            .kind
        {
            Some(server_frame::Kind::Deliver(d)) if d.payload[..] == b"fence"[..] => break,
            Some(server_frame::Kind::Deliver(d)) => {
                assert_eq!(number_of(&d.payload), got, "in order, none lost");
                got += 1;
                if got.is_multiple_of(1000) {
                    slow.ack(d.seq);
                }
            }
            Some(server_frame::Kind::Pong(_) | server_frame::Kind::Ping(_)) => {}
            other => panic!("the slow reader got {other:?}"),
        }
    }
    assert_eq!(got, messages);
    assert_eq!(
        finish.join().expect("flooder"),
        Status::Ok as i32,
        "the sender was kept"
    );
}
