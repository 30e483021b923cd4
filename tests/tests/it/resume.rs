//! Resume (issue 12): numbered Sends acknowledged with SendAck, copies dropped by
//! (user, device, client_seq); resume tokens (window, single use, user and device,
//! the bound on ended sessions kept); and the clients' reconnect through a proxy
//! that cuts connections at random byte offsets under load, on both drivers and both
//! durabilities: every message reaches the application once, in per-sender order.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringrouter_client::threaded::ThreadedClient;
use ringrouter_client::ClientConfig;
use ringrouter_proto::v1::{client_frame, server_frame, Login, LoginResult, Send};
use ringrouter_tests::{Driver, Raw, RouterProc, T};

fn login(r: &RouterProc, user: &str, device: &str, token: &[u8]) -> (Raw, LoginResult) {
    let mut raw = r.raw();
    let lr = raw.login_with(Login {
        request_id: 1,
        user: user.into(),
        device: device.into(),
        resume: true,
        resume_token: Bytes::copy_from_slice(token),
        ..Default::default()
    });
    assert_eq!(lr.status, 1, "{lr:?}");
    (raw, lr)
}

fn send_numbered(raw: &mut Raw, to: &str, client_seq: u64, payload: &str) {
    raw.send(client_frame::Kind::Send(Send {
        to_user: to.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        client_seq,
        msg_id: 1000 + client_seq,
        ..Default::default()
    }));
}

/// Reads frames until a SendAck covering `up_to` arrives; returns every SendAck value seen.
fn send_acks_until(raw: &mut Raw, up_to: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let server_frame::Kind::SendAck(a) = raw.next_kind(T) {
            seen.push(a.up_to_client_seq);
            if a.up_to_client_seq >= up_to {
                return seen;
            }
        }
    }
    panic!("no SendAck up to {up_to}; saw {seen:?}");
}

fn payloads(raw: &mut Raw, n: usize) -> Vec<String> {
    raw.delivers(n, T)
        .into_iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

#[test]
fn a_send_numbered_again_is_dropped_and_acknowledged_again() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut bob = r.raw_login("bob");
    let (mut ann, lr) = login(&r, "ann", "phone", b"");
    assert!(!lr.resume_token.is_empty());
    assert!(!lr.resumed);
    assert_eq!(lr.resume_window_ms, 60_000);
    for seq in 1..=3 {
        send_numbered(&mut ann, "bob", seq, &format!("m{seq}"));
    }
    assert_eq!(send_acks_until(&mut ann, 3).last(), Some(&3));
    // 2 again (a copy after a cut), then 4: the copy is dropped, and acknowledged again.
    send_numbered(&mut ann, "bob", 2, "m2 again");
    assert_eq!(send_acks_until(&mut ann, 3), vec![3]);
    send_numbered(&mut ann, "bob", 4, "m4");
    send_acks_until(&mut ann, 4);
    assert_eq!(payloads(&mut bob, 4), ["m1", "m2", "m3", "m4"]);
    // Unnumbered sends are never dropped nor acknowledged.
    bob.send_to("ann", b"plain", 0);
    bob.send_to("ann", b"plain", 0);
    assert_eq!(payloads(&mut ann, 2), ["plain", "plain"]);
    // Counters are published on the shards' tick.
    let deadline = Instant::now() + T;
    loop {
        let text = r.metrics();
        if text
            .lines()
            .any(|l| l == "ringrouter_duplicate_sends_total 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_resume_within_the_window_continues_the_numbering_and_gets_what_was_not_acked() {
    let r = RouterProc::start(&["--shards", "2"]);
    let (mut ann, lr) = login(&r, "ann", "phone", b"");
    let (mut bob, blr) = login(&r, "bob", "laptop", b"");
    for seq in 1..=2 {
        send_numbered(&mut ann, "bob", seq, &format!("m{seq}"));
    }
    send_acks_until(&mut ann, 2);
    // Bob reads both, acks the first, and loses its connection.
    let got = bob.delivers(2, T);
    bob.ack(got[0].seq);
    drop(bob);
    drop(ann);
    std::thread::sleep(Duration::from_millis(200));
    // Ann comes back: numbering goes on from 2; her copy of 2 is dropped.
    let (mut ann, lr2) = login(&r, "ann", "phone", &lr.resume_token);
    assert!(lr2.resumed, "{lr2:?}");
    assert_eq!(lr2.client_seq_acked, 2);
    assert_ne!(lr2.resume_token, lr.resume_token, "a new token per resume");
    send_numbered(&mut ann, "bob", 2, "m2 again");
    send_numbered(&mut ann, "bob", 3, "m3");
    send_acks_until(&mut ann, 3);
    // Bob comes back: what he had not acked comes again, then what is new; no copy.
    let (mut bob, blr2) = login(&r, "bob", "laptop", &blr.resume_token);
    assert!(blr2.resumed);
    let again = bob.delivers(2, T);
    let texts: Vec<_> = again
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect();
    assert_eq!(texts, ["m2", "m3"]);
    assert_eq!(again[0].msg_id, 1002, "the same message, not a copy");
    bob.ack(again[1].seq);
    assert!(
        bob.next(Duration::from_millis(300)).is_err(),
        "nothing more"
    );
    // The token is single use: the old one is a normal login now.
    let (_a, lr3) = login(&r, "ann", "phone", &lr.resume_token);
    assert!(!lr3.resumed);
    assert_eq!(lr3.client_seq_acked, 0);
}

#[test]
fn a_resume_after_the_window_is_a_normal_login_with_the_offline_queue() {
    let r = RouterProc::start(&["--resume-window", "300ms"]);
    let (mut ann, lr) = login(&r, "ann", "phone", b"");
    send_numbered(&mut ann, "ann", 1, "to myself");
    // (The Deliver to herself goes by unread and unacked.)
    send_acks_until(&mut ann, 1);
    drop(ann);
    std::thread::sleep(Duration::from_millis(900));
    let (mut ann, lr2) = login(&r, "ann", "phone", &lr.resume_token);
    assert!(!lr2.resumed, "{lr2:?}");
    assert_eq!(lr2.client_seq_acked, 0);
    assert_eq!(lr2.resume_window_ms, 300);
    // Nothing lost: the unacked message is in the offline queue.
    assert_eq!(payloads(&mut ann, 1), ["to myself"]);
}

#[test]
fn a_token_of_another_user_or_device_or_not_a_token_is_a_normal_login() {
    let r = RouterProc::start(&[]);
    let (mut ann, lr) = login(&r, "ann", "phone", b"");
    send_numbered(&mut ann, "nobody", 1, "x");
    send_acks_until(&mut ann, 1);
    drop(ann);
    std::thread::sleep(Duration::from_millis(200));
    let (_b, other_user) = login(&r, "bob", "phone", &lr.resume_token);
    assert!(!other_user.resumed);
    let (_c, other_device) = login(&r, "ann", "laptop", &lr.resume_token);
    assert!(!other_device.resumed);
    let (_d, garbage) = login(&r, "ann", "phone", b"short");
    assert!(!garbage.resumed);
    // Still its owner's after the attempts above.
    let (_e, own) = login(&r, "ann", "phone", &lr.resume_token);
    assert!(own.resumed);
    assert_eq!(own.client_seq_acked, 1);
}

#[test]
fn a_resume_while_the_old_connection_still_looks_alive_ends_it() {
    let r = RouterProc::start(&[]);
    let (mut ann, lr) = login(&r, "ann", "phone", b"");
    send_numbered(&mut ann, "nobody", 5, "x");
    send_acks_until(&mut ann, 5);
    let (_new, lr2) = login(&r, "ann", "phone", &lr.resume_token);
    assert!(lr2.resumed);
    assert_eq!(lr2.client_seq_acked, 5);
    let err = ann.expect_error(T);
    assert!(err.reason.contains("resumed"), "{err:?}");
}

#[test]
fn past_max_resumable_sessions_the_session_that_ended_first_is_forgotten() {
    let r = RouterProc::start(&["--shards", "1", "--max-resumable-sessions", "2"]);
    let mut tokens = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let (raw, lr) = login(&r, user, "d", b"");
        drop(raw);
        tokens.push(lr.resume_token);
        // Ended in this order.
        std::thread::sleep(Duration::from_millis(150));
    }
    let (_a, first) = login(&r, "u1", "d", &tokens[0]);
    assert!(
        !first.resumed,
        "past the bound of 2, u1's ended session is forgotten"
    );
    let (_b, second) = login(&r, "u2", "d", &tokens[1]);
    assert!(second.resumed);
    let (_c, third) = login(&r, "u3", "d", &tokens[2]);
    assert!(third.resumed);
}

// ------------------------------------------------------------ random cuts under load

/// A TCP proxy that forwards bytes and, while `cutting`, kills each connection (both
/// sockets, both directions) after a random number of bytes (256 B up to
/// `max_budget`, drawn per connection and direction) in one direction.
struct CutProxy {
    addr: SocketAddr,
    cutting: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

impl CutProxy {
    fn start(upstream: SocketAddr, seed: u64, max_budget: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cutting = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, n, st) = (cutting.clone(), cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = seed | 1;
            for client in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let up = 256 + xorshift(&mut rng) % max_budget;
                let down = 256 + xorshift(&mut rng) % max_budget;
                let pair = [
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ];
                let pair = Arc::new(pair);
                for (from, to, budget) in [(0usize, 1usize, up), (1, 0, down)] {
                    let pair = pair.clone();
                    let (n, c) = (n.clone(), c.clone());
                    std::thread::spawn(move || pump(&pair, from, to, budget, &c, &n));
                }
            }
        });
        CutProxy {
            addr,
            cutting,
            cuts,
            stop,
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `pair[from]` to `pair[to]`; after `budget` bytes copied while `cutting`,
/// cuts both connections.
fn pump(
    pair: &[TcpStream; 2],
    from: usize,
    to: usize,
    mut budget: u64,
    cutting: &AtomicBool,
    cuts: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut r, mut w) = (&pair[from], &pair[to]);
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !cutting.load(Ordering::Relaxed) {
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        let pass = (n as u64).min(budget) as usize;
        if w.write_all(&buf[..pass]).is_err() {
            break;
        }
        budget -= pass as u64;
        if budget == 0 {
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    for s in pair {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn reconnecting(addr: SocketAddr, user: &str) -> ThreadedClient {
    let mut cfg = ClientConfig::new(user);
    cfg.reconnect = true;
    cfg.timeout = Duration::from_secs(5);
    cfg.ack_every = 16;
    cfg.ack_interval = Duration::from_millis(20);
    ThreadedClient::connect(addr, cfg).unwrap_or_else(|e| panic!("login {user}: {e}"))
}

fn random_cuts_lose_and_duplicate_nothing(driver: Driver, durability: &str) {
    const PAIRS: usize = 3;
    const MESSAGES: usize = 1500;
    let r = RouterProc::start_with(&["--shards", "2", "--durability", durability], driver);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    eprintln!("random cuts: seed {seed}, {durability}, {driver:?}");
    let proxy = CutProxy::start(r.connect_addr(), seed, 24 * 1024);
    let receivers: Vec<_> = (0..PAIRS)
        .map(|i| reconnecting(proxy.addr, &format!("rx{i}")))
        .collect();
    let senders: Vec<_> = (0..PAIRS)
        .map(|i| reconnecting(proxy.addr, &format!("tx{i}")))
        .collect();
    proxy.cutting.store(true, Ordering::Relaxed);
    let done_sending = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for (i, tx) in senders.iter().enumerate() {
            let done = done_sending.clone();
            s.spawn(move || {
                for k in 0..MESSAGES {
                    let p = format!("{i}:{k:06}:{}", "x".repeat(k % 40));
                    tx.send(&format!("rx{i}"), p.as_bytes()).expect("send");
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        let cutting = proxy.cutting.clone();
        let results: Vec<_> = receivers
            .iter()
            .enumerate()
            .map(|(i, rx)| {
                let cutting = cutting.clone();
                s.spawn(move || {
                    let mut got = Vec::with_capacity(MESSAGES);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while got.len() < MESSAGES && Instant::now() < deadline {
                        // Past half the messages the cuts stop, so the run ends.
                        if got.len() > MESSAGES / 2 {
                            cutting.store(false, Ordering::Relaxed);
                        }
                        if let Some(m) = rx.recv(Some(Duration::from_millis(200))).expect("recv") {
                            let text = String::from_utf8_lossy(&m.payload).into_owned();
                            assert!(text.starts_with(&format!("{i}:")), "{text}");
                            got.push(text);
                        }
                    }
                    // Anything more would be a copy.
                    if let Some(m) = rx.recv(Some(Duration::from_millis(500))).expect("recv") {
                        panic!(
                            "rx{i}: one too many: {:?}",
                            String::from_utf8_lossy(&m.payload)
                        );
                    }
                    got
                })
            })
            .collect();
        for (i, h) in results.into_iter().enumerate() {
            let got = h.join().expect("receiver");
            let want: Vec<String> = (0..MESSAGES)
                .map(|k| format!("{i}:{k:06}:{}", "x".repeat(k % 40)))
                .collect();
            if got != want {
                let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
                panic!(
                    "rx{i}: {} of {MESSAGES} received; first difference at {first_bad:?} \
                     (seed {seed})",
                    got.len()
                );
            }
        }
    });
    let reconnects: u64 = senders
        .iter()
        .chain(&receivers)
        .map(|c| c.reconnects())
        .sum();
    let cuts = proxy.cuts.load(Ordering::Relaxed);
    eprintln!("random cuts: {cuts} cuts, {reconnects} reconnects");
    assert!(
        cuts > 0 && reconnects > 0,
        "the proxy never cut ({cuts}, {reconnects})"
    );
}

#[test]
fn random_cuts_lose_and_duplicate_nothing_memory() {
    random_cuts_lose_and_duplicate_nothing(Driver::Default, "memory");
}

#[test]
fn random_cuts_lose_and_duplicate_nothing_memory_legacy_driver() {
    random_cuts_lose_and_duplicate_nothing(Driver::Legacy, "memory");
}

#[test]
fn random_cuts_lose_and_duplicate_nothing_sync() {
    random_cuts_lose_and_duplicate_nothing(Driver::Default, "sync");
}

#[test]
fn random_cuts_lose_and_duplicate_nothing_sync_legacy_driver() {
    random_cuts_lose_and_duplicate_nothing(Driver::Legacy, "sync");
}
