//! Configured limits: connections (in all and per address), sessions per user,
//! user-name length, and the login timeout.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringrouter_client::{Client, ClientConfig, ClientError, Status};
use ringrouter_proto::v1::{client_frame, server_frame, Ping};
use ringrouter_tests::{
    assert_error, cfg, client_frame_bytes, wait_until, Raw, ReadEnd, RouterProc, T,
};

#[test]
fn connection_over_max_connections_is_refused() {
    let r = RouterProc::start(&["--shards", "2", "--max-connections", "3"]);
    // Three connections: two logged in, one not (both kinds count).
    let mut a = r.client_with(cfg("conn-a")).expect("1st connection");
    let b = r.client_with(cfg("conn-b")).expect("2nd connection");
    let mut pending = r.raw();
    pending.send(client_frame::Kind::Ping(Ping { nonce: 1 }));
    assert!(matches!(pending.next_kind(T), server_frame::Kind::Pong(_)));

    // The 4th gets UNAVAILABLE and is closed. (It sends nothing, so the close
    // cannot turn into a reset that would hide the error.)
    let mut fourth = r.raw();
    let e = fourth.expect_error(T);
    assert_error(&e, Status::Unavailable);
    let rest = fourth.read_until_closed(T);
    assert!(rest.is_empty(), "{rest:?}");

    // A client that sends its Login right away gets the same answer.
    match r.client_with(cfg("conn-d")) {
        Err(ClientError::Auth { code, .. }) => assert_eq!(code, Status::Unavailable),
        Err(e) => panic!("expected UNAVAILABLE, got {e}"),
        Ok(_) => panic!("a 4th connection logged in with --max-connections 3"),
    }

    // The three are unaffected.
    a.send_wait("conn-b", b"still routing").expect("send");
    let mut b = b;
    assert!(b.recv(Some(T)).expect("recv").is_some());
    pending.send(client_frame::Kind::Ping(Ping { nonce: 2 }));
    assert!(matches!(pending.next_kind(T), server_frame::Kind::Pong(_)));

    slot_frees_after_a_logout(&r, &mut a, b, "conn-c");
}

#[test]
fn connection_over_max_connections_per_ip_is_refused() {
    let r = RouterProc::start(&["--shards", "2", "--max-connections-per-ip", "2"]);
    let mut a = r.client_with(cfg("ip-a")).expect("1st connection");
    let b = r.client_with(cfg("ip-b")).expect("2nd connection");

    // The 3rd from 127.0.0.1 gets UNAVAILABLE and is closed, and cannot log in.
    let mut third = r.raw();
    let e = third.expect_error(T);
    assert_error(&e, Status::Unavailable);
    assert!(e.reason.contains("address"), "{e:?}");
    let rest = third.read_until_closed(T);
    assert!(rest.is_empty(), "{rest:?}");
    match r.client_with(cfg("ip-c")) {
        Err(ClientError::Auth { code, .. }) => assert_eq!(code, Status::Unavailable),
        Err(e) => panic!("expected UNAVAILABLE, got {e}"),
        Ok(_) => panic!("a 3rd connection from one address logged in"),
    }
    // The HTTP port (and so WebSocket) counts in the same slots: 503.
    let answer = r.http_get("/healthz");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("from this address"), "{answer}");

    // Another address is not limited by it.
    let mut other = Raw::from_stream(connect_from("127.0.0.2", r.connect_addr()));
    other.login("ip-other");
    // The three refusals are counted, by bound (read from the other address).
    let metrics =
        ringrouter_tests::http_get_on(connect_from("127.0.0.2", r.http_addr()), "/metrics");
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringrouter_connections_refused_total{limit=\"per_ip\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(refused, Some(3.0), "{metrics}");

    slot_frees_after_a_logout(&r, &mut a, b, "ip-c");
}

/// Once `b` logs out, its slot is freed (the router notices asynchronously): a client
/// `user` connects and gets a message from `a`.
fn slot_frees_after_a_logout(r: &RouterProc, a: &mut Client, b: Client, user: &str) {
    b.close().expect("logout");
    let mut c = None;
    assert!(
        wait_until(T, || {
            c = r.client_with(cfg(user)).ok();
            c.is_some()
        }),
        "a slot was not freed after a logout"
    );
    let mut c = c.expect("connected");
    a.send_wait(user, b"hello c").expect("send");
    assert!(c.recv(Some(T)).expect("recv").is_some());
}

/// A TCP connection to `to` from the local address `from` (any of 127/8 is loopback).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("address");
    s.bind(&local.into()).expect("bind");
    s.connect_timeout(&to.into(), T)
        .unwrap_or_else(|e| panic!("connect to {to} from {from}: {e}"));
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.into()
}

#[test]
fn third_session_of_a_user_is_rate_limited() {
    let r = RouterProc::start(&["--shards", "2", "--max-sessions-per-user", "2"]);
    let device = |d: &str| {
        let mut c = cfg("twice");
        c.device = d.into();
        c
    };
    let _one = r.client_with(device("one")).expect("1st session");
    let two = r.client_with(device("two")).expect("2nd session");
    match r.client_with(device("three")) {
        Ok(_) => panic!("a 3rd session of the same user was accepted"),
        Err(ClientError::Auth { code, reason }) => {
            assert_eq!(code, Status::RateLimited, "{reason}");
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("expected RATE_LIMITED, got {e}"),
    }
    // Another user is not limited by it.
    let mut other = r.client_with(cfg("someone-else")).expect("other user");
    // Both sessions still get messages.
    other.send_wait("twice", b"to both").expect("send");
    let mut two = two;
    assert!(two.recv(Some(T)).expect("recv").is_some());
    // After one logs out, a new session fits (once the router has processed the logout).
    two.close().expect("logout");
    let mut again = None;
    assert!(
        wait_until(T, || {
            again = r.client_with(device("again")).ok();
            again.is_some()
        }),
        "no session slot after a logout"
    );
}

#[test]
fn user_name_longer_than_64_bytes_is_refused() {
    let r = RouterProc::start(&["--shards", "2"]);
    let refused = |name: String| match r.client_with(cfg(&name)) {
        Ok(_) => panic!("{} byte name accepted", name.len()),
        Err(ClientError::Auth { code, reason }) => {
            assert_eq!(code, Status::BadRequest, "{reason}");
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("expected a refused login, got {e}"),
    };
    refused("x".repeat(65));
    refused("x".repeat(10_000));
    // Bytes, not characters: 33 two-byte characters are 66 bytes.
    refused("é".repeat(33));
    // 64 bytes is fine, also in two-byte characters.
    let mut a = r.client_with(cfg(&"y".repeat(64))).expect("64-byte name");
    let mut b = r.client_with(cfg(&"é".repeat(32))).expect("64-byte name");
    a.send_wait(&"é".repeat(32), b"hi").expect("send");
    let m = b.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(m.sender, "y".repeat(64));
    // A Send to a name over the limit is refused too.
    let err = a
        .send_wait(&"z".repeat(65), b"x")
        .expect_err("long to_user");
    assert_eq!(err.code(), Some(Status::BadRequest), "{err}");
}

#[test]
fn connection_that_never_logs_in_is_closed() {
    let r = RouterProc::start(&["--shards", "2", "--login-timeout", "300ms"]);
    let t0 = Instant::now();
    let mut silent = r.raw();
    // Another one keeps talking (Pings) without logging in: talking is not logging in.
    let mut chatty = r.raw();
    let mut nonce = 0;
    let chatty_end = loop {
        nonce += 1;
        if chatty.write(&ping(nonce)).is_err() {
            break ReadEnd::Closed("write failed".into());
        }
        match chatty.next(T) {
            Ok(f) => match f.kind {
                Some(server_frame::Kind::Pong(_)) => {}
                Some(server_frame::Kind::Error(e)) => {
                    assert_error(&e, Status::Timeout);
                    break chatty.read_until_end(T).1;
                }
                other => panic!("unexpected frame {other:?}"),
            },
            Err(e) => break e,
        }
        assert!(t0.elapsed() < T, "a pinging connection was never closed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(matches!(chatty_end, ReadEnd::Closed(_)), "{chatty_end:?}");

    let frames = silent.read_until_closed(T);
    let took = t0.elapsed();
    eprintln!("silent connection closed after {took:?}: {frames:?}");
    assert!(
        took >= Duration::from_millis(300),
        "closed before the login timeout"
    );
    for f in frames {
        match f.kind {
            Some(server_frame::Kind::Error(e)) => assert_error(&e, Status::Timeout),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // A prompt login is unaffected, and stays logged in past the timeout.
    let mut c = Client::connect(r.connect_addr(), ClientConfig::new("prompt")).expect("login");
    std::thread::sleep(Duration::from_millis(400));
    c.ping().expect("still connected after the login timeout");
}

fn ping(nonce: u64) -> Vec<u8> {
    client_frame_bytes(client_frame::Kind::Ping(Ping { nonce }))
}
