//! `nats-raw`: a reference NATS client with nothing in the way, to cross-check
//! `ringrouter-load --protocol nats`: P publisher / subscriber pairs, one OS
//! thread each, blocking sockets, PUBs batched into 64 KiB writes with no flow
//! control at all (nats-server's own slow-consumer limit is the only bound),
//! MSG frames counted in place.
//!
//!   nats-raw ADDR [PAIRS=16] [SIZE=64] [MESSAGES=3000000]
//!
//! Prints one JSON object: delivered, seconds, msgs_per_sec, client_cpu_s.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Instant;

fn handshake(addr: &str, sub: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut hello = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    if let Some(subj) = sub {
        hello.push_str(&format!("SUB {subj} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    s.write_all(hello.as_bytes()).expect("hello");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"PONG\r\n") {
        let n = s.read(&mut b).expect("handshake read");
        assert!(n > 0, "closed during the handshake");
        got.extend_from_slice(&b[..n]);
    }
    s
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Counts MSG frames in `buf` from `*pos`, moving past whole frames only.
fn count_msgs(buf: &[u8], pos: &mut usize) -> u64 {
    let mut n = 0;
    loop {
        let rest = &buf[*pos..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return n;
        };
        let line = &rest[..eol];
        let mut total = eol + 2;
        if line.starts_with(b"MSG ") {
            let len: usize = std::str::from_utf8(line.rsplit(|&b| b == b' ').next().unwrap_or(b""))
                .ok()
                .and_then(|t| t.parse().ok())
                .expect("MSG length");
            total += len + 2;
            if rest.len() < total {
                return n;
            }
            n += 1;
        } else if line.starts_with(b"-ERR") {
            panic!("{}", String::from_utf8_lossy(line));
        }
        *pos += total;
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let addr = a
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:4222".into());
    let num = |i: usize, d: u64| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (pairs, size, messages) = (num(1, 16) as usize, num(2, 64) as usize, num(3, 3_000_000));
    let per = messages / pairs as u64;
    let barrier = Arc::new(Barrier::new(2 * pairs + 1));
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for i in 0..pairs {
        let subj = format!("raw{}.{i}", std::process::id());
        let mut s = handshake(&addr, Some(&subj));
        let b = barrier.clone();
        subs.push(std::thread::spawn(move || {
            b.wait();
            let mut buf = vec![0u8; 1 << 20];
            let (mut len, mut pos, mut got) = (0usize, 0usize, 0u64);
            while got < per {
                if buf.len() - len < 64 * 1024 {
                    buf.copy_within(pos..len, 0);
                    len -= pos;
                    pos = 0;
                }
                let n = s.read(&mut buf[len..]).expect("read");
                assert!(n > 0, "closed after {got}");
                len += n;
                got += count_msgs(&buf[..len], &mut pos);
            }
            (got, Instant::now())
        }));
        let mut p = handshake(&addr, None);
        let b = barrier.clone();
        pubs.push(std::thread::spawn(move || {
            let mut one = format!("PUB {subj} {size}\r\n").into_bytes();
            one.extend(std::iter::repeat_n(b'x', size));
            one.extend_from_slice(b"\r\n");
            let per_write = (64 * 1024 / one.len()).max(1) as u64;
            let mut batch = Vec::with_capacity(per_write as usize * one.len());
            b.wait();
            let mut sent = 0;
            while sent < per {
                let k = per_write.min(per - sent);
                batch.clear();
                for _ in 0..k {
                    batch.extend_from_slice(&one);
                }
                p.write_all(&batch).expect("write");
                sent += k;
            }
            p
        }));
    }
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    barrier.wait();
    let pubs: Vec<TcpStream> = pubs
        .into_iter()
        .map(|h| h.join().expect("publisher"))
        .collect();
    let mut delivered = 0;
    let mut end = start;
    for h in subs {
        let (got, at) = h.join().expect("subscriber");
        delivered += got;
        end = end.max(at);
    }
    drop(pubs);
    let secs = end.duration_since(start).as_secs_f64();
    println!(
        "{{\"delivered\":{delivered},\"seconds\":{secs:.4},\"msgs_per_sec\":{:.0},\"client_cpu_s\":{:.3}}}",
        delivered as f64 / secs,
        cpu_seconds() - cpu0
    );
}
