//! One shard's state and its routing decisions. Everything here runs on the
//! owning shard's thread only (the state sits in an `Rc<RefCell<Shard>>`), and no
//! method awaits: the connection tasks in `conn` drive it.
//!
//! Ownership: a shard owns the sessions of the users whose home it is, their
//! outbound queues and sequence numbers, and its outgoing batches to other shards.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use slab::Slab;

use ringrouter_proto::fast::{DeliverStamp, SendView};
use ringrouter_proto::v1::{
    client_frame, server_frame, Error as ErrorFrame, Ping, Pong, SendResult, ServerFrame,
};
use ringrouter_proto::Status;

use crate::config::Config;
use crate::delivery::{status_reason, Held, Outgoing, Retained, StoreLink};
use crate::outbuf::{OutBuf, WriteBatch};
use crate::stats::{Counters, ShardStats};

/// Bytes a held-back message counts for besides its payload (its entry and names).
const HELD_OVERHEAD: usize = 128;

/// The room of a direct message (none).
static NO_ROOM: Bytes = Bytes::new();

/// A map keyed by names clients choose: seeded per process (foldhash), so nobody can
/// precompute colliding names (hash flooding).
pub type NameMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A set of names clients choose (see [`NameMap`]).
pub type NameSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Slab key of a session inside its shard.
pub type SessionKey = usize;

/// A session's identity across shards: (shard, slab key, generation), so a stale
/// id never reaches a recycled slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// Owning shard.
    pub shard: u16,
    /// Generation of the slab slot when the session was created.
    pub gen: u32,
    /// Slab key.
    pub key: u32,
}

impl SessionId {
    /// Packs the id into the u64 sent to clients.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.shard) << 48) | (u64::from(self.gen & 0xFFFF) << 32) | u64::from(self.key)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection (or it broke).
    PeerClosed,
    /// The client sent Logout.
    Logout,
    /// The client sent bytes that are not frames.
    BadFrame,
    /// The outbound queue stayed over its bound too long.
    SlowConsumer,
    /// No answer to heartbeats.
    HeartbeatTimeout,
    /// The router is shutting down.
    Shutdown,
    /// The account was removed or the session replaced.
    Kicked,
    /// The client let more deliveries go unacked than `max_unacked_per_session`
    /// (a slow consumer whose socket still drains: its error is flushed first).
    Unacked,
}

/// How long a session cut for not reading (slow consumer, heartbeat timeout) has to take
/// its closing Error frame before its socket is shut.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

impl CloseReason {
    /// Whether the socket should be cut at once rather than after a flush.
    fn hard(self) -> bool {
        matches!(self, CloseReason::PeerClosed)
    }

    /// Whether the peer is not reading: what is queued for it is dropped (it is in its
    /// unacked queue, which goes back to the store), only the closing Error frame is
    /// written, and the socket is shut after [`CLOSE_GRACE`] at most.
    fn stalled(self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumer | CloseReason::HeartbeatTimeout
        )
    }
}

/// One logged-in connection (a device of a user).
pub struct Session {
    /// Slab slot generation.
    pub gen: u32,
    /// Authenticated user.
    pub user: Bytes,
    /// Device name from Login.
    pub device: String,
    /// The socket, for shutdown(2) when the session is closed.
    pub fd: RawFd,
    /// Frames waiting for the writer.
    pub out: OutBuf,
    /// Bytes handed to the writer and not yet written.
    pub inflight: usize,
    /// Last sequence number assigned to a Deliver.
    pub last_seq: u64,
    /// Highest sequence number acked by the client.
    pub acked: u64,
    /// The writer task, parked until something is queued.
    pub writer: Option<Waker>,
    /// Tasks waiting for this session's queue to fall under its bound.
    pub drain_waiters: Vec<Waker>,
    /// Set once the session is closing.
    pub closing: Option<CloseReason>,
    /// Since when the queue has been over its bound.
    pub over_since: Option<Instant>,
    /// Last time a frame arrived.
    pub last_rx: Instant,
    /// When an unanswered heartbeat ping was sent.
    pub ping_sent: Option<Instant>,
    /// A written batch kept for its allocations.
    pub spare: Option<WriteBatch>,
    /// When closing began.
    pub closed_at: Option<Instant>,
    /// Remote senders this session paused while over its bound; resumed when it drains.
    pub throttled: Vec<SessionId>,
    /// Delivered and not yet acked, in seq order.
    pub unacked: Retained,
    /// The login backlog (offline queue) is being delivered.
    pub loading: bool,
    /// The next backlog page to load, once the session has drained.
    pub load_next: Option<u64>,
    /// Live messages that arrived during the backlog, delivered after it (memory mode).
    pub held: Vec<Held>,
    /// Payload bytes in `held`.
    pub held_bytes: usize,
    /// The account was deleted: what is unacked is dropped, not queued.
    pub discard_unacked: bool,
    /// The LoginResult, until the first backlog page goes out with it.
    pub login_frame: Option<ServerFrame>,
}

impl Session {
    /// Bytes queued or being written.
    pub fn pending(&self) -> usize {
        self.out.len() + self.inflight + self.held_bytes
    }

    pub(crate) fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Wakes every task waiting for this session to drain.
    pub fn wake_drain_waiters(&mut self) {
        for w in self.drain_waiters.drain(..) {
            w.wake();
        }
    }

    pub(crate) fn push_frame(&mut self, f: &ServerFrame) {
        // Nothing goes out before the LoginResult (held for the first backlog page).
        if let Some(login) = self.login_frame.take() {
            self.out.push_frame(&login);
            self.wake_drain_waiters();
        }
        self.out.push_frame(f);
        self.wake_writer();
    }
}

/// A direct message on its way to the recipient's home shard.
#[derive(Debug)]
pub struct Routed {
    /// Recipient user (a slice of the sender's read buffer); `None`: the same as
    /// the previous Deliver of this batch.
    pub to_user: Option<Bytes>,
    /// Authenticated sender; `None`: the same as the previous Deliver of this
    /// batch. Eliding repeats saves two reference-count updates per message on a
    /// counter both shards would otherwise keep pulling across cores.
    pub from_user: Option<Bytes>,
    /// The payload (a slice of the sender's read buffer).
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance, µs since the epoch.
    pub ts_us: u64,
    /// Sender session and request id, when the sender asked for a SendResult.
    pub reply: Option<(SessionId, u64)>,
    /// The sending session, so the recipient's shard can pause it (backpressure).
    pub sender: SessionId,
}

/// A connection logged in on a shard that is not its user's home, moving there.
pub struct Handover {
    /// The socket.
    pub fd: OwnedFd,
    /// Authenticated user.
    pub user: String,
    /// Device name.
    pub device: String,
    /// Login request id, echoed in LoginResult.
    pub request_id: u64,
    /// Bytes read after the Login frame (pipelined frames).
    pub leftover: BytesMut,
    /// Keeps the connection counted.
    pub guard: crate::server::ConnGuard,
}

/// What travels between shards.
pub enum Mail {
    /// A direct message for a user homed on the receiving shard.
    Deliver(Routed),
    /// The outcome of a routed message, for a sender who asked.
    Result {
        /// The sender's session.
        to: SessionId,
        /// The Send's request id.
        request_id: u64,
        /// The message id.
        msg_id: u64,
        /// OK or NOT_FOUND.
        status: Status,
    },
    /// A connection moving to its user's home shard.
    Handover(Box<Handover>),
    /// The recipient that paused this sender drained (or closed): read again.
    Resume {
        /// The sending session.
        sender: SessionId,
    },
    /// A request about a room homed on the receiving shard.
    Room(Box<crate::rooms::RoomReq>),
    /// A message to a room homed on the receiving shard.
    RoomSend(crate::rooms::RoomSend),
    /// A room message for members homed on the receiving shard.
    RoomDeliver(crate::rooms::RoomFan),
    /// A room event for users homed on the receiving shard.
    RoomNotice(Box<crate::rooms::RoomNotice>),
    /// A user's own Create or Join homed on the receiving shard was answered.
    RoomQuota {
        /// The user.
        user: Bytes,
    },
    /// A frame for a session of the receiving shard (answers to room requests).
    Reply {
        /// The session.
        to: SessionId,
        /// The frame.
        frame: Box<ServerFrame>,
    },
}

/// One shard's state.
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Number of shards.
    pub n: usize,
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Live sessions.
    pub sessions: Slab<Session>,
    users: NameMap<Bytes, Vec<SessionKey>>,
    /// Pending outgoing batches, per target shard.
    pub outbox: Vec<Vec<Mail>>,
    /// Items in `outbox`.
    pub outbox_len: usize,
    /// Per target shard: sender session and recipient of the last Deliver put in
    /// its outbox batch (what the next one may elide); cleared when the batch leaves.
    pub outbox_last: Vec<Option<(SessionId, Bytes)>>,
    /// Every shard's pause table (this one's at index `id`).
    pub pause: PauseTables,
    /// Recipient and sender of the previous Deliver of the batch being handled.
    batch_to: Bytes,
    batch_from: Bytes,
    /// Weight (see [`Mail::weight`]) waiting in `outbox`, per target shard.
    pub outbox_bytes: Vec<usize>,
    /// Weight pushed into the ring to each target shard and not yet processed there.
    pub flight_out: Vec<Arc<AtomicUsize>>,
    /// Per inbound ring (index as in the Inbox): the sender's `flight_out` counter.
    pub flight_in: Vec<Arc<AtomicUsize>>,
    /// The task that moves `outbox` into the rings.
    pub flusher: Option<Waker>,
    /// Readers waiting for `outbox` to drain.
    pub outbox_waiters: Vec<Waker>,
    /// Readers waiting for the store requests in flight to fall under their mark.
    pub store_waiters: Vec<Waker>,
    /// Tasks waiting for the last session and connection to end (shutdown).
    pub idle_waiters: Vec<Waker>,
    /// Connections accepted here that have not become sessions yet.
    pub prelogin: usize,
    next_gen: u32,
    next_msg_id: u64,
    /// Hot-path counters, published to `stats` by the ticker.
    pub counters: Counters,
    /// Shared, readable from other threads.
    pub stats: Arc<ShardStats>,
    /// Set when shutdown began.
    pub shutting_down: bool,
    /// The embedded store (None only in unit tests).
    pub store: Option<StoreLink>,
    /// Store requests made and not yet answered.
    pub store_inflight: usize,
    /// What those requests count for (payloads plus a fixed overhead each), bounded by
    /// `max_store_queue_bytes`.
    pub store_bytes: usize,
    /// Room work parked behind a store round trip: messages and requests queued on a busy
    /// room of this shard, or behind a user's Create/Join in flight. Counts with
    /// `store_bytes` against `max_store_queue_bytes`.
    pub parked_bytes: usize,
    /// Senders on other shards paused while `parked_bytes` is over its bound.
    pub parked_throttled: Vec<SessionId>,
    /// Mail this shard posted to itself (a room homed here, a store completion).
    pub local_mail: Vec<Mail>,
    /// This shard's doorbell (wakes its mailbox consumer).
    pub bell: Option<Arc<crate::mailbox::Doorbell>>,
    /// Rooms homed here (loaded, or being looked up).
    pub rooms: NameMap<Bytes, crate::rooms::RoomSlot>,
    /// Per user with live sessions here: the lowest store seq a closed device of the user
    /// left unacked while another device stayed. Acks of the others do not remove it or
    /// what follows; the next backlog delivers it again. Dropped when the user's last
    /// session ends or a new one starts its backlog.
    pub stored_floor: NameMap<Bytes, u64>,
    /// When the users with live sessions here were last marked seen in the store (open
    /// and jwt auth: a user not seen for `forget_idle_users_after` is forgotten).
    pub touched_at: Instant,
    /// Users homed here with a Create or Join in flight, and their next ones.
    pub room_quota: NameMap<Bytes, std::collections::VecDeque<crate::rooms::OwnItem>>,
}

const SLOW_CONSUMER: (Status, &str) = (
    Status::SlowConsumer,
    "slow consumer: outbound queue over its bound too long",
);

/// Most weight (≈ bytes) queued for one other shard, in the outbox plus its ring,
/// before the readers feeding it pause. It bounds what can land on a remote slow
/// consumer before its Pause arrives (see `Config::hard_pending_bytes`).
pub const PIPELINE_HIGH_WATER: usize = 8 << 20;

/// Per shard, one pause counter per session slot, shared by all shards:
/// `(generation << 32) | count`. A recipient's shard adds to a remote sender's
/// counter directly (its reader checks it before every read), and takes back
/// through a `Mail::Resume` on the sender's own shard, which wakes the reader.
/// The generation keeps a late update from touching a recycled slot.
#[derive(Debug)]
pub struct PauseTable(Box<[AtomicU64]>);

/// Every shard's pause table, indexed by shard.
pub type PauseTables = Arc<Vec<PauseTable>>;

/// Pause tables for `n` shards, each with a slot per possible session.
pub fn pause_tables(n: usize, max_connections: usize) -> PauseTables {
    let slots = max_connections.clamp(1, 1 << 20);
    Arc::new(
        (0..n)
            .map(|_| PauseTable((0..slots).map(|_| AtomicU64::new(0)).collect()))
            .collect(),
    )
}

impl PauseTable {
    /// A new session took slot `key`: no pauses yet.
    fn reset(&self, key: SessionKey, gen: u32) {
        if let Some(a) = self.0.get(key) {
            a.store(u64::from(gen) << 32, Ordering::Release);
        }
    }

    /// Adds `delta` to the count of `id` if the slot still belongs to it;
    /// returns the new count.
    pub(crate) fn add(&self, id: SessionId, delta: i64) -> Option<u32> {
        let a = self.0.get(id.key as usize)?;
        let mut cur = a.load(Ordering::Acquire);
        loop {
            if (cur >> 32) as u32 != id.gen {
                return None;
            }
            let count = (i64::from(cur as u32) + delta).clamp(0, i64::from(u32::MAX)) as u32;
            let next = (cur & !0xFFFF_FFFF) | u64::from(count);
            match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(count),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Current count of slot `key` for generation `gen`.
    fn count(&self, key: SessionKey, gen: u32) -> u32 {
        match self.0.get(key).map(|a| a.load(Ordering::Acquire)) {
            Some(v) if (v >> 32) as u32 == gen => v as u32,
            _ => 0,
        }
    }
}

/// FNV-1a, fixed seed: the home shard of a user or room never changes while the shard count does not.
pub fn home_shard(name: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ 0x9e37_79b9_7f4a_7c15;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // final avalanche so that similar names spread over shards
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % shards.max(1) as u64) as usize
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn error_frame(code: Status, reason: impl Into<String>, request_id: u64) -> ServerFrame {
    ServerFrame {
        kind: Some(server_frame::Kind::Error(ErrorFrame {
            code: code as i32,
            reason: reason.into(),
            request_id,
        })),
    }
}

pub(crate) fn send_result(
    request_id: u64,
    status: Status,
    reason: &str,
    msg_id: u64,
) -> ServerFrame {
    ServerFrame {
        kind: Some(server_frame::Kind::SendResult(SendResult {
            request_id,
            status: status as i32,
            reason: reason.to_owned(),
            msg_id,
        })),
    }
}

/// The request id of a client request (0 for frames without one).
pub fn request_id_of(kind: &client_frame::Kind) -> u64 {
    use client_frame::Kind;
    match kind {
        Kind::Login(f) => f.request_id,
        Kind::Send(f) => f.request_id,
        Kind::CreateRoom(f) => f.request_id,
        Kind::JoinRoom(f) => f.request_id,
        Kind::LeaveRoom(f) => f.request_id,
        Kind::AddMember(f) => f.request_id,
        Kind::RemoveMember(f) => f.request_id,
        Kind::DeleteRoom(f) => f.request_id,
        Kind::ListRooms(f) => f.request_id,
        Kind::Register(f) => f.request_id,
        Kind::DeleteAccount(f) => f.request_id,
        Kind::ListUsers(f) => f.request_id,
        Kind::Ack(_) | Kind::Ping(_) | Kind::Pong(_) | Kind::Logout(_) => 0,
    }
}

/// What the reader should do after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading: the session is closing.
    Stop,
}

impl Mail {
    /// What this item counts for in the cross-shard pipeline bound: payload bytes
    /// plus a fixed overhead.
    pub fn weight(&self) -> usize {
        match self {
            Mail::Deliver(r) => r.payload.len() + 64,
            Mail::RoomSend(r) => r.payload.len() + 64,
            Mail::RoomDeliver(r) => r.payload.len() + 64,
            _ => 64,
        }
    }
}

impl Shard {
    /// A fresh shard (no pipeline counters: for tests and single-shard use).
    pub fn new(id: usize, n: usize, cfg: Arc<Config>, stats: Arc<ShardStats>) -> Self {
        let counters = |k: usize| (0..k).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let pause = pause_tables(n, cfg.max_connections);
        Self::with_pipeline(
            id,
            n,
            cfg,
            stats,
            counters(n),
            counters(n.saturating_sub(1)),
            pause,
        )
    }

    /// A fresh shard sharing its cross-shard pipeline counters with the others.
    pub fn with_pipeline(
        id: usize,
        n: usize,
        cfg: Arc<Config>,
        stats: Arc<ShardStats>,
        flight_out: Vec<Arc<AtomicUsize>>,
        flight_in: Vec<Arc<AtomicUsize>>,
        pause: PauseTables,
    ) -> Self {
        Shard {
            id,
            n,
            cfg,
            sessions: Slab::new(),
            users: NameMap::default(),
            outbox: (0..n).map(|_| Vec::new()).collect(),
            outbox_len: 0,
            outbox_bytes: vec![0; n],
            outbox_last: vec![None; n],
            batch_to: Bytes::new(),
            batch_from: Bytes::new(),
            flight_out,
            flight_in,
            pause,
            flusher: None,
            outbox_waiters: Vec::new(),
            store_waiters: Vec::new(),
            idle_waiters: Vec::new(),
            prelogin: 0,
            next_gen: 1,
            next_msg_id: 1,
            counters: Counters::default(),
            stats,
            shutting_down: false,
            store: None,
            store_inflight: 0,
            store_bytes: 0,
            parked_bytes: 0,
            parked_throttled: Vec::new(),
            local_mail: Vec::new(),
            bell: None,
            rooms: NameMap::default(),
            stored_floor: NameMap::default(),
            touched_at: Instant::now(),
            room_quota: NameMap::default(),
        }
    }

    /// Home shard of a user or room.
    pub fn home(&self, name: &[u8]) -> usize {
        home_shard(name, self.n)
    }

    /// The cross-shard id of a live session.
    pub fn session_id(&self, key: SessionKey) -> Option<SessionId> {
        self.sessions.get(key).map(|s| SessionId {
            shard: self.id as u16,
            gen: s.gen,
            key: key as u32,
        })
    }

    /// The live session `id` refers to, if it is still there and not closing.
    pub fn resolve(&self, id: SessionId) -> Option<SessionKey> {
        let key = id.key as usize;
        match self.sessions.get(key) {
            Some(s) if s.gen == id.gen && id.shard as usize == self.id && s.closing.is_none() => {
                Some(key)
            }
            _ => None,
        }
    }

    /// The live sessions of `user` (homed here).
    pub fn live_sessions(&self, user: &[u8]) -> Vec<SessionKey> {
        self.users.get(user).cloned().unwrap_or_default()
    }

    /// The live sessions of `user` (homed here), borrowed.
    pub fn user_session_keys(&self, user: &[u8]) -> &[SessionKey] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// Number of live sessions of `user` on this shard.
    pub fn user_sessions(&self, user: &[u8]) -> usize {
        self.users.get(user).map_or(0, Vec::len)
    }

    /// Registers a logged-in session of `user` (this must be its home shard).
    pub fn register(
        &mut self,
        user: &str,
        device: String,
        fd: RawFd,
    ) -> Result<SessionKey, (Status, String)> {
        if self.shutting_down {
            return Err((Status::Unavailable, "shutting down".into()));
        }
        let count = self.user_sessions(user.as_bytes());
        if count >= self.cfg.max_sessions_per_user {
            return Err((
                Status::RateLimited,
                format!(
                    "user has {count} sessions, the limit is {}",
                    self.cfg.max_sessions_per_user
                ),
            ));
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let user = Bytes::copy_from_slice(user.as_bytes());
        let key = self.sessions.insert(Session {
            gen,
            user: user.clone(),
            device,
            fd,
            out: OutBuf::default(),
            inflight: 0,
            last_seq: 0,
            acked: 0,
            writer: None,
            drain_waiters: Vec::new(),
            closing: None,
            over_since: None,
            last_rx: Instant::now(),
            ping_sent: None,
            spare: None,
            closed_at: None,
            throttled: Vec::new(),
            unacked: Retained::default(),
            loading: false,
            load_next: None,
            held: Vec::new(),
            held_bytes: 0,
            discard_unacked: false,
            login_frame: None,
        });
        self.users.entry(user).or_default().push(key);
        if let Some(t) = self.pause.get(self.id) {
            t.reset(key, gen);
        }
        self.counters.logins += 1;
        Ok(key)
    }

    /// Queues a frame on a session and wakes its writer.
    pub fn push_frame(&mut self, key: SessionKey, f: &ServerFrame) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.push_frame(f);
        }
    }

    /// Queues an Error frame.
    pub fn push_error(
        &mut self,
        key: SessionKey,
        code: Status,
        reason: impl Into<String>,
        request_id: u64,
    ) {
        self.counters.frames_rejected += 1;
        self.push_frame(key, &error_frame(code, reason, request_id));
    }

    /// Handles one decoded frame from session `key`. `blocked` collects local
    /// sessions pushed over their bound (the reader waits for them to drain).
    pub fn on_frame(
        &mut self,
        key: SessionKey,
        frame: ringrouter_proto::fast::Inbound,
        now: Instant,
        ts_us: u64,
        blocked: &mut Vec<SessionKey>,
    ) -> Flow {
        use ringrouter_proto::fast::Inbound;
        if let Some(s) = self.sessions.get_mut(key) {
            s.last_rx = now;
            s.ping_sent = None;
        }
        if let Err(e) = ringrouter_proto::names::check_inbound(&frame) {
            self.counters.frames_rejected += 1;
            let f = crate::refusal::refusal(&frame, Status::BadRequest, &e.to_string());
            self.push_frame(key, &f);
            return Flow::Continue;
        }
        match frame {
            Inbound::Send(v) => {
                self.on_send(key, v, ts_us, blocked);
                Flow::Continue
            }
            Inbound::Other(kind) => self.on_other(key, kind),
            Inbound::Empty => {
                self.push_error(key, Status::BadRequest, "empty or unknown frame kind", 0);
                Flow::Continue
            }
        }
    }

    fn on_other(&mut self, key: SessionKey, kind: client_frame::Kind) -> Flow {
        use client_frame::Kind;
        match kind {
            Kind::Login(l) => {
                self.push_error(key, Status::BadRequest, "already logged in", l.request_id);
            }
            Kind::Send(_) => unreachable!("parse_client returns Send as Inbound::Send"),
            Kind::Ack(a) => {
                let Some(s) = self.sessions.get_mut(key) else {
                    return Flow::Stop;
                };
                if a.up_to_seq > s.last_seq {
                    let reason = format!(
                        "ack of seq {} beyond the last delivered seq {}",
                        a.up_to_seq, s.last_seq
                    );
                    self.push_error(key, Status::BadRequest, reason, 0);
                } else if a.up_to_seq > s.acked {
                    s.acked = a.up_to_seq;
                    let top = s.unacked.ack(a.up_to_seq);
                    if top > 0 {
                        let user = s.user.clone();
                        let top = self.removable_up_to(&user, key, top);
                        if top > 0 {
                            self.remove_stored(&user, top);
                        }
                    }
                    self.continue_loading(key);
                }
            }
            Kind::Ping(p) => {
                self.push_frame(
                    key,
                    &ServerFrame {
                        kind: Some(server_frame::Kind::Pong(Pong { nonce: p.nonce })),
                    },
                );
            }
            Kind::Pong(_) => {}
            Kind::Logout(_) => {
                self.close(key, CloseReason::Logout, None);
                return Flow::Stop;
            }
            k @ (Kind::CreateRoom(_)
            | Kind::JoinRoom(_)
            | Kind::LeaveRoom(_)
            | Kind::AddMember(_)
            | Kind::RemoveMember(_)
            | Kind::DeleteRoom(_)
            | Kind::ListRooms(_)) => self.on_room_request(key, k),
            Kind::Register(r) => {
                self.push_error(
                    key,
                    Status::BadRequest,
                    "register on a connection that is not logged in",
                    r.request_id,
                );
            }
            Kind::DeleteAccount(d) => self.on_delete_account(key, d.request_id),
            Kind::ListUsers(l) => self.on_list_users(key, l),
        }
        Flow::Continue
    }

    /// How far an ack of session `key` that covers store seqs up to `top` may remove
    /// from `user`'s queue: not what another device of the user still holds unacked
    /// (its close must find it there, as a memory-mode close requeues it), nor what a
    /// closed device left unacked while others stayed ([`Shard::stored_floor`]); and
    /// nothing while another device is paging through the queue (acks are cumulative:
    /// a later one removes these as well). 0: nothing.
    fn removable_up_to(&self, user: &Bytes, key: SessionKey, top: u64) -> u64 {
        let mut limit = top;
        if let Some(&floor) = self.stored_floor.get(user) {
            limit = limit.min(floor.saturating_sub(1));
        }
        for &k in self.user_session_keys(user) {
            let Some(o) = self.sessions.get(k).filter(|_| k != key) else {
                continue;
            };
            if o.loading {
                return 0;
            }
            let low = o.unacked.lowest_store_seq();
            if low > 0 {
                limit = limit.min(low - 1);
            }
        }
        limit
    }

    fn next_msg_id(&mut self) -> u64 {
        let id = ((self.id as u64 + 1) << 48) | (self.next_msg_id & 0xFFFF_FFFF_FFFF);
        self.next_msg_id += 1;
        id
    }

    fn on_send(&mut self, key: SessionKey, v: SendView, ts_us: u64, blocked: &mut Vec<SessionKey>) {
        self.counters.msgs_in += 1;
        let reject = if !v.to_room.is_empty() && !v.to_user.is_empty() {
            Some((
                Status::BadRequest,
                "set to_user or to_room, not both".to_owned(),
            ))
        } else if v.payload.len() > self.cfg.max_payload_bytes {
            Some((
                Status::TooLarge,
                format!(
                    "payload of {} bytes exceeds max_payload_bytes {}",
                    v.payload.len(),
                    self.cfg.max_payload_bytes
                ),
            ))
        } else {
            None
        };
        if let Some((status, reason)) = reject {
            self.counters.frames_rejected += 1;
            let f = if v.want_result {
                send_result(v.request_id, status, &reason, v.msg_id)
            } else {
                error_frame(status, reason, v.request_id)
            };
            self.push_frame(key, &f);
            return;
        }
        if !self.sessions.contains(key) {
            return;
        }
        let msg_id = if v.msg_id != 0 {
            v.msg_id
        } else {
            self.next_msg_id()
        };
        if !v.to_room.is_empty() {
            let want = v.want_result.then_some(v.request_id);
            self.send_to_room(key, v.to_room, v.payload, msg_id, ts_us, want);
            return;
        }
        let home = self.home(&v.to_user);
        if home == self.id {
            if self.journaled() {
                let Some(sender) = self.session_id(key) else {
                    return;
                };
                let msg = Held {
                    from_user: self.sessions[key].user.clone(),
                    to_room: Bytes::new(),
                    payload: v.payload,
                    msg_id,
                    ts_us,
                };
                let reply = v.want_result.then_some((sender, v.request_id));
                self.journal(v.to_user, msg, reply.into(), sender, None);
                return;
            }
            // The sender's name is lent by move, not cloned: no refcount per message.
            let from_user = std::mem::take(&mut self.sessions[key].user);
            let m = Outgoing {
                from_user: &from_user,
                to_room: &NO_ROOM,
                payload: &v.payload,
                msg_id,
                ts_us,
                store_seq: 0,
                fanned: None,
            };
            let (n, overflowed) = self.deliver_local(&v.to_user, m, None, blocked);
            if n == 0 && self.has_store() {
                let reply = self
                    .session_id(key)
                    .filter(|_| v.want_result)
                    .map(|id| (id, v.request_id));
                self.store_offline(&v.to_user, m, reply.into());
            }
            self.sessions[key].user = from_user;
            self.close_overflowed(overflowed);
            if v.want_result && (n > 0 || !self.has_store()) {
                let status = if n > 0 { Status::Ok } else { Status::NotFound };
                let reason = if n > 0 { "" } else { "user has no session" };
                self.push_frame(key, &send_result(v.request_id, status, reason, msg_id));
            }
        } else {
            let Some(sender) = self.session_id(key) else {
                return;
            };
            let reply = v.want_result.then_some((sender, v.request_id));
            let (same_from, same_to) = match &self.outbox_last[home] {
                Some((id, to)) => (*id == sender, *to == v.to_user),
                None => (false, false),
            };
            let to_user = if same_to {
                None
            } else {
                self.outbox_last[home] = Some((sender, v.to_user.clone()));
                Some(v.to_user)
            };
            if !same_from {
                if let Some((id, _)) = &mut self.outbox_last[home] {
                    *id = sender;
                }
            }
            self.post(
                home,
                Mail::Deliver(Routed {
                    to_user,
                    from_user: (!same_from).then(|| self.sessions[key].user.clone()),
                    payload: v.payload,
                    msg_id,
                    ts_us,
                    reply,
                    sender,
                }),
            );
        }
    }

    /// Appends a mail item to the outgoing batch for shard `to` and wakes the flusher.
    pub fn post(&mut self, to: usize, mail: Mail) {
        if to == self.id {
            // No ring to itself: the consumer picks it up on its next turn.
            self.local_mail.push(mail);
            if let Some(b) = &self.bell {
                b.force();
            }
            return;
        }
        self.outbox_bytes[to] += mail.weight();
        self.outbox[to].push(mail);
        self.outbox_len += 1;
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    /// Delivers a message to every live session of `to_user` homed here.
    /// Returns how many sessions got it, and a session pushed past one of its bounds
    /// (hard cap on pending bytes, unacked or held-back count), which the caller closes
    /// with [`Shard::close_overflowed`] once the names it lent are back in place.
    /// Every session keeps what it was given until acked (when there is a store);
    /// a session whose backlog is being delivered holds live messages back instead.
    pub fn deliver_local(
        &mut self,
        to_user: &[u8],
        m: Outgoing<'_>,
        remote_sender: Option<SessionId>,
        blocked: &mut Vec<SessionKey>,
    ) -> (usize, Option<SessionKey>) {
        self.deliver_to_sessions(to_user, m, remote_sender, None, blocked)
    }

    /// [`Shard::deliver_local`], skipping the session `skip` (a room message is not
    /// echoed to the device that sent it).
    pub fn deliver_to_sessions(
        &mut self,
        to_user: &[u8],
        m: Outgoing<'_>,
        remote_sender: Option<SessionId>,
        skip: Option<SessionId>,
        blocked: &mut Vec<SessionKey>,
    ) -> (usize, Option<SessionKey>) {
        let Some(keys) = self.users.get(to_user) else {
            return (0, None);
        };
        let retain = self.store.is_some();
        let max_unacked = self.cfg.max_unacked_per_session;
        let max_unacked_bytes = self.cfg.max_unacked_bytes_per_session;
        let skip_key = skip
            .filter(|id| id.shard as usize == self.id)
            .map(|id| (id.key as usize, id.gen));
        let mut pause: Option<SessionId> = None;
        let max_pending = self.cfg.max_pending_bytes;
        let hard_cap = self.cfg.hard_pending_bytes();
        let inline_max = self.cfg.inline_payload_max;
        let mut n = 0;
        let mut skipped = 0;
        let mut overflowed: Option<SessionKey> = None;
        for &k in keys {
            let Some(s) = self.sessions.get_mut(k) else {
                continue;
            };
            if s.closing.is_some() {
                continue;
            }
            if skip_key == Some((k, s.gen)) {
                // The sending device has it: it counts as a live session of the user.
                skipped += 1;
                continue;
            }
            if s.loading {
                // The backlog goes first. In sync mode this message is in the queue
                // behind it already; otherwise it waits here.
                if m.store_seq == 0 {
                    // Counted with its bookkeeping, so that even empty payloads meet
                    // the session's bounds (backpressure and the hard cap below).
                    s.held_bytes += m.payload.len() + HELD_OVERHEAD;
                    s.held.push(Held {
                        from_user: m.from_user.clone(),
                        to_room: m.to_room.clone(),
                        payload: m.payload.clone(),
                        msg_id: m.msg_id,
                        ts_us: m.ts_us,
                    });
                    if s.held.len() > max_unacked || s.held_bytes > max_unacked_bytes {
                        overflowed = Some(k);
                    }
                }
            } else {
                s.last_seq += 1;
                match m.fanned {
                    Some(fm) => s.out.push_fanned(fm, s.last_seq, inline_max),
                    None => {
                        let stamp = DeliverStamp {
                            seq: s.last_seq,
                            from_user: m.from_user,
                            to_room: m.to_room,
                            server_ts_us: m.ts_us,
                            msg_id: m.msg_id,
                        };
                        s.out.push_deliver(&stamp, m.payload, inline_max);
                    }
                }
                s.wake_writer();
                if retain {
                    s.unacked.push(s.last_seq, &m);
                    if s.unacked.len() > max_unacked || s.unacked.bytes() > max_unacked_bytes {
                        overflowed = Some(k);
                    }
                }
            }
            if s.pending() > max_pending {
                match remote_sender {
                    // A sender on another shard: ask its shard to stop reading it
                    // until this session drains (once per sender and episode).
                    Some(id) => {
                        if !s.throttled.contains(&id) {
                            s.throttled.push(id);
                            pause = Some(id);
                        }
                    }
                    None => {
                        if blocked.last() != Some(&k) {
                            blocked.push(k);
                        }
                    }
                }
            }
            if s.pending() > hard_cap {
                overflowed = Some(k);
            }
            n += 1;
        }
        self.counters.delivered += n as u64;
        if let Some(id) = pause {
            // Straight into the sender shard's table: its reader sees it before
            // its next read, whatever that shard's mailbox latency.
            if let Some(t) = self.pause.get(id.shard as usize) {
                t.add(id, 1);
            }
        }
        (n + skipped, overflowed)
    }

    /// Closes a session [`Shard::deliver_local`] pushed past its hard cap: its
    /// queue may not grow any further, it is a slow consumer now.
    pub fn close_overflowed(&mut self, overflowed: Option<SessionKey>) {
        let Some(k) = overflowed else {
            return;
        };
        let over_bytes = self
            .sessions
            .get(k)
            .is_some_and(|s| s.pending() > self.cfg.hard_pending_bytes());
        if over_bytes {
            self.close(k, CloseReason::SlowConsumer, Some(SLOW_CONSUMER));
        } else {
            self.close(
                k,
                CloseReason::Unacked,
                Some((
                    Status::SlowConsumer,
                    "slow consumer: too many deliveries not acked \
                     (max_unacked_per_session / max_unacked_bytes_per_session)",
                )),
            );
        }
    }

    /// Handles one item that arrived from another shard (or this one).
    pub fn on_mail(&mut self, mail: Mail, blocked: &mut Vec<SessionKey>) -> Option<Box<Handover>> {
        match mail {
            Mail::Deliver(r) => {
                if let Some(t) = r.to_user {
                    self.batch_to = t;
                }
                if let Some(f) = r.from_user {
                    self.batch_from = f;
                }
                if self.journaled() {
                    let msg = Held {
                        from_user: self.batch_from.clone(),
                        to_room: Bytes::new(),
                        payload: r.payload,
                        msg_id: r.msg_id,
                        ts_us: r.ts_us,
                    };
                    self.journal(self.batch_to.clone(), msg, r.reply.into(), r.sender, None);
                    return None;
                }
                // Moved out and back: no reference-count update per message.
                let to_user = std::mem::take(&mut self.batch_to);
                let from_user = std::mem::take(&mut self.batch_from);
                let m = Outgoing {
                    from_user: &from_user,
                    to_room: &NO_ROOM,
                    payload: &r.payload,
                    msg_id: r.msg_id,
                    ts_us: r.ts_us,
                    store_seq: 0,
                    fanned: None,
                };
                let (n, overflowed) = self.deliver_local(&to_user, m, Some(r.sender), blocked);
                let offline = n == 0 && self.has_store();
                if offline {
                    self.store_offline(&to_user, m, r.reply.into());
                }
                self.batch_to = to_user;
                self.batch_from = from_user;
                self.close_overflowed(overflowed);
                if !offline {
                    let status = if n > 0 { Status::Ok } else { Status::NotFound };
                    self.reply_send(r.reply, r.msg_id, status);
                }
                None
            }
            Mail::Result {
                to,
                request_id,
                msg_id,
                status,
            } => {
                if let Some(key) = self.resolve(to) {
                    let reason = match status {
                        Status::NotFound if !self.has_store() => "user has no session",
                        other => status_reason(other),
                    };
                    self.push_frame(key, &send_result(request_id, status, reason, msg_id));
                }
                None
            }
            Mail::Handover(h) => Some(h),
            Mail::Resume { sender } => {
                self.resume_sender(sender);
                None
            }
            Mail::Room(req) => {
                self.on_room_work(crate::rooms::RoomWork::Req(req));
                None
            }
            Mail::RoomSend(s) => {
                self.on_room_work(crate::rooms::RoomWork::Send(s));
                None
            }
            Mail::RoomDeliver(f) => {
                self.on_room_fan(f);
                None
            }
            Mail::RoomNotice(n) => {
                self.on_room_notice(&n);
                None
            }
            Mail::RoomQuota { user } => {
                self.next_own(&user);
                None
            }
            Mail::Reply { to, frame } => {
                if let Some(k) = self.resolve(to) {
                    self.push_frame(k, &frame);
                }
                None
            }
        }
    }

    /// Takes back one pause of a sender session of this shard; wakes its reader at zero.
    fn resume_sender(&mut self, sender: SessionId) {
        let left = self.pause.get(self.id).and_then(|t| t.add(sender, -1));
        if left == Some(0) {
            if let Some(s) = self.resolve(sender).and_then(|k| self.sessions.get_mut(k)) {
                s.wake_drain_waiters();
            }
        }
    }

    /// Starts handling a batch from another shard (elided names refer back only
    /// within one batch).
    pub fn begin_batch(&mut self) {
        self.batch_to = Bytes::new();
        self.batch_from = Bytes::new();
    }

    /// True when the pipeline to some other shard (outbox plus ring) is over its
    /// high-water mark: readers wait before reading more.
    pub fn pipeline_full(&self) -> bool {
        self.outbox_bytes
            .iter()
            .zip(&self.flight_out)
            .any(|(q, f)| q + f.load(Ordering::Acquire) > PIPELINE_HIGH_WATER)
    }

    /// Resumes every remote sender session `key` paused (it drained or is closing).
    pub fn release_throttles(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.throttled.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut s.throttled);
        for id in ids {
            if id.shard as usize == self.id {
                // Paused by a delivery made from a store completion on this shard.
                self.resume_sender(id);
            } else {
                self.post(id.shard as usize, Mail::Resume { sender: id });
            }
        }
    }

    /// True when the reader of session `key` must wait: remote recipients paused it.
    pub fn paused(&self, key: SessionKey) -> bool {
        let Some(s) = self.sessions.get(key) else {
            return false;
        };
        s.closing.is_none()
            && self
                .pause
                .get(self.id)
                .is_some_and(|t| t.count(key, s.gen) > 0)
    }

    /// True when session `key` is gone or back under its bound.
    pub fn drained(&self, key: SessionKey) -> bool {
        match self.sessions.get(key) {
            Some(s) => s.closing.is_some() || s.pending() <= self.cfg.max_pending_bytes,
            None => true,
        }
    }

    /// Registers `waker` to run when session `key` drains or closes.
    pub fn wait_drain(&mut self, key: SessionKey, waker: &Waker) {
        if let Some(s) = self.sessions.get_mut(key) {
            if !s.drain_waiters.iter().any(|w| w.will_wake(waker)) {
                s.drain_waiters.push(waker.clone());
            }
        }
    }

    /// Starts closing a session: it leaves the user's session list at once (no
    /// new deliveries), an optional final error is queued, and the socket is shut
    /// down now (hard reasons) or once the writer has flushed.
    pub fn close(&mut self, key: SessionKey, reason: CloseReason, error: Option<(Status, &str)>) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        s.closing = Some(reason);
        s.closed_at = Some(Instant::now());
        // Dropped only behind the LoginResult: a client must see it before anything else.
        if reason.stalled() && s.out.taken() {
            s.out.clear();
        }
        if let Some((code, msg)) = error {
            s.out.push_frame(&error_frame(code, msg, 0));
        }
        let user = s.user.clone();
        let fd = s.fd;
        let left_stored = s.unacked.lowest_store_seq();
        s.wake_writer();
        s.wake_drain_waiters();
        self.release_throttles(key);
        self.requeue(key);
        if reason.hard() {
            // Safety: fd is the session's open socket (closed only after the session is removed).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        match reason {
            CloseReason::SlowConsumer | CloseReason::Unacked => {
                self.counters.slow_consumer_closes += 1
            }
            CloseReason::HeartbeatTimeout => self.counters.heartbeat_closes += 1,
            _ => {}
        }
        if let Some(list) = self.users.get_mut(&user) {
            list.retain(|&k| k != key);
            if list.is_empty() {
                self.users.remove(&user);
                self.stored_floor.remove(&user);
            } else if left_stored > 0 {
                let floor = self.stored_floor.entry(user.clone()).or_insert(u64::MAX);
                *floor = (*floor).min(left_stored);
            }
        }
        tracing::debug!(shard = self.id, user = %String::from_utf8_lossy(&user), ?reason, "session closing");
    }

    /// Forgets a session whose reader and writer have both finished.
    pub fn remove(&mut self, key: SessionKey) {
        if self.sessions.contains(key) {
            self.close(key, CloseReason::PeerClosed, None);
            let mut s = self.sessions.remove(key);
            s.wake_drain_waiters();
        }
        self.wake_if_idle();
    }

    /// True when no session and no pre-login connection is left.
    pub fn idle(&self) -> bool {
        self.sessions.is_empty() && self.prelogin == 0
    }

    /// Wakes the shutdown wait once the shard is idle.
    pub fn wake_if_idle(&mut self) {
        if self.idle() {
            for w in self.idle_waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Periodic duties: heartbeats, slow consumers, publishing counters.
    pub fn tick(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        let mut to_close = Vec::new();
        for (k, s) in self.sessions.iter_mut() {
            if let Some(at) = s.closed_at {
                // A closing session whose peer stopped reading cannot flush: cut it.
                let grace = match s.closing {
                    Some(r) if r.stalled() => CLOSE_GRACE,
                    _ => cfg.shutdown_timeout,
                };
                if now.duration_since(at) >= grace {
                    // Safety: fd belongs to this live session.
                    unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
                }
                continue;
            }
            if s.pending() > cfg.max_pending_bytes {
                let since = *s.over_since.get_or_insert(now);
                if now.duration_since(since) >= cfg.slow_consumer_timeout {
                    to_close.push((k, CloseReason::SlowConsumer));
                    continue;
                }
            } else {
                s.over_since = None;
            }
            match s.ping_sent {
                Some(sent) if now.duration_since(sent) >= cfg.heartbeat_timeout => {
                    to_close.push((k, CloseReason::HeartbeatTimeout));
                }
                None if now.duration_since(s.last_rx) >= cfg.heartbeat_interval => {
                    s.ping_sent = Some(now);
                    let nonce = now_us();
                    s.push_frame(&ServerFrame {
                        kind: Some(server_frame::Kind::Ping(Ping { nonce })),
                    });
                }
                _ => {}
            }
        }
        self.touch_live_users(now);
        self.trim_room_cache();
        debug_assert_eq!(self.parked_total(), self.parked_bytes, "parked room work");
        for (k, reason) in to_close {
            let msg = match reason {
                CloseReason::SlowConsumer => (
                    Status::SlowConsumer,
                    "slow consumer: outbound queue over its bound too long",
                ),
                _ => (Status::Timeout, "heartbeat timeout"),
            };
            tracing::info!(shard = self.id, ?reason, "closing session");
            self.close(k, reason, Some(msg));
        }
        self.publish();
    }

    /// Open and jwt auth: marks every user with a live session here as seen, a few times
    /// per `forget_idle_users_after`, so a user logged in for longer is not forgotten.
    fn touch_live_users(&mut self, now: Instant) {
        if self.store.is_none() || self.cfg.auth == crate::config::AuthMode::Accounts {
            return;
        }
        if now.duration_since(self.touched_at)
            < crate::store::seen_refresh(self.cfg.forget_idle_users_after)
        {
            return;
        }
        self.touched_at = now;
        let users: Vec<String> = self
            .users
            .keys()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .collect();
        for u in users {
            self.store_req(
                |st, cb| st.ensure_user(&u, cb),
                |_, r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "marking a user seen failed");
                    }
                },
            );
        }
    }

    /// Copies the counters into the shared stats.
    pub fn publish(&mut self) {
        self.stats.publish(&self.counters, self.sessions.len());
    }

    /// Begins a graceful shutdown: every session is told UNAVAILABLE and closed after its queue flushes.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let keys: Vec<SessionKey> = self.sessions.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(
                k,
                CloseReason::Shutdown,
                Some((Status::Unavailable, "shutting down")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringrouter_proto::codec::{decode_server, next_frame};
    use ringrouter_proto::fast::Inbound;

    fn shard(n: usize) -> Shard {
        Shard::new(
            0,
            n,
            Arc::new(Config::default()),
            Arc::new(ShardStats::default()),
        )
    }

    fn drain(s: &mut Shard, key: SessionKey) -> Vec<ServerFrame> {
        let sess = s.sessions.get_mut(key).unwrap();
        let batch = sess.out.take(None);
        let mut buf = BytesMut::new();
        for p in batch.parts() {
            buf.extend_from_slice(p);
        }
        let mut out = Vec::new();
        while let Some(f) = next_frame(&mut buf, 1 << 20).unwrap() {
            out.push(decode_server(f).unwrap());
        }
        out
    }

    fn send(to: &str, payload: &'static [u8], want: bool) -> Inbound {
        Inbound::Send(SendView {
            request_id: 5,
            to_user: Bytes::copy_from_slice(to.as_bytes()),
            payload: Bytes::from_static(payload),
            want_result: want,
            ..Default::default()
        })
    }

    #[test]
    fn home_shard_is_stable_and_spreads() {
        assert_eq!(home_shard(b"alice", 4), home_shard(b"alice", 4));
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[home_shard(format!("user{i}").as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 150), "{seen:?}");
    }

    #[test]
    fn local_dm_reaches_every_device_with_router_stamped_sender() {
        let mut s = shard(1);
        let a = s.register("alice", "phone".into(), -1).unwrap();
        let b1 = s.register("bob", "phone".into(), -1).unwrap();
        let b2 = s.register("bob", "laptop".into(), -1).unwrap();
        let mut blocked = Vec::new();
        s.on_frame(a, send("bob", b"hi", true), Instant::now(), 7, &mut blocked);
        s.on_frame(
            a,
            send("bob", b"again", false),
            Instant::now(),
            8,
            &mut blocked,
        );
        for b in [b1, b2] {
            let frames = drain(&mut s, b);
            assert_eq!(frames.len(), 2);
            for (i, f) in frames.iter().enumerate() {
                let Some(server_frame::Kind::Deliver(d)) = &f.kind else {
                    panic!("{f:?}")
                };
                assert_eq!(d.from_user, "alice");
                assert_eq!(d.seq, i as u64 + 1);
                assert_ne!(d.msg_id, 0);
            }
        }
        let res = drain(&mut s, a);
        assert_eq!(res.len(), 1);
        let Some(server_frame::Kind::SendResult(r)) = &res[0].kind else {
            panic!()
        };
        assert_eq!((r.request_id, r.status), (5, Status::Ok as i32));
    }

    #[test]
    fn send_to_nobody_is_not_found_and_bad_sends_are_refused() {
        let mut s = shard(1);
        let a = s.register("alice", "d".into(), -1).unwrap();
        let mut blocked = Vec::new();
        s.on_frame(
            a,
            send("ghost", b"x", true),
            Instant::now(),
            1,
            &mut blocked,
        );
        s.on_frame(a, send("", b"x", false), Instant::now(), 1, &mut blocked);
        let f = drain(&mut s, a);
        let Some(server_frame::Kind::SendResult(r)) = &f[0].kind else {
            panic!()
        };
        assert_eq!(r.status, Status::NotFound as i32);
        let Some(server_frame::Kind::Error(e)) = &f[1].kind else {
            panic!()
        };
        assert_eq!(e.code, Status::BadRequest as i32);
    }

    #[test]
    fn remote_recipient_goes_to_the_outbox_of_its_home() {
        let mut s = shard(4);
        let a = s.register("alice", "d".into(), -1).unwrap();
        let name = (0..)
            .map(|i| format!("u{i}"))
            .find(|u| home_shard(u.as_bytes(), 4) == 2)
            .unwrap();
        let mut blocked = Vec::new();
        s.on_frame(a, send(&name, b"x", true), Instant::now(), 1, &mut blocked);
        assert_eq!(s.outbox_len, 1);
        assert_eq!(s.outbox[2].len(), 1);
        let Mail::Deliver(r) = &s.outbox[2][0] else {
            panic!()
        };
        assert_eq!(r.from_user.as_deref(), Some(&b"alice"[..]));
        assert!(r.reply.is_some());
    }

    #[test]
    fn repeated_names_are_elided_within_a_batch_and_restored() {
        let mut a = shard(2);
        let mut b = Shard::new(
            1,
            2,
            Arc::new(Config::default()),
            Arc::new(ShardStats::default()),
        );
        let remote = |i: usize| {
            (0..)
                .map(|k| format!("r{i}-{k}"))
                .find(|u| home_shard(u.as_bytes(), 2) == 1)
                .unwrap()
        };
        let (bob, dave) = (remote(0), remote(1));
        let alice = a.register("alice", "d".into(), -1).unwrap();
        let carol = a.register("carol", "d".into(), -1).unwrap();
        let rb = b.register(&bob, "d".into(), -1).unwrap();
        let rd = b.register(&dave, "d".into(), -1).unwrap();
        let mut blocked = Vec::new();
        for (from, to) in [
            (alice, &bob),
            (alice, &bob),
            (carol, &bob),
            (alice, &dave),
            (alice, &dave),
        ] {
            a.on_frame(from, send(to, b"x", false), Instant::now(), 1, &mut blocked);
        }
        let batch = std::mem::take(&mut a.outbox[1]);
        let shape: Vec<(bool, bool)> = batch
            .iter()
            .map(|m| match m {
                Mail::Deliver(r) => (r.to_user.is_some(), r.from_user.is_some()),
                _ => panic!("not a deliver"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                (true, true),
                (false, false),
                (false, true),
                (true, true),
                (false, false)
            ]
        );
        b.begin_batch();
        for m in batch {
            b.on_mail(m, &mut blocked);
        }
        let senders = |b: &mut Shard, k| -> Vec<String> {
            drain(b, k)
                .into_iter()
                .map(|f| match f.kind {
                    Some(server_frame::Kind::Deliver(d)) => d.from_user,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(senders(&mut b, rb), ["alice", "alice", "carol"]);
        assert_eq!(senders(&mut b, rd), ["alice", "alice"]);
    }

    #[test]
    fn pause_counts_belong_to_one_generation_of_a_slot() {
        let tables = pause_tables(1, 8);
        let t = &tables[0];
        let old = SessionId {
            shard: 0,
            gen: 7,
            key: 3,
        };
        t.reset(3, 7);
        assert_eq!(t.add(old, 1), Some(1));
        assert_eq!(t.add(old, 1), Some(2));
        assert_eq!(t.count(3, 7), 2);
        // The slot is recycled: the old session's late updates touch nothing.
        t.reset(3, 8);
        assert_eq!(t.add(old, -1), None);
        assert_eq!(t.add(old, 1), None);
        assert_eq!(t.count(3, 8), 0);
        assert_eq!(t.count(3, 7), 0);
        let new = SessionId { gen: 8, ..old };
        assert_eq!(t.add(new, -1), Some(0), "never below zero");
        // Out of range slots are ignored, not a panic.
        assert_eq!(t.add(SessionId { key: 99, ..new }, 1), None);
    }

    #[test]
    fn session_limit_per_user() {
        let mut s = Shard::new(
            0,
            1,
            Arc::new(Config {
                max_sessions_per_user: 2,
                ..Config::default()
            }),
            Arc::new(ShardStats::default()),
        );
        s.register("a", "1".into(), -1).unwrap();
        s.register("a", "2".into(), -1).unwrap();
        assert_eq!(
            s.register("a", "3".into(), -1).unwrap_err().0,
            Status::RateLimited
        );
    }

    #[test]
    fn ack_beyond_delivered_is_refused() {
        let mut s = shard(1);
        let a = s.register("a", "1".into(), -1).unwrap();
        let mut blocked = Vec::new();
        let ack = Inbound::Other(client_frame::Kind::Ack(ringrouter_proto::v1::Ack {
            up_to_seq: 3,
        }));
        s.on_frame(a, ack, Instant::now(), 0, &mut blocked);
        let f = drain(&mut s, a);
        let Some(server_frame::Kind::Error(e)) = &f[0].kind else {
            panic!()
        };
        assert_eq!(e.code, Status::BadRequest as i32);
    }
}
