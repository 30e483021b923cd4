//! What makes delivery at-least-once: the way from a shard to the store and back,
//! offline queues, the unacked messages each session keeps, and the offline backlog
//! delivered at login.
//!
//! # Store round trips
//! A shard never waits for the disk. [`Shard::store_req`] queues a request on the
//! storage thread; its completion comes back as a [`Done`] closure pushed onto the
//! shard's [`DoneQueue`] (ringing the shard's doorbell), and the mailbox consumer runs
//! it on the shard thread with the shard borrowed. Requests are answered in the order
//! they were made, which is what keeps a user's messages in order across the store.
//!
//! # Rules (see DESIGN.md "Delivery guarantees")
//! - A message for a user with no live session is appended to the user's offline queue
//!   (bounded, `max_offline_per_user`); the sender's SendResult waits for the store.
//! - In `sync` durability every message is appended first and delivered from the
//!   completion, with its store seq: the ack that covers it removes it.
//! - A session keeps every delivery until the client's cumulative Ack. When it ends,
//!   the unacked live deliveries (and any that were held back, below) are appended to the
//!   offline queue; deliveries that came from the store are still there.
//! - At login the LoginResult goes out with the first page of the offline queue, which is
//!   delivered page by page (at most half of `max_unacked_per_session` per page) before
//!   anything live: live messages that arrive meanwhile are held (counted against the
//!   session's bounds) and delivered after the backlog (memory mode), or are already in
//!   the queue behind it (sync mode).
//! - An ack removes the stored messages it covers, unless another device of the same
//!   user is still paging through the queue (its later ack removes them).
//! - Store backpressure: past [`STORE_HIGH_WATER`] requests in flight a shard's readers
//!   pause and it leaves other shards' mail in the rings.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use ringrouter_proto::fast::DeliverStamp;
use ringrouter_proto::v1::ServerFrame;
use ringrouter_proto::Status;

use crate::config::{AuthMode, DurabilityMode, OfflineOverflow};
use crate::mailbox::Doorbell;
use crate::outbuf::FanMsg;
use crate::shard::{CloseReason, Mail, SessionId, SessionKey, Shard};
use crate::store::{Overflow, QueueCap, StoreError, StoreHandle, StoreResult, StoredMsg};

/// Offline messages loaded per store round trip at login.
pub const LOAD_PAGE: usize = 1024;

/// Store requests one shard may have outstanding before its readers pause (besides
/// `max_store_queue_bytes`, which bounds their bytes).
pub const STORE_HIGH_WATER: usize = 16 * 1024;

/// What a store request counts for in `max_store_queue_bytes` besides its payloads.
const STORE_REQ_OVERHEAD: usize = 128;

/// A store completion, run on the shard that made the request.
pub type Done = Box<dyn FnOnce(&mut Shard) + Send>;

/// Completions waiting for one shard (filled by the storage thread).
pub struct DoneQueue {
    q: Mutex<Vec<Done>>,
    /// Set with every push: the consumer looks here, not at the lock, on every turn.
    queued: AtomicBool,
    bell: Arc<Doorbell>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DoneQueue {
    /// A queue that rings `bell` (the shard's mailbox doorbell) on every push.
    pub fn new(bell: Arc<Doorbell>) -> Self {
        DoneQueue {
            q: Mutex::new(Vec::new()),
            queued: AtomicBool::new(false),
            bell,
        }
    }

    /// Queues a completion and wakes the shard's consumer if it is parked.
    pub fn push(&self, d: Done) {
        lock(&self.q).push(d);
        self.queued.store(true, Ordering::Release);
        self.bell.ring();
    }

    /// Moves every queued completion into `out` (in order).
    pub fn take_into(&self, out: &mut Vec<Done>) {
        if self.queued.swap(false, Ordering::AcqRel) {
            out.append(&mut lock(&self.q));
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        !self.queued.load(Ordering::Acquire)
    }
}

/// Carries a store request's continuation to the shard that made it: called, or
/// dropped uncalled (the store refused or lost the request), it queues the continuation
/// on the shard's [`DoneQueue`] exactly once.
struct Completion<T, F: FnOnce(&mut Shard, StoreResult<T>) + Send + 'static> {
    then: Option<F>,
    /// What the request counts for in the shard's `store_bytes`.
    bytes: usize,
    done: Arc<DoneQueue>,
    _answer: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static, F: FnOnce(&mut Shard, StoreResult<T>) + Send + 'static> Completion<T, F> {
    fn complete(&mut self, r: StoreResult<T>) {
        if let Some(then) = self.then.take() {
            let bytes = self.bytes;
            self.done.push(Box::new(move |sh: &mut Shard| {
                sh.store_inflight -= 1;
                sh.store_bytes -= bytes;
                then(sh, r);
            }));
        }
    }
}

impl<T, F: FnOnce(&mut Shard, StoreResult<T>) + Send + 'static> Drop for Completion<T, F> {
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            let bytes = self.bytes;
            self.done.push(Box::new(move |sh: &mut Shard| {
                sh.store_inflight -= 1;
                sh.store_bytes -= bytes;
                then(sh, Err(StoreError::Closed));
            }));
        }
    }
}

/// The store as one shard sees it.
pub struct StoreLink {
    /// The storage thread.
    pub handle: StoreHandle,
    /// Where this shard's completions land.
    pub done: Arc<DoneQueue>,
}

/// A message kept by a session: held back during a login backlog, or delivered and
/// not yet acked. Names and payload are shared, not copied.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Authenticated sender.
    pub from_user: Bytes,
    /// Room, empty for a direct message.
    pub to_room: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
}

impl Held {
    fn to_stored(&self) -> StoredMsg {
        StoredMsg {
            from_user: String::from_utf8_lossy(&self.from_user).into_owned(),
            to_room: String::from_utf8_lossy(&self.to_room).into_owned(),
            payload: self.payload.clone(),
            server_ts_us: self.ts_us,
            msg_id: self.msg_id,
        }
    }
}

/// One delivered, unacked message of a session.
#[derive(Debug)]
struct Unacked {
    /// The session seq it was delivered with.
    seq: u64,
    /// Its seq in the user's offline queue when it is stored there (0: live only; its
    /// content is kept here, to be stored if the session ends before the ack).
    store_seq: u64,
    /// Payload (empty when stored).
    payload: Kept,
    msg_id: u64,
    ts_us: u64,
    /// Absolute index of its (sender, room) in [`Retained::names`].
    name: u64,
}

/// What a session delivered and the client has not acked yet, in seq order.
///
/// Per direct message this costs one queue entry and one payload reference (small
/// payloads are copied into the entry): the sender and room names live once per run of
/// messages from the same sender in `names`, pinned there, so a delivery recognises the
/// previous sender by pointer (no byte comparison, no reference count on a name another
/// core owns). A room message costs 16 bytes: its seq and a reference to the shard's one
/// [`FanMsg`] for it.
#[derive(Debug, Default)]
pub struct Retained {
    q: VecDeque<Unacked>,
    fan: VecDeque<(u64, Rc<FanMsg>)>,
    names: VecDeque<(Bytes, Bytes)>,
    /// Absolute index of `names[0]`.
    names_base: u64,
    /// Payload bytes kept (what `max_unacked_bytes_per_session` bounds); entries whose
    /// payload is in the store count nothing.
    bytes: usize,
}

/// Payloads up to this size are copied into the retained entry instead of referenced:
/// 64 bytes cost less to copy than a reference count on the sender's read buffer (which
/// would also keep that whole buffer alive until the ack).
const KEEP_INLINE: usize = 64;

/// A retained payload.
#[derive(Debug)]
enum Kept {
    Inline(u8, [u8; KEEP_INLINE]),
    Shared(Bytes),
}

impl Kept {
    fn len(&self) -> usize {
        match self {
            Kept::Inline(n, _) => *n as usize,
            Kept::Shared(b) => b.len(),
        }
    }

    #[inline]
    fn of(payload: &Bytes) -> Kept {
        if payload.len() <= KEEP_INLINE {
            let mut buf = [0u8; KEEP_INLINE];
            buf[..payload.len()].copy_from_slice(payload);
            Kept::Inline(payload.len() as u8, buf)
        } else {
            Kept::Shared(payload.clone())
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Kept::Inline(n, buf) => Bytes::copy_from_slice(&buf[..n as usize]),
            Kept::Shared(b) => b,
        }
    }
}

fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

impl Retained {
    /// Messages kept.
    pub fn len(&self) -> usize {
        self.q.len() + self.fan.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty() && self.fan.is_empty()
    }

    /// Payload bytes kept in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The lowest offline-queue seq among the kept messages that are in the store (0:
    /// none). O(1): stored entries come first (a login backlog, in memory mode) or are
    /// all of them (sync mode), in store order, so the front entry has it.
    pub fn lowest_store_seq(&self) -> u64 {
        self.q.front().map_or(0, |u| u.store_seq)
    }

    fn name_of(&mut self, from_user: &Bytes, to_room: &Bytes) -> u64 {
        let hit = self
            .names
            .back()
            .is_some_and(|(f, r)| same(f, from_user) && same(r, to_room));
        if !hit {
            self.names.push_back((from_user.clone(), to_room.clone()));
        }
        self.names_base + self.names.len() as u64 - 1
    }

    /// Keeps a live delivery (seq `seq`) until acked.
    #[inline]
    pub fn push(&mut self, seq: u64, m: &Outgoing<'_>) {
        if let (Some(fm), 0) = (m.fanned, m.store_seq) {
            self.bytes += fm.payload.len();
            self.fan.push_back((seq, fm.clone()));
            return;
        }
        let name = self.name_of(m.from_user, m.to_room);
        let payload = if m.store_seq == 0 {
            Kept::of(m.payload)
        } else {
            Kept::Inline(0, [0; KEEP_INLINE])
        };
        self.bytes += payload.len();
        self.q.push_back(Unacked {
            seq,
            store_seq: m.store_seq,
            payload,
            msg_id: m.msg_id,
            ts_us: m.ts_us,
            name,
        });
    }

    /// Keeps a delivery that is in the store (`store_seq`) until acked.
    pub fn push_stored(&mut self, seq: u64, store_seq: u64) {
        self.q.push_back(Unacked {
            seq,
            store_seq,
            payload: Kept::Inline(0, [0; KEEP_INLINE]),
            msg_id: 0,
            ts_us: 0,
            name: u64::MAX,
        });
    }

    /// Forgets everything up to `seq` (a cumulative ack). Returns the highest store seq
    /// among them (0: none was stored), to remove from the store.
    pub fn ack(&mut self, seq: u64) -> u64 {
        let mut top = 0;
        while let Some(u) = self.q.front() {
            if u.seq > seq {
                break;
            }
            top = top.max(u.store_seq);
            self.bytes -= u.payload.len();
            self.q.pop_front();
        }
        while self.fan.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, m)) = self.fan.pop_front() {
                self.bytes -= m.payload.len();
            }
        }
        // Names no kept message refers to any more (the last one stays: the next
        // message is most likely from the same sender). Entries without a name (loaded
        // from the store) only come at the front, from a login backlog, so the scan
        // stops at the first named entry.
        if self.names.len() <= 1 {
            return top;
        }
        let keep_from = self
            .q
            .iter()
            .map(|u| u.name)
            .find(|&n| n != u64::MAX)
            .unwrap_or(self.names_base + self.names.len().saturating_sub(1) as u64);
        while self.names_base < keep_from && self.names.len() > 1 {
            self.names.pop_front();
            self.names_base += 1;
        }
        top
    }

    /// Empties the queue; returns the live (not stored) messages as store records, in order.
    pub fn take_unstored(&mut self) -> Vec<StoredMsg> {
        let q = std::mem::take(&mut self.q);
        let mut fan = std::mem::take(&mut self.fan).into_iter().peekable();
        self.bytes = 0;
        let mut out = Vec::with_capacity(q.len() + fan.len());
        let fanned = |(_, m): (u64, Rc<FanMsg>)| StoredMsg {
            from_user: String::from_utf8_lossy(&m.from_user).into_owned(),
            to_room: String::from_utf8_lossy(&m.to_room).into_owned(),
            payload: m.payload.clone(),
            server_ts_us: m.ts_us,
            msg_id: m.msg_id,
        };
        for u in q {
            // The two queues merge by seq.
            while let Some(f) = fan.next_if(|(s, _)| *s < u.seq) {
                out.push(fanned(f));
            }
            if u.store_seq != 0 {
                continue;
            }
            let idx = u.name.saturating_sub(self.names_base) as usize;
            let (from_user, to_room) = self.names.get(idx).cloned().unwrap_or_default();
            out.push(StoredMsg {
                from_user: String::from_utf8_lossy(&from_user).into_owned(),
                to_room: String::from_utf8_lossy(&to_room).into_owned(),
                payload: u.payload.into_bytes(),
                server_ts_us: u.ts_us,
                msg_id: u.msg_id,
            });
        }
        out.extend(fan.map(fanned));
        self.names.clear();
        out
    }
}

/// A message on its way into sessions, borrowed from wherever it is.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Authenticated sender.
    pub from_user: &'a Bytes,
    /// Room, empty for a direct message.
    pub to_room: &'a Bytes,
    /// Payload.
    pub payload: &'a Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
    /// Its seq in the recipient's offline queue (sync mode), 0 if not stored.
    pub store_seq: u64,
    /// The same payload as a reference the sessions of this shard share (room fan-out).
    pub fanned: Option<&'a Rc<FanMsg>>,
}

impl Outgoing<'_> {
    fn to_stored(self) -> StoredMsg {
        StoredMsg {
            from_user: String::from_utf8_lossy(self.from_user).into_owned(),
            to_room: String::from_utf8_lossy(self.to_room).into_owned(),
            payload: self.payload.clone(),
            server_ts_us: self.ts_us,
            msg_id: self.msg_id,
        }
    }
}

/// Who waits for a message to be stored.
#[derive(Debug)]
pub enum Answer {
    /// Nobody (the sender did not ask for a SendResult).
    Nobody,
    /// The sending session and its request id.
    Sender(SessionId, u64),
    /// One shard's share of a room message (see [`RoomAck`]).
    Part(Arc<FanPart>),
}

impl From<Option<(SessionId, u64)>> for Answer {
    fn from(r: Option<(SessionId, u64)>) -> Self {
        match r {
            Some((id, request_id)) => Answer::Sender(id, request_id),
            None => Answer::Nobody,
        }
    }
}

/// The SendResult of a room message whose sender asked for one: it is sent once every
/// shard with members has delivered or stored its members' copies (so OK means what it
/// means for a direct message: delivered or stored, on disk in sync mode). Any failure
/// wins over OK (the last one reported, e.g. RATE_LIMITED for a member's full queue).
#[derive(Debug)]
pub struct RoomAck {
    shards_left: AtomicUsize,
    worst: AtomicI32,
    reply: (SessionId, u64),
    msg_id: u64,
}

impl RoomAck {
    /// Waits for `shards` shards.
    pub fn new(shards: usize, reply: (SessionId, u64), msg_id: u64) -> Arc<RoomAck> {
        Arc::new(RoomAck {
            shards_left: AtomicUsize::new(shards),
            worst: AtomicI32::new(Status::Ok as i32),
            reply,
            msg_id,
        })
    }

    fn record(&self, status: Status) {
        if status != Status::Ok {
            self.worst.store(status as i32, Ordering::Relaxed);
        }
    }

    /// One shard is done.
    pub fn shard_done(&self, sh: &mut Shard, status: Status) {
        self.record(status);
        if self.shards_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let worst =
                Status::try_from(self.worst.load(Ordering::Relaxed)).unwrap_or(Status::Internal);
            sh.reply_send(Some(self.reply), self.msg_id, worst);
        }
    }
}

/// One shard's share of a [`RoomAck`]: the store steps of its members still running.
#[derive(Debug)]
pub struct FanPart {
    pending: AtomicUsize,
    worst: AtomicI32,
    ack: Arc<RoomAck>,
}

impl FanPart {
    /// A share with one step (the fan-out itself) pending.
    pub fn new(ack: Arc<RoomAck>) -> Arc<FanPart> {
        Arc::new(FanPart {
            pending: AtomicUsize::new(1),
            worst: AtomicI32::new(Status::Ok as i32),
            ack,
        })
    }

    /// One more step to wait for.
    pub fn add(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A step finished.
    pub fn finish(&self, sh: &mut Shard, status: Status) {
        if status != Status::Ok {
            self.worst.store(status as i32, Ordering::Relaxed);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let worst =
                Status::try_from(self.worst.load(Ordering::Relaxed)).unwrap_or(Status::Internal);
            self.ack.shard_done(sh, worst);
        }
    }
}

/// The reason that goes with a SendResult status.
pub fn status_reason(status: Status) -> &'static str {
    match status {
        Status::Ok => "",
        Status::NotFound => "no such user or room",
        Status::RateLimited => "the recipient's offline queue is full",
        Status::Unavailable => "the store is shut down",
        Status::Forbidden => "not a member of the room",
        _ => "storage error",
    }
}

/// The SendResult status for a failed store request.
pub fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound => Status::NotFound,
        StoreError::Full => Status::RateLimited,
        StoreError::Closed => Status::Unavailable,
        StoreError::Invalid(_) => Status::BadRequest,
        StoreError::Conflict => Status::Conflict,
        StoreError::Io(_) => Status::Internal,
    }
}

pub(crate) fn send_result_frame(request_id: u64, status: Status, msg_id: u64) -> ServerFrame {
    crate::shard::send_result(request_id, status, status_reason(status), msg_id)
}

impl Shard {
    /// True when this shard has a store (always, in a running router).
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// True in `sync` durability: every message goes through the store first.
    pub fn journaled(&self) -> bool {
        self.store.is_some() && self.cfg.durability == DurabilityMode::Sync
    }

    /// True when readers should wait for the store to catch up.
    pub fn store_full(&self) -> bool {
        // Not `parked_bytes`: this gates the rings too, and the mail that drains parked
        // work (a user's RoomQuota, a room's store completion) must keep flowing.
        self.store_inflight >= STORE_HIGH_WATER
            || self.store_bytes >= self.cfg.max_store_queue_bytes
    }

    /// True when room work parked behind store round trips (see `Shard::parked_bytes`)
    /// is over `max_store_queue_bytes`: this shard's readers wait.
    pub fn parked_full(&self) -> bool {
        self.parked_bytes >= self.cfg.max_store_queue_bytes
    }

    /// A message from `sender` was parked on a busy room: over the bound, a sender on
    /// another shard is paused (like a recipient over its bound pauses it) until
    /// [`Shard::release_parked`]; a local sender's reader waits on `parked_full` itself.
    pub fn throttle_parked(&mut self, sender: SessionId) {
        if !self.parked_full()
            || sender.shard as usize == self.id
            || self.parked_throttled.contains(&sender)
        {
            return;
        }
        if let Some(t) = self.pause.get(sender.shard as usize) {
            if t.add(sender, 1).is_some() {
                self.parked_throttled.push(sender);
            }
        }
    }

    /// Once parked room work is under half its bound: wakes the readers waiting for it
    /// and resumes the remote senders it paused. Called after every consumer turn.
    pub fn release_parked(&mut self) {
        if self.parked_bytes >= self.cfg.max_store_queue_bytes / 2 {
            return;
        }
        if !self.store_full() {
            for w in self.store_waiters.drain(..) {
                w.wake();
            }
        }
        for id in std::mem::take(&mut self.parked_throttled) {
            self.post(id.shard as usize, Mail::Resume { sender: id });
        }
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
        let mut guard = Completion {
            then: Some(then),
            bytes,
            done: link.done.clone(),
            _answer: std::marker::PhantomData,
        };
        let cb = Box::new(move |r: StoreResult<T>| guard.complete(r));
        self.store_inflight += 1;
        self.store_bytes += bytes;
        // A request the store refuses (shut down) drops `cb` uncalled: the guard's drop
        // then queues `then` with `Closed`, like any other answer.
        let _ = submit(&link.handle, cb);
    }

    /// Reports the outcome of one store step of a message to whoever waits for it.
    pub fn answer_send(&mut self, a: Answer, msg_id: u64, status: Status) {
        match a {
            Answer::Nobody => {}
            Answer::Sender(id, request_id) => {
                self.reply_send(Some((id, request_id)), msg_id, status)
            }
            Answer::Part(p) => p.finish(self, status),
        }
    }

    /// Answers a sender (on this shard or another) about a message.
    pub fn reply_send(&mut self, reply: Option<(SessionId, u64)>, msg_id: u64, status: Status) {
        let Some((to, request_id)) = reply else {
            return;
        };
        if to.shard as usize == self.id {
            if let Some(key) = self.resolve(to) {
                self.push_frame(key, &send_result_frame(request_id, status, msg_id));
            }
        } else {
            self.post(
                to.shard as usize,
                Mail::Result {
                    to,
                    request_id,
                    msg_id,
                    status,
                },
            );
        }
    }

    fn offline_cap(&self) -> Option<QueueCap> {
        let overflow = match self.cfg.offline_overflow {
            OfflineOverflow::Reject => Overflow::Reject,
            OfflineOverflow::DropOldest => Overflow::DropOldest,
        };
        Some(QueueCap {
            max_msgs: self.cfg.max_offline_per_user,
            max_bytes: self.cfg.max_offline_bytes_per_user,
            overflow,
        })
    }

    /// The ceiling for messages a session gives back when it ends (accepted already, so
    /// never refused): the offline cap plus what one session may hold unacked. Only a
    /// user whose devices keep taking messages without acking them reaches it; the
    /// oldest are then dropped.
    fn requeue_cap(&self) -> QueueCap {
        let c = &self.cfg;
        QueueCap {
            max_msgs: c
                .max_offline_per_user
                .saturating_add(c.max_unacked_per_session as u64),
            max_bytes: c
                .max_offline_bytes_per_user
                .saturating_add(c.max_unacked_bytes_per_session as u64),
            overflow: Overflow::DropOldest,
        }
    }

    /// Stores a message for `to_user`, who has no live session, and answers the sender
    /// once it is stored (OK), or why not (NOT_FOUND: no such user; RATE_LIMITED: the
    /// queue is full).
    pub fn store_offline(&mut self, to_user: &[u8], m: Outgoing<'_>, reply: Answer) {
        if !self.has_store() {
            self.answer_send(reply, m.msg_id, Status::NotFound);
            return;
        }
        self.counters.offline_stored += 1;
        let user = String::from_utf8_lossy(to_user).into_owned();
        let msg_id = m.msg_id;
        let stored = m.to_stored();
        let cap = self.offline_cap();
        self.store_req_sized(
            stored.payload.len(),
            |s, cb| s.enqueue(&user, vec![stored], cap, true, cb),
            move |sh, r| {
                let status = match r {
                    Ok(_) => Status::Ok,
                    Err(e) => {
                        if !matches!(e, StoreError::NotFound | StoreError::Full) {
                            tracing::warn!(error = %e, "offline append failed");
                        }
                        store_status(&e)
                    }
                };
                sh.answer_send(reply, msg_id, status);
            },
        );
    }

    /// Sync durability: appends the message to `to_user`'s queue, then delivers it to
    /// the user's live sessions (with its store seq, so the ack removes it) and answers
    /// the sender.
    pub fn journal(
        &mut self,
        to_user: Bytes,
        msg: Held,
        reply: Answer,
        sender: SessionId,
        skip: Option<SessionId>,
    ) {
        let user = String::from_utf8_lossy(&to_user).into_owned();
        let stored = msg.to_stored();
        let cap = self.offline_cap();
        self.counters.journaled += 1;
        self.store_req_sized(
            stored.payload.len(),
            |s, cb| s.enqueue(&user, vec![stored], cap, true, cb),
            move |sh, r| match r {
                Ok(a) => {
                    let m = Outgoing {
                        from_user: &msg.from_user,
                        to_room: &msg.to_room,
                        payload: &msg.payload,
                        msg_id: msg.msg_id,
                        ts_us: msg.ts_us,
                        store_seq: a.first_seq,
                        fanned: None,
                    };
                    let mut blocked = Vec::new();
                    let (_, overflowed) =
                        sh.deliver_to_sessions(&to_user, m, Some(sender), skip, &mut blocked);
                    sh.close_overflowed(overflowed);
                    sh.answer_send(reply, msg.msg_id, Status::Ok);
                }
                Err(e) => {
                    if !matches!(e, StoreError::NotFound | StoreError::Full) {
                        tracing::warn!(error = %e, "journal append failed");
                    }
                    sh.answer_send(reply, msg.msg_id, store_status(&e));
                }
            },
        );
    }
}

impl Shard {
    /// Removes `user`'s stored messages up to `store_seq` (acked). Nothing waits for it.
    pub(crate) fn remove_stored(&mut self, user: &[u8], store_seq: u64) {
        if let Some(link) = &self.store {
            let user = String::from_utf8_lossy(user);
            let r = link.handle.remove_up_to(&user, store_seq, |r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "removing acked messages failed");
                }
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "removing acked messages failed");
            }
        }
    }

    /// A session is ending: its unacked live deliveries and held-back messages go to
    /// the user's offline queue, in order (they were accepted already: only the ceiling of
    /// [`Shard::requeue_cap`] applies).
    pub(crate) fn requeue(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let mut msgs = s.unacked.take_unstored();
        let held = std::mem::take(&mut s.held);
        s.held_bytes = 0;
        s.load_next = None;
        if s.discard_unacked || self.store.is_none() {
            return;
        }
        msgs.extend(held.iter().map(Held::to_stored));
        if msgs.is_empty() {
            return;
        }
        self.counters.requeued += msgs.len() as u64;
        let user = String::from_utf8_lossy(&s.user).into_owned();
        // An account deleted meanwhile gets nothing back (NOT_FOUND): its messages must
        // not wait for whoever registers the name next.
        let bytes = msgs.iter().map(|m| m.payload.len()).sum();
        let cap = Some(self.requeue_cap());
        self.store_req_sized(
            bytes,
            |st, cb| st.enqueue(&user, msgs, cap, true, cb),
            |_, r| match r {
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(e) => tracing::warn!(error = %e, "requeueing unacked messages failed"),
            },
        );
    }

    /// A session just logged in: records the user (open and jwt auth: a user exists from
    /// the first login) and starts delivering the offline queue. `login` (the
    /// LoginResult) is queued with the first page, ahead of it.
    pub fn start_backlog(&mut self, key: SessionKey, login: ServerFrame) {
        let Some(id) = self.session_id(key) else {
            return;
        };
        if self.store.is_none() {
            self.push_frame(key, &login);
            return;
        }
        self.sessions[key].login_frame = Some(login);
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        if self.cfg.auth != AuthMode::Accounts {
            let u = user.clone();
            self.store_req(
                |st, cb| st.ensure_user(&u, cb),
                |_, r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "recording a user failed");
                    }
                },
            );
        } else {
            // The password was checked before the session existed: an account deleted in
            // between must not keep a session (a DeleteAccount that comes later ends it).
            let u = user.clone();
            self.store_req(
                |st, cb| st.user_exists(&u, cb),
                move |sh, r| {
                    if let (Ok(false), Some(key)) = (r, sh.resolve(id)) {
                        sh.sessions[key].discard_unacked = true;
                        sh.close(
                            key,
                            CloseReason::Kicked,
                            Some((Status::Unauthorized, "account deleted")),
                        );
                    }
                },
            );
        }
        self.sessions[key].loading = true;
        // This backlog delivers again what a closed device of the user left unacked.
        self.stored_floor.remove(self.sessions[key].user.as_ref());
        self.load_page(id, user, 0);
    }

    /// Messages per backlog page: at most half the unacked limit, so a page never
    /// overflows a session by itself (the next one waits for the client's acks).
    fn backlog_page(&self) -> usize {
        LOAD_PAGE.min((self.cfg.max_unacked_per_session / 2).max(1))
    }

    /// Payload bytes per backlog page: half the session's outbound bound (the next page
    /// is loaded once the queue is under the other half).
    fn backlog_page_bytes(&self) -> usize {
        (self.cfg.max_pending_bytes / 2).max(1)
    }

    fn load_page(&mut self, id: SessionId, user: String, from: u64) {
        let page = self.backlog_page();
        let max_bytes = self.backlog_page_bytes();
        self.store_req(
            |st, cb| st.load_page(&user, from, page, max_bytes, cb),
            move |sh, r| sh.on_backlog_page(id, r),
        );
    }

    fn on_backlog_page(&mut self, id: SessionId, r: StoreResult<Vec<(u64, StoredMsg)>>) {
        let Some(key) = self.resolve(id) else {
            // Gone: the messages stay queued for the next login.
            return;
        };
        self.send_login_frame(key);
        let page = match r {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "loading an offline queue failed");
                self.finish_backlog(key);
                return;
            }
        };
        let bytes: usize = page.iter().map(|(_, m)| m.payload.len()).sum();
        let full = page.len() >= self.backlog_page() || bytes >= self.backlog_page_bytes();
        let inline_max = self.cfg.inline_payload_max;
        let s = &mut self.sessions[key];
        let mut last = 0;
        for (store_seq, m) in &page {
            s.last_seq += 1;
            s.out
                .push_deliver(&stamp_of(s.last_seq, m), &m.payload, inline_max);
            s.unacked.push_stored(s.last_seq, *store_seq);
            last = *store_seq;
        }
        s.wake_writer();
        self.counters.offline_delivered += page.len() as u64;
        self.counters.delivered += page.len() as u64;
        if full {
            self.sessions[key].load_next = Some(last + 1);
            self.continue_loading(key);
        } else {
            self.finish_backlog(key);
        }
    }

    /// Queues the LoginResult held for the first backlog page, and lets the session's
    /// reader start.
    fn send_login_frame(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            if let Some(f) = s.login_frame.take() {
                s.push_frame(&f);
                s.wake_drain_waiters();
            }
        }
    }

    /// Loads the next backlog page of session `key` once it has room for it (called
    /// after its writer drained and after each ack).
    pub fn continue_loading(&mut self, key: SessionKey) {
        let max_pending = self.cfg.max_pending_bytes / 2;
        let max_unacked = self.cfg.max_unacked_per_session / 2;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        // Held-back live messages do not count: they only drain once the backlog is out.
        if s.closing.is_some()
            || !s.loading
            || s.out.len() + s.inflight > max_pending
            || s.unacked.len() > max_unacked
        {
            return;
        }
        let Some(from) = s.load_next.take() else {
            return;
        };
        let user = String::from_utf8_lossy(&s.user).into_owned();
        if let Some(id) = self.session_id(key) {
            self.load_page(id, user, from);
        }
    }

    /// The backlog is out: what was held back follows it, then live delivery resumes.
    fn finish_backlog(&mut self, key: SessionKey) {
        let inline_max = self.cfg.inline_payload_max;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.loading = false;
        s.load_next = None;
        let held = std::mem::take(&mut s.held);
        s.held_bytes = 0;
        for h in held {
            s.last_seq += 1;
            let stamp = DeliverStamp {
                seq: s.last_seq,
                from_user: &h.from_user,
                to_room: &h.to_room,
                server_ts_us: h.ts_us,
                msg_id: h.msg_id,
            };
            s.out.push_deliver(&stamp, &h.payload, inline_max);
            let m = Outgoing {
                from_user: &h.from_user,
                to_room: &h.to_room,
                payload: &h.payload,
                msg_id: h.msg_id,
                ts_us: h.ts_us,
                store_seq: 0,
                fanned: None,
            };
            s.unacked.push(s.last_seq, &m);
        }
        s.wake_writer();
        // Not closed here for being over `max_unacked`: the backlog pages are bounded
        // by it and what was held back was bounded when it was held.
    }
}

/// A Deliver stamp for a stored message.
pub fn stamp_of<'a>(seq: u64, m: &'a StoredMsg) -> DeliverStamp<'a> {
    DeliverStamp {
        seq,
        from_user: m.from_user.as_bytes(),
        to_room: m.to_room.as_bytes(),
        server_ts_us: m.server_ts_us,
        msg_id: m.msg_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fan(id: u64) -> Rc<FanMsg> {
        Rc::new(FanMsg::new(
            Bytes::from(format!("room {id}")),
            Bytes::from_static(b"ann"),
            Bytes::from_static(b"lobby"),
            id,
            id,
        ))
    }

    #[test]
    fn retained_keeps_direct_and_room_messages_in_seq_order_until_acked() {
        let mut r = Retained::default();
        let (bob, empty) = (Bytes::from_static(b"bob"), Bytes::new());
        let big = Bytes::from(vec![7u8; 300]);
        let direct = |payload: &Bytes, id: u64| {
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload,
                msg_id: id,
                ts_us: id,
                store_seq: 0,
                fanned: None,
            };
            StoredMsg {
                from_user: "bob".into(),
                to_room: String::new(),
                payload: m.payload.clone(),
                server_ts_us: id,
                msg_id: id,
            }
        };
        let small = Bytes::from_static(b"hi");
        let push_direct = |r: &mut Retained, seq: u64, p: &Bytes| {
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: p,
                msg_id: seq,
                ts_us: seq,
                store_seq: 0,
                fanned: None,
            };
            r.push(seq, &m);
        };
        push_direct(&mut r, 1, &small);
        let f2 = fan(2);
        let m2 = Outgoing {
            from_user: &f2.from_user,
            to_room: &f2.to_room,
            payload: &f2.payload,
            msg_id: 2,
            ts_us: 2,
            store_seq: 0,
            fanned: Some(&f2),
        };
        r.push(2, &m2);
        push_direct(&mut r, 3, &big);
        r.push_stored(4, 17);
        let f5 = fan(5);
        r.push(
            5,
            &Outgoing {
                fanned: Some(&f5),
                msg_id: 5,
                ts_us: 5,
                ..m2
            },
        );
        assert_eq!(r.len(), 5);
        // Acking 2 drops one of each kind; nothing stored among them.
        assert_eq!(r.ack(2), 0);
        assert_eq!(r.len(), 3);
        // What is left and not in the store comes back in seq order: 3 (direct), 5 (room).
        let rest = r.take_unstored();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0], direct(&big, 3));
        assert_eq!(
            (
                rest[1].msg_id,
                rest[1].to_room.as_str(),
                rest[1].from_user.as_str()
            ),
            (5, "lobby", "ann")
        );
        assert!(r.is_empty());
        // A stored entry is reported by the ack that covers it.
        r.push_stored(6, 40);
        r.push_stored(7, 41);
        assert_eq!(r.ack(7), 41);
    }
}
