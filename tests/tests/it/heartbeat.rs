//! Heartbeats: the router pings idle sessions every `--heartbeat-interval` and
//! closes those that do not answer within the heartbeat timeout (default 2 x
//! interval), so a half-open connection does not swallow messages.

use std::time::{Duration, Instant};

use ringrouter_client::Status;
use ringrouter_proto::v1::{client_frame, server_frame, Ping, Pong};
use ringrouter_tests::{cfg, ReadEnd, RouterProc, T};

const INTERVAL: Duration = Duration::from_millis(200);
/// The default heartbeat timeout: twice the interval.
const TIMEOUT: Duration = Duration::from_millis(400);
/// Generous bound for a close expected after ~0.7 s (CI machines are slow).
const CLOSE_BOUND: Duration = Duration::from_secs(3);
/// How long the answering clients are watched.
const WATCH: Duration = Duration::from_millis(1500);

fn router() -> RouterProc {
    RouterProc::start(&["--shards", "2", "--heartbeat-interval", "200ms"])
}

#[test]
fn silent_session_is_closed() {
    let r = router();
    let mut c = r.raw();
    let t0 = Instant::now();
    let lr = c.login("ghost");
    assert_eq!(lr.status, Status::Ok as i32);
    assert_eq!(
        lr.heartbeat_ms, 200,
        "the LoginResult announces the interval"
    );
    // Never write again; just watch.
    let mut pings = 0;
    let end = loop {
        match c.next(CLOSE_BOUND.saturating_sub(t0.elapsed())) {
            Ok(f) => match f.kind {
                Some(server_frame::Kind::Ping(_)) => pings += 1,
                Some(server_frame::Kind::Error(e)) => {
                    assert_eq!(e.code, Status::Timeout as i32, "{e:?}")
                }
                other => panic!("unexpected frame {other:?}"),
            },
            Err(ReadEnd::Timeout) => panic!(
                "a session that never answers pings is still open after {:?}",
                t0.elapsed()
            ),
            Err(e) => break e,
        }
    };
    let took = t0.elapsed();
    eprintln!("silent session closed after {took:?} ({pings} ping(s)), {end:?}");
    assert!(matches!(end, ReadEnd::Closed(_)), "{end:?}");
    assert!(pings >= 1, "the session was pinged before it was closed");
    // Causal lower bound: pinged no earlier than one interval after login, closed
    // no earlier than one timeout after the ping.
    assert!(
        took >= INTERVAL + TIMEOUT,
        "closed after {took:?}, before interval + timeout"
    );
    // The session is gone, the user is not: a message to it is stored and comes
    // with the next login.
    let mut other = r.client_with(cfg("witness")).expect("login");
    other
        .send_wait("ghost", b"anyone?")
        .expect("stored for the ghost's next login");
    let mut back = r.client_with(cfg("ghost")).expect("login again");
    let m = back
        .recv(Some(T))
        .expect("recv")
        .expect("the stored message");
    assert_eq!(
        (m.sender.as_str(), &m.payload[..]),
        ("witness", &b"anyone?"[..])
    );
}

#[test]
fn client_that_keeps_receiving_stays_connected() {
    let r = router();
    // Client::recv answers the router's pings.
    let mut c = r.client_with(cfg("awake")).expect("login");
    let t0 = Instant::now();
    while t0.elapsed() < WATCH {
        match c.recv(Some(Duration::from_millis(100))) {
            Ok(None) => {}
            Ok(Some(m)) => panic!("unexpected message {m:?}"),
            Err(e) => panic!("closed after {:?}: {e}", t0.elapsed()),
        }
    }
    c.ping().expect("still connected");
    c.send_wait("awake", b"still here").expect("send to self");
    let m = c.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(&m.payload[..], b"still here");
}

#[test]
fn raw_session_answering_pings_stays_connected() {
    let r = router();
    let mut c = r.raw_login("pong-er");
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < WATCH {
        match c.next(WATCH.saturating_sub(t0.elapsed())) {
            Ok(f) => match f.kind {
                Some(server_frame::Kind::Ping(p)) => {
                    pings += 1;
                    c.send(client_frame::Kind::Pong(Pong { nonce: p.nonce }));
                }
                other => panic!("unexpected frame {other:?}"),
            },
            Err(ReadEnd::Timeout) => break,
            Err(e) => panic!("closed after {:?} and {pings} pings: {e:?}", t0.elapsed()),
        }
    }
    // Idle for 1.5 s at a 200 ms interval: pinged several times, answered each.
    assert!(pings >= 2, "only {pings} pings in {WATCH:?}");
    c.send(client_frame::Kind::Ping(Ping { nonce: 5 }));
    match c.next_kind(T) {
        server_frame::Kind::Pong(p) => assert_eq!(p.nonce, 5),
        other => panic!("expected Pong, got {other:?}"),
    }
}
