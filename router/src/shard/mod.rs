//! One shard: its state ([`Shard`]), its run loop (`run`), and the decisions it makes
//! (no I/O and no await outside `run`: the connection tasks in `net` and the run loop
//! drive it). Everything here runs on the owning shard's thread only (the state sits
//! in an `Rc<RefCell<Shard>>`).
//!
//! # Ownership
//! A shard owns the sessions of the users whose home it is ([`session`]), their
//! outbound queues, sequence numbers and retained deliveries ([`retention`]), the
//! rooms whose home it is ([`rooms`]), and its outgoing batches to other shards.
//! It shares nothing mutable with the others: what crosses shards is [`mail::Mail`],
//! plus the atomic pause tables ([`pause`]) and pipeline counters.
//!
//! # Modules (each `impl Shard` for its concern)
//! - [`session`]: sessions, registering, close reasons, closing, heartbeats.
//! - [`mail`]: every cross-shard message and its one match.
//! - [`pause`]: pause tables and the pause/resume bookkeeping.
//! - [`retention`]: what a session keeps until acked, and the messages it defers.
//! - [`resume`]: numbered Sends (client_seq, SendAck), resume tokens, ended sessions kept
//!   for `--resume-window`.
//! - [`delivery`]: delivering to sessions, offline queues, journaling, login backlog.
//! - [`answer`]: SendResults for messages that went through other shards or the store.
//! - [`api`]: outcomes of messages published through the HTTP API.
//! - [`input`]: the budget for big frames being read (`--max-input-bytes`).
//! - [`memory`]: the memory ceiling (`--max-memory`).
//! - [`store_link`]: store round trips (answers come back as [`mail::Mail::Stored`]).
//! - [`rooms`]: rooms on their home shard.
//! - [`contacts`]: contact lists on their users' home shard.
//! - [`presence`]: devices' presence, the users' presence and its notices to contacts.
//! - `run`: the run loop: consumer, flusher, ticker, shutdown drain.
//!
//! Client frames are handled in `crate::frames`, connection I/O in `crate::net`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use ringrouter_proto::reply;
use ringrouter_proto::v1::ServerFrame;
use ringrouter_proto::Status;

use crate::config::Config;
use crate::stats::{Counters, ShardStats};

pub mod adds;
pub mod answer;
pub mod api;
pub mod blocks;
pub mod contacts;
pub mod delivery;
pub mod history;
pub mod input;
pub mod mail;
pub mod memory;
pub mod pause;
pub mod presence;
pub mod requeue;
pub mod resume;
pub mod retention;
pub mod rooms;
pub(crate) mod run;
pub mod session;
pub mod social;
pub mod store_link;
#[cfg(test)]
mod tests;

pub use crate::maps::{NameMap, NameSet};
pub use mail::{Handover, Mail, Routed};
pub use pause::{pause_tables, PauseTable, PauseTables, PIPELINE_HIGH_WATER};
pub use session::{
    CloseReason, Flow, LastDest, PinningWrite, RegisterError, Session, SessionId, SessionKey,
    CLOSE_GRACE,
};
use store_link::StoreLink;

/// Bits of a message id below its shard's: the counter. The shard + 1 takes the top 10
/// (so at most [`crate::config::MAX_SHARDS`] shards).
pub(crate) const MSG_ID_SHARD_SHIFT: u32 = 54;

/// Most mails in one batch between shards: a batch is sealed when full, the rest of the
/// loop turn's mail goes in the next. Batches come back emptied and are filled again, so
/// with one size they never grow: a batch that grew with its turn (to 70 000 mails of 168
/// bytes at 256 × 64 B) was copied into fresh memory at every doubling, and the return
/// ring kept up to 512 of any size (BENCHMARKS.md, seventeenth pass).
pub const BATCH_MAILS: usize = 1024;

/// Emptied batches kept for reuse per shard (each [`BATCH_MAILS`] mails): enough for
/// a full pipeline ([`pause::PIPELINE_HIGH_WATER`] of 64-byte messages, which weigh 128),
/// so that a busy turn allocates none. With 16, 256 × 64 B ran slower than with one
/// batch a turn (medians 3.07M against 3.37M msgs/s, 5 alternating runs): most of a turn's
/// 70 batches were allocated and freed again. An idle shard frees them
/// ([`Shard::drop_spare_batches`]).
const SPARE_BATCHES: usize = pause::PIPELINE_HIGH_WATER / (128 * BATCH_MAILS);

/// 2026-01-01T00:00:00Z, in nanoseconds since the Unix epoch.
const MSG_ID_EPOCH_NS: u128 = 1_767_225_600_000_000_000;

/// Where a shard's message-id counter starts: 64 ns ticks since 2026-01-01 (54 bits
/// last until 2062). Clients dedupe by (sender, msg_id), and a counter that started at
/// 1 at every start gave a message sent after a restart the id of one sent before it:
/// a reconnecting client that still remembered the old one dropped the new one as a
/// copy. Seeded from the clock, ids stay unique across restarts while a shard issues
/// fewer than 15.6M ids a second on average (one per tick; a shard does a few million
/// at most) and the clock does not step back by more than the restart took.
pub(crate) fn msg_id_clock() -> u64 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    if ns < MSG_ID_EPOCH_NS {
        tracing::warn!(
            "the clock is before 2026-01-01: message ids start at 1 and may repeat those of \
             an earlier start (clients dedupe by sender and msg_id)"
        );
    }
    let ticks = ns.saturating_sub(MSG_ID_EPOCH_NS) >> 6;
    // (At least 1: 0 is no id.)
    (ticks as u64 & ((1 << MSG_ID_SHARD_SHIFT) - 1)).max(1)
}

/// A session's room message waiting for room in the store's queue (see
/// [`Shard::room_send_may_go`]).
#[derive(Debug)]
pub struct RoomWait {
    /// The session.
    pub id: SessionId,
    /// When its message first found no room.
    pub since: std::time::Instant,
    /// Store answers came in since it last tried: its reader may try again.
    pub retry: bool,
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
    /// Bumped whenever `users` changes (a session registered or ended here): what
    /// `fan_cache` resolved, and the session a `LastDest` found, are valid while it has
    /// not moved.
    users_gen: u64,
    /// The bounds every delivery checks, from `cfg`.
    bounds: delivery::Bounds,
    /// Room member lists resolved to their sessions here (see `rooms::FanResolved`).
    fan_cache: rooms::FanCache,
    /// The outgoing batch being filled, per target shard.
    pub outbox: Vec<Vec<Mail>>,
    /// Full batches waiting for the flusher, oldest first, with their weights, per target
    /// shard (see [`BATCH_MAILS`]).
    outbox_sealed: Vec<VecDeque<(Vec<Mail>, usize)>>,
    /// Weight of the batch being filled, per target shard.
    outbox_cur: Vec<usize>,
    /// Emptied batches the other shards gave back, to fill again.
    spare_batches: Vec<Vec<Mail>>,
    /// Mails a batch holds when sealed: [`BATCH_MAILS`] (the fuzzing model takes fewer, so
    /// that its turns seal batches).
    batch_mails: usize,
    /// Items in `outbox` and `outbox_sealed`.
    pub outbox_len: usize,
    /// Per target shard: sender session and recipient of the last Deliver put in
    /// its outbox batch (what the next one may elide); cleared when the batch leaves.
    pub outbox_last: Vec<Option<(SessionId, Bytes)>>,
    /// Every shard's pause table (this one's at index `id`).
    pub pause: PauseTables,
    /// Recipient and sender of the previous Deliver of the batch being handled.
    batch_to: Bytes,
    batch_from: Bytes,
    /// Weight (see [`Mail::weight`]) waiting in `outbox` and `outbox_sealed`, per target shard.
    pub outbox_bytes: Vec<usize>,
    /// Weight pushed into the ring to each target shard and not yet processed there.
    pub flight_out: Vec<Arc<AtomicUsize>>,
    /// Per inbound ring (index as in the Inbox): the sender's `flight_out` counter.
    pub flight_in: Vec<Arc<AtomicUsize>>,
    /// The task that moves `outbox` into the rings.
    pub flusher: Option<Waker>,
    /// Readers waiting for `outbox` to drain.
    pub outbox_waiters: Vec<Waker>,
    /// Mails put in the outboxes to other shards so far (wrapping): whether a chunk of a
    /// session's did.
    pub posted: u32,
    /// The sessions a chunk of which put mail in the outboxes to other shards since the
    /// pipeline was last found over its mark (`pipe_was_full`): they are not read past it
    /// (`Shard::pipe_lane_open`). Emptied when it is found under it.
    pub pipe_posted: std::collections::HashSet<SessionKey>,
    /// Whether the pipeline was over its mark when last looked at.
    pub pipe_was_full: bool,
    /// Readers waiting for the store requests in flight to fall under their mark.
    pub store_waiters: Vec<Waker>,
    /// Readers of sessions with no store work in flight waiting for the store queue to
    /// come back within its reserve (`Shard::poll_session_intake`).
    pub lane_waiters: Vec<Waker>,
    /// Tasks waiting for the last session and connection to end (shutdown).
    pub idle_waiters: Vec<Waker>,
    /// Connections accepted here that have not become sessions yet.
    pub prelogin: usize,
    next_gen: u32,
    pub(crate) next_msg_id: u64,
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
    /// Store requests answered (the shutdown drain's sign of progress).
    pub store_answers: u64,
    /// What those requests count for (payloads plus a fixed overhead each), bounded by
    /// `max_store_queue_bytes`.
    pub store_bytes: usize,
    /// A room message held in the rings has waited [`run`]'s `HELD_MAX` for room in the
    /// store's queue (`Shard::store_takes`): until it goes, only sessions with nothing in
    /// the store's queue are read, and only until [`YIELD_LANE_BUDGET`] requests were
    /// made since it began (`yield_from`), so that the shard's own sessions cannot keep
    /// the queue too full for it, while those that ask nothing of the store (a Ping, a
    /// DM to someone online) go on being answered.
    pub store_yield: bool,
    /// Sessions whose room message waits for room in the store's queue
    /// ([`Shard::room_send_may_go`]), at most one entry each, and their readers' wakers:
    /// woken to try again as store answers come in.
    pub room_waits: Vec<RoomWait>,
    /// The wakers of the readers in `room_waits`, and of the HTTP API's messages to rooms
    /// homed here that wait the same way (`Shard::poll_api_room_send`).
    pub room_wakers: Vec<Waker>,
    /// The HTTP API's messages to rooms homed here that wait the same way, a ticket each
    /// and since when: they count for `local_yield` as sessions' do (one request at a
    /// time per HTTP connection: as many as those at most).
    pub api_room_waits: Vec<(u64, std::time::Instant)>,
    /// The last ticket given in `api_room_waits`.
    pub api_room_ticket: u64,
    /// Rooms homed here whose first queued message waits for room in the store's queue
    /// (a message the room's work released all at once, after a request or its load,
    /// made its requests regardless: 100 sent while a Join kept the room busy put
    /// 200 000 requests in the queue): pumped again as store answers come in.
    pub rooms_waiting: Vec<Bytes>,
    /// Since when none of `rooms_waiting` made progress.
    pub rooms_waiting_since: Option<std::time::Instant>,
    /// A room message of this shard's own (a session's in `room_waits`, the HTTP API's in
    /// `api_room_waits`, a room's in `rooms_waiting`) has waited `store_link::LOCAL_WAIT_MAX` for room in the store's
    /// queue: the readers yield as to held ring mail (`store_yield`), except the waiting
    /// sessions' own, so that others' store work cannot keep it waiting for ever.
    pub local_yield: bool,
    /// The most store requests in flight at once (`store_inflight`) so far.
    pub store_peak: usize,
    /// Store requests made so far (a count that only grows: see `store_yield`).
    pub store_made: u64,
    /// `store_made` when `store_yield` began.
    pub yield_from: u64,
    /// Each shard's queue of mail from outside the rings (its store answers, and
    /// connections handed over to it): taken in every turn, even while its store
    /// requests are over their mark and its rings wait (`shard::run`). Empty in unit tests.
    pub answer_queues: Vec<std::sync::Arc<mail::MailQueue>>,
    /// Page reads (History, ListConversations, MarkRead, ListRooms, ListUsers) in the
    /// store's queue, and those waiting for their turn (`store_link::PageReads`).
    pub page_reads: store_link::PageReads,
    /// DeleteAccount and DeleteRoom requests in the store's queue (one at most), and those
    /// waiting for their turn (`store_link::PageReads`).
    pub deletions: store_link::PageReads,
    /// Ended sessions' unacked messages on their way to the store (`shard::requeue`).
    pub requeues: requeue::Requeues,
    /// Backlog pages of users whose requeues wait, to be read once those are handed to
    /// the store (`Shard::load_behind_requeues`): session, user, from seq.
    pub requeue_loads: Vec<(session::SessionId, String, u64)>,
    /// What `requeues` count for (`Requeue::weight`), against `max_requeue_bytes`.
    pub requeue_bytes: usize,
    /// What the readers hold of frames still arriving (`shard::input`).
    pub input: input::InputBudget,
    /// The memory ceiling's state (`shard::memory`).
    pub memory: memory::MemoryWatch,
    /// Room passwords' share of the hashing pool and wrong guesses per user and room
    /// (the router's, shared by every shard; each shard has one of its own until the
    /// router gives it the shared one).
    pub(crate) room_passwords: std::sync::Arc<crate::net::signup::RoomPasswords>,
    /// Members of the rooms in `rooms`, summed when the ticker trims them (see
    /// `Shard::trim_room_cache`).
    pub room_members_loaded: usize,
    /// Room work parked behind a store round trip: messages and requests queued on a busy
    /// room of this shard, or behind a user's Create/Join in flight. Counts with
    /// `store_bytes` against `max_store_queue_bytes`.
    pub parked_bytes: usize,
    /// Senders on other shards paused while `parked_bytes` is over its bound.
    pub parked_throttled: Vec<SessionId>,
    /// Mail this shard posted to itself (a room homed here, a store completion).
    pub local_mail: Vec<Mail>,
    /// An answer took a session past `max_pending_bytes`, or a request took it to
    /// `max_requests_in_flight` (see `net::session`: the reader then checks its own
    /// session's budget).
    pub answers_over: bool,
    /// The session whose request is being handled: the store requests made meanwhile
    /// count against its `max_requests_in_flight` (see `store_link`).
    pub(crate) requester: Option<SessionId>,
    /// The session whose Send is being handled: the store requests made meanwhile count
    /// in its `store_sends` (see `store_link`).
    pub(crate) sender: Option<SessionKey>,
    /// What the blockers lookup of the frame being handled found, if it waited for one
    /// (`shard::blocks`).
    pub(crate) looked_up: Option<blocks::Found>,
    /// Lookups answered whose frames are still to be handled again, by session (at most
    /// one each; those of sessions that ended go with the next answer).
    pub(crate) blocker_answers: Vec<(SessionId, Option<u32>, blocks::Found)>,
    /// The client_seq the session had taken before the Send being handled (given back
    /// if it waits for a lookup of blockers: `frames::send`).
    pub(crate) seq_taken_before: u64,
    /// Payload bytes of the Sends handled since a reader took its current chunk (see
    /// `net::session`: a chunk mostly of other bytes makes its session copy payloads).
    pub chunk_payload: usize,
    /// Users homed here whose DeleteAccount is under way (one at a time: another one
    /// meanwhile is refused CONFLICT, not run again).
    pub(crate) deleting: NameSet<String>,
    /// This shard's doorbell (wakes its mailbox consumer).
    pub bell: Option<Arc<crate::mailbox::Doorbell>>,
    /// Rooms homed here (loaded, or being looked up).
    pub rooms: NameMap<Bytes, rooms::RoomSlot>,
    /// Per user with live sessions here: the lowest store seq a closed device of the user
    /// left unacked while another device stayed. Acks of the others do not remove it or
    /// what follows; the next backlog delivers it again. Dropped when the user's last
    /// session ends or a new one starts its backlog.
    pub stored_floor: NameMap<Bytes, u64>,
    /// When the users with live sessions here were last marked seen in the store (open
    /// and jwt auth: a user not seen for `forget_idle_users_after` is forgotten).
    pub touched_at: Instant,
    /// Users homed here with a Create or Join in flight, and their next ones.
    pub room_quota: NameMap<Bytes, std::collections::VecDeque<rooms::OwnItem>>,
    /// How fast each user homed here adds others to rooms (`max_member_adds_per_minute`).
    pub add_rate: adds::AddRate,
    /// How fast each user homed here changes its contact list
    /// (`max_contact_ops_per_minute`).
    pub contact_rate: adds::AddRate,
    /// What each user's live-only frames into the rooms here may still deliver
    /// (`room_live_per_user_per_second`; None: no limit but the rooms').
    pub(crate) live_rate: Option<crate::rate::Buckets<Bytes>>,
    /// What each user's typing indicators and read receipts to users homed here may still
    /// deliver (`direct_live_per_user_per_second`; None: no limit).
    pub(crate) direct_live_rate: Option<crate::rate::Buckets<Bytes>>,
    /// HTTP API requests waiting for the outcome of a message they published.
    pub api_waiters: api::ApiWaiters,
    /// The social layer's state of the users homed here (see `social`).
    pub social: social::Social,
    /// History appends of the current loop turn ([`history`]).
    pub hist: history::HistBuf,
    /// Contact lists of users homed here ([`contacts`]).
    pub contacts: contacts::Contacts,
    /// Users homed here with a contact op in flight, and their next ones (see
    /// [`contacts::Turn`]).
    pub contact_turns: NameMap<String, std::collections::VecDeque<contacts::Waiting>>,
    /// Lists of users homed here read at the page-read gate for another user's op, not
    /// answered yet ([`contacts::ContactReads`]).
    pub contact_reads: contacts::ContactReads<contacts::ContactWaiter>,
    /// Presence of users homed here ([`presence`]).
    pub presence: presence::Presences,
    /// Sessions that ended and may be resumed ([`resume`]).
    pub resumable: resume::Resumable,
}

/// The home shard of a name (defined in proto, shared with the clients).
pub use ringrouter_proto::home_shard;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
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
        let store_queue_bytes = cfg.max_store_queue_bytes;
        let room_passwords = Arc::new(crate::net::signup::RoomPasswords::new(&cfg));
        let max_input_bytes = cfg.max_input_bytes;
        let live_rate = rooms::live_rate(&cfg, false);
        let direct_live_rate = rooms::live_rate(&cfg, true);
        Shard {
            id,
            n,
            bounds: delivery::Bounds::of(&cfg),
            cfg,
            sessions: Slab::new(),
            users: NameMap::default(),
            users_gen: 0,
            fan_cache: rooms::FanCache::default(),
            outbox: (0..n).map(|_| Vec::new()).collect(),
            outbox_sealed: (0..n).map(|_| VecDeque::new()).collect(),
            outbox_cur: vec![0; n],
            spare_batches: Vec::new(),
            batch_mails: BATCH_MAILS,
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
            posted: 0,
            pipe_posted: std::collections::HashSet::new(),
            pipe_was_full: false,
            store_waiters: Vec::new(),
            lane_waiters: Vec::new(),
            idle_waiters: Vec::new(),
            prelogin: 0,
            next_gen: 1,
            next_msg_id: msg_id_clock(),
            counters: Counters::default(),
            stats,
            shutting_down: false,
            store: None,
            store_inflight: 0,
            store_answers: 0,
            page_reads: store_link::PageReads::default(),
            deletions: store_link::PageReads::default(),
            store_bytes: 0,
            store_yield: false,
            room_waits: Vec::new(),
            room_wakers: Vec::new(),
            api_room_waits: Vec::new(),
            api_room_ticket: 0,
            rooms_waiting: Vec::new(),
            rooms_waiting_since: None,
            local_yield: false,
            store_peak: 0,
            store_made: 0,
            yield_from: 0,
            answer_queues: Vec::new(),
            requeues: requeue::Requeues::default(),
            requeue_loads: Vec::new(),
            requeue_bytes: 0,
            input: input::InputBudget::new(max_input_bytes),
            memory: memory::MemoryWatch::default(),
            room_passwords,
            room_members_loaded: 0,
            parked_bytes: 0,
            parked_throttled: Vec::new(),
            local_mail: Vec::new(),
            answers_over: false,
            requester: None,
            sender: None,
            looked_up: None,
            blocker_answers: Vec::new(),
            seq_taken_before: 0,
            chunk_payload: 0,
            deleting: NameSet::default(),
            bell: None,
            hist: history::HistBuf::new(store_queue_bytes),
            resumable: resume::Resumable::default(),
            rooms: NameMap::default(),
            stored_floor: NameMap::default(),
            touched_at: Instant::now(),
            room_quota: NameMap::default(),
            add_rate: adds::AddRate::default(),
            contact_rate: adds::AddRate::default(),
            live_rate,
            direct_live_rate,
            api_waiters: api::ApiWaiters::default(),
            social: social::Social::default(),
            contacts: contacts::Contacts::default(),
            contact_turns: NameMap::default(),
            contact_reads: contacts::ContactReads::default(),
            presence: presence::Presences::default(),
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

    /// Queues a frame on a session and wakes its writer.
    pub fn push_frame(&mut self, key: SessionKey, f: &ServerFrame) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.push_frame(f);
        let (pending, open) = (s.pending(), s.closing.is_none());
        if pending > self.cfg.max_pending_bytes {
            // Its reader stops handling the frames of the chunk it is in, and reads no
            // more until the queue drains.
            self.answers_over = true;
            s.answered_over = true;
        }
        if open && pending > self.cfg.hard_pending_bytes() {
            // Answers to requests it pipelined and does not read: past the hard cap it
            // is closed as a slow consumer, as deliveries would close it, rather than
            // queuing answers without end.
            self.close_overflowed(Some(key));
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
        self.counters.reject(code);
        self.push_frame(key, &reply::error(code, reason, request_id));
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
        let w = mail.weight();
        self.posted = self.posted.wrapping_add(1);
        self.outbox_bytes[to] += w;
        self.outbox_cur[to] += w;
        self.outbox[to].push(mail);
        self.outbox_len += 1;
        if self.outbox[to].len() >= self.batch_mails {
            self.seal_batch(to);
        }
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    /// Ends the batch being filled for shard `to` (it waits for the flusher) and starts
    /// another in a spare one.
    fn seal_batch(&mut self, to: usize) {
        let next = self
            .spare_batches
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.batch_mails));
        let full = std::mem::replace(&mut self.outbox[to], next);
        let weight = std::mem::take(&mut self.outbox_cur[to]);
        self.outbox_sealed[to].push_back((full, weight));
        // The next Deliver names its users again: elided names refer to the previous
        // Deliver of the same batch.
        self.outbox_last[to] = None;
    }

    /// The next batch for shard `to`'s ring, oldest first, and its weight: a sealed one,
    /// else the one being filled (sealed; a short one is moved into a Vec of its size).
    /// The caller pushes it into the ring and counts it out with [`Shard::batch_sent`],
    /// or gives it back with [`Shard::batch_unsent`].
    pub fn next_batch(&mut self, to: usize) -> Option<(Vec<Mail>, usize)> {
        if self.outbox_sealed[to].is_empty() {
            let cur = &mut self.outbox[to];
            if cur.is_empty() {
                return None;
            }
            if cur.len() < self.batch_mails / 4 {
                // A short batch leaves in a Vec of its own size, and the one being
                // filled stays: a ring never holds a full-size allocation for a few
                // mails (the ring of a stalled shard fills with one batch a turn).
                let mut batch = Vec::with_capacity(cur.len());
                batch.append(cur);
                let weight = std::mem::take(&mut self.outbox_cur[to]);
                self.outbox_last[to] = None;
                return Some((batch, weight));
            }
            self.seal_batch(to);
        }
        self.outbox_sealed[to].pop_front()
    }

    /// A batch of [`Shard::next_batch`] of `len` mails and `weight` went into shard
    /// `to`'s ring.
    pub fn batch_sent(&mut self, to: usize, len: usize, weight: usize) {
        self.outbox_len -= len;
        self.outbox_bytes[to] -= weight;
        self.flight_out[to].fetch_add(weight, Ordering::AcqRel);
    }

    /// A batch of [`Shard::next_batch`] did not fit in shard `to`'s ring: first in line
    /// again.
    pub fn batch_unsent(&mut self, to: usize, batch: Vec<Mail>, weight: usize) {
        self.outbox_sealed[to].push_front((batch, weight));
    }

    /// Every mail waiting for shard `to`'s ring, oldest first.
    pub fn outbox_mails(&self, to: usize) -> impl Iterator<Item = &Mail> {
        let sealed = self.outbox_sealed[to].iter().flat_map(|(b, _)| b.iter());
        sealed.chain(self.outbox[to].iter())
    }

    /// Whether the weights kept for shard `to`'s batches (the one being filled, each
    /// sealed one) are their mails' (a check for the fuzzing model).
    pub fn outbox_weights_hold(&self, to: usize) -> bool {
        let sum = |b: &[Mail]| b.iter().map(Mail::weight).sum::<usize>();
        self.outbox_cur[to] == sum(&self.outbox[to])
            && self.outbox_sealed[to].iter().all(|(b, w)| sum(b) == *w)
    }

    /// Seals batches at `n` mails instead of [`BATCH_MAILS`] (the fuzzing model).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn set_batch_mails(&mut self, n: usize) {
        self.batch_mails = n.max(1);
    }

    /// Frees the spare batches (an idle shard: see `shard::run::ticker`).
    pub fn drop_spare_batches(&mut self) {
        self.spare_batches = Vec::new();
    }

    /// Keeps an emptied batch another shard gave back, for the next ones (past
    /// [`SPARE_BATCHES`] it is freed).
    pub fn spare_batch(&mut self, mut batch: Vec<Mail>) {
        if self.spare_batches.len() < SPARE_BATCHES && batch.capacity() >= self.batch_mails {
            batch.clear();
            self.spare_batches.push(batch);
        }
    }

    /// Queues a frame on session `to`, on this shard or another.
    pub fn send_to_session(&mut self, to: SessionId, frame: ServerFrame) {
        self.send_answer(to, frame, None);
    }

    /// Queues the answer to a request on session `to`, on this shard or another, and
    /// hands the request's count against `max_requests_in_flight` back after it: from
    /// another shard the count travels with the answer, so the asker's reader is not let
    /// go (by a count handed back through the store's queue) while answers are still on
    /// their way in the mailbox, to be overtaken by what it reads next.
    pub fn send_answer(
        &mut self,
        to: SessionId,
        frame: ServerFrame,
        inflight: Option<mail::InFlight>,
    ) {
        if to.shard as usize == self.id {
            if let Some(k) = self.resolve(to) {
                self.push_frame(k, &frame);
            }
            drop(inflight);
        } else {
            self.post(
                to.shard as usize,
                Mail::Reply {
                    to,
                    frame: Box::new(frame),
                    inflight,
                },
            );
        }
    }
}
