//! Checks run by the fuzz targets (`fuzz/fuzz_targets/`), and by the tests that replay
//! the committed corpora (`fuzz/corpus/`) with the stable toolchain.
//!
//! Compiled for tests and with the `fuzzing` feature (which the fuzz crate enables).
//! Every function panics when the code under test misbehaves, which is what libFuzzer
//! reports as a crash.
//!
//! - [`check_shard_frames`]: shards without I/O (and without a store) driven by an
//!   arbitrary sequence of logins, client frames, partial writes, mailbox flushes, clock
//!   ticks and disconnects, with the router's invariants checked after every step.
//! - [`check_store_codec`]: the store's record and key encodings on arbitrary bytes.
//! - [`check_prelogin`]: the pre-login state machine under an arbitrary driver.
//! - [`check_ws_decoder`]: the WebSocket decoder on arbitrary bytes cut anywhere.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use prost::Message;

use ringrouter_proto::codec::next_frame;
use ringrouter_proto::fast::parse_client;
use ringrouter_proto::v1::{self, client_frame, server_frame, ClientFrame, ServerFrame};
use ringrouter_proto::Status;

use crate::config::Config;
use crate::outbuf::WriteBatch;
use crate::shard::{pause_tables, CloseReason, Flow, Mail, SessionKey, Shard};
use crate::stats::ShardStats;
use crate::store::codec::{
    decode, encode, glob_literal_prefix, glob_match, parse_queue_key, queue_key, queue_prefix,
    validate_name, AccountRecord,
};
use crate::store::{RoomRecord, StoredMsg};
use ringrouter_proto::reply::request_id_of;

// ------------------------------------------------------------------------ store codec

/// The `store_codec` target: `data[0]` picks what `data[1..]` is decoded as (a queued
/// message, an account, a room, an offline-queue key, a glob), none of which may panic;
/// whatever decodes encodes back to bytes that decode to the same record, and the
/// encoding of a record is a fixed point.
pub fn check_store_codec(data: &[u8]) {
    let [sel, rest @ ..] = data else {
        return;
    };
    match sel % 5 {
        0 => round_trip::<StoredMsg>(rest),
        1 => round_trip::<AccountRecord>(rest),
        2 => round_trip::<RoomRecord>(rest),
        3 => check_queue_key(rest),
        _ => check_glob(rest),
    }
    // Every value is also tried as every record, untagged values included.
    let _ = decode::<StoredMsg>(data, "x");
    let _ = decode::<AccountRecord>(data, "x");
    let _ = decode::<RoomRecord>(data, "x");
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(value: &[u8]) {
    let Ok(rec) = decode::<M>(value, "fuzz") else {
        return;
    };
    let bytes = encode(&rec);
    assert_eq!(bytes.first(), Some(&1), "no format tag");
    let again = decode::<M>(&bytes, "fuzz")
        .unwrap_or_else(|e| panic!("{rec:?} encodes to a value that does not decode: {e}"));
    assert_eq!(again, rec, "encode(decode(x)) is another record");
    assert_eq!(encode(&again), bytes, "the encoding is not a fixed point");
}

/// `data`: a user name (up to the first 0xff byte) then a key to parse in its queue.
fn check_queue_key(data: &[u8]) {
    let (user, key) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let user = String::from_utf8_lossy(user);
    let prefix = queue_prefix(&user);
    assert!(prefix.starts_with(user.as_bytes()) && prefix.ends_with(&[0]));
    if let Ok(seq) = parse_queue_key(&prefix, key) {
        assert_eq!(
            queue_key(&prefix, seq),
            key,
            "a parsed key is not its own key"
        );
    }
    // Keys built for the queue parse back, and sort by seq.
    let seq = key
        .iter()
        .fold(0u64, |a, &b| a.rotate_left(8) ^ u64::from(b));
    let k = queue_key(&prefix, seq);
    assert_eq!(parse_queue_key(&prefix, &k).ok(), Some(seq));
    if seq < u64::MAX {
        assert!(k < queue_key(&prefix, seq + 1), "keys do not sort by seq");
    }
    // A valid name's queue never holds another valid name's keys.
    if validate_name("user", &user).is_ok() {
        let other = format!("{user}x");
        assert!(parse_queue_key(&prefix, &queue_key(&queue_prefix(&other), seq)).is_err());
    }
}

/// `data`: a glob pattern, 0xff, a name.
fn check_glob(data: &[u8]) {
    let (pattern, name) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let pattern = String::from_utf8_lossy(&pattern[..pattern.len().min(64)]);
    let name = String::from_utf8_lossy(&name[..name.len().min(64)]);
    let lit = glob_literal_prefix(&pattern);
    assert!(pattern.starts_with(lit));
    if glob_match(&pattern, &name) {
        // ListUsers scans the names that start with the literal prefix only.
        assert!(
            name.starts_with(lit),
            "{name:?} matches {pattern:?} but not its prefix {lit:?}"
        );
    }
    if !pattern.contains(['*', '?']) {
        assert_eq!(glob_match(&pattern, &name), pattern == name);
    }
    assert!(glob_match(&name.replace(['*', '?'], "?"), &name));
    assert!(glob_match("*", &name));
}

// ---------------------------------------------------------------------- shard frames

/// User names the sessions log in as.
const USERS: [&str; 5] = ["ann", "bob", "cy", "dee", "eve"];
/// Room names (one a join code, which Send refuses).
const ROOMS: [&str; 3] = ["lobby", "den", "#abcdefgh"];
/// Session slots of the simulation (connections at once).
const SLOTS: usize = 8;
/// First byte of the payloads the simulation sends: `[MAGIC, sender uid (4), counter (4)]`.
const MAGIC: u8 = 0xf7;
/// Batches a ring between two shards holds before the flusher is stuck.
const RING_BATCHES: usize = 4;

/// Mails a batch holds in the model (the router's are `shard::BATCH_MAILS`).
const BATCH_MAILS_MODEL: usize = 8;
/// Bytes a deferred message counts for besides its payload (`shard::DEFERRED_OVERHEAD`).
const DEFERRED_OVERHEAD: usize = 128;
/// Bit set in the request ids of the frames the simulation makes, whose answers it
/// counts (a raw frame carrying such an id is not sent: it would be counted too).
const OWN_REQUEST: u64 = 1 << 63;

#[derive(Arbitrary, Debug)]
struct Setup {
    shards: u8,
    inline: u8,
    pending: u8,
    sessions_per_user: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A connection logs in as `USERS[user]` into a free slot.
    Login { slot: u8, user: u8 },
    /// Frames the slot's client sent, read as one chunk.
    Frames { slot: u8, frames: Vec<FrameOp> },
    /// Bytes as one frame body: garbage, mostly.
    Raw { slot: u8, body: Vec<u8> },
    /// The slot's socket takes `n` bytes (0: the write fails).
    Write { slot: u8, n: u16 },
    /// A shard's flusher moves its outgoing batches into the rings.
    Flush { shard: u8 },
    /// A shard's consumer takes what arrived in its rings and its own mail.
    Consume { shard: u8 },
    /// The peer closes the connection.
    Close { slot: u8 },
    /// The clock moves on; every shard ticks.
    Tick { ms: u16 },
}

#[derive(Arbitrary, Debug)]
enum FrameOp {
    Send {
        to: To,
        len: u16,
        want_result: bool,
        msg_id: u8,
    },
    Ack(AckTo),
    Ping(u64),
    Pong(u64),
    Logout,
    Login,
    Register,
    CreateRoom {
        room: u8,
        password: bool,
    },
    JoinRoom {
        room: u8,
    },
    LeaveRoom {
        room: u8,
    },
    AddMember {
        room: u8,
        user: u8,
    },
    RemoveMember {
        room: u8,
        user: u8,
    },
    DeleteRoom {
        room: u8,
    },
    ListRooms,
    DeleteAccount,
    ListUsers {
        pattern: u8,
        limit: u8,
    },
    Empty,
}

#[derive(Arbitrary, Debug)]
enum To {
    User(u8),
    Room(u8),
    Both(u8, u8),
    Nobody,
    TooLong,
}

#[derive(Arbitrary, Debug)]
enum AckTo {
    /// Everything the client has read.
    Seen,
    /// `k` below it.
    Below(u8),
    /// Anything.
    Any(u64),
}

/// A client connection of the simulation.
struct Conn {
    shard: usize,
    key: SessionKey,
    uid: u32,
    user: usize,
    /// The batch the writer is writing: the batch, its bytes, bytes written.
    batch: Option<(Box<WriteBatch>, Vec<u8>, usize)>,
    /// Bytes the client received and has not decoded yet.
    rx: BytesMut,
    got_login: bool,
    last_seq: u64,
    /// Per sender uid, the counter of the last message received from it.
    from: HashMap<u32, u32>,
    /// Local sessions this reader is waiting for (its `blocked` list).
    blocked: Vec<SessionKey>,
    next_request: u64,
    /// Request ids of Sends that asked for a SendResult, not answered yet.
    want_send: HashSet<u64>,
    /// Request ids of room and account requests not answered yet.
    want_other: HashSet<u64>,
}

struct Sim {
    shards: Vec<Shard>,
    /// `rings[from][to]`: batches pushed and not yet consumed.
    rings: Vec<Vec<VecDeque<Vec<Mail>>>>,
    flights: Vec<Vec<Arc<AtomicUsize>>>,
    slots: Vec<Option<Conn>>,
    /// uid → user index.
    uids: Vec<usize>,
    counter: u32,
    start: Instant,
    clock: Duration,
}

/// The `shard_frames` target. Shards (1 to 3, no store) run an arbitrary sequence of
/// [`Op`]s, played the way the connection tasks play them (a reader stops while a
/// recipient it fed is over its bound or a remote one paused it; a closing session is
/// removed once its writer is done). After every step:
/// - no panic (overflow checks are on in fuzz builds);
/// - every byte a client receives decodes as frames; the first is its LoginResult;
///   Deliver seqs strictly increase; a Deliver's `from_user` is the sender's user and
///   each sender's messages arrive in order;
/// - byte accounting: what a writer takes is exactly `out.len()` bytes; `inflight` is
///   what the writer holds; `deferred_bytes` is what `deferred` holds; `pending()` never wraps;
///   outbox counts and weights, and the pipeline counters between shards, equal what
///   is queued;
/// - the users map lists exactly the live sessions;
/// - at most one SendResult per Send that asked for one, one answer per room or
///   account request.
///
/// At the end everything is flushed, consumed and written until nothing moves: then no
/// reader is paused, nothing is queued anywhere, and every live session got every
/// answer it was owed.
pub fn check_shard_frames(data: &[u8]) {
    run_shard_frames(data, false);
}

/// [`check_shard_frames`], printing each step (to debug a crash).
pub fn trace_shard_frames(data: &[u8]) {
    run_shard_frames(data, true);
}

fn run_shard_frames(data: &[u8], trace: bool) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    if trace {
        eprintln!("{setup:?}");
    }
    let mut sim = Sim::new(&setup);
    let mut steps = 0;
    while !u.is_empty() && steps < 256 {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        if trace {
            eprintln!("{op:?}");
        }
        sim.step(op);
        sim.check();
        steps += 1;
    }
    sim.quiesce();
}

impl Sim {
    fn new(setup: &Setup) -> Sim {
        let n = usize::from(setup.shards % 3) + 1;
        let max_pending = [256, 4096, 1 << 20][usize::from(setup.pending % 3)];
        let cfg = Arc::new(Config {
            max_frame_bytes: 4096,
            max_payload_bytes: 512,
            max_pending_bytes: max_pending,
            max_unacked_bytes_per_session: max_pending * 2,
            max_sessions_per_user: usize::from(setup.sessions_per_user % 3) + 1,
            inline_payload_max: [0, 16, 1 << 20][usize::from(setup.inline % 3)],
            max_connections: 2 * SLOTS,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(2),
            slow_consumer_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(1),
            ..Config::default()
        });
        let flights: Vec<Vec<Arc<AtomicUsize>>> = (0..n)
            .map(|_| (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect())
            .collect();
        let pause = pause_tables(n, cfg.max_connections);
        let shards = (0..n)
            .map(|id| {
                let flight_out = (0..n).map(|to| flights[id][to].clone()).collect();
                let flight_in = (0..n)
                    .filter(|&from| from != id)
                    .map(|from| flights[from][id].clone())
                    .collect();
                let mut sh = Shard::with_pipeline(
                    id,
                    n,
                    cfg.clone(),
                    Arc::new(ShardStats::default()),
                    flight_out,
                    flight_in,
                    pause.clone(),
                );
                // Batches of a few mails: the model's turns seal some, and send short ones.
                sh.set_batch_mails(BATCH_MAILS_MODEL);
                sh
            })
            .collect();
        Sim {
            shards,
            rings: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            flights,
            slots: (0..SLOTS).map(|_| None).collect(),
            uids: Vec::new(),
            counter: 0,
            start: Instant::now(),
            clock: Duration::ZERO,
        }
    }

    fn now(&self) -> Instant {
        self.start + self.clock
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Login { slot, user } => self.login(usize::from(slot) % SLOTS, user),
            Op::Frames { slot, frames } => {
                let slot = usize::from(slot) % SLOTS;
                if !self.readable(slot) {
                    return;
                }
                let frames: Vec<Bytes> = frames
                    .into_iter()
                    .take(8)
                    .map(|f| self.encode(slot, f))
                    .collect();
                self.read_chunk(slot, frames);
            }
            Op::Raw { slot, body } => {
                let slot = usize::from(slot) % SLOTS;
                let own = matches!(
                    ClientFrame::decode(&body[..]),
                    Ok(ClientFrame { kind: Some(ref k) }) if request_id_of(k) & OWN_REQUEST != 0
                );
                if !own && self.readable(slot) {
                    self.read_chunk(slot, vec![Bytes::from(body)]);
                }
            }
            Op::Write { slot, n } => self.write(usize::from(slot) % SLOTS, usize::from(n)),
            Op::Flush { shard } => self.flush(usize::from(shard) % self.shards.len()),
            Op::Consume { shard } => self.consume(usize::from(shard) % self.shards.len()),
            Op::Close { slot } => self.peer_close(usize::from(slot) % SLOTS),
            Op::Tick { ms } => {
                self.clock += Duration::from_millis(u64::from(ms));
                let now = self.now();
                for sh in &mut self.shards {
                    sh.tick(now);
                }
                self.reap();
            }
        }
    }

    fn login(&mut self, slot: usize, user: u8) {
        if self.slots[slot].is_some() {
            return;
        }
        let user = usize::from(user) % USERS.len();
        let name = USERS[user];
        let shard = self.shards[0].home(name.as_bytes());
        let sh = &mut self.shards[shard];
        let Ok(key) = sh.register(name, format!("d{slot}"), -1) else {
            return;
        };
        let uid = self.uids.len() as u32;
        self.uids.push(user);
        let lr = v1::LoginResult {
            status: Status::Ok as i32,
            user: name.into(),
            shard: shard as u32,
            ..Default::default()
        };
        sh.start_backlog(
            key,
            ServerFrame {
                kind: Some(server_frame::Kind::LoginResult(lr)),
            },
        );
        self.slots[slot] = Some(Conn {
            shard,
            key,
            uid,
            user,
            batch: None,
            rx: BytesMut::new(),
            got_login: false,
            last_seq: 0,
            from: HashMap::new(),
            blocked: Vec::new(),
            next_request: 1,
            want_send: HashSet::new(),
            want_other: HashSet::new(),
        });
    }

    /// Whether the slot's reader would read now (see `net::session::read_loop`).
    fn readable(&mut self, slot: usize) -> bool {
        let Some(c) = self.slots[slot].as_mut() else {
            return false;
        };
        let sh = &self.shards[c.shard];
        if sh.sessions.get(c.key).is_none_or(|s| s.closing.is_some()) {
            return false;
        }
        c.blocked.retain(|&k| !sh.drained(k));
        c.blocked.is_empty() && !sh.paused(c.key) && !sh.pipeline_full() && !sh.store_full()
    }

    /// Encodes one client frame of the slot's client (remembering what it is owed).
    fn encode(&mut self, slot: usize, op: FrameOp) -> Bytes {
        use client_frame::Kind;
        let Some(c) = self.slots[slot].as_mut() else {
            return Bytes::new();
        };
        let request_id = OWN_REQUEST | c.next_request;
        c.next_request += 1;
        let room = |r: u8| ROOMS[usize::from(r) % ROOMS.len()].to_owned();
        let user = |u: u8| USERS[usize::from(u) % USERS.len()].to_owned();
        let kind = match op {
            FrameOp::Send {
                to,
                len,
                want_result,
                msg_id,
            } => {
                self.counter += 1;
                let mut payload = vec![MAGIC];
                payload.extend_from_slice(&c.uid.to_le_bytes());
                payload.extend_from_slice(&self.counter.to_le_bytes());
                payload.resize(payload.len() + usize::from(len) % 700, 0xab);
                let (to_user, to_room) = match to {
                    To::User(u) => (user(u), String::new()),
                    To::Room(r) => (String::new(), room(r)),
                    To::Both(u, r) => (user(u), room(r)),
                    To::Nobody => (String::new(), String::new()),
                    To::TooLong => ("x".repeat(17), String::new()),
                };
                if want_result {
                    c.want_send.insert(request_id);
                }
                Kind::Send(v1::Send {
                    request_id,
                    to_user,
                    to_room,
                    payload: payload.into(),
                    want_result,
                    msg_id: u64::from(msg_id),
                    ephemeral: false,
                    client_seq: 0,
                })
            }
            FrameOp::Ack(to) => {
                let up_to_seq = match to {
                    AckTo::Seen => c.last_seq,
                    AckTo::Below(k) => c.last_seq.saturating_sub(u64::from(k)),
                    AckTo::Any(s) => s,
                };
                Kind::Ack(v1::Ack { up_to_seq })
            }
            FrameOp::Ping(nonce) => Kind::Ping(v1::Ping { nonce }),
            FrameOp::Pong(nonce) => Kind::Pong(v1::Pong { nonce }),
            FrameOp::Logout => Kind::Logout(v1::Logout {}),
            FrameOp::Login => Kind::Login(v1::Login {
                request_id,
                user: USERS[c.user].into(),
                ..Default::default()
            }),
            FrameOp::Register => Kind::Register(v1::Register {
                request_id,
                user: "new".into(),
                password: "pw".into(),
            }),
            FrameOp::CreateRoom { room: r, password } => {
                c.want_other.insert(request_id);
                Kind::CreateRoom(v1::CreateRoom {
                    request_id,
                    name: room(r),
                    password: if password { "pw".into() } else { String::new() },
                    members: Vec::new(),
                })
            }
            FrameOp::JoinRoom { room: r } => {
                c.want_other.insert(request_id);
                Kind::JoinRoom(v1::JoinRoom {
                    request_id,
                    room: room(r),
                    password: String::new(),
                })
            }
            FrameOp::LeaveRoom { room: r } => {
                c.want_other.insert(request_id);
                Kind::LeaveRoom(v1::LeaveRoom {
                    request_id,
                    room: room(r),
                })
            }
            FrameOp::AddMember { room: r, user: u } => {
                c.want_other.insert(request_id);
                Kind::AddMember(v1::AddMember {
                    request_id,
                    room: room(r),
                    user: user(u),
                })
            }
            FrameOp::RemoveMember { room: r, user: u } => {
                c.want_other.insert(request_id);
                Kind::RemoveMember(v1::RemoveMember {
                    request_id,
                    room: room(r),
                    user: user(u),
                })
            }
            FrameOp::DeleteRoom { room: r } => {
                c.want_other.insert(request_id);
                Kind::DeleteRoom(v1::DeleteRoom {
                    request_id,
                    room: room(r),
                })
            }
            FrameOp::ListRooms => {
                c.want_other.insert(request_id);
                Kind::ListRooms(v1::ListRooms { request_id })
            }
            FrameOp::DeleteAccount => {
                c.want_other.insert(request_id);
                Kind::DeleteAccount(v1::DeleteAccount { request_id })
            }
            FrameOp::ListUsers { pattern, limit } => {
                c.want_other.insert(request_id);
                Kind::ListUsers(v1::ListUsers {
                    request_id,
                    pattern: ["", "*", "a*", "?o?", "x"][usize::from(pattern) % 5].into(),
                    limit: u32::from(limit),
                })
            }
            FrameOp::Empty => return Bytes::new(),
        };
        ClientFrame { kind: Some(kind) }.encode_to_vec().into()
    }

    /// The slot's reader handles one chunk of frame bodies (see `net::session::read_loop`).
    fn read_chunk(&mut self, slot: usize, bodies: Vec<Bytes>) {
        let now = self.now();
        let ts = 1_700_000_000_000_000 + self.clock.as_micros() as u64;
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        let sh = &mut self.shards[c.shard];
        for body in bodies {
            match parse_client(body) {
                Ok(frame) => {
                    // (`Flow::Again` needs a list past `--max-loaded-blockers`: the
                    // fuzzed router's lists hold a handful.)
                    if sh.on_frame(c.key, frame, now, ts, &mut c.blocked) != Flow::Continue {
                        break;
                    }
                }
                Err(e) => {
                    sh.close(
                        c.key,
                        CloseReason::BadFrame,
                        Some((Status::BadFrame, &e.to_string())),
                    );
                    break;
                }
            }
            if sh.sessions.get(c.key).is_none_or(|s| s.closing.is_some()) {
                break;
            }
        }
        self.reap();
    }

    /// The slot's writer: takes a batch if it has none, the socket takes `n` bytes of it
    /// (see `net::session::write_loop`).
    fn write(&mut self, slot: usize, n: usize) {
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        let sh = &mut self.shards[c.shard];
        let Some(s) = sh.sessions.get_mut(c.key) else {
            return;
        };
        if c.batch.is_none() {
            if s.out.is_empty() {
                return;
            }
            let queued = s.out.len();
            let spare = s.spare.take();
            let batch = s.out.take(spare);
            let bytes: Vec<u8> = batch.parts().concat();
            assert_eq!(batch.total(), queued, "a batch is not what was queued");
            assert_eq!(bytes.len(), queued, "out.len() is not the bytes written");
            assert!(s.out.is_empty());
            s.inflight += batch.total();
            c.batch = Some((batch, bytes, 0));
        }
        let Some((batch, bytes, written)) = c.batch.as_mut() else {
            return;
        };
        let ok = n > 0;
        if ok {
            let n = n.min(batch.remaining());
            batch.advance(n);
            c.rx.extend_from_slice(&bytes[*written..*written + n]);
            *written += n;
            assert_eq!(batch.remaining(), bytes.len() - *written);
        }
        if ok && batch.remaining() > 0 {
            Self::receive(c, &self.uids);
            return;
        }
        let Some((mut batch, _, _)) = c.batch.take() else {
            return;
        };
        let max = sh.cfg.max_pending_bytes;
        if let Some(s) = sh.sessions.get_mut(c.key) {
            s.inflight -= batch.total();
            s.out.recycle(&mut batch);
            s.spare = Some(batch);
            if s.pending() <= max {
                s.over_since = None;
                s.wake_drain_waiters();
                sh.release_throttles(c.key);
                sh.continue_loading(c.key);
            }
        }
        if !ok {
            // The connection is broken: the writer ends, so does the reader, and the
            // session goes (the client gets nothing more).
            sh.close(c.key, CloseReason::PeerClosed, None);
            sh.remove(c.key);
            self.slots[slot] = None;
            self.reap();
            return;
        }
        Self::receive(c, &self.uids);
        self.reap();
    }

    /// The client decodes what it received and checks it.
    fn receive(c: &mut Conn, uids: &[usize]) {
        loop {
            let body = match next_frame(&mut c.rx, 1 << 20) {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => panic!("the router wrote a bad frame length: {e}"),
            };
            let frame = ServerFrame::decode(body.clone()).unwrap_or_else(|e| {
                panic!("the router wrote an undecodable frame ({e}): {body:02x?}")
            });
            let kind = frame.kind.unwrap_or_else(|| panic!("a frame with no kind"));
            if !c.got_login {
                assert!(
                    matches!(kind, server_frame::Kind::LoginResult(_)),
                    "{kind:?} before the LoginResult"
                );
                c.got_login = true;
                continue;
            }
            match kind {
                server_frame::Kind::LoginResult(_) => panic!("a second LoginResult"),
                // Live-only copies of the user's own direct messages: unsequenced.
                server_frame::Kind::Deliver(d) if d.outgoing || d.ephemeral => {
                    assert_eq!(d.seq, 0, "an unsequenced Deliver with a seq");
                }
                server_frame::Kind::Deliver(d) => {
                    assert!(d.seq > c.last_seq, "seq {} after {}", d.seq, c.last_seq);
                    c.last_seq = d.seq;
                    if let [MAGIC, rest @ ..] = &d.payload[..] {
                        let (Some(uid), Some(n)) = (rest.get(..4), rest.get(4..8)) else {
                            continue;
                        };
                        let uid = u32::from_le_bytes([uid[0], uid[1], uid[2], uid[3]]);
                        let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]);
                        let sender = USERS[uids[uid as usize]];
                        assert_eq!(d.from_user, sender, "a Deliver with a wrong from_user");
                        let last = c.from.insert(uid, n).unwrap_or(0);
                        assert!(n > last, "messages of one sender out of order");
                    }
                }
                server_frame::Kind::SendResult(r) if r.request_id & OWN_REQUEST != 0 => {
                    assert!(
                        c.want_send.remove(&r.request_id),
                        "a SendResult nobody asked for (or a second one): {r:?}"
                    );
                }
                server_frame::Kind::RoomResult(r) if r.request_id & OWN_REQUEST != 0 => {
                    assert!(
                        c.want_other.remove(&r.request_id),
                        "an unexpected RoomResult {r:?}"
                    );
                }
                server_frame::Kind::AccountResult(r) if r.request_id & OWN_REQUEST != 0 => {
                    assert!(
                        c.want_other.remove(&r.request_id),
                        "an unexpected AccountResult {r:?}"
                    );
                }
                server_frame::Kind::Error(e) => {
                    // A refused request is answered by its Error.
                    c.want_send.remove(&e.request_id);
                    c.want_other.remove(&e.request_id);
                }
                _ => {}
            }
        }
    }

    /// A shard's flusher (see `shard::run::flusher`).
    fn flush(&mut self, from: usize) {
        let sh = &mut self.shards[from];
        for to in 0..sh.n {
            while let Some((batch, weight)) = sh.next_batch(to) {
                if self.rings[from][to].len() >= RING_BATCHES {
                    sh.batch_unsent(to, batch, weight);
                    break;
                }
                sh.batch_sent(to, batch.len(), weight);
                self.rings[from][to].push_back(batch);
            }
        }
    }

    /// A shard's consumer (see `shard::run::consumer`).
    fn consume(&mut self, to: usize) {
        let mut blocked = Vec::new();
        for from in 0..self.shards.len() {
            while let Some(mut batch) = self.rings[from][to].pop_front() {
                let sh = &mut self.shards[to];
                let weight: usize = batch.iter().map(Mail::weight).sum();
                sh.begin_batch();
                for mail in batch.drain(..) {
                    assert!(sh.on_mail(mail, &mut blocked).is_none(), "a handover");
                }
                let before = self.flights[from][to].fetch_sub(weight, Ordering::AcqRel);
                assert!(before >= weight, "pipeline counter {from}->{to} below zero");
                blocked.clear();
            }
        }
        let sh = &mut self.shards[to];
        let local = std::mem::take(&mut sh.local_mail);
        if !local.is_empty() {
            sh.begin_batch();
            for mail in local {
                assert!(sh.on_mail(mail, &mut blocked).is_none(), "a handover");
            }
        }
        self.reap();
    }

    /// The peer closes: the reader ends, the writer's write fails, the session goes.
    fn peer_close(&mut self, slot: usize) {
        let Some(mut c) = self.slots[slot].take() else {
            return;
        };
        let sh = &mut self.shards[c.shard];
        sh.close(c.key, CloseReason::PeerClosed, None);
        if let Some((mut batch, _, _)) = c.batch.take() {
            if let Some(s) = sh.sessions.get_mut(c.key) {
                s.inflight -= batch.total();
                s.out.recycle(&mut batch);
            }
        }
        sh.remove(c.key);
    }

    /// Sessions whose connection tasks are done: closing, and the writer has nothing left.
    fn reap(&mut self) {
        for slot in 0..SLOTS {
            let Some(c) = &self.slots[slot] else {
                continue;
            };
            let sh = &mut self.shards[c.shard];
            let done = match sh.sessions.get(c.key) {
                Some(s) => s.closing.is_some() && s.out.is_empty() && c.batch.is_none(),
                None => true,
            };
            if done {
                sh.remove(c.key);
                self.slots[slot] = None;
            }
        }
    }

    /// The invariants that hold after every step.
    fn check(&self) {
        let mut known: HashSet<(usize, SessionKey)> = HashSet::new();
        for c in self.slots.iter().flatten() {
            assert!(
                known.insert((c.shard, c.key)),
                "two connections, one session"
            );
            let s = self.shards[c.shard]
                .sessions
                .get(c.key)
                .unwrap_or_else(|| panic!("a connection without its session"));
            assert_eq!(s.user, USERS[c.user], "a session changed user");
            let held = c.batch.as_ref().map_or(0, |(b, _, _)| b.total());
            assert_eq!(s.inflight, held, "inflight is not what the writer holds");
            let deferred_sum: usize = s
                .deferred
                .iter()
                .map(|h| h.payload.len() + DEFERRED_OVERHEAD)
                .sum();
            assert_eq!(
                s.deferred_bytes, deferred_sum,
                "deferred_bytes is not what is deferred"
            );
            assert_eq!(s.pending(), s.out.len() + s.inflight + s.deferred_bytes);
            assert!(
                s.pending() < 1 << 40,
                "pending bytes wrapped: {}",
                s.pending()
            );
            assert!(s.acked <= s.last_seq, "acked past the last seq");
            assert!(
                c.last_seq <= s.last_seq,
                "the client saw a seq not assigned yet"
            );
            // No store: nothing is retained or deferred.
            assert!(s.unacked.is_empty() && s.deferred.is_empty() && !s.loading);
            let mut t = s.throttled.clone();
            t.dedup();
            assert_eq!(t.len(), s.throttled.len(), "a sender throttled twice");
        }
        for (id, sh) in self.shards.iter().enumerate() {
            for (k, s) in sh.sessions.iter() {
                assert!(known.contains(&(id, k)), "a session without a connection");
                let listed = sh.user_session_keys(&s.user).contains(&k);
                assert_eq!(listed, s.closing.is_none(), "users map vs closing");
            }
            for name in USERS {
                let keys = sh.user_session_keys(name.as_bytes());
                let mut uniq = keys.to_vec();
                uniq.sort_unstable();
                uniq.dedup();
                assert_eq!(uniq.len(), keys.len(), "a session listed twice");
                for &k in keys {
                    let s = sh.sessions.get(k).unwrap_or_else(|| panic!("listed, gone"));
                    assert_eq!(s.user, name);
                }
                assert!(keys.len() <= sh.cfg.max_sessions_per_user);
            }
            let len: usize = (0..sh.n).map(|to| sh.outbox_mails(to).count()).sum();
            assert_eq!(sh.outbox_len, len, "outbox_len");
            for to in 0..sh.n {
                assert!(sh.outbox_weights_hold(to), "batch weights to {to}");
                let w: usize = sh.outbox_mails(to).map(Mail::weight).sum();
                assert_eq!(sh.outbox_bytes[to], w, "outbox_bytes[{to}]");
                let ring: usize = self.rings[id][to].iter().flatten().map(Mail::weight).sum();
                assert_eq!(
                    self.flights[id][to].load(Ordering::Acquire),
                    ring,
                    "pipeline counter {id}->{to}"
                );
            }
        }
    }

    /// Everything moves until nothing does; then nothing is stuck.
    fn quiesce(&mut self) {
        for _ in 0..64 {
            for i in 0..self.shards.len() {
                self.flush(i);
            }
            for i in 0..self.shards.len() {
                self.consume(i);
            }
            for slot in 0..SLOTS {
                while self.slots[slot].as_ref().is_some_and(|c| {
                    c.batch.is_some()
                        || self.shards[c.shard]
                            .sessions
                            .get(c.key)
                            .is_some_and(|s| !s.out.is_empty())
                }) {
                    self.write(slot, usize::from(u16::MAX));
                }
            }
            self.check();
            let moving = self
                .shards
                .iter()
                .any(|sh| sh.outbox_len > 0 || !sh.local_mail.is_empty())
                || self.rings.iter().flatten().any(|r| !r.is_empty());
            if !moving {
                break;
            }
        }
        for (id, sh) in self.shards.iter().enumerate() {
            assert_eq!(sh.outbox_len, 0, "shard {id}'s outbox never drained");
            assert!(sh.local_mail.is_empty());
        }
        for slot in 0..SLOTS {
            if !self.readable(slot) {
                let Some(c) = &self.slots[slot] else {
                    continue;
                };
                let sh = &self.shards[c.shard];
                if sh.sessions.get(c.key).is_some_and(|s| s.closing.is_none()) {
                    panic!("slot {slot}'s reader is stuck (paused or blocked) with nothing queued");
                }
            }
        }
        for c in self.slots.iter().flatten() {
            let s = &self.shards[c.shard].sessions[c.key];
            if s.closing.is_some() {
                continue;
            }
            assert_eq!(s.pending(), 0);
            assert!(c.rx.is_empty(), "a partial frame was left");
            assert!(
                c.want_send.is_empty(),
                "Sends never answered: {:?}",
                c.want_send
            );
            assert!(
                c.want_other.is_empty(),
                "requests never answered: {:?}",
                c.want_other
            );
        }
    }
}

// --------------------------------------------------------------------------- pre-login

/// The `prelogin` target: the pre-login state machine (`crate::prelogin`) driven by an
/// arbitrary driver: bytes arrive in arbitrary pieces (ASCII frames built from the input,
/// or raw bytes), writes finish or fail, logins are accepted or refused, registers
/// answered, deadlines and shutdowns come at any point. Checked after every step: no
/// panic; a Read never lends a buffer past the frame bound plus one read; every Write and
/// Close carries whole, decodable ServerFrames of bounded size; no more than
/// `max_failed_logins` refused LoginResults, and a close right after the last one; a Start
/// only after an accepted login; once done, the machine stays done.
pub fn check_prelogin(data: &[u8]) {
    use crate::auth::AuthError;
    use crate::prelogin::{Action, Limits, PreLogin, MIN_READ};
    let mut u = Unstructured::new(data);
    let limits = Limits {
        max_frame_bytes: [64usize, 1024, 16 << 10]
            [usize::from(u.arbitrary::<u8>().unwrap_or(0) % 3)],
        max_failed_logins: u32::from(u.arbitrary::<u8>().unwrap_or(0) % 5),
        max_registrations: u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4),
        max_queued_bytes: [16usize, 512, 64 << 10]
            [usize::from(u.arbitrary::<u8>().unwrap_or(0) % 3)],
    };
    let mut pl = PreLogin::new(limits);
    let mut refused_logins = 0u32;
    let mut accepted = false;
    let mut done = false;
    for _ in 0..256 {
        let action = pl.next_action();
        if done {
            assert!(
                matches!(&action, Action::Close(b) if b.is_empty()),
                "the machine acted after it was done: {action:?}"
            );
            return;
        }
        match action {
            Action::Read { mut buf, max } => {
                assert!(
                    buf.len() <= limits.max_frame_bytes + 10 + MIN_READ,
                    "read buffer of {} bytes past the bound {}",
                    buf.len(),
                    limits.max_frame_bytes
                );
                assert!(
                    max <= limits.max_frame_bytes + 10 + MIN_READ,
                    "read of {max}"
                );
                match u.arbitrary::<u8>().unwrap_or(255) % 16 {
                    0 => pl.eof(buf),
                    1 => pl.read_failed(),
                    2 => pl.timed_out(),
                    3 => pl.shutting_down(),
                    k => {
                        let bytes = prelogin_input(&mut u, k);
                        if bytes.is_empty() {
                            pl.eof(buf);
                        } else {
                            let take = bytes.len().min(max);
                            buf.extend_from_slice(&bytes[..take]);
                            pl.read(buf);
                        }
                    }
                }
            }
            Action::Write(bytes) => {
                let frames = whole_frames(&bytes, "Write");
                assert!(
                    bytes.len() <= limits.max_queued_bytes + 4096,
                    "a write of {} bytes past the answer bound",
                    bytes.len()
                );
                refused_logins += count_refused_logins(&frames);
                assert!(refused_logins <= limits.max_failed_logins.max(1));
                match u.arbitrary::<u8>().unwrap_or(0) % 8 {
                    0 => pl.write_failed(),
                    1 => pl.timed_out(),
                    _ => pl.written(),
                }
            }
            Action::Authenticate(login) => {
                accepted = false;
                match u.arbitrary::<u8>().unwrap_or(0) % 4 {
                    0 => pl.timed_out(),
                    1 => {
                        accepted = true;
                        pl.authenticated(Ok(login.user.clone()));
                    }
                    _ => pl.authenticated(Err(AuthError {
                        status: Status::Unauthorized,
                        reason: "wrong user name or password".into(),
                    })),
                }
            }
            Action::Register(r) => pl.registered(v1::AccountResult {
                request_id: r.request_id,
                status: Status::Ok as i32,
                ..Default::default()
            }),
            Action::Start(start) => {
                assert!(accepted, "a Start without an accepted login");
                done = true;
                drop(start);
            }
            Action::Close(bytes) => {
                let frames = whole_frames(&bytes, "Close");
                let refused = count_refused_logins(&frames);
                refused_logins += refused;
                assert!(refused_logins <= limits.max_failed_logins.max(1));
                done = true;
            }
        }
    }
}

/// Bytes for one read of the pre-login target: well-formed frames (Ping, Login, Register,
/// Send, a frame with an unknown kind), a frame over the bound, or raw bytes.
fn prelogin_input(u: &mut Unstructured<'_>, k: u8) -> Vec<u8> {
    let name = |u: &mut Unstructured<'_>| -> String {
        let n = u.int_in_range(0..=8u8).unwrap_or(1);
        (0..n)
            .map(|_| char::from(b'a' + u.int_in_range(0..=25u8).unwrap_or(0)))
            .collect()
    };
    let kind = match k {
        4..=6 => client_frame::Kind::Ping(v1::Ping {
            nonce: u.arbitrary().unwrap_or(0),
        }),
        7..=9 => client_frame::Kind::Login(v1::Login {
            request_id: u.arbitrary().unwrap_or(0),
            user: name(u),
            device: name(u),
            ..Default::default()
        }),
        10 => client_frame::Kind::Register(v1::Register {
            request_id: u.arbitrary().unwrap_or(0),
            user: name(u),
            password: name(u),
        }),
        11 => client_frame::Kind::Send(v1::Send {
            request_id: u.arbitrary().unwrap_or(0),
            to_user: name(u),
            payload: vec![0u8; u.int_in_range(0..=2048u16).unwrap_or(0).into()].into(),
            ..Default::default()
        }),
        12 => {
            // A length prefix over any bound, then some bytes.
            let mut b = Vec::new();
            ringrouter_proto::codec::put_varint(&mut b, u.arbitrary::<u32>().unwrap_or(0).into());
            let n = u.int_in_range(0..=16usize).unwrap_or(0);
            b.extend_from_slice(u.bytes(n).unwrap_or(&[]));
            return b;
        }
        _ => {
            let n = u.int_in_range(0..=64usize).unwrap_or(0);
            return u.bytes(n).unwrap_or(&[]).to_vec();
        }
    };
    ClientFrame { kind: Some(kind) }.encode_length_delimited_to_vec()
}

/// Decodes `bytes` as whole ServerFrames (the machine never writes half a frame).
fn whole_frames(bytes: &[u8], what: &str) -> Vec<server_frame::Kind> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match next_frame(&mut buf, 1 << 20) {
            Ok(Some(body)) => {
                let f = ServerFrame::decode(body)
                    .unwrap_or_else(|e| panic!("{what}: an undecodable frame: {e}"));
                out.push(
                    f.kind
                        .unwrap_or_else(|| panic!("{what}: a frame with no kind")),
                );
            }
            Ok(None) => {
                assert!(buf.is_empty(), "{what}: half a frame ({} bytes)", buf.len());
                return out;
            }
            Err(e) => panic!("{what}: a bad frame length: {e}"),
        }
    }
}

fn count_refused_logins(frames: &[server_frame::Kind]) -> u32 {
    frames
        .iter()
        .filter(
            |k| matches!(k, server_frame::Kind::LoginResult(r) if r.status != Status::Ok as i32),
        )
        .count() as u32
}

/// The WebSocket decoder (`transport::ws::Decoder`) on arbitrary bytes: the first byte
/// picks the message bound, the second where the rest is cut into reads. Fed whole or
/// cut, it gives the same events and the same violation (a frame's payload is taken as
/// it arrives, so cutting must not change what it means); a message never exceeds the
/// bound; the input never keeps a data frame's payload (at most a header, 13 bytes, or
/// a control frame: 125 bytes behind a header of up to 14, its length written long).
pub fn check_ws_decoder(data: &[u8]) {
    use crate::transport::ws::{Decoder, Event};
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
        return;
    };
    let max = [16usize, 125, 1000, 70_000][usize::from(b0 % 4)];
    let cut = usize::from(b1 % 17) + 1;
    let wire = &data[2..];
    let run = |cut: usize| {
        let mut d = Decoder::new(max);
        let mut input = BytesMut::new();
        let mut events = Vec::new();
        for chunk in wire.chunks(cut) {
            input.extend_from_slice(chunk);
            loop {
                match d.decode(&mut input) {
                    Ok(Some(e)) => {
                        if let Event::Message { data, .. } = &e {
                            assert!(data.len() <= max, "a message over the bound");
                        }
                        events.push(e);
                    }
                    Ok(None) => break,
                    Err(v) => return (events, Some(v)),
                }
            }
            assert!(
                input.len() <= 139,
                "{} bytes kept in the input",
                input.len()
            );
        }
        (events, None)
    };
    let whole = run(wire.len().max(1));
    let pieces = run(cut);
    assert_eq!(whole, pieces, "fed whole and cut every {cut} bytes");
}

/// The WebSocket layer (`transport::Layers`, binary subprotocol) as the readers drive it:
/// before Login one message a call, the socket read only when nothing decoded waits,
/// the session's bound from the first message on (the "Login"), then every message a
/// call, and the end or a violation as the last word. The first byte picks the two
/// bounds, the second where the rest is cut into reads. Fed whole or cut, the frames
/// handed on and the last word are the same; nothing is handed on after the end. (Plain
/// WebSocket only: a TLS end, and the JSON subprotocol, are covered by tests in
/// `tests/tests/it/websocket.rs`.)
pub fn check_ws_layers(data: &[u8]) {
    use crate::transport::{ws::Protocol, Ingested, Layers};
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
        return;
    };
    let (pre, session) =
        [(16usize, 64usize), (16, 1000), (125, 70_000), (64, 64)][usize::from(b0 % 4)];
    let cut = usize::from(b1 % 17) + 1;
    let wire = &data[2..];
    let run = |cut: usize| {
        let mut l = Layers::none();
        l.start_ws(Protocol::Binary, pre, BytesMut::new());
        let mut app = BytesMut::new();
        let mut chunks = wire.chunks(cut);
        let mut logged_in = false;
        let last = loop {
            // What is buffered first (the readers' early ingest), then a new read.
            let before = app.len();
            let r = l.ingest(&mut BytesMut::new(), &mut app);
            let r = match r {
                Ok(Ingested::More) if app.len() == before => match chunks.next() {
                    Some(c) => l.ingest(&mut BytesMut::from(c), &mut app),
                    None => break "more",
                },
                r => r,
            };
            match r {
                Err(_) => break "violation",
                Ok(Ingested::End) => {
                    let n = app.len();
                    let again = l.ingest(&mut BytesMut::from(&b"\x82\x80\0\0\0\0"[..]), &mut app);
                    assert_eq!(again, Ok(Ingested::End), "the end holds");
                    assert_eq!(app.len(), n, "nothing handed on after the end");
                    break "end";
                }
                Ok(Ingested::More) => {}
            }
            if !logged_in && app.len() > before {
                logged_in = true;
                l.set_max_frame(session);
            }
        };
        (app.to_vec(), last)
    };
    let whole = run(wire.len().max(1));
    let pieces = run(cut);
    assert_eq!(whole, pieces, "fed whole and cut every {cut} bytes");
}

/// Runs `check` on every file of the committed corpus of `target` (`fuzz/corpus/<target>`);
/// returns how many there were.
pub fn replay_corpus(target: &str, check: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    ringrouter_proto::fuzzing::replay_dir(&dir, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "debugging aid: FUZZ_INPUT=path cargo test -p ringrouter --lib trace_input -- --ignored --nocapture"]
    fn trace_input() {
        if let Ok(path) = std::env::var("FUZZ_INPUT") {
            let data = std::fs::read(path).expect("FUZZ_INPUT");
            trace_shard_frames(&data);
        }
    }

    #[test]
    fn committed_shard_frames_corpus_passes() {
        let n = replay_corpus("shard_frames", check_shard_frames);
        assert!(n > 0, "no committed shard_frames corpus");
    }

    #[test]
    fn committed_prelogin_corpus_passes() {
        let n = replay_corpus("prelogin", check_prelogin);
        assert!(n > 0, "no committed prelogin corpus");
    }

    #[test]
    fn committed_ws_decode_corpus_passes() {
        let n = replay_corpus("ws_decode", check_ws_decoder);
        assert!(n > 0, "no committed ws_decode corpus");
    }

    #[test]
    fn committed_ws_decode_corpus_passes_the_layers_check() {
        let n = replay_corpus("ws_decode", check_ws_layers);
        assert!(n > 0, "no committed ws_decode corpus");
    }

    #[test]
    fn committed_store_codec_corpus_passes() {
        let n = replay_corpus("store_codec", check_store_codec);
        assert!(n > 0, "no committed store_codec corpus");
    }

    #[test]
    fn a_small_scripted_run_passes_the_checks() {
        // Pseudo-random inputs: the checks hold on whatever they decode to.
        for seed in 0..200u32 {
            let data: Vec<u8> = (0..400u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 13) as u8)
                .collect();
            check_shard_frames(&data);
            check_store_codec(&data);
            check_prelogin(&data);
            check_ws_decoder(&data);
        }
    }
}
