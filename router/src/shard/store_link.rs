//! The way from a shard to the store and back.
//!
//! # Store round trips
//! A shard never waits for the disk. [`Shard::store_req`] queues a request on the
//! storage thread; its answer comes back as [`Mail::Stored`] (a continuation) posted to the
//! shard's [`MailQueue`] (ringing the shard's doorbell), and the consumer handles it
//! like any other mail, on the shard thread with the shard borrowed. A user's requests
//! are answered in the order they were made, which is what keeps its messages in order
//! across the store (appends to offline queues may be passed by other users' requests:
//! `store::worker::lanes`).
//!
//! The answers are continuations (closures), not a typed enum: each request keeps its
//! context beside the code that uses it (rooms chain several round trips), and the
//! store is off the hot path of a live delivery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use ringrouter_proto::Status;

use super::mail::{InFlight, Mail, MailQueue};
use super::session::{SessionId, SessionKey};
use super::Shard;
use crate::config::DurabilityMode;
use crate::maps::NameMap;
use crate::store::{StoreError, StoreHandle, StoreResult};

/// Store requests one shard may have outstanding before its readers pause (besides
/// `max_store_queue_bytes`, which bounds their bytes).
pub const STORE_HIGH_WATER: usize = 16 * 1024;
/// Past the store queue's bounds, a reserve of 1/this of each (requests and bytes) is
/// kept for sessions with no store request in flight (see [`Shard::poll_session_intake`]).
pub const STORE_RESERVE: usize = 8;

/// While a held room message waits for room in the store's queue (`Shard::store_yield`),
/// the requests sessions with nothing in flight may still make, all of them together,
/// before no session is read until it goes: the reserve's worth. Bounded so, they cannot
/// keep the queue too full for it, whatever the number of such sessions.
pub const YIELD_LANE_BUDGET: u64 = (STORE_HIGH_WATER / STORE_RESERVE) as u64;

/// How long a room message of the shard's own may wait for room in the store's queue
/// before the readers yield to it (`Shard::local_yield`), as to held ring mail.
pub const LOCAL_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// What a store request counts for in `max_store_queue_bytes` besides its payloads.
const STORE_REQ_OVERHEAD: usize = 128;

/// Carries a store request's continuation to the shard that made it: called, or
/// dropped uncalled (the store refused or lost the request), it queues the continuation
/// on the shard's [`MailQueue`] exactly once.
struct Completion<T, F: FnOnce(&mut Shard, StoreResult<T>) + Send + 'static> {
    then: Option<F>,
    /// What the request counts for in the shard's `store_bytes`.
    bytes: usize,
    /// The session whose request this is (see [`Shard::requester`]).
    requester: Option<SessionId>,
    /// The session whose Send made it (see [`Shard::sender`]), when no requester.
    sender: Option<SessionId>,
    done: Arc<MailQueue>,
    _answer: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static, F: FnOnce(&mut Shard, StoreResult<T>) + Send + 'static> Completion<T, F> {
    fn complete(&mut self, r: StoreResult<T>) {
        if let Some(then) = self.then.take() {
            let (bytes, who) = (self.bytes, (self.requester, self.sender));
            self.done.push(Mail::Stored(Box::new(move |sh: &mut Shard| {
                sh.store_answered(bytes, who, |sh| then(sh, r));
            })));
        }
    }
}

impl<T, F: FnOnce(&mut Shard, StoreResult<T>) + Send + 'static> Drop for Completion<T, F> {
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            let (bytes, who) = (self.bytes, (self.requester, self.sender));
            self.done.push(Mail::Stored(Box::new(move |sh: &mut Shard| {
                sh.store_answered(bytes, who, |sh| then(sh, Err(StoreError::Closed)));
            })));
        }
    }
}

/// The store as one shard sees it.
pub struct StoreLink {
    /// The storage thread.
    pub handle: StoreHandle,
    /// Where this shard's store answers land.
    pub done: Arc<MailQueue>,
}

/// The SendResult status for a failed store request.
pub fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound => Status::NotFound,
        StoreError::Full => Status::RateLimited,
        StoreError::Closed | StoreError::DiskFull | StoreError::Deleting => Status::Unavailable,
        StoreError::Invalid(_) => Status::BadRequest,
        StoreError::Conflict => Status::Conflict,
        StoreError::Io(_) => Status::Internal,
    }
}

impl Shard {
    /// True when this shard has a store (always, in a running router).
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// True while the store's disk is full (`store::disk`): no new offline messages. As
    /// of the shard's last tick, as the deliveries' check (`delivery::Bounds::full`).
    pub fn store_disk_full(&self) -> bool {
        self.bounds.full()
    }

    /// True in `sync` durability: every message goes through the store first.
    pub fn journaled(&self) -> bool {
        self.store.is_some() && self.cfg.durability == DurabilityMode::Sync
    }

    /// What this shard has given the store so far, as a mark that moves with every
    /// request and every record put behind waiting requeues: a reader or a mail batch
    /// looks at [`Shard::store_full`] again only once it moved (a plain message moves
    /// it not).
    #[inline]
    pub fn store_work(&self) -> (usize, usize) {
        (self.store_inflight, self.requeue_bytes)
    }

    /// True when not even a session with nothing in the store's queue may be read: the
    /// queue, or the requeues, are past their bounds by the reserve kept for such
    /// sessions ([`Shard::poll_session_intake`]).
    pub fn store_over_reserve(&self) -> bool {
        let (bytes, requeue) = (self.cfg.max_store_queue_bytes, self.cfg.max_requeue_bytes);
        // (A room message waiting for room, `store_yield`: sessions with nothing in
        // flight are read until they made the lane's budget of requests, or they could
        // keep the queue too full for it for ever.)
        ((self.store_yield || self.local_yield)
            && self.store_made - self.yield_from >= YIELD_LANE_BUDGET)
            || self.store_inflight >= STORE_HIGH_WATER + STORE_HIGH_WATER / STORE_RESERVE
            || self.store_bytes >= bytes.saturating_add(bytes / STORE_RESERVE)
            || self.requeue_bytes >= requeue.saturating_add(requeue / STORE_RESERVE)
    }

    /// Whether `mail` is handled now. A room message for members offline here is a store
    /// request per member: taken at the bound's edge, one of a room of 10 000 took the
    /// queue past the reserve kept for sessions with nothing in flight
    /// ([`Shard::store_over_reserve`]) again after every drain, so that during a burst
    /// of them no such session was read, its Ping, Logout or close included. So such a
    /// mail waits until its requests fit under the bound (or the queue is under a
    /// quarter of it: a mail bigger than the bound goes then; its cost is not looked at).
    /// Its cost is what it asks of the store: the members with no session here (every
    /// member when journaled), so a big room whose members are mostly online is not
    /// held back for the ones that are.
    pub fn store_takes(&mut self, mail: &Mail) -> bool {
        if self.store_queue_full() {
            return false;
        }
        if self.store_inflight <= STORE_HIGH_WATER / 4 {
            return true;
        }
        // At most: a request per member for room messages and notices (none for
        // live-only ones: typing, receipts), else one; the members with no session
        // here are counted only when that does not fit.
        use super::mail::Live;
        let inflight = self.store_inflight;
        let fits = |cost: usize| cost <= 1 || inflight + cost <= STORE_HIGH_WATER;
        match mail {
            Mail::RoomDeliver(f) if f.live == Live::No => {
                fits(f.users.len()) || self.fan_store_fits(&f.users, fits)
            }
            Mail::RoomNotice(n) => fits(n.users.len()),
            Mail::RoomSend(r) if r.live == Live::No => self.room_send_fits(&r.room),
            _ => true,
        }
    }

    /// [`Shard::store_takes`] for a message to room `room`, homed here, handled now.
    pub(crate) fn room_send_fits(&mut self, room: &[u8]) -> bool {
        if self.store_queue_full() {
            return false;
        }
        let inflight = self.store_inflight;
        if inflight <= STORE_HIGH_WATER / 4 {
            return true;
        }
        let fits = |cost: usize| cost <= 1 || inflight + cost <= STORE_HIGH_WATER;
        // (And one for the room's history.)
        fits(self.rooms.get(room).map_or(1, |s| 1 + s.members()))
            || self
                .local_fan_of(room)
                .is_none_or(|users| self.fan_store_fits(&users, |n| fits(1 + n)))
    }

    /// Whether a message of session `key` to room `room` waits ([`Shard::room_send_may_go`]
    /// if the room is homed here; nothing is looked up while the store's queue is under a
    /// quarter of its bound and no such message waits).
    #[inline]
    pub fn room_send_waits(&mut self, key: SessionKey, room: &[u8]) -> bool {
        if self.room_waits.is_empty()
            && self.store_inflight <= STORE_HIGH_WATER / 4
            && !self.store_queue_full()
        {
            return false;
        }
        self.home(room) == self.id && !self.room_send_may_go(key, room)
    }

    /// Whether a message of session `key` to room `room`, homed here, is handled now: as
    /// a room message from another shard waits in its ring ([`Shard::store_takes`]), it
    /// waits, its frame handled again, until its requests fit in the store's queue.
    /// Handled as it came, each of a loop of them to a room of 10 000 offline members
    /// took the queue 5 000 requests past its bound, past the reserve kept for sessions
    /// with nothing in flight, so that no other session of the shard was read (Pings
    /// included) while the store was behind: for up to 1.2 s. Its reader waits for the
    /// store's next answers ([`Shard::poll_room_wait`]); past [`LOCAL_WAIT_MAX`] the
    /// others yield to it (`Shard::local_yield`), its own reader excepted.
    pub fn room_send_may_go(&mut self, key: SessionKey, room: &[u8]) -> bool {
        let Some(id) = self.session_id(key) else {
            return true;
        };
        let at = self.room_waits.iter().position(|w| w.id == id);
        let refused = |s: &Shard| {
            let user = &s.sessions[key].user;
            s.rooms.get(room).is_some_and(|r| r.refuses(user))
        };
        if refused(self) || self.room_send_fits(room) {
            if let Some(at) = at {
                self.room_waits.swap_remove(at);
                self.local_waits_changed();
            }
            return true;
        }
        match at {
            // (Tried again for nothing: it waits for the next answers.)
            Some(at) => self.room_waits[at].retry = false,
            None => self.room_waits.push(super::RoomWait {
                id,
                since: std::time::Instant::now(),
                retry: false,
            }),
        }
        false
    }

    /// Whether the HTTP API's message to room `room` may be handled now: `Pending`, with
    /// `waker` woken by the store's next answers, while the room is homed here and its
    /// store requests do not fit (see [`Shard::room_send_may_go`]). While it waits it
    /// holds `ticket` in `api_room_waits`: past [`LOCAL_WAIT_MAX`] the readers yield to
    /// it (`Shard::local_yield`), so that others' store work cannot keep it waiting past
    /// `--http-api-timeout` (under a flood of offline DMs, 2 publishes in 5 to a room of
    /// 9 999 offline members were answered 503). The caller gives the ticket back with
    /// [`Shard::api_room_wait_done`] if it stops waiting before `Ready`.
    pub fn poll_api_room_send(
        &mut self,
        room: &[u8],
        waker: &std::task::Waker,
        ticket: &mut Option<u64>,
    ) -> std::task::Poll<()> {
        if self.home(room) != self.id || self.room_send_fits(room) {
            if let Some(t) = ticket.take() {
                self.api_room_wait_done(t);
            }
            return std::task::Poll::Ready(());
        }
        if ticket.is_none() {
            self.api_room_ticket += 1;
            *ticket = Some(self.api_room_ticket);
            let since = std::time::Instant::now();
            self.api_room_waits.push((self.api_room_ticket, since));
        }
        let max = self.waiters_max();
        super::pause::wait_in(&mut self.room_wakers, waker, max);
        std::task::Poll::Pending
    }

    /// The intake of session `key` while its room message waits for room in the store's
    /// queue ([`Shard::room_send_may_go`]): `None` if it does not wait; else `Pending`
    /// until store answers came in since it last tried, then as any reader's but past
    /// the readers' yield (`store_yield`, `local_yield`: it would wait on itself). The
    /// try is kept until it is made: a wait on the queue, parked work or the pipeline
    /// does not use it up.
    pub(crate) fn poll_room_wait(
        &mut self,
        key: SessionKey,
        waker: &std::task::Waker,
    ) -> Option<std::task::Poll<()>> {
        let w = self.room_waits.iter().find(|w| w.id.key as usize == key)?;
        if !w.retry || self.store_queue_full() || self.parked_full() {
            // (Answers are due: the queue or the parked work is over its bound, or the
            // message did not fit, which it does under a quarter of the bound.)
            let max = self.waiters_max();
            super::pause::wait_in(&mut self.room_wakers, waker, max);
            return Some(std::task::Poll::Pending);
        }
        Some(self.poll_pipeline(Some(key), waker))
    }

    /// The HTTP API's message holding `ticket` (`Shard::poll_api_room_send`) waits no
    /// more: gone, or handled.
    pub fn api_room_wait_done(&mut self, ticket: u64) {
        if let Some(at) = self.api_room_waits.iter().position(|w| w.0 == ticket) {
            self.api_room_waits.swap_remove(at);
            self.local_waits_changed();
        }
    }

    /// Whether session `key`'s room message waits for room and may try again now.
    pub(crate) fn room_wait_retry(&self, key: SessionKey) -> bool {
        !self.room_waits.is_empty()
            && self
                .room_waits
                .iter()
                .any(|w| w.id.key as usize == key && w.retry)
    }

    /// Store answers came in: the readers of waiting room messages (and the HTTP API's
    /// publishes waiting the same way) try again; those of sessions gone are forgotten.
    pub(crate) fn room_waits_answered(&mut self) {
        let sessions = &self.sessions;
        self.room_waits.retain(|w| {
            sessions
                .get(w.id.key as usize)
                .is_some_and(|s| s.gen == w.id.gen && s.closing.is_none())
        });
        for w in &mut self.room_waits {
            w.retry = true;
        }
        for w in self.room_wakers.drain(..) {
            w.wake();
        }
        self.local_waits_changed();
    }

    /// Starts or ends the readers' yield to the shard's own waiting room messages
    /// (`Shard::local_yield`): on while one of them has waited [`LOCAL_WAIT_MAX`]
    /// without progress. Ended, the readers waiting on it are woken, and the consumer,
    /// which leaves the rings alone during it.
    pub(crate) fn local_waits_changed(&mut self) {
        if !self.api_room_waits.is_empty() {
            // (A wait is given back when it ends, at `--http-api-timeout` at the latest:
            // one older has lost its way.)
            let stale = self.cfg.http_api_timeout + std::time::Duration::from_secs(1);
            self.api_room_waits.retain(|w| w.1.elapsed() < stale);
        }
        let oldest = self
            .room_waits
            .iter()
            .map(|w| w.since)
            .chain(self.api_room_waits.iter().map(|w| w.1))
            .chain(self.rooms_waiting_since)
            .min();
        let want = oldest.is_some_and(|t| t.elapsed() >= LOCAL_WAIT_MAX);
        if want && !self.local_yield {
            if !self.store_yield {
                self.yield_from = self.store_made;
            }
            self.local_yield = true;
        } else if !want && self.local_yield {
            self.local_yield = false;
            self.wake_store_waiters(true, true);
            if let Some(b) = &self.bell {
                b.force();
            }
        }
    }

    /// A held room message has waited too long for room in the store's queue: see
    /// `Shard::store_yield`.
    pub fn begin_store_yield(&mut self) {
        if !self.local_yield {
            self.yield_from = self.store_made;
        }
        self.store_yield = true;
    }

    /// True when readers should wait for the store to catch up (its queue is over its
    /// bounds, or a room message waits for room in it: `Shard::store_yield`).
    #[inline]
    pub fn store_full(&self) -> bool {
        self.store_yield || self.local_yield || self.store_queue_full()
    }

    /// True when the store's queue is over its bounds.
    pub fn store_queue_full(&self) -> bool {
        // Not `parked_bytes`: this gates the rings too, and the mail that drains parked
        // work (a user's RoomQuota, a room's store completion) must keep flowing.
        self.store_inflight >= STORE_HIGH_WATER
            || self.store_bytes >= self.cfg.max_store_queue_bytes
            || self.requeue_bytes >= self.cfg.max_requeue_bytes
    }

    /// A store request was answered: its counts are taken back (the session's reader,
    /// waiting at `max_requests_in_flight`, is woken below it), then `then` runs with no
    /// requester: a continuation often runs others' work (a room's queue once it is
    /// loaded, the waiters of a contact list), which must not count for this session.
    /// Room requests count whole through their [`InFlight`] guard.
    fn store_answered(
        &mut self,
        bytes: usize,
        (requester, sender): (Option<SessionId>, Option<SessionId>),
        then: impl FnOnce(&mut Shard),
    ) {
        self.store_inflight -= 1;
        self.store_answers += 1;
        self.store_bytes -= bytes;
        if let Some(id) = requester {
            self.request_done(id);
        }
        if let Some(id) = sender {
            self.store_send_done(id);
        }
        let outer = self.requester.take();
        then(self);
        self.requester = outer;
        if !self.requeues.is_empty() {
            self.pump_requeues();
        }
    }

    /// Counts one more request of session `id` in flight; at `max_requests_in_flight` its
    /// reader stops at the end of the frame being handled (`net::session`).
    fn request_taken(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(id.key as usize) {
            if s.gen == id.gen {
                s.requests += 1;
                if s.requests >= self.cfg.max_requests_in_flight {
                    self.answers_over = true;
                }
            }
        }
    }

    /// One store request of session `id`'s Sends was answered; at none left, its reader
    /// is woken (it may be read past a full store queue again).
    pub(crate) fn store_send_done(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(id.key as usize) {
            if s.gen == id.gen {
                s.store_sends = s.store_sends.saturating_sub(1);
                if s.store_sends == 0 {
                    s.wake_drain_waiters();
                }
            }
        }
    }

    /// One request of session `id` is done; its reader, waiting at
    /// `max_requests_in_flight`, is woken below it.
    pub(crate) fn request_done(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(id.key as usize) {
            if s.gen == id.gen {
                s.requests = s.requests.saturating_sub(1);
                if s.requests < self.cfg.max_requests_in_flight {
                    s.wake_drain_waiters();
                }
            }
        }
    }

    /// A request of session `id` that goes to another shard (or waits on this one): it
    /// counts against the session's `max_requests_in_flight` until the returned guard is
    /// dropped. `None` without a store (unit tests: nowhere to hand the count back).
    pub(crate) fn request_in_flight(&mut self, id: SessionId) -> Option<InFlight> {
        let done = self.store.as_ref()?.done.clone();
        self.request_taken(id);
        Some(InFlight {
            id,
            done,
            big: false,
        })
    }

    /// True when session `key` has `max_requests_in_flight` requests waiting on the
    /// store: its reader reads nothing more until one is answered.
    pub fn requests_full(&self, key: SessionKey) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| s.closing.is_none() && s.requests >= self.cfg.max_requests_in_flight)
    }

    /// Makes a store request: `submit` queues it with the given callback; `then` runs
    /// later on this shard with the answer (at once, with `Closed`, if there is no store
    /// or it is shut down).
    pub fn store_req<T: Send + 'static>(
        &mut self,
        submit: impl FnOnce(
            &StoreHandle,
            Box<dyn FnOnce(StoreResult<T>) + Send + 'static>,
        ) -> StoreResult<()>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        self.store_req_sized(0, submit, then)
    }

    /// [`Shard::store_req`] for a request carrying `payload` bytes: until it is answered
    /// they count in the shard's `store_bytes` (bounded by `max_store_queue_bytes`).
    pub fn store_req_sized<T: Send + 'static>(
        &mut self,
        payload: usize,
        submit: impl FnOnce(
            &StoreHandle,
            Box<dyn FnOnce(StoreResult<T>) + Send + 'static>,
        ) -> StoreResult<()>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        let Some(link) = &self.store else {
            then(self, Err(StoreError::Closed));
            return;
        };
        let bytes = payload + STORE_REQ_OVERHEAD;
        let sender = match self.requester {
            Some(_) => None,
            None => self.sender.and_then(|k| self.session_id(k)),
        };
        let mut guard = Completion {
            then: Some(then),
            bytes,
            requester: self.requester,
            sender,
            done: link.done.clone(),
            _answer: std::marker::PhantomData,
        };
        let cb = Box::new(move |r: StoreResult<T>| guard.complete(r));
        // A request the store refuses (shut down) drops `cb` uncalled: the guard's drop
        // then queues `then` with `Closed`, like any other answer.
        let _ = submit(&link.handle, cb);
        self.store_inflight += 1;
        self.store_peak = self.store_peak.max(self.store_inflight);
        self.store_made += 1;
        self.store_bytes += bytes;
        if let Some(id) = self.requester {
            self.request_taken(id);
        }
        if let Some(s) = sender.and_then(|id| self.sessions.get_mut(id.key as usize)) {
            s.store_sends += 1;
        }
    }
}

/// The turn of the HTTP API's reads at the page-read gate (no user name holds a NUL).
const API_TURN: &[u8] = b"\0api";

/// The HTTP API's reads that wait for their turn on one shard at most
/// ([`Shard::api_read`]); past them a request is answered 503 at once.
pub const API_READS_WAITING_MAX: usize = 256;

/// Page reads a gate may hold waiting in all before those that no session of its shard
/// bounds are refused ([`PageReads::may_wait`]).
pub const PAGE_READS_WAITING_MAX: usize = 65_536;

/// A turn of `user`'s own at the gate for one kind of its reads, `tag` (a NUL and a
/// letter: no user name holds a NUL), so they do not wait behind its page reads.
pub fn side_turn(tag: &[u8], user: &str) -> Bytes {
    let mut t = Vec::with_capacity(tag.len() + user.len());
    t.extend_from_slice(tag);
    t.extend_from_slice(user.as_bytes());
    Bytes::from(t)
}

/// A gated request's answer, with what it cost the storage thread.
struct Costed<T>(StoreResult<T>, Duration);

/// A store request waiting for its turn at a [`PageReads`] gate.
struct WaitingRead {
    /// The session it is for (dropped when that ends); none for a deletion.
    id: Option<SessionId>,
    /// What makes it.
    issue: Box<dyn FnOnce(&mut Shard) + Send>,
    /// Its count against the session's `max_requests_in_flight` while it waits.
    _count: Option<InFlight>,
}

/// The store requests whose work grows with what they look at: History and
/// ListConversations pages (up to `--history-page-max` messages or conversations, a
/// history chunk read each), MarkRead's lookup of a msg_id (up to
/// `--history-lookup-chunks` chunks of 64 KiB), ListRooms (a key per room of the user)
/// and ListUsers (up to 64 account keys per name asked for). At most
/// `max_page_reads_in_flight` of this shard's are in the store's queue at once; the others
/// wait here. The one storage thread answers every shard's requests in order: 1 024
/// sessions each asking for a 500-conversation page (8-10 ms of the storage thread each)
/// held every other user's login and ListRooms 7-10 s behind them. Each one waiting
/// counts against its session's `max_requests_in_flight` (a page read also stops its
/// reader until answered, [`Shard::big_answer_begun`]) and is dropped when its session
/// ends (a MarkRead then is a read mark not kept), so what waits here is bounded by the live
/// sessions: kept for sessions that ended, a client reconnecting in a loop with 64
/// MarkReads each left 800 000 waiting in 30 s.
///
/// Turns go round the users with reads waiting, one read each: one user's 64 devices
/// asking in a loop (or many users' sessions) no longer put another user's page behind
/// all of theirs (a FIFO held it 1.45 s behind 1 024 such sessions). The next turn is
/// the waiting user's whose reads cost the storage thread least lately (each read is
/// charged what it took there, [`crate::store::answer_cost`], decaying by half every
/// [`SPENT_HALF_LIFE`]; ties in turn order), and every [`ROUND_ROBIN_EVERY`]th is the
/// first in turn order's: round the users alone, 200 users each looping a ListUsers
/// scan of 13 ms put everyone else's ListRooms 2.0-2.5 s behind them (one of each of
/// theirs first); a user whose reads are cheap now goes ahead of those whose reads are
/// not, and past the first, reads go to the store while their guessed cost stays within
/// [`IN_STORE_BUDGET_US`] (12-18 ms there).
///
/// A second gate of the same kind takes the deletions whose work grows with what they
/// delete (DeleteAccount: every conversation of the user and its offline queue;
/// DeleteRoom: its history), one a shard at a time ([`DELETIONS_IN_FLIGHT`]), taking
/// turns by user or room and never dropped: 8 accounts with 50 000 conversations each,
/// deleted at once, held other users' logins 2.5 s (~210 ms of the storage thread each).
#[derive(Default)]
pub struct PageReads {
    /// This shard's page reads in the store's queue.
    pub(super) in_store: usize,
    /// Per user, its reads waiting, oldest first (no empty queue).
    waiting: NameMap<Bytes, VecDeque<WaitingRead>>,
    /// The users in `waiting`, in turn order.
    turns: VecDeque<Bytes>,
    /// Reads in `waiting`.
    count: usize,
    /// Set while waiting reads are being issued (one answered without a store runs the
    /// next at once: the loop, not a recursion, issues it).
    issuing: bool,
    /// What the reads of users cost lately (at most [`SPENT_KEPT`] users, and those
    /// waiting or with reads in the store).
    spent: NameMap<Bytes, Spent>,
    /// What the reads in the store's queue were guessed to cost, in µs.
    in_store_us: f64,
    /// Reads issued from the waiting ones (every [`ROUND_ROBIN_EVERY`]th is the turn
    /// order's, whatever the costs).
    picks: u32,
    /// `spent`'s size after its last trim: it is trimmed again at twice that (and at
    /// least at [`SPENT_KEPT`]).
    trimmed_to: usize,
}

/// Every this many reads issued from those waiting, one goes to the user first in turn
/// order, whatever it spent: a user whose reads cost more still waits for at most
/// this many reads per user ahead of it (names the gate never charged, new logins, come
/// first otherwise).
pub const ROUND_ROBIN_EVERY: u32 = 4;

/// The least a read is charged when made (µs): a name never charged is taken to have
/// spent this much now.
const READ_FLOOR_US: f64 = 20.0;

/// Costs within a factor of 2^this count as equal when the next turn is chosen (the
/// turn order decides between them).
const COST_TIE_LOG2: f64 = 1.0;

/// Microseconds of the storage thread that a gate's reads in the store's queue may be
/// guessed to cost together, past the first (see [`PageReads::may_issue`]): reads of 13
/// ms each, 4 of each shard at the store, held another user's ListRooms 120 ms (it
/// waited for its turn no longer, but for the 8 before it).
pub const IN_STORE_BUDGET_US: f64 = 5_000.0;

/// What one user's reads cost the storage thread lately (see [`PageReads`]).
#[derive(Clone, Copy, Debug)]
struct Spent {
    /// Microseconds, decayed as of `at`.
    us: f64,
    at: Instant,
    /// What its last read cost: charged when its next read is made (the read's own cost
    /// replaces it once answered), so that reads in the store count before they return.
    last_us: f64,
    /// Its reads in the store's queue (kept through a trim while any are).
    in_store: u32,
}

impl Spent {
    fn now(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.us * 0.5f64.powf(age / SPENT_HALF_LIFE.as_secs_f64())
    }

    /// A key that orders users as what they spent does at any one time, without a
    /// power a user: log2 of it as of [`spent_epoch`] (decay halves every user's alike).
    /// A cost under [`READ_FLOOR_US`] counts as that.
    fn order_key(&self) -> f64 {
        key_at(self.us, self.at)
    }
}

/// [`Spent::order_key`] of `us` spent as of `at`.
fn key_at(us: f64, at: Instant) -> f64 {
    let since = at.saturating_duration_since(spent_epoch()).as_secs_f64();
    us.max(READ_FLOOR_US).log2() + since / SPENT_HALF_LIFE.as_secs_f64()
}

/// The time [`Spent::order_key`] counts from (the first use).
fn spent_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// How fast what a user's reads cost is forgotten (see [`PageReads`]).
pub const SPENT_HALF_LIFE: Duration = Duration::from_secs(2);

/// Users whose reads' cost a gate keeps, besides those waiting or with reads in the
/// store: past it (or twice what the last trim left), those whose cost decayed under
/// [`READ_FLOOR_US`] go, then all but those (each user is one entry of ~90 bytes; the
/// names are the live sessions' users, the askers of presence and the rooms asked
/// about).
const SPENT_KEPT: usize = 16_384;

impl PageReads {
    /// Page reads waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.count
    }

    /// Page reads of `name`'s waiting for its turn.
    pub fn waiting_of(&self, name: &Bytes) -> usize {
        self.waiting.get(name).map_or(0, VecDeque::len)
    }

    /// Whether one more read of `turn`'s that no session of this shard bounds (the HTTP
    /// API's, a GetPresence from another shard) may wait: fewer than `max` of `turn`'s
    /// and fewer than [`PAGE_READS_WAITING_MAX`] in all wait now.
    pub fn may_wait(&self, turn: &Bytes, max: usize) -> bool {
        self.waiting_of(turn) < max && self.count < PAGE_READS_WAITING_MAX
    }

    fn push(&mut self, user: Bytes, w: WaitingRead) {
        let q = self.waiting.entry(user.clone()).or_default();
        if q.is_empty() {
            self.turns.push_back(user);
        }
        q.push_back(w);
        self.count += 1;
    }

    /// Drops the reads waiting for session `id` of `user` (it ended).
    pub(super) fn drop_session(&mut self, user: &Bytes, id: SessionId) {
        let Some(q) = self.waiting.get_mut(user) else {
            return;
        };
        let before = q.len();
        q.retain(|w| w.id != Some(id));
        self.count -= before - q.len();
        if q.is_empty() {
            self.waiting.remove(user);
            self.turns.retain(|u| u != user);
        }
    }

    /// What `user`'s reads cost lately, in microseconds.
    #[cfg(test)]
    fn spent_now(&self, user: &Bytes, now: Instant) -> f64 {
        self.spent.get(user).map_or(0.0, |s| s.now(now))
    }

    /// A read of `user`'s is made: charged what its last one cost (at least
    /// [`READ_FLOOR_US`]), which is returned (to be corrected with
    /// [`PageReads::charged`] once answered).
    fn charge_guess(&mut self, user: &Bytes, now: Instant) -> f64 {
        let guess = self.guess_of(user);
        self.add(user, guess, now);
        if let Some(s) = self.spent.get_mut(user) {
            s.in_store += 1;
        }
        guess
    }

    /// A read of `user`'s that was charged `guess` when made at `issued` took `cost` of
    /// the storage thread: the guess, decayed since, is taken back and the cost put in.
    fn charged(&mut self, user: &Bytes, guess: f64, issued: Instant, cost: Duration, now: Instant) {
        let us = (cost.as_secs_f64() * 1e6).max(READ_FLOOR_US);
        match self.spent.get_mut(user) {
            Some(s) => {
                let age = now.saturating_duration_since(issued).as_secs_f64();
                let back = guess * 0.5f64.powf(age / SPENT_HALF_LIFE.as_secs_f64());
                s.us = (s.now(now) + us - back).max(0.0);
                s.at = now;
                s.in_store = s.in_store.saturating_sub(1);
                s.last_us = us;
            }
            // (Trimmed meanwhile, with its guess.)
            None => {
                self.add(user, us, now);
                if let Some(s) = self.spent.get_mut(user) {
                    s.last_us = us;
                }
            }
        }
    }

    fn add(&mut self, user: &Bytes, us: f64, now: Instant) {
        if let Some(s) = self.spent.get_mut(user) {
            s.us = (s.now(now) + us).max(0.0);
            s.at = now;
            return;
        }
        if self.spent.len() >= SPENT_KEPT.max(2 * self.trimmed_to) {
            let waiting = &self.waiting;
            self.spent.retain(|u, s| {
                s.in_store > 0 || waiting.contains_key(u) || s.now(now) >= READ_FLOOR_US
            });
            if self.spent.len() >= SPENT_KEPT {
                self.spent
                    .retain(|u, s| s.in_store > 0 || waiting.contains_key(u));
            }
            self.trimmed_to = self.spent.len();
        }
        let s = Spent {
            us: us.max(0.0),
            at: now,
            last_us: 0.0,
            in_store: 0,
        };
        self.spent.insert(user.clone(), s);
    }

    /// What a read of `user`'s is guessed to cost (what its last one did, at least
    /// [`READ_FLOOR_US`]), in µs.
    fn guess_of(&self, user: &Bytes) -> f64 {
        self.spent
            .get(user)
            .map_or(READ_FLOOR_US, |s| s.last_us.max(READ_FLOOR_US))
    }

    /// Whether a read guessed to cost `guess` µs may go to the store now: one may when
    /// none of the gate's is there; more, up to `max`, while what those there are guessed
    /// to cost stays within [`IN_STORE_BUDGET_US`].
    fn may_issue(&self, guess: f64, max: usize) -> bool {
        self.in_store == 0
            || (self.in_store < max && self.in_store_us + guess <= IN_STORE_BUDGET_US)
    }

    /// Where in `turns` the next read's user is: the waiting user whose reads cost least
    /// lately (one never charged counts as having spent [`READ_FLOOR_US`] now; of costs
    /// within [`COST_TIE_LOG2`], the one whose turn comes first); every
    /// [`ROUND_ROBIN_EVERY`]th, the first.
    fn next_turn(&self) -> Option<usize> {
        if self.turns.is_empty() {
            return None;
        }
        if self.picks % ROUND_ROBIN_EVERY == ROUND_ROBIN_EVERY - 1 {
            return Some(0);
        }
        let unknown = key_at(READ_FLOOR_US, Instant::now());
        let mut at = 0;
        let mut least = f64::INFINITY;
        for (i, u) in self.turns.iter().enumerate() {
            let k = self.spent.get(u).map_or(unknown, Spent::order_key);
            if k < least - COST_TIE_LOG2 {
                (at, least) = (i, k);
            }
        }
        Some(at)
    }

    /// The next read (see [`PageReads::next_turn`]).
    #[cfg(test)]
    fn pop(&mut self) -> Option<WaitingRead> {
        let at = self.next_turn()?;
        self.pop_at(at)
    }

    /// The oldest read of the user at `at` in `turns`.
    fn pop_at(&mut self, at: usize) -> Option<WaitingRead> {
        let user = self.turns.remove(at)?;
        self.picks = self.picks.wrapping_add(1);
        let q = self.waiting.get_mut(&user)?;
        let w = q.pop_front();
        if q.is_empty() {
            self.waiting.remove(&user);
        } else {
            self.turns.push_back(user);
        }
        self.count -= usize::from(w.is_some());
        w
    }
}

/// What makes a store request (as [`Shard::store_req`] takes it), sent to wait.
pub trait Submit<T>:
    FnOnce(&StoreHandle, Box<dyn FnOnce(StoreResult<T>) + Send + 'static>) -> StoreResult<()>
    + Send
    + 'static
{
}

impl<T, F> Submit<T> for F where
    F: FnOnce(&StoreHandle, Box<dyn FnOnce(StoreResult<T>) + Send + 'static>) -> StoreResult<()>
        + Send
        + 'static
{
}

/// Deletions one shard has at the store at once (see [`PageReads`]).
pub const DELETIONS_IN_FLIGHT: usize = 1;

/// Which gate a store request waits at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// [`Shard::page_reads`]: at most `max_page_reads_in_flight`.
    Reads,
    /// [`Shard::deletions`]: at most [`DELETIONS_IN_FLIGHT`].
    Deletions,
}

impl Shard {
    /// [`Shard::store_req`] for a page read of session `key` (History,
    /// ListConversations: a big answer, [`Shard::big_answer_begun`]): made now, or once
    /// its turn comes (see [`PageReads`]); not at all if the session ends before.
    pub fn page_read<T: Send + 'static>(
        &mut self,
        key: SessionKey,
        submit: impl Submit<T>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        self.big_answer_begun(key);
        self.lookup_req(key, submit, then);
    }

    /// [`Shard::store_req`] for a lookup of session `key` with no answer to wait for
    /// (MarkRead's): made now, or once its turn comes (see [`PageReads`]); not at all if
    /// the session ends before.
    pub fn lookup_req<T: Send + 'static>(
        &mut self,
        key: SessionKey,
        submit: impl Submit<T>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        let (Some(s), Some(id)) = (self.sessions.get(key), self.session_id(key)) else {
            return;
        };
        let user = s.user.clone();
        self.gated_req(Gate::Reads, user, Some(id), submit, then);
    }

    /// [`Shard::store_req`] for a read of the HTTP API (a room's members, a user's
    /// queue): made now, or once its turn comes, taking turns with the users of this
    /// shard's page reads as one more user (see [`PageReads`]). Unpaced, 1 024 API
    /// requests for a room of 9 999 members in flight held everyone's ListRooms 0.6 s.
    /// False, making nothing, when [`API_READS_WAITING_MAX`] wait already (they count
    /// against no session: a backend polling faster than its turns come would queue
    /// them without bound).
    pub fn api_read<T: Send + 'static>(
        &mut self,
        submit: impl Submit<T>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) -> bool {
        let turn = Bytes::from_static(API_TURN);
        if !self.page_reads.may_wait(&turn, API_READS_WAITING_MAX) {
            return false;
        }
        self.read_in_turn(turn, submit, then);
        true
    }

    /// [`Shard::store_req`] for a read whose work grows with what it looks at and that
    /// no session waits for (a room's member checks, on the room's shard): made now, or
    /// once `turn`'s turn comes (see [`PageReads`]). Unpaced, 32 new accounts each
    /// creating a room of 2 000 members in ~440 rooms each held everyone's logins 0.6 s.
    pub fn read_in_turn<T: Send + 'static>(
        &mut self,
        turn: Bytes,
        submit: impl Submit<T>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        self.gated_req(Gate::Reads, turn, None, submit, then);
    }

    /// [`Shard::store_req`] for a deletion whose work grows with what it deletes, of
    /// `name` (a user's, a room's): made now, or once this shard's one before it is
    /// answered, taking turns by name (see [`PageReads`]).
    pub fn deletion_req<T: Send + 'static>(
        &mut self,
        name: Bytes,
        submit: impl Submit<T>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        self.gated_req(Gate::Deletions, name, None, submit, then);
    }

    fn gate(&mut self, gate: Gate) -> (&mut PageReads, usize) {
        match gate {
            Gate::Reads => {
                let max = (self.cfg.max_page_reads_in_flight as usize).max(1);
                (&mut self.page_reads, max)
            }
            Gate::Deletions => (&mut self.deletions, DELETIONS_IN_FLIGHT),
        }
    }

    fn gated_req<T: Send + 'static>(
        &mut self,
        gate: Gate,
        name: Bytes,
        id: Option<SessionId>,
        submit: impl Submit<T>,
        then: impl FnOnce(&mut Shard, StoreResult<T>) + Send + 'static,
    ) {
        let turn = name.clone();
        let issue = move |sh: &mut Shard| {
            let g = sh.gate(gate).0;
            g.in_store += 1;
            let issued = Instant::now();
            let guess = g.charge_guess(&turn, issued);
            g.in_store_us += guess;
            // The answer comes with what it cost the storage thread (read there).
            let costed =
                move |st: &StoreHandle, cb: Box<dyn FnOnce(StoreResult<Costed<T>>) + Send>| {
                    submit(
                        st,
                        Box::new(move |r| cb(Ok(Costed(r, crate::store::answer_cost())))),
                    )
                };
            sh.store_req(costed, move |sh, r: StoreResult<Costed<T>>| {
                let (r, cost) = match r {
                    Ok(Costed(r, cost)) => (r, cost),
                    Err(e) => (Err(e), Duration::ZERO),
                };
                let g = sh.gate(gate).0;
                g.in_store_us = (g.in_store_us - guess).max(0.0);
                g.charged(&turn, guess, issued, cost, Instant::now());
                then(sh, r);
                sh.gate_done(gate);
            });
        };
        let (g, max) = self.gate(gate);
        if g.count == 0 && g.may_issue(g.guess_of(&name), max) {
            issue(self);
        } else {
            let count = id.and_then(|id| self.request_in_flight(id));
            let w = WaitingRead {
                id,
                issue: Box::new(issue),
                _count: count,
            };
            self.gate(gate).0.push(name, w);
        }
    }

    /// A page read was answered (see [`Shard::gate_done`]).
    #[cfg(test)]
    pub(super) fn page_read_done(&mut self) {
        self.gate_done(Gate::Reads);
    }

    /// A deletion was answered (see [`Shard::gate_done`]).
    #[cfg(test)]
    pub(super) fn gate_done_deletion(&mut self) {
        self.gate_done(Gate::Deletions);
    }

    /// A request of `gate` was answered: the next ones waiting are made, each counted
    /// against its own session's requests (a deletion against none).
    fn gate_done(&mut self, gate: Gate) {
        let (g, max) = self.gate(gate);
        g.in_store = g.in_store.saturating_sub(1);
        if g.issuing {
            return;
        }
        g.issuing = true;
        let (requester, sender) = (self.requester.take(), self.sender.take());
        loop {
            let g = self.gate(gate).0;
            let Some(at) = g.next_turn() else {
                break;
            };
            if !g.may_issue(g.guess_of(&g.turns[at]), max) {
                break;
            }
            let Some(w) = g.pop_at(at) else {
                break;
            };
            // (Those of ended sessions were dropped: `PageReads::drop_session`.)
            if w.id.is_none_or(|id| self.resolve(id).is_some()) {
                self.requester = w.id;
                (w.issue)(self);
            }
        }
        (self.requester, self.sender) = (requester, sender);
        self.gate(gate).0.issuing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> WaitingRead {
        WaitingRead {
            id: None,
            issue: Box::new(|_| {}),
            _count: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1.0
    }

    /// The user whose reads cost the storage thread least lately goes first (one never
    /// charged counts as the floor); what a user spent halves every half-life.
    #[test]
    fn the_user_whose_reads_cost_least_lately_goes_first() {
        let (heavy, light, other) = (
            Bytes::from_static(b"heavy"),
            Bytes::from_static(b"light"),
            Bytes::from_static(b"other"),
        );
        let mut g = PageReads::default();
        let t0 = Instant::now();
        // `heavy` made a read of 13 ms; its next read is charged that when made.
        let guess = g.charge_guess(&heavy, t0);
        assert_eq!(guess, READ_FLOOR_US);
        g.charged(&heavy, guess, t0, Duration::from_millis(13), t0);
        assert!(close(g.spent_now(&heavy, t0), 13_000.0));
        assert_eq!(g.charge_guess(&heavy, t0), 13_000.0);
        assert!(close(g.spent_now(&heavy, t0), 26_000.0));
        assert!(close(g.spent_now(&heavy, t0 + SPENT_HALF_LIFE), 13_000.0));
        // Answered at 1 ms: the guess is taken back, the cost put in its place.
        g.charged(&heavy, 13_000.0, t0, Duration::from_millis(1), t0);
        assert!(close(g.spent_now(&heavy, t0), 14_000.0));
        g.charged(&light, 0.0, t0, Duration::from_micros(200), t0);
        // Queued first, `heavy` still waits behind the two others.
        g.push(heavy.clone(), read());
        g.push(heavy.clone(), read());
        g.push(light.clone(), read());
        g.push(other.clone(), read());
        assert!(g.pop().is_some());
        assert_eq!(g.waiting_of(&other), 0, "never charged: first");
        assert!(g.pop().is_some());
        assert_eq!(g.waiting_of(&light), 0);
        assert_eq!(g.waiting_of(&heavy), 2);
        assert!(g.pop().is_some() && g.pop().is_some() && g.pop().is_none());
        assert_eq!(g.waiting(), 0);
    }

    /// Every ROUND_ROBIN_EVERY-th read goes to the user first in turn order, however
    /// much it spent: names never charged cannot hold it back for ever.
    #[test]
    fn the_first_in_turn_order_goes_every_few_reads_whatever_it_spent() {
        let mut g = PageReads::default();
        let now = Instant::now();
        let heavy = Bytes::from_static(b"heavy");
        g.charged(&heavy, 0.0, now, Duration::from_millis(50), now);
        for _ in 0..4 {
            g.push(heavy.clone(), read());
        }
        let fresh: Vec<Bytes> = (0..8).map(|i| Bytes::from(format!("new{i}"))).collect();
        for f in &fresh {
            g.push(f.clone(), read());
        }
        for _ in 0..ROUND_ROBIN_EVERY - 1 {
            assert!(g.pop().is_some());
            assert_eq!(g.waiting_of(&heavy), 4, "the cheaper ones first");
        }
        assert!(g.pop().is_some());
        assert_eq!(g.waiting_of(&heavy), 3, "then the first in turn order");
    }

    /// Past the first, reads go to the store while what those there are guessed to cost
    /// stays within the budget.
    #[test]
    fn reads_guessed_costly_go_to_the_store_one_at_a_time() {
        let mut g = PageReads::default();
        let now = Instant::now();
        let (heavy, light) = (Bytes::from_static(b"heavy"), Bytes::from_static(b"light"));
        g.charged(&heavy, 0.0, now, Duration::from_millis(13), now);
        g.charged(&light, 0.0, now, Duration::from_micros(300), now);
        assert!(g.may_issue(g.guess_of(&heavy), 4), "the first always may");
        g.in_store = 1;
        g.in_store_us = g.guess_of(&heavy);
        assert!(!g.may_issue(g.guess_of(&light), 4), "behind a costly one");
        g.in_store_us = 3.0 * g.guess_of(&light);
        assert!(g.may_issue(g.guess_of(&light), 4));
        g.in_store = 4;
        assert!(!g.may_issue(0.0, 4), "never past the bound");
    }

    /// The guess taken back when a read is answered is the guess as decayed since: the
    /// user ends up charged what it spent before, decayed, plus the read's cost.
    #[test]
    fn the_guess_taken_back_is_decayed_like_the_rest() {
        let mut g = PageReads::default();
        let u = Bytes::from_static(b"u");
        let t0 = Instant::now();
        g.charged(&u, 0.0, t0, Duration::from_millis(13), t0);
        let t1 = t0 + 2 * SPENT_HALF_LIFE;
        let guess = g.charge_guess(&u, t1);
        assert!(close(g.spent_now(&u, t1), 3_250.0 + 13_000.0));
        g.charged(
            &u,
            guess,
            t1,
            Duration::from_millis(13),
            t1 + SPENT_HALF_LIFE,
        );
        assert!(close(
            g.spent_now(&u, t1 + SPENT_HALF_LIFE),
            1_625.0 + 13_000.0
        ));
    }

    /// Reads no session of the shard bounds may wait up to their turn's bound, and
    /// while the gate holds fewer than PAGE_READS_WAITING_MAX in all.
    #[test]
    fn reads_of_no_session_wait_within_their_bounds() {
        let mut g = PageReads::default();
        let (asker, other) = (Bytes::from_static(b"asker"), Bytes::from_static(b"other"));
        for _ in 0..3 {
            assert!(g.may_wait(&asker, 3));
            g.push(asker.clone(), read());
        }
        assert!(!g.may_wait(&asker, 3), "past the turn's bound");
        assert!(g.may_wait(&other, 3));
        while g.waiting() < PAGE_READS_WAITING_MAX {
            g.push(other.clone(), read());
        }
        assert!(
            !g.may_wait(&Bytes::from_static(b"new"), 3),
            "past the gate's"
        );
        assert_eq!(side_turn(b"\0q", "bob"), Bytes::from_static(b"\0qbob"));
    }

    /// Users never charged keep the turn order of before.
    #[test]
    fn users_not_charged_take_turns_in_order() {
        let mut g = PageReads::default();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        g.push(a.clone(), read());
        g.push(a.clone(), read());
        g.push(b.clone(), read());
        let mut order = Vec::new();
        while g.pop().is_some() {
            order.push((g.waiting_of(&a), g.waiting_of(&b)));
        }
        assert_eq!(order, [(1, 1), (1, 0), (0, 0)]);
    }

    /// Costs charged at different times compare as they stand now: 10 ms two seconds ago
    /// counts as 5 (and 3 ms, within a factor of 2 of it, as a tie: turn order).
    #[test]
    fn older_costs_count_for_less() {
        let t0 = Instant::now();
        // Without the decay, 10 ms against 3: `b` would go first.
        for (b_ms, first) in [(2, "b"), (3, "a")] {
            let mut g = PageReads::default();
            let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
            g.charged(&a, 0.0, t0, Duration::from_millis(10), t0);
            let t1 = t0 + SPENT_HALF_LIFE;
            g.charged(&b, 0.0, t1, Duration::from_millis(b_ms), t1);
            g.push(a.clone(), read());
            g.push(b.clone(), read());
            assert!(g.pop().is_some());
            let went = if g.waiting_of(&a) == 0 { "a" } else { "b" };
            assert_eq!(went, first, "b charged {b_ms} ms");
        }
    }

    /// What a gate keeps of users' costs stays bounded, but never drops a user with a
    /// read in the store (its guess is taken back from what it was charged).
    #[test]
    fn the_costs_kept_are_bounded_but_for_reads_in_the_store() {
        let mut g = PageReads::default();
        let now = Instant::now();
        let busy = Bytes::from_static(b"busy");
        g.charged(&busy, 0.0, now, Duration::from_millis(13), now);
        let guess = g.charge_guess(&busy, now);
        for i in 0..3 * SPENT_KEPT {
            let u = Bytes::from(format!("u{i}"));
            g.charged(&u, 0.0, now, Duration::from_millis(5), now);
        }
        assert!(g.spent.len() <= SPENT_KEPT);
        assert!(close(g.spent_now(&busy, now), 26_000.0), "kept");
        g.charged(&busy, guess, now, Duration::from_millis(13), now);
        assert!(close(g.spent_now(&busy, now), 26_000.0));
    }
}
