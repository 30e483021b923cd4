//! WebSocket sessions on the HTTP port (`GET /ws`): the upgrade and its refusals,
//! sessions that are first-class (across shards, with TCP sessions), RFC 6455 ping and
//! close, and every bound: oversize, unmasked, fragmented-forever and pre-login
//! messages get their close code and free the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;
use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, Login, Send, ServerFrame};
use ringrouter_proto::Status;
use ringrouter_tests::{users_on_shards, Driver, RouterProc};

const T: Duration = Duration::from_secs(5);

/// A minimal RFC 6455 client over any byte stream.
pub(crate) struct Ws<S: Read + Write> {
    pub(crate) s: S,
    buf: BytesMut,
}

/// What the client read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Got {
    Binary(Vec<u8>),
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16),
    /// The connection ended without a close frame.
    Eof,
}

pub(crate) fn upgrade_request(protocol: Option<&str>, version: &str) -> String {
    let mut r = format!(
        "GET /ws HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: {version}\r\n"
    );
    if let Some(p) = protocol {
        r.push_str(&format!("sec-websocket-protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Reads an HTTP response head; returns it and any bytes after it.
pub(crate) fn read_head<S: Read>(s: &mut S) -> (String, BytesMut) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            return (head, BytesMut::from(&buf[end + 4..]));
        }
        let n = s.read(&mut chunk).expect("read head");
        assert!(
            n > 0,
            "closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl<S: Read + Write> Ws<S> {
    /// Upgrades `s`; panics unless the answer is 101 with `protocol`.
    pub(crate) fn open(mut s: S, protocol: &str) -> Ws<S> {
        s.write_all(upgrade_request(Some(protocol), "13").as_bytes())
            .expect("write upgrade");
        let (head, rest) = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("sec-websocket-protocol: {protocol}")),
            "{head}"
        );
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        Ws { s, buf: rest }
    }

    pub(crate) fn frame(&mut self, opcode: u8, fin: bool, masked: bool, payload: &[u8]) {
        let v = frame_bytes(opcode, fin, masked, payload);
        // The router may close while a large frame is being written.
        let _ = self.s.write_all(&v);
    }

    pub(crate) fn send(&mut self, kind: client_frame::Kind) {
        let body = ClientFrame { kind: Some(kind) }.encode_to_vec();
        self.frame(0x2, true, true, &body);
    }

    pub(crate) fn next(&mut self) -> Got {
        let deadline = Instant::now() + T;
        let mut chunk = vec![0u8; 65536];
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    l => (l as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let _ = self.buf.split_to(at);
                    let data = self.buf.split_to(len).to_vec();
                    return match op {
                        0x1 => Got::Text(String::from_utf8(data).expect("utf-8 text")),
                        0x2 => Got::Binary(data),
                        0x8 => Got::Close(if data.len() >= 2 {
                            u16::from_be_bytes([data[0], data[1]])
                        } else {
                            1005
                        }),
                        0x9 => Got::Ping(data),
                        0xA => Got::Pong(data),
                        other => panic!("opcode {other}"),
                    };
                }
            }
            assert!(Instant::now() < deadline, "nothing from the router in time");
            match self.s.read(&mut chunk) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Got::Eof,
            }
        }
    }

    /// The next protocol frame (skipping pings).
    pub(crate) fn next_frame(&mut self) -> ServerFrame {
        loop {
            match self.next() {
                Got::Binary(b) => return ServerFrame::decode(&b[..]).expect("frame decodes"),
                Got::Ping(_) | Got::Pong(_) => {}
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    pub(crate) fn login(&mut self, user: &str) -> u32 {
        self.send(login_kind(user));
        match self.next_frame().kind {
            Some(server_frame::Kind::LoginResult(lr)) => {
                assert_eq!(lr.status, Status::Ok as i32, "{}", lr.reason);
                lr.shard
            }
            other => panic!("expected LoginResult, got {other:?}"),
        }
    }

    /// Reads until the close frame (skipping data); returns its code.
    pub(crate) fn close_code(&mut self) -> u16 {
        loop {
            match self.next() {
                Got::Close(c) => return c,
                Got::Eof => return 1006,
                _ => {}
            }
        }
    }
}

/// A client frame's bytes (masked with a fixed key when `masked`).
pub(crate) fn frame_bytes(opcode: u8, fin: bool, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1u8, 0x07, 0x5c, 0xe3];
    let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if masked { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        v.push(m | n as u8);
    } else if n <= 65535 {
        v.push(m | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(m | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if masked {
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// A Login of `user` from device "ws" (request 1).
fn login_kind(user: &str) -> client_frame::Kind {
    client_frame::Kind::Login(Login {
        request_id: 1,
        user: user.into(),
        device: "ws".into(),
        ..Default::default()
    })
}

/// A binary message carrying `kind`, as a client sends it.
fn message_bytes(kind: client_frame::Kind) -> Vec<u8> {
    frame_bytes(
        0x2,
        true,
        true,
        &ClientFrame { kind: Some(kind) }.encode_to_vec(),
    )
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

pub(crate) fn open(r: &RouterProc) -> Ws<TcpStream> {
    Ws::open(tcp(r.http_addr()), "ringrouter.v1")
}

fn deliver_of(f: ServerFrame) -> (String, Vec<u8>) {
    match f.kind {
        Some(server_frame::Kind::Deliver(d)) => (d.from_user, d.payload.to_vec()),
        other => panic!("expected Deliver, got {other:?}"),
    }
}

fn sessions_across_shards(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    for round in 0..3 {
        let users = users_on_shards(&format!("ws{round}_"), 2);
        let mut a = open(&r);
        let mut b = open(&r);
        assert_eq!(a.login(&users[0]), 0);
        assert_eq!(b.login(&users[1]), 1);
        let big = vec![round as u8; 70_000];
        a.send(client_frame::Kind::Send(Send {
            to_user: users[1].clone(),
            payload: big.clone().into(),
            ..Default::default()
        }));
        let (from, payload) = deliver_of(b.next_frame());
        assert_eq!(from, users[0]);
        assert!(payload == big, "payload of round {round}");
        // A TCP session of the same router talks with a WebSocket one.
        let mut c = r.client(&format!("tcp{round}"));
        c.send(&users[0], b"from tcp").expect("send");
        assert_eq!(
            deliver_of(a.next_frame()),
            (format!("tcp{round}"), b"from tcp".to_vec())
        );
        b.send(client_frame::Kind::Send(Send {
            to_user: format!("tcp{round}"),
            payload: b"from ws".to_vec().into(),
            ..Default::default()
        }));
        let m = c.recv(Some(T)).expect("recv").expect("message");
        assert_eq!(
            (m.sender.as_str(), &m.payload[..]),
            (users[1].as_str(), &b"from ws"[..])
        );
    }
}

#[test]
fn sessions_across_shards_io_uring() {
    sessions_across_shards(Driver::Default);
}

#[test]
fn sessions_across_shards_epoll() {
    sessions_across_shards(Driver::Legacy);
}

#[test]
fn ping_is_answered_and_close_is_echoed() {
    let r = RouterProc::start(&[]);
    let mut ws = open(&r);
    // Before and after login.
    ws.frame(0x9, true, true, b"hi");
    assert_eq!(ws.next(), Got::Pong(b"hi".to_vec()));
    ws.login("pinger");
    ws.frame(0x9, true, true, b"again");
    assert_eq!(ws.next(), Got::Pong(b"again".to_vec()));
    ws.frame(0x8, true, true, &[0x03, 0xe8]);
    assert_eq!(ws.close_code(), 1000);
    assert_eq!(ws.next(), Got::Eof);
}

#[test]
fn violations_close_with_their_codes() {
    let r = RouterProc::start(&["--max-frame-bytes", "64KiB"]);
    // A message over --max-frame-bytes: refused from its header.
    let mut ws = open(&r);
    ws.login("big");
    ws.frame(0x2, true, true, &vec![0u8; 80 * 1024]);
    assert_eq!(ws.close_code(), 1009);
    // Before login the bound is --max-prelogin-frame-bytes (16 KiB).
    let mut ws = open(&r);
    ws.frame(0x2, true, true, &vec![0u8; 20 * 1024]);
    assert_eq!(ws.close_code(), 1009);
    // Unmasked.
    let mut ws = open(&r);
    ws.login("unmasked");
    ws.frame(0x2, true, false, b"\x0a\x00");
    assert_eq!(ws.close_code(), 1002);
    // Fragmented forever: empty continuations never end the message.
    let mut ws = open(&r);
    ws.login("frag");
    ws.frame(0x2, false, true, b"\x12");
    for _ in 0..1100 {
        ws.frame(0x0, false, true, b"");
    }
    assert_eq!(ws.close_code(), 1008);
    // Text on the binary subprotocol.
    let mut ws = open(&r);
    ws.login("text");
    ws.frame(0x1, true, true, b"{}");
    assert_eq!(ws.close_code(), 1003);
    // A binary message that is not a frame: the protocol's BAD_FRAME error first.
    let mut ws = open(&r);
    ws.login("junk");
    ws.frame(0x2, true, true, &[0xff, 0xff, 0xff]);
    match ws.next_frame().kind {
        Some(server_frame::Kind::Error(e)) => assert_eq!(e.code, Status::BadFrame as i32),
        other => panic!("expected Error, got {other:?}"),
    }
    // Then a close that says so (1007, not a normal closure), unless the socket went first.
    assert!(matches!(ws.close_code(), 1007 | 1006));
    // The same before login.
    let mut ws = open(&r);
    ws.frame(0x2, true, true, &[0xff, 0xff, 0xff]);
    match ws.next_frame().kind {
        Some(server_frame::Kind::Error(e)) => assert_eq!(e.code, Status::BadFrame as i32),
        other => panic!("expected Error, got {other:?}"),
    }
    assert!(matches!(ws.close_code(), 1007 | 1006));
    // The router still serves.
    let mut ws = open(&r);
    ws.login("after");
}

#[test]
fn bad_upgrades_get_http_errors() {
    let r = RouterProc::start(&[]);
    for (proto, version, want) in [
        (Some("mqtt"), "13", "HTTP/1.1 400"),
        (Some("ringrouter.v1"), "8", "HTTP/1.1 426"),
    ] {
        let mut s = tcp(r.http_addr());
        s.write_all(upgrade_request(proto, version).as_bytes())
            .expect("write");
        let (head, _) = read_head(&mut s);
        assert!(head.starts_with(want), "{head}");
    }
    // An upgrade with a body: refused before the body is read (its bytes would have
    // reached the WebSocket decoder unbounded by the pre-login frame bound).
    let mut s = tcp(r.http_addr());
    let req = upgrade_request(Some("ringrouter.v1"), "13")
        .replace("\r\n\r\n", "\r\ncontent-length: 1000000\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let (head, _) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // Over HTTP/1.0 (RFC 6455 4.1 asks for 1.1 or higher).
    let mut s = tcp(r.http_addr());
    let req = upgrade_request(Some("ringrouter.v1"), "13").replacen("HTTP/1.1", "HTTP/1.0", 1);
    s.write_all(req.as_bytes()).expect("write");
    let (head, _) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // No subprotocol named: the binary one.
    let mut s = tcp(r.http_addr());
    s.write_all(upgrade_request(None, "13").as_bytes())
        .expect("write");
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = Ws { s, buf: rest };
    ws.login("noproto");
}

#[test]
fn websocket_over_tls() {
    let (_dir, cert, key, der) = crate::tls::self_signed();
    let r = RouterProc::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let cfg = crate::tls::client_config(&der);
    let mut ws = open_tls(&r, &cfg);
    let mut other = open_tls(&r, &cfg);
    ws.login("secure");
    other.login("other");
    other.send(client_frame::Kind::Send(Send {
        to_user: "secure".into(),
        payload: b"to ws".to_vec().into(),
        ..Default::default()
    }));
    let (from, payload) = deliver_of(ws.next_frame());
    assert_eq!((from.as_str(), &payload[..]), ("other", &b"to ws"[..]));
    ws.frame(0x9, true, true, b"tls");
    assert_eq!(ws.next(), Got::Pong(b"tls".to_vec()));
}

#[test]
fn json_subprotocol_speaks_the_protobuf_json_mapping() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut ws = json_login(
        &r,
        r#"{"login":{"requestId":"5","user":"jay","device":"browser"}}"#,
    );
    let Got::Text(t) = ws.next() else {
        panic!("expected a text message")
    };
    let f = ringrouter_proto::json::server_frame_from_json(t.as_bytes()).expect("a frame");
    match f.kind {
        Some(server_frame::Kind::LoginResult(lr)) => {
            assert_eq!((lr.request_id, lr.status), (5, Status::Ok as i32), "{t}");
        }
        other => panic!("expected LoginResult, got {other:?}"),
    }
    assert!(t.contains("\"loginResult\""), "{t}");
    // A binary peer sends to it; the payload arrives as base64.
    let mut bin = open(&r);
    bin.login("bin");
    bin.send(client_frame::Kind::Send(Send {
        to_user: "jay".into(),
        payload: b"hi there".to_vec().into(),
        ..Default::default()
    }));
    let Got::Text(t) = ws.next() else {
        panic!("expected a text message")
    };
    assert!(
        t.contains("\"deliver\"") && t.contains("aGkgdGhlcmU="),
        "{t}"
    );
    // Binary on the JSON subprotocol: 1003; JSON that is not a frame: 1007.
    ws.frame(0x2, true, true, b"\x00");
    assert_eq!(ws.close_code(), 1003);
    let mut ws = Ws::open(tcp(r.http_addr()), "ringrouter.v1.json");
    ws.frame(0x1, true, true, br#"{"login":{"requestId":[]}}"#);
    assert_eq!(ws.close_code(), 1007);
}

/// A WebSocket over TLS on the HTTP port.
fn open_tls(
    r: &RouterProc,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
) -> Ws<crate::tls::TlsStream> {
    Ws::open(crate::tls::connect_tls(r.http_addr(), cfg), "ringrouter.v1")
}

/// A session on the JSON subprotocol that has sent `login` (its answer not read).
fn json_login(r: &RouterProc, login: &str) -> Ws<TcpStream> {
    let mut ws = Ws::open(tcp(r.http_addr()), "ringrouter.v1.json");
    ws.frame(0x1, true, true, login.as_bytes());
    ws
}

/// Names of `n` users whose home shard, of `shards`, is `shard`.
fn names_on_shard(prefix: &str, shard: usize, shards: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| ringrouter::shard::home_shard(u.as_bytes(), shards) == shard)
        .take(n)
        .collect()
}

/// A client frame with a zero mask (the payload goes as it is).
fn zero_masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut v = vec![
        if fin { 0x80 } else { 0 } | opcode,
        0x80 | payload.len() as u8,
    ];
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

/// One WebSocket client that keeps its socket full (messages of 1 022 frames each, a
/// Ping split up: cheap to send, dearer to decode than to send) does not stop the rest of
/// its shard: a session of the shard is still answered, and a login homed on the shard
/// still completes, within a fraction of a second. The session reader's reads do not wait
/// while bytes are there; before, it never let the shard's other tasks (sessions, accept
/// loops, handed-over logins, timers) run for as long as the client sent (both took the
/// whole 10 s of the stream).
#[test]
fn a_websocket_client_that_keeps_its_socket_full_does_not_stall_its_shard() {
    use ringrouter_proto::v1::Ping;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let r = RouterProc::start(&["--shards", "2"]);
    let names = names_on_shard("full", 1, 2, 8);
    let mut honest = r.raw_login(&names[1]);
    let s = TcpStream::connect(r.http_addr()).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut ws = Ws::open(s, "ringrouter.v1");
    assert_eq!(ws.login(&names[0]), 1, "the streamer lives on shard 1");
    let body = ClientFrame {
        kind: Some(client_frame::Kind::Ping(Ping { nonce: 7 })),
    }
    .encode_to_vec();
    let mut msg = zero_masked(0x2, false, &body[..1]);
    for _ in 0..1020 {
        msg.extend(zero_masked(0x0, false, b""));
    }
    msg.extend(zero_masked(0x0, true, &body[1..]));
    let burst: Vec<u8> = msg.repeat(16);
    let stop = Arc::new(AtomicBool::new(false));
    let mut reader = ws.s.try_clone().expect("clone");
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let drain_stop = stop.clone();
    // The streamer reads its Pongs, so its own queue never holds it back.
    let drain = std::thread::spawn(move || {
        let mut sink = vec![0u8; 1 << 16];
        while !drain_stop.load(Ordering::Relaxed) {
            if let Ok(0) = reader.read(&mut sink) {
                return;
            }
        }
    });
    let stream_stop = stop.clone();
    let mut writer = ws.s;
    let streamer = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        while !stream_stop.load(Ordering::Relaxed) && Instant::now() < end {
            if writer.write_all(&burst).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for nonce in 1..=5 {
        let t = Instant::now();
        honest.send(client_frame::Kind::Ping(Ping { nonce }));
        loop {
            match honest.next_kind(Duration::from_secs(15)) {
                server_frame::Kind::Pong(p) if p.nonce == nonce => break,
                _ => {}
            }
        }
        worst = worst.max(t.elapsed());
        let t = Instant::now();
        let _newcomer = r.raw_login(&names[1 + nonce as usize]);
        worst = worst.max(t.elapsed());
    }
    let streaming = !streamer.is_finished();
    stop.store(true, Ordering::Relaxed);
    streamer.join().expect("streamer");
    drain.join().expect("drain");
    assert!(
        worst < Duration::from_millis(1000),
        "a ping or a login on the streamer's shard took {worst:?}"
    );
    assert!(streaming, "the client stopped streaming early");
}

/// A close frame ends the connection even when other frames came in the same read:
/// what preceded it is acted on, nothing that follows it is (RFC 6455 5.5.1), and the
/// router closes the TCP connection. Before, the close was echoed but the session went
/// on decoding and routing what came after it, and one that logged in in the same
/// write as its close stayed logged in.
#[test]
fn a_close_in_the_same_write_as_other_frames_ends_the_connection() {
    let r = RouterProc::start(&[]);
    let mut peer = r.client("closepeer");
    let send = |text: &[u8]| {
        message_bytes(client_frame::Kind::Send(Send {
            to_user: "closepeer".into(),
            payload: text.to_vec().into(),
            ..Default::default()
        }))
    };
    let mut ws = open(&r);
    ws.login("closer");
    let mut burst = send(b"before");
    burst.extend(frame_bytes(0x8, true, true, &[0x03, 0xe8]));
    burst.extend(send(b"after"));
    ws.s.write_all(&burst).expect("write");
    assert_eq!(ws.close_code(), 1000);
    assert_eq!(ws.next(), Got::Eof, "the router closes the connection");
    let m = peer
        .recv(Some(T))
        .expect("recv")
        .expect("the message before the close");
    assert_eq!(&m.payload[..], b"before");
    let late = peer.recv(Some(Duration::from_millis(500))).expect("recv");
    assert!(
        late.is_none(),
        "a message sent after the close was routed: {late:?}"
    );
    // A Login and a close in one write: the session it starts ends at once.
    let mut ws = open(&r);
    let mut burst = message_bytes(login_kind("closer2"));
    burst.extend(frame_bytes(0x8, true, true, &[0x03, 0xe8]));
    burst.extend(send(b"after login"));
    ws.s.write_all(&burst).expect("write");
    assert_eq!(ws.close_code(), 1000);
    assert_eq!(ws.next(), Got::Eof, "the router closes the connection");
    let late = peer.recv(Some(Duration::from_millis(500))).expect("recv");
    assert!(
        late.is_none(),
        "a message sent after the close was routed: {late:?}"
    );
}

/// Frames pipelined behind a Login meet the session's bounds, not the pre-login one
/// (as over TCP): a 100 KB Send written with the Login is answered, where it closed the
/// connection 1009 "message over 16384 bytes" before the Login was answered.
#[test]
fn a_big_message_pipelined_behind_the_login_meets_the_session_bound() {
    let r = RouterProc::start(&[]);
    let mut peer = r.client("bigpeer");
    let mut ws = open(&r);
    let big = vec![7u8; 100_000];
    let mut burst = message_bytes(login_kind("pipeliner"));
    burst.extend(message_bytes(client_frame::Kind::Send(Send {
        request_id: 2,
        to_user: "bigpeer".into(),
        payload: big.clone().into(),
        want_result: true,
        ..Default::default()
    })));
    ws.s.write_all(&burst).expect("write");
    match ws.next_frame().kind {
        Some(server_frame::Kind::LoginResult(lr)) => {
            assert_eq!(lr.status, Status::Ok as i32, "{}", lr.reason)
        }
        other => panic!("expected LoginResult, got {other:?}"),
    }
    match ws.next_frame().kind {
        Some(server_frame::Kind::SendResult(sr)) => {
            assert_eq!(sr.status, Status::Ok as i32, "{}", sr.reason)
        }
        other => panic!("expected SendResult, got {other:?}"),
    }
    let m = peer.recv(Some(T)).expect("recv").expect("the big message");
    assert!(m.payload[..] == big[..]);
    // Before the Login the pre-login bound still holds for a message on its own.
    let mut ws = open(&r);
    ws.frame(0x2, true, true, &vec![0u8; 20 * 1024]);
    assert_eq!(ws.close_code(), 1009);
}

/// A session the router ends says why in its close frame: a heartbeat timeout closes
/// 1008 (it was a normal closure, 1000, with no reason: a browser could not tell it
/// from a Logout), and a JSON message whose frame is over `--max-frame-bytes` closes
/// 1009 as a binary one does (it was answered TOO_LARGE, then closed 1000).
#[test]
fn the_routers_own_closes_say_why() {
    let r = RouterProc::start(&[
        "--max-frame-bytes",
        "64KiB",
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-timeout",
        "400ms",
    ]);
    let mut quiet = open(&r);
    quiet.login("quiet");
    assert_eq!(quiet.close_code(), 1008, "a heartbeat timeout");
    let mut ws = json_login(
        &r,
        r#"{"login":{"requestId":"1","user":"jsonbig","device":"browser"}}"#,
    );
    assert!(matches!(ws.next(), Got::Text(_)), "the LoginResult");
    let send = ClientFrame {
        kind: Some(client_frame::Kind::Send(Send {
            to_user: "quiet".into(),
            payload: vec![b'x'; 70 * 1024].into(),
            ..Default::default()
        })),
    };
    let text = ringrouter_proto::json::client_frame_to_json(&send);
    assert!(text.len() < 2 * 64 * 1024, "within the JSON message bound");
    ws.frame(0x1, true, true, text.as_bytes());
    assert_eq!(ws.close_code(), 1009);
}

/// Frames and the end of the stream in one flight, before Login: over TLS, a Login, a
/// Send and the close_notify in one write log in and route the Send (the Send was
/// dropped: the close ended the stream after the first message); and a violation behind
/// a first message closes with its code at once (it was missed until the login timeout).
#[test]
fn what_comes_with_the_first_message_before_login_is_not_lost_or_missed() {
    let (_dir, cert, key, der) = crate::tls::self_signed();
    let r = RouterProc::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let cfg = crate::tls::client_config(&der);
    let mut peer = open_tls(&r, &cfg);
    peer.login("flightpeer");
    let mut ws = open_tls(&r, &cfg);
    let mut flight = message_bytes(login_kind("flight"));
    flight.extend(message_bytes(client_frame::Kind::Send(Send {
        to_user: "flightpeer".into(),
        payload: b"in the last flight".to_vec().into(),
        ..Default::default()
    })));
    ws.s.conn.writer().write_all(&flight).expect("plaintext");
    ws.s.conn.send_close_notify();
    while ws.s.conn.wants_write() {
        ws.s.conn.write_tls(&mut ws.s.sock).expect("flight");
    }
    let (from, payload) = deliver_of(peer.next_frame());
    assert_eq!(
        (from.as_str(), &payload[..]),
        ("flight", &b"in the last flight"[..])
    );
    // Binary subprotocol: a Ping, text (a violation) and a Login in one write.
    let mut ws = open_tls(&r, &cfg);
    let mut burst = message_bytes(client_frame::Kind::Ping(ringrouter_proto::v1::Ping {
        nonce: 1,
    }));
    burst.extend(frame_bytes(0x1, true, true, b"x"));
    burst.extend(message_bytes(login_kind("violator")));
    ws.s.write_all(&burst).expect("write");
    ws.s.flush().expect("flush");
    assert_eq!(ws.close_code(), 1003, "closed before the login timeout");
}

/// A TLS close_notify after part of a WebSocket frame (no TCP FIN) ends the connection
/// at once, before and after Login: nothing can complete that frame. (Once the end
/// waited for the frame, the stream ran on to the login or heartbeat timeout, and the
/// bytes read meanwhile were kept.)
#[test]
fn a_tls_close_after_part_of_a_frame_ends_the_connection() {
    let (_dir, cert, key, der) = crate::tls::self_signed();
    let r = RouterProc::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let cfg = crate::tls::client_config(&der);
    for login in [false, true] {
        let mut ws = open_tls(&r, &cfg);
        if login {
            ws.login("cut");
        }
        ws.s.conn.writer().write_all(&[0x82]).expect("plaintext");
        ws.s.conn.send_close_notify();
        while ws.s.conn.wants_write() {
            ws.s.conn.write_tls(&mut ws.s.sock).expect("flight");
        }
        let t = Instant::now();
        let _ = ws.close_code();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "ended after {:?} (login: {login})",
            t.elapsed()
        );
    }
}

/// A WebSocket message still arriving counts against `--max-input-bytes` as a TCP
/// frame does: past it, the connection whose message began first is closed 1013 (Try
/// Again Later); the next one's message, completed, is delivered.
#[test]
fn big_messages_still_arriving_meet_the_input_budget() {
    let r = RouterProc::start(&["--shards", "1", "--max-input-bytes", "2MiB"]);
    let mut peer = r.client("wsin-peer");
    let payload = vec![9u8; 900_000];
    let msg = message_bytes(client_frame::Kind::Send(Send {
        to_user: "wsin-peer".into(),
        payload: payload.clone().into(),
        ..Default::default()
    }));
    let (most, last) = msg.split_at(msg.len() - 1);
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut ws = open(&r);
        ws.login(&format!("wsin-{i}"));
        ws.s.write_all(most)
            .expect("the router reads a message's start");
        let local = ws.s.local_addr().expect("local address");
        let read = ringrouter_tests::wait_until(T, || {
            ringrouter_tests::tcp_queues(r.http_addr(), local).is_some_and(|(_, rx)| rx == 0)
        });
        assert!(read, "the router did not read the message's start");
        conns.push(ws);
    }
    assert_eq!(conns[0].close_code(), 1013);
    conns[1].s.write_all(last).expect("the last byte");
    let m = peer.recv(Some(T)).expect("recv").expect("the big message");
    assert_eq!(m.sender, "wsin-1");
    assert!(m.payload[..] == payload[..]);
}

/// A WebSocket session that sent one big message and went idle keeps no buffer of it:
/// 300 such sessions held 365 MiB (each its 1 MiB message's allocation, where the
/// frames after it went on being decoded, and its grown input buffers), counted by no
/// bound. Measured on 100 sessions: the router's RSS comes back within 40 MiB of where
/// it was.
#[test]
fn an_idle_websocket_session_keeps_nothing_of_its_last_big_message() {
    let r = RouterProc::start(&["--shards", "1"]);
    r.visit("wsidle-peer");
    let before = r.rss_kib();
    // Over the payload bound, within the frame bound: refused, nothing kept by the
    // router but what the reading left.
    let big = message_bytes(client_frame::Kind::Send(Send {
        request_id: 3,
        to_user: "wsidle-peer".into(),
        payload: vec![1u8; 1_047_600].into(),
        want_result: true,
        ..Default::default()
    }));
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut ws = open(&r);
        ws.login(&format!("wsidle-{i}"));
        ws.s.write_all(&big).expect("the router reads the message");
        match ws.next_frame().kind {
            Some(server_frame::Kind::SendResult(sr)) => {
                assert_eq!(sr.status, Status::TooLarge as i32, "{}", sr.reason)
            }
            other => panic!("expected a SendResult, got {other:?}"),
        }
        idle.push(ws);
    }
    let back = ringrouter_tests::wait_until(Duration::from_secs(5), || {
        r.rss_kib().saturating_sub(before) < 40 * 1024
    });
    assert!(
        back,
        "{} KiB more RSS with 100 idle WebSocket sessions",
        r.rss_kib().saturating_sub(before)
    );
}

/// The bound on a write the peer does not take (`bounds::a_write_the_peer_does_not_take_is_compacted_and_loses_nothing`)
/// over WebSocket, whose writer encodes a batch a slice at a time (256 KiB): past 200 ms
/// the write of an encoded slice is cancelled and what is left of the batch copied; the
/// client that reads again gets every message, in order, byte for byte. The client
/// reads nothing while MBs queue, then a few thousand messages: the next batch (what
/// queued, MBs) meets a full socket again after a slice or two.
#[test]
fn a_websocket_write_the_peer_does_not_take_is_compacted_and_loses_nothing() {
    const N: u64 = 20_000;
    let payload = crate::bounds::numbered;
    let r = RouterProc::start(&["--shards", "1"]);
    let s = ringrouter_tests::connect_small_rcvbuf(r.http_addr(), 4096);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut stuck = Ws::open(s, "ringrouter.v1");
    stuck.login("ws-stuck");
    let mut sender = r.raw_login("ws-sender");
    let mut all = Vec::new();
    for i in 0..N {
        all.extend(ringrouter_tests::send_frame_bytes(
            "ws-stuck",
            &payload(i),
            false,
            0,
        ));
    }
    sender
        .write(&all)
        .expect("the sends fit the socket buffers");
    std::thread::sleep(Duration::from_millis(500));
    let mut next = |i: u64| match stuck.next_frame().kind {
        Some(server_frame::Kind::Deliver(d)) => {
            assert_eq!(d.seq, i + 1);
            assert!(
                d.payload[..] == payload(i)[..],
                "message {i} is not its bytes"
            );
        }
        other => panic!("expected message {i}, got {other:?}"),
    };
    for i in 0..4000 {
        next(i);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::bounds::metric_sum(&r.metrics(), "ringrouter_writes_compacted_total") < 1.0 {
        assert!(Instant::now() < deadline, "no write was compacted in 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 4000..N {
        next(i);
    }
}
