//! Graceful shutdown: on SIGTERM the router tells every session UNAVAILABLE
//! ("shutting down") after flushing what was queued for it, and exits 0.

use std::time::{Duration, Instant};

use ringrouter_client::{Client, ClientError, Status};
use ringrouter_proto::v1::{client_frame, server_frame, Ping};
use ringrouter_tests::{assert_error, cfg, users_on_shards, Driver, ReadEnd, RouterProc, T};

/// Reads up to the end of the connection: the messages, then the final error.
fn drain_to_error(c: &mut Client, who: &str) -> (Vec<u64>, String) {
    let mut counters = Vec::new();
    loop {
        match c.recv(Some(T)) {
            Ok(Some(m)) => counters.push(u64::from_le_bytes(
                m.payload[..].try_into().expect("8-byte counter"),
            )),
            Ok(None) => panic!("{who}: no UNAVAILABLE within {T:?}"),
            Err(ClientError::Router { code, reason, .. }) => {
                assert_eq!(code, Status::Unavailable, "{who}: {reason}");
                // After the error, the connection ends.
                match c.recv(Some(T)) {
                    Err(ClientError::Closed(_)) | Err(ClientError::Io(_)) => {}
                    other => panic!("{who}: after UNAVAILABLE expected the end, got {other:?}"),
                }
                return (counters, reason);
            }
            Err(e) => panic!("{who}: expected UNAVAILABLE, got {e}"),
        }
    }
}

fn graceful_shutdown(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let u = users_on_shards("bye", 2);
    let mut a = r.client_with(cfg(&u[0])).expect("login a");
    let mut b = r.client_with(cfg(&u[1])).expect("login b");
    // Messages queued for b before the signal: the last one confirmed, so the
    // router holds all of them when SIGTERM arrives. b does not read them yet.
    const N: u64 = 100;
    for i in 0..N - 1 {
        a.send(&u[1], &i.to_le_bytes()).expect("send");
    }
    a.send_wait(&u[1], &(N - 1).to_le_bytes())
        .expect("confirmed send");

    // A connection that has not logged in yet.
    let mut pre = r.raw();
    pre.send(client_frame::Kind::Ping(Ping { nonce: 1 }));
    assert!(matches!(pre.next_kind(T), server_frame::Kind::Pong(_)));

    let start = Instant::now();
    let (code, stderr) = r.terminate(Duration::from_secs(8));
    let took = start.elapsed();
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM ({took:?}); stderr: {stderr}"
    );
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} (shutdown timeout is 5 s)"
    );

    // Both clients were told, b after everything that was queued for it.
    let (got, reason) = drain_to_error(&mut b, "b");
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "queued messages flushed in order"
    );
    assert!(reason.contains("shutting down"), "{reason}");
    let (got, reason) = drain_to_error(&mut a, "a");
    assert!(got.is_empty());
    assert!(reason.contains("shutting down"), "{reason}");
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
}

#[test]
fn sigterm_tells_clients_and_exits_zero_io_uring() {
    graceful_shutdown(Driver::Default);
}

#[test]
fn sigterm_tells_clients_and_exits_zero_epoll() {
    graceful_shutdown(Driver::Legacy);
}
