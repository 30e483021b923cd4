//! The wire end to end against a small in-process server: TLS (rustls server,
//! self-signed certificate made by rcgen), WebSocket (a hand-written server
//! side that fragments what it sends and pings), and both at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringrouter_proto::codec::put_varint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ws::{self, op};
use super::{connect, RxState, Transport};
use crate::ClientError;

const T: Duration = Duration::from_secs(5);

/// A self-signed certificate for localhost / 127.0.0.1, and its PEM in a file.
struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pem_file: PathBuf,
}

fn cert(tag: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let pem_file = std::env::temp_dir().join(format!(
        "ringrouter-client-test-{}-{tag}.pem",
        std::process::id()
    ));
    std::fs::write(&pem_file, ck.cert.pem()).expect("write the CA file");
    Cert {
        der: ck.cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
        pem_file,
    }
}

trait Stream: Read + Write + Send {}
impl<S: Read + Write + Send> Stream for S {}

/// What the server saw.
#[derive(Debug, Default)]
struct Seen {
    pong: Option<Vec<u8>>,
    close: Option<Vec<u8>>,
    suite: Option<rustls::CipherSuite>,
}

/// Serves one connection: TLS if `cert`, WebSocket if `ws`; echoes frames
/// (WebSocket: each message back in two fragments, after a ping).
fn serve(cert: Option<&Cert>, ws: bool) -> (SocketAddr, JoinHandle<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let tls = cert.map(|c| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![c.der.clone()], c.key.clone_key())
                .expect("server config"),
        )
    });
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut suite = None;
        let mut io: Box<dyn Stream> = match tls {
            Some(cfg) => {
                let mut tls = rustls::StreamOwned::new(
                    rustls::ServerConnection::new(cfg).expect("server conn"),
                    s,
                );
                while tls.conn.is_handshaking() {
                    if tls.conn.complete_io(&mut tls.sock).is_err() {
                        return Seen::default();
                    }
                }
                suite = tls.conn.negotiated_cipher_suite().map(|s| s.suite());
                Box::new(tls)
            }
            None => Box::new(s),
        };
        let seen = if ws {
            serve_ws(&mut *io)
        } else {
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf) {
                if n == 0 || io.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Seen::default()
        };
        Seen { suite, ..seen }
    });
    (addr, h)
}

fn serve_ws(io: &mut dyn Stream) -> Seen {
    let mut seen = Seen::default();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if io.read(&mut b).unwrap_or(0) == 0 {
            return seen;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8(head).expect("utf8 head");
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("a key");
    assert!(head.contains("Sec-WebSocket-Protocol: ringrouter.v1\r\n"));
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: ringrouter.v1\r\n\r\n",
        ws::accept_key(key)
    )
    .into_bytes();
    // A ping right behind the answer: the client must pong it.
    out.extend_from_slice(&[0x89, 2, b'h', b'b']);
    io.write_all(&out).expect("upgrade");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One masked client frame.
        let frame = loop {
            if let Some((opcode, body, used)) = client_frame(&buf) {
                buf.drain(..used);
                break (opcode, body);
            }
            match io.read(&mut chunk) {
                Ok(0) | Err(_) => return seen,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        match frame {
            (op::BINARY, body) => {
                let half = body.len() / 2;
                let mut out = BytesMut::new();
                ws::put_header(&mut out, op::BINARY, true, half, None);
                out.extend_from_slice(&body[..half]);
                ws::put_header(&mut out, op::CONTINUATION, false, body.len() - half, None);
                out.extend_from_slice(&body[half..]);
                io.write_all(&out).expect("echo");
            }
            (op::PONG, body) => seen.pong = Some(body),
            (op::CLOSE, body) => {
                let mut out = BytesMut::new();
                ws::put_header(&mut out, op::CLOSE, false, body.len(), None);
                out.extend_from_slice(&body);
                let _ = io.write_all(&out);
                let _ = io.flush();
                seen.close = Some(body);
                return seen;
            }
            (other, _) => panic!("unexpected opcode {other}"),
        }
    }
}

/// A complete masked client frame at the front of `buf`: (opcode, unmasked body, bytes used).
fn client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0x80, "client frames are masked");
    assert_eq!(buf[0] & 0x80, 0x80, "this client never fragments");
    let (len, mut at) = match buf[1] & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let mut body = buf.get(at..at + len)?.to_vec();
    ws::apply_mask(&mut body, key);
    Some((buf[0] & 0x0F, body, at + len))
}

/// Sends frames of several sizes through the wire and expects them back.
fn exchange(addr: SocketAddr, t: &Transport) -> Result<(), ClientError> {
    let mut c = connect(addr, t, Instant::now() + T, 1 << 20)?;
    let wire = c.wire.as_mut().expect("a wire");
    let mut frames = BytesMut::new();
    for (i, n) in [1usize, 100, 200, 70_000, 3].into_iter().enumerate() {
        put_varint(&mut frames, n as u64);
        frames.extend(std::iter::repeat_n(i as u8 + 1, n));
    }
    let mut out = BytesMut::new();
    wire.tx.output(&frames, &mut out)?;
    c.stream.write_all(&out)?;
    c.stream.set_read_timeout(Some(T))?;
    let mut got = std::mem::take(&mut c.frames);
    let mut buf = vec![0u8; 8192];
    while got.len() < frames.len() {
        let n = c.stream.read(&mut buf)?;
        assert!(n > 0, "closed early");
        assert_eq!(wire.rx.input(&buf[..n], &mut got)?, RxState::Open);
        if wire.rx.wants_write() {
            out.clear();
            wire.tx.output(&[], &mut out)?;
            c.stream.write_all(&out)?;
        }
    }
    assert_eq!(got, frames, "every frame back, whole and in order");
    // The end: Close (WebSocket) / close_notify, answered.
    out.clear();
    wire.tx.finish(&mut out)?;
    c.stream.write_all(&out)?;
    loop {
        let n = c.stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let RxState::Closed(why) = wire.rx.input(&buf[..n], &mut got)? {
            assert!(why.starts_with("closed by the router"), "{why}");
            break;
        }
    }
    Ok(())
}

#[test]
fn tls_round_trip_with_a_ca_file() {
    let cert = cert("tls");
    let (addr, server) = serve(Some(&cert), false);
    exchange(
        addr,
        &Transport::tcp().with_tls(Some(cert.pem_file.clone())),
    )
    .expect("exchange");
    let seen = server.join().expect("server");
    // The client's first choice, which a rustls server follows.
    assert_eq!(
        seen.suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

#[test]
fn websocket_round_trip_pongs_and_closes() {
    let (addr, server) = serve(None, true);
    exchange(addr, &Transport::websocket()).expect("exchange");
    let seen = server.join().expect("server");
    assert_eq!(seen.pong.as_deref(), Some(&b"hb"[..]));
    assert_eq!(seen.close.as_deref(), Some(&1000u16.to_be_bytes()[..]));
}

#[test]
fn websocket_over_tls_with_a_server_name() {
    let cert = cert("wss");
    let (addr, server) = serve(Some(&cert), true);
    let t = Transport::websocket()
        .with_tls(Some(cert.pem_file.clone()))
        .with_server_name("localhost");
    exchange(addr, &t).expect("exchange");
    let seen = server.join().expect("server");
    assert_eq!(seen.pong.as_deref(), Some(&b"hb"[..]));
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let cert = cert("server");
    let other = cert_other();
    let (addr, _server) = serve(Some(&cert), false);
    let t = Transport::tcp().with_tls(Some(other.pem_file.clone()));
    match connect(addr, &t, Instant::now() + T, 1 << 20) {
        Err(ClientError::Tls(why)) => assert!(why.contains("certificate"), "{why}"),
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("connected with the wrong CA"),
    }
    // The webpki roots do not know a self-signed certificate either.
    let (addr, _server) = serve(Some(&cert), false);
    assert!(matches!(
        connect(
            addr,
            &Transport::tcp().with_tls(None),
            Instant::now() + T,
            1 << 20
        ),
        Err(ClientError::Tls(_))
    ));
    // Nor does a certificate for other names pass.
    let (addr, _server) = serve(Some(&cert), false);
    let t = Transport::tcp()
        .with_tls(Some(cert.pem_file.clone()))
        .with_server_name("example.org");
    assert!(matches!(
        connect(addr, &t, Instant::now() + T, 1 << 20),
        Err(ClientError::Tls(_))
    ));
}

fn cert_other() -> Cert {
    cert("other")
}

#[test]
fn a_missing_ca_file_is_a_clear_error() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let t = Transport::tcp().with_tls(Some("/nonexistent/ca.pem".into()));
    match connect(
        l.local_addr().expect("addr"),
        &t,
        Instant::now() + T,
        1 << 20,
    ) {
        Err(ClientError::Tls(why)) => assert!(why.contains("/nonexistent/ca.pem"), "{why}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
}

#[test]
fn a_refused_upgrade_names_the_status() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let (mut s, _): (TcpStream, _) = l.accept().expect("accept");
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    });
    match connect(addr, &Transport::websocket(), Instant::now() + T, 1 << 20) {
        Err(ClientError::Protocol(why)) => assert!(why.contains("404"), "{why}"),
        other => panic!("expected a protocol error, got {:?}", other.err()),
    }
    h.join().expect("server");
}

#[test]
fn connecting_the_upgrade_and_the_login_share_one_timeout() {
    // The upgrade is answered after 600 ms, the Login never.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let _server = std::thread::spawn(move || {
        let (mut s, _): (TcpStream, _) = l.accept().expect("accept");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8(head).expect("utf8 head");
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .to_owned();
        std::thread::sleep(Duration::from_millis(600));
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: ringrouter.v1\r\n\r\n",
            ws::accept_key(&key)
        );
        let _ = s.write_all(answer.as_bytes());
        std::thread::sleep(T);
    });
    let mut cfg = crate::ClientConfig::new("alice");
    cfg.transport = Transport::websocket();
    cfg.timeout = Duration::from_secs(1);
    let t0 = Instant::now();
    let r = crate::Client::connect(addr, cfg);
    let took = t0.elapsed();
    assert!(r.is_err(), "logged in without an answer");
    assert!(
        took < Duration::from_millis(1300),
        "took {took:?} with a 1 s timeout"
    );
}
