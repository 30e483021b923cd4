//! Account deletions, a bounded slice at a time (see [`Worker::delete_account`]); the
//! idle-user sweep's forgotten users go the same way ([`Worker::forget_users`]).
//!
//! A deletion's first step, in the round of its request, removes what makes the name
//! exist (the account record and the contact list's record), drops what memory holds
//! of its history (`Worker::hist_forget_user`), and runs a first slice; a
//! deletion that does not finish there is marked (`del:` user, in the `rooms` keyspace)
//! in the same batch and goes on in the queue of deletions: one slice per turn of the
//! storage thread's loop, after the requests queued meanwhile. Its request is answered
//! once its last slice is committed.
//!
//! While a deletion of `user` is under way (`Worker::deleting`), nothing new is written
//! under the name, so that its later reuse never mixes with what is still being deleted
//! (the slices delete every key under the name's prefixes, whoever wrote it):
//! - Register, and a first login's record under open or jwt auth (`insert_account`), get
//!   [`StoreError::Deleting`] ("try again shortly"): nobody takes the name meanwhile.
//! - An append to its offline queue gets [`StoreError::NotFound`] (the shards' own
//!   appends already require an account, which is gone).
//! - History under the name is not written: a direct conversation's messages with it
//!   make no conversation (as with a deleted account), its entries (a room message it
//!   sent) and read marks (its own, and its peers' in conversations with it) are
//!   dropped.
//! - Contact list writes of its list (`save_contacts`, `note_blocker`) are dropped,
//!   answered OK: as if written just before the deletion, which then removed them.
//! - Room memberships naming it are refused NOT_FOUND (as while it was `leaving`).
//!
//! Reads (its queue, a history page) see what is not deleted yet.
//!
//! A restart in the middle: the mark is read when the store opens
//! ([`Worker::resume_deletions`]) and the deletion starts again from the beginning
//! (every slice finds what is left by its prefix scans; the mark's value names the
//! direct conversations no scan would find, whose entries were only in memory), the
//! name refused meanwhile as above. The mark goes in the batch of the last slice.
//!
//! Slices: at most [`SLICE_KEYS`] keys and about [`SLICE_TIME`] of reads, then their
//! commit (~1.5 ms for 4 096 deletions): 2–5 ms each, measured. The range scans end at
//! their prefix's end ([`past`]), so that the tombstones a deletion leaves past it
//! (those of its peers' entries and marks) are never walked.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::codec::{
    parse_queue_key, prefixed, queue_key, queue_prefix, validate_name, CONTACTS_PREFIX,
    DELETING_PREFIX,
};
use super::history::{under, Budget, HistCursor};
use super::{contact_blocker_key, contact_entry_key, Ks, Op, QueueState, Worker};
use crate::store::history::{parse_conv, ConvName};
use crate::store::{Cb, StoreError, StoreResult};

/// Most keys one slice of a deletion deletes ...
const SLICE_KEYS: usize = 4096;
/// ... and longest it reads for (its commit comes after): other requests wait at most
/// about this long, plus the commit, for a slice.
const SLICE_TIME: Duration = Duration::from_millis(3);
#[cfg(test)]
pub(crate) const SLICE_KEYS_FOR_TESTS: usize = SLICE_KEYS;

/// How long a deletion whose slice failed waits before it is tried again (it is marked:
/// it must finish).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a deletion deletes, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The offline queue.
    Queue,
    /// Direct conversations, conversation entries, read marks
    /// ([`Worker::hist_delete_user_slice`]).
    History,
    /// The contact list's entries (`cte:` user 0x00 ...).
    ContactEntries,
    /// The contact list's blockers (`ctb:` user 0x00 ...).
    Blockers,
}

/// An account deletion under way.
pub(super) struct Deletion {
    user: String,
    phase: Phase,
    /// Queue: the seq the next scan starts from.
    queue_from: u64,
    /// History: where it is.
    hist: HistCursor,
    /// Contact keys: the last one deleted.
    after: Option<Vec<u8>>,
    /// Its mark is stored (removed with its last slice).
    marked: bool,
    /// The direct conversations whose entries were only in memory when it began
    /// ([`Worker::hist_forget_user`]): kept in its mark, so that a restart deletes them
    /// too.
    extra: Vec<Vec<u8>>,
    /// Its requests, answered when it is done (or failed).
    cbs: Vec<Cb<()>>,
    /// A slice failed: the next is tried no sooner.
    retry_at: Option<Instant>,
    /// Begun by the idle-user sweep.
    swept: bool,
}

impl Deletion {
    fn new(user: String, extra: Vec<Vec<u8>>) -> Deletion {
        let mut d = Deletion {
            user,
            phase: Phase::Queue,
            queue_from: 0,
            hist: HistCursor::default(),
            after: None,
            marked: false,
            extra,
            cbs: Vec::new(),
            retry_at: None,
            swept: false,
        };
        d.restart();
        d
    }

    /// From the beginning (again, after a failed slice: the scans find what is left).
    fn restart(&mut self) {
        self.phase = Phase::Queue;
        self.queue_from = 0;
        self.hist = HistCursor::default();
        self.hist.extra = self.extra.iter().cloned().collect();
        self.after = None;
    }
}

/// The deletions under way, and the names they hold.
#[derive(Default)]
pub(super) struct Deletions {
    jobs: VecDeque<Deletion>,
    /// The names of `jobs` (see the module's rules).
    names: crate::maps::NameSet<String>,
    /// A first slice ran in this round: the loop's slice waits for the next.
    sliced: bool,
}

/// The mark of `user`'s deletion under way.
fn mark_key(user: &str) -> Vec<u8> {
    prefixed(DELETING_PREFIX, user)
}

/// A mark's value: the conversation ids of [`Deletion::extra`], each a length (u16 BE)
/// and the id.
fn encode_convs(convs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(convs.iter().map(|c| 2 + c.len()).sum());
    for c in convs {
        // (An id is at most 1 + 2 × 256 bytes.)
        let n = u16::try_from(c.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&c[..usize::from(n)]);
    }
    out
}

/// [`encode_convs`] read back (a torn end is left out).
fn decode_convs(mut v: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((n, rest)) = v.split_first_chunk::<2>() {
        let n = usize::from(u16::from_be_bytes(*n));
        let Some((c, rest)) = rest.split_at_checked(n) else {
            break;
        };
        out.push(c.to_vec());
        v = rest;
    }
    out
}

impl Worker {
    /// Whether `user`'s account is being deleted (see the module's rules).
    pub(super) fn deleting(&self, user: &str) -> bool {
        !self.deletions.names.is_empty() && self.deletions.names.contains(user)
    }

    /// [`Worker::deleting`] for a name as bytes.
    pub(super) fn deleting_bytes(&self, user: &[u8]) -> bool {
        !self.deletions.names.is_empty()
            && std::str::from_utf8(user).is_ok_and(|u| self.deletions.names.contains(u))
    }

    /// A deletion's slice may run now.
    pub(super) fn deletion_due(&self, now: Instant) -> bool {
        self.jobs_due(now).is_some()
    }

    fn jobs_due(&self, now: Instant) -> Option<usize> {
        self.deletions
            .jobs
            .iter()
            .position(|d| d.retry_at.is_none_or(|t| t <= now))
    }

    /// When a deletion waiting after a failed slice is tried again (the loop wakes then).
    pub(super) fn next_deletion_retry(&self) -> Option<Instant> {
        self.deletions.jobs.iter().filter_map(|d| d.retry_at).min()
    }

    /// Starts a round: no first slice ran in it yet.
    pub(super) fn deletion_round(&mut self) {
        self.deletions.sliced = false;
    }

    /// DeleteAccount: the first step, then the first slice, in one batch; the rest in the
    /// slices of [`Worker::deletion_step`]. `cb` is answered when all of it is deleted.
    pub(super) fn delete_account(&mut self, user: String, cb: Cb<()>) {
        if let Err(e) = validate_name("user", &user) {
            return self.done(cb, Err(e), false);
        }
        self.leaving.remove(&user);
        if let Some(d) = self.deletions.jobs.iter_mut().find(|d| d.user == user) {
            // Under way already (resumed at open, or asked again after a failed slice):
            // answered with it.
            d.cbs.push(cb);
            return;
        }
        self.start_deletion(user, cb);
    }

    /// The idle-user sweep forgets `users` (accounts no other user's list or room names,
    /// with nothing queued, just read so): each deleted as by DeleteAccount, with no one
    /// to answer; what memory holds of their history dropped in one walk for all of
    /// them. First slices share one slice's budget; the rest wait in the queue of
    /// deletions (see [`Worker::sweep_deleting`]). Answers how many deletions began.
    pub(super) fn forget_users(&mut self, users: Vec<String>) -> usize {
        let users: Vec<String> = users.into_iter().filter(|u| !self.deleting(u)).collect();
        if users.is_empty() {
            return 0;
        }
        let extras = self.hist_forget_users(&users);
        let mut budget = Budget::new(SLICE_KEYS, SLICE_TIME);
        let mut began = 0;
        for (user, extra) in users.into_iter().zip(extras) {
            self.unname(&user, true);
            let mut d = Deletion::new(user, extra);
            d.swept = true;
            let user = d.user.clone();
            match self.first_slice(d, &mut budget) {
                Ok(()) => began += 1,
                Err(e) => tracing::warn!(%user, error = %e, "forgetting an idle user failed"),
            }
        }
        began
    }

    /// Deletions the idle-user sweep began are under way (it waits for them).
    pub(super) fn sweep_deleting(&self) -> bool {
        self.deletions.jobs.iter().any(|d| d.swept)
    }

    /// A deletion's first step and first slice, in one batch (see [`Worker::delete_account`]).
    fn start_deletion(&mut self, user: String, cb: Cb<()>) {
        let extra = match self.begin_deletion(&user) {
            Ok(extra) => extra,
            Err(e) => return self.done(cb, Err(e), false),
        };
        let mut d = Deletion::new(user, extra);
        d.cbs.push(cb);
        let mut budget = Budget::new(SLICE_KEYS, SLICE_TIME);
        // (A failed commit is answered to `cb`.)
        let _ = self.first_slice(d, &mut budget);
    }

    /// Runs `d`'s first slice within `budget` and commits it with what its first step
    /// queued (and its mark, if it does not finish there). An error if that commit
    /// failed: nothing of it is stored.
    fn first_slice(&mut self, mut d: Deletion, budget: &mut Budget) -> StoreResult<()> {
        self.deletions.sliced = true;
        let sliced = self.deletion_slice(&mut d, budget);
        let finished = matches!(sliced, Ok(true));
        if !finished {
            // Marked in the batch that removes the account: a restart finishes it.
            self.ops.push(Op::Put(
                Ks::Rooms,
                mark_key(&d.user),
                encode_convs(&d.extra),
            ));
        }
        if let Err(e) = self.commit() {
            // Nothing of it is stored (a batch is all or nothing): the name is as it was
            // (but for its history not yet written, dropped from memory).
            self.deletions.names.remove(&d.user);
            self.answer_deletion(&mut d, Err(e.clone()));
            return Err(e);
        }
        d.marked = !finished;
        self.stats.deletion_slices.fetch_add(1, Ordering::Relaxed);
        self.deletion_went(d, sliced);
        Ok(())
    }

    /// A deletion's first step: reads what it needs (a failed read leaves nothing done),
    /// then queues the removal of what makes the name exist (the account record, read by
    /// logins, UserExists, ListUsers and every "has an account" check; the contact
    /// list's record) and notes the name as being deleted; drops what memory holds of
    /// its history ([`Worker::hist_forget_user`], whose answer it answers).
    /// [`StoreError::NotFound`] with neither an account nor a queued message, as before
    /// deletions were sliced.
    fn begin_deletion(&mut self, user: &str) -> StoreResult<Vec<Vec<u8>>> {
        self.known.remove(user);
        self.commit()?;
        // Read before anything is queued: a failed read leaves no deletion half done.
        let had_account = self.dbs.accounts.contains_key(user.as_bytes())?;
        // (A failed read counts as one: the queue's slices read it again.)
        let queued = self.has_queued(user);
        if !had_account && !queued {
            return Err(StoreError::NotFound);
        }
        self.unname(user, had_account);
        // Its direct conversations' tails are dropped, not written (a write of every
        // tail, as this did before, held the thread for as long as the history in
        // memory took to write).
        Ok(self.hist_forget_user(user))
    }

    /// Queues the removal of what makes `user` exist (its account, if it has one, read
    /// by logins, UserExists, ListUsers and every "has an account" check; its contact
    /// list's record) and notes the name as being deleted.
    fn unname(&mut self, user: &str, account: bool) {
        self.known.remove(user);
        if account {
            self.ops
                .push(Op::Del(Ks::Accounts, user.as_bytes().to_vec()));
            self.accounts_dropped = true;
        }
        self.ops
            .push(Op::Del(Ks::Rooms, prefixed(CONTACTS_PREFIX, user)));
        self.deletions.names.insert(user.to_owned());
    }

    /// One slice of the first deletion due, in a batch of its own (called by the loop
    /// once the requests queued before it are answered; not in a turn whose request
    /// began a deletion, which ran its first slice). Whether a slice ran (its round is
    /// to be finished: its answers, a sync).
    pub(super) fn deletion_step(&mut self) -> bool {
        if self.deletions.sliced {
            return false;
        }
        let Some(i) = self.jobs_due(Instant::now()) else {
            return false;
        };
        let Some(mut d) = self.deletions.jobs.remove(i) else {
            return false;
        };
        d.retry_at = None;
        let sliced = self.commit().and_then(|()| {
            let mut budget = Budget::new(SLICE_KEYS, SLICE_TIME);
            let finished = self.deletion_slice(&mut d, &mut budget)?;
            if finished && d.marked {
                self.ops.push(Op::Del(Ks::Rooms, mark_key(&d.user)));
            }
            self.commit()?;
            Ok(finished)
        });
        self.stats.deletion_slices.fetch_add(1, Ordering::Relaxed);
        self.deletion_went(d, sliced);
        true
    }

    /// After a slice of `d` is committed: answered if it is done, queued again if not
    /// (first: it goes on next; the sweep's last), tried again later if the slice failed.
    fn deletion_went(&mut self, mut d: Deletion, sliced: StoreResult<bool>) {
        match sliced {
            Ok(true) => {
                self.deletions.names.remove(&d.user);
                // (Seqs of its deleted conversations start again at 1.)
                self.hist_forget_cursors(&[d.user.as_bytes()]);
                for cb in d.cbs.drain(..) {
                    self.done(cb, Ok(()), true);
                }
            }
            // (The sweep's go last: a DeleteAccount, which someone waits for, never
            // waits behind a step's worth of them.)
            Ok(false) if d.swept => self.deletions.jobs.push_back(d),
            Ok(false) => self.deletions.jobs.push_front(d),
            Err(e) => {
                // Marked (its first batch, which holds the mark, is committed: a failed
                // one is answered in `delete_account`): it is tried again, from the
                // beginning, until it is done, and its requests are answered then. An
                // error now would tell the shard nothing was deleted (its sessions kept,
                // its contact list kept and written again) while the account is gone and
                // the rest goes on being deleted.
                tracing::warn!(
                    user = %d.user,
                    error = %e,
                    "deleting an account failed; trying again"
                );
                d.marked = true;
                d.restart();
                d.retry_at = Instant::now().checked_add(RETRY_AFTER);
                self.deletions.jobs.push_back(d);
            }
        }
        self.stats
            .deletions_pending
            .store(self.deletions.jobs.len() as u64, Ordering::Relaxed);
    }

    fn answer_deletion(&mut self, d: &mut Deletion, r: StoreResult<()>) {
        for cb in d.cbs.drain(..) {
            self.done(cb, r.clone(), false);
        }
    }

    /// Deletes what is left of `d`, phase after phase, within `budget`: true once all of
    /// it is deleted (in `ops`, not committed).
    fn deletion_slice(&mut self, d: &mut Deletion, budget: &mut Budget) -> StoreResult<bool> {
        loop {
            let finished = match d.phase {
                Phase::Queue => self.queue_slice(d, budget)?,
                Phase::History => self.hist_delete_user_slice(&d.user, &mut d.hist, budget)?,
                Phase::ContactEntries => {
                    let prefix = contact_entry_key(&d.user, "");
                    self.delete_under(&prefix, &mut d.after, budget)?
                }
                Phase::Blockers => {
                    let prefix = contact_blocker_key(&d.user, "");
                    self.delete_under(&prefix, &mut d.after, budget)?
                }
            };
            if !finished {
                return Ok(false);
            }
            d.after = None;
            d.phase = match d.phase {
                Phase::Queue => Phase::History,
                Phase::History => Phase::ContactEntries,
                Phase::ContactEntries => Phase::Blockers,
                Phase::Blockers => return Ok(true),
            };
        }
    }

    /// Removes the next messages of `d`'s queue within `budget`, keeping its cached
    /// state (if any) what the queue holds once they are committed: true once it is
    /// empty. (Acks of its sessions between slices remove from the same head: neither
    /// removes a message the other did.)
    fn queue_slice(&mut self, d: &mut Deletion, budget: &mut Budget) -> StoreResult<bool> {
        let prefix = queue_prefix(&d.user);
        if let Some(st) = self.queues.get(d.user.as_str()) {
            d.queue_from = d.queue_from.max(st.head);
        }
        let start = queue_key(&prefix, d.queue_from);
        let end = queue_key(&prefix, u64::MAX);
        let (mut removed, mut removed_bytes) = (0u64, 0u64);
        let mut finished = true;
        for g in self.dbs.offline.range(start..=end) {
            if budget.spent() {
                finished = false;
                break;
            }
            let (k, v) = g.into_inner()?;
            // (A key under the prefix that does not parse goes all the same.)
            if let Ok(seq) = parse_queue_key(&prefix, &k) {
                d.queue_from = seq.saturating_add(1);
            }
            self.ops.push(Op::Dequeued(k));
            budget.take(1);
            removed += 1;
            removed_bytes += v.len() as u64;
        }
        match self.queues.get(d.user.as_str()).copied() {
            Some(mut st) => {
                st.count = st.count.saturating_sub(removed);
                st.bytes = st.bytes.saturating_sub(removed_bytes);
                st.head = st.head.max(d.queue_from);
                if finished {
                    st.count = 0;
                    st.bytes = 0;
                    st.next_seq = st.next_seq.max(st.head);
                    st.head = st.next_seq;
                }
                self.set_queue_state(&d.user, st);
            }
            None if finished => {
                // Empty: its state says so, and its seqs never go back (as a queue
                // emptied by acks keeps its next seq).
                let next = d.queue_from.max(1).max(self.evicted_next_seq);
                self.set_queue_state(
                    &d.user,
                    QueueState {
                        next_seq: next,
                        count: 0,
                        bytes: 0,
                        head: next,
                    },
                );
            }
            None => {}
        }
        Ok(finished)
    }

    /// Deletes the next `rooms` keys under `prefix` after `after` within `budget`: true
    /// once none is left.
    fn delete_under(
        &mut self,
        prefix: &[u8],
        after: &mut Option<Vec<u8>>,
        budget: &mut Budget,
    ) -> StoreResult<bool> {
        for g in self.dbs.rooms.range(under(prefix, after.as_deref())) {
            let k = g.key()?;
            if !k.starts_with(prefix) {
                break;
            }
            if budget.spent() {
                return Ok(false);
            }
            self.ops.push(Op::Del(Ks::Rooms, k.to_vec()));
            budget.take(1);
            *after = Some(k.to_vec());
        }
        Ok(true)
    }

    /// Takes up the deletions a restart cut short (their marks), before the thread
    /// starts: their names are refused from now on, and their slices run once it has.
    pub(crate) fn resume_deletions(&mut self) -> StoreResult<()> {
        let mut users = Vec::new();
        let mut stale = Vec::new();
        for g in self.dbs.rooms.prefix(DELETING_PREFIX) {
            let (k, v) = g.into_inner()?;
            let Ok(u) = std::str::from_utf8(&k[DELETING_PREFIX.len()..]) else {
                tracing::warn!("deletion mark {k:?} left: not UTF-8");
                continue;
            };
            if self.dbs.accounts.contains_key(u.as_bytes())? {
                // The name has an account again (it cannot while marked: Register is
                // refused; a build without deletions in slices could have made it): its
                // data is not deleted, the mark goes.
                tracing::warn!(user = u, "deletion mark of a name with an account: dropped");
                stale.push(k.to_vec());
                continue;
            }
            // Only the user's own direct conversations (a damaged value naming others'
            // would delete theirs).
            let mut convs = decode_convs(&v);
            convs.retain(|c| match parse_conv(c) {
                Some(ConvName::Direct(a, b)) => a == u.as_bytes() || b == u.as_bytes(),
                _ => false,
            });
            users.push((u.to_owned(), convs));
        }
        for k in stale {
            self.ops.push(Op::Del(Ks::Rooms, k));
        }
        self.commit()?;
        if !users.is_empty() {
            tracing::info!(
                accounts = users.len(),
                "finishing the account deletions a restart cut short"
            );
        }
        for (u, extra) in users {
            self.deletions.names.insert(u.clone());
            let mut d = Deletion::new(u, extra);
            d.marked = true;
            self.deletions.jobs.push_back(d);
        }
        self.stats
            .deletions_pending
            .store(self.deletions.jobs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// At shutdown: the deletions under way stay marked (finished at the next open);
    /// their requests are answered [`StoreError::Closed`] (`Cb`'s drop).
    pub(super) fn drop_deletions(&mut self) {
        self.deletions.jobs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::past;
    use super::*;
    use std::ops::Bound;

    #[test]
    fn a_scan_of_a_prefix_ends_past_its_last_key() {
        assert_eq!(past(b"ab"), Bound::Excluded(b"ac".to_vec()));
        assert_eq!(past(b"a\xff"), Bound::Excluded(b"b".to_vec()));
        assert_eq!(past(b"\xff\xff"), Bound::Unbounded);
    }

    #[test]
    fn a_marks_conversations_read_back() {
        let convs = vec![b"d\x01a\x01b".to_vec(), Vec::new(), vec![7u8; 300]];
        assert_eq!(decode_convs(&encode_convs(&convs)), convs);
        // A torn end is left out.
        let v = encode_convs(&convs);
        assert_eq!(decode_convs(&v[..v.len() - 1]), convs[..2]);
    }
}
