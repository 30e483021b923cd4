//! What a session leaves unacked when it ends goes to its user's offline queue, in
//! order (accepted messages are never refused: only the ceiling of
//! [`Shard::requeue_cap`] applies: what is given back past it is dropped and counted,
//! never what the queue holds already).
//!
//! The messages wait here in the compact form the session held them in (16 bytes a
//! room message, a shared payload) and go to the store a slice at a time while the
//! store queue has room: 64 devices of one user that each left 250 000 room messages
//! unacked used to hand the store 16 million records at once (1.9 GiB of them, the
//! storage thread busy for 37 s while every other request waited). What the queue's
//! ceiling would drop anyway is dropped here before it is ever encoded: a user's
//! requeues waiting here hold at most the ceiling. What waits counts the memory it holds
//! in the shard's requeue bytes (`Requeue::weight`: its entries, a direct message's
//! payload, a room message's share of its one copy): past `--max-requeue-bytes` the
//! shard's readers pause, so sessions that keep ending while the store is busy cannot
//! pile requeues up. It has its own bound, not the store queue's: 450 members of a room
//! cut together held 37 M room messages (600 MB of entries; their payloads were counted
//! once for each holder), and every reader of the shard paused while the store wrote
//! them.
//!
//! Order: anything else that goes to a user's offline queue while requeues of theirs
//! wait (a message stored for them, a contact or room event) goes behind them, in the
//! last one's `behind` ([`Shard::behind_requeues`]), paced with them and stored with its
//! own cap (its sender answered then); a login's backlog page waits until they are
//! handed to the store, put at the front of the line ([`Shard::load_behind_requeues`]);
//! a journaled message, which needs its seq at once, first hands them over whole
//! ([`Shard::flush_requeues_of`]). The store takes one shard's requests in order, and a
//! user's requests all come from their home shard, so a sender's messages reach the
//! queue in the order sent. A deleted account's waiting requeues are dropped before the
//! deletion goes to the store ([`Shard::drop_requeues_of`]): they must not wait for
//! whoever registers the name next; a session of it that ends while the deletion is
//! under way gives nothing back.

use std::collections::VecDeque;

use bytes::Bytes;
use ringrouter_proto::Status;

use super::answer::Answer;
use super::retention::{OwnedMsg, Retained};
use super::session::{SessionId, SessionKey};
use super::store_link::STORE_HIGH_WATER;
use super::Shard;
use crate::store::{Overflow, QueueCap, StoreError, StoredMsg};

/// Messages per store request of a requeue.
const SLICE: usize = 4096;

/// Keys kept in all (a shard's), at most: past it the stale users' are let go (a copy
/// then goes to the queue as before: the dedup is a saving, never needed for delivery).
const RECENT_MAX: usize = 1 << 18;

/// The messages ended sessions gave back to their user's offline queue lately, by a
/// keyed hash of (sender, room, msg_id, router timestamp): the same message delivered to
/// D devices of a user that all end without acking it is queued once, not D times (each
/// device that came back got all D copies: 8 devices cut with 50 messages each, one
/// device back got 400; in a loop of cuts and resumes 3 000 sends became a million
/// deliveries). A copy another device acked is not in here: only what was given back.
#[derive(Debug, Default)]
struct Recent {
    users: std::collections::HashMap<Bytes, (std::time::Instant, std::collections::HashSet<u64>)>,
    keys: usize,
    hasher: std::hash::RandomState,
}

impl Recent {
    fn key(&self, from: &[u8], room: &[u8], msg_id: u64, ts_us: u64) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hasher.build_hasher();
        from.hash(&mut h);
        room.hash(&mut h);
        msg_id.hash(&mut h);
        ts_us.hash(&mut h);
        h.finish()
    }

    /// Drops from `unacked` and `deferred` what `user`'s other devices gave back within
    /// `window` (`--requeue-dedup-window`; zero: nothing), and notes what it keeps. The
    /// deferred ones too: two devices paging a backlog each held the same live messages
    /// back, and both copies went to the queue, where the second pushed the oldest
    /// undelivered messages out past the requeue ceiling (lost, counted nowhere).
    fn dedup(
        &mut self,
        user: &Bytes,
        unacked: &mut Retained,
        deferred: &mut Vec<OwnedMsg>,
        now: std::time::Instant,
        window: std::time::Duration,
    ) {
        if window.is_zero() {
            return;
        }
        let fresh = |at: &std::time::Instant| now.saturating_duration_since(*at) < window;
        let mut kept = Vec::new();
        {
            let empty = std::collections::HashSet::new();
            let seen = match self.users.get(user) {
                Some((at, seen)) if fresh(at) => seen,
                _ => &empty,
            };
            let this = &*self;
            unacked.forget_seen(|f, r, id, ts| this.key(f, r, id, ts), seen, &mut kept);
            deferred.retain(|m| {
                let k = this.key(&m.from_user, &m.to_room, m.msg_id, m.ts_us);
                if seen.contains(&k) {
                    false
                } else {
                    kept.push(k);
                    true
                }
            });
        }
        if kept.is_empty() {
            return;
        }
        if self.keys + kept.len() > RECENT_MAX {
            let before = self.users.len();
            self.users.retain(|_, (at, _)| fresh(at));
            if self.users.len() == before || self.keys_now() + kept.len() > RECENT_MAX {
                self.users.clear();
            }
            self.keys = self.keys_now();
            if kept.len() > RECENT_MAX {
                return;
            }
        }
        let e = self
            .users
            .entry(user.clone())
            .or_insert_with(|| (now, Default::default()));
        if !fresh(&e.0) {
            self.keys -= e.1.len();
            e.1.clear();
        }
        e.0 = now;
        let before = e.1.len();
        e.1.extend(kept);
        self.keys += e.1.len() - before;
    }

    fn keys_now(&self) -> usize {
        self.users.values().map(|(_, s)| s.len()).sum()
    }
}

/// Payload bytes per store request of a requeue, at most (one message past it): a
/// slice of big messages must not fill the store queue by itself.
const SLICE_BYTES: usize = 4 << 20;

/// One ended session's messages on their way to its user's offline queue.
#[derive(Debug)]
pub struct Requeue {
    user: Bytes,
    device: String,
    gen: u32,
    /// Delivered and not acked, oldest first (entries in the store already are skipped).
    unacked: Retained,
    /// Deferred behind a login backlog: after `unacked`.
    deferred: VecDeque<StoredMsg>,
    /// What else came for the user's offline queue while this waited (the last requeue
    /// of the user's holds them): after `deferred`, each stored with its own cap and
    /// answered then ([`Shard::behind_requeues`]). Not under the requeue ceiling.
    behind: VecDeque<Behind>,
    /// What it still counts for in the shard's requeue bytes: the memory it held when
    /// the session ended ([`Retained::held_bytes`], [`record_bytes`] of each deferred
    /// one), taken back in proportion as its messages go ([`Requeue::shed`]), so that
    /// what is taken back sums to what was counted.
    weight: usize,
}

/// A message or notice for a user's offline queue that waits behind the user's
/// requeues: stored as it would have been (its cap: the offline queue's for a message, the
/// notice cap for a notice), and its sender answered then.
#[derive(Debug)]
pub(crate) struct Behind {
    /// The record.
    pub msg: StoredMsg,
    /// The queue's cap for it.
    pub cap: Option<QueueCap>,
    /// A message's sender, answered once it is stored (with the message id); a notice
    /// has none.
    pub reply: Option<(Answer, u64)>,
    /// The session of this shard whose Send put it here: it counts in that session's
    /// `store_sends` until stored (or dropped), as the store request it stands for would
    /// (set by [`Shard::behind_requeues`]).
    pub origin: Option<SessionId>,
}

impl Requeue {
    fn len(&self) -> usize {
        self.unacked.len() + self.deferred.len() + self.behind.len()
    }

    /// What the requeue ceiling applies to (not what waits behind).
    fn ceiling_len(&self) -> usize {
        self.unacked.len() + self.deferred.len()
    }

    /// Its messages went from `before` to [`Requeue::len`]: their share of the weight,
    /// which it no longer counts for.
    fn shed(&mut self, before: usize) -> usize {
        let now = self.len();
        let gone = if now == 0 || before == 0 {
            self.weight
        } else {
            // (u128: weight × count could overflow a usize on a 32-bit target.)
            (self.weight as u128 * (before - now) as u128 / before as u128) as usize
        };
        self.weight -= gone;
        gone
    }

    fn pop_deferred(&mut self) -> Option<StoredMsg> {
        self.deferred.pop_front()
    }

    /// The oldest `n` (at most, and payloads of about `max_bytes`) as store records, in
    /// order.
    fn take(&mut self, n: usize, max_bytes: usize) -> Vec<StoredMsg> {
        let mut msgs = self.unacked.take_oldest(n, max_bytes);
        if self.unacked.is_empty() {
            let mut bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
            while msgs.len() < n && bytes < max_bytes {
                let Some(m) = self.pop_deferred() else {
                    break;
                };
                bytes += m.payload.len();
                msgs.push(m);
            }
        }
        msgs
    }

    /// Forgets the oldest `n` (of what the ceiling applies to).
    fn drop_oldest(&mut self, n: usize) {
        let from_unacked = n.min(self.unacked.len());
        self.unacked.drop_oldest(from_unacked);
        for _ in from_unacked..n {
            if self.pop_deferred().is_none() {
                break;
            }
        }
    }
}

/// What a record counts for in the shard's requeue bytes: its encoded fields and its
/// own size (a small payload does not make a record free).
fn record_bytes(m: &StoredMsg) -> usize {
    std::mem::size_of::<StoredMsg>() + m.from_user.len() + m.to_room.len() + m.payload.len()
}

/// A user's waiting requeues.
#[derive(Debug)]
struct UserRequeues {
    /// Oldest first.
    queue: VecDeque<Requeue>,
    /// Messages they hold (with what waits behind them).
    held: usize,
    /// The user's turn: the entry of [`Requeues::line`] that stands for them.
    turn: u64,
}

/// The shard's waiting requeues, a queue per user, and the users in line for the store.
/// Each user's are handed over together, oldest first, and a user's requeues (and what
/// waits behind them) are found without a scan: with 450 members cut at once, every
/// message stored for one of them looked for its requeues through all the others.
#[derive(Debug, Default)]
pub struct Requeues {
    users: std::collections::HashMap<Bytes, UserRequeues>,
    /// What ended sessions gave back lately, per user (see [`Recent`]).
    recent: Recent,
    /// Users in the order their turns come: (user, turn). An entry whose turn is not the
    /// user's any more (they were moved to the front, or their requeues are gone) is
    /// skipped, and such entries are swept out once they are half of the line.
    line: VecDeque<(Bytes, u64)>,
    /// Entries of `line` that are skipped.
    stale: usize,
    next_turn: u64,
}

impl Requeues {
    /// Nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether requeues of `user`'s wait.
    fn holds(&self, user: &[u8]) -> bool {
        self.users.contains_key(user)
    }

    fn turn(&mut self) -> u64 {
        self.next_turn += 1;
        self.next_turn
    }

    /// Puts `r` behind `user`'s others, or the user last in line.
    fn push(&mut self, r: Requeue) {
        if let Some(u) = self.users.get_mut(&r.user) {
            u.held += r.len();
            u.queue.push_back(r);
            return;
        }
        let turn = self.turn();
        self.line.push_back((r.user.clone(), turn));
        let user = r.user.clone();
        let held = r.len();
        self.users.insert(
            user,
            UserRequeues {
                queue: VecDeque::from([r]),
                held,
                turn,
            },
        );
    }

    /// Moves `user`'s turn to the front of the line.
    fn move_to_front(&mut self, user: &[u8]) {
        let turn = self.turn();
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.turn = turn;
        self.line.push_front((Bytes::copy_from_slice(user), turn));
        self.gone_from_line();
    }

    /// One entry of the line is skipped from now on.
    fn gone_from_line(&mut self) {
        self.stale += 1;
        if self.stale > self.line.len() / 2 {
            let users = &self.users;
            self.line
                .retain(|(u, t)| users.get(u).is_some_and(|x| x.turn == *t));
            self.stale = 0;
        }
    }

    /// Takes `user`'s requeues out (their turn is skipped).
    fn remove(&mut self, user: &[u8]) -> Option<UserRequeues> {
        let u = self.users.remove(user)?;
        self.gone_from_line();
        Some(u)
    }

    /// The first requeue of the user whose turn it is, taken out of its queue (given
    /// back with [`Requeues::push_front`] if it still holds messages).
    /// (`None` also while that user's first requeue is out: it keeps its turn.)
    fn pop_front(&mut self) -> Option<Requeue> {
        loop {
            let (user, turn) = self.line.front()?;
            if let Some(u) = self.users.get_mut(user).filter(|u| u.turn == *turn) {
                return u.queue.pop_front();
            }
            self.stale = self.stale.saturating_sub(1);
            self.line.pop_front();
        }
    }

    /// Gives back what [`Requeues::pop_front`] took, first of its user's.
    fn push_front(&mut self, r: Requeue) {
        match self.users.get_mut(&r.user) {
            Some(u) => u.queue.push_front(r),
            None => self.push(r),
        }
    }
}

impl Shard {
    /// The ceiling for messages a session gives back when it ends (accepted already, so
    /// never refused): the offline cap plus what one session may hold unacked. Only a
    /// user whose devices keep taking messages without acking them reaches it; what is
    /// given back past it is then dropped (counted in `requeue_dropped`), never what the
    /// queue holds: that may never have been delivered (with `DropOldest` two devices'
    /// copies of the same held-back messages pushed 2 400 undelivered ones out).
    pub(crate) fn requeue_cap(&self) -> QueueCap {
        let c = &self.cfg;
        QueueCap {
            max_msgs: c
                .max_offline_per_user
                .saturating_add(c.max_unacked_per_session as u64),
            max_bytes: c
                .max_offline_bytes_per_user
                .saturating_add(c.max_unacked_bytes_per_session as u64),
            overflow: Overflow::DropNewest,
        }
    }

    /// A session is ending: its retained live deliveries and deferred messages are to go
    /// to the user's offline queue, in order.
    pub(crate) fn requeue(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let unacked = std::mem::take(&mut s.unacked);
        let deferred = std::mem::take(&mut s.deferred);
        s.deferred_bytes = 0;
        s.load_next = None;
        if s.discard_unacked || self.store.is_none() || (unacked.is_empty() && deferred.is_empty())
        {
            return;
        }
        let user = s.user.clone();
        let (mut unacked, mut deferred) = (unacked, deferred);
        // Entries in the store already are never stored again: they count for nothing.
        unacked.forget_stored();
        // Nor are copies another device of the user gave back already (delivered or
        // held back behind a backlog).
        let window = self.cfg.requeue_dedup_window;
        self.requeues.recent.dedup(
            &user,
            &mut unacked,
            &mut deferred,
            std::time::Instant::now(),
            window,
        );
        // Those still held by reference (younger than `PIN_MAX_US`) are copied: a
        // requeue may wait on the store, out of reach of the ticker's sweeps.
        unacked.unpin(u64::MAX, &mut crate::outbuf::Unpinning::default());
        // An account being deleted gets nothing back (its deletion may be in the store's
        // queue already, and a Register of the name behind it).
        if (unacked.is_empty() && deferred.is_empty())
            || self
                .deleting
                .contains(String::from_utf8_lossy(&user).as_ref())
        {
            return;
        }
        let deferred: VecDeque<StoredMsg> = deferred.iter().map(|m| m.to_stored()).collect();
        let r = Requeue {
            user: user.clone(),
            device: s.device.clone(),
            gen: s.gen,
            weight: unacked.held_bytes() + deferred.iter().map(record_bytes).sum::<usize>(),
            unacked,
            deferred,
            behind: VecDeque::new(),
        };
        self.requeue_bytes += r.weight;
        // Right after the user's others, if any wait (a login of the user may be waiting
        // for them all, and must not wait behind everyone else's), else last.
        self.requeues.push(r);
        self.trim_requeues(&user);
        self.pump_requeues();
    }

    /// Drops the oldest of `user`'s waiting requeues past the requeue ceiling: the
    /// store would drop them from the queue as the newer ones arrive. (What waits behind
    /// them has its own cap, applied when it is stored.)
    fn trim_requeues(&mut self, user: &Bytes) {
        let cap = usize::try_from(self.requeue_cap().max_msgs).unwrap_or(usize::MAX);
        let Some(u) = self.requeues.users.get_mut(user) else {
            return;
        };
        let held: usize = u.queue.iter().map(Requeue::ceiling_len).sum();
        let mut excess = held.saturating_sub(cap);
        if excess == 0 {
            return;
        }
        let (mut dropped, mut shed) = (0, 0);
        for r in u.queue.iter_mut() {
            if excess == 0 {
                break;
            }
            let (n, before) = (excess.min(r.ceiling_len()), r.len());
            r.drop_oldest(n);
            shed += r.shed(before);
            excess -= n;
            dropped += n;
        }
        u.held = u.held.saturating_sub(dropped);
        u.queue.retain(|r| r.len() > 0);
        let gone = u.held == 0;
        self.requeue_bytes -= shed;
        self.counters.requeue_dropped += dropped as u64;
        if gone {
            self.requeues.remove(user);
            self.requeues_gone(user);
        }
    }

    /// Hands waiting requeues to the store, a slice per request, while its queue is
    /// under half its bound (the other half stays for live traffic: a full store queue
    /// stops the shard's readers). Run again as store answers come back.
    pub(crate) fn pump_requeues(&mut self) {
        // (With nothing in flight, one slice goes whatever the bound: no answer would
        // come to pump again.)
        while self.store_inflight == 0
            || (self.store_inflight < STORE_HIGH_WATER / 2
                && self.store_bytes < self.cfg.max_store_queue_bytes / 2)
        {
            let Some(mut r) = self.requeues.pop_front() else {
                return;
            };
            self.submit_slice(&mut r);
            if r.len() > 0 {
                self.requeues.push_front(r);
            }
        }
    }

    /// Hands `user`'s waiting requeues to the store now, whole, whatever its queue holds:
    /// called before anything else goes to their offline queue (or is read from it), so
    /// what they left unacked comes before it (see the module's doc).
    pub(crate) fn flush_requeues_of(&mut self, user: &[u8]) {
        if self.requeues.is_empty() {
            return;
        }
        let Some(mine) = self.requeues.remove(user) else {
            return;
        };
        for mut r in mine.queue {
            while r.len() > 0 {
                self.submit_slice(&mut r);
            }
        }
        self.requeues_gone(user);
    }

    /// Puts `b`, on its way to `user`'s offline queue, behind the user's waiting
    /// requeues: their order kept, and the store's pacing (flushing them whole for each
    /// message stored for a member cut with many others put 2 GB of records in the store
    /// queue at once). It is stored with its own cap, and its sender answered, when its
    /// turn comes. Gives `b` back when nothing of theirs waits: store it as usual.
    #[must_use]
    pub(crate) fn behind_requeues(&mut self, user: &[u8], mut b: Behind) -> Option<Behind> {
        if !self.requeues.holds(user) {
            return Some(b);
        }
        let origin = self.sender.and_then(|k| self.session_id(k));
        let Some(u) = self.requeues.users.get_mut(user) else {
            return Some(b);
        };
        let Some(r) = u.queue.back_mut() else {
            return Some(b);
        };
        let w = record_bytes(&b.msg) + std::mem::size_of::<Behind>();
        b.origin = origin;
        r.behind.push_back(b);
        r.weight += w;
        u.held += 1;
        self.requeue_bytes += w;
        if let Some(s) = origin.and_then(|id| self.sessions.get_mut(id.key as usize)) {
            s.store_sends += 1;
        }
        None
    }

    /// A backlog page of `user` is to be read: `Err(user)` when nothing of theirs waits
    /// (read it now); else their requeues go to the front of the line and the read
    /// waits until the last of them is handed to the store (the store takes a shard's
    /// requests in order, so the page then sees them). Handing them over whole for the
    /// read, as before, put what many members cut together held into the store queue at
    /// once when they logged in again.
    pub(crate) fn load_behind_requeues(
        &mut self,
        id: SessionId,
        user: String,
        from: u64,
    ) -> Result<(), String> {
        if !self.requeues.holds(user.as_bytes()) {
            return Err(user);
        }
        self.requeues.move_to_front(user.as_bytes());
        // (Loads of sessions gone meanwhile are dropped: a client that logs in and out
        // again while its requeues wait leaves one entry at most.)
        let mut loads = std::mem::take(&mut self.requeue_loads);
        loads.retain(|&(i, ..)| i != id && self.resolve(i).is_some());
        loads.push((id, user, from));
        self.requeue_loads = loads;
        self.pump_requeues();
        Ok(())
    }

    /// `user` has no requeue waiting any more: the backlog pages waiting for that are
    /// read now.
    fn requeues_gone(&mut self, user: &[u8]) {
        if self.requeue_loads.is_empty() {
            return;
        }
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.requeue_loads)
            .into_iter()
            .partition(|(_, u, _)| u.as_bytes() == user);
        self.requeue_loads = later;
        for (id, user, from) in now {
            self.load_page(id, user, from);
        }
    }

    /// Forgets `user`'s waiting requeues (the account is being deleted).
    /// (The senders of messages waiting behind them are answered NOT_FOUND, as the store
    /// would have: no such user.)
    pub(crate) fn drop_requeues_of(&mut self, user: &[u8]) {
        if let Some(mine) = self.requeues.remove(user) {
            for r in mine.queue {
                self.requeue_bytes -= r.weight;
                for b in r.behind {
                    if let Some((reply, msg_id)) = b.reply {
                        self.answer_send(reply, msg_id, Status::NotFound);
                    }
                    if let Some(id) = b.origin {
                        self.store_send_done(id);
                    }
                }
            }
            self.requeues_gone(user);
        }
    }

    /// Hands the oldest slice of `r` to the store, or the first of what waits behind it
    /// once the slices are out.
    fn submit_slice(&mut self, r: &mut Requeue) {
        // Not counted for the session whose request is being handled (a close while
        // handling it may requeue another's), nor are the backlog reads it lets go.
        let (requester, sender) = (self.requester.take(), self.sender.take());
        let before = r.len();
        if r.ceiling_len() == 0 {
            if let Some(b) = r.behind.pop_front() {
                self.enqueue_offline(String::from_utf8_lossy(&r.user).into_owned(), b);
            }
        } else {
            let msgs = r.take(SLICE, SLICE_BYTES);
            if !msgs.is_empty() {
                let (user, device, gen) = (r.user.clone(), r.device.clone(), r.gen);
                let name = String::from_utf8_lossy(&user).into_owned();
                let bytes = msgs.iter().map(record_bytes).sum();
                let cap = Some(self.requeue_cap());
                let n = msgs.len() as u64;
                // An account deleted meanwhile gets nothing back (NOT_FOUND).
                self.store_req_sized(
                    bytes,
                    |st, cb| st.enqueue(&name, msgs, cap, true, cb),
                    move |sh, r| match r {
                        Ok(a) => {
                            // Past the ceiling the store keeps the slice's first that fit
                            // (never what the queue holds): the rest are counted here.
                            let dropped = n.saturating_sub(a.stored);
                            sh.counters.requeue_dropped += dropped;
                            sh.counters.requeued += a.stored;
                            if a.stored > 0 {
                                sh.requeued_for_later_logins(&user, &device, gen, a.first_seq)
                            }
                        }
                        Err(StoreError::NotFound) => {}
                        Err(e) => tracing::warn!(error = %e, "requeueing unacked messages failed"),
                    },
                );
            }
        }
        let taken = before - r.len();
        self.requeue_bytes -= r.shed(before);
        let gone = self.requeues.users.get_mut(&r.user).is_some_and(|u| {
            u.held = u.held.saturating_sub(taken);
            u.held == 0
        });
        if gone {
            // Behind the last request in the store's queue.
            self.requeues.remove(&r.user);
            self.requeues_gone(&r.user);
        }
        (self.requester, self.sender) = (requester, sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a requeue takes back as its messages go sums to what it counted, however
    /// they go (dropped past the ceiling, a slice at a time), so the shard's count
    /// returns to zero.
    fn msg(i: u64) -> StoredMsg {
        StoredMsg {
            from_user: "ann".into(),
            to_room: String::new(),
            payload: Bytes::from(vec![0u8; i as usize]),
            server_ts_us: i,
            msg_id: i,
            room_event: 0,
            contact_event: 0,
        }
    }

    fn requeue_of(user: &'static str, ids: std::ops::RangeInclusive<u64>) -> Requeue {
        Requeue {
            user: Bytes::from_static(user.as_bytes()),
            device: "phone".into(),
            gen: 1,
            unacked: Retained::default(),
            deferred: ids.map(msg).collect(),
            behind: VecDeque::new(),
            weight: 0,
        }
    }

    /// Pops every requeue in turn order: (user, first msg_id) of each.
    fn drain(q: &mut Requeues) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Some(r) = q.pop_front() {
            out.push((
                String::from_utf8_lossy(&r.user).into_owned(),
                r.deferred[0].msg_id,
            ));
            let u = q.users.get_mut(&r.user).unwrap();
            u.held -= r.len();
            if u.held == 0 {
                q.remove(&r.user.clone());
            }
        }
        out
    }

    #[test]
    fn a_users_requeues_go_together_in_turn_and_a_turn_moves_to_the_front() {
        let mut q = Requeues::default();
        q.push(requeue_of("a", 1..=2));
        q.push(requeue_of("b", 10..=10));
        q.push(requeue_of("c", 20..=21));
        q.push(requeue_of("a", 3..=3));
        q.move_to_front(b"c");
        assert!(q.holds(b"a") && !q.holds(b"z"));
        assert_eq!(q.users[&b"a"[..]].held, 3);
        let order = drain(&mut q);
        let want = [("c", 20), ("a", 1), ("a", 3), ("b", 10)];
        let want: Vec<(String, u64)> = want.iter().map(|(u, i)| (u.to_string(), *i)).collect();
        assert_eq!(order, want);
        assert!(q.is_empty() && q.line.is_empty());
    }

    /// A user moved to the front again and again (a client logging in and out while its
    /// requeues wait) leaves at most half the line stale.
    #[test]
    fn stale_turns_are_swept_out_of_the_line() {
        let mut q = Requeues::default();
        for u in ["a", "b", "c"] {
            q.push(requeue_of(u, 1..=1));
        }
        for _ in 0..1000 {
            q.move_to_front(b"b");
            assert!(q.line.len() <= 2 * 3 + 1, "{}", q.line.len());
        }
        q.remove(b"a");
        assert!(q.line.len() <= 2 * 2 + 1);
        let users: Vec<String> = drain(&mut q).into_iter().map(|(u, _)| u).collect();
        assert_eq!(users, ["b", "c"]);
    }

    /// A Send's message put behind waiting requeues counts in the sending session's
    /// store work (as the store request it stands for would), until it is stored or
    /// dropped: such a session is not read past a full store queue meanwhile.
    #[test]
    fn a_message_behind_requeues_counts_for_its_sender_until_it_goes() {
        use std::sync::Arc;
        let mut s = Shard::new(
            0,
            1,
            Arc::new(crate::config::Config::default()),
            Arc::new(crate::stats::ShardStats::default()),
        );
        let a = s.register("alice", "phone".into(), -1).unwrap();
        s.requeues.push(requeue_of("bob", 1..=1));
        let b = |i| Behind {
            msg: msg(i),
            cap: None,
            reply: None,
            origin: None,
        };
        // Not from a Send: counts for nobody.
        assert!(s.behind_requeues(b"bob", b(2)).is_none());
        assert_eq!(s.sessions[a].store_sends, 0);
        s.sender = Some(a);
        assert!(s.behind_requeues(b"bob", b(3)).is_none());
        assert!(
            s.behind_requeues(b"carol", b(4)).is_some(),
            "nothing waits for carol"
        );
        s.sender = None;
        assert_eq!(s.sessions[a].store_sends, 1);
        // Dropped with bob's account: taken back.
        s.drop_requeues_of(b"bob");
        assert_eq!(s.sessions[a].store_sends, 0);
        assert!(s.requeues.is_empty() && s.requeue_bytes == 0);
    }

    #[test]
    fn shed_weight_sums_to_what_was_counted() {
        let mut r = requeue_of("bob", 1..=7);
        r.weight = 1_003;
        let mut shed = 0;
        let before = r.len();
        r.drop_oldest(2);
        shed += r.shed(before);
        while r.len() > 0 {
            let before = r.len();
            let taken = r.take(2, usize::MAX);
            assert!(!taken.is_empty());
            shed += r.shed(before);
        }
        assert_eq!(shed, 1_003);
        assert_eq!(r.weight, 0);
    }
}

#[cfg(test)]
mod dedup_tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::{OwnedMsg, Recent, Retained};
    use crate::shard::retention::Outgoing;

    /// A session's unacked messages `ids` from `from` (payloads of 100 bytes, shared).
    fn unacked(from: &str, ids: std::ops::Range<u64>) -> Retained {
        let (from, room) = (Bytes::from(from.to_owned()), Bytes::new());
        let payload = Bytes::from(vec![1u8; 100]);
        let mut r = Retained::default();
        for (seq, id) in ids.enumerate() {
            r.push(
                seq as u64 + 1,
                &Outgoing {
                    from_user: &from,
                    to_room: &room,
                    payload: &payload,
                    msg_id: id,
                    ts_us: 1_000 + id,
                    store_seq: 0,
                    fanned: None,
                },
            );
        }
        r
    }

    /// What one device gave back is not given back again by another within the window;
    /// other messages, other senders, other users, a window passed or off are.
    #[test]
    fn copies_other_devices_gave_back_are_dropped_within_the_window() {
        let (w, now) = (Duration::from_secs(30), Instant::now());
        let (u, v) = (Bytes::from_static(b"u"), Bytes::from_static(b"v"));
        let mut recent = Recent::default();
        let mut a = unacked("s", 0..10);
        recent.dedup(&u, &mut a, &mut Vec::new(), now, w);
        assert_eq!(
            (a.len(), a.bytes()),
            (10, 1000),
            "the first copy stays whole"
        );
        let mut b = unacked("s", 5..15);
        recent.dedup(&u, &mut b, &mut Vec::new(), now, w);
        assert_eq!((b.len(), b.bytes()), (5, 500), "5..10 dropped, 10..15 kept");
        let mut c = unacked("t", 0..10);
        recent.dedup(&u, &mut c, &mut Vec::new(), now, w);
        assert_eq!(c.len(), 10, "another sender's ids are other messages");
        let mut d = unacked("s", 0..10);
        recent.dedup(&v, &mut d, &mut Vec::new(), now, w);
        assert_eq!(d.len(), 10, "another user's queue");
        let mut e = unacked("s", 0..15);
        recent.dedup(&u, &mut e, &mut Vec::new(), now + w, w);
        assert_eq!(e.len(), 15, "the window passed");
        let mut f = unacked("s", 0..15);
        recent.dedup(&u, &mut f, &mut Vec::new(), now + w, Duration::ZERO);
        assert_eq!(f.len(), 15, "off");
        assert_eq!(recent.keys, recent.keys_now());
    }

    /// Messages held back behind a backlog (deferred) are checked as the delivered ones
    /// are: two devices that held back the same live messages give them back once (both
    /// copies used to go to the queue and push its oldest undelivered messages out).
    #[test]
    fn deferred_copies_other_devices_gave_back_are_dropped() {
        let (w, now) = (Duration::from_secs(30), Instant::now());
        let u = Bytes::from_static(b"u");
        let held = |ids: std::ops::Range<u64>| -> Vec<OwnedMsg> {
            ids.map(|id| OwnedMsg {
                from_user: Bytes::from_static(b"s"),
                to_room: Bytes::new(),
                payload: Bytes::from_static(b"x"),
                msg_id: id,
                ts_us: 1_000 + id,
            })
            .collect()
        };
        let mut recent = Recent::default();
        let (mut a, mut da) = (unacked("s", 0..5), held(5..10));
        recent.dedup(&u, &mut a, &mut da, now, w);
        assert_eq!((a.len(), da.len()), (5, 5), "the first device's stay whole");
        let (mut b, mut db) = (unacked("s", 0..3), held(3..12));
        recent.dedup(&u, &mut b, &mut db, now, w);
        assert_eq!(b.len(), 0);
        let ids: Vec<u64> = db.iter().map(|m| m.msg_id).collect();
        assert_eq!(ids, [10, 11], "held back by both: given back once");
        let mut dc = held(0..12);
        recent.dedup(&u, &mut Retained::default(), &mut dc, now, w);
        assert!(
            dc.is_empty(),
            "delivered to one, held back by the other: once"
        );
        assert_eq!(recent.keys, recent.keys_now());
    }

    /// What is remembered stays under `RECENT_MAX` keys however many users give back
    /// messages: past it the stale users go, then all but the newest; the newest one's
    /// keys are remembered.
    #[test]
    fn the_remembered_keys_stay_under_their_bound() {
        let (w, now) = (Duration::from_secs(30), Instant::now());
        let mut recent = Recent::default();
        let per = super::RECENT_MAX as u64 / 3;
        // Users 0 and 1 are stale when user 3 passes the bound (they go); when user 5
        // does, none is (all go but user 5).
        for i in 0..6u64 {
            let user = Bytes::from(format!("u{i}"));
            let at = if i < 2 { now } else { now + w };
            let mut r = unacked("s", 0..per);
            recent.dedup(&user, &mut r, &mut Vec::new(), at, w);
            assert_eq!(r.len() as u64, per, "user {i}: nothing dropped");
            assert!(recent.keys <= super::RECENT_MAX, "{}", recent.keys);
            assert_eq!(recent.keys, recent.keys_now());
        }
        assert_eq!(recent.users.len(), 1);
        let mut again = unacked("s", 0..per);
        recent.dedup(
            &Bytes::from_static(b"u5"),
            &mut again,
            &mut Vec::new(),
            now + w,
            w,
        );
        assert!(again.is_empty(), "the newest user's copies are still known");
    }
}
