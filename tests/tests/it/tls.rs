//! TLS on the TCP listener (`--tls-cert`, `--tls-key`): sessions over TLS on both
//! I/O drivers, handed to their home shard with their TLS state; a plain client and
//! a client that does not trust the certificate are refused; bad key files exit 2.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;
use ringrouter_proto::codec::{encode_frame, next_frame};
use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, Login, Send, ServerFrame};
use ringrouter_tests::{users_on_shards, Driver, RouterProc};

/// A self-signed certificate for `localhost` / 127.0.0.1 in a temp dir: (dir, cert, key, cert DER).
pub(crate) fn self_signed() -> (tempfile::TempDir, String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen makes a certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let der = ck.cert.der().to_vec();
    (
        dir,
        cert.display().to_string(),
        key.display().to_string(),
        der,
    )
}

pub(crate) fn client_config(ca_der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
        .expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub(crate) type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub(crate) fn connect_tls(
    addr: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> TlsStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client conn");
    rustls::StreamOwned::new(conn, tcp)
}

fn send(s: &mut TlsStream, kind: client_frame::Kind) {
    let mut out = BytesMut::new();
    encode_frame(&ClientFrame { kind: Some(kind) }, &mut out);
    s.write_all(&out).expect("tls write");
}

fn next(s: &mut TlsStream, buf: &mut BytesMut) -> ServerFrame {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(body) = next_frame(buf, 1 << 20).expect("frames") {
            return ServerFrame::decode(body).expect("decodes");
        }
        assert!(Instant::now() < deadline, "no frame in time");
        let n = s.read(&mut chunk).expect("tls read");
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn login(s: &mut TlsStream, buf: &mut BytesMut, user: &str) -> u32 {
    send(
        s,
        client_frame::Kind::Login(Login {
            request_id: 1,
            user: user.into(),
            device: "d".into(),
            ..Default::default()
        }),
    );
    match next(s, buf).kind {
        Some(server_frame::Kind::LoginResult(lr)) => {
            assert_eq!(
                lr.status,
                ringrouter_proto::Status::Ok as i32,
                "{}",
                lr.reason
            );
            lr.shard
        }
        other => panic!("expected LoginResult, got {other:?}"),
    }
}

fn sessions_over_tls(driver: Driver) {
    let (_dir, cert, key, der) = self_signed();
    let r = RouterProc::start_with(
        &["--shards", "2", "--tls-cert", &cert, "--tls-key", &key],
        driver,
    );
    let cfg = client_config(&der);
    // Several connections per user: whichever shard accepts one, it ends on its home
    // shard, so some are handed over with their TLS state.
    for round in 0..4 {
        let users = users_on_shards(&format!("tls{round}_"), 2);
        let mut a = connect_tls(r.connect_addr(), &cfg);
        let mut b = connect_tls(r.connect_addr(), &cfg);
        let (mut ba, mut bb) = (BytesMut::new(), BytesMut::new());
        assert_eq!(login(&mut a, &mut ba, &users[0]), 0);
        assert_eq!(login(&mut b, &mut bb, &users[1]), 1);
        let payload = vec![round as u8; 3000];
        send(
            &mut a,
            client_frame::Kind::Send(Send {
                to_user: users[1].clone(),
                payload: payload.clone().into(),
                ..Default::default()
            }),
        );
        match next(&mut b, &mut bb).kind {
            Some(server_frame::Kind::Deliver(d)) => {
                assert_eq!(d.from_user, users[0]);
                assert!(d.payload[..] == payload[..], "payload of round {round}");
            }
            other => panic!("expected Deliver, got {other:?}"),
        }
        // Logout ends with a TLS close_notify, not a truncation.
        send(&mut a, client_frame::Kind::Logout(Default::default()));
        let mut rest = Vec::new();
        let end = a.read_to_end(&mut rest);
        assert!(end.is_ok(), "clean TLS end: {end:?}");
    }
}

#[test]
fn sessions_over_tls_io_uring() {
    sessions_over_tls(Driver::Default);
}

#[test]
fn sessions_over_tls_epoll() {
    sessions_over_tls(Driver::Legacy);
}

#[test]
fn plain_and_untrusting_clients_are_refused() {
    let (_dir, cert, key, _der) = self_signed();
    let r = RouterProc::start(&["--tls-cert", &cert, "--tls-key", &key]);
    // Plain protocol bytes on the TLS port: a TLS alert, then the connection ends.
    let mut raw = TcpStream::connect(r.connect_addr()).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    raw.write_all(&[5, 0x0a, 3, 8, 1, 0x12]).expect("write");
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(
        got.len() < 16 && got.first().is_none_or(|&b| b == 21),
        "alert or nothing: {got:?}"
    );
    // A client that trusts another certificate fails the handshake.
    let (_d2, _c2, _k2, other) = self_signed();
    let mut s = connect_tls(r.connect_addr(), &client_config(&other));
    let mut b = [0u8; 16];
    let e = s.read(&mut b).expect_err("untrusted certificate");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn bad_tls_files_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem").expect("write");
    let j = junk.display().to_string();
    let Err(out) = RouterProc::launch(&["--tls-cert", &j, "--tls-key", &j], Driver::Legacy) else {
        panic!("started with a junk certificate");
    };
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--tls-cert"), "{}", out.stderr);
    let Err(out) = RouterProc::launch(&["--tls-cert", &j], Driver::Legacy) else {
        panic!("started with a certificate and no key");
    };
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

/// A TLS router (a self-signed certificate) with `extra` flags, and a client
/// configuration that trusts it.
fn tls_router(extra: &[&str]) -> (tempfile::TempDir, RouterProc, Arc<rustls::ClientConfig>) {
    let (dir, cert, key, der) = self_signed();
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    let r = RouterProc::start(&args);
    (dir, r, client_config(&der))
}

/// A TLS router with one handshake thread and `--max-tls-handshakes max`.
fn bounded_router(max: &str) -> (tempfile::TempDir, RouterProc, Arc<rustls::ClientConfig>) {
    tls_router(&["--tls-handshake-threads", "1", "--max-tls-handshakes", max])
}

/// A ClientHello's bytes, made once and sent on many connections (the router answers
/// each with its key exchange and signature).
fn client_hello(cfg: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut c = rustls::ClientConnection::new(cfg.clone(), name).expect("client conn");
    let mut v = Vec::new();
    c.write_tls(&mut v).expect("a ClientHello");
    v
}

/// Handshakes run on threads of their own, with at most `--max-tls-handshakes` steps
/// queued or running: a burst of ClientHellos past it is refused (those connections
/// are closed without an answer), the others are answered, and a whole handshake and a
/// login work once the burst is over.
#[test]
fn handshakes_past_the_bound_are_refused_and_the_router_serves_on() {
    let (_dir, r, cfg) = bounded_router("1");
    let hello = client_hello(&cfg);
    let socks: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(r.connect_addr()).expect("connect");
            s.write_all(&hello).expect("hello");
            s
        })
        .collect();
    let (answered, refused) = answered_or_refused(socks);
    assert!(answered >= 1, "answered {answered}, refused {refused}");
    assert!(refused >= 1, "answered {answered}, refused {refused}");
    let mut a = connect_tls(r.connect_addr(), &cfg);
    let mut buf = BytesMut::new();
    login(&mut a, &mut buf, "after_the_burst");
}

/// How many of `socks` (each sent a ClientHello) got a handshake record back (the
/// ServerHello), and how many were closed unanswered; panics on anything else.
fn answered_or_refused(socks: Vec<TcpStream>) -> (usize, usize) {
    let (mut answered, mut refused) = (0, 0);
    for mut s in socks {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut b = [0u8; 5];
        match s.read(&mut b) {
            Ok(n) if n > 0 && b[0] == 22 => answered += 1,
            Ok(0) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            other => panic!("neither answered nor closed: {other:?} {b:?}"),
        }
    }
    (answered, refused)
}

/// One address holds at most `--max-tls-handshakes-per-ip` of the handshake steps: a
/// burst of ClientHellos from it, far under `--max-tls-handshakes`, is refused past its
/// share, and a login from another address (127.0.0.2) is admitted at once meanwhile.
#[test]
fn one_address_holds_at_most_its_share_of_handshakes() {
    let (_dir, r, cfg) = tls_router(&[
        "--tls-handshake-threads",
        "1",
        "--max-tls-handshakes",
        "1000",
        "--max-tls-handshakes-per-ip",
        "1",
    ]);
    let hello = client_hello(&cfg);
    // Connected first, then the ClientHellos at once: more than one queued at a time.
    let mut socks: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(r.connect_addr()).expect("connect"))
        .collect();
    for s in &mut socks {
        let _ = s.write_all(&hello);
    }
    let (answered, refused) = answered_or_refused(socks);
    // 200 is a fifth of the global bound: every refusal is the address's share.
    assert!(answered >= 1, "answered {answered}, refused {refused}");
    assert!(refused >= 1, "answered {answered}, refused {refused}");
    // Another address is not held to 127.0.0.1's share (Linux routes all of
    // 127.0.0.0/8 to loopback).
    let addr = r.connect_addr();
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: std::net::SocketAddr = "127.0.0.2:0".parse().expect("addr");
    sock.bind(&from.into()).expect("bind 127.0.0.2");
    sock.connect(&addr.into()).expect("connect");
    let tcp: TcpStream = sock.into();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let c = rustls::ClientConnection::new(cfg.clone(), name).expect("client conn");
    let mut s = rustls::StreamOwned::new(c, tcp);
    let mut buf = BytesMut::new();
    login(&mut s, &mut buf, "elsewhere");
}

/// Drives a whole handshake by hand, then logs in: `Ok(false)` when the router refused
/// the ClientHello (closed before answering anything), `Ok(true)` once logged in, `Err`
/// when it was cut after answering.
fn honest_handshake(
    addr: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    user: &str,
) -> Result<bool, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut c = rustls::ClientConnection::new(cfg.clone(), name).expect("client conn");
    let mut answered = false;
    while c.is_handshaking() {
        if c.wants_write() {
            if let Err(e) = c.write_tls(&mut tcp) {
                return if answered {
                    Err(e.to_string())
                } else {
                    Ok(false)
                };
            }
            continue;
        }
        match c.read_tls(&mut tcp) {
            Ok(0) | Err(_) if !answered => return Ok(false),
            Ok(0) => return Err("closed after the ServerHello".into()),
            Err(e) => return Err(format!("cut after the ServerHello: {e}")),
            Ok(_) => answered = true,
        }
        c.process_new_packets().map_err(|e| e.to_string())?;
    }
    let mut s = rustls::StreamOwned::new(c, tcp);
    let mut buf = BytesMut::new();
    login(&mut s, &mut buf, user);
    Ok(true)
}

/// A handshake the router answered is never cut by the bound, however many new ones
/// come meanwhile: the bound refuses ClientHellos, not the later steps of a handshake
/// already admitted.
#[test]
fn an_admitted_handshake_is_never_cut_by_the_bound() {
    let (_dir, r, cfg) = bounded_router("4");
    let addr = r.connect_addr();
    let hello = client_hello(&cfg);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut open = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&hello);
                    open.push_back(s);
                }
                if open.len() > 64 {
                    open.pop_front();
                }
            }
        })
    };
    // Each honest client tries again while its ClientHello is refused, until the router
    // answers one: that handshake must then complete.
    let honest: Vec<_> = (0..8)
        .map(|i| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut refused = 0u32;
                loop {
                    match honest_handshake(addr, &cfg, &format!("honest{i}")) {
                        Ok(false) if Instant::now() < deadline => refused += 1,
                        Ok(false) => return Err(format!("refused {refused} times")),
                        Ok(true) => return Ok(refused),
                        Err(e) => return Err(e),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let results: Vec<Result<u32, String>> = honest
        .into_iter()
        .map(|t| t.join().expect("honest thread"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().expect("flood thread");
    for r in &results {
        assert!(r.is_ok(), "{results:?}");
    }
    // After the flood (once the steps it left queued are done), a handshake is admitted
    // and completes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match honest_handshake(addr, &cfg, "after") {
            Ok(true) => break,
            Ok(false) => assert!(Instant::now() < deadline, "still refused"),
            Err(e) => panic!("cut: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS client may send at most `--max-tls-handshake-bytes` before its handshake is
/// done: a ClientHello announced at 65 000 bytes and stalled after 6 000 (which rustls
/// holds whole, up to 64 KiB, until the login deadline) is closed at once past a 4 KiB
/// bound, and an honest handshake under it still logs in.
#[test]
fn a_handshake_past_its_byte_bound_is_closed() {
    let (_dir, r, cfg) = tls_router(&["--max-tls-handshake-bytes", "4KiB"]);
    assert_eq!(honest_handshake(r.connect_addr(), &cfg, "honest"), Ok(true));
    let record = |body: &[u8]| {
        let mut v = vec![22, 3, 1];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    };
    // A ClientHello of 65 000 bytes, its first 5 996 in two records.
    let mut first = vec![1, 0, 0xfd, 0xe8];
    first.extend_from_slice(&[0u8; 2996]);
    let mut s = TcpStream::connect(r.connect_addr()).expect("connect");
    s.write_all(&record(&first)).expect("first record");
    s.write_all(&record(&[0u8; 3000])).expect("second record");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t0 = std::time::Instant::now();
    let mut b = [0u8; 64];
    let end = loop {
        match s.read(&mut b) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        end.is_ok() && t0.elapsed() < Duration::from_secs(4),
        "the stalled handshake was not closed: {end:?} after {:?}",
        t0.elapsed()
    );
}
