//! A thread-safe client with a background writer and a background reader.
//!
//! [`ThreadedClient`] is what the Python binding uses. A caller that sends one small
//! message per call (a Python loop) cannot afford a syscall per message, and a
//! caller that blocks in `recv` on one thread must still be able to send from another.
//!
//! - **Sending** encodes the frame into a shared buffer (`Mutex<BytesMut>`) and
//!   returns. A writer thread swaps the buffer out and writes all of it with one
//!   `write`. An idle client therefore sends at once (the writer is woken), and a
//!   busy one batches: whatever accumulated while the previous write ran goes out
//!   in the next. The buffer is bounded (`max_buffer_bytes`); when it is full a
//!   send waits (or [`ThreadedClient::try_send`] reports it), which is how the
//!   router's backpressure reaches the caller.
//! - **Receiving**: a reader thread reads and decodes everything the router sends,
//!   answers heartbeat pings at once (so a client that never calls `recv` is not
//!   taken for a ghost), hands SendResults, RoomResults and AccountResults to the
//!   callers waiting for them (matched by request id), and queues messages and
//!   room events for [`ThreadedClient::recv`] / [`ThreadedClient::recv_event`]
//!   (bounded by `max_queued_bytes`; past it the reader stops reading and the
//!   router's slow-consumer handling applies).
//! - **Acks** are cumulative and cover only messages handed to the caller by
//!   `recv`: every `ack_every` messages, and from the writer thread once
//!   `ack_interval` passed with something unacked.
//!
//! Login goes through [`Client::connect`], so addresses, timeouts and login
//! errors behave exactly as for the blocking client.
//!
//! **Reconnect and resume** ([`ClientConfig::reconnect`]): fire-and-forget Sends are
//! numbered (`Send.client_seq`, with a client-chosen `msg_id`) and kept, as written,
//! until the router acknowledges them (`SendAck`); the kept bytes count against
//! `max_buffer_bytes`, so a send waits (or `try_send` says full) while the router has
//! not acknowledged that much. When the connection drops (EOF, error, a router Error
//! that closes it), the reader thread reconnects with exponential backoff (it waits
//! 20 ms doubling to 2 s before each attempt, and gives up `reconnect_for` after the
//! drop; both carry over to the next drop unless the connection stayed up 2 s or
//! made progress (delivered a message, the router took a Send), so a router that takes
//! each login and drops it at once gets a few logins a second, and the client closed
//! in the end), logs in with the resume token, and the
//! writer sends again every kept Send the router did not take. Messages received and
//! not yet handed out are dropped (the router gives them back: they were not acked),
//! and [`ThreadedClient::recv`] never hands out the same (sender, msg_id) twice (the
//! last `dedupe_window` of them are remembered). Requests waiting for an answer
//! (`send_wait`, rooms, ...) across a cut are not sent again: they time out.

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringrouter_proto::codec::next_frame;
use ringrouter_proto::send::{put_send, send_frame_len, SendHeader, Target};

use crate::core::request::{self as req, SendWait};
use crate::core::{self, AckPolicy, Answer, Inbound, Pending, Request, RequestIds};
use crate::transport::{RxState, Wire, WireRx, WireTx};
use crate::{Client, ClientConfig, ClientError, Event, Message};

/// Limits of a [`ThreadedClient`]'s two queues.
#[derive(Debug, Clone, Copy)]
pub struct ThreadedLimits {
    /// Encoded frames waiting for the writer; a send past this waits.
    pub max_buffer_bytes: usize,
    /// Received messages and events waiting for `recv` (what each holds: payload,
    /// names, texts, plus 64 bytes), counted until `recv` hands them out; past this
    /// the reader stops reading the socket.
    pub max_queued_bytes: usize,
}

impl Default for ThreadedLimits {
    /// 4 MiB of outgoing frames, 64 MiB of received messages.
    fn default() -> Self {
        ThreadedLimits {
            max_buffer_bytes: 4 << 20,
            max_queued_bytes: 64 << 20,
        }
    }
}

/// Accounting overhead per queued message.
const EVENT_OVERHEAD: usize = 64;

/// The bytes a queued event holds (counted against `max_queued_bytes`): its payload
/// (its own copy, see `handle_frame`), its strings' allocations, and
/// [`EVENT_OVERHEAD`].
fn held_size(ev: &Event) -> usize {
    let s = |x: &String| x.capacity();
    let o = |x: &Option<String>| x.as_ref().map_or(0, String::capacity);
    EVENT_OVERHEAD
        + match ev {
            Event::Message(m) => m.payload.len() + s(&m.sender) + o(&m.room) + o(&m.to_user),
            Event::Room { room, user, .. } => s(room) + s(user),
            Event::Receipt(r) => s(&r.user) + o(&r.room) + o(&r.to_user),
            Event::Contact(c) => s(&c.user),
            Event::Presence(p) => s(&p.user) + s(&p.text),
            Event::Error { reason, .. } => s(reason),
            // Answers go to the callers waiting for them, not to the queue.
            _ => 0,
        }
}

/// A connection to the router, logged in, usable from many threads at once.
///
/// See the [module documentation](self) for how sending, receiving and acks work.
pub struct ThreadedClient {
    inner: Arc<Inner>,
    user: String,
    shard: u32,
    timeout: Duration,
    ids: RequestIds,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed_by_caller: AtomicBool,
    /// See [`ThreadedClient::set_interrupt`].
    interrupt: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

/// How often a request or `close` waiting calls the interrupt check
/// ([`ThreadedClient::set_interrupt`]).
const INTERRUPT_SLICE: Duration = Duration::from_millis(100);

impl std::fmt::Debug for ThreadedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadedClient")
            .field("user", &self.user)
            .field("session_id", &self.session_id())
            .finish()
    }
}

/// How long a connection must stay up for the next drop to restart the reconnect
/// backoff and its give-up deadline (see the module doc).
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

/// The first reconnect backoff, doubled after each attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The reconnect backoff and give-up deadline, kept across drops (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// The wait before the next attempt.
    backoff: Duration,
    /// When reconnecting stops; None until a drop starts it.
    give_up: Option<Instant>,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            backoff: FIRST_BACKOFF,
            give_up: None,
        }
    }

    /// A connection that was up `up` (and made progress, or not) dropped.
    fn dropped(&mut self, up: Duration, progress: bool) {
        if up >= STABLE_CONNECTION || progress {
            *self = Retry::new();
        }
    }

    /// The wait before the next attempt (doubling the one after it); None once
    /// `reconnect_for` passed since the drop that started this run.
    fn next(&mut self, now: Instant, reconnect_for: Duration) -> Option<Duration> {
        let give_up = *self.give_up.get_or_insert(now + reconnect_for);
        if now >= give_up {
            return None;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(wait)
    }
}

/// What a reconnecting client needs (see the module doc).
struct Reconnect {
    /// The router's addresses, resolved once.
    addr: Vec<SocketAddr>,
    /// The login configuration; its `resume_token` is the last login's.
    cfg: Mutex<ClientConfig>,
    /// Reconnections so far.
    count: AtomicU64,
}

/// The (sender, msg_id) of the last messages handed out, to drop copies. A sender is
/// kept as a 64-bit keyed hash of its name: 32 bytes an entry (both copies),
/// whatever the names' lengths (a router sending long names made the window hold
/// up to `cap` of them).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    set: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
    cap: usize,
    /// Random keys per client: two names that collide are as likely as 2^-64.
    names: std::collections::hash_map::RandomState,
}

impl Seen {
    pub(crate) fn with_capacity(cap: usize) -> Seen {
        Seen {
            cap: cap.max(1),
            ..Seen::default()
        }
    }

    /// Remembers (sender, msg_id); false if it is among the last `cap` remembered.
    pub(crate) fn first_time(&mut self, sender: &str, msg_id: u64) -> bool {
        use std::hash::BuildHasher;
        let key = (self.names.hash_one(sender), msg_id);
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key);
        self.set.insert(key);
        true
    }
}

/// Sends kept until the router acknowledges them (reconnecting clients).
#[derive(Debug, Default)]
struct Resend {
    /// (client_seq, the frame as written), in order.
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The last client_seq given out.
    last_seq: u64,
    /// Added to a Send's client_seq to make its msg_id (random per client).
    msg_id_base: u64,
}

impl Resend {
    /// Forgets the Sends up to `client_seq`.
    fn ack(&mut self, client_seq: u64) {
        while self.frames.front().is_some_and(|(s, _)| *s <= client_seq) {
            if let Some((_, f)) = self.frames.pop_front() {
                self.bytes -= f.len();
            }
        }
    }
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No random source: the clock still tells two clients apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_le_bytes(b)
}

struct Inner {
    /// The current connection's socket (for `shutdown`).
    stream: Mutex<TcpStream>,
    session_id: AtomicU64,
    /// Messages taken from the shared queue in one go, handed out one by one.
    local: Mutex<VecDeque<Event>>,
    /// What the events in `In::events` and in `local` hold ([`held_size`]): counted
    /// from when they are queued until `recv` hands them out.
    held_bytes: AtomicUsize,
    /// Reconnecting clients: what was handed out (lock order: `local`, then `seen`).
    seen: Mutex<Seen>,
    /// Set for reconnecting clients.
    reconnect: Option<Reconnect>,
    /// Connection generation: a seq handed out from an earlier connection is not acked.
    gen: AtomicU64,
    out: Mutex<Out>,
    /// The writer waits here for frames (or for the ack interval to pass).
    out_cv: Condvar,
    /// Senders wait here for room, flushers for their bytes to be written.
    space_cv: Condvar,
    inq: Mutex<In>,
    /// `recv` and `send_wait` callers wait here.
    ev_cv: Condvar,
    /// The reader waits here for the caller to make room.
    room_cv: Condvar,
    /// Highest seq handed to the caller.
    handed_seq: AtomicU64,
    /// Highest seq acked (or queued to be).
    acked_seq: AtomicU64,
    acks: AckPolicy,
    max_frame_bytes: usize,
    /// Largest frame the router takes (its LoginResult's; 0: not said). A bigger one
    /// would make it close the connection: it is refused here instead.
    router_max_frame: AtomicUsize,
    limits: ThreadedLimits,
}

struct Out {
    buf: BytesMut,
    writer_idle: bool,
    /// Callers blocked on `space_cv`.
    waiters: usize,
    /// Bytes ever queued / written (for `flush`).
    queued: u64,
    written: u64,
    /// `close` was called: write what is queued (ending in Logout), then stop.
    closing: bool,
    /// The writer has stopped.
    writer_done: bool,
    /// Why the connection can no longer send.
    dead: Option<String>,
    last_ack: Instant,
    /// The reader asks the writer to write what the wire owes the router
    /// (a WebSocket pong or close answer, TLS records).
    kick: bool,
    /// The Pong owed for the latest Ping (its nonce), written with the next batch:
    /// one at most, however many Pings come while the router does not read.
    pong: Option<u64>,
    /// Reconnecting clients: the Sends the router has not acknowledged.
    resend: Option<Resend>,
    /// The connection is being replaced: the writer waits.
    reconnecting: bool,
    /// Generation of the connection the writer should write to, and its halves once
    /// the reader installed it.
    conn_gen: u64,
    next_conn: Option<(TcpStream, Option<WireTx>)>,
}

impl Out {
    /// Bytes that count against `max_buffer_bytes`: queued, or kept for a resend.
    fn used(&self) -> usize {
        self.buf
            .len()
            .max(self.resend.as_ref().map_or(0, |r| r.bytes))
    }
}

struct In {
    /// Messages, room events and Error frames for `recv`.
    events: VecDeque<Event>,
    /// The requests callers wait for.
    pending: Pending,
    /// Why the read side ended (EOF, error).
    closed: Option<String>,
    /// The read side ended on bytes that are not valid frames: `recv` reports it
    /// once ([`ClientError::Protocol`]), after the events received before it and
    /// before [`ClientError::Closed`].
    protocol_error: Option<String>,
    /// Last Error frame seen, for the close reason.
    last_error: Option<String>,
    consumers: usize,
    /// The reader waits on `room_cv`.
    reader_waiting: bool,
    /// `close` was called: drop whatever still arrives.
    discard: bool,
    /// Reconnecting clients: an Error frame that may announce the end of the
    /// connection (shutdown, heartbeat timeout, slow consumer), and since when. It is
    /// dropped if the connection ends and the client resumes; handed to `recv` if
    /// more comes on the connection, or [`HOLD_ENDING_ERROR`] passes, or the client
    /// gives up reconnecting.
    held: Option<(Event, Instant)>,
}

/// How long an Error frame that may announce the end of the connection is held back
/// (see `In::held`): the router closes right after sending one.
const HOLD_ENDING_ERROR: Duration = Duration::from_millis(500);

/// Whether an Error frame is one a router sends right before it ends the session:
/// not the answer to a request, and a status that ends sessions.
fn may_end_session(ev: &Event) -> bool {
    matches!(
        ev,
        Event::Error {
            code: ringrouter_proto::v1::Status::Unavailable
                | ringrouter_proto::v1::Status::Timeout
                | ringrouter_proto::v1::Status::SlowConsumer,
            request_id: 0,
            ..
        }
    )
}

/// Hands a held Error (see `In::held`) to `recv`.
fn release_held(inner: &Inner, g: &mut In) {
    if let Some((ev, _)) = g.held.take() {
        inner
            .held_bytes
            .fetch_add(held_size(&ev), Ordering::Relaxed);
        g.events.push_back(ev);
        if g.consumers > 0 {
            inner.ev_cv.notify_all();
        }
    }
}

/// The length of a frame's body (what the router compares with its max frame) from
/// its length on the wire (the body behind its varint length prefix).
fn frame_body_len(wire_len: usize) -> usize {
    (1..=10)
        .map(|p| wire_len.saturating_sub(p))
        .find(|&body| body + ringrouter_proto::codec::varint_len(body as u64) == wire_len)
        .unwrap_or(wire_len)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; carry on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_until<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, T>, bool) {
    match deadline {
        None => (cv.wait(g).unwrap_or_else(|e| e.into_inner()), false),
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return (g, true);
            }
            let (g, r) = cv
                .wait_timeout(g, d - now)
                .unwrap_or_else(|e| e.into_inner());
            (g, r.timed_out())
        }
    }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::UnexpectedEof
    )
}

impl ThreadedClient {
    /// Connects to `addr`, logs in with `cfg` and starts the reader and writer threads.
    pub fn connect(
        addr: impl ToSocketAddrs,
        cfg: ClientConfig,
    ) -> Result<ThreadedClient, ClientError> {
        Self::connect_with(addr, cfg, ThreadedLimits::default())
    }

    /// [`ThreadedClient::connect`] with explicit queue limits.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        cfg: ClientConfig,
        limits: ThreadedLimits,
    ) -> Result<ThreadedClient, ClientError> {
        let (client, reconnect) = if cfg.reconnect {
            let addr: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
            let client = Client::connect(&addr[..], cfg.clone())?;
            let mut cfg = cfg.clone();
            cfg.resume_token = client.resume().token.clone();
            let rc = Reconnect {
                addr,
                cfg: Mutex::new(cfg),
                count: AtomicU64::new(0),
            };
            (client, Some(rc))
        } else {
            (Client::connect(addr, cfg.clone())?, None)
        };
        let user = client.user().to_owned();
        let router_max_frame = client.router_max_frame_bytes();
        let session_id = client.session_id();
        let shard = client.shard();
        let resend = reconnect.as_ref().map(|_| Resend {
            msg_id_base: random_u64(),
            ..Resend::default()
        });
        let (stream, wire, rbuf) = client.into_wire_parts();
        let (wire_rx, wire_tx) = wire.map(Wire::split).unzip();
        // The login used read timeouts; the reader blocks for as long as it takes.
        stream.set_read_timeout(None)?;
        let reader_stream = stream.try_clone()?;
        let writer_stream = stream.try_clone()?;
        let inner = Arc::new(Inner {
            stream: Mutex::new(stream.try_clone()?),
            session_id: AtomicU64::new(session_id),
            local: Mutex::new(VecDeque::new()),
            held_bytes: AtomicUsize::new(0),
            seen: Mutex::new(Seen::with_capacity(if reconnect.is_some() {
                cfg.dedupe_window
            } else {
                1
            })),
            reconnect,
            gen: AtomicU64::new(0),
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(64 * 1024),
                writer_idle: false,
                waiters: 0,
                queued: 0,
                written: 0,
                closing: false,
                writer_done: false,
                dead: None,
                last_ack: Instant::now(),
                kick: false,
                pong: None,
                resend,
                reconnecting: false,
                conn_gen: 0,
                next_conn: None,
            }),
            out_cv: Condvar::new(),
            space_cv: Condvar::new(),
            inq: Mutex::new(In {
                events: VecDeque::new(),
                pending: Pending::default(),
                closed: None,
                protocol_error: None,
                last_error: None,
                consumers: 0,
                reader_waiting: false,
                discard: false,
                held: None,
            }),
            ev_cv: Condvar::new(),
            room_cv: Condvar::new(),
            handed_seq: AtomicU64::new(0),
            acked_seq: AtomicU64::new(0),
            acks: cfg.ack_policy(),
            max_frame_bytes: cfg.max_frame_bytes,
            router_max_frame: AtomicUsize::new(router_max_frame),
            limits,
        });
        let mut threads = Vec::with_capacity(2);
        let w = Arc::clone(&inner);
        threads.push(
            std::thread::Builder::new()
                .name("ringrouter-writer".into())
                .spawn(move || writer_loop(&w, writer_stream, wire_tx))?,
        );
        let r = Arc::clone(&inner);
        let spawned = std::thread::Builder::new()
            .name("ringrouter-reader".into())
            .spawn(move || reader_loop(&r, reader_stream, rbuf, wire_rx));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                let _ = stream.shutdown(Shutdown::Both);
                stop_writer(&inner);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e.into());
            }
        }
        Ok(ThreadedClient {
            inner,
            user,
            shard,
            timeout: cfg.timeout,
            // Above the ids the login used.
            ids: RequestIds::starting_at(1 << 32),
            threads: Mutex::new(threads),
            closed_by_caller: AtomicBool::new(false),
            interrupt: std::sync::OnceLock::new(),
        })
    }

    /// The authenticated user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The router's id for this session (the current connection's, after a reconnect).
    pub fn session_id(&self) -> u64 {
        self.inner.session_id.load(Ordering::Relaxed)
    }

    /// How many times the connection was re-established ([`ClientConfig::reconnect`]).
    pub fn reconnects(&self) -> u64 {
        self.inner
            .reconnect
            .as_ref()
            .map_or(0, |r| r.count.load(Ordering::Relaxed))
    }

    /// The user's home shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The configured request timeout (used by [`ThreadedClient::send_wait`]).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    // ------------------------------------------------------------------ sending

    /// Queues `frame_len` bytes written by `encode` if there is room (or the buffer
    /// is empty). `Ok(false)`: full, nothing queued.
    fn try_queue(
        &self,
        frame_len: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<bool, ClientError> {
        self.check_frame_len(frame_len)?;
        let mut g = lock(&self.inner.out);
        Self::check_open(&g)?;
        if g.used() != 0 && g.used() + frame_len > self.inner.limits.max_buffer_bytes {
            return Ok(false);
        }
        encode(&mut g.buf);
        g.queued += frame_len as u64;
        if g.writer_idle {
            g.writer_idle = false;
            self.inner.out_cv.notify_one();
        }
        Ok(true)
    }

    /// Refuses a frame of `wire_len` bytes (on the wire) that is bigger than the
    /// router takes, as the router would refuse it (TOO_LARGE) but without sending
    /// it: the router would close the connection.
    fn check_frame_len(&self, wire_len: usize) -> Result<(), ClientError> {
        let max = self.inner.router_max_frame.load(Ordering::Relaxed);
        let body = frame_body_len(wire_len);
        if max == 0 || body <= max {
            return Ok(());
        }
        Err(ClientError::Router {
            code: ringrouter_proto::v1::Status::TooLarge,
            reason: format!(
                "frame of {body} bytes is over the router's max frame of {max} bytes (not sent)"
            ),
            request_id: 0,
        })
    }

    /// The largest frame the router takes, as its login answer said (0: not said).
    pub fn router_max_frame_bytes(&self) -> usize {
        self.inner.router_max_frame.load(Ordering::Relaxed)
    }

    fn check_open(g: &Out) -> Result<(), ClientError> {
        if let Some(why) = &g.dead {
            return Err(ClientError::Closed(why.clone()));
        }
        if g.closing {
            return Err(ClientError::Closed("client closed".into()));
        }
        Ok(())
    }

    /// Waits until `frame_len` more bytes fit (or the deadline passes: `Ok(false)`).
    fn wait_room(&self, frame_len: usize, deadline: Option<Instant>) -> Result<bool, ClientError> {
        let mut g = lock(&self.inner.out);
        loop {
            Self::check_open(&g)?;
            if g.used() == 0 || g.used() + frame_len <= self.inner.limits.max_buffer_bytes {
                return Ok(true);
            }
            g.waiters += 1;
            let (g2, timed_out) = wait_until(&self.inner.space_cv, g, deadline);
            g = g2;
            g.waiters -= 1;
            if timed_out {
                return Ok(false);
            }
        }
    }

    pub(crate) fn queue_blocking(
        &self,
        frame_len: usize,
        encode: impl Fn(&mut BytesMut),
        deadline: Option<Instant>,
    ) -> Result<bool, ClientError> {
        loop {
            if self.try_queue(frame_len, &encode)? {
                return Ok(true);
            }
            if !self.wait_room(frame_len, deadline)? {
                return Ok(false);
            }
        }
    }

    /// Queues a fire-and-forget Send to every session of user `to` without ever
    /// blocking. `Ok(false)`: the send buffer is full and nothing was queued.
    pub fn try_send(&self, to: &str, payload: &[u8]) -> Result<bool, ClientError> {
        self.try_send_to(Target::User(to), payload)
    }

    /// Queues a fire-and-forget Send, waiting up to `timeout` (None: as long as it
    /// takes) for room in the send buffer. `Ok(false)`: timed out, nothing queued.
    pub fn send_timeout(
        &self,
        to: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<bool, ClientError> {
        self.send_to_timeout(Target::User(to), payload, timeout)
    }

    /// Queues a fire-and-forget Send, waiting for room in the send buffer if needed.
    /// It is written by the writer thread shortly after; see [`ThreadedClient::flush`].
    pub fn send(&self, to: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.send_timeout(to, payload, None).map(|_| ())
    }

    /// [`ThreadedClient::try_send`] to every member of `room`.
    pub fn try_send_room(&self, room: &str, payload: &[u8]) -> Result<bool, ClientError> {
        self.try_send_to(Target::Room(room), payload)
    }

    /// [`ThreadedClient::send_timeout`] to every member of `room`.
    pub fn send_room_timeout(
        &self,
        room: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<bool, ClientError> {
        self.send_to_timeout(Target::Room(room), payload, timeout)
    }

    /// [`ThreadedClient::send`] to every member of `room`.
    pub fn send_room(&self, room: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.send_to_timeout(Target::Room(room), payload, None)
            .map(|_| ())
    }

    pub(crate) fn try_send_to(&self, to: Target<'_>, payload: &[u8]) -> Result<bool, ClientError> {
        if self.inner.reconnect.is_some() {
            let mut g = lock(&self.inner.out);
            Self::check_open(&g)?;
            return self.put_numbered(&mut g, to, payload);
        }
        let h = SendHeader::to(to);
        let len = send_frame_len(&h, payload.len());
        self.try_queue(len, |b| put_send(b, &h, payload))
    }

    /// Reconnecting clients: queues a Send numbered with the next client_seq (its
    /// msg_id made from it) and keeps it until the router acknowledges it. False: no
    /// room (nothing queued); an error for a frame bigger than the router takes.
    fn put_numbered(
        &self,
        g: &mut Out,
        to: Target<'_>,
        payload: &[u8],
    ) -> Result<bool, ClientError> {
        let Some(r) = g.resend.as_ref() else {
            return Ok(false);
        };
        let client_seq = r.last_seq + 1;
        let h = SendHeader {
            client_seq,
            msg_id: r.msg_id_base.wrapping_add(client_seq).max(1),
            ..SendHeader::to(to)
        };
        let len = send_frame_len(&h, payload.len());
        self.check_frame_len(len)?;
        if g.used() != 0 && g.used() + len > self.inner.limits.max_buffer_bytes {
            return Ok(false);
        }
        let at = g.buf.len();
        put_send(&mut g.buf, &h, payload);
        let frame = Bytes::copy_from_slice(&g.buf[at..]);
        g.queued += len as u64;
        if let Some(r) = g.resend.as_mut() {
            r.last_seq = client_seq;
            r.bytes += frame.len();
            r.frames.push_back((client_seq, frame));
        }
        if g.writer_idle {
            g.writer_idle = false;
            self.inner.out_cv.notify_one();
        }
        Ok(true)
    }

    fn send_to_timeout(
        &self,
        to: Target<'_>,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<bool, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let h = SendHeader::to(to);
        let len = send_frame_len(&h, payload.len());
        if self.inner.reconnect.is_some() {
            loop {
                if self.try_send_to(to, payload)? {
                    return Ok(true);
                }
                // The numbered header is a few bytes longer: ask room for them too.
                if !self.wait_room(len + 20, deadline)? {
                    return Ok(false);
                }
            }
        }
        self.queue_blocking(len, |b| put_send(b, &h, payload), deadline)
    }

    /// Queues many fire-and-forget Sends to `to`, taking the buffer lock once per
    /// batch rather than once per message. Returns how many were queued (all of
    /// them unless an error is returned).
    pub fn send_many<'a>(
        &self,
        to: &str,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, ClientError> {
        self.send_many_timeout(to, &mut payloads.into_iter().peekable(), None)
    }

    /// [`ThreadedClient::send_many`] that waits for room in the send buffer up to
    /// `timeout` (None: as long as it takes): returns how many it queued, taken from
    /// `payloads`; the rest stay in it (all were queued when it is empty). A payload
    /// too big for the router is an error, and it and the ones after it stay in
    /// `payloads`.
    pub fn send_many_timeout<'a, I: Iterator<Item = &'a [u8]>>(
        &self,
        to: &str,
        payloads: &mut std::iter::Peekable<I>,
        timeout: Option<Duration>,
    ) -> Result<usize, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let h = SendHeader::to(Target::User(to));
        let mut n = 0;
        if self.inner.reconnect.is_some() {
            while let Some(p) = payloads.peek() {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if !self.send_to_timeout(Target::User(to), p, left)? {
                    return Ok(n);
                }
                payloads.next();
                n += 1;
            }
            return Ok(n);
        }
        while payloads.peek().is_some() {
            {
                let mut g = lock(&self.inner.out);
                Self::check_open(&g)?;
                while let Some(p) = payloads.peek() {
                    let len = send_frame_len(&h, p.len());
                    if let Err(e) = self.check_frame_len(len) {
                        if g.writer_idle && n > 0 {
                            g.writer_idle = false;
                            self.inner.out_cv.notify_one();
                        }
                        return Err(e);
                    }
                    if !g.buf.is_empty() && g.buf.len() + len > self.inner.limits.max_buffer_bytes {
                        break;
                    }
                    put_send(&mut g.buf, &h, p);
                    g.queued += len as u64;
                    n += 1;
                    payloads.next();
                }
                if g.writer_idle {
                    g.writer_idle = false;
                    self.inner.out_cv.notify_one();
                }
            }
            if let Some(p) = payloads.peek() {
                if !self.wait_room(send_frame_len(&h, p.len()), deadline)? {
                    return Ok(n);
                }
            }
        }
        Ok(n)
    }

    /// Sends and waits (up to the configured timeout) for the router's SendResult.
    /// Returns the message id; a non-OK status is [`ClientError::Router`].
    /// Messages that arrive meanwhile stay queued for [`ThreadedClient::recv`].
    pub fn send_wait(&self, to: &str, payload: &[u8]) -> Result<u64, ClientError> {
        self.send_wait_to(Target::User(to), payload)
    }

    /// [`ThreadedClient::send_wait`] to every member of `room`.
    pub fn send_room_wait(&self, room: &str, payload: &[u8]) -> Result<u64, ClientError> {
        self.send_wait_to(Target::Room(room), payload)
    }

    fn send_wait_to(&self, to: Target<'_>, payload: &[u8]) -> Result<u64, ClientError> {
        self.call(SendWait {
            to,
            payload,
            ephemeral: false,
        })
    }

    /// Sets a check that requests (`send_wait`, rooms, ...) and [`ThreadedClient::close`]
    /// call every 100 ms while they wait: when it returns true, a request gives up
    /// with [`ClientError::Timeout`] and `close` stops waiting for the router (it
    /// shuts the connection). The Python binding checks for signals (Ctrl-C) with
    /// it. Set once: later calls are ignored.
    pub fn set_interrupt(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.interrupt.set(Box::new(check));
    }

    fn interrupted(&self) -> bool {
        self.interrupt.get().is_some_and(|check| check())
    }

    /// `deadline`, or sooner when an interrupt check must run before it.
    fn slice_of(&self, deadline: Instant) -> Instant {
        if self.interrupt.get().is_some() {
            deadline.min(Instant::now() + INTERRUPT_SLICE)
        } else {
            deadline
        }
    }

    /// Queues `req` with a fresh request id and waits, up to the configured
    /// timeout, for its answer.
    pub(crate) fn call<R: Request>(&self, req: R) -> Result<R::Output, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let request_id = self.ids.next();
        lock(&self.inner.inq)
            .pending
            .insert(request_id, R::ANY_ERROR);
        let frame = req.frame(request_id);
        let res = loop {
            let until = self.slice_of(deadline);
            match self.queue_blocking(frame.len(), |b| frame.put(b), Some(until)) {
                Ok(true) => break self.wait_answer(request_id, deadline),
                Ok(false) if until < deadline && !self.interrupted() => {}
                Ok(false) => break Err(ClientError::Timeout),
                Err(e) => break Err(e),
            }
        };
        drop(frame);
        lock(&self.inner.inq).pending.remove(request_id);
        core::finish(req, request_id, res?)
    }

    fn wait_answer(&self, request_id: u64, deadline: Instant) -> Result<Answer, ClientError> {
        let mut g = lock(&self.inner.inq);
        loop {
            if let Some(answer) = g.pending.take(request_id) {
                return Ok(answer);
            }
            if let Some(why) = &g.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            // `close` (in another thread) wakes the waiters after setting this.
            if self.closed_by_caller.load(Ordering::SeqCst) {
                return Err(ClientError::Closed("client closed".into()));
            }
            let (g2, timed_out) = wait_until(&self.inner.ev_cv, g, Some(self.slice_of(deadline)));
            g = g2;
            if timed_out {
                if let Some(answer) = g.pending.take(request_id) {
                    return Ok(answer);
                }
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout);
                }
                drop(g);
                if self.interrupted() {
                    return Err(ClientError::Timeout);
                }
                g = lock(&self.inner.inq);
            }
        }
    }

    // -------------------------------------------------------- rooms and accounts

    /// Creates room `name`, owned by this user (who becomes its first member),
    /// optionally protected by `password`. Returns its join code. CONFLICT if
    /// the name is taken. Like every request, it waits up to the configured
    /// timeout; room events and messages that arrive meanwhile stay queued.
    pub fn create_room(&self, name: &str, password: Option<&str>) -> Result<String, ClientError> {
        self.call(req::CreateRoom {
            name,
            password,
            members: &[],
        })
    }

    /// Joins a room by its name or its join code (and its password, if it has
    /// one). Returns the room's name. NOT_FOUND for an unknown room or code,
    /// FORBIDDEN for a wrong password.
    pub fn join_room(
        &self,
        name_or_code: &str,
        password: Option<&str>,
    ) -> Result<String, ClientError> {
        self.call(req::JoinRoom {
            name_or_code,
            password,
        })
    }

    /// Leaves `room`.
    pub fn leave_room(&self, room: &str) -> Result<(), ClientError> {
        self.call(req::LeaveRoom { room })
    }

    /// Adds `user` to `room` (owner only, else FORBIDDEN).
    pub fn add_member(&self, room: &str, user: &str) -> Result<(), ClientError> {
        self.call(req::AddMember { room, user })
    }

    /// Removes `user` from `room` (owner only, else FORBIDDEN).
    pub fn remove_member(&self, room: &str, user: &str) -> Result<(), ClientError> {
        self.call(req::RemoveMember { room, user })
    }

    /// Deletes `room` (owner only, else FORBIDDEN); members get a Deleted event.
    pub fn delete_room(&self, room: &str) -> Result<(), ClientError> {
        self.call(req::DeleteRoom { room })
    }

    /// The rooms this user is a member of.
    pub fn rooms(&self) -> Result<Vec<String>, ClientError> {
        self.call(req::ListRooms)
    }

    /// Creates an account on a fresh connection; see [`Client::register`].
    pub fn register(
        addr: impl ToSocketAddrs,
        user: &str,
        password: &str,
    ) -> Result<String, ClientError> {
        Client::register(addr, user, password)
    }

    /// User names matching the glob `pattern` (`*` any run, `?` one character),
    /// in byte order, at most the router's page size of them.
    pub fn list_users(&self, pattern: &str) -> Result<Vec<String>, ClientError> {
        self.list_users_limit(pattern, 0)
    }

    /// [`ThreadedClient::list_users`], at most `limit` names (0: the router's page size).
    pub fn list_users_limit(&self, pattern: &str, limit: u32) -> Result<Vec<String>, ClientError> {
        self.call(req::ListUsers { pattern, limit })
    }

    /// Deletes this user's account (see [`Client::delete_account`]); the router
    /// then ends every session of the user, this one included.
    pub fn delete_account(&self) -> Result<(), ClientError> {
        self.call(req::DeleteAccount)
    }

    /// Waits until everything queued so far is written to the socket (up to
    /// `timeout`; None: as long as it takes). `Ok(false)` on timeout.
    pub fn flush(&self, timeout: Option<Duration>) -> Result<bool, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = lock(&self.inner.out);
        let target = g.queued;
        loop {
            if g.written >= target {
                return Ok(true);
            }
            if let Some(why) = &g.dead {
                return Err(ClientError::Closed(why.clone()));
            }
            if g.writer_done {
                return Err(ClientError::Closed("client closed".into()));
            }
            g.waiters += 1;
            let (g2, timed_out) = wait_until(&self.inner.space_cv, g, deadline);
            g = g2;
            g.waiters -= 1;
            if timed_out && g.written < target {
                return Ok(false);
            }
        }
    }

    // ---------------------------------------------------------------- receiving

    /// The next message if one is already here; never blocks. Room events are
    /// skipped (see [`ThreadedClient::try_recv_event`]).
    /// An Error frame from the router is returned as [`ClientError::Router`];
    /// once everything received was handed out, a closed connection is
    /// [`ClientError::Closed`].
    pub fn try_recv(&self) -> Result<Option<Message>, ClientError> {
        self.recv_message_until(Some(Instant::now()))
    }

    /// The next message, waiting up to `timeout` (None: forever). `Ok(None)` on
    /// timeout. Room events are skipped (see [`ThreadedClient::recv_event`]).
    /// Errors as for [`ThreadedClient::try_recv`].
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Option<Message>, ClientError> {
        self.recv_message_until(timeout.map(|t| Instant::now() + t))
    }

    /// The next message ([`Event::Message`]) or room event ([`Event::Room`]) if one
    /// is already here; never blocks. Errors as for [`ThreadedClient::try_recv`].
    pub fn try_recv_event(&self) -> Result<Option<Event>, ClientError> {
        self.recv_until(Some(Instant::now()))
    }

    /// The next message ([`Event::Message`]) or room event ([`Event::Room`]),
    /// in the order the router sent them, waiting up to `timeout` (None:
    /// forever). `Ok(None)` on timeout. Errors as for [`ThreadedClient::try_recv`].
    pub fn recv_event(&self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        self.recv_until(timeout.map(|t| Instant::now() + t))
    }

    fn recv_message_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<Message>, ClientError> {
        loop {
            match self.recv_until(deadline)? {
                Some(Event::Message(m)) => return Ok(Some(m)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Option<Event>, ClientError> {
        loop {
            // Lock order: `local`, then `inq`; never wait while holding `local`,
            // so that a polling caller is not held up by a blocked one.
            {
                let mut local = lock(&self.inner.local);
                if local.is_empty() {
                    let mut g = lock(&self.inner.inq);
                    if !g.events.is_empty() {
                        // `local` is empty: the queue keeps its allocation.
                        // Still counted (`held_bytes`) until handed out.
                        std::mem::swap(&mut *local, &mut g.events);
                    }
                }
                let gen = self.inner.gen.load(Ordering::Relaxed);
                match self.pop_local(&mut local) {
                    Some(Event::Message(m)) => {
                        let copy = self.inner.reconnect.is_some()
                            && m.seq != 0
                            && !lock(&self.inner.seen).first_time(&m.sender, m.msg_id);
                        drop(local);
                        self.handed(m.seq, gen);
                        if copy {
                            continue;
                        }
                        return Ok(Some(Event::Message(m)));
                    }
                    Some(Event::Error {
                        code,
                        reason,
                        request_id,
                    }) => {
                        return Err(ClientError::Router {
                            code,
                            reason,
                            request_id,
                        })
                    }
                    // Only room events besides (the reader queues nothing else); one
                    // from the offline queue is acked like a message.
                    Some(ev) => {
                        drop(local);
                        let seq = match &ev {
                            Event::Room { seq, .. } => *seq,
                            Event::Contact(c) => c.seq,
                            _ => 0,
                        };
                        if seq != 0 {
                            self.handed(seq, gen);
                        }
                        return Ok(Some(ev));
                    }
                    None => {}
                }
            }
            let mut g = lock(&self.inner.inq);
            if g.events.is_empty() {
                if self.closed_by_caller.load(Ordering::Relaxed) {
                    return Err(ClientError::Closed("client closed".into()));
                }
                if let Some(why) = g.protocol_error.take() {
                    return Err(ClientError::Protocol(why));
                }
                if let Some(why) = &g.closed {
                    return Err(ClientError::Closed(why.clone()));
                }
                g.consumers += 1;
                let (g2, timed_out) = wait_until(&self.inner.ev_cv, g, deadline);
                g = g2;
                g.consumers -= 1;
                if timed_out && g.events.is_empty() {
                    return Ok(None);
                }
            }
        }
    }

    /// Takes the next event from `local` (locked by the caller) and stops counting
    /// it; wakes the reader if that brings the queue back under its bound.
    fn pop_local(&self, local: &mut VecDeque<Event>) -> Option<Event> {
        let ev = local.pop_front()?;
        let n = held_size(&ev);
        let before = self.inner.held_bytes.fetch_sub(n, Ordering::Relaxed);
        let max = self.inner.limits.max_queued_bytes;
        if before > max && before - n <= max {
            let g = lock(&self.inner.inq);
            if g.reader_waiting {
                self.inner.room_cv.notify_one();
            }
        }
        Some(ev)
    }

    /// Records that the caller got message `seq` of connection generation `gen`; acks
    /// every `ack_every`.
    fn handed(&self, seq: u64, gen: u64) {
        let inner = &self.inner;
        if inner.reconnect.is_some() {
            // Under the lock a reconnect resets the seqs with: a seq of the connection
            // before must not be acked on the next one.
            let mut g = lock(&inner.out);
            if inner.gen.load(Ordering::Relaxed) != gen || seq == 0 {
                return;
            }
            inner.handed_seq.fetch_max(seq, Ordering::Relaxed);
            let acked = inner.acked_seq.load(Ordering::Relaxed);
            if inner.acks.due_by_count(seq, acked)
                && !g.closing
                && !g.reconnecting
                && g.buf.len() < inner.limits.max_buffer_bytes
                && queue_ack(inner, &mut g, true)
                && g.writer_idle
            {
                g.writer_idle = false;
                inner.out_cv.notify_one();
            }
            return;
        }
        inner.handed_seq.fetch_max(seq, Ordering::Relaxed);
        let acked = inner.acked_seq.load(Ordering::Relaxed);
        if inner.acks.due_by_count(seq, acked) {
            let mut g = lock(&inner.out);
            // Past the output bound (a router that does not read) the writer acks
            // once it has written what is queued: acks do not pile up.
            if g.dead.is_none()
                && !g.closing
                && g.buf.len() < inner.limits.max_buffer_bytes
                && queue_ack(inner, &mut g, true)
                && g.writer_idle
            {
                g.writer_idle = false;
                inner.out_cv.notify_one();
            }
        }
    }

    /// Whether the connection is closed (by the caller, the router or the network).
    pub fn is_closed(&self) -> bool {
        if self.closed_by_caller.load(Ordering::Relaxed) {
            return true;
        }
        let dead = lock(&self.inner.out).dead.is_some();
        dead || lock(&self.inner.inq).closed.is_some()
    }

    // ------------------------------------------------------------------ closing

    /// Acks what was handed out, sends everything queued and a Logout, waits (up
    /// to the configured timeout) for the router to close the connection, and
    /// stops the threads. Idempotent; messages not yet received are dropped.
    pub fn close(&self) -> Result<(), ClientError> {
        if self.closed_by_caller.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        let inner = &self.inner;
        // Requests waiting in other threads end now (see `wait_answer`).
        {
            let _g = lock(&inner.inq);
            inner.ev_cv.notify_all();
        }
        let mut interrupted = false;
        {
            let mut g = lock(&inner.out);
            if g.dead.is_none() {
                queue_ack(inner, &mut g, true);
                let before = g.buf.len();
                core::put_logout(&mut g.buf);
                g.queued += (g.buf.len() - before) as u64;
            }
            g.closing = true;
            inner.out_cv.notify_one();
            // The writer writes what is queued, shuts the write side, and stops.
            while !g.writer_done {
                let (g2, timed_out) = wait_until(&inner.space_cv, g, Some(self.slice_of(deadline)));
                g = g2;
                if timed_out && !g.writer_done {
                    if Instant::now() < deadline {
                        drop(g);
                        interrupted = self.interrupted();
                        g = lock(&inner.out);
                        if !interrupted {
                            continue;
                        }
                    }
                    // The router does not read (or the caller gave up): give up on it.
                    let _ = lock(&inner.stream).shutdown(Shutdown::Both);
                    break;
                }
            }
        }
        {
            let mut g = lock(&inner.inq);
            g.discard = true;
            drop_events(inner, &mut g.events, |_| false);
            inner.room_cv.notify_all();
            // The router closes its side once it has read the Logout.
            while g.closed.is_none() && !interrupted {
                let (g2, timed_out) = wait_until(&inner.ev_cv, g, Some(self.slice_of(deadline)));
                g = g2;
                if timed_out {
                    if Instant::now() >= deadline {
                        break;
                    }
                    drop(g);
                    interrupted = self.interrupted();
                    g = lock(&inner.inq);
                }
            }
            if g.closed.is_none() {
                let _ = lock(&inner.stream).shutdown(Shutdown::Both);
            }
        }
        drop_events(inner, &mut lock(&inner.local), |_| false);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for ThreadedClient {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Drops the events of `q` that `keep` rejects and stops counting them.
fn drop_events(inner: &Inner, q: &mut VecDeque<Event>, keep: impl Fn(&Event) -> bool) {
    let mut dropped = 0;
    q.retain(|ev| {
        let k = keep(ev);
        if !k {
            dropped += held_size(ev);
        }
        k
    });
    inner.held_bytes.fetch_sub(dropped, Ordering::Relaxed);
}

fn stop_writer(inner: &Inner) {
    let mut g = lock(&inner.out);
    g.closing = true;
    inner.out_cv.notify_one();
}

/// Appends an Ack for everything handed out if one is due (with `force`: if
/// anything is unacked). Returns whether one was queued.
fn queue_ack(inner: &Inner, g: &mut Out, force: bool) -> bool {
    let handed = inner.handed_seq.load(Ordering::Relaxed);
    let acked = inner.acked_seq.load(Ordering::Relaxed);
    let Some(seq) = inner.acks.due(handed, acked, g.last_ack.elapsed(), force) else {
        return false;
    };
    inner.acked_seq.fetch_max(seq, Ordering::Relaxed);
    g.last_ack = Instant::now();
    let before = g.buf.len();
    core::put_ack(&mut g.buf, seq);
    g.queued += (g.buf.len() - before) as u64;
    true
}

// ------------------------------------------------------------------- threads

fn writer_loop(inner: &Inner, mut stream: TcpStream, mut wire: Option<WireTx>) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    // What the wire makes of `batch` (TLS, WebSocket).
    let mut enc = BytesMut::new();
    let mut g = lock(&inner.out);
    let mut gen = 0;
    loop {
        // Wait for frames, a due ack, a kick from the reader, or close.
        loop {
            if g.conn_gen != gen {
                // The reader reconnected: write to the new connection.
                if let Some((s, w)) = g.next_conn.take() {
                    stream = s;
                    wire = w;
                }
                gen = g.conn_gen;
            }
            if g.reconnecting {
                if g.closing || g.dead.is_some() {
                    break;
                }
            } else {
                queue_ack(inner, &mut g, false);
                if !g.buf.is_empty() || g.pong.is_some() || g.closing || g.dead.is_some() || g.kick
                {
                    break;
                }
            }
            g.writer_idle = true;
            let (g2, _) = inner
                .out_cv
                .wait_timeout(g, inner.acks.interval)
                .unwrap_or_else(|e| e.into_inner());
            g = g2;
            g.writer_idle = false;
        }
        let kicked = std::mem::take(&mut g.kick) && wire.is_some();
        if let Some(nonce) = g.pong.take() {
            if g.dead.is_none() && !g.reconnecting {
                let before = g.buf.len();
                core::put_pong(&mut g.buf, nonce);
                g.queued += (g.buf.len() - before) as u64;
            }
        }
        if (g.buf.is_empty() && !kicked) || g.dead.is_some() || g.reconnecting {
            // Closing and everything is written, or the connection is gone.
            g.buf.clear();
            break;
        }
        std::mem::swap(&mut g.buf, &mut batch);
        drop(g);
        let r = match wire.as_mut() {
            None => stream.write_all(&batch),
            Some(w) => {
                enc.clear();
                match w.output(&batch, &mut enc) {
                    Ok(()) => stream.write_all(&enc),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }
            }
        };
        if enc.capacity() > 8 << 20 {
            enc = BytesMut::new();
        }
        let n = batch.len() as u64;
        batch.clear();
        if batch.capacity() > 8 << 20 {
            batch = BytesMut::with_capacity(64 * 1024);
        }
        g = lock(&inner.out);
        g.written += n;
        if g.waiters > 0 {
            inner.space_cv.notify_all();
        }
        if let Err(e) = r {
            if inner.reconnect.is_some() && !g.closing {
                // The reader sees the connection end too and reconnects; what the
                // router did not take is sent again then (unless it already did: a
                // newer connection is waiting for this writer).
                if g.conn_gen == gen {
                    g.reconnecting = true;
                }
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            g.dead = Some(if is_disconnect(&e) {
                format!("connection lost: {e}")
            } else {
                format!("write failed: {e}")
            });
            g.buf.clear();
            break;
        }
    }
    let clean = g.dead.is_none();
    g.writer_done = true;
    inner.space_cv.notify_all();
    drop(g);
    if let (true, Some(w)) = (clean, wire.as_mut()) {
        // WebSocket Close, TLS close_notify.
        enc.clear();
        if w.finish(&mut enc).is_ok() {
            let _ = stream.write_all(&enc);
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Why a connection's read side ended.
struct End {
    why: String,
    /// It sent bytes that are not valid frames (the detail, `why` without
    /// "protocol error: ").
    protocol: Option<String>,
}

impl End {
    fn because(why: String) -> End {
        End {
            why,
            protocol: None,
        }
    }

    fn protocol(detail: String) -> End {
        End {
            why: format!("protocol error: {detail}"),
            protocol: Some(detail),
        }
    }
}

fn reader_loop(inner: &Inner, mut stream: TcpStream, mut rbuf: BytesMut, mut wire: Option<WireRx>) {
    let mut scratch = vec![0u8; 256 * 1024];
    let mut batch: Vec<Event> = Vec::new();
    let mut retry = Retry::new();
    let why = loop {
        let up_since = Instant::now();
        let mut progress = false;
        let why = read_connection(
            inner,
            &stream,
            &mut rbuf,
            &mut wire,
            &mut scratch,
            &mut batch,
            &mut progress,
        );
        let Some(rc) = &inner.reconnect else {
            break why;
        };
        let _ = stream.shutdown(Shutdown::Both);
        retry.dropped(up_since.elapsed(), progress);
        match reconnect(inner, rc, &mut retry) {
            Some((s, r, w)) => {
                stream = s;
                rbuf = r;
                wire = w;
            }
            None => break why,
        }
    };
    reader_end(inner, why);
}

/// Reads one connection until it ends; returns why.
fn read_connection(
    inner: &Inner,
    mut stream: &TcpStream,
    rbuf: &mut BytesMut,
    wire: &mut Option<WireRx>,
    scratch: &mut [u8],
    batch: &mut Vec<Event>,
    progress: &mut bool,
) -> End {
    // A read timeout is set while an Error is held (see `In::held`).
    let mut timed = false;
    'outer: loop {
        // Decode everything buffered.
        let mut protocol_error = None;
        loop {
            match next_frame(rbuf, inner.max_frame_bytes) {
                Ok(Some(body)) => match handle_frame(inner, body, batch) {
                    Ok(acked) => *progress |= acked,
                    Err(e) => {
                        protocol_error = Some(e);
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    protocol_error = Some(e.to_string());
                    break;
                }
            }
        }
        if !batch.is_empty() {
            *progress = *progress || batch.iter().any(|ev| matches!(ev, Event::Message(_)));
            dispatch(inner, batch);
        }
        if let Some(e) = protocol_error {
            let _ = stream.shutdown(Shutdown::Both);
            break 'outer End::protocol(e);
        }
        if inner.reconnect.is_some() {
            let wake = held_error_wake(inner);
            if wake.is_some() || timed {
                timed = wake.is_some();
                let _ = stream.set_read_timeout(wake);
            }
        }
        let n = match stream.read(scratch) {
            Ok(0) => break 'outer End::because("closed by the router".to_string()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if timed && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue
            }
            Err(e) if is_disconnect(&e) => {
                break 'outer End::because(format!("connection lost: {e}"))
            }
            Err(e) => break 'outer End::because(format!("read failed: {e}")),
        };
        let Some(w) = wire.as_mut() else {
            rbuf.extend_from_slice(&scratch[..n]);
            continue;
        };
        let state = w.input(&scratch[..n], rbuf);
        if w.wants_write() {
            let mut o = lock(&inner.out);
            o.kick = true;
            inner.out_cv.notify_one();
        }
        match state {
            Ok(RxState::Open) => {}
            Ok(RxState::Closed(why)) => {
                // Frames that came before the close are still handed over.
                while let Ok(Some(body)) = next_frame(rbuf, inner.max_frame_bytes) {
                    if handle_frame(inner, body, batch).is_err() {
                        break;
                    }
                }
                if !batch.is_empty() {
                    dispatch(inner, batch);
                }
                break 'outer End::because(why);
            }
            Err(e) => {
                let _ = stream.shutdown(Shutdown::Read);
                break 'outer End::protocol(e.to_string());
            }
        }
    }
}

/// Connects and logs in again, with backoff, resuming the session (see the module
/// doc); installs the new connection for the writer. None: the caller closed the
/// client, the login was refused, or `reconnect_for` passed.
fn reconnect(
    inner: &Inner,
    rc: &Reconnect,
    retry: &mut Retry,
) -> Option<(TcpStream, BytesMut, Option<WireRx>)> {
    {
        let mut o = lock(&inner.out);
        if o.closing {
            return None;
        }
        o.reconnecting = true;
    }
    let (reconnect_for, timeout) = {
        let cfg = lock(&rc.cfg);
        (cfg.reconnect_for, cfg.timeout)
    };
    let client = loop {
        // Wait first: a router that drops each connection at once is not hammered.
        let backoff = retry.next(Instant::now(), reconnect_for)?;
        let until = Instant::now() + backoff;
        // Sleep in slices, so that a close does not wait for the whole backoff.
        loop {
            if lock(&inner.out).closing {
                return None;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)).min(timeout));
        }
        let cfg = lock(&rc.cfg).clone();
        match Client::connect(&rc.addr[..], cfg) {
            Ok(c) => break c,
            // A router shutting down (or restarting, busy) refuses the login for now:
            // try again. Other refusals (credentials) are for good.
            Err(ClientError::Auth { code, .. }) if !login_refused_for_now(code) => return None,
            Err(_) => {}
        }
    };
    let info = client.resume().clone();
    let session_id = client.session_id();
    inner
        .router_max_frame
        .store(client.router_max_frame_bytes(), Ordering::Relaxed);
    let (stream, wire, rbuf) = client.into_wire_parts();
    let (wire_rx, wire_tx) = wire.map(Wire::split).unzip();
    let (Ok(()), Ok(writer_stream), Ok(kept)) = (
        stream.set_read_timeout(None),
        stream.try_clone(),
        stream.try_clone(),
    ) else {
        return None;
    };
    lock(&rc.cfg).resume_token = info.token.clone();
    inner.session_id.store(session_id, Ordering::Relaxed);
    *lock(&inner.stream) = kept;
    // What was received and not handed out comes again (it was not acked).
    {
        let mut local = lock(&inner.local);
        let mut g = lock(&inner.inq);
        drop_events(inner, &mut local, |ev| matches!(ev, Event::Error { .. }));
        drop_events(inner, &mut g.events, |ev| matches!(ev, Event::Error { .. }));
        g.last_error = None;
        // The Error that announced the end of the old connection: resumed from.
        g.held = None;
    }
    {
        let mut o = lock(&inner.out);
        if o.closing {
            return None;
        }
        inner.gen.fetch_add(1, Ordering::Relaxed);
        inner.handed_seq.store(0, Ordering::Relaxed);
        inner.acked_seq.store(0, Ordering::Relaxed);
        let mut again = BytesMut::new();
        if let Some(r) = o.resend.as_mut() {
            if info.resumed {
                let kept = r.frames.len();
                r.ack(info.client_seq_acked);
                if r.frames.len() < kept {
                    // The router took Sends of the connection before (the cut came
                    // before its SendAck): that was progress.
                    *retry = Retry::new();
                }
            }
            for (_, f) in &r.frames {
                again.extend_from_slice(f);
            }
        }
        // Frames queued for the old connection (acks of its seqs, requests) are not
        // for this one; the Sends among them are in `again`.
        o.buf = again;
        o.pong = None;
        o.written = o.queued;
        o.queued += o.buf.len() as u64;
        o.next_conn = Some((writer_stream, wire_tx));
        o.conn_gen += 1;
        o.reconnecting = false;
        o.last_ack = Instant::now();
        inner.out_cv.notify_one();
        inner.space_cv.notify_all();
    }
    rc.count.fetch_add(1, Ordering::Relaxed);
    Some((stream, rbuf, wire_rx))
}

/// Whether a refused login may succeed if tried again: the router is shutting down or
/// busy, not refusing the credentials.
fn login_refused_for_now(code: ringrouter_proto::v1::Status) -> bool {
    use ringrouter_proto::v1::Status;
    matches!(
        code,
        Status::Unavailable | Status::RateLimited | Status::Timeout | Status::Internal
    )
}

/// The read side is over for good: tell senders and receivers why.
fn reader_end(inner: &Inner, end: End) {
    let End { why, protocol } = end;
    let last_error = lock(&inner.inq).last_error.clone();
    let why = match last_error {
        Some(err) if why == "closed by the router" => format!("closed by the router ({err})"),
        _ => why,
    };
    // Nothing can be sent on a connection the router closed. Mark the send side
    // first, so that whoever sees `recv` report the close also sees `send` fail.
    {
        let mut o = lock(&inner.out);
        if o.dead.is_none() && !o.closing {
            o.dead = Some(why.clone());
        }
        if o.waiters > 0 {
            inner.space_cv.notify_all();
        }
        // Wake the writer so that it stops.
        inner.out_cv.notify_one();
    }
    let mut g = lock(&inner.inq);
    // Not resumed from after all: the Error that announced the end is reported.
    release_held(inner, &mut g);
    if !g.discard {
        g.protocol_error = protocol;
    }
    g.closed = Some(why);
    inner.ev_cv.notify_all();
}

/// Hands a held Error (see `In::held`) to `recv` once [`HOLD_ENDING_ERROR`] passed;
/// else how long the reader may wait for the connection to end (None: nothing held).
fn held_error_wake(inner: &Inner) -> Option<Duration> {
    let mut g = lock(&inner.inq);
    let at = g.held.as_ref()?.1;
    let left = HOLD_ENDING_ERROR.saturating_sub(at.elapsed());
    if left.is_zero() {
        release_held(inner, &mut g);
        return None;
    }
    Some(left)
}

/// Hands decoded frames over: answers to the callers waiting for them, the
/// rest to `recv`; then waits while the caller is too far behind.
fn dispatch(inner: &Inner, batch: &mut Vec<Event>) {
    let mut g = lock(&inner.inq);
    let mut answered = false;
    let mut pushed = false;
    for ev in batch.drain(..) {
        if let Event::Error { code, reason, .. } = &ev {
            g.last_error = Some(format!("{}: {reason}", code.short_name()));
        }
        let Some(ev) = g.pending.offer(ev) else {
            answered = true;
            continue;
        };
        let ev = match ev {
            ev @ (Event::Message(_)
            | Event::Room { .. }
            | Event::Receipt(_)
            | Event::Contact(_)
            | Event::Presence(_)
            | Event::Error { .. }) => ev,
            // An answer nobody waits for (timed out): a refusal is
            // reported to recv, anything else dropped (and Pongs:
            // nobody pings through this client).
            answer => match core::into_answer(answer) {
                Some(Err(ClientError::Router {
                    code,
                    reason,
                    request_id,
                })) => {
                    g.last_error = Some(format!("{}: {reason}", code.short_name()));
                    Event::Error {
                        code,
                        reason,
                        request_id,
                    }
                }
                _ => continue,
            },
        };
        if g.discard {
            continue;
        }
        // An earlier held Error goes first; this one may be held in its turn.
        release_held(inner, &mut g);
        if inner.reconnect.is_some() && may_end_session(&ev) {
            g.held = Some((ev, Instant::now()));
            continue;
        }
        inner
            .held_bytes
            .fetch_add(held_size(&ev), Ordering::Relaxed);
        g.events.push_back(ev);
        pushed = true;
    }
    if answered || (pushed && g.consumers > 0) {
        inner.ev_cv.notify_all();
    }
    // Backpressure: stop reading while the caller is behind.
    // (`recv` wakes it when it brings the count under the bound; the timeout is a
    // safety net only.)
    while inner.held_bytes.load(Ordering::Relaxed) > inner.limits.max_queued_bytes && !g.discard {
        g.reader_waiting = true;
        g = inner
            .room_cv
            .wait_timeout(g, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
        g.reader_waiting = false;
    }
}

/// Decodes one frame into `batch` (an event, or an answer to a request), or
/// queues the Pong a Ping asks for. True: a SendAck acknowledged kept Sends.
fn handle_frame(inner: &Inner, body: Bytes, batch: &mut Vec<Event>) -> Result<bool, String> {
    let mut acked = false;
    let decoded = core::decode(body).map_err(|e| match e {
        ClientError::Protocol(detail) => detail,
        e => e.to_string(),
    })?;
    match decoded {
        Inbound::Event(Event::Message(mut m)) => {
            // The payload is a slice of the frame, which is a slice of the read
            // buffer: kept as is, it would keep all of that alive (names, unknown
            // fields, the frames around it) while only the payload is counted. Its
            // own copy is what the queue's bound counts.
            m.payload = Bytes::copy_from_slice(&m.payload);
            batch.push(Event::Message(m));
        }
        Inbound::Event(ev) => batch.push(ev),
        Inbound::Ping(nonce) => {
            let mut g = lock(&inner.out);
            if g.dead.is_none() && !g.closing {
                g.pong = Some(nonce);
                if g.writer_idle {
                    g.writer_idle = false;
                    inner.out_cv.notify_one();
                }
            }
        }
        Inbound::SendAck(client_seq) => {
            let mut g = lock(&inner.out);
            if let Some(r) = g.resend.as_mut() {
                let kept = r.frames.len();
                r.ack(client_seq);
                acked = r.frames.len() < kept;
            }
            if g.waiters > 0 {
                inner.space_cv.notify_all();
            }
        }
        // A stray LoginResult; an empty frame.
        Inbound::Login(_) | Inbound::Nothing => {}
    }
    Ok(acked)
}

#[cfg(test)]
mod tests {
    //! Against a scripted fake router on loopback: what the client writes, byte
    //! for byte, and how it reacts to what the router sends.

    use super::*;
    use crate::testing::{
        account, deliver, error, login_ok, room_deliver, room_event, room_list, room_ok,
        room_refused, serve, serve_logged_in, Fake, T,
    };
    use crate::RoomEventKind;
    use ringrouter_proto::v1::{client_frame, server_frame, Status};
    use ringrouter_proto::v1::{Ping, RoomEventKind as K, SendResult};

    /// Starts a fake router running `script` after answering the Login with
    /// `after_login` (in the same write), and connects a client as "alice".
    fn start(
        after_login: Vec<server_frame::Kind>,
        script: impl FnOnce(&mut Fake) + std::marker::Send + 'static,
    ) -> (ThreadedClient, std::thread::JoinHandle<()>) {
        let (addr, server) = serve_logged_in("alice", after_login, script);
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        let c = ThreadedClient::connect(addr, cfg).expect("connect");
        (c, server)
    }

    #[test]
    fn numbered_sends_are_kept_until_acknowledged_and_past_the_bound_a_send_waits() {
        // The fake router reads every Send and acknowledges nothing until told to.
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<u64>();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let (addr, server) = serve(move |f| {
            match f.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Login(l)) => assert!(l.resume, "{l:?}"),
                other => panic!("expected Login, got {other:?}"),
            }
            f.write(&[login_ok("alice")]);
            f.stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            loop {
                if let Ok(up_to) = ack_rx.try_recv() {
                    if up_to == 0 {
                        return;
                    }
                    f.write(
                        &[server_frame::Kind::SendAck(ringrouter_proto::v1::SendAck {
                            up_to_client_seq: up_to,
                        })],
                    );
                }
                let mut buf = [0u8; 65536];
                match f.stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let mut b = BytesMut::from(&buf[..n]);
                        while let Ok(Some(body)) = next_frame(&mut b, 1 << 20) {
                            let frame = ringrouter_proto::codec::decode_client(body);
                            if let Ok(ringrouter_proto::v1::ClientFrame {
                                kind: Some(client_frame::Kind::Send(s)),
                            }) = frame
                            {
                                let _ = seen_tx.send((s.client_seq, s.msg_id));
                            }
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        cfg.reconnect = true;
        let limits = ThreadedLimits {
            max_buffer_bytes: 4096,
            ..ThreadedLimits::default()
        };
        let c = ThreadedClient::connect_with(addr, cfg, limits).expect("connect");
        let payload = [7u8; 100];
        let mut sent = 0u64;
        while c.try_send("bob", &payload).expect("try_send") {
            sent += 1;
            assert!(sent < 100, "4 KiB never filled");
        }
        // Written long ago, yet kept: no room until the router acknowledges.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!c.try_send("bob", &payload).expect("try_send"));
        assert!(!c
            .send_timeout("bob", &payload, Some(Duration::from_millis(50)))
            .expect("send_timeout"));
        let mut numbers = Vec::new();
        while numbers.len() < sent as usize {
            numbers.push(seen_rx.recv_timeout(T).expect("the Sends reach the router"));
        }
        let seqs: Vec<u64> = numbers.iter().map(|n| n.0).collect();
        assert_eq!(seqs, (1..=sent).collect::<Vec<_>>());
        let ids: HashSet<u64> = numbers.iter().map(|n| n.1).collect();
        assert_eq!(ids.len(), sent as usize, "a msg_id of its own each");
        assert!(!ids.contains(&0));
        ack_tx.send(sent).expect("ack");
        assert!(c
            .send_timeout("bob", &payload, Some(T))
            .expect("send_timeout"));
        ack_tx.send(0).expect("stop");
        server.join().expect("server");
    }

    #[test]
    fn the_seen_window_drops_copies_and_forgets_the_oldest_past_its_size() {
        let mut seen = Seen::with_capacity(3);
        assert!(seen.first_time("ann", 1));
        assert!(!seen.first_time("ann", 1));
        // Same id from another sender: another message.
        assert!(seen.first_time("bob", 1));
        assert!(seen.first_time("ann", 2));
        assert!(seen.first_time("ann", 3));
        // ("ann", 1) was the oldest of four: forgotten.
        assert!(seen.first_time("ann", 1));
        assert!(!seen.first_time("ann", 3));
        assert_eq!(seen.order.len(), 3);
        assert_eq!(seen.set.len(), 3);
        // Long names are not kept: the window's size does not depend on them.
        let long = "n".repeat(100_000);
        assert!(seen.first_time(&long, 1));
        assert!(!seen.first_time(&long, 1));
        assert!(seen.first_time(&long[1..], 1));
        let _: &VecDeque<(u64, u64)> = &seen.order;
    }

    #[test]
    fn a_send_ack_forgets_the_kept_sends_it_covers() {
        let mut r = Resend::default();
        for seq in 1..=4u64 {
            r.frames
                .push_back((seq, Bytes::from(vec![0u8; seq as usize])));
            r.bytes += seq as usize;
        }
        r.ack(2);
        assert_eq!(r.frames.front().map(|f| f.0), Some(3));
        assert_eq!(r.bytes, 3 + 4);
        r.ack(1);
        assert_eq!(r.frames.len(), 2);
        r.ack(9);
        assert!(r.frames.is_empty());
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn frames_right_behind_the_login_result_are_not_lost() {
        let (c, server) = start(vec![deliver(1, b"early")], |f| while f.frame().is_some() {});
        assert_eq!(c.user(), "alice");
        assert_eq!(c.session_id(), 42);
        let m = c.recv(Some(T)).expect("recv").expect("a message");
        assert_eq!(
            (m.sender.as_str(), &m.payload[..], m.seq),
            ("bob", &b"early"[..], 1)
        );
        assert_eq!((m.msg_id, m.timestamp_us, m.room), (1001, 7, None));
        c.close().expect("close");
        server.join().expect("server");
    }

    #[test]
    fn sends_arrive_in_order_and_batched() {
        const N: u32 = 20_000;
        let (c, server) = start(vec![], |f| {
            for i in 0..N {
                match f.frame().and_then(|f| f.kind) {
                    Some(client_frame::Kind::Send(s)) => {
                        assert_eq!(s.to_user, "bob");
                        assert_eq!(&s.payload[..], &i.to_le_bytes()[..], "message {i}");
                        assert!(!s.want_result);
                    }
                    other => panic!("expected Send {i}, got {other:?}"),
                }
            }
            assert!(
                f.most_frames_per_read > 1,
                "one frame per write: the sends were not batched"
            );
            assert!(matches!(
                f.frame().and_then(|f| f.kind),
                Some(client_frame::Kind::Logout(_))
            ));
        });
        for i in 0..N {
            c.send("bob", &i.to_le_bytes()).expect("send");
        }
        assert!(c.flush(Some(T)).expect("flush"));
        c.close().expect("close");
        server.join().expect("server");
    }

    #[test]
    fn a_frames_body_length_is_its_wire_length_less_the_prefix() {
        for body in [
            0usize,
            1,
            126,
            127,
            128,
            16_383,
            16_384,
            1 << 20,
            (1 << 21) - 1,
            1 << 21,
        ] {
            let prefix = ringrouter_proto::codec::varint_len(body as u64);
            assert_eq!(frame_body_len(body + prefix), body, "body {body}");
        }
    }

    #[test]
    fn send_many_is_one_stream_of_sends() {
        let (c, server) = start(vec![], |f| {
            for i in 0..1000u32 {
                match f.frame().and_then(|f| f.kind) {
                    Some(client_frame::Kind::Send(s)) => {
                        assert_eq!(&s.payload[..], &i.to_le_bytes()[..])
                    }
                    other => panic!("expected Send {i}, got {other:?}"),
                }
            }
        });
        let payloads: Vec<[u8; 4]> = (0..1000u32).map(|i| i.to_le_bytes()).collect();
        assert_eq!(
            c.send_many("bob", payloads.iter().map(|p| &p[..]))
                .expect("send_many"),
            1000
        );
        server.join().expect("server");
    }

    #[test]
    fn pings_are_answered_without_recv() {
        let (c, server) = start(vec![], |f| {
            f.write(&[server_frame::Kind::Ping(Ping { nonce: 77 })]);
            match f.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Pong(p)) => assert_eq!(p.nonce, 77),
                other => panic!("expected Pong, got {other:?}"),
            }
        });
        server.join().expect("server");
        drop(c);
    }

    #[test]
    fn acks_cover_only_messages_handed_out() {
        let (c, server) = start(vec![], |f| {
            f.write(&[deliver(1, b"a"), deliver(2, b"b"), deliver(3, b"c")]);
            // The client hands out one message; the writer acks it within the interval.
            match f.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Ack(a)) => assert_eq!(a.up_to_seq, 1),
                other => panic!("expected Ack 1, got {other:?}"),
            }
            match f.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Ack(a)) => assert_eq!(a.up_to_seq, 3),
                other => panic!("expected Ack 3, got {other:?}"),
            }
        });
        let m = c.recv(Some(T)).expect("recv").expect("message 1");
        assert_eq!(m.seq, 1);
        std::thread::sleep(Duration::from_millis(400));
        for seq in [2, 3] {
            assert_eq!(c.recv(Some(T)).expect("recv").expect("message").seq, seq);
        }
        server.join().expect("server");
    }

    #[test]
    fn send_wait_reports_the_routers_answer() {
        let (c, server) = start(vec![], |f| {
            let mut answer = |status: Status, msg_id: u64| match f.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Send(s)) => {
                    assert!(s.want_result);
                    assert_ne!(s.request_id, 0);
                    f.write(&[
                        deliver(1, b"meanwhile"),
                        server_frame::Kind::SendResult(SendResult {
                            request_id: s.request_id,
                            status: status as i32,
                            reason: "user has no session".into(),
                            msg_id,
                        }),
                    ]);
                }
                other => panic!("expected Send, got {other:?}"),
            };
            answer(Status::NotFound, 0);
            answer(Status::Ok, 99);
        });
        match c.send_wait("nobody", b"x") {
            Err(ClientError::Router { code, reason, .. }) => {
                assert_eq!(code, Status::NotFound);
                assert_eq!(reason, "user has no session");
            }
            other => panic!("expected NOT_FOUND, got {other:?}"),
        }
        assert_eq!(c.send_wait("bob", b"y").expect("send_wait"), 99);
        // Messages that arrived while waiting are still there.
        let m = c.recv(Some(T)).expect("recv").expect("message");
        assert_eq!(&m.payload[..], b"meanwhile");
        server.join().expect("server");
    }

    #[test]
    fn a_router_error_frame_is_raised_by_recv() {
        let (c, server) = start(vec![], |f| {
            f.write(&[server_frame::Kind::Error(ringrouter_proto::v1::Error {
                code: Status::TooLarge as i32,
                reason: "payload too large".into(),
                request_id: 0,
            })]);
            while f.frame().is_some() {}
        });
        match c.recv(Some(T)) {
            Err(ClientError::Router { code, .. }) => assert_eq!(code, Status::TooLarge),
            other => panic!("expected TOO_LARGE, got {other:?}"),
        }
        c.close().expect("close");
        server.join().expect("server");
    }

    #[test]
    fn the_router_closing_is_closed_everywhere() {
        let (c, server) = start(vec![deliver(1, b"last words")], |f| {
            f.stream.shutdown(Shutdown::Both).expect("shutdown");
        });
        server.join().expect("server");
        // What arrived first is still handed out, then Closed.
        let m = c.recv(Some(T)).expect("recv").expect("message");
        assert_eq!(&m.payload[..], b"last words");
        assert!(matches!(c.recv(Some(T)), Err(ClientError::Closed(_))));
        assert!(c.is_closed());
        assert!(matches!(c.send("bob", b"x"), Err(ClientError::Closed(_))));
        assert!(matches!(
            c.send_wait("bob", b"x"),
            Err(ClientError::Closed(_))
        ));
        c.close().expect("close");
    }

    #[test]
    fn closed_by_the_caller() {
        let (c, server) = start(vec![], |f| {
            assert!(matches!(
                f.frame().and_then(|f| f.kind),
                Some(client_frame::Kind::Logout(_))
            ));
            // The router closes after a Logout.
        });
        c.close().expect("close");
        c.close().expect("close twice");
        server.join().expect("server");
        assert!(c.is_closed());
        assert!(matches!(c.try_recv(), Err(ClientError::Closed(_))));
        assert!(matches!(
            c.try_send("bob", b"x"),
            Err(ClientError::Closed(_))
        ));
    }

    #[test]
    fn a_full_buffer_makes_try_send_say_so() {
        // The fake router never reads after the login: the socket buffers fill,
        // then the client's send buffer.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (c, server) = start(vec![], move |_f| {
            let _ = done_rx.recv_timeout(T);
        });
        let payload = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + T;
        let mut full = false;
        while Instant::now() < deadline {
            if !c.try_send("bob", &payload).expect("try_send") {
                full = true;
                break;
            }
        }
        assert!(full, "the send buffer never filled");
        // The kernel may still grow the socket buffers and take a little more
        // while we look: keep offering until send_timeout, too, reports no room.
        let mut timed_out = false;
        while Instant::now() < deadline {
            if !c
                .send_timeout("bob", &payload, Some(Duration::from_millis(50)))
                .expect("send_timeout")
            {
                timed_out = true;
                break;
            }
        }
        assert!(timed_out, "send_timeout never reported a full buffer");
        let _ = done_tx.send(());
        server.join().expect("server");
    }

    #[test]
    fn room_requests_are_matched_by_request_id_from_many_threads() {
        const N: usize = 8;
        let (c, server) = start(vec![], |f| {
            // Answer in reverse order, with events and messages in between.
            let mut ids = Vec::new();
            while ids.len() < N {
                match f.request() {
                    client_frame::Kind::CreateRoom(r) => ids.push((r.request_id, r.name)),
                    other => panic!("expected CreateRoom, got {other:?}"),
                }
            }
            let mut out = Vec::new();
            for (i, (id, name)) in ids.into_iter().rev().enumerate() {
                out.push(room_event(K::RoomEventJoined, &name, "alice"));
                out.push(room_deliver(i as u64 + 1, &name, b"m"));
                out.push(room_ok(id, &name, &format!("code-{name}")));
            }
            f.write(&out);
            f.drain();
        });
        std::thread::scope(|s| {
            for i in 0..N {
                let c = &c;
                s.spawn(move || {
                    let name = format!("room{i}");
                    assert_eq!(
                        c.create_room(&name, None).expect("create"),
                        format!("code-{name}")
                    );
                });
            }
        });
        // Every event and message is still there, in the order sent.
        let mut events = 0;
        let mut messages = 0;
        while events + messages < 2 * N {
            match c.recv_event(Some(T)).expect("recv_event") {
                Some(Event::Room {
                    kind, room, user, ..
                }) => {
                    assert_eq!((kind, user.as_str()), (RoomEventKind::Joined, "alice"));
                    assert!(room.starts_with("room"));
                    assert_eq!(events, messages, "event before its message");
                    events += 1;
                }
                Some(Event::Message(m)) => {
                    assert_eq!(m.seq, messages as u64 + 1);
                    messages += 1;
                    assert_eq!(events, messages);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        c.close().expect("close");
        server.join().expect("server");
    }

    #[test]
    fn every_room_and_account_request() {
        let (c, server) = start(vec![], |f| {
            match f.request() {
                client_frame::Kind::CreateRoom(r) => {
                    assert_eq!((r.name.as_str(), r.password.as_str()), ("lobby", "pw"));
                    f.write(&[room_ok(r.request_id, "lobby", "C0DE")]);
                }
                other => panic!("expected CreateRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::JoinRoom(r) => {
                    assert_eq!((r.room.as_str(), r.password.as_str()), ("C0DE", "pw"));
                    f.write(&[room_ok(r.request_id, "lobby", "C0DE")]);
                }
                other => panic!("expected JoinRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::JoinRoom(r) => f.write(&[room_refused(
                    r.request_id,
                    Status::Forbidden,
                    "wrong password",
                )]),
                other => panic!("expected JoinRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::AddMember(r) => {
                    assert_eq!((r.room.as_str(), r.user.as_str()), ("lobby", "bob"));
                    f.write(&[room_ok(r.request_id, "lobby", "")]);
                }
                other => panic!("expected AddMember, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::RemoveMember(r) => {
                    assert_eq!((r.room.as_str(), r.user.as_str()), ("lobby", "bob"));
                    f.write(&[error(Status::Forbidden, "not the owner", r.request_id)]);
                }
                other => panic!("expected RemoveMember, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::ListRooms(r) => f.write(&[room_list(r.request_id, &["lobby"])]),
                other => panic!("expected ListRooms, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::Send(s) => {
                    assert_eq!((s.to_room.as_str(), &s.payload[..]), ("lobby", &b"hi"[..]));
                    assert!(!s.want_result);
                }
                other => panic!("expected Send, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::Send(s) => {
                    assert_eq!(
                        (s.to_room.as_str(), &s.payload[..]),
                        ("lobby", &b"sure"[..])
                    );
                    assert!(s.want_result);
                    f.write(&[server_frame::Kind::SendResult(SendResult {
                        request_id: s.request_id,
                        status: Status::Ok as i32,
                        reason: String::new(),
                        msg_id: 5,
                    })]);
                }
                other => panic!("expected Send, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::LeaveRoom(r) => {
                    assert_eq!(r.room, "lobby");
                    f.write(&[room_ok(r.request_id, "lobby", "")]);
                }
                other => panic!("expected LeaveRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::DeleteRoom(r) => {
                    assert_eq!(r.room, "lobby");
                    f.write(&[
                        room_ok(r.request_id, "lobby", ""),
                        room_event(K::RoomEventDeleted, "lobby", "alice"),
                    ]);
                }
                other => panic!("expected DeleteRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::ListUsers(r) => {
                    assert_eq!((r.pattern.as_str(), r.limit), ("a?ice", 0));
                    f.write(&[account(r.request_id, Status::Ok, "", &["alice"])]);
                }
                other => panic!("expected ListUsers, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::DeleteAccount(r) => {
                    f.write(&[
                        account(r.request_id, Status::Ok, "alice", &[]),
                        error(Status::Unauthorized, "account deleted", 0),
                    ]);
                    let _ = f.stream.shutdown(Shutdown::Both);
                }
                other => panic!("expected DeleteAccount, got {other:?}"),
            }
        });
        let code = |r: Result<(), ClientError>| match r {
            Err(ClientError::Router { code, .. }) => code,
            other => panic!("expected a router error, got {other:?}"),
        };
        assert_eq!(c.create_room("lobby", Some("pw")).expect("create"), "C0DE");
        assert_eq!(c.join_room("C0DE", Some("pw")).expect("join"), "lobby");
        assert_eq!(
            code(c.join_room("lobby", None).map(drop)),
            Status::Forbidden
        );
        c.add_member("lobby", "bob").expect("add");
        assert_eq!(code(c.remove_member("lobby", "bob")), Status::Forbidden);
        assert_eq!(c.rooms().expect("rooms"), ["lobby"]);
        assert!(c.try_send_room("lobby", b"hi").expect("try_send_room"));
        assert_eq!(
            c.send_room_wait("lobby", b"sure").expect("send_room_wait"),
            5
        );
        c.leave_room("lobby").expect("leave");
        c.delete_room("lobby").expect("delete");
        assert_eq!(c.list_users("a?ice").expect("list_users"), ["alice"]);
        c.delete_account().expect("delete_account");
        // recv skips the room event; recv_event would have returned it.
        match c.recv(Some(T)) {
            Err(ClientError::Router { code, .. }) => assert_eq!(code, Status::Unauthorized),
            other => panic!("expected the router's Error, got {other:?}"),
        }
        assert!(matches!(c.recv(Some(T)), Err(ClientError::Closed(_))));
        // A request on a closed connection fails at once.
        assert!(matches!(c.rooms(), Err(ClientError::Closed(_))));
        server.join().expect("server");
    }

    #[test]
    fn a_request_the_router_never_answers_times_out() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let listener_script = move |f: &mut Fake| {
            assert!(matches!(f.request(), client_frame::Kind::ListRooms(_)));
            let _ = done_rx.recv_timeout(T);
        };
        let (addr, server) = serve_logged_in("alice", vec![], listener_script);
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = Duration::from_millis(200);
        let c = ThreadedClient::connect(addr, cfg).expect("connect");
        let t0 = Instant::now();
        assert!(matches!(c.rooms(), Err(ClientError::Timeout)));
        assert!(t0.elapsed() < T);
        let _ = done_tx.send(());
        server.join().expect("server");
        drop(c);
    }

    #[test]
    fn room_events_queue_with_messages_in_order() {
        let (c, server) = start(
            vec![
                deliver(1, b"a"),
                room_event(K::RoomEventJoined, "lobby", "bob"),
                room_event(K::RoomEventRemoved, "lobby", "carol"),
                deliver(2, b"b"),
                room_event(K::RoomEventLeft, "lobby", "bob"),
            ],
            |f| f.drain(),
        );
        let got: Vec<String> = (0..5)
            .map(|_| match c.recv_event(Some(T)).expect("recv_event") {
                Some(Event::Message(m)) => String::from_utf8_lossy(&m.payload).into_owned(),
                Some(Event::Room {
                    kind, room, user, ..
                }) => format!("{kind} {room} {user}"),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "a",
                "joined lobby bob",
                "removed lobby carol",
                "b",
                "left lobby bob"
            ]
        );
        assert!(c.try_recv_event().expect("try_recv_event").is_none());
        c.close().expect("close");
        server.join().expect("server");
    }

    /// Connects "alice" with `limits` to a fake router that writes `frames`, all in
    /// one go, right after the login, and then reads (and drops) whatever comes.
    fn flooded(frames: Vec<server_frame::Kind>, limits: ThreadedLimits) -> ThreadedClient {
        let (addr, _server) = serve_logged_in("alice", vec![], move |f| {
            let mut out = BytesMut::new();
            for k in frames {
                ringrouter_proto::codec::encode_frame(
                    &ringrouter_proto::v1::ServerFrame { kind: Some(k) },
                    &mut out,
                );
            }
            let mut reader = f.stream.try_clone().expect("clone");
            std::thread::spawn(move || {
                let mut b = [0u8; 65536];
                while matches!(reader.read(&mut b), Ok(n) if n > 0) {}
            });
            let _ = f.stream.write_all(&out);
        });
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        ThreadedClient::connect_with(addr, cfg, limits).expect("connect")
    }

    /// Events queued or taken out for `recv` and not handed out yet.
    fn held_events(c: &ThreadedClient) -> usize {
        let local = lock(&c.inner.local);
        local.len() + lock(&c.inner.inq).events.len()
    }

    fn one_mib() -> ThreadedLimits {
        ThreadedLimits {
            max_queued_bytes: 1 << 20,
            ..ThreadedLimits::default()
        }
    }

    #[test]
    fn the_queue_bound_counts_names_texts_and_reasons() {
        // 60 kB each, little of it payload: 200 of them are 12 MB.
        let big = "s".repeat(60_000);
        let kinds: Vec<Box<dyn Fn(u64) -> server_frame::Kind>> = vec![
            Box::new(|seq| {
                server_frame::Kind::Deliver(ringrouter_proto::v1::Deliver {
                    seq,
                    from_user: big.clone(),
                    payload: Bytes::from_static(b"p"),
                    msg_id: seq,
                    ..Default::default()
                })
            }),
            Box::new(|_| error(Status::Internal, &big, 0)),
            Box::new(|_| {
                server_frame::Kind::Presence(ringrouter_proto::v1::Presence {
                    user: "bob".into(),
                    status: 1,
                    text: big.clone(),
                    ..Default::default()
                })
            }),
        ];
        for make in kinds {
            let c = flooded((1..=200).map(&make).collect(), one_mib());
            std::thread::sleep(Duration::from_millis(300));
            let n = held_events(&c);
            // The bound, and what one read may bring past it.
            assert!(
                n * 60_000 <= (1 << 20) + (600 << 10),
                "{n} events of 60 kB held"
            );
            assert!(n >= 10, "only {n} events queued");
            drop(c);
        }
    }

    #[test]
    fn events_taken_out_for_recv_count_until_handed_out() {
        let frames = (1..=200)
            .map(|seq| {
                server_frame::Kind::Deliver(ringrouter_proto::v1::Deliver {
                    seq,
                    from_user: "bob".into(),
                    payload: Bytes::from(vec![b'p'; 60_000]),
                    msg_id: seq,
                    ..Default::default()
                })
            })
            .collect();
        let c = flooded(frames, one_mib());
        std::thread::sleep(Duration::from_millis(200));
        // The first recv takes the whole queue out; the reader must not fill another.
        let m = c.recv(Some(T)).expect("recv").expect("a message");
        assert_eq!((m.seq, m.payload.len()), (1, 60_000));
        std::thread::sleep(Duration::from_millis(300));
        let n = held_events(&c);
        assert!(
            n * 60_000 <= (1 << 20) + (600 << 10),
            "{n} messages of 60 kB held"
        );
        // Handed out, they make room for the rest, in order.
        for seq in 2..=200 {
            let m = c.recv(Some(T)).expect("recv").expect("a message");
            assert_eq!(m.seq, seq);
        }
        assert_eq!(c.inner.held_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_ping_flood_from_a_router_that_does_not_read_owes_one_pong() {
        // ~10 MB of Pings, more than the loopback socket's buffers hold of Pongs.
        let mut out = BytesMut::new();
        for nonce in 1..=1_500_000u64 {
            ringrouter_proto::codec::encode_frame(
                &ringrouter_proto::v1::ServerFrame {
                    kind: Some(server_frame::Kind::Ping(Ping { nonce })),
                },
                &mut out,
            );
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (addr, _server) = serve_logged_in("alice", vec![], move |f| {
            let _ = f.stream.write_all(&out);
            let _ = done_tx.send(());
            // Never reads: keeps the connection open until the client goes.
            let _ = f.stream.set_read_timeout(Some(T));
            std::thread::sleep(T);
        });
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = Duration::from_millis(200);
        let c = ThreadedClient::connect(addr, cfg).expect("connect");
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the Pings were read");
        let g = lock(&c.inner.out);
        assert!(g.buf.len() < 64, "{} bytes of Pongs queued", g.buf.len());
        assert!(
            g.queued - g.written < 64 << 10,
            "{} bytes owed",
            g.queued - g.written
        );
        drop(g);
        drop(c);
    }

    #[test]
    fn the_reconnect_backoff_and_deadline_carry_over_short_connections() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut r = Retry::new();
        r.dropped(Duration::ZERO, false);
        assert_eq!(r.next(t0, minute), Some(Duration::from_millis(20)));
        // Up 10 ms: the backoff goes on doubling, the deadline stays.
        r.dropped(Duration::from_millis(10), false);
        assert_eq!(r.next(t0, minute), Some(Duration::from_millis(40)));
        for _ in 0..10 {
            r.next(t0, minute);
        }
        assert_eq!(r.next(t0, minute), Some(MAX_BACKOFF));
        assert_eq!(
            r.next(t0 + minute, minute),
            None,
            "gave up a minute after the first drop"
        );
        // Progress (a message, a Send acknowledged): everything from the start.
        r.dropped(Duration::from_millis(10), true);
        assert_eq!(r.next(t0 + minute, minute), Some(FIRST_BACKOFF));
        assert_eq!(
            r.next(t0 + minute * 2 - Duration::from_millis(1), minute),
            Some(FIRST_BACKOFF * 2)
        );
        assert_eq!(r.next(t0 + minute * 2, minute), None);
        // Up 2 s: likewise.
        r.dropped(STABLE_CONNECTION, false);
        assert_eq!(r.next(t0 + minute * 2, minute), Some(FIRST_BACKOFF));
    }

    #[test]
    fn a_router_that_drops_every_login_is_not_hammered_and_the_client_gives_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let logins = Arc::new(AtomicU64::new(0));
        let counted = logins.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut f = crate::testing::Fake::new(stream);
                if f.frame().is_some() {
                    counted.fetch_add(1, Ordering::Relaxed);
                    f.write(&[login_ok("alice")]);
                }
                // Dropped at once.
            }
        });
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        cfg.reconnect = true;
        cfg.reconnect_for = Duration::from_millis(1500);
        let c = ThreadedClient::connect(addr, cfg).expect("connect");
        let t0 = Instant::now();
        let err = loop {
            match c.recv(Some(T)) {
                Err(e) => break e,
                Ok(m) => assert!(m.is_none(), "{m:?}"),
            }
            assert!(t0.elapsed() < T * 2, "never gave up");
        };
        assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
        assert!(c.is_closed());
        // 20 + 40 + ... ms before each attempt: about 7 in 1.5 s (thousands before).
        let n = logins.load(Ordering::Relaxed);
        assert!((2..=12).contains(&n), "{n} logins");
        assert!(
            t0.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            t0.elapsed()
        );
    }

    /// A client of a fake router that reads requests and answers none.
    fn unanswered() -> ThreadedClient {
        let (addr, _server) = serve_logged_in("alice", vec![], |f| while f.frame().is_some() {});
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        ThreadedClient::connect(addr, cfg).expect("connect")
    }

    #[test]
    fn close_ends_a_request_waiting_in_another_thread() {
        let c = Arc::new(unanswered());
        let waiting = c.clone();
        let t0 = Instant::now();
        let request = std::thread::spawn(move || waiting.rooms());
        std::thread::sleep(Duration::from_millis(100));
        c.close().expect("close");
        let r = request.join().expect("request");
        assert!(matches!(r, Err(ClientError::Closed(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[test]
    fn the_interrupt_check_ends_a_request_wait_and_close() {
        let c = unanswered();
        let stop = Arc::new(AtomicBool::new(false));
        let check = stop.clone();
        c.set_interrupt(move || check.load(Ordering::Relaxed));
        // Not interrupted: the answer is waited for (the check runs meanwhile).
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let t0 = Instant::now();
        assert!(matches!(c.rooms(), Err(ClientError::Timeout)));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(1),
            "{took:?}"
        );
        stopper.join().expect("stopper");
        let t0 = Instant::now();
        assert!(matches!(
            c.send_wait("bob", b"x"),
            Err(ClientError::Timeout)
        ));
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        // close does not wait for the router (which never closes) either.
        let t0 = Instant::now();
        c.close().expect("close");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn bad_bytes_mid_session_are_a_protocol_error_once_after_the_messages_before() {
        let (addr, _server) = serve_logged_in("alice", vec![deliver(1, b"a")], |f| {
            // A frame whose body is no ServerFrame, then silence.
            let _ = f.stream.write_all(&[6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            std::thread::sleep(T);
        });
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        let c = ThreadedClient::connect(addr, cfg).expect("connect");
        let m = c
            .recv(Some(T))
            .expect("the message before")
            .expect("a message");
        assert_eq!(&m.payload[..], b"a");
        let e = c.recv(Some(T)).expect_err("a protocol error");
        assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");
        let e = c.recv(Some(T)).expect_err("closed");
        assert!(
            matches!(&e, ClientError::Closed(why) if why.starts_with("protocol error")),
            "{e:?}"
        );
        assert!(matches!(c.try_recv(), Err(ClientError::Closed(_))));
    }
}
