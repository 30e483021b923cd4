//! Backpressure across shards: pause tables, the pipeline bound, and the bookkeeping
//! that pauses remote senders and resumes them (a recipient over its bound, room work
//! parked over its bound).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::mail::Mail;
use super::session::{SessionId, SessionKey};
use super::Shard;

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
    pub(crate) fn reset(&self, key: SessionKey, gen: u32) {
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
    pub(crate) fn count(&self, key: SessionKey, gen: u32) -> u32 {
        match self.0.get(key).map(|a| a.load(Ordering::Acquire)) {
            Some(v) if (v >> 32) as u32 == gen => v as u32,
            _ => 0,
        }
    }
}

impl Shard {
    /// Takes back one pause of a sender session of this shard; wakes its reader at zero.
    pub(crate) fn resume_sender(&mut self, sender: SessionId) {
        let left = self.pause.get(self.id).and_then(|t| t.add(sender, -1));
        if left == Some(0) {
            if let Some(s) = self.resolve(sender).and_then(|k| self.sessions.get_mut(k)) {
                s.wake_drain_waiters();
            }
        }
    }

    /// True when the pipeline to some other shard (outbox plus ring) is over its
    /// high-water mark: readers wait before reading more.
    pub fn pipeline_full(&self) -> bool {
        self.outbox_bytes
            .iter()
            .zip(&self.flight_out)
            .any(|(q, f)| q + f.load(Ordering::Acquire) > PIPELINE_HIGH_WATER)
    }

    /// Whether this shard may take in new work (a reader's next read, an API publish):
    /// `Pending`, with `waker` registered, while the store requests or the parked work
    /// (woken as store answers bring them down) or the pipeline to other shards (woken
    /// as it drains) are over their marks.
    pub fn poll_intake(&mut self, waker: &std::task::Waker) -> std::task::Poll<()> {
        self.poll_intake_of(None, waker)
    }

    /// [`Shard::poll_intake`] for the HTTP API's message to `room` (empty: to a user).
    /// One to a room homed here waits here only while the readers yield to something
    /// else; it waits for room in the store's queue next, holding its place
    /// ([`Shard::poll_api_room_send`]). Waiting here for the queue too, woken with every
    /// reader as it went under its bound, 200 of them pipelining offline DMs took the
    /// room each time before it was polled: 4 publishes in 8 to a room of 9 999 offline
    /// members were answered 503 after `--http-api-timeout`. Any other goes past a full
    /// queue as a session with nothing in it does (an HTTP connection has one request at
    /// a time): 3 in 8 to an offline user were answered 503 so.
    pub fn poll_api_intake(
        &mut self,
        room: &[u8],
        waker: &std::task::Waker,
    ) -> std::task::Poll<()> {
        if !self.parked_full() {
            if !room.is_empty() && self.home(room) == self.id {
                // (Not during the readers' yields: what they yield to goes first.)
                if !(self.store_yield || self.local_yield) {
                    return self.poll_pipeline(None, waker);
                }
            } else if self.store_full() {
                return self.poll_lane(None, waker);
            }
        }
        self.poll_intake(waker)
    }

    /// [`Shard::poll_intake`] for the reader of session `key`, if any: past a full
    /// pipeline, see [`Shard::pipe_lane_open`].
    fn poll_intake_of(
        &mut self,
        key: Option<SessionKey>,
        waker: &std::task::Waker,
    ) -> std::task::Poll<()> {
        if self.store_full() || self.parked_full() {
            let max = self.waiters_max();
            wait_in(&mut self.store_waiters, waker, max);
            std::task::Poll::Pending
        } else {
            self.poll_pipeline(key, waker)
        }
    }

    /// The pipeline part of [`Shard::poll_intake`].
    pub(crate) fn poll_pipeline(
        &mut self,
        key: Option<SessionKey>,
        waker: &std::task::Waker,
    ) -> std::task::Poll<()> {
        if !self.pipeline_full() {
            self.pipe_drained();
            return std::task::Poll::Ready(());
        }
        self.pipe_was_full = true;
        if key.is_some_and(|k| self.pipe_lane_open(k)) {
            return std::task::Poll::Ready(());
        }
        let max = self.waiters_max();
        wait_in(&mut self.outbox_waiters, waker, max);
        std::task::Poll::Pending
    }

    /// Whether session `key` may be read past a full pipeline to other shards. The
    /// pipeline fills when another shard is behind (its store, say, holding its rings),
    /// and every reader here waited for it, Pings and messages to users of this shard
    /// included: a loop of room messages to a room of 10 000 offline members held
    /// others' Pings for as long as the loop lasted. So a session none of whose chunks put
    /// mail in the outboxes since the pipeline went past half its mark is read, while
    /// each outbox is within a reserve past the mark; a chunk that puts mail in them ends
    /// that (`pipe_posted`), so each session adds about a chunk's mail at a time, and all
    /// of them together at most the reserve. (Those feeding it as it filled are not read
    /// past it: read once more each, 16 pairs across shards ran 5% slower.)
    fn pipe_lane_open(&self, key: SessionKey) -> bool {
        let reserve = PIPELINE_HIGH_WATER + PIPELINE_HIGH_WATER / 8;
        !self.pipe_posted.contains(&key)
            && self
                .outbox_bytes
                .iter()
                .zip(&self.flight_out)
                .all(|(q, f)| q + f.load(Ordering::Acquire) <= reserve)
    }

    /// Whether the pipeline to some other shard is full, or past half its mark: a chunk
    /// that put mail in it now is noted (`pipe_posted`), so that the sessions feeding it
    /// are not read past it once it is full, only those that were not.
    pub(crate) fn pipe_filling(&self) -> bool {
        self.pipe_was_full
            || self
                .outbox_bytes
                .iter()
                .zip(&self.flight_out)
                .any(|(q, f)| q + f.load(Ordering::Acquire) > PIPELINE_HIGH_WATER / 2)
    }

    /// The pipeline was found under its mark: the next time it is full, the sessions that
    /// did not feed it as it filled may be read past it (see [`Shard::pipe_lane_open`]).
    pub(crate) fn pipe_drained(&mut self) {
        if std::mem::take(&mut self.pipe_was_full) {
            self.pipe_posted.clear();
        }
    }

    /// Most wakers a list of intake waiters holds (see [`wait_in`]): twice the sessions,
    /// and room for the HTTP API's publishers.
    pub(crate) fn waiters_max(&self) -> usize {
        2 * self.sessions.len() + 64
    }

    /// [`Shard::poll_intake`] for the reader of session `key`. A full store queue stops
    /// every reader of the shard, and one session that floods it (room messages to
    /// hundreds of offline members) kept the others from being read for seconds, pings
    /// and messages to live users included. So a session with no store request in
    /// flight is read while the queue is under its bound plus a reserve
    /// ([`Shard::store_over_reserve`]); once its frames make a request it waits with the
    /// others (the reader stops mid-chunk: `net::session`), so each such session adds
    /// about one frame's requests at a time, and all of them together at most the
    /// reserve.
    pub fn poll_session_intake(
        &mut self,
        key: SessionKey,
        waker: &std::task::Waker,
    ) -> std::task::Poll<()> {
        if !self.room_waits.is_empty() {
            if let Some(p) = self.poll_room_wait(key, waker) {
                return p;
            }
        }
        if !(self.store_full() && self.lane_eligible(key) && !self.parked_full()) {
            return self.poll_intake_of(Some(key), waker);
        }
        self.poll_lane(Some(key), waker)
    }

    /// The intake past a full store queue of a reader with nothing in it (a session's,
    /// the HTTP API's): open within the reserve.
    fn poll_lane(
        &mut self,
        key: Option<SessionKey>,
        waker: &std::task::Waker,
    ) -> std::task::Poll<()> {
        if self.store_over_reserve() {
            // (Woken once the queue is back within the reserve: not with every reader
            // waiting for it to fall under the bound.)
            let max = self.waiters_max();
            wait_in(&mut self.lane_waiters, waker, max);
            return std::task::Poll::Pending;
        }
        self.poll_pipeline(key, waker)
    }

    /// Whether session `key`'s frames may be handled as far as the store is concerned:
    /// its queue is under its bounds, or the session may go past them (see
    /// [`Shard::poll_session_intake`]).
    pub fn store_open_to(&self, key: SessionKey) -> bool {
        !self.store_full()
            || self.store_lane_open(key)
            || (!self.store_queue_full() && self.room_wait_retry(key))
    }

    /// Whether session `key` may be read past a full store queue (see
    /// [`Shard::poll_session_intake`]).
    pub(crate) fn store_lane_open(&self, key: SessionKey) -> bool {
        !self.store_over_reserve() && self.lane_eligible(key)
    }

    /// Session `key` has no store work in flight (see [`Shard::poll_session_intake`]).
    fn lane_eligible(&self, key: SessionKey) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| s.requests == 0 && s.store_sends == 0)
    }

    /// Wakes the readers waiting for the store: all of them once its queue is under its
    /// bound, those of the lane once it is back within the reserve.
    pub(crate) fn wake_store_waiters(&mut self, was_full: bool, was_over: bool) {
        if was_full && !self.store_full() {
            for w in self.store_waiters.drain(..) {
                w.wake();
            }
        }
        if (was_full || was_over) && !self.store_over_reserve() {
            for w in self.lane_waiters.drain(..) {
                w.wake();
            }
        }
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
            self.wake_store_waiters(true, true);
        }
        for id in std::mem::take(&mut self.parked_throttled) {
            self.post(id.shard as usize, Mail::Resume { sender: id });
        }
    }
}

/// Registers `waker` in an intake waiters' list. A waiting reader is also woken for its
/// own reasons (its writer drained, a request answered), polls again and registers again:
/// over a long stall its list grew by one waker per such wake-up. Past `max` the list is
/// woken whole and emptied instead (each reader still waiting registers once more).
pub(crate) fn wait_in(list: &mut Vec<std::task::Waker>, waker: &std::task::Waker, max: usize) {
    if list.len() >= max {
        for w in list.drain(..) {
            w.wake();
        }
    }
    list.push(waker.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
