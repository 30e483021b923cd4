//! Bounds: every byte a client can make the router hold has a limit. Each test plays
//! one hostile pattern against the real binary, reads the router's RSS from /proc while
//! it runs, and checks that a well-behaved pair beside it keeps delivering.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringrouter_proto::v1::{client_frame, server_frame, Ack, ListRooms, Ping};
use ringrouter_proto::Status;
use ringrouter_tests::{
    assert_error, cfg, client_frame_bytes, connect_small_rcvbuf, room_send_frame_bytes,
    send_frame_bytes, Driver, Pair, Raw, RouterProc, T,
};

const MIB: u64 = 1024;

/// Samples a process's RSS every 20 ms in a thread until stopped; gives the peak.
struct RssPeak {
    busy: Arc<AtomicBool>,
    sampler: thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let busy = Arc::new(AtomicBool::new(true));
        let b = busy.clone();
        let sampler = thread::spawn(move || {
            // 0 once the process is gone.
            let rss = || std::panic::catch_unwind(|| ringrouter_tests::rss_kib(pid)).unwrap_or(0);
            let mut peak = rss();
            while b.load(Ordering::Relaxed) {
                peak = peak.max(rss());
                thread::sleep(Duration::from_millis(20));
            }
            peak.max(rss())
        });
        RssPeak { busy, sampler }
    }

    /// The highest RSS seen, in KiB.
    fn stop(self) -> u64 {
        self.busy.store(false, Ordering::Relaxed);
        self.sampler.join().expect("RSS sampler")
    }
}

/// Writes `chunk` over and over until the router stops reading (a write blocks for
/// `stall`) or closes the connection; returns the bytes written and whether it stalled.
fn write_until_stalled(mut s: TcpStream, chunk: &[u8], stall: Duration, limit: u64) -> (u64, bool) {
    s.set_write_timeout(Some(stall)).expect("write timeout");
    let mut written = 0u64;
    while written < limit {
        match s.write(chunk) {
            Ok(0) => return (written, false),
            Ok(n) => written += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (written, true)
            }
            Err(_) => return (written, false),
        }
    }
    (written, false)
}

/// A logged-in client that sends requests which each get an answer (Pings, or empty
/// frames that get BAD_REQUEST) and never reads: its answers count against its own
/// budget, the router stops reading it, memory stays flat and the pair next to it
/// keeps exchanging. (Before: +1.35 GiB RSS in 2 s from one such client.)
#[test]
fn answers_to_a_client_that_never_reads_are_bounded() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-pending-bytes",
        "1MiB",
        // Long enough that only the pause of the reader can bound memory meanwhile.
        "--slow-consumer-timeout",
        "5s",
    ]);
    let mut pair = Pair::new(&r, "answers-", 2);
    pair.exchange("before");
    let ping = client_frame_bytes(client_frame::Kind::Ping(Ping { nonce: 7 }));
    let empty = vec![0u8]; // a frame with an empty body: "empty or unknown frame kind"
    for (name, one) in [("pings", ping), ("empty frames", empty)] {
        let base = r.rss_kib();
        let mut hostile = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 4096));
        hostile.login(&format!("answers-{}", name.len()));
        let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
        let rss = RssPeak::start(r.pid());
        let started = Instant::now();
        let stream = hostile.stream.try_clone().expect("clone the socket");
        let writer = thread::spawn(move || {
            write_until_stalled(stream, &chunk, Duration::from_millis(1500), 128 << 20)
        });
        while !writer.is_finished() {
            pair.exchange(name);
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{name}: no end"
            );
        }
        let (written, stalled) = writer.join().expect("writer");
        pair.exchange(name);
        let peak = rss.stop();
        eprintln!(
            "{name}: {} KiB written before the router stopped reading or cut it; \
             RSS {base} -> peak {peak} KiB",
            written / 1024
        );
        // The router stopped reading: what one client got in is a few socket buffers
        // and one read buffer of requests, not gigabytes.
        assert!(stalled, "{name}: the router kept reading ({written} bytes)");
        assert!(written < 32 << 20, "{name}: {written} bytes accepted");
        assert!(
            peak < base + 64 * MIB,
            "{name}: RSS grew from {base} to {peak} KiB"
        );
        // Over its bound for --slow-consumer-timeout (5 s): the client is cut. (Reading
        // now would make it a well-behaved client again: it is cut unread, which the
        // state of the router's end of the connection shows.) The pair keeps working.
        let local = hostile.stream.local_addr().expect("local addr");
        let router_end = hostile.stream.peer_addr().expect("peer addr");
        let cut = ringrouter_tests::wait_until(Duration::from_secs(30), || {
            pair.exchange(name);
            ringrouter_tests::tcp_state(router_end, local)
                != Some(ringrouter_tests::TCP_ESTABLISHED)
        });
        assert!(
            cut,
            "{name}: the client that never reads is still connected"
        );
    }
}

/// A client that reads every delivery and never acks is cut once it holds
/// `--max-unacked-bytes-per-session` (it reads, so it learns why), and nothing is lost:
/// what it held comes back at its next login, in order. (Before: retention was bounded
/// by count only, 262 144 × up to 1 MiB.)
#[test]
fn unacked_bytes_per_session_are_bounded_and_nothing_is_lost() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-unacked-bytes-per-session",
        "4MiB",
        "--max-pending-bytes",
        "16MiB",
    ]);
    let mut greedy = r.raw_login("greedy");
    let mut sender = r.client("feeder");
    const N: u64 = 40;
    const SIZE: usize = 256 << 10;
    let payload = |i: u64| {
        let mut p = i.to_be_bytes().to_vec();
        p.resize(SIZE, b'x');
        p
    };
    let base = r.rss_kib();
    let rss = RssPeak::start(r.pid());
    let reader = thread::spawn(move || {
        let (frames, _) = greedy.read_until_end(Duration::from_secs(20));
        frames
    });
    for i in 0..N {
        sender.send_wait("greedy", &payload(i)).expect("send");
    }
    let frames = reader.join().expect("reader");
    let delivered = frames
        .iter()
        .filter(|f| matches!(f.kind, Some(server_frame::Kind::Deliver(_))))
        .count() as u64;
    let err = frames
        .iter()
        .find_map(|f| match &f.kind {
            Some(server_frame::Kind::Error(e)) => Some(e.clone()),
            _ => None,
        })
        .expect("the cut client is told why");
    assert_error(&err, Status::SlowConsumer);
    assert!(err.reason.contains("acked"), "{err:?}");
    // 4 MiB of 256 KiB payloads: the 17th delivery passes the bound.
    assert!(
        (16..=18).contains(&delivered),
        "{delivered} deliveries before the cut"
    );
    let peak = rss.stop();
    assert!(peak < base + 64 * MIB, "RSS grew from {base} to {peak} KiB");
    // Its next login gets all of them, in order (the cut session never acked).
    let mut back = r.client("greedy");
    for i in 0..N {
        let m = back.recv(Some(T)).expect("recv").expect("a message");
        assert_eq!(&m.payload[..8], &i.to_be_bytes(), "message {i} in order");
    }
}

/// Floods an offline user with 256 KiB messages: the store queue of the shard is
/// bounded in bytes (`--max-store-queue-bytes`: senders pause), and so is the user's
/// queue on disk (`--max-offline-bytes-per-user`: RATE_LIMITED past it). (Before: +0.95
/// GiB RSS from 1.5 GiB sent at an offline user.) History is off here: with it, every
/// message is written a second time (history's own memory bound, `--history-memory-bytes`,
/// has its test in `history`), and the two together crossed this test's 160 MiB bound on
/// a slow CI machine (165 MiB) while fjall's memtables waited for their flush.
#[test]
fn a_flood_at_an_offline_user_is_bounded_in_memory_and_on_disk() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-store-queue-bytes",
        "4MiB",
        "--max-offline-bytes-per-user",
        "96MiB",
        "--history-per-conversation",
        "0",
    ]);
    r.visit("sleeper");
    let mut pair = Pair::new(&r, "flood-", 2);
    let base = r.rss_kib();
    let rss = RssPeak::start(r.pid());
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (addr, sent) = (r.connect_addr(), sent.clone());
        thread::spawn(move || {
            let mut c = ringrouter_client::Client::connect(addr, cfg("flooder")).expect("login");
            let payload = vec![b'f'; 256 << 10];
            loop {
                // 16 unconfirmed, then one confirmed: stops at the first refusal.
                let round = (0..16).map(|_| &payload[..]);
                if let Err(e) = c.send_many("sleeper", round) {
                    return e;
                }
                sent.fetch_add(16, Ordering::Relaxed);
                match c.send_wait("sleeper", &payload) {
                    Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return e,
                };
            }
        })
    };
    let started = Instant::now();
    while !flooder.is_finished() {
        pair.exchange("during the flood");
        assert!(started.elapsed() < Duration::from_secs(120), "no end");
    }
    let refused = flooder.join().expect("flooder");
    let peak = rss.stop();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "{} MiB accepted for the offline user; RSS {base} -> peak {peak} KiB",
        sent / 4
    );
    assert_eq!(refused.code(), Some(Status::RateLimited), "{refused}");
    // 96 MiB of 256 KiB messages is 384; the stored records are a little bigger.
    assert!((360..=400).contains(&sent), "{sent} messages accepted");
    assert!(
        peak < base + 160 * MIB,
        "RSS grew from {base} to {peak} KiB"
    );
    pair.exchange("after the flood");
}

/// The offline cap in bytes: past it the sender gets RATE_LIMITED (reject), or the
/// oldest messages make room (drop-oldest).
#[test]
fn offline_bytes_per_user_cap_rejects_or_drops_the_oldest() {
    for policy in ["reject", "drop-oldest"] {
        let r = RouterProc::start(&[
            "--max-offline-bytes-per-user",
            "64KiB",
            "--offline-overflow",
            policy,
        ]);
        r.visit("away");
        let mut s = r.client("sender");
        let mut accepted = 0u64;
        for i in 0..100u64 {
            let mut p = i.to_be_bytes().to_vec();
            p.resize(1024, b'.');
            match s.send_wait("away", &p) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert_eq!(e.code(), Some(Status::RateLimited), "{policy}: {e}");
                    break;
                }
            }
        }
        let mut back = r.client("away");
        let mut got = Vec::new();
        while let Some(m) = back.recv(Some(Duration::from_millis(500))).expect("recv") {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m.payload[..8]);
            got.push(u64::from_be_bytes(b));
        }
        eprintln!("{policy}: {accepted} accepted, {} stored", got.len());
        // 64 KiB holds fewer than 64 records of 1 KiB plus their names.
        assert!(
            (50..64).contains(&got.len()),
            "{policy}: {} stored",
            got.len()
        );
        match policy {
            "reject" => {
                assert_eq!(
                    accepted,
                    got.len() as u64,
                    "reject: what was accepted is stored"
                );
                assert_eq!(got, (0..accepted).collect::<Vec<_>>());
            }
            _ => {
                assert_eq!(accepted, 100, "drop-oldest never refuses");
                let first = 100 - got.len() as u64;
                assert_eq!(got, (first..100).collect::<Vec<_>>(), "the newest are kept");
            }
        }
    }
}

/// Open auth: a user with nothing queued and no rooms, not seen for
/// `--forget-idle-users-after`, is forgotten (a storm of unique names does not grow the
/// store for ever); a user with queued messages, and one still logged in, are kept.
#[test]
fn idle_users_are_forgotten() {
    let r = RouterProc::start(&["--forget-idle-users-after", "1s"]);
    r.visit("mailbox");
    let mut online = r.client("online");
    let mut s = r.client("sender");
    s.send_wait("mailbox", b"kept for later").expect("stored");
    r.visit("ghost");
    s.send_wait("ghost", b"hello").expect("ghost exists");
    let mut g = r.client("ghost");
    assert_eq!(
        &g.recv(Some(T)).expect("recv").expect("msg").payload[..],
        b"hello"
    );
    g.ack_all().expect("ack");
    g.close().expect("logout");
    thread::sleep(Duration::from_millis(300));
    // Idle for longer than the expiry (a sweep runs every quarter of it). Watched by
    // name, not by sending: a message would give the user a queue.
    let forgotten = ringrouter_tests::wait_until(Duration::from_secs(10), || {
        s.list_users("ghost").expect("list users").is_empty()
    });
    assert!(
        forgotten,
        "an idle user with nothing queued was not forgotten"
    );
    assert_eq!(
        metric_sum(&r.metrics(), "ringrouter_store_users_forgotten_total"),
        1.0,
        "the sweep's counter"
    );
    let e = s.send_wait("ghost", b"anyone?").expect_err("ghost is gone");
    assert_eq!(e.code(), Some(Status::NotFound), "{e}");
    // Its direct conversation went with it (history is on by default): nothing of it
    // is kept for a name that may never come back.
    let convs = s.conversations(10, 0).expect("conversations");
    assert!(
        convs.iter().all(|c| c.user.as_deref() != Some("ghost")),
        "{convs:?}"
    );
    // Kept: the user with a queue, and the one still logged in.
    s.send_wait("mailbox", b"still there")
        .expect("a user with a queue is kept");
    s.send_wait("online", b"still online")
        .expect("a logged-in user is kept");
    let m = online.recv(Some(T)).expect("recv").expect("msg");
    assert_eq!(&m.payload[..], b"still online");
    online.close().expect("logout");
    s.send_wait("online", b"stored for the next login")
        .expect("a user seen a moment ago is kept");
}

/// Two devices of a user get a message; one acks it, the other leaves without acking:
/// its next login gets it again. The same in memory and in sync durability (in sync
/// mode the ack of the first device used to remove it from the store).
#[test]
fn an_ack_of_one_device_keeps_what_another_device_holds_unacked() {
    for durability in ["memory", "sync"] {
        let r = RouterProc::start(&["--durability", durability, "--shards", "2"]);
        let mut a = r.raw_login("twin");
        let mut b = r.raw_login("twin");
        let mut s = r.client("writer");
        s.send_wait("twin", b"for both").expect("send");
        let da = a.delivers(1, T);
        let db = b.delivers(1, T);
        assert_eq!(
            (&da[0].payload[..], &db[0].payload[..]),
            (&b"for both"[..], &b"for both"[..])
        );
        a.ack(da[0].seq);
        // The ack is handled before the other device leaves.
        a.send(client_frame::Kind::Ping(Ping { nonce: 1 }));
        assert!(matches!(a.next_kind(T), server_frame::Kind::Pong(_)));
        // Device a is still online; the unacked copy of b waits for b's next login.
        b.logout();
        let mut b2 = r.raw_login("twin");
        let again = b2.collect_delivers(1, Duration::from_secs(3));
        assert_eq!(
            again.iter().map(|d| &d.payload[..]).collect::<Vec<_>>(),
            vec![&b"for both"[..]],
            "{durability}: the device that did not ack gets it again"
        );
        assert_eq!(
            again[0].msg_id, db[0].msg_id,
            "{durability}: same msg_id (dedupe)"
        );
    }
}

/// A client cut for not answering heartbeats reads its TIMEOUT error before the end of
/// the connection (the error used to be queued and the socket shut at once).
#[test]
fn the_reason_of_a_heartbeat_close_arrives() {
    let r = RouterProc::start(&[
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-timeout",
        "400ms",
    ]);
    let mut silent = r.raw_login("silent");
    let (frames, _) = silent.read_until_end(Duration::from_secs(5));
    let last = frames.last().and_then(|f| f.kind.clone());
    match last {
        Some(server_frame::Kind::Error(e)) => assert_error(&e, Status::Timeout),
        other => panic!("expected a TIMEOUT error last, got {other:?} ({frames:?})"),
    }
}

/// While a session was `loading`, live messages went to `held` with no count bound and
/// no backpressure; only `held_bytes` (payload bytes) was counted, so empty payloads
/// cost ~100 B of router memory each and never tripped the slow-consumer check.
///
/// 500 000 empty messages for a session paging its backlog: the router's RSS stays
/// within 24 MiB of where it was (unbounded it grew ~50 MiB), and the session meets
/// its bound (the held messages count against `--max-unacked-per-session`): it is
/// closed SLOW_CONSUMER and what it held goes back to the offline queue.
#[test]
fn live_messages_held_behind_a_backlog_are_bounded() {
    // A small offline queue: once bob is cut, the rest of the flood is refused
    // instead of growing the store's memtables (bounded on their own, see README).
    // No history, and a small store queue: what is in flight to the storage thread
    // (the offline queue's writes, history records) is bounded by
    // --max-store-queue-bytes (64 MiB by default, tested on its own), not by what this
    // test measures, and a storage thread slowed by a loaded host filled more of it
    // (RSS grew 15-18 MiB under parallel tests against 8 MiB alone).
    let r = RouterProc::start(&[
        "--history-per-conversation",
        "0",
        "--max-store-queue-bytes",
        "2MiB",
        "--shards",
        "1",
        "--max-unacked-per-session",
        "1500",
        "--max-offline-per-user",
        "5000",
    ]);
    r.visit("bob");
    let mut a = r.raw_login("alice");
    crate::offline::queue_numbered(&mut a, "bob", 1100);
    let mut b = r.raw_login("bob");
    assert_eq!(b.delivers(1024, T).len(), 1024);
    // The router has sent the page: its memory from here on is what bob makes it hold.
    a.ping_pong(1);
    let before = r.rss_kib();
    let one = send_frame_bytes("bob", b"", false, 0);
    let mut statuses = Vec::new();
    for fence in 1000..1010 {
        let mut chunk = Vec::with_capacity(one.len() * 50_000);
        for _ in 0..50_000 {
            chunk.extend_from_slice(&one);
        }
        chunk.extend(send_frame_bytes("bob", b"", true, fence));
        a.write(&chunk).unwrap();
        // OK while held or queued; RATE_LIMITED once bob's offline queue is full.
        statuses.push(a.wait_send_result_any(fence));
    }
    let after = r.rss_kib();
    eprintln!("router RSS {before} -> {after} KiB holding 500k empty messages");
    // Measured: 11-13 MiB alone (both before and after the history log and idle-memory
    // changes), 18 MiB once under a loaded CI run. Unbounded, the held messages alone
    // were ~100 B each: ~50 MiB.
    assert!(
        after.saturating_sub(before) < 24 * 1024,
        "router RSS grew {} MiB holding 500k empty messages for one session",
        after.saturating_sub(before) / 1024
    );
    // bob's session: the rest of what it was sent, then SLOW_CONSUMER and the end.
    let (frames, end) = b.read_until_end(T);
    let errors: Vec<_> = frames
        .iter()
        .filter_map(|f| match &f.kind {
            Some(server_frame::Kind::Error(e)) => Some(e.clone()),
            Some(server_frame::Kind::Deliver(_)) | Some(server_frame::Kind::Ping(_)) => None,
            other => panic!("bob got {other:?}"),
        })
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?} then {end:?}");
    assert_error(&errors[0], Status::SlowConsumer);
    eprintln!("fence statuses: {statuses:?}");
}

/// Opens `n` sessions of distinct users on `addr` (logins pipelined over windows of
/// connections) and returns them once every LoginResult is in.
fn idle_sessions(addr: std::net::SocketAddr, prefix: &str, n: usize) -> Vec<TcpStream> {
    use ringrouter_proto::codec::{decode_server, encode_frame, next_frame};
    use ringrouter_proto::v1::{ClientFrame, Login};
    use std::io::Read;
    let mut all = Vec::with_capacity(n);
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for window in users.chunks(100) {
        let mut open = Vec::new();
        for user in window {
            let mut s = TcpStream::connect(addr).expect("connect");
            let mut out = bytes::BytesMut::new();
            let login = Login {
                request_id: 1,
                user: user.clone(),
                device: "idle".into(),
                ..Default::default()
            };
            encode_frame(
                &ClientFrame {
                    kind: Some(client_frame::Kind::Login(login)),
                },
                &mut out,
            );
            s.write_all(&out).expect("login");
            open.push(s);
        }
        for mut s in open {
            s.set_read_timeout(Some(T)).expect("timeout");
            let mut buf = bytes::BytesMut::new();
            let mut scratch = [0u8; 512];
            loop {
                if let Some(body) = next_frame(&mut buf, 1 << 20).expect("frame") {
                    if let Some(server_frame::Kind::LoginResult(r)) =
                        decode_server(body).expect("decode").kind
                    {
                        assert_eq!(r.status, Status::Ok as i32, "{r:?}");
                        break;
                    }
                    continue;
                }
                let k = s.read(&mut scratch).expect("LoginResult");
                assert!(k > 0, "closed before its LoginResult");
                buf.extend_from_slice(&scratch[..k]);
            }
            all.push(s);
        }
    }
    all
}

/// Idle logged-in sessions cost little memory: no read buffer, no write buffer (issue
/// "Lead nats-server and redis"; ringrouter-idle measures it at 10 000+ sessions).
#[test]
fn idle_sessions_hold_no_buffers() {
    // Sessions opened here (this process and the router each hold one fd a session).
    const N: usize = 2000;
    // The bound, KiB a session. The release router measured 17-18 KiB a session before
    // the buffers were released, 8-9 after, and 3.5-4.2 once finished pre-login tasks
    // were no longer kept alive (ringrouter-idle, 10 000-19 000 sessions, both drivers;
    // the issue's target is 4 KiB). This test runs the debug build (larger futures:
    // 5.5-6.5 KiB measured) at 2 000 sessions (allocator pages and table growth weigh
    // more), so the bound leaves ~25% slack: a read buffer page (4 KiB) or a leaked
    // pre-login task (~5 KiB) per session would cross it.
    const BOUND_KIB: f64 = 8.0;
    for driver in [Driver::Default, Driver::Legacy] {
        let r = RouterProc::start_with(&["--shards", "2"], driver);
        // Warm up: the shards' first sessions grow tables and pools.
        let warm = idle_sessions(r.connect_addr(), "warm", 50);
        thread::sleep(Duration::from_millis(1500));
        let before = r.rss_kib();
        let sessions = idle_sessions(r.connect_addr(), "idle", N);
        // The ticker (every 500 ms here) releases what the logins used.
        thread::sleep(Duration::from_millis(2500));
        let after = r.rss_kib();
        let per = after.saturating_sub(before) as f64 / N as f64;
        eprintln!("{driver:?}: {per:.2} KiB RSS per idle session ({before} -> {after} KiB)");
        assert!(
            per <= BOUND_KIB,
            "{driver:?}: {per:.2} KiB per idle session, bound {BOUND_KIB}"
        );
        drop((sessions, warm));
    }
}

/// Connections that come and go leave nothing behind: memory does not grow with the
/// number of connections ever accepted. (Every finished connection's pre-login task
/// stayed allocated until shutdown, ~4 KiB each, while a waker of it sat in the
/// shard's shutdown signal.)
#[test]
fn finished_connections_leave_no_memory_behind() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 500;
    for driver in [Driver::Default, Driver::Legacy] {
        let r = RouterProc::start_with(&["--shards", "2"], driver);
        // Warm up: tables, pools and allocator pages of the first connections.
        drop(idle_sessions(r.connect_addr(), "warm", PER_ROUND));
        thread::sleep(Duration::from_millis(1500));
        let before = r.rss_kib();
        for _ in 0..ROUNDS {
            // The same users each round: per-user state does not grow either.
            drop(idle_sessions(r.connect_addr(), "churn", PER_ROUND));
        }
        thread::sleep(Duration::from_millis(2500));
        let after = r.rss_kib();
        let grown = after.saturating_sub(before);
        let per = grown as f64 * 1024.0 / (ROUNDS * PER_ROUND) as f64;
        eprintln!("{driver:?}: {per:.0} B RSS per finished connection ({before} -> {after} KiB)");
        // 5 000 connections: the leak was 5.6 KiB each (debug build); a bound of
        // 1 KiB each leaves room for allocator noise (0-400 B measured).
        assert!(
            per <= 1024.0,
            "{driver:?}: {per:.0} B per finished connection ({before} -> {after} KiB)"
        );
    }
}

/// A client that pipelines many cheap requests with big answers (ListRooms, ~3 KB each)
/// and reads none. Each is the last frame read until its answer is written, so what
/// waits for it is one answer, whatever `--max-requests-in-flight` allows. Before, the
/// answers piled up to the hard cap (`--max-pending-bytes` + 32 MiB) and it was closed as
/// a slow consumer; before that, 200 000 such requests would have queued ~600 MB.
#[test]
fn pipelined_requests_with_big_answers_hold_one_answer() {
    let r = RouterProc::start(&[
        "--max-pending-bytes",
        "65536",
        "--slow-consumer-timeout",
        "60",
        "--max-requests-in-flight",
        "1000000",
    ]);
    let (mut a, _n, rooms, writer) = pipeline_list_rooms(&r, 200_000, 64);
    // (The gauges are a tick old: 2.5 s into the pipeline, at least one has passed.)
    let pending = metric_sum(&r.metrics(), "ringrouter_pending_bytes");
    assert!(
        pending < 64.0 * 1024.0,
        "{pending} bytes of answers queued for a client that reads nothing"
    );
    // Not cut: it reads, and its answers come, in order.
    for _ in 0..100 {
        match a.next_kind(T) {
            server_frame::Kind::RoomResult(res) => assert_eq!(res.rooms.len(), rooms),
            other => panic!("{other:?}"),
        }
    }
    drop(a);
    let _ = writer.join();
}

/// Logs in a user in 40 rooms with long names and writes `n` ListRooms (~3 KB answers
/// each, from the store) from a thread, reading nothing for 2.5 s; checks that the router's
/// RSS grew by less than `max_mib` meanwhile. Gives the client, the requests written, the
/// rooms and the writer.
fn pipeline_list_rooms(
    r: &RouterProc,
    n: usize,
    max_mib: u64,
) -> (Raw, usize, usize, thread::JoinHandle<()>) {
    let mut a = r.raw_login("bigask");
    let rooms = 40;
    for i in 0..rooms {
        let name = format!("{}-{i:02}", "r".repeat(56));
        assert_eq!(a.create_room(&name, "").status, Status::Ok as i32);
    }
    let one = client_frame_bytes(client_frame::Kind::ListRooms(ListRooms { request_id: 7 }));
    let before = r.rss_kib();
    let mut all = Vec::with_capacity(one.len() * n);
    for _ in 0..n {
        all.extend_from_slice(&one);
    }
    // Written from a thread: the router stops reading this client on the way.
    let mut w = a.stream.try_clone().expect("clone the socket");
    let writer = thread::spawn(move || {
        let _ = w.write_all(&all);
    });
    thread::sleep(Duration::from_millis(2500));
    let grown_mib = r.rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < max_mib,
        "{grown_mib} MiB of answers queued for a client that reads nothing"
    );
    (a, n, rooms, writer)
}

/// The same pipeline at the default `--max-requests-in-flight` (16): the router stops
/// reading the client once 16 of its requests wait on the store, and its answers stay
/// within `--max-pending-bytes` plus those 16, so a client that reads late is not closed:
/// every request is answered.
#[test]
fn pipelined_store_requests_are_paced_not_closed() {
    let r = RouterProc::start(&[
        "--max-pending-bytes",
        "65536",
        "--slow-consumer-timeout",
        "60",
    ]);
    // Its 64 KiB bound and 16 answers in flight: a few MiB at most.
    let (mut a, n, rooms, writer) = pipeline_list_rooms(&r, 60_000, 16);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = 0;
    while answers < n {
        match a.next_kind(deadline.saturating_duration_since(Instant::now())) {
            server_frame::Kind::RoomResult(res) => {
                assert_eq!(res.status, Status::Ok as i32, "{res:?}");
                assert_eq!(res.rooms.len(), rooms);
                answers += 1;
            }
            server_frame::Kind::Ping(_) => {}
            other => panic!("after {answers} answers: {other:?}"),
        }
    }
    let _ = writer.join();
    assert_eq!(a.ping_pong(3).len(), 0, "nothing else was queued");
}

/// `--max-requests-in-flight`: with 4 of its requests waiting on the store, a session's
/// next frames are not read until one is answered. A Ping written after 200 History
/// requests in one write is answered (at once, on the shard) only after at least 196 of
/// them; without the bound it would be handled with them and its Pong would come first.
#[test]
fn a_session_at_its_requests_in_flight_reads_nothing_more() {
    let r = RouterProc::start(&["--max-requests-in-flight", "4"]);
    let mut a = r.raw_login("asker");
    let _peer = r.raw_login("peer");
    let n = 200usize;
    let (at, statuses) = requests_then_ping(&mut a, n, |id| {
        client_frame::Kind::History(ringrouter_proto::v1::History {
            request_id: id,
            user: "peer".into(),
            ..Default::default()
        })
    });
    assert!(
        statuses.iter().all(|&s| s == Status::Ok as i32),
        "{statuses:?}"
    );
    assert!(at >= n - 4, "the Pong came after {at} of {n} answers");
}

/// Writes `n` requests (`make(request_id)`, ids 1 to `n`) then a Ping, in one write, and
/// reads every answer (they come in order) and the Pong: how many answers came before the
/// Pong, and their statuses. History, RoomInfo and GetPresence answers; presence and
/// contact notices are skipped.
fn requests_then_ping(
    a: &mut Raw,
    n: usize,
    make: impl Fn(u64) -> client_frame::Kind,
) -> (usize, Vec<i32>) {
    let mut all = Vec::new();
    for id in 1..=n as u64 {
        all.extend_from_slice(&client_frame_bytes(make(id)));
    }
    all.extend_from_slice(&client_frame_bytes(client_frame::Kind::Ping(Ping {
        nonce: 9,
    })));
    a.write(&all).expect("the requests fit the socket buffers");
    let mut statuses = Vec::new();
    let mut pong_at = None;
    while pong_at.is_none() || statuses.len() < n {
        let (id, status) = match a.next_kind(T) {
            server_frame::Kind::HistoryResult(h) => (h.request_id, h.status),
            server_frame::Kind::RoomResult(r) => (r.request_id, r.status),
            server_frame::Kind::PresenceResult(p) => (p.request_id, p.status),
            server_frame::Kind::Pong(p) if p.nonce == 9 => {
                pong_at = Some(statuses.len());
                continue;
            }
            server_frame::Kind::Presence(_) | server_frame::Kind::ContactEvent(_) => continue,
            other => panic!("{other:?}"),
        };
        statuses.push(status);
        assert_eq!(id, statuses.len() as u64, "answered in order");
    }
    (pong_at.unwrap_or(0), statuses)
}

/// Pipelined History pages of big messages (~0.9 MiB each) to a client that reads late:
/// it is paced (each page is written before the next request is read), not closed, and
/// all 80 are answered in order. (Before pages were big answers, 16 in flight fit under
/// the hard cap with the outbound bound; without that bound they piled past it.)
#[test]
fn pipelined_big_history_pages_are_paced_not_closed() {
    let r = RouterProc::start(&["--shards", "1", "--slow-consumer-timeout", "60"]);
    seed_big_history(&r, "pages-a", "pages-b", 60);
    let mut reader = r.raw_login("pages-a");
    let n = 80u64;
    reader
        .write(&history_requests("pages-b", n))
        .expect("the requests fit the socket buffers");
    thread::sleep(Duration::from_millis(1500));
    read_history_answers(&mut reader, n);
}

/// `from` sends `to` `count` messages of 100 kB (History pages of ~0.9 MiB).
fn seed_big_history(r: &RouterProc, from: &str, to: &str, count: u8) {
    let mut a = r.client(from);
    let _b = r.client(to);
    for i in 0..count {
        a.send_wait(to, &vec![i; 100_000]).unwrap();
    }
}

/// `n` History requests (ids 1..=n, 50 messages each) of the conversation with `peer`.
fn history_requests(peer: &str, n: u64) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 1..=n {
        all.extend_from_slice(&client_frame_bytes(client_frame::Kind::History(
            ringrouter_proto::v1::History {
                request_id: i,
                user: peer.into(),
                limit: 50,
                ..Default::default()
            },
        )));
    }
    all
}

/// Reads the answers to [`history_requests`]: all `n`, in order, each a page.
fn read_history_answers(reader: &mut Raw, n: u64) {
    for want in 1..=n {
        match reader.next_kind(T) {
            server_frame::Kind::HistoryResult(h) => {
                assert_eq!((h.request_id, h.status), (want, Status::Ok as i32));
                assert!(h.messages.len() >= 5, "{} messages", h.messages.len());
            }
            other => panic!("answer {want}: {other:?}"),
        }
    }
}

/// Requests that cost a few bytes and are answered with up to a frame (History pages) do
/// not pile answers on a socket that is not read: the reader takes the next frame only
/// once the last big answer is written. 16 pipelined History requests of ~0.9 MiB pages
/// to a client that reads nothing held ~14 MiB of answers (16 in flight at once); now
/// about one page, and every answer comes once the client reads, in order.
#[test]
fn big_answers_to_a_client_that_does_not_read_are_one_at_a_time() {
    let r = RouterProc::start(&["--shards", "1", "--slow-consumer-timeout", "60"]);
    seed_big_history(&r, "hoard-a", "hoard-b", 30);
    let mut reader = Raw::from_stream(ringrouter_tests::connect_small_rcvbuf(r.addr, 4096));
    assert_eq!(reader.login("hoard-a").status, Status::Ok as i32);
    let n = 16u64;
    let mut all = history_requests("hoard-b", n);
    all.extend_from_slice(&client_frame_bytes(client_frame::Kind::Ping(Ping {
        nonce: 99,
    })));
    reader
        .write(&all)
        .expect("the requests fit the socket buffers");
    // Two ticks of the gauges (one a second).
    thread::sleep(Duration::from_millis(2500));
    let pending = metric_sum(&r.metrics(), "ringrouter_pending_bytes");
    assert!(
        pending > 0.0 && pending < 2.5 * 1024.0 * 1024.0,
        "{pending} bytes of answers queued for a client that reads nothing"
    );
    read_history_answers(&mut reader, n);
    match reader.next_kind(T) {
        server_frame::Kind::Pong(p) => assert_eq!(p.nonce, 99),
        other => panic!("the Pong: {other:?}"),
    }
}

/// A reader waiting for its own big answer still takes the Ack that came behind the
/// request in the same write. The answer (an 8 MB History page) waits on a socket the
/// client does not read for a while; meanwhile deliveries come, and without that Ack they
/// would take the session past `--max-unacked-per-session` (it was cut, Unacked).
#[test]
fn an_ack_behind_a_big_request_is_taken_while_the_answer_waits() {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-frame-bytes",
        "16MiB",
        "--max-payload-bytes",
        "1MiB",
        "--max-pending-bytes",
        "64MiB",
        "--slow-consumer-timeout",
        "60",
        "--max-unacked-per-session",
        "100",
    ]);
    seed_big_history(&r, "held-a", "held-peer", 80);
    let mut a = Raw::from_stream(connect_small_rcvbuf(r.addr, 4096));
    assert_eq!(a.login("held-a").status, Status::Ok as i32);
    let mut b = r.raw_login("held-b");
    for i in 0..90u64 {
        b.send_to("held-a", b"before", 1000 + i);
    }
    let got = a.delivers(90, T);
    let last = got.last().map(|d| d.seq).expect("90 deliveries");
    // The big request and the Ack of all 90 in one write.
    let mut both = client_frame_bytes(client_frame::Kind::History(ringrouter_proto::v1::History {
        request_id: 7,
        user: "held-peer".into(),
        limit: 80,
        ..Default::default()
    }));
    both.extend_from_slice(&client_frame_bytes(client_frame::Kind::Ack(Ack {
        up_to_seq: last,
    })));
    a.write(&both).expect("write");
    thread::sleep(Duration::from_millis(300));
    // 20 more while the page waits unread: 110 unacked without the Ack.
    for i in 0..20u64 {
        b.send_to("held-a", b"during", 2000 + i);
    }
    thread::sleep(Duration::from_millis(700));
    let mut page = false;
    let mut during = 0;
    while !page || during < 20 {
        match a.next_kind(T) {
            server_frame::Kind::HistoryResult(h) => {
                assert_eq!(h.status, Status::Ok as i32, "{h:?}");
                page = true;
            }
            server_frame::Kind::Deliver(d) => {
                assert_eq!(&d.payload[..], b"during");
                during += 1;
            }
            server_frame::Kind::Ping(_) => {}
            other => panic!("after the page {page}, {during} deliveries: {other:?}"),
        }
    }
}

/// Room requests count too, wherever they are answered: 200 RoomInfo for a room homed on
/// the other shard, then a Ping, with `--max-requests-in-flight 4`: the Pong comes after
/// at least 196 answers (before, at once).
#[test]
fn room_requests_to_another_shard_count_as_in_flight() {
    let r = RouterProc::start(&["--shards", "2", "--max-requests-in-flight", "4"]);
    let u = ringrouter_tests::users_on_shards("inflight", 2);
    let mut a = r.raw_login(&u[0]);
    // A room named like a user of shard 1 is homed there (one hash for both).
    let room = u[1].clone();
    assert_eq!(a.create_room(&room, "").status, Status::Ok as i32);
    let n = 200usize;
    let (at, statuses) = requests_then_ping(&mut a, n, |id| {
        client_frame::Kind::RoomInfo(ringrouter_proto::v1::RoomInfo {
            request_id: id,
            room: room.clone(),
        })
    });
    assert!(
        statuses.iter().all(|&s| s == Status::Ok as i32),
        "{statuses:?}"
    );
    assert!(at >= n - 4, "the Pong came after {at} of {n} answers");
}

/// [`requests_then_ping`] with `n` GetPresence for `target`.
fn presence_burst(a: &mut Raw, target: &str, n: usize) -> (usize, Vec<i32>) {
    requests_then_ping(a, n, |id| {
        client_frame::Kind::GetPresence(ringrouter_proto::v1::GetPresence {
            request_id: id,
            user: target.to_owned(),
        })
    })
}

/// GetPresence of a contact homed on the other shard counts against
/// `--max-requests-in-flight` until answered (before, a client could pipeline any number,
/// each a load of the target's contact list there); a stranger's is refused on the
/// asker's shard, at once, from the asker's own list.
#[test]
fn presence_requests_count_as_in_flight_and_strangers_cost_nothing_elsewhere() {
    let r = RouterProc::start(&["--shards", "2", "--max-requests-in-flight", "4"]);
    let u = ringrouter_tests::users_on_shards("presfl", 2);
    let (a, b) = (u[0].as_str(), u[1].as_str());
    let mut ca = r.client(a);
    let mut cb = r.client(b);
    ca.contact_request(b).unwrap();
    cb.contact_accept(a).unwrap();
    thread::sleep(Duration::from_millis(200));
    let mut raw = r.raw_login(a);
    let n = 200;
    let (at, statuses) = presence_burst(&mut raw, b, n);
    assert!(
        statuses.iter().all(|&s| s == Status::Ok as i32),
        "{statuses:?}"
    );
    assert!(at >= n - 4, "the Pong came after {at} of {n} answers");
    // Strangers (names homed on the other shard, most without an account): FORBIDDEN,
    // answered here, so the Ping is not held behind them.
    let stranger = ringrouter_tests::users_on_shards("presfl-x", 2)[1].clone();
    let (at, statuses) = presence_burst(&mut raw, &stranger, n);
    assert!(
        statuses.iter().all(|&s| s == Status::Forbidden as i32),
        "{statuses:?}"
    );
    assert_eq!(at, n, "answered in order, the Pong last");
}

/// A session that stops handling a chunk's frames at its budget (its answers over
/// `--max-pending-bytes`) handles the rest of that chunk once it drains: thousands of
/// pipelined pings, written at once and read afterwards, are all answered, in order.
#[test]
fn frames_held_at_the_budget_are_all_answered_in_order() {
    let r = RouterProc::start(&[
        "--max-pending-bytes",
        "4096",
        "--slow-consumer-timeout",
        "60",
    ]);
    let mut a = r.raw_login("pinger");
    let n = 5_000u64;
    let mut all = Vec::new();
    for nonce in 1..=n {
        all.extend_from_slice(&client_frame_bytes(client_frame::Kind::Ping(Ping {
            nonce,
        })));
    }
    a.write(&all).expect("the pings fit the socket buffers");
    thread::sleep(Duration::from_millis(300));
    for want in 1..=n {
        match a.next_kind(T) {
            server_frame::Kind::Pong(p) => assert_eq!(p.nonce, want),
            other => panic!("pong {want}: {other:?}"),
        }
    }
}

/// A Send padded with an unknown field (64 KiB here) around a small payload: its payload
/// is copied out of the frame, so the deliveries its recipient holds unacked keep 300
/// bytes each, not the whole frame (before, 1 500 of them held ~100 MB).
#[test]
fn a_padded_sends_unacked_delivery_does_not_hold_its_frame() {
    let r = RouterProc::start(&[]);
    let mut keeper = r.raw_login("keeper");
    let mut sender = r.raw_login("padder");
    let send = ringrouter_proto::v1::Send {
        to_user: "keeper".into(),
        payload: vec![7u8; 300].into(),
        ..Default::default()
    };
    let mut body = prost::Message::encode_to_vec(&send);
    // Field 99, length-delimited, 64 KiB: unknown to the router, skipped.
    body.extend_from_slice(&[0x9a, 0x06, 0x80, 0x80, 0x04]);
    body.resize(body.len() + 65_536, 0xAB);
    let mut frame = vec![0x12];
    let mut n = body.len();
    while n >= 0x80 {
        frame.push((n as u8) | 0x80);
        n >>= 7;
    }
    frame.push(n as u8);
    frame.extend_from_slice(&body);
    let count = 1_500;
    let before = r.rss_kib();
    for _ in 0..count {
        sender.send_body(&frame);
        // Read as they come (the sockets stay shallow); never acked.
    }
    held_unacked_is_small(&r, &mut keeper, count, before);
}

/// The same through the chunk rather than the frame: each write is a Pong padded to
/// 60 KiB followed by a plain Send of 300 bytes, so both land in one read chunk and the
/// Send's payload is a slice of it. A chunk whose Send payloads are under a quarter of
/// it has them copied, so the unacked deliveries keep 300 bytes each, not the chunk.
#[test]
fn a_send_beside_padding_in_its_read_chunk_does_not_hold_the_chunk() {
    let r = RouterProc::start(&[]);
    let mut keeper = r.raw_login("keeper2");
    let mut sender = r.raw_login("padder2");
    let mut pong = prost::Message::encode_to_vec(&ringrouter_proto::v1::ClientFrame {
        kind: Some(client_frame::Kind::Pong(ringrouter_proto::v1::Pong {
            nonce: 1,
        })),
    });
    // Field 1000 of ClientFrame, length-delimited, 60 KiB: unknown, skipped.
    pong.extend_from_slice(&[0xc2, 0x3e, 0x80, 0xe0, 0x03]);
    pong.resize(pong.len() + 61_440, 0xAB);
    let mut write = ringrouter_tests::wire::frame(&pong);
    write.extend_from_slice(&send_frame_bytes("keeper2", &[9u8; 300], false, 0));
    let count = 1_500;
    let before = r.rss_kib();
    for _ in 0..count {
        sender.write(&write).expect("write");
    }
    held_unacked_is_small(&r, &mut keeper, count, before);
}

/// `keeper` gets `count` deliveries of 300 bytes and acks none: the router's RSS grew by
/// less than 48 MiB since `before` (KiB).
fn held_unacked_is_small(r: &RouterProc, keeper: &mut Raw, count: usize, before: u64) {
    let got = keeper.delivers(count, Duration::from_secs(30));
    assert!(got.iter().all(|d| d.payload.len() == 300));
    let grown_mib = r.rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "{grown_mib} MiB held for {count} unacked 300-byte deliveries"
    );
}

/// A receiver whose outbound queue stays over `--max-pending-bytes` (its sender
/// outpaces it) still has its acks read, pinging or not: a chunk of acks does not stop
/// its reader, and a chunk whose Pong went over the bound stops it until the queue
/// drains once, not until it is found drained (a queue kept at the bound is refilled
/// before the reader runs). (Before: its reader waited until it found its own queue
/// drained, and while the queue hovered at the bound it took no ack for as long as the
/// flood lasted, until `--max-unacked-per-session` cut a consumer that was keeping up.
/// The load generator hit it at one pair × 1 KiB on the epoll driver.)
#[test]
fn a_receiver_over_its_queue_bound_still_has_its_acks_read() {
    const N: usize = 30_000;
    const ACK_EVERY: usize = 256;
    for (driver, pings) in [
        (Driver::Default, false),
        (Driver::Legacy, false),
        (Driver::Default, true),
        (Driver::Legacy, true),
    ] {
        let r = RouterProc::start_with(
            &[
                "--shards",
                "1",
                "--max-pending-bytes",
                "64KiB",
                "--max-unacked-per-session",
                "8192",
                "--history-per-conversation",
                "0",
            ],
            driver,
        );
        let mut rcv = r.raw_login("drinker");
        let mut snd = r.raw_login("firehose");
        let payload = vec![b'p'; 1024];
        let one = send_frame_bytes("drinker", &payload, false, 0);
        let flood = thread::spawn(move || {
            let mut chunk = Vec::with_capacity(one.len() * 1000);
            for _ in 0..N / 1000 {
                chunk.clear();
                for _ in 0..1000 {
                    chunk.extend_from_slice(&one);
                }
                snd.write(&chunk).expect("the sender is not cut");
            }
            snd
        });
        let (mut got, mut last_seq, mut pongs) = (0, 0, 0);
        while got < N {
            match rcv.next_kind(T) {
                server_frame::Kind::Deliver(d) => {
                    got += 1;
                    last_seq = d.seq;
                }
                server_frame::Kind::Pong(_) => pongs += 1,
                server_frame::Kind::Ping(_) => {}
                other => panic!("{driver:?}, pings {pings}: after {got} deliveries, {other:?}"),
            }
            if got % ACK_EVERY == 0 || got == N {
                let mut b = client_frame_bytes(client_frame::Kind::Ack(Ack {
                    up_to_seq: last_seq,
                }));
                if pings {
                    b.extend(client_frame_bytes(client_frame::Kind::Ping(Ping {
                        nonce: got as u64,
                    })));
                }
                rcv.write(&b).expect("ack");
            }
        }
        let mut snd = flood.join().expect("flood");
        // Both still logged in: nobody was cut.
        rcv.ping_pong(u64::MAX);
        snd.ping_pong(2);
        assert_eq!(got, N, "{driver:?}");
        if pings {
            assert!(pongs > 0, "{driver:?}: the pings were answered");
        }
    }
}

/// A session whose reader waits on a stalled recipient (its Sends to it are over the
/// recipient's bound) still has its acks read: it keeps receiving from others, and is
/// not cut at `--max-unacked-per-session` while the recipient stays under the
/// slow-consumer timeout. (Before, its acks sat unread behind the wait and it was cut.)
#[test]
fn a_sender_waiting_on_a_stalled_recipient_still_has_its_acks_read() {
    const N: usize = 20_000;
    const ACK_EVERY: usize = 256;
    for (driver, shards) in [
        (Driver::Default, "1"),
        (Driver::Legacy, "1"),
        (Driver::Default, "2"),
    ] {
        let r = RouterProc::start_with(
            &[
                "--shards",
                shards,
                "--max-pending-bytes",
                "64KiB",
                "--max-unacked-per-session",
                "4096",
                "--slow-consumer-timeout",
                "30s",
                "--history-per-conversation",
                "0",
            ],
            driver,
        );
        // A recipient that logs in and never reads again, with a small receive buffer.
        let mut stalled = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 8 * 1024));
        stalled.login("stalled");
        let mut waiter = r.raw_login("waiter");
        let mut firehose = r.raw_login("firehose");
        // The waiter sends to the stalled recipient one message at a time, each
        // answered, until one is not answered: its reader now waits on the recipient.
        let payload = vec![b's'; 32 * 1024];
        let mut blocked = false;
        for id in 1..=2_000u64 {
            waiter
                .write(&send_frame_bytes("stalled", &payload, true, id))
                .expect("send");
            match waiter.next(Duration::from_millis(300)) {
                Ok(f) => match f.kind {
                    Some(server_frame::Kind::SendResult(res)) => {
                        assert_eq!(res.status, Status::Ok as i32, "{driver:?}: {res:?}")
                    }
                    other => panic!("{driver:?}: {other:?}"),
                },
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        assert!(blocked, "{driver:?}: the waiter's reader never waited");
        // Meanwhile another user keeps sending to the waiter, which acks what it gets;
        // the sender stays at most 1 000 messages ahead of the acks written, so the
        // router holds fewer than the 4 096 unacked that cut a session if it reads them.
        let one = send_frame_bytes("waiter", b"to the waiter", false, 0);
        let acked = Arc::new(AtomicU64::new(0));
        let flood = {
            let acked = acked.clone();
            thread::spawn(move || {
                let mut chunk = Vec::new();
                for i in 0..N / 250 {
                    let start = Instant::now();
                    while acked.load(Ordering::Relaxed) + 1_000 < (i * 250) as u64 {
                        assert!(start.elapsed() < T, "the waiter stopped acking");
                        thread::sleep(Duration::from_millis(1));
                    }
                    chunk.clear();
                    for _ in 0..250 {
                        chunk.extend_from_slice(&one);
                    }
                    firehose.write(&chunk).expect("the firehose is not cut");
                }
                firehose
            })
        };
        let (mut got, mut last_seq) = (0, 0);
        while got < N {
            match waiter.next_kind(T) {
                server_frame::Kind::Deliver(d) => {
                    got += 1;
                    last_seq = d.seq;
                }
                server_frame::Kind::Ping(_) | server_frame::Kind::SendResult(_) => {}
                other => panic!("{driver:?} shards {shards}: after {got} deliveries, {other:?}"),
            }
            if got % ACK_EVERY == 0 {
                waiter
                    .write(&client_frame_bytes(client_frame::Kind::Ack(Ack {
                        up_to_seq: last_seq,
                    })))
                    .unwrap_or_else(|e| panic!("{driver:?} shards {shards}: ack after {got}: {e}"));
                acked.store(got as u64, Ordering::Relaxed);
            }
        }
        let mut firehose = flood.join().expect("flood");
        firehose.ping_pong(1);
        assert_eq!(got, N, "{driver:?}");
        drop(stalled);
    }
}

/// The sum of the samples of metric `name` (all shards) in a `/metrics` answer.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Eight devices of one user leave 2 500 room messages each unacked and end together:
/// 20 000 messages to give back, against a requeue ceiling of 4 000. Every one is
/// accounted for (stored or dropped, `requeue_dropped_total`), the user's queue holds
/// 4 000 at the next login, in order, and what the ceiling drops is dropped before it
/// is made a store record (or by the store from the requeue's own slice, never from the
/// queue).
#[test]
fn the_unacked_messages_of_many_ending_devices_are_requeued_within_the_ceiling() {
    const DEVICES: usize = 8;
    const MSGS: u64 = 2_500;
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-unacked-per-session",
        "3000",
        "--max-offline-per-user",
        "1000",
        "--max-store-queue-bytes",
        "256KiB",
        "--max-requeue-bytes",
        "64KiB",
        "--history-per-conversation",
        "0",
        // Every device's copy given back (the volume this test needs).
        "--requeue-dedup-window",
        "0",
    ]);
    // Every device reads what comes (a queue over its bound would be cut), acks nothing.
    let (mut poster, devices) = hoarding_devices(&r, DEVICES, MSGS);
    drop(devices);
    let total = (DEVICES as u64 * MSGS) as f64;
    let deadline = Instant::now() + T;
    let (requeued, dropped) = loop {
        let m = r.metrics();
        let (q, d) = (
            metric_sum(&m, "ringrouter_requeued_total"),
            metric_sum(&m, "ringrouter_requeue_dropped_total"),
        );
        if q + d >= total {
            break (q, d);
        }
        assert!(
            Instant::now() < deadline,
            "requeued {q} + dropped {d} of {total}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(requeued + dropped, total, "each message once");
    assert!(requeued >= 4_000.0, "requeued {requeued}");
    // The devices ended together while the store queue (256 KiB) had room for one
    // device's messages: the others waited in their compact form, and what the ceiling
    // would drop was dropped there (4 000 stored, 16 000 dropped in every run here).
    assert!(
        dropped > 0.0,
        "nothing dropped before the store: requeued {requeued}"
    );
    // What waited counted in the shard's requeue bytes (20 000 entries: past the
    // 64 KiB bound, the shard's readers paused meanwhile); it is all gone now, and the
    // poster is read again.
    poster.ping_pong(2);
    let deadline = Instant::now() + T;
    loop {
        let m = r.metrics();
        let queued = metric_sum(&m, "ringrouter_store_queue_bytes")
            + metric_sum(&m, "ringrouter_requeue_bytes");
        if queued == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{queued} store queue bytes left");
        thread::sleep(Duration::from_millis(50));
    }
    // The next login gets the ceiling's 4 000, oldest first: a requeue past it drops
    // what it gives back, never what the queue holds (which may never have been
    // delivered). The first device's 2 500 went to the store at once; of what waited
    // (trimmed to the newest 4 000 meanwhile: the last device's 2 500 and the 1 500
    // newest of the one before it), the first 1 500 fit.
    let numbers = backlog_numbers(&r, "hoarder", Some(""));
    assert_eq!(numbers.len(), 4_000, "the ceiling's worth");
    let mut want: Vec<u64> = (0..MSGS).collect();
    want.extend(1_000..MSGS);
    assert_eq!(numbers, want);
}

/// The numbers (big-endian u64 payload prefixes) of every Deliver a fresh login of
/// `user` gets from its offline queue, acking as it goes.
fn backlog_numbers(r: &RouterProc, user: &str, password: Option<&str>) -> Vec<u64> {
    let mut again = r.raw();
    let lr = match password {
        Some(p) => again.login_password(user, p, "again"),
        None => again.login(user),
    };
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    let mut nums = Vec::new();
    loop {
        let batch = again.collect_delivers(2_000, Duration::from_millis(1_000));
        let Some(last) = batch.last() else {
            break;
        };
        again.ack(last.seq);
        nums.extend(
            batch
                .iter()
                .map(|d| u64::from_be_bytes(d.payload[..8].try_into().expect("8 bytes"))),
        );
    }
    nums
}

/// A router whose store queue (2 MiB) makes an ended session's requeue wait, with a
/// session of `to` and one of `from`.
fn requeue_pair(to: &str, from: &str) -> (RouterProc, Raw, Raw) {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-store-queue-bytes",
        "2MiB",
        "--history-per-conversation",
        "0",
    ]);
    let to_session = r.raw_login(to);
    let sender = r.raw_login(from);
    (r, to_session, sender)
}

/// Sends `n` messages numbered from 0 (big-endian u64 payloads) from `sender` to `to`.
fn send_numbered(sender: &mut Raw, to: &str, n: u64) {
    let mut chunk = Vec::new();
    for i in 0..n {
        chunk.extend(send_frame_bytes(to, &i.to_be_bytes(), false, 0));
    }
    sender.write(&chunk).expect("sending");
}

/// What a session left unacked reaches the user's queue before anything sent to the
/// user after it ended, even while it waits for room in the store queue: a sender's
/// messages come back in the order sent. (Found by review: with the requeue paced by the
/// store queue, later messages overtook it: 0..12287, 20000..23699, 12288..19999.)
#[test]
fn a_requeue_waiting_for_the_store_is_not_overtaken_by_later_messages() {
    const FIRST: u64 = 20_000;
    const MORE: u64 = 5_000;
    let (r, mut alice, mut bob) = requeue_pair("ord-alice", "ord-bob");
    send_numbered(&mut bob, "ord-alice", FIRST);
    assert_eq!(alice.delivers(FIRST as usize, T).len() as u64, FIRST);
    drop(alice);
    thread::sleep(Duration::from_millis(5));
    for b in 0..MORE / 100 {
        let mut chunk = Vec::new();
        for i in 0..100 {
            let n = FIRST + b * 100 + i;
            chunk.extend(send_frame_bytes("ord-alice", &n.to_be_bytes(), false, 0));
        }
        bob.write(&chunk).expect("bob");
        thread::sleep(Duration::from_millis(2));
    }
    bob.ping_pong(1);
    let nums = backlog_numbers(&r, "ord-alice", None);
    assert_eq!(nums, (0..FIRST + MORE).collect::<Vec<_>>());
}

/// An account deleted while what its ended device left unacked waits for the store:
/// whoever registers the name next gets none of it. (Found by review: the newcomer got
/// 11 328 of the old account's 40 000.)
#[test]
fn a_requeue_waiting_for_the_store_goes_with_a_deleted_account() {
    use ringrouter_proto::v1::DeleteAccount;
    const N: u64 = 40_000;
    let alice = ringrouter_tests::users_on_shards("dla", 2)[0].clone();
    let zed = ringrouter_tests::users_on_shards("dlz", 2)[1].clone();
    let carol = ringrouter_tests::users_on_shards("dlc", 2)[1].clone();
    let r = RouterProc::start(&[
        "--auth",
        "accounts",
        "--shards",
        "2",
        "--max-store-queue-bytes",
        "1MiB",
        "--history-per-conversation",
        "0",
    ]);
    for (u, p) in [
        (alice.as_str(), "pw-one"),
        ("dl-bob", "pw-bob"),
        (zed.as_str(), "pw"),
        (carol.as_str(), "pw"),
    ] {
        assert_eq!(r.register(u, p).status, Status::Ok as i32, "{u}");
    }
    let mut d1 = r.raw_login_password(&alice, "pw-one", "d1");
    let mut d2 = r.raw_login_password(&alice, "pw-one", "d2");
    let mut bob = r.raw_login_password("dl-bob", "pw-bob", "b");
    let mut chunk = Vec::new();
    for i in 0..N {
        chunk.extend(send_frame_bytes(&alice, &i.to_be_bytes(), false, 0));
    }
    bob.write(&chunk).expect("bob");
    // d2 acks everything, d1 nothing.
    let acking = thread::spawn(move || {
        let got = d2.delivers(N as usize, T);
        d2.ack(got.last().expect("deliveries").seq);
        d2
    });
    assert_eq!(d1.delivers(N as usize, T).len() as u64, N);
    let mut d2 = acking.join().expect("d2");
    d2.ping_pong(5);
    // Another shard keeps the store busy meanwhile.
    let mut carol_c = r.raw_login_password(&carol, "pw", "c");
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, zed) = (stop.clone(), zed.clone());
        thread::spawn(move || {
            let one = send_frame_bytes(&zed, &vec![b'z'; 16 * 1024], false, 0);
            let buf = one.repeat(16);
            while !stop.load(Ordering::Relaxed) {
                if carol_c.write(&buf).is_err() {
                    break;
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    drop(d1);
    thread::sleep(Duration::from_millis(5));
    d2.send(client_frame::Kind::DeleteAccount(DeleteAccount {
        request_id: 7,
    }));
    loop {
        if let server_frame::Kind::AccountResult(a) = d2.next_kind(T) {
            assert_eq!(a.status, Status::Ok as i32, "{a:?}");
            break;
        }
    }
    assert_eq!(r.register(&alice, "pw-two").status, Status::Ok as i32);
    stop.store(true, Ordering::Relaxed);
    let mut newcomer = r.raw_login_password(&alice, "pw-two", "new");
    let got = newcomer.collect_delivers(N as usize, Duration::from_secs(2));
    assert!(
        got.is_empty(),
        "{} of the old account's messages",
        got.len()
    );
    drop(newcomer);
    let _ = flood.join();
}

/// A room event stored for a user (the room deleted while they are offline) comes after
/// what their ended session left unacked, even while that waits for room in the store
/// queue. (Found by review: the event came after 24 576 of the 40 000.)
#[test]
fn a_room_event_does_not_overtake_a_waiting_requeue() {
    use ringrouter_proto::v1::DeleteRoom;
    const FIRST: u64 = 40_000;
    let (r, mut alice, mut bob) = requeue_pair("rev-alice", "rev-bob");
    assert_eq!(bob.create_room("rev-club", "").status, Status::Ok as i32);
    assert_eq!(alice.join_room("rev-club", "").status, Status::Ok as i32);
    send_numbered(&mut bob, "rev-alice", FIRST);
    assert_eq!(alice.room_delivers(FIRST as usize, T).len() as u64, FIRST);
    drop(alice);
    thread::sleep(Duration::from_millis(5));
    let (res, _) = bob.call(
        client_frame::Kind::DeleteRoom(DeleteRoom {
            request_id: 77,
            room: "rev-club".into(),
        }),
        77,
    );
    assert!(
        matches!(&res, server_frame::Kind::RoomResult(rr) if rr.status == Status::Ok as i32),
        "{res:?}"
    );
    bob.ping_pong(1);
    thread::sleep(Duration::from_millis(500));
    let mut again = r.raw_login("rev-alice");
    let mut seen = 0u64;
    let mut event_at = None;
    while let Ok(f) = again.next(Duration::from_millis(1500)) {
        match f.kind {
            Some(server_frame::Kind::Deliver(d)) => {
                seen += 1;
                if seen.is_multiple_of(500) {
                    again.ack(d.seq);
                }
            }
            Some(server_frame::Kind::RoomEvent(e)) => {
                event_at = Some(seen);
                again.ack(e.seq);
            }
            _ => {}
        }
    }
    assert_eq!(seen, FIRST);
    assert_eq!(event_at, Some(FIRST));
}

/// A chunk of room messages to a room whose members are offline is a store request per
/// message and member (40 000 here, in one write): the poster's reader stops mid-chunk
/// once the shard's store queue is at its bound (16 384 requests) and goes on as it
/// drains, instead of checking only between chunks (every request of the chunk queued
/// at once). Nothing is lost: every member gets every message at its next login.
#[test]
fn a_chunk_of_room_messages_to_offline_members_stops_at_the_store_queue_bound() {
    offline_room_flood(1);
}

/// The same with the members homed on another shard than the room: the room's mail to
/// their shard is a batch of 400 messages for 100 members each, whose rest waits in
/// that shard's consumer once its store queue is at its bound.
#[test]
fn a_batch_of_room_mail_to_offline_members_stops_at_the_store_queue_bound() {
    offline_room_flood(2);
}

/// 400 room messages in one write from a poster homed with the room (shard 0) to 100
/// offline members (homed on the last of `shards`): the store requests queued at once
/// stay within one shard's bound plus one message's.
fn offline_room_flood(shards: usize) {
    const MEMBERS: usize = 100;
    const MSGS: u64 = 400;
    const HIGH_WATER: f64 = 16_384.0;
    let on = |shard: usize, prefix: &str, n: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .filter(|u| ringrouter::shard::home_shard(u.as_bytes(), shards) == shard)
            .take(n)
            .collect()
    };
    let n = shards.to_string();
    let r = RouterProc::start(&["--shards", &n]);
    let room = on(0, "crowd", 1).remove(0);
    let mut poster = r.raw_login(&on(0, "poster", 1)[0]);
    assert_eq!(
        poster.create_room(&room, "").status,
        Status::Ok as i32,
        "create"
    );
    let away = on(shards - 1, "away", MEMBERS);
    for u in &away {
        let mut m = r.raw_login(u);
        assert_eq!(m.join_room(&room, "").status, Status::Ok as i32, "join");
    }
    let mut chunk = Vec::new();
    for i in 0..MSGS {
        chunk.extend(ringrouter_tests::room_send_frame_bytes(
            &room,
            &i.to_be_bytes(),
            false,
            0,
        ));
    }
    poster.write(&chunk).expect("posting");
    let (mut peak, deadline) = (0.0f64, Instant::now() + T);
    loop {
        let m = r.metrics();
        let queued = metric_sum(&m, "ringrouter_store_queue_requests");
        peak = peak.max(queued);
        if metric_sum(&m, "ringrouter_offline_stored_total") >= (MSGS as usize * MEMBERS) as f64
            && queued == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{queued} store requests left");
        thread::sleep(Duration::from_millis(2));
    }
    // One message's requests may go past the bound (the check follows each).
    assert!(
        peak <= HIGH_WATER + MEMBERS as f64,
        "{peak} store requests queued at once"
    );
    poster.ping_pong(1);
    let numbers = backlog_numbers(&r, &away[7], None);
    assert_eq!(numbers, (0..MSGS).collect::<Vec<_>>());
}

/// Eight devices of one user leave 2 500 room messages each unacked and end together; the
/// user logs in again at once. The login's backlog read waits for the user's requeues to
/// be handed to the store at their pace (first in line), instead of handing the store all
/// 20 000 records at once past its bound; the backlog is whole and in order.
#[test]
fn a_login_behind_waiting_requeues_does_not_put_them_in_the_store_queue_at_once() {
    const DEVICES: usize = 8;
    const MSGS: u64 = 2_500;
    const BOUND: f64 = 256.0 * 1024.0;
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-unacked-per-session",
        "3000",
        "--max-store-queue-bytes",
        "256KiB",
        "--history-per-conversation",
        "0",
        // Every device's copy given back (the volume this test needs).
        "--requeue-dedup-window",
        "0",
    ]);
    let (_poster, devices) = hoarding_devices(&r, DEVICES, MSGS);
    // Sample the store queue from now until the backlog is read.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, addr) = (stop.clone(), r.http_addr());
        thread::spawn(move || {
            let mut peak = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                let m = ringrouter_tests::metrics_at(addr);
                peak = peak.max(metric_sum(&m, "ringrouter_store_queue_bytes"));
                thread::sleep(Duration::from_millis(1));
            }
            peak
        })
    };
    drop(devices);
    // The devices' sessions have ended (their requeues made) before the login.
    let deadline = Instant::now() + T;
    while metric_sum(&r.metrics(), "ringrouter_sessions") > 1.0 {
        assert!(
            Instant::now() < deadline,
            "the devices' sessions did not end"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let numbers = backlog_numbers(&r, "hoarder", Some(""));
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let mut want = Vec::new();
    for _ in 0..DEVICES {
        want.extend(0..MSGS);
    }
    assert_eq!(numbers, want, "every device's messages, in order");
    // Half the bound for requeues, plus one slice (4 096 records) past it.
    assert!(
        peak <= BOUND / 2.0 + 4_096.0 * 200.0,
        "{peak} store queue bytes at once"
    );
}

/// `devices` sessions of user "hoarder" in room "hoard", each delivered the `msgs` room
/// messages (big-endian numbers 0..msgs) that "poster" sent, none acked: the poster and
/// the devices.
fn hoarding_devices(r: &RouterProc, devices: usize, msgs: u64) -> (Raw, Vec<Raw>) {
    let mut poster = r.raw_login("poster");
    assert_eq!(
        poster.create_room("hoard", "").status,
        Status::Ok as i32,
        "create"
    );
    let mut hoarders: Vec<Raw> = (0..devices)
        .map(|i| {
            let mut d = r.raw();
            let lr = d.login_password("hoarder", "", &format!("d{i}"));
            assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
            d
        })
        .collect();
    assert_eq!(
        hoarders[0].join_room("hoard", "").status,
        Status::Ok as i32,
        "join"
    );
    let mut chunk = Vec::new();
    for i in 0..msgs {
        chunk.extend(ringrouter_tests::room_send_frame_bytes(
            "hoard",
            &i.to_be_bytes(),
            false,
            0,
        ));
    }
    poster.write(&chunk).expect("posting");
    poster.ping_pong(1);
    for d in &mut hoarders {
        assert_eq!(d.room_delivers(msgs as usize, T).len() as u64, msgs);
    }
    (poster, hoarders)
}

/// A small message held unacked does not keep its whole read chunk alive when the rest of
/// the chunk is bytes nobody keeps. The attacker's writes are [an ephemeral 60 KB Send to a
/// user with no session][a 300-byte Send to a session that acks nothing]: the 300 bytes
/// were a slice of a 64 KiB chunk that the ephemeral payload (encoded into nothing) made
/// look dense, so each held message kept ~64 KiB: 3 000 of them held ~190 MiB of RSS for
/// 0.9 MB counted unacked. Now the session's payloads are copied out once a chunk is
/// sparse in what is kept.
#[test]
fn a_small_unacked_message_does_not_keep_its_read_chunk() {
    let r = RouterProc::start(&["--shards", "1", "--slow-consumer-timeout", "60"]);
    r.visit("pin-nobody");
    let mut victim = r.raw_login("pin-victim");
    let mut attacker = r.raw_login("pin-attacker");
    let pad = vec![7u8; 60_000];
    let mut block = client_frame_bytes(client_frame::Kind::Send(ringrouter_proto::v1::Send {
        to_user: "pin-nobody".into(),
        payload: pad.into(),
        ephemeral: true,
        ..Default::default()
    }));
    block.extend_from_slice(&send_frame_bytes("pin-victim", &[1u8; 300], false, 0));
    let before = r.rss_kib();
    let n = 3000;
    for _ in 0..n {
        attacker
            .write(&block)
            .expect("the router reads the attacker");
    }
    // Every one delivered (and held unacked) before RSS is read.
    assert_eq!(victim.delivers(n, T).len(), n);
    let grown = r.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "{grown} KiB of RSS held for {n} unacked 300-byte messages"
    );
}

/// Waits until the router has read everything `raw` sent (its socket's receive queue in
/// the router is empty, and nothing is in flight to it).
fn router_read_all(r: &RouterProc, raw: &Raw) {
    let local = raw.stream.local_addr().expect("local address");
    let read = ringrouter_tests::wait_until(T, || {
        let client = ringrouter_tests::tcp_queues(local, r.connect_addr()).map(|(tx, _)| tx);
        let router = ringrouter_tests::tcp_queues(r.connect_addr(), local).map(|(_, rx)| rx);
        client == Some(0) && router == Some(0)
    });
    assert!(read, "the router did not read what {local} sent");
}

/// Connections each sending all but the last byte of a big frame (a slowloris with
/// bytes): 1 500 of them held 1.5 GiB until heartbeats cut them ~45 s later. Past
/// `--max-input-bytes` the connection whose frame began first is closed with an Error
/// UNAVAILABLE; the others, a big frame completed after it, and an honest pair go on.
#[test]
fn big_frames_still_arriving_are_bounded_per_shard() {
    let r = RouterProc::start(&["--shards", "1", "--max-input-bytes", "4MiB"]);
    let mut pair = Pair::new(&r, "inb", 1);
    let mut rx = r.raw_login("inb-rx");
    let payload = vec![3u8; 900_000];
    let frame = send_frame_bytes("inb-rx", &payload, false, 0);
    let (most, last) = frame.split_at(frame.len() - 1);
    let mut slow: Vec<Raw> = (0..5)
        .map(|i| r.raw_login(&format!("inb-slow{i}")))
        .collect();
    for s in &mut slow[..4] {
        s.write(most).expect("the router reads a frame's start");
        router_read_all(&r, s);
    }
    // 3.6 MB held: within the budget, nobody is closed.
    assert!(matches!(
        slow[0].next_body(Duration::from_millis(300)),
        Err(ringrouter_tests::ReadEnd::Timeout)
    ));
    slow[4]
        .write(most)
        .expect("the router reads a frame's start");
    let e = slow[0].expect_error(T);
    assert_error(&e, Status::Unavailable);
    assert!(e.reason.contains("--max-input-bytes"), "{}", e.reason);
    assert!(matches!(
        slow[0].read_until_end(T).1,
        ringrouter_tests::ReadEnd::Closed(_)
    ));
    // The next oldest finishes its frame: delivered whole.
    slow[1].write(last).expect("the last byte");
    let d = rx.delivers(1, T);
    assert_eq!(d[0].payload.len(), payload.len());
    assert_eq!(d[0].from_user, "inb-slow1");
    pair.exchange("past the input budget");
    let closed = ringrouter_tests::wait_until(T, || {
        metric_sum(&r.metrics(), "ringrouter_input_budget_closes_total") == 1.0
    });
    assert!(closed, "input_budget_closes_total is not 1");
}

/// Many connections each holding 900 KB of a frame that never completes: the router's
/// RSS grows by about the budget, not by what they sent (72 MB).
#[test]
fn big_frames_that_never_complete_hold_no_more_than_the_budget() {
    let r = RouterProc::start(&["--shards", "1", "--max-input-bytes", "8MiB"]);
    let mut pair = Pair::new(&r, "inm", 1);
    r.visit("inm-rx");
    let frame = send_frame_bytes("inm-rx", &vec![5u8; 900_000], false, 0);
    let most = &frame[..frame.len() - 1];
    let before = r.rss_kib();
    let rss = RssPeak::start(r.pid());
    let mut slow = Vec::new();
    for i in 0..80 {
        let mut s = r.raw_login(&format!("inm-slow{i}"));
        // A closed connection (past the budget) may refuse the rest: that is the point.
        let _ = s.write(most);
        slow.push(s);
    }
    for s in &slow {
        let local = s.stream.local_addr().expect("local address");
        ringrouter_tests::wait_until(T, || {
            ringrouter_tests::tcp_queues(r.connect_addr(), local).is_none_or(|(_, rx)| rx == 0)
        });
    }
    pair.exchange("80 big frames arriving");
    let grown = rss.stop().saturating_sub(before);
    assert!(
        grown < 40 * MIB,
        "{grown} KiB of RSS for 80 connections holding 900 KB each, budget 8 MiB"
    );
    let closed = ringrouter_tests::wait_until(T, || {
        metric_sum(&r.metrics(), "ringrouter_input_budget_closes_total") >= 60.0
    });
    assert!(closed, "fewer than 60 connections closed past the budget");
}

/// Sessions that never read, each sent 6 MB (under their own queue bound): together
/// they hold more than `--max-memory`. The shard closes the ones holding the most as
/// slow consumers (never one holding under 1 MiB), an honest pair goes on, and a closed
/// user who logs in again gets every message it had not acked. (How far resident
/// memory comes down is measured with a release build: README, "Limits"; a debug
/// build's store lets go of it more slowly.)
#[test]
fn sessions_holding_the_most_are_closed_over_the_memory_ceiling() {
    const USERS: usize = 40;
    const MSGS: usize = 100;
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-memory",
        "128MiB",
        "--slow-consumer-timeout",
        "60",
        "--history-per-conversation",
        "0",
    ]);
    let mut pair = Pair::new(&r, "mem", 1);
    let sink = |user: &str| {
        let mut raw = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 4096));
        raw.login(user);
        raw
    };
    let mut sinks: Vec<(String, Raw)> = (0..USERS)
        .map(|i| {
            let user = format!("mem-sink{i}");
            let raw = sink(&user);
            (user, raw)
        })
        .collect();
    // Each holds 300 KB: not what fills memory.
    let small: Vec<Raw> = (0..4).map(|i| sink(&format!("mem-small{i}"))).collect();
    let mut sender = r.raw_login("mem-sender");
    for i in 0..small.len() {
        let mut burst = Vec::new();
        for m in 0..5 {
            burst.extend(send_frame_bytes(
                &format!("mem-small{i}"),
                &[m; 60_000],
                false,
                0,
            ));
        }
        sender.write(&burst).expect("the router reads the sender");
    }
    for (user, _) in &sinks {
        let mut burst = Vec::new();
        for m in 0..MSGS {
            burst.extend(send_frame_bytes(user, &[m as u8; 60_000], false, 0));
        }
        sender.write(&burst).expect("the router reads the sender");
    }
    let closed = ringrouter_tests::wait_until(T, || {
        metric_sum(&r.metrics(), "ringrouter_memory_closes_total") >= 1.0
    });
    assert!(closed, "no session closed over the memory ceiling");
    pair.exchange("over the memory ceiling");
    let open = |raw: &Raw| {
        let local = raw.stream.local_addr().expect("local address");
        // The router's side: the client's stays open while the router's FIN waits
        // behind what its small receive buffer has not taken.
        ringrouter_tests::tcp_state(r.connect_addr(), local)
            == Some(ringrouter_tests::TCP_ESTABLISHED)
    };
    assert!(
        small.iter().all(open),
        "a session holding 300 KB was closed"
    );
    // A closed one (its socket ended by the router) gets all of it at its next login.
    let victim = sinks.iter().position(|(_, raw)| !open(raw));
    let (user, raw) = sinks.swap_remove(victim.expect("a sink closed by the router"));
    drop(raw);
    let mut again = r.raw_login(&user);
    let got = again.collect_delivers(MSGS, T);
    assert_eq!(got.len(), MSGS, "{user} got back what it had not acked");
}

/// Connections each holding 60 KB of a frame that never completes (under a read buffer,
/// but counted from 16 KiB): past `--max-input-bytes` the oldest are closed, as for
/// bigger frames (100 000 such connections could hold 6 GB).
#[test]
fn partial_frames_under_a_read_buffer_count_too() {
    let r = RouterProc::start(&["--shards", "1", "--max-input-bytes", "2MiB"]);
    let mut pair = Pair::new(&r, "inp", 1);
    r.visit("inp-rx");
    let frame = send_frame_bytes("inp-rx", &vec![6u8; 60_000], false, 0);
    let most = &frame[..frame.len() - 1];
    let mut slow = Vec::new();
    for i in 0..80 {
        let mut s = r.raw_login(&format!("inp-slow{i}"));
        // A closed connection (past the budget) may refuse the rest.
        let _ = s.write(most);
        router_read_all(&r, &s);
        slow.push(s);
    }
    // 4.8 MB held, 2 MiB taken: the 45 or so oldest go.
    let closed = ringrouter_tests::wait_until(T, || {
        metric_sum(&r.metrics(), "ringrouter_input_budget_closes_total") >= 40.0
    });
    assert!(closed, "fewer than 40 connections closed past the budget");
    let e = slow[0].expect_error(T);
    assert_error(&e, Status::Unavailable);
    pair.exchange("partial frames past the input budget");
}

/// A big frame sent in two writes is counted while it arrives and not once it is
/// delivered: the charge went on after the frame completed (an idle honest session then
/// held budget, and being the oldest was the first closed).
#[test]
fn a_big_frame_that_completes_holds_nothing_of_the_input_budget() {
    let r = RouterProc::start(&["--shards", "1", "--max-input-bytes", "2MiB"]);
    let mut rx = r.raw_login("inc-rx");
    let frame = send_frame_bytes("inc-rx", &vec![8u8; 900_000], false, 0);
    let (first, rest) = frame.split_at(500_000);
    let input = |r: &RouterProc| metric_sum(&r.metrics(), "ringrouter_input_bytes");
    let mut senders: Vec<Raw> = (0..3).map(|i| r.raw_login(&format!("inc-tx{i}"))).collect();
    for s in &mut senders {
        s.write(first).expect("the frame's first part");
        router_read_all(&r, s);
        assert!(
            ringrouter_tests::wait_until(T, || input(&r) >= 500_000.0),
            "the part read is counted"
        );
        s.write(rest).expect("the rest");
        assert_eq!(rx.delivers(1, T)[0].payload.len(), 900_000);
        assert!(
            ringrouter_tests::wait_until(T, || input(&r) == 0.0),
            "still counted once delivered: {}",
            input(&r)
        );
    }
    // None of them was closed: three completed frames hold nothing.
    let mut late = r.raw_login("inc-late");
    late.write(&frame[..700_000]).expect("a frame's start");
    router_read_all(&r, &late);
    assert_eq!(
        metric_sum(&r.metrics(), "ringrouter_input_budget_closes_total"),
        0.0
    );
    for s in &mut senders {
        s.send(client_frame::Kind::Ping(Ping { nonce: 1 }));
        assert!(matches!(s.next_kind(T), server_frame::Kind::Pong(_)));
    }
}

/// A router whose store is full from the start (a free-space floor no disk meets),
/// once its shards have read that (on their tick).
fn full_store_router() -> RouterProc {
    full_store_router_on(&[])
}

/// [`full_store_router`] with more arguments (`--data-dir`: a store made before).
fn full_store_router_on(args: &[&str]) -> RouterProc {
    let mut all = vec!["--shards", "1", "--min-free-disk-bytes", "1000TiB"];
    all.extend_from_slice(args);
    let r = RouterProc::start(&all);
    let full = ringrouter_tests::wait_until(T, || {
        metric_sum(&r.metrics(), "ringrouter_store_disk_full") == 1.0
    });
    assert!(full, "store_disk_full is not 1");
    std::thread::sleep(Duration::from_millis(300));
    r
}

/// Under `--min-free-disk-bytes` the store is full: a Send to an offline user is refused
/// UNAVAILABLE (the sender keeps it), history is not written (counted), live delivery
/// goes on, and `/readyz` stays 200 (nothing failed).
#[test]
fn a_store_under_its_free_space_floor_refuses_offline_messages_only() {
    let r = full_store_router();
    r.visit("dfl-away");
    let mut s = r.client("dfl-sender");
    let mut live = r.client("dfl-live");
    let e = s
        .send_wait("dfl-away", b"to an offline user")
        .expect_err("refused while the disk is full");
    assert_eq!(e.code(), Some(Status::Unavailable), "{e}");
    assert!(e.to_string().contains("disk is full"), "{e}");
    s.send_wait("dfl-live", b"live")
        .expect("live delivery goes on");
    let m = live.recv(Some(T)).expect("recv").expect("delivered");
    assert_eq!(m.payload[..], b"live"[..]);
    let dropped = ringrouter_tests::wait_until(T, || {
        metric_sum(&r.metrics(), "ringrouter_history_dropped_total") >= 1.0
    });
    assert!(
        dropped,
        "history_dropped_total did not count the live message"
    );
    let text = r.metrics();
    assert_eq!(metric_sum(&text, "ringrouter_store_failed"), 0.0);
    assert!(metric_sum(&text, "ringrouter_store_disk_free_bytes") > 0.0);
    assert!(r.http_get("/readyz").starts_with("HTTP/1.1 200"));
    // Nothing was queued for the offline user.
    let mut away = r.client("dfl-away");
    assert!(away
        .recv(Some(Duration::from_millis(300)))
        .expect("recv")
        .is_none());
}

/// While the store is full, a session holding over 1 MiB delivered and not acked is
/// not delivered to (what it leaves unacked at its end would be stored): Sends to it are
/// refused UNAVAILABLE until it acks, then go through again.
#[test]
fn a_full_store_refuses_sends_to_sessions_that_hold_too_much_unacked() {
    let r = full_store_router();
    let mut rx = r.raw_login("dfu-rx");
    let mut s = r.client("dfu-sender");
    let payload = vec![7u8; 256 << 10];
    let mut accepted = 0;
    let e = loop {
        match s.send_wait("dfu-rx", &payload) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 8, "still accepted past 2 MiB unacked");
    };
    assert_eq!(e.code(), Some(Status::Unavailable), "{e}");
    assert_eq!(accepted, 5, "delivered while it held at most 1 MiB");
    // Another device of the user gets nothing either (not some devices only).
    let mut rx2 = r.raw_login("dfu-rx");
    let e = s.send_wait("dfu-rx", b"two devices").expect_err("refused");
    assert_eq!(e.code(), Some(Status::Unavailable), "{e}");
    let d = rx.delivers(accepted, T);
    rx.ack(d.last().expect("delivered").seq);
    let ok = ringrouter_tests::wait_until(T, || s.send_wait("dfu-rx", b"after the ack").is_ok());
    assert!(ok, "not delivered again after the ack");
    let d2 = rx2.delivers(1, T);
    assert_eq!(
        d2[0].payload[..],
        b"after the ack"[..],
        "the second device's first message"
    );
}

/// The same in a room: while the store is full, a member session holding over 1 MiB
/// unacked is not delivered to (the sender gets UNAVAILABLE), the others still are.
#[test]
fn a_full_store_skips_room_members_that_hold_too_much_unacked() {
    // The room is made before (a full store makes no rooms), then the router restarts
    // on its store with the floor.
    let dir = tempfile::tempdir().expect("a data dir");
    let data = dir.path().to_str().expect("a UTF-8 path");
    {
        let r = RouterProc::start(&["--shards", "1", "--data-dir", data]);
        let mut o = r.raw_login("dfr-owner");
        assert_eq!(o.create_room("dfr-room", "").status, Status::Ok as i32);
        for m in ["dfr-live", "dfr-hold"] {
            let mut c = r.raw_login(m);
            assert_eq!(c.join_room("dfr-room", "").status, Status::Ok as i32);
        }
    }
    let r = full_store_router_on(&["--data-dir", data]);
    let mut o = r.raw_login("dfr-owner");
    let mut live = r.raw_login("dfr-live");
    let mut hold = r.raw_login("dfr-hold");
    // A full store makes no rooms (nor members, accounts, user records).
    assert_eq!(
        o.create_room("dfr-other", "").status,
        Status::Unavailable as i32
    );
    let payload = vec![5u8; 256 << 10];
    let mut statuses = Vec::new();
    for i in 0..7u64 {
        statuses.push(o.send_room("dfr-room", &payload, 100 + i));
        let d = live.room_delivers(1, T);
        live.ack(d[0].seq);
    }
    let ok = Status::Ok as i32;
    let unavailable = Status::Unavailable as i32;
    assert_eq!(statuses[..5], [ok; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [unavailable; 2], "{statuses:?}");
    assert_eq!(hold.room_delivers(5, T).len(), 5);
    // A sender that holds too much itself is not refused for its own member.
    assert_eq!(hold.send_room("dfr-room", b"from hold", 200), ok);
    let d = live.room_delivers(1, T);
    assert_eq!(d[0].payload[..], b"from hold"[..]);
}

/// An unacked message keeps no more than its own bytes for long. A payload over 64 bytes
/// is kept by reference, a slice of the sender's read buffer, which it kept whole (up
/// to 64 KiB) until the ack while the bounds counted only the payload: a sender that
/// padded each chunk with sends nobody keeps (here to a missing room) and one 300-byte
/// message to a session that reads but never acks held ~91 KiB a message (20 000: 1.8
/// GB, past `--max-memory`; a hostile review). Past 200 ms unacked, the payload is
/// copied out and the buffer goes.
#[test]
fn unacked_small_payloads_do_not_keep_their_read_buffers() {
    const N: usize = 3000;
    let r = RouterProc::start(&["--shards", "1"]);
    let mut hoarder = r.raw_login("hoarder");
    let mut sender = r.raw_login("sender");
    let mut chunk = send_frame_bytes("hoarder", &[b'm'; 300], false, 0);
    chunk.extend(room_send_frame_bytes(
        "no-such-room",
        &[b'p'; 60 << 10],
        false,
        0,
    ));
    let base = r.rss_kib();
    let writer = thread::spawn(move || {
        for _ in 0..N {
            sender.write(&chunk).expect("write");
        }
        sender
    });
    // Everything delivered, nothing acked.
    let mut got = 0;
    while got < N {
        match hoarder.next(T).expect("a frame").kind {
            Some(server_frame::Kind::Deliver(_)) => got += 1,
            Some(server_frame::Kind::Ping(p)) => {
                hoarder.send(client_frame::Kind::Pong(ringrouter_proto::v1::Pong {
                    nonce: p.nonce,
                }))
            }
            _ => {}
        }
    }
    let _sender = writer.join().expect("writer");
    // Past the age (and the idle second after which freed memory is given back).
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        thread::sleep(Duration::from_millis(500));
        let held = r.rss_kib().saturating_sub(base);
        if held < 40 * MIB || Instant::now() > deadline {
            break held;
        }
    };
    assert!(
        held < 40 * MIB,
        "{N} unacked 300-byte messages held {} MiB (their chunks: {} MiB)",
        held / MIB,
        N * 64 / 1024
    );
}

/// Message `i`'s payload: 300 bytes, `i` in the first eight.
pub(crate) fn numbered(i: u64) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; 300];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// A write the peer does not take keeps no read buffers for long. A write batch holds
/// the small payloads it writes by reference, slices of their senders' read buffers
/// (up to 64 KiB each); a peer that stopped reading kept them as long as its
/// connection lived while the bounds counted the payloads alone (a hostile review).
/// Past 200 ms such a write is cancelled and what is left copied out; the peer that
/// reads again gets every message, in order, byte for byte (both drivers).
#[test]
fn a_write_the_peer_does_not_take_is_compacted_and_loses_nothing() {
    // 4.8 MB: past what the kernel's socket buffers take (up to 4 MiB of send buffer on
    // loopback), under --max-pending-bytes (8 MiB).
    const N: u64 = 15_000;
    let payload = numbered;
    for driver in [Driver::Default, Driver::Legacy] {
        let r = RouterProc::start_with(&["--shards", "1"], driver);
        let mut stuck = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 4096));
        assert_eq!(stuck.login("stuck").status, Status::Ok as i32);
        let mut sender = r.raw_login("sender");
        let mut all = Vec::new();
        for i in 0..N {
            all.extend(send_frame_bytes("stuck", &payload(i), false, 0));
        }
        sender
            .write(&all)
            .expect("the sends fit the socket buffers");
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_sum(&r.metrics(), "ringrouter_writes_compacted_total") < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{driver:?}: no write was compacted in 10 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        let got = stuck.delivers(N as usize, T);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.seq, i as u64 + 1, "{driver:?}");
            assert!(
                d.payload[..] == payload(i as u64)[..],
                "{driver:?}: message {i} is not its bytes"
            );
        }
    }
}

/// Before: resident memory over `--max-memory` that the sessions did not hold (history
/// waiting for its write here; loaded contact lists or rooms in a router with many users)
/// only made a warning, and every new login added to it. Now a Login is refused
/// UNAVAILABLE while the sessions do not hold the excess, and logins are taken again once
/// memory is back under the ceiling (here: once the history is written, at its flush
/// 20 s after its first message). The sessions already in go on meanwhile.
#[test]
fn logins_are_refused_while_memory_is_over_the_ceiling() {
    const N: usize = 160;
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-memory",
        "96MiB",
        "--history-memory-bytes",
        "1GiB",
        "--history-hot-memory-bytes",
        "1GiB",
        "--history-max-bytes-per-conversation",
        "1GiB",
        "--history-flush-every",
        "20s",
    ]);
    let reason = "the router's memory is over --max-memory: no new session now, try again later";
    let mut sender = r.raw_login("mf-sender");
    let mut receiver = r.raw_login("mf-receiver");
    // 160 MB of messages, one at a time, received and acked: no session ever holds
    // 1 MiB (the ceiling's victims hold more), the history holds them all until its
    // flush.
    let payload = vec![7u8; 1_000_000];
    for got in 0..N {
        sender
            .write(&send_frame_bytes("mf-receiver", &payload, false, 0))
            .expect("the router reads the sender");
        let d = receiver.collect_delivers(1, T);
        assert_eq!(d.len(), 1, "after {got}");
        receiver.ack(d.last().map_or(0, |d| d.seq));
    }
    let refused = ringrouter_tests::wait_until(T, || {
        let lr = r.raw().login("mf-late");
        lr.status == Status::Unavailable as i32 && lr.reason == reason
    });
    assert!(refused, "a login was taken over the memory ceiling");
    sender
        .write(&send_frame_bytes("mf-receiver", b"still here", false, 0))
        .expect("write");
    let d = receiver.collect_delivers(1, T);
    assert_eq!(d.first().map(|d| &d.payload[..]), Some(&b"still here"[..]));
    let back = ringrouter_tests::wait_until(Duration::from_secs(60), || {
        r.raw().login("mf-late").status == Status::Ok as i32
    });
    assert!(back, "logins still refused after the history was written");
}
