//! Sessions: a logged-in connection's state on its user's home shard, registering
//! one, the reasons one ends and closing it, and the periodic duties over all of them
//! (heartbeats, slow consumers).

use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use ringrouter_proto::names::MAX_NAME_BYTES;
use ringrouter_proto::reply;
use ringrouter_proto::v1::ServerFrame;
use ringrouter_proto::Status;

use super::retention::{OwnedMsg, Retained};
use super::{now_us, Shard};
use crate::outbuf::{OutBuf, WriteBatch};

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
    /// A TLS or WebSocket client ended the conversation (close frame, close_notify) or
    /// broke its framing: the closing handshake is answered (close frame, alert) before
    /// the socket is shut; what was queued for it goes back to its unacked queue.
    PeerClosing,
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
    /// The frame it was sending began before the others the shard was reading, past
    /// `--max-input-bytes` (`shard::input`).
    InputBudget,
}

/// Bytes received on socket `fd` and not read yet (0 if it cannot tell).
fn unread_bytes(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // Safety: FIONREAD writes one int; fd is the session's open socket.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r == 0 {
        n.max(0) as usize
    } else {
        0
    }
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
            CloseReason::SlowConsumer
                | CloseReason::HeartbeatTimeout
                | CloseReason::PeerClosing
                | CloseReason::InputBudget
        )
    }
}

/// Why a logged-in connection could not become a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The shard is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The user has `max_sessions_per_user` sessions already.
    #[error("user has {count} sessions, the limit is {limit}")]
    TooManySessions {
        /// Sessions the user has.
        count: usize,
        /// `max_sessions_per_user`.
        limit: usize,
    },
}

impl RegisterError {
    /// The status of the LoginResult that refuses the session.
    pub fn status(&self) -> Status {
        match self {
            RegisterError::ShuttingDown => Status::Unavailable,
            RegisterError::TooManySessions { .. } => Status::RateLimited,
        }
    }
}

/// One logged-in connection (a device of a user).
///
/// Laid out by hand (`repr(C)`, a cache line aligned): what a delivery reads and writes
/// of a session is its first line (the fields before `out`), then `out` and `unacked`,
/// so that a room's fan-out can ask for those lines ahead of the member it is at
/// (`Session::prefetch`); the rest follows. The first line's fields are ordered so that
/// none is padded (the 8-byte ones, then `gen`, the four 1-byte ones, `drains` and
/// `requests`). `layout_keeps_the_hot_fields_in_the_first_line` checks it.
#[repr(C, align(64))]
pub struct Session {
    /// Last sequence number assigned to a Deliver.
    pub last_seq: u64,
    /// Acceptance time (µs since the epoch) of the oldest live delivery queued since the
    /// writer last took the queue (0: none): the delivery latency of the next writev.
    pub oldest_ts_us: u64,
    /// Bytes handed to the writer and not yet written.
    pub inflight: usize,
    /// What `deferred` counts for: payload bytes plus `DEFERRED_OVERHEAD` each.
    pub deferred_bytes: usize,
    /// The writer task, parked until something is queued.
    pub writer: Option<Waker>,
    /// Slab slot generation.
    pub gen: u32,
    /// Set once the session is closing.
    pub closing: Option<CloseReason>,
    /// The login backlog (offline queue) is being delivered.
    pub loading: bool,
    /// An answer (a result, an error, a Pong, a notice: any frame but a delivery) was
    /// queued on this session while it was over `max_pending_bytes`, since the writer
    /// last drained it: its reader stops until it drains (`net::session`). Set by
    /// `Shard::push_frame` whenever the answer comes, at once or from the store.
    pub answered_over: bool,
    /// The account was deleted: what is unacked is dropped, not queued.
    pub discard_unacked: bool,
    /// Times the writer found the queue under its bound after a write (wrapping): a
    /// reader waiting on its own queue goes on once it moved, even if deliveries took
    /// the queue back over the bound before it ran.
    pub drains: u32,
    /// Requests of this session waiting on the store (bounded by
    /// `max_requests_in_flight`: at it, its reader waits).
    pub requests: u32,
    /// Frames waiting for the writer.
    pub out: OutBuf,
    /// Retained: delivered and not yet acked, in seq order.
    pub unacked: Retained,
    /// Authenticated user.
    pub user: Bytes,
    /// Device name from Login.
    pub device: String,
    /// Highest sequence number acked by the client.
    pub acked: u64,
    /// Tasks waiting for this session's queue to fall under its bound.
    pub drain_waiters: Vec<Waker>,
    /// Since when the queue has been over its bound.
    pub over_since: Option<Instant>,
    /// Last time a frame arrived.
    pub last_rx: Instant,
    /// When an unanswered heartbeat ping was sent.
    pub ping_sent: Option<Instant>,
    /// A written batch kept for its allocations.
    pub spare: Option<Box<WriteBatch>>,
    /// When closing began.
    pub closed_at: Option<Instant>,
    /// Remote senders this session paused while over its bound; resumed when it drains.
    pub throttled: Vec<SessionId>,
    /// The next backlog page to load, once the session has drained.
    pub load_next: Option<u64>,
    /// The store seq after the last backlog message this session got (0: none).
    pub backlog_next: u64,
    /// Deferred: live messages that arrived during the backlog, delivered after it
    /// (memory mode).
    pub deferred: Vec<OwnedMsg>,
    /// The LoginResult, until the first backlog page goes out with it.
    pub login_frame: Option<Box<ServerFrame>>,
    /// Resume: this session's token (None: resume not asked for).
    pub resume_token: Option<super::resume::ResumeToken>,
    /// Resume: the highest `Send.client_seq` taken.
    pub client_seq_taken: u64,
    /// Resume: the highest client_seq told to the client (SendAck).
    pub client_seq_acked: u64,
    /// The user this session last sent a direct message to ([`LastDest`]).
    pub last_dest: Option<Box<LastDest>>,
    /// The socket, for shutdown(2) when the session is closed.
    pub fd: RawFd,
    /// Store requests its Sends made that are not answered yet (offline messages, room
    /// messages to offline members): not limited, but a session with any is not read
    /// past a full store queue (`Shard::poll_session_intake`).
    pub store_sends: u32,
    /// Bytes the writer has still to write before the last big answer is out, that
    /// answer's included (History, ListConversations, RoomInfo, ListRooms, ListUsers,
    /// ListContacts: a few bytes asking for up to a frame). A session's reader reads
    /// nothing past a big-answer request until it is answered and this is 0
    /// ([`Shard::answer_waits`]): answers must not pile up on a socket that is not read.
    pub answer_unwritten: u32,
    /// A big-answer request of this session is waiting for its answer.
    pub big_answer: bool,
    /// The writer's batch that keeps payloads by reference ([`WriteBatch::pins`]): how
    /// long it has been written and what cancels its write. Boxed (made at the first
    /// such batch, let go with the idle buffers): an idle session keeps a pointer.
    pub pinning: Option<Box<PinningWrite>>,
}

/// See [`Session::pinning`].
pub struct PinningWrite {
    /// Since when the writer has been writing such a batch (None: it is not).
    pub since: Option<Instant>,
    /// Cancels its write ([`Shard::unpin_payloads`]).
    pub cancel: monoio::io::Canceller,
}

/// The user a session last sent a direct message to, its name checked and its home
/// shard found: the next Send to the same user skips both (a conversation is a run of
/// Sends to one peer; like nats-server's per-client cache of subject lookups). Boxed,
/// so an idle session holds a pointer; the ticker drops it with the idle buffers.
pub struct LastDest {
    len: u8,
    home: u16,
    name: [u8; MAX_NAME_BYTES],
    /// The destination's one session on this shard, found in the shard's user map when
    /// the map's generation (`Shard::users_gen`) was the first field: while no session
    /// registered or closed since, the map still lists that session alone for the name,
    /// and the next message skips the lookup (see `Shard::deliver_dm`).
    peer: Option<(u64, usize)>,
}

impl LastDest {
    /// The destination's name (it passed the name checks).
    #[inline]
    pub fn name(&self) -> &[u8] {
        &self.name[..usize::from(self.len)]
    }

    /// The home shard of `to_user` if it is this destination.
    #[inline]
    pub fn home_of(&self, to_user: &[u8]) -> Option<usize> {
        ringrouter_proto::names::name_eq(&self.name[..usize::from(self.len)], to_user)
            .then_some(usize::from(self.home))
    }

    /// The destination's session remembered at the user map's generation `gen`, if any.
    #[inline]
    pub fn peer(&self, gen: u64) -> Option<usize> {
        self.peer.filter(|&(g, _)| g == gen).map(|(_, k)| k)
    }

    /// Remembers `key`, the one session the user map listed for this destination at
    /// its generation `gen`.
    pub fn set_peer(&mut self, gen: u64, key: usize) {
        self.peer = Some((gen, key));
    }

    /// Remembers `to_user` (a name that passed the checks) and its `home`.
    pub fn remember(slot: &mut Option<Box<LastDest>>, to_user: &[u8], home: usize) {
        let Ok(home) = u16::try_from(home) else {
            return;
        };
        if to_user.len() > MAX_NAME_BYTES {
            return;
        }
        let d = slot.get_or_insert_with(|| {
            Box::new(LastDest {
                len: 0,
                home: 0,
                name: [0; MAX_NAME_BYTES],
                peer: None,
            })
        });
        // The session found for the previous name is not this name's.
        d.peer = None;
        d.name[..to_user.len()].copy_from_slice(to_user);
        d.len = to_user.len() as u8; // at most MAX_NAME_BYTES (64)
        d.home = home;
    }
}

impl Session {
    /// Bytes queued or being written.
    pub fn pending(&self) -> usize {
        self.out.len() + self.inflight + self.deferred_bytes
    }

    /// Starts loading what a delivery to it reads and writes: its first line (the
    /// fields before `out`), the line `out` starts in, and `unacked`'s first two (see
    /// the layout note on [`Session`]).
    #[inline(always)]
    pub(crate) fn prefetch(&self) {
        crate::outbuf::prefetch(std::ptr::from_ref(self));
        crate::outbuf::prefetch(std::ptr::from_ref(&self.out));
        self.unacked.prefetch();
    }

    pub(crate) fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// The client was heard from (a frame, or bytes read ahead, or bytes waiting unread
    /// in its socket): alive, whatever heartbeat was unanswered.
    #[inline]
    pub fn heard(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
    }

    /// Wakes every task waiting for this session to drain.
    pub fn wake_drain_waiters(&mut self) {
        for w in self.drain_waiters.drain(..) {
            w.wake();
        }
    }

    /// Frees what a drained session holds for traffic it does not have (write
    /// buffers, empty queues' capacity), so an idle session costs little memory. Run by
    /// the ticker: a busy session allocates them again at most once a tick.
    fn release_idle(&mut self) {
        self.out.release();
        self.last_dest = None;
        self.spare = None;
        self.pinning = None;
        self.unacked.release();
        if self.throttled.is_empty() {
            self.throttled.shrink_to_fit();
        }
        if self.drain_waiters.is_empty() {
            self.drain_waiters.shrink_to_fit();
        }
        if self.deferred.is_empty() {
            self.deferred.shrink_to_fit();
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

/// What the sessions of a shard hold, summed when its counters are published (gauges).
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// Bytes queued for the sockets, not written yet.
    pending: u64,
    /// Deliveries not acked yet.
    unacked: u64,
    /// Their payload bytes in memory.
    unacked_bytes: u64,
}

const SLOW_CONSUMER: (Status, &str) = (
    Status::SlowConsumer,
    "slow consumer: outbound queue over its bound too long",
);

/// What the reader should do after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading: the session is closing.
    Stop,
    /// Not handled: the session's reader waits (see [`Shard::answer_waits`]), then
    /// hands the same frame again (`shard::blocks`).
    Again,
}

impl Shard {
    /// Registers a logged-in session of `user` (this must be its home shard).
    pub fn register(
        &mut self,
        user: &str,
        device: String,
        fd: RawFd,
    ) -> Result<SessionKey, RegisterError> {
        if self.shutting_down {
            return Err(RegisterError::ShuttingDown);
        }
        let count = self.user_sessions(user.as_bytes());
        let limit = self.cfg.max_sessions_per_user;
        if count >= limit {
            return Err(RegisterError::TooManySessions { count, limit });
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let name = user;
        let user = Bytes::copy_from_slice(user.as_bytes());
        let key = self.sessions.insert(Session {
            gen,
            user: user.clone(),
            device,
            fd,
            out: OutBuf::default(),
            inflight: 0,
            last_seq: 0,
            oldest_ts_us: 0,
            acked: 0,
            writer: None,
            drain_waiters: Vec::new(),
            drains: 0,
            answered_over: false,
            requests: 0,
            store_sends: 0,
            answer_unwritten: 0,
            big_answer: false,
            pinning: None,
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
            backlog_next: 0,
            deferred: Vec::new(),
            deferred_bytes: 0,
            discard_unacked: false,
            login_frame: None,
            resume_token: None,
            client_seq_taken: 0,
            client_seq_acked: 0,
            last_dest: None,
        });
        self.users_gen += 1;
        let list = self.users.entry(user).or_default();
        list.push(key);
        if list.len() == 2 {
            self.social.multi_device += 1;
        }
        if let Some(t) = self.pause.get(self.id) {
            t.reset(key, gen);
        }
        self.counters.logins += 1;
        self.presence_joined(name, key);
        Ok(key)
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

    /// True when session `key` is gone or back under its bound.
    pub fn drained(&self, key: SessionKey) -> bool {
        match self.sessions.get(key) {
            Some(s) => s.closing.is_some() || s.pending() <= self.cfg.max_pending_bytes,
            None => true,
        }
    }

    /// A request of session `key` whose answer may be big (up to a frame) was taken: its
    /// reader handles no more frames until that answer is written ([`Self::answer_waits`]).
    pub fn big_answer_begun(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.big_answer = true;
            // The reader looks at its waits after this frame.
            self.answers_over = true;
        }
    }

    /// Queues a big-answer request's answer on session `id` (if it is still there): its
    /// reader goes on once the writer has written up to the answer's end.
    pub fn push_big_answer(&mut self, id: SessionId, f: &ServerFrame) {
        let Some(key) = self.resolve(id) else {
            return;
        };
        self.push_frame(key, f);
        self.big_answer_queued(id);
    }

    /// Session `id`'s big answer is queued (or its request was dropped): its reader goes
    /// on once the writer has written what is queued now.
    pub fn big_answer_queued(&mut self, id: SessionId) {
        let Some(key) = self.resolve(id) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(key) {
            s.big_answer = false;
            let ahead = s.out.len() + s.inflight;
            s.answer_unwritten = u32::try_from(ahead).unwrap_or(u32::MAX);
            if s.answer_unwritten == 0 {
                s.wake_drain_waiters();
            }
        }
    }

    /// True while session `key`'s reader waits for a big answer: asked for and not yet
    /// answered, or answered and not yet written (see [`Session::answer_unwritten`]).
    pub fn answer_waits(&self, key: SessionKey) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| s.closing.is_none() && (s.big_answer || s.answer_unwritten > 0))
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
        self.input.release(key);
        // Dropped only behind the LoginResult: a client must see it before anything else.
        if reason.stalled() && s.out.taken() {
            s.out.clear();
        }
        if let Some((code, msg)) = error {
            s.out.push_frame(&reply::error(code, msg, 0));
            self.counters.reject(code);
        }
        let user = s.user.clone();
        let fd = s.fd;
        let left_stored = s.unacked.lowest_store_seq();
        s.wake_writer();
        s.wake_drain_waiters();
        if let Some(id) = self.session_id(key) {
            self.page_reads.drop_session(&user, id);
        }
        self.release_throttles(key);
        self.keep_resumable(key, reason);
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
        if !self.room_waits.is_empty() {
            self.room_waits.retain(|w| w.id.key as usize != key);
            self.local_waits_changed();
        }
        self.users_gen += 1;
        if let Some(list) = self.users.get_mut(&user) {
            let before = list.len();
            list.retain(|&k| k != key);
            if before == 2 && list.len() == 1 {
                self.social.multi_device -= 1;
            }
            let gone = list.is_empty();
            if gone {
                self.users.remove(&user);
                self.stored_floor.remove(&user);
            } else if left_stored > 0 {
                let floor = self.stored_floor.entry(user.clone()).or_insert(u64::MAX);
                *floor = (*floor).min(left_stored);
            }
            let name = String::from_utf8_lossy(&user).into_owned();
            self.presence_left(&name, key);
            if gone {
                self.contacts.release(&name);
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

    /// Gives the payloads this shard's sessions hold by reference (slices of the read
    /// buffers they came in, which they keep whole) copies of their own: those unacked
    /// for [`super::retention::PIN_MAX_US`] and those queued since the last call (the
    /// ticker's), or with `all` every one of them (resident memory over
    /// `--max-memory`).
    pub(crate) fn unpin_payloads(&mut self, all: bool) {
        // (And the WebSocket JSON encodings kept for the next devices.)
        crate::transport::trim_base64_kept(all);
        let before_us = if all {
            u64::MAX
        } else {
            super::now_us().saturating_sub(super::retention::PIN_MAX_US)
        };
        let mut copies = crate::outbuf::Unpinning::default();
        let now = Instant::now();
        for (_, s) in self.sessions.iter_mut() {
            // A batch the peer does not take, holding payloads by reference: its write
            // is cancelled; the writer copies what is left and writes that
            // ([`WriteBatch::compact`]).
            if let Some(p) = s.pinning.as_deref_mut() {
                let waited = p
                    .since
                    .map(|t| now.saturating_duration_since(t).as_micros());
                // (Again each tick until the writer has compacted the batch: a cancel
                // the ring could not take is not lost.)
                if waited.is_some_and(|w| all || w >= u128::from(super::retention::PIN_MAX_US)) {
                    p.cancel = std::mem::take(&mut p.cancel).cancel();
                }
            }
            s.unacked.unpin(before_us, &mut copies);
            if all {
                s.out.unpin_all(&mut copies);
            } else {
                s.out.unpin_aged(&mut copies);
            }
        }
    }

    /// Periodic duties: heartbeats, slow consumers, publishing counters.
    pub fn tick(&mut self, now: Instant) {
        let full = self.store.as_ref().is_some_and(|l| l.handle.disk_full());
        self.bounds.store_full(full);
        let cfg = self.cfg.clone();
        let mut to_close = Vec::new();
        // Payloads held by reference past their age get copies of their own.
        self.unpin_payloads(false);
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
            if s.inflight == 0 && s.out.is_empty() {
                s.release_idle();
            }
            // Resume: Sends taken since the last SendAck (fewer than SEND_ACK_EVERY).
            if s.client_seq_acked != s.client_seq_taken {
                s.wake_writer();
            }
            match s.ping_sent {
                Some(sent) if now.duration_since(sent) >= cfg.heartbeat_timeout => {
                    if unread_bytes(s.fd) > 0 {
                        // The client did send: the router is not reading it (paused
                        // by backpressure, the store, its requests in flight). Alive;
                        // its Pong is behind what it sent.
                        s.heard(now);
                    } else {
                        to_close.push((k, CloseReason::HeartbeatTimeout));
                    }
                }
                None if now.duration_since(s.last_rx) >= cfg.heartbeat_interval => {
                    s.ping_sent = Some(now);
                    let nonce = now_us();
                    s.push_frame(&reply::ping(nonce));
                }
                _ => {}
            }
        }
        self.touch_live_users(now);
        self.presence_tick();
        self.trim_room_cache();
        self.resumable.expire(now, cfg.resume_window);
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
        self.keep_under_max_memory(now);
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
                |_, r| crate::store::warn_unless_full(&r, "marking a user seen"),
            );
        }
    }

    /// Copies the counters into the shared stats.
    pub fn publish(&mut self) {
        use std::sync::atomic::Ordering;
        let in_flight: usize = self
            .flight_in
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .sum();
        let local: usize = self.local_mail.iter().map(|m| m.weight()).sum();
        // (Once a tick: a pass over the sessions.)
        let mut held = Held::default();
        for (_, s) in self.sessions.iter() {
            held.pending += s.pending() as u64;
            held.unacked += s.unacked.len() as u64;
            held.unacked_bytes += s.unacked.bytes() as u64;
        }
        let gauges = crate::stats::Gauges {
            sessions: self.sessions.len() as u64,
            mailbox_depth: (in_flight + local) as u64,
            store_queue_requests: self.store_inflight as u64,
            store_queue_requests_peak: self.store_peak as u64,
            store_queue_bytes: self.store_bytes as u64,
            page_reads_waiting: self.page_reads.waiting() as u64,
            requeue_bytes: self.requeue_bytes as u64,
            rooms_loaded: self.rooms.len() as u64,
            room_members_loaded: self.room_members_loaded as u64,
            pending_bytes: held.pending,
            unacked_messages: held.unacked,
            unacked_bytes: held.unacked_bytes,
            input_bytes: self.input.held() as u64,
        };
        self.stats.publish(&self.counters, gauges);
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
    use super::{LastDest, Session};
    use ringrouter_proto::names::MAX_NAME_BYTES;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layout_keeps_the_hot_fields_in_the_first_line() {
        // What `Sink::one` reads and writes of every member of a room, besides `out`
        // and `unacked`: one line, which `Session::prefetch` asks for.
        assert_eq!(align_of::<Session>(), 64);
        for end in [
            offset_of!(Session, last_seq) + 8,
            offset_of!(Session, oldest_ts_us) + 8,
            offset_of!(Session, inflight) + 8,
            offset_of!(Session, deferred_bytes) + 8,
            offset_of!(Session, writer) + size_of::<Option<std::task::Waker>>(),
            offset_of!(Session, gen) + 4,
            offset_of!(Session, closing) + 1,
            offset_of!(Session, loading) + 1,
        ] {
            assert!(end <= 64, "a hot field ends at {end}");
        }
        // `out` starts the second line; `unacked` follows it.
        assert_eq!(offset_of!(Session, out), 64);
        assert_eq!(
            offset_of!(Session, unacked),
            64 + size_of::<crate::outbuf::OutBuf>()
        );
        // `Retained::prefetch` asks for the line `unacked` starts in and the next: its
        // first 80 bytes (what a delivery touches of it) must end within them.
        assert!(offset_of!(Session, unacked) % 64 + 80 <= 128);
        // What the alignment costs an idle session: at most the line it rounds up to,
        // and a slab slot no bigger than the session (its tag in a niche).
        assert!(size_of::<Session>() <= 704, "{}", size_of::<Session>());
        assert_eq!(size_of::<Option<Session>>(), size_of::<Session>());
    }

    #[test]
    fn last_destination_matches_only_the_same_name() {
        let mut slot = None;
        LastDest::remember(&mut slot, b"bob", 1);
        let d = slot.as_deref().expect("remembered");
        assert_eq!(d.home_of(b"bob"), Some(1));
        for other in [&b"bo"[..], b"bobb", b"Bob", b""] {
            assert_eq!(d.home_of(other), None, "{other:?}");
        }
        // A new destination replaces it, in the same allocation.
        let before = slot.as_deref().map(std::ptr::from_ref);
        LastDest::remember(&mut slot, b"carol", 0);
        assert_eq!(slot.as_deref().map(std::ptr::from_ref), before);
        let d = slot.as_deref().expect("remembered");
        assert_eq!((d.home_of(b"carol"), d.home_of(b"bob")), (Some(0), None));
        // Names longer than a name can be are never remembered.
        let mut slot = None;
        LastDest::remember(&mut slot, &[b'x'; MAX_NAME_BYTES + 1], 0);
        assert!(slot.is_none());
        LastDest::remember(&mut slot, &[b'x'; MAX_NAME_BYTES], 3);
        assert_eq!(
            slot.as_deref()
                .and_then(|d| d.home_of(&[b'x'; MAX_NAME_BYTES])),
            Some(3)
        );
    }
}
