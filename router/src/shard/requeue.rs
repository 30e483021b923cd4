//! What a session leaves unacked when it ends goes to its user's offline queue, in
//! order (accepted messages are never refused: only the ceiling of
//! [`Shard::requeue_cap`] applies, the oldest dropped past it).
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
use super::retention::Retained;
use super::session::{SessionId, SessionKey};
use super::store_link::STORE_HIGH_WATER;
use super::Shard;
use crate::store::{Overflow, QueueCap, StoreError, StoredMsg};

/// Messages per store request of a requeue.
const SLICE: usize = 4096;

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

impl Shard {
    /// The ceiling for messages a session gives back when it ends (accepted already, so
    /// never refused): the offline cap plus what one session may hold unacked. Only a
    /// user whose devices keep taking messages without acking them reaches it; the
    /// oldest are then dropped.
    pub(crate) fn requeue_cap(&self) -> QueueCap {
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
        let mut unacked = unacked;
        // Entries in the store already are never stored again: they count for nothing.
        unacked.forget_stored();
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
        *self.requeue_held.entry(user.clone()).or_default() += r.len();
        self.requeue_bytes += r.weight;
        // Right after the user's others, if any wait (a login of the user may be waiting
        // for them all, and must not wait behind everyone else's), else last.
        match self.requeues.iter().rposition(|q| q.user == user) {
            Some(i) => self.requeues.insert(i + 1, r),
            None => self.requeues.push_back(r),
        }
        self.trim_requeues(&user);
        self.pump_requeues();
    }

    /// Drops the oldest of `user`'s waiting requeues past the requeue ceiling: the
    /// store would drop them from the queue as the newer ones arrive. (What waits behind
    /// them has its own cap, applied when it is stored.)
    fn trim_requeues(&mut self, user: &Bytes) {
        let cap = usize::try_from(self.requeue_cap().max_msgs).unwrap_or(usize::MAX);
        let held: usize = self
            .requeues
            .iter()
            .filter(|r| r.user == *user)
            .map(Requeue::ceiling_len)
            .sum();
        let mut excess = held.saturating_sub(cap);
        if excess == 0 {
            return;
        }
        let mut dropped = 0;
        for r in self.requeues.iter_mut().filter(|r| r.user == *user) {
            if excess == 0 {
                break;
            }
            let (n, before) = (excess.min(r.ceiling_len()), r.len());
            r.drop_oldest(n);
            self.requeue_bytes -= r.shed(before);
            excess -= n;
            dropped += n;
        }
        self.counters.requeue_dropped += dropped as u64;
        if let Some(h) = self.requeue_held.get_mut(user) {
            *h = h.saturating_sub(dropped);
        }
        self.requeues.retain(|r| r.len() > 0);
        if self.requeue_held.get(user) == Some(&0) {
            self.requeue_held.remove(user);
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
        if self.requeue_held.is_empty() || !self.requeue_held.contains_key(user) {
            return;
        }
        let all = std::mem::take(&mut self.requeues);
        let (mine, rest): (VecDeque<Requeue>, VecDeque<Requeue>) =
            all.into_iter().partition(|r| r.user == user);
        self.requeues = rest;
        for mut r in mine {
            while r.len() > 0 {
                self.submit_slice(&mut r);
            }
        }
        if self.requeue_held.remove(user).is_some() {
            self.requeues_gone(user);
        }
    }

    /// Puts `b`, on its way to `user`'s offline queue, behind the user's waiting
    /// requeues: their order kept, and the store's pacing (flushing them whole for each
    /// message stored for a member cut with many others put 2 GB of records in the store
    /// queue at once). It is stored with its own cap, and its sender answered, when its
    /// turn comes. Gives `b` back when nothing of theirs waits: store it as usual.
    #[must_use]
    pub(crate) fn behind_requeues(&mut self, user: &[u8], b: Behind) -> Option<Behind> {
        if !self.requeue_held.contains_key(user) {
            return Some(b);
        }
        let Some(r) = self.requeues.iter_mut().rev().find(|r| r.user == user) else {
            return Some(b);
        };
        let w = record_bytes(&b.msg) + std::mem::size_of::<Behind>();
        r.behind.push_back(b);
        r.weight += w;
        self.requeue_bytes += w;
        if let Some(h) = self.requeue_held.get_mut(user) {
            *h += 1;
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
        if !self.requeue_held.contains_key(user.as_bytes()) {
            return Err(user);
        }
        let all = std::mem::take(&mut self.requeues);
        let (mut first, rest): (VecDeque<Requeue>, VecDeque<Requeue>) =
            all.into_iter().partition(|r| r.user == user.as_bytes());
        first.extend(rest);
        self.requeues = first;
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
        if self.requeue_held.remove(user).is_some() {
            let (mine, rest): (VecDeque<Requeue>, VecDeque<Requeue>) =
                std::mem::take(&mut self.requeues)
                    .into_iter()
                    .partition(|r| r.user == user);
            self.requeues = rest;
            for r in mine {
                self.requeue_bytes -= r.weight;
                for b in r.behind {
                    if let Some((reply, msg_id)) = b.reply {
                        self.answer_send(reply, msg_id, Status::NotFound);
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
        let requester = self.requester.take();
        let before = r.len();
        if r.ceiling_len() == 0 {
            if let Some(b) = r.behind.pop_front() {
                self.enqueue_offline(String::from_utf8_lossy(&r.user).into_owned(), b);
            }
        } else {
            let msgs = r.take(SLICE, SLICE_BYTES);
            if !msgs.is_empty() {
                self.counters.requeued += msgs.len() as u64;
                let (user, device, gen) = (r.user.clone(), r.device.clone(), r.gen);
                let name = String::from_utf8_lossy(&user).into_owned();
                let bytes = msgs.iter().map(record_bytes).sum();
                let cap = Some(self.requeue_cap());
                // An account deleted meanwhile gets nothing back (NOT_FOUND).
                self.store_req_sized(
                    bytes,
                    |st, cb| st.enqueue(&name, msgs, cap, true, cb),
                    move |sh, r| match r {
                        Ok(a) if a.stored > 0 => {
                            sh.requeued_for_later_logins(&user, &device, gen, a.first_seq)
                        }
                        Ok(_) | Err(StoreError::NotFound) => {}
                        Err(e) => tracing::warn!(error = %e, "requeueing unacked messages failed"),
                    },
                );
            }
        }
        let taken = before - r.len();
        self.requeue_bytes -= r.shed(before);
        let gone = self.requeue_held.get_mut(&r.user).is_some_and(|h| {
            *h = h.saturating_sub(taken);
            *h == 0
        });
        if gone {
            // Behind the last request in the store's queue.
            self.requeue_held.remove(&r.user);
            self.requeues_gone(&r.user);
        }
        self.requester = requester;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a requeue takes back as its messages go sums to what it counted, however
    /// they go (dropped past the ceiling, a slice at a time), so the shard's count
    /// returns to zero.
    #[test]
    fn shed_weight_sums_to_what_was_counted() {
        let msg = |i: u64| StoredMsg {
            from_user: "ann".into(),
            to_room: String::new(),
            payload: Bytes::from(vec![0u8; i as usize]),
            server_ts_us: i,
            msg_id: i,
            room_event: 0,
            contact_event: 0,
        };
        let mut r = Requeue {
            user: Bytes::from_static(b"bob"),
            device: "phone".into(),
            gen: 1,
            unacked: Retained::default(),
            deferred: (1..=7).map(msg).collect(),
            behind: VecDeque::new(),
            weight: 1_003,
        };
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
