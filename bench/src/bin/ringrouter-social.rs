//! Social fan-out latency (issue 11): the time from one user's change to the moment
//! the last of M live sessions has it, for
//! - presence: a user with M accepted contacts (each online) changes its presence;
//! - receipts: a member of an M+1-member room marks it read.
//!
//! The M sessions are raw sockets in this process, watched with one `poll(2)`: a
//! session counts when its Presence (or Receipt) frame has arrived whole. Presence
//! changes are one a second apart (the router sends at most one notice per user per
//! second), so `--changes` presence samples take that many seconds. Prints p50 / p99 /
//! max in µs of the time to the last session, over the samples.
//!
//! ```text
//! ringrouter-social --addr 127.0.0.1:7878 --fanout 1000 --changes 20 --receipts 200 [--json]
//! ```
//! The router must allow M contacts per user (`--max-contacts-per-user`, default 5000)
//! and M+1 members per room (`--max-members-per-room`, default 10000).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use ringrouter_bench::percentiles;
use ringrouter_client::{Client, ClientConfig, PresenceStatus, Target};
use ringrouter_proto::codec::{decode_server, encode_frame, next_frame};
use ringrouter_proto::v1::{
    client_frame, server_frame, ClientFrame, ContactAction, ContactOp, Login, Pong,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "ringrouter-social", version)]
struct Args {
    /// Router address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// Contacts (and room members besides the reader) that get each change.
    #[arg(long, default_value_t = 1_000)]
    fanout: usize,
    /// Presence changes timed (one a second).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Read receipts timed. Each goes to every member: past ~200 into a room of 1 000
    /// the router's `--room-live-per-user-per-second` (ten seconds' worth: 200 000
    /// deliveries, then 20 000 a second) refuses them RATE_LIMITED; raise it for more.
    #[arg(long, default_value_t = 200)]
    receipts: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

type BoxError = Box<dyn std::error::Error>;

/// One watched session.
struct Peer {
    sock: TcpStream,
    buf: BytesMut,
}

impl Peer {
    fn send(&mut self, kind: client_frame::Kind) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode_frame(&ClientFrame { kind: Some(kind) }, &mut out);
        self.sock.write_all(&out)
    }

    /// Reads what is there (non-blocking); true if a frame `wanted` says yes to came.
    fn read(&mut self, wanted: fn(&server_frame::Kind) -> bool) -> Result<bool, BoxError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err("router closed a session".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let mut hit = false;
        while let Some(body) = next_frame(&mut self.buf, 1 << 20)? {
            match decode_server(body)?.kind {
                Some(server_frame::Kind::Ping(p)) => {
                    self.send(client_frame::Kind::Pong(Pong { nonce: p.nonce }))?
                }
                Some(k) if wanted(&k) => hit = true,
                _ => {}
            }
        }
        Ok(hit)
    }
}

/// Waits until every peer got a frame `wanted` says yes to; returns when the last did.
fn wait_all(
    peers: &mut [Peer],
    wanted: fn(&server_frame::Kind) -> bool,
) -> Result<Instant, BoxError> {
    let mut done = vec![false; peers.len()];
    let mut left = peers.len();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while left > 0 {
        if Instant::now() > deadline {
            return Err(format!("{left} of {} sessions got nothing", peers.len()).into());
        }
        let idx: Vec<usize> = (0..peers.len()).filter(|&i| !done[i]).collect();
        let mut fds: Vec<libc::pollfd> = idx
            .iter()
            .map(|&i| libc::pollfd {
                fd: peers[i].sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Safety: `fds` is a valid array of `fds.len()` pollfd entries for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        for (f, &i) in fds.iter().zip(&idx) {
            if f.revents != 0 && peers[i].read(wanted)? {
                done[i] = true;
                left -= 1;
                last = Instant::now();
            }
        }
    }
    Ok(last)
}

/// Reads whatever is queued on every peer (answers, events of the setup).
fn drain(peers: &mut [Peer]) -> Result<(), BoxError> {
    std::thread::sleep(Duration::from_millis(200));
    for p in peers.iter_mut() {
        p.read(|_| false)?;
    }
    Ok(())
}

fn cfg(user: &str) -> ClientConfig {
    ringrouter_bench::client_config(user, Duration::from_secs(60), 256)
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("ringrouter-social: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), BoxError> {
    let prefix = format!("soc{}-", std::process::id());
    let hub_name = format!("{prefix}hub");
    let mut hub = Client::connect(&a.addr, cfg(&hub_name))?;
    let names: Vec<String> = (0..a.fanout).map(|i| format!("{prefix}c{i}")).collect();
    let mut peers = Vec::with_capacity(a.fanout);
    for n in &names {
        let sock = TcpStream::connect(&a.addr)?;
        sock.set_nodelay(true)?;
        let mut p = Peer {
            sock,
            buf: BytesMut::new(),
        };
        p.send(client_frame::Kind::Login(Login {
            request_id: 1,
            user: n.clone(),
            device: "bench".into(),
            ..Default::default()
        }))?;
        peers.push(p);
    }
    for p in &peers {
        p.sock.set_nonblocking(true)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    drain(&mut peers)?;
    // Contacts: the hub asks, each accepts.
    for n in &names {
        hub.contact_request(n)?;
    }
    for p in peers.iter_mut() {
        p.send(client_frame::Kind::ContactOp(ContactOp {
            request_id: 2,
            user: hub_name.clone(),
            op: ContactAction::Accept as i32,
        }))?;
    }
    drain(&mut peers)?;
    let contacts = hub.contacts()?;
    if contacts.accepted.len() != a.fanout {
        return Err(format!(
            "{} of {} contacts accepted",
            contacts.accepted.len(),
            a.fanout
        )
        .into());
    }
    drain(&mut peers)?;
    // Presence: one change a second.
    let mut presence = Vec::with_capacity(a.changes);
    for i in 0..a.changes {
        std::thread::sleep(Duration::from_millis(1050));
        drain(&mut peers)?;
        let status = if i % 2 == 0 {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        };
        let t0 = Instant::now();
        hub.set_presence(status, &format!("change {i}"))?;
        let last = wait_all(&mut peers, |k| matches!(k, server_frame::Kind::Presence(_)))?;
        presence.push(last - t0);
    }
    // Receipts in a room of the hub and every contact.
    let room = format!("{prefix}room");
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    hub.create_room_with(&room, None, &members)?;
    drain(&mut peers)?;
    let mut receipts = Vec::with_capacity(a.receipts);
    for i in 0..a.receipts {
        let t0 = Instant::now();
        hub.mark_read(Target::Room(&room), i as u64 + 1)?;
        let last = wait_all(&mut peers, |k| matches!(k, server_frame::Kind::Receipt(_)))?;
        receipts.push(last - t0);
    }
    let (p, r) = (percentiles(presence), percentiles(receipts));
    if a.json {
        println!(
            "{{\"fanout\":{},\"changes\":{},\"receipts\":{},\"presence_p50_us\":{:.0},\"presence_p99_us\":{:.0},\"presence_max_us\":{:.0},\"receipt_p50_us\":{:.0},\"receipt_p99_us\":{:.0},\"receipt_max_us\":{:.0}}}",
            a.fanout, a.changes, a.receipts, p.0, p.1, p.2, r.0, r.1, r.2
        );
    } else {
        println!(
            "to the last of {} sessions: presence ({} changes) p50 {:.0} µs p99 {:.0} µs max {:.0} µs; room receipt ({} receipts) p50 {:.0} µs p99 {:.0} µs max {:.0} µs",
            a.fanout, a.changes, p.0, p.1, p.2, a.receipts, r.0, r.1, r.2
        );
    }
    Ok(())
}
