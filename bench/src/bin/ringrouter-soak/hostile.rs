//! The misbehaving clients: never-readers, garbage senders, connection churn.
//!
//! - A never-reader logs in, then writes Pings, requests (ListRooms) and, every
//!   other life, large messages to itself, and never reads: the router must stop
//!   reading it and close it as a slow consumer. What it sent itself and was
//!   never acked comes back at the user's next login (checked: no gap).
//! - Garbage: random bytes, oversize length prefixes, truncated and undecodable
//!   frames, before and after Login; the router must close each in time.
//! - Churn: connect + login + drop without Logout; connect and never log in
//!   (the router must close those at its login timeout), some of them pinging
//!   without reading.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringrouter_client::Client;
use ringrouter_proto::codec::{decode_server, encode_frame, next_frame, put_varint};
use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, ListRooms, Ping, Send};

use crate::actors::Outcome;
use crate::check::Checker;
use crate::payload::{encode, Header, Kind, Rng, StreamKey};
use crate::session::{client_config, set_rcvbuf, Dev, Sender, CLIENT_TIMEOUT};
use crate::shared::Shared;

const TICK: Duration = Duration::from_millis(10);
const TCP_ESTABLISHED: u8 = 1;

/// The kernel's TCP state of a socket (1: established), without reading it.
pub fn tcp_state(s: &TcpStream) -> Option<u8> {
    // Safety: tcp_info is plain data; getsockopt writes at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (r == 0).then_some(info.tcpi_state)
    }
}

fn frame(kind: client_frame::Kind, out: &mut BytesMut) {
    encode_frame(&ClientFrame { kind: Some(kind) }, out);
}

/// One life of a never-reader, for the summary.
#[derive(Debug, Clone)]
pub struct NrLife {
    pub slot: u32,
    pub life: u32,
    /// Wrote large messages to itself (else: Pings and requests only).
    pub sends: bool,
    pub bytes_written: u64,
    pub pings: u64,
    pub self_sent: u64,
    /// Seconds until the router stopped reading it (its writes blocked).
    pub paused_after: Option<f64>,
    /// Seconds until the router closed it.
    pub closed_after: Option<f64>,
}

/// What the never-reader threads hand back.
#[derive(Debug, Default)]
pub struct NrOutcome {
    pub lives: Vec<NrLife>,
    pub out: Outcome,
}

/// A never-reader slot: one life after another until the run stops, then a
/// last login of its user to collect what its lives sent themselves.
pub fn nonreader(sh: Arc<Shared>, slot: u32) -> NrOutcome {
    let a = &sh.args;
    let me = sh.names.nr0 as u32 + slot;
    let name = sh.names.users[me as usize].clone();
    let mut res = NrOutcome::default();
    let mut chk = Checker::new(me);
    let mut sent_per_life = Vec::new();
    let mut life = 0u32;
    while !sh.stopping() {
        life += 1;
        let sends = a.nonreader_sends > 0.0 && (a.nonreader_pings <= 0.0 || (slot + life) & 1 == 0);
        let l = one_life(&sh, &name, me, slot, life, sends);
        sent_per_life.push((life, l.self_sent));
        res.lives.push(l);
        // Collect what this life sent itself (and acked nothing of).
        sleep(Duration::from_secs(1));
        recover(&sh, me, &mut chk, life);
    }
    // The last collection, after the run (nothing else may be pending then).
    sleep(Duration::from_secs(1));
    recover(&sh, me, &mut chk, life + 1);
    for (life, sent) in sent_per_life {
        let k = StreamKey {
            kind: Kind::SelfSend,
            sender: me,
            device: 0,
            target: life,
        };
        sh.ev.nonreader_self_sent.fetch_add(sent, Relaxed);
        let Some(st) = chk.streams.get(&k) else {
            continue;
        };
        sh.ev
            .nonreader_self_recovered
            .fetch_add(st.contig + st.above.len() as u64, Relaxed);
        if st.max > sent {
            sh.notes.note(
                "nonreader",
                format!(
                    "{name} life {life}: got #{} back but wrote only {sent}",
                    st.max
                ),
            );
        }
        // What the router read is a prefix of what was written: no gap below the highest.
        let gaps = st.max - st.contig - st.above.len() as u64;
        if gaps > 0 {
            res.out.window_loss += gaps;
            res.out.details.push(format!(
                "{name} life {life}: {gaps} of its own messages missing below #{} after the slow-consumer close (first missing #{})",
                st.max,
                st.contig + 1
            ));
        }
    }
    res.out.extra += chk.st;
    res.out.details.append(&mut chk.details);
    res
}

fn one_life(sh: &Shared, name: &str, me: u32, slot: u32, life: u32, sends: bool) -> NrLife {
    let a = &sh.args;
    let mut l = NrLife {
        slot,
        life,
        sends,
        bytes_written: 0,
        pings: 0,
        self_sent: 0,
        paused_after: None,
        closed_after: None,
    };
    let c = match Client::connect(sh.addr, client_config(sh, me, 0)) {
        Ok(c) => c,
        Err(e) => {
            sh.notes.note(
                "nonreader",
                format!("{name} life {life}: login failed: {e}"),
            );
            sleep(Duration::from_secs(1));
            return l;
        }
    };
    let (stream, _) = c.into_parts();
    set_rcvbuf(&stream, 4096);
    if stream.set_nonblocking(true).is_err() {
        return l;
    }
    sh.count(&sh.ev.nonreader_sessions);
    let start = Instant::now();
    let life_len = Duration::from_secs_f64(a.nonreader_life);
    let mut out = BytesMut::new();
    let mut off = 0usize;
    let (mut t_ping, mut t_send, mut t_req) = (0.0f64, 0.0f64, 0.0f64);
    let ping_rate = if sends {
        a.nonreader_pings / 10.0
    } else {
        a.nonreader_pings
    };
    let send_rate = if sends { a.nonreader_sends } else { 0.0 };
    let req_rate = 50.0;
    let mut last = Instant::now();
    let mut payload = Vec::new();
    let mut nonce = 0u64;
    let key = StreamKey {
        kind: Kind::SelfSend,
        sender: me,
        device: 0,
        target: life,
    };
    while !sh.stopping() && start.elapsed() < life_len {
        sleep(TICK);
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        t_ping = (t_ping + ping_rate * dt).min(ping_rate * 0.1 + 1.0);
        t_send = (t_send + send_rate * dt).min(send_rate * 0.1 + 1.0);
        t_req = (t_req + req_rate * dt).min(req_rate * 0.1 + 1.0);
        if off == out.len() {
            out.clear();
            off = 0;
            while t_ping >= 1.0 {
                t_ping -= 1.0;
                nonce += 1;
                frame(client_frame::Kind::Ping(Ping { nonce }), &mut out);
                l.pings += 1;
            }
            while t_req >= 1.0 {
                t_req -= 1.0;
                nonce += 1;
                frame(
                    client_frame::Kind::ListRooms(ListRooms { request_id: nonce }),
                    &mut out,
                );
            }
            while t_send >= 1.0 {
                t_send -= 1.0;
                l.self_sent += 1;
                payload.clear();
                encode(
                    &Header {
                        key,
                        epoch: life,
                        counter: l.self_sent,
                    },
                    a.nonreader_send_size,
                    &mut payload,
                );
                frame(
                    client_frame::Kind::Send(Send {
                        to_user: name.to_owned(),
                        payload: Bytes::copy_from_slice(&payload),
                        ..Default::default()
                    }),
                    &mut out,
                );
            }
        }
        let mut closed = false;
        while off < out.len() {
            match (&stream).write(&out[off..]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    off += n;
                    l.bytes_written += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if l.paused_after.is_none() {
                        l.paused_after = Some(start.elapsed().as_secs_f64());
                        sh.count(&sh.ev.nonreader_paused);
                    }
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed || tcp_state(&stream) != Some(TCP_ESTABLISHED) {
            l.closed_after = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    sh.ev.nonreader_pings.fetch_add(l.pings, Relaxed);
    if l.closed_after.is_some() {
        sh.count(&sh.ev.nonreader_closed_by_router);
    } else if !sh.stopping() {
        sh.count(&sh.ev.nonreader_outlived);
    }
    drop(stream);
    l
}

/// Logs the never-reader's user in with a well-behaved client and reads its
/// offline queue (its own unacked messages), then logs out (acking them).
fn recover(sh: &Shared, me: u32, chk: &mut Checker, epoch: u32) {
    let Ok(mut dev) = Dev::connect(sh, me, 0, epoch, None) else {
        sh.notes.note(
            "nonreader",
            format!("{}: recovery login failed", sh.names.users[me as usize]),
        );
        return;
    };
    let start = Instant::now();
    let mut last_msg = start;
    while last_msg.elapsed() < Duration::from_millis(1500)
        && start.elapsed() < Duration::from_secs(60)
    {
        match dev.pump(sh, chk, Duration::from_millis(100), 100_000) {
            Ok(n) if n > 0 => last_msg = Instant::now(),
            Ok(_) => {}
            Err(e) => {
                dev.lost(sh, &mut Sender::default(), chk, &format!("recovery: {e}"));
                return;
            }
        }
    }
    dev.finish(sh, &mut Sender::default(), chk, true);
}

/// A raw connection the hostile thread holds.
struct Held {
    s: TcpStream,
    kind: &'static str,
    opened: Instant,
    /// The router must have closed it by then.
    close_by: Option<Instant>,
    /// The driver drops it then.
    hold_until: Instant,
    /// Reads what the router sends (else: only looks at the TCP state).
    reads: bool,
    /// Pings at this interval, never reading.
    ping_every: Option<Duration>,
    next_ping: Instant,
    rbuf: BytesMut,
    overdue_noted: bool,
}

/// Garbage senders and connection churn, on one thread.
pub fn hostile(sh: Arc<Shared>) {
    let a = &sh.args;
    let mut rng = Rng::new(a.seed() ^ 0x4057);
    let mut held: Vec<Held> = Vec::new();
    let (mut t_garbage, mut t_churn) = (0.0f64, 0.0f64);
    let mut last = Instant::now();
    let mut n = 0usize;
    let login_timeout = Duration::from_secs_f64(a.login_timeout);
    while !sh.stopping() {
        sleep(TICK);
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        t_garbage = (t_garbage + a.garbage_rate * dt).min(a.garbage_rate + 1.0);
        t_churn = (t_churn + a.churn_rate * dt).min(a.churn_rate + 1.0);
        while t_garbage >= 1.0 {
            t_garbage -= 1.0;
            n += 1;
            if let Some(h) = garbage(&sh, &mut rng, n) {
                held.push(h);
            }
        }
        while t_churn >= 1.0 {
            t_churn -= 1.0;
            n += 1;
            if let Some(h) = churn(&sh, &mut rng, n, login_timeout) {
                held.push(h);
            }
        }
        held.retain_mut(|h| poll_held(&sh, h));
    }
    let open = held
        .iter()
        .filter(|h| h.kind.starts_with("garbage"))
        .count();
    sh.ev.garbage_open_at_end.fetch_add(open as u64, Relaxed);
}

/// Looks at one held connection; false when it is done with.
fn poll_held(sh: &Shared, h: &mut Held) -> bool {
    let now = Instant::now();
    if let Some(every) = h.ping_every {
        if now >= h.next_ping {
            h.next_ping = now + every;
            let mut b = BytesMut::new();
            frame(client_frame::Kind::Ping(Ping { nonce: 1 }), &mut b);
            let _ = (&h.s).write(&b);
        }
    }
    let mut closed = false;
    if h.reads {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&h.s).read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => h.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        while let Ok(Some(body)) = next_frame(&mut h.rbuf, 1 << 20) {
            if let Ok(f) = decode_server(body) {
                if matches!(f.kind, Some(server_frame::Kind::Error(_))) {
                    sh.count(&sh.ev.garbage_error_frames);
                }
            }
        }
    } else {
        closed = tcp_state(&h.s) != Some(TCP_ESTABLISHED);
    }
    if closed {
        let in_time = h.close_by.is_none_or(|t| now <= t);
        if h.kind.starts_with("garbage") && in_time {
            sh.count(&sh.ev.garbage_closed_in_time);
        }
        if h.kind.starts_with("churn-prelogin") {
            sh.count(&sh.ev.churn_prelogin_closed_by_router);
        }
        return false;
    }
    if let Some(t) = h.close_by {
        if now > t && !h.overdue_noted {
            h.overdue_noted = true;
            sh.notes.note(
                "hostile-not-closed",
                format!(
                    "{} connection still open {:.1} s after it was opened (bound {:.1} s)",
                    h.kind,
                    now.duration_since(h.opened).as_secs_f64(),
                    t.duration_since(h.opened).as_secs_f64()
                ),
            );
        }
    }
    now < h.hold_until
}

fn raw_connect(sh: &Shared) -> Option<TcpStream> {
    match TcpStream::connect_timeout(&sh.addr, CLIENT_TIMEOUT) {
        Ok(s) => Some(s),
        Err(e) => {
            sh.notes.note("hostile", format!("connect failed: {e}"));
            None
        }
    }
}

fn logged_in(sh: &Shared, user: String) -> Option<TcpStream> {
    let mut cfg = ringrouter_client::ClientConfig::new(user);
    cfg.timeout = CLIENT_TIMEOUT;
    match Client::connect(sh.addr, cfg) {
        Ok(c) => Some(c.into_parts().0),
        Err(e) => {
            sh.notes
                .note("hostile", format!("garbage login failed: {e}"));
            None
        }
    }
}

fn varint(v: u64) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_varint(&mut b, v);
    b.to_vec()
}

/// Opens one garbage connection (one of eight patterns).
fn garbage(sh: &Shared, rng: &mut Rng, n: usize) -> Option<Held> {
    let a = &sh.args;
    let quick = Duration::from_secs(3);
    let pattern = rng.below(8);
    let prelogin = pattern < 4;
    let s = if prelogin {
        raw_connect(sh)?
    } else {
        logged_in(sh, sh.names.garbage_user(n))?
    };
    sh.count(&sh.ev.garbage_conns);
    let max_frame = if prelogin {
        a.max_prelogin_frame
    } else {
        a.max_frame
    };
    let (kind, bytes, shut, bound): (&'static str, Vec<u8>, bool, Duration) = match pattern % 4 {
        0 => {
            let len = rng.range(1, 2048) as usize;
            ("garbage-random", rng.bytes(len), true, quick)
        }
        1 => {
            let len = rng.range(max_frame + 1, 1 << 40);
            ("garbage-oversize", varint(len), false, quick)
        }
        2 => {
            let mut b = varint(200);
            b.extend(rng.bytes(100));
            // Before Login nothing but the login timeout ends it.
            let bound = if prelogin {
                Duration::from_secs_f64(a.login_timeout) + quick
            } else {
                quick
            };
            ("garbage-truncated", b, !prelogin, bound)
        }
        _ => {
            let mut b = varint(32);
            b.extend([0xffu8; 32]);
            ("garbage-undecodable", b, false, quick)
        }
    };
    let kind: &'static str = match (kind, prelogin) {
        ("garbage-random", true) => "garbage-random-prelogin",
        ("garbage-random", false) => "garbage-random-loggedin",
        ("garbage-oversize", true) => "garbage-oversize-prelogin",
        ("garbage-oversize", false) => "garbage-oversize-loggedin",
        ("garbage-truncated", true) => "garbage-truncated-prelogin",
        ("garbage-truncated", false) => "garbage-truncated-loggedin",
        (_, true) => "garbage-undecodable-prelogin",
        (_, false) => "garbage-undecodable-loggedin",
    };
    let _ = (&s).write_all(&bytes);
    if shut {
        let _ = s.shutdown(Shutdown::Write);
    }
    s.set_nonblocking(true).ok()?;
    let now = Instant::now();
    Some(Held {
        s,
        kind,
        opened: now,
        close_by: Some(now + bound),
        hold_until: now + bound + Duration::from_secs(3),
        reads: true,
        ping_every: None,
        next_ping: now,
        rbuf: BytesMut::new(),
        overdue_noted: false,
    })
}

/// One churn connection: login and drop, or never log in.
fn churn(sh: &Shared, rng: &mut Rng, n: usize, login_timeout: Duration) -> Option<Held> {
    let a = &sh.args;
    if rng.chance(0.5) {
        let mut cfg = ringrouter_client::ClientConfig::new(sh.names.churn_user(n));
        cfg.timeout = CLIENT_TIMEOUT;
        match Client::connect(sh.addr, cfg) {
            Ok(mut c) => {
                if rng.chance(0.5) {
                    let _ = c.ping();
                }
                drop(c);
                sh.count(&sh.ev.churn_login_drops);
            }
            Err(e) => sh.notes.note("hostile", format!("churn login failed: {e}")),
        }
        return None;
    }
    let s = raw_connect(sh)?;
    s.set_nonblocking(true).ok()?;
    sh.count(&sh.ev.churn_prelogin);
    let pinger = a.prelogin_pings > 0.0 && rng.chance(0.25);
    if pinger {
        set_rcvbuf(&s, 4096);
        sh.count(&sh.ev.churn_prelogin_pingers);
    }
    let now = Instant::now();
    let hold = Duration::from_millis(rng.range(1000, (login_timeout.as_millis() as u64) + 6000));
    Some(Held {
        s,
        kind: if pinger {
            "churn-prelogin-pinger"
        } else {
            "churn-prelogin"
        },
        opened: now,
        close_by: Some(now + login_timeout + Duration::from_secs(3)),
        hold_until: now + hold,
        reads: !pinger,
        ping_every: pinger.then(|| Duration::from_secs_f64(1.0 / a.prelogin_pings)),
        next_ping: now,
        rbuf: BytesMut::new(),
        overdue_noted: false,
    })
}
