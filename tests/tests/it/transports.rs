//! The client transports against the real router: TLS on the TCP port,
//! WebSocket (subprotocol `ringrouter.v1`) on the HTTP port, WebSocket over
//! TLS; sessions on different transports talk to each other; a certificate the
//! client does not trust is refused with a TLS error.

use std::net::SocketAddr;
use std::time::Duration;

use ringrouter_client::threaded::ThreadedClient;
use ringrouter_client::{Client, ClientConfig, ClientError, Transport};
use ringrouter_tests::tls::TestCert;
use ringrouter_tests::{users_on_shards, RouterProc};

const T: Option<Duration> = Some(Duration::from_secs(5));

fn cfg(user: &str, t: &Transport) -> ClientConfig {
    let mut c = ClientConfig::new(user);
    c.transport = t.clone();
    c
}

fn connect(addr: SocketAddr, user: &str, t: &Transport) -> Client {
    Client::connect(addr, cfg(user, t))
        .unwrap_or_else(|e| panic!("{} login of {user}: {e}", t.name()))
}

/// Messages both ways between `a` (on `ta` at `addr_a`) and `b`, across shards:
/// direct (with and without a result), a room, and a large payload.
fn exchange(prefix: &str, addr_a: SocketAddr, ta: &Transport, addr_b: SocketAddr, tb: &Transport) {
    let users = users_on_shards(prefix, 2);
    let (ua, ub) = (&users[0], &users[1]);
    let mut a = connect(addr_a, ua, ta);
    let mut b = connect(addr_b, ub, tb);
    assert_eq!((a.shard(), b.shard()), (0, 1));
    a.send_wait(ub, b"hello").expect("send_wait");
    let m = b.recv(T).expect("recv").expect("a message");
    assert_eq!(
        (m.sender.as_str(), &m.payload[..]),
        (ua.as_str(), &b"hello"[..])
    );
    // Large payloads back to back: a TLS or WebSocket session encodes its write batch
    // 256 KiB at a time, so frames are cut at slice ends and carried over.
    let bigs: Vec<Vec<u8>> = [300_000usize, 90_000, 700_000, 5, 262_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 31 + j % 251) as u8).collect())
        .collect();
    for big in &bigs {
        b.send(ua, big).expect("send");
    }
    for big in &bigs {
        let m = a.recv(T).expect("recv").expect("the large message");
        assert_eq!(m.payload.len(), big.len());
        assert!(
            m.payload[..] == big[..],
            "a large payload came back changed"
        );
    }
    let n = 500;
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("m{i}").into_bytes()).collect();
    a.send_many(ub, payloads.iter().map(|p| &p[..]))
        .expect("send_many");
    for p in &payloads {
        let m = b.recv(T).expect("recv").expect("in order");
        assert_eq!(&m.payload[..], &p[..]);
    }
    let room = format!("{prefix}-room");
    a.create_room(&room, None).expect("create");
    b.join_room(&room, None).expect("join");
    a.send_room_wait(&room, b"to the room").expect("room send");
    let m = b.recv(T).expect("recv").expect("room message");
    assert_eq!(
        (m.room.as_deref(), &m.payload[..]),
        (Some(room.as_str()), &b"to the room"[..])
    );
    a.ping().expect("ping");
    a.close().expect("close");
    b.close().expect("close");
}

#[test]
fn tls_login_and_exchange() {
    let cert = TestCert::new();
    let r = RouterProc::start(&[&cert.args()[..], &["--shards", "2"]].concat());
    let t = Transport::tcp().with_tls(Some(cert.cert.clone()));
    exchange("tls", r.addr, &t, r.addr, &t);
    // By name, not only by IP.
    let by_name = t.clone().with_server_name("localhost");
    let c = connect(r.addr, "tls-by-name", &by_name);
    c.close().expect("close");
}

#[test]
fn ws_login_and_exchange_with_tcp_sessions() {
    let r = RouterProc::start(&["--shards", "2"]);
    let ws = Transport::websocket();
    exchange("ws", r.http_addr(), &ws, r.http_addr(), &ws);
    // A WebSocket session and a TCP session are sessions alike.
    exchange("wstcp", r.http_addr(), &ws, r.addr, &Transport::tcp());
}

#[test]
fn wss_login_and_exchange_with_tls_sessions() {
    let cert = TestCert::new();
    let r = RouterProc::start(&[&cert.args()[..], &["--shards", "2"]].concat());
    let wss = Transport::websocket().with_tls(Some(cert.cert.clone()));
    let tls = Transport::tcp().with_tls(Some(cert.cert.clone()));
    exchange("wss", r.http_addr(), &wss, r.addr, &tls);
    let other = TestCert::new();
    expect_refused(
        r.http_addr(),
        &Transport::websocket().with_tls(Some(other.cert.clone())),
    );
}

#[test]
fn threaded_clients_over_ws_and_tls() {
    let cert = TestCert::new();
    let r = RouterProc::start(&[&cert.args()[..], &["--shards", "2"]].concat());
    let users = users_on_shards("thr", 2);
    let wss = Transport::websocket().with_tls(Some(cert.cert.clone()));
    let tls = Transport::tcp().with_tls(Some(cert.cert.clone()));
    let a = ThreadedClient::connect(r.http_addr(), cfg(&users[0], &wss)).expect("wss login");
    let b = ThreadedClient::connect(r.addr, cfg(&users[1], &tls)).expect("tls login");
    let n = 5000;
    for i in 0..n {
        a.send(&users[1], format!("{i}").as_bytes()).expect("send");
    }
    for i in 0..n {
        let m = b.recv(T).expect("recv").expect("a message");
        assert_eq!(m.payload, format!("{i}").as_bytes());
    }
    b.send_wait(&users[0], b"back").expect("send_wait");
    let m = a.recv(T).expect("recv").expect("reply");
    assert_eq!(&m.payload[..], b"back");
    a.close().expect("close");
    b.close().expect("close");
    assert!(a.is_closed() && b.is_closed());
}

fn expect_refused(addr: SocketAddr, t: &Transport) {
    match Client::connect(addr, cfg("mallory", t)) {
        Err(ClientError::Tls(why)) => assert!(why.contains("certificate"), "{why}"),
        Err(e) => panic!("{t:?}: expected a TLS error, got {e}"),
        Ok(_) => panic!("{t:?}: logged in with an untrusted certificate"),
    }
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let cert = TestCert::new();
    let other = TestCert::new();
    let r = RouterProc::start(&cert.args());
    let cases = [
        (r.addr, Transport::tcp().with_tls(Some(other.cert.clone()))),
        // The webpki roots do not know a self-signed certificate.
        (r.addr, Transport::tcp().with_tls(None)),
        // The right CA, the wrong name.
        (
            r.addr,
            Transport::tcp()
                .with_tls(Some(cert.cert.clone()))
                .with_server_name("example.org"),
        ),
    ];
    for (addr, t) in cases {
        expect_refused(addr, &t);
    }
    // The router still serves clients that trust it.
    let t = Transport::tcp().with_tls(Some(cert.cert.clone()));
    connect(r.addr, "trusting", &t).close().expect("close");
}
