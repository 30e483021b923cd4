//! Shutdown. On SIGTERM the router stops taking connections, writes every session what
//! was queued for it, then `Error{UNAVAILABLE, "shutting down"}`, and exits 0
//! (`ringrouter::cli::main` returns 0 after a signal, `router/src/main.rs` exits with
//! it). A session that cannot be flushed within `--shutdown-timeout` is cut at the
//! deadline. Either way what a session had not acked (written or still queued) goes
//! back to the user's offline queue (`Shard::close` -> `requeue`), and the store is
//! persisted before the exit: the next router on the same `--data-dir` delivers it
//! at the user's next login.
//!
//! In both tests the receiver reads nothing before the signal, through a small
//! receive buffer: most of what was sent to it sits inside the router (checked from
//! the kernel's socket queues), not in socket buffers, when SIGTERM arrives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringrouter_client::Status;
use ringrouter_proto::v1::{client_frame, server_frame, Ping};
use ringrouter_tests::{
    assert_error, connect_small_rcvbuf, send_frame_bytes, tcp_queues, users_on_shards, Driver, Raw,
    ReadEnd, RouterProc, T,
};

/// Messages queued for the receiver before the signal, and their payload size: 16 MiB,
/// four times what Linux lets a socket's send buffer grow to on loopback (tcp_wmem,
/// 4 MiB), so most of it stays inside the router.
const N: u64 = 2048;
const PAYLOAD: usize = 8 * 1024;

/// Routers of these tests: `--max-pending-bytes` above the 16 MiB queued, so the
/// sender is never paused and the receiver never cut as a slow consumer before the
/// signal.
const ARGS: [&str; 4] = ["--shards", "2", "--max-pending-bytes", "64m"];

/// Payload `i`: its number, then padding.
fn numbered(i: u64) -> Vec<u8> {
    let mut p = vec![0x5A; PAYLOAD];
    p[..8].copy_from_slice(&i.to_be_bytes());
    p
}

fn number_of(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().expect("8-byte number"))
}

/// Logs in a sender and a receiver (homes on different shards) on router `r`; the
/// receiver with an 8 KiB receive buffer. Queues [`N`] messages for the receiver (the
/// last one confirmed) and checks that most of their bytes are inside the router,
/// not in the two sockets' kernel buffers.
fn queue_for_a_receiver_that_does_not_read(r: &RouterProc, users: &[String]) -> (Raw, Raw) {
    let mut b = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 8 * 1024));
    assert_eq!(b.login(&users[1]).status, Status::Ok as i32);
    let mut a = r.raw_login(&users[0]);
    let mut bytes = Vec::new();
    for i in 0..N {
        bytes.extend(send_frame_bytes(&users[1], &numbered(i), i + 1 == N, i + 1));
    }
    a.write(&bytes).expect("write");
    assert_eq!(a.wait_send_result(N), Status::Ok as i32);
    let local: SocketAddr = b.stream.local_addr().expect("local addr");
    let router_side: SocketAddr = b.stream.peer_addr().expect("peer addr");
    let (router_tx, _) = tcp_queues(router_side, local).expect("router's socket in /proc/net/tcp");
    let (_, b_rx) = tcp_queues(local, router_side).expect("receiver's socket in /proc/net/tcp");
    let total = N * PAYLOAD as u64;
    assert!(
        router_tx + b_rx < total / 2,
        "the test needs messages queued inside the router: of {total} bytes, \
         {router_tx} sit in the router's send buffer and {b_rx} in the receiver's"
    );
    (a, b)
}

/// After a restart on the same data dir: `user` gets exactly messages 0..N, in order
/// (none was acked), then nothing but what is sent after its login.
fn everything_comes_back(r: &RouterProc, users: &[String]) {
    let mut b = r.raw_login(&users[1]);
    let mut a = r.raw_login(&users[0]);
    a.send_to(&users[1], b"after the restart", 1);
    assert_eq!(a.wait_send_result(1), Status::Ok as i32);
    let got: Vec<u64> = b
        .delivers(N as usize, T)
        .iter()
        .map(|d| number_of(&d.payload))
        .collect();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "the offline queue after the restart"
    );
    let next = b.delivers(1, T).remove(0);
    assert_eq!(&next.payload[..], b"after the restart");
}

fn graceful_shutdown(driver: Driver) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = [&ARGS[..], &["--data-dir", d]].concat();
    let r = RouterProc::start_with(&args, driver);
    let u = users_on_shards("bye", 2);
    let (mut a, mut b) = queue_for_a_receiver_that_does_not_read(&r, &u);

    // A connection that has not logged in yet.
    let mut pre = r.raw();
    pre.send(client_frame::Kind::Ping(Ping { nonce: 1 }));
    assert!(matches!(pre.next_kind(T), server_frame::Kind::Pong(_)));

    // The signal first, then the receiver starts reading: the flush happens during
    // the shutdown.
    let start = Instant::now();
    r.sigterm();
    let reader = std::thread::spawn(move || {
        let (frames, end) = b.read_until_end(T);
        (frames, end)
    });
    let (code, stderr) = r.wait_exit(Duration::from_secs(8));
    let took = start.elapsed();
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM ({took:?}); stderr: {stderr}"
    );
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} (the shutdown timeout is 5 s)"
    );

    // b got everything queued for it, in order, then UNAVAILABLE, then the end.
    let (frames, end) = reader.join().expect("reader");
    assert!(matches!(end, ReadEnd::Closed(_)), "receiver: {end:?}");
    let mut got = Vec::new();
    let mut error = None;
    for f in frames {
        match f.kind {
            Some(server_frame::Kind::Deliver(dl)) if error.is_none() => {
                got.push(number_of(&dl.payload))
            }
            Some(server_frame::Kind::Error(e)) if error.is_none() => error = Some(e),
            other => panic!("receiver got {other:?} (after error {error:?})"),
        }
    }
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "queued messages flushed in order"
    );
    let e = error.expect("UNAVAILABLE after the flush");
    assert_error(&e, Status::Unavailable);
    assert!(e.reason.contains("shutting down"), "{e:?}");
    // The sender is told too.
    let (frames, end) = a.read_until_end(T);
    assert!(matches!(end, ReadEnd::Closed(_)), "sender: {end:?}");
    match &frames[..] {
        [f] => match &f.kind {
            Some(server_frame::Kind::Error(e)) => assert_error(e, Status::Unavailable),
            other => panic!("sender got {other:?}"),
        },
        other => panic!("sender: {other:?}"),
    }
    // The connection that never logged in is told UNAVAILABLE too, then closed.
    let (frames, end) = pre.read_until_end(T);
    assert!(
        matches!(end, ReadEnd::Closed(_)),
        "pre-login connection: {end:?}"
    );
    assert_eq!(frames.len(), 1, "pre-login connection: {frames:?} {end:?}");
    for f in frames {
        match f.kind {
            Some(server_frame::Kind::Error(e)) => assert_error(&e, Status::Unavailable),
            other => panic!("pre-login connection got {other:?}"),
        }
    }
    // b never acked: the same messages again at its next login.
    let r = RouterProc::start_with(&args, driver);
    everything_comes_back(&r, &u);
}

#[test]
fn sigterm_flushes_queued_messages_then_exits_zero_io_uring() {
    graceful_shutdown(Driver::Default);
}

#[test]
fn sigterm_flushes_queued_messages_then_exits_zero_epoll() {
    graceful_shutdown(Driver::Legacy);
}

/// A receiver that never reads cannot be flushed: the router cuts it at
/// `--shutdown-timeout` (the ticker shuts its socket 200 ms before), exits 0 within the
/// timeout plus the one second `RouterHandle::shutdown` adds for the shard threads
/// (plus 2 s for a loaded CI machine), and loses none of what it held: the messages
/// come back at the next login after a restart.
#[test]
fn shutdown_timeout_cuts_a_session_that_cannot_be_flushed_and_keeps_its_messages() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = [&ARGS[..], &["--data-dir", d]].concat();
    let mut with_timeout = args.clone();
    with_timeout.extend(["--shutdown-timeout", "1s"]);
    // No history: the 16 MiB of it held in memory would be written by the storage thread
    // after the drain (seconds on a loaded debug build, past this test's bound on the
    // drain); history written at shutdown is history::history_survives_a_restart_memory.
    with_timeout.extend(["--history-per-conversation", "0"]);
    let r = RouterProc::start(&with_timeout);
    let u = users_on_shards("stuck", 2);
    let (_a, mut b) = queue_for_a_receiver_that_does_not_read(&r, &u);
    let start = Instant::now();
    let (code, stderr) = r.terminate(Duration::from_secs(15));
    let took = start.elapsed();
    assert_eq!(code, Some(0), "exit code ({took:?}); stderr: {stderr}");
    let bound = TIMEOUT + Duration::from_secs(1) + Duration::from_secs(2);
    assert!(
        took < bound,
        "a shutdown that could not flush took {took:?} (--shutdown-timeout 1s)"
    );
    // What reached b's socket before the cut: a prefix, in order.
    let (frames, _end) = b.read_until_end(T);
    let mut prefix = 0;
    for f in frames {
        match f.kind {
            Some(server_frame::Kind::Deliver(dl)) => {
                assert_eq!(number_of(&dl.payload), prefix, "in order");
                prefix += 1;
            }
            Some(server_frame::Kind::Error(e)) => assert_error(&e, Status::Unavailable),
            other => panic!("receiver got {other:?}"),
        }
    }
    assert!(
        prefix < N,
        "the receiver was flushed although it never read"
    );
    let r = RouterProc::start(&args);
    everything_comes_back(&r, &u);
}

/// What sessions leave at shutdown (their unacked messages) is stored for as long as the
/// store makes progress, not cut at `--shutdown-timeout`: cut there, a SIGTERM with 100
/// room members holding 40 000 unacked messages each lost them all for 20 members. Here
/// 8 receivers that never read hold 4 000 messages each, and the timeout is 100 ms:
/// the router exits 0, and after a restart every receiver gets all of them, in order.
#[test]
fn unacked_messages_are_stored_past_the_shutdown_timeout() {
    const RECEIVERS: usize = 8;
    const K: u64 = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = [
        "--shards",
        "2",
        "--data-dir",
        d,
        "--history-per-conversation",
        "0",
    ];
    let mut short = args.to_vec();
    short.extend(["--shutdown-timeout", "100ms"]);
    let r = RouterProc::start(&short);
    let receivers: Vec<String> = (0..RECEIVERS).map(|i| format!("sdu-r{i}")).collect();
    let _held: Vec<Raw> = receivers.iter().map(|u| r.raw_login(u)).collect();
    let mut a = r.raw_login("sdu-sender");
    for u in &receivers {
        let mut bytes = Vec::new();
        for i in 0..K {
            bytes.extend(send_frame_bytes(u, &i.to_be_bytes(), i + 1 == K, i + 1));
        }
        a.write(&bytes).expect("write");
        assert_eq!(a.wait_send_result(K), Status::Ok as i32);
    }
    let (code, stderr) = r.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "exit code; stderr: {stderr}");
    let r = RouterProc::start(&args);
    for u in &receivers {
        let mut c = r.raw_login(u);
        let got: Vec<u64> = c
            .delivers(K as usize, T)
            .iter()
            .map(|d| u64::from_be_bytes(d.payload[..8].try_into().expect("8 bytes")))
            .collect();
        assert_eq!(
            got,
            (0..K).collect::<Vec<_>>(),
            "{u}'s messages after the restart"
        );
    }
}
