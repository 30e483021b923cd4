//! Delivery: into the sessions of a user homed here, to the offline queue, through
//! the journal (sync durability), back to the store when a session ends, and the
//! offline backlog delivered at login. What makes it at-least-once.
//!
//! # Rules (see DESIGN.md "Delivery guarantees")
//! - A message for a user with no live session is appended to the user's offline queue
//!   (bounded, `max_offline_per_user`); the sender's SendResult waits for the store.
//! - In `sync` durability every message is appended first and delivered from the
//!   completion, with its store seq: the ack that covers it removes it.
//! - A session keeps every delivery until the client's cumulative Ack. When it ends,
//!   the unacked live deliveries (and any deferred ones, below) are appended to the
//!   offline queue; deliveries that came from the store are still there.
//! - At login the LoginResult goes out with the first page of the offline queue, which is
//!   delivered page by page (at most half of `max_unacked_per_session` per page) before
//!   anything live: live messages that arrive meanwhile are deferred (counted against the
//!   session's bounds) and delivered after the backlog (memory mode), or are already in
//!   the queue behind it (sync mode).
//! - An ack removes the stored messages it covers, unless another device of the same
//!   user is still paging through the queue (its later ack removes them).
//! - Store backpressure: past [`STORE_HIGH_WATER`](super::store_link::STORE_HIGH_WATER) requests in flight a shard's readers
//!   pause and it leaves other shards' mail in the rings.

use bytes::Bytes;
use ringrouter_proto::fast::DeliverStamp;
use ringrouter_proto::reply;
use ringrouter_proto::v1::ServerFrame;
use ringrouter_proto::Status;

use super::answer::Answer;
use super::api::is_api;
use super::mail::Mail;
use super::requeue::Behind;
use super::retention::{Outgoing, OwnedMsg};
use super::session::{CloseReason, SessionId, SessionKey};
use super::store_link::store_status;
use super::Shard;
use crate::config::{AuthMode, OfflineOverflow};
use crate::store::{Overflow, QueueCap, StoreError, StoreResult, StoredMsg};

/// Offline messages loaded per store round trip at login.
pub const LOAD_PAGE: usize = 1024;

/// Bytes a deferred message counts for besides its payload (its entry and names).
const DEFERRED_OVERHEAD: usize = 128;

impl Shard {
    /// Delivers a message to every live session of `to_user` homed here.
    /// Returns how many sessions got it, and a session pushed past one of its bounds
    /// (hard cap on pending bytes, retained or deferred count), which the caller closes
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

    /// [`Shard::deliver_local`] of a direct message from the session `from` (homed here)
    /// to `to_user`. `named`: `from`'s [`LastDest`](super::session::LastDest) named
    /// `to_user` when the frame arrived. A recipient with one session here is remembered
    /// there with the user map's generation: until a session of this shard registers or
    /// closes (which changes the map), the next messages to it skip the map lookup.
    pub(crate) fn deliver_dm(
        &mut self,
        from: SessionKey,
        to_user: &[u8],
        named: bool,
        m: Outgoing<'_>,
        blocked: &mut Vec<SessionKey>,
    ) -> (usize, Option<SessionKey>) {
        let gen = self.users_gen;
        let peer = named
            .then(|| self.sessions.get(from)?.last_dest.as_deref()?.peer(gen))
            .flatten();
        self.deliver_user(to_user, peer, Some(from), m, None, None, blocked)
    }

    /// [`Shard::deliver_local`], skipping the session `skip` (a room message is not
    /// echoed to the device that sent it).
    pub(crate) fn deliver_to_sessions(
        &mut self,
        to_user: &[u8],
        m: Outgoing<'_>,
        remote_sender: Option<SessionId>,
        skip: Option<SessionId>,
        blocked: &mut Vec<SessionKey>,
    ) -> (usize, Option<SessionKey>) {
        let skip = self.skip_key(skip);
        self.deliver_user(to_user, None, None, m, remote_sender, skip, blocked)
    }

    /// The sessions of `to_user`: `peer` (its one session, remembered at the user map's
    /// current generation), else the map's list; a sender `learner` whose `LastDest` names
    /// `to_user` remembers the one session the map lists.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn deliver_user(
        &mut self,
        to_user: &[u8],
        peer: Option<SessionKey>,
        learner: Option<SessionKey>,
        m: Outgoing<'_>,
        remote_sender: Option<SessionId>,
        skip: Option<(SessionKey, u32)>,
        blocked: &mut Vec<SessionKey>,
    ) -> (usize, Option<SessionKey>) {
        let one;
        let keys: &[SessionKey] = match peer {
            Some(k) => {
                one = k;
                std::slice::from_ref(&one)
            }
            None => {
                let Some(keys) = self.users.get(to_user) else {
                    return (0, None);
                };
                if let (Some(from), &[k]) = (learner, &keys[..]) {
                    // Remembered only next to the name it is for.
                    let d = self
                        .sessions
                        .get_mut(from)
                        .and_then(|s| s.last_dest.as_deref_mut());
                    if let Some(d) = d.filter(|d| d.home_of(to_user).is_some()) {
                        d.set_peer(self.users_gen, k);
                    }
                }
                keys
            }
        };
        // While the store is full, a user one of whose sessions holds too much gets it
        // on none (as if offline: refused there), not on some only (`held`).
        if self.bounds.full() && self.held(keys, &m, skip) {
            return (0, None);
        }
        let d = deliver_keys(
            &mut self.sessions,
            &self.bounds,
            self.store.is_some(),
            keys,
            m,
            remote_sender,
            skip,
            blocked,
        );
        self.delivered(d)
    }

    /// Whether session `k` holds more than a full store lets it (`FULL_UNACKED_BYTES`).
    fn over_full(&self, k: SessionKey) -> bool {
        self.sessions
            .get(k)
            .is_some_and(|s| s.unacked.bytes() + s.deferred_bytes > self.bounds.full_unacked_bytes)
    }

    /// While the store is full, whether the user (or room member) whose sessions are
    /// `keys` does not get `m`, as if offline (refused there): one of its sessions holds
    /// too much ([`Shard::over_full`]). Never a message in the store already (sync mode, a
    /// backlog: acks remove it from there, nothing is requeued), nor the sender's own
    /// member (`skip`: its message is not refused for a copy to its other devices).
    fn held(&self, keys: &[SessionKey], m: &Outgoing<'_>, skip: Option<(SessionKey, u32)>) -> bool {
        m.store_seq == 0
            && !skip.is_some_and(|(k, _)| keys.contains(&k))
            && keys.iter().any(|&k| self.over_full(k))
    }

    /// A room message to every session of its members here, `keys` (member `i`'s sessions
    /// are `keys[spans[i]]`; `empty`: the members with none, in order): one pass over the
    /// sessions with the bounds read once per message, not once per member. Members
    /// with no session here, or whose sessions are all gone or closing (their offline
    /// copy is the caller's), go to `absent` in member order; the last session of each
    /// member that went past a bound to `overflowed` (the caller closes them once the
    /// pass is done).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver_fan(
        &mut self,
        keys: &[SessionKey],
        spans: &[(u32, u32)],
        empty: &[u32],
        m: Outgoing<'_>,
        remote_sender: Option<SessionId>,
        skip: Option<SessionId>,
        blocked: &mut Vec<SessionKey>,
        absent: &mut Vec<usize>,
        overflowed: &mut Vec<SessionKey>,
    ) {
        let skip = self.skip_key(skip);
        // A copy on this frame: the pass reads each bound at a fixed stack offset, not
        // through the shard's pointer reloaded for each session.
        let bounds = self.bounds;
        let mut sink = Sink::new(&bounds, self.store.is_some(), remote_sender, skip, blocked);
        // The sessions of a room are all over memory and each delivery writes to two
        // lines no cache holds (its queue's tail, its retention entry): those of the
        // session two ahead are asked for now, its struct's four ahead.
        let ahead = |j: usize, sessions: &slab::Slab<super::session::Session>| {
            if let Some(s) = keys.get(j + 4).and_then(|&k| sessions.get(k)) {
                s.prefetch();
            }
            if let Some(s) = keys.get(j + 2).and_then(|&k| sessions.get(k)) {
                s.out.prefetch_tail();
                s.unacked.prefetch_fan_tail();
            }
        };
        // One flat pass (no per-member bookkeeping: most members have one session). The
        // sessions that did not take it and those past a bound (both rare) are noted by
        // their index in `keys` and sorted out by member after the pass.
        let (mut missed, mut over) = (Vec::new(), Vec::new());
        let member = |j: usize| spans.partition_point(|&(_, b)| b as usize <= j);
        // While the store is full, a member one of whose sessions holds too much is not
        // delivered to (as if offline; marked here, before the pass: the pass itself is
        // not slowed by the check).
        macro_rules! pass {
            ($pairs:expr) => {
                for (j, k) in $pairs {
                    ahead(j, &self.sessions);
                    if !sink.one(&mut self.sessions, k, &m) {
                        missed.push(j);
                    }
                    if sink.d.overflowed.take().is_some() {
                        over.push(j);
                    }
                }
            };
        }
        if !bounds.full() {
            pass!(keys.iter().copied().enumerate());
        } else {
            let held: Vec<bool> = spans
                .iter()
                .map(|&(a, b)| {
                    let of = keys.get(a as usize..b as usize).unwrap_or_default();
                    self.held(of, &m, skip)
                })
                .collect();
            let (held, fit): (Vec<_>, Vec<_>) = keys
                .iter()
                .copied()
                .enumerate()
                .partition(|&(j, _)| held.get(member(j)) == Some(&true));
            missed.extend(held.into_iter().map(|(j, _)| j));
            pass!(fit);
            missed.sort_unstable();
        }
        absent.extend(empty.iter().map(|&i| i as usize));
        if !missed.is_empty() {
            absent.extend(missed_members(&missed, spans, member));
            absent.sort_unstable();
        }
        for (x, &j) in over.iter().enumerate() {
            // One per member, its last (as when a member's sessions were a pass).
            if over
                .get(x + 1)
                .is_none_or(|&next| member(next) != member(j))
            {
                overflowed.push(keys[j]);
            }
        }
        let d = sink.d;
        self.delivered(d);
    }

    fn skip_key(&self, skip: Option<SessionId>) -> Option<(SessionKey, u32)> {
        skip.filter(|id| id.shard as usize == self.id)
            .map(|id| (id.key as usize, id.gen))
    }

    /// Counts a delivery and asks a remote sender's shard to pause it if a session
    /// filled up.
    fn delivered(&mut self, d: Delivered) -> (usize, Option<SessionKey>) {
        self.counters.delivered += d.n as u64;
        if let Some((id, n)) = d.pause {
            // Straight into the sender shard's table: its reader sees it before
            // its next read, whatever that shard's mailbox latency.
            if let Some(t) = self.pause.get(id.shard as usize) {
                t.add(id, i64::from(n));
            }
        }
        (d.n + d.skipped, d.overflowed)
    }

    pub(crate) fn offline_cap(&self) -> Option<QueueCap> {
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

    /// The cap for notices stored for an offline user (room and contact events): half
    /// the offline queue, refused past it whatever `--offline-overflow` says, so notices
    /// that others cause (being added to rooms, contact requests) never fill a user's
    /// queue, refuse its messages or push them out.
    pub(crate) fn notice_cap(&self) -> Option<QueueCap> {
        Some(QueueCap {
            max_msgs: (self.cfg.max_offline_per_user / 2).max(1),
            max_bytes: (self.cfg.max_offline_bytes_per_user / 2).max(1),
            overflow: Overflow::Reject,
        })
    }

    /// Stores a message for `to_user`, who has no live session, and answers the sender
    /// once it is stored (OK), or why not (NOT_FOUND: no such user; RATE_LIMITED: the
    /// queue is full; UNAVAILABLE: the store's disk is full, `store::disk`).
    pub(crate) fn store_offline(&mut self, to_user: &[u8], m: Outgoing<'_>, reply: Answer) {
        self.store_offline_record(to_user, m.to_stored(), reply);
    }

    /// [`Shard::store_offline`] of a store record made already (one for a room
    /// message's offline members: each holds the one copy of its payload).
    pub(crate) fn store_offline_record(
        &mut self,
        to_user: &[u8],
        msg: crate::store::StoredMsg,
        reply: Answer,
    ) {
        let msg_id = msg.msg_id;
        if !self.has_store() {
            self.answer_send(reply, msg_id, Status::NotFound);
            return;
        }
        if self.store_disk_full() {
            self.counters.reject(Status::Unavailable);
            self.answer_send(reply, msg_id, Status::Unavailable);
            return;
        }
        let b = Behind {
            msg,
            cap: self.offline_cap(),
            reply: Some((reply, msg_id)),
            origin: None,
        };
        // Behind what the user's ended sessions left, if any waits (see `shard::requeue`).
        if let Some(b) = self.behind_requeues(to_user, b) {
            self.enqueue_offline(String::from_utf8_lossy(to_user).into_owned(), b);
        }
    }

    /// Appends `b` to `user`'s offline queue (with its cap), then answers its sender
    /// with how that went, if it has one.
    pub(crate) fn enqueue_offline(&mut self, user: String, b: Behind) {
        let Behind {
            msg,
            cap,
            reply,
            origin,
        } = b;
        self.store_req_sized(
            msg.payload.len(),
            |s, cb| s.enqueue(&user, vec![msg], cap, true, cb),
            move |sh, r| {
                let status = match r {
                    // (Under drop-oldest, a message over the queue's byte bound by itself
                    // keeps nothing, itself included: refused as under reject.)
                    Ok(a) if a.stored == 0 => Status::RateLimited,
                    Ok(_) => Status::Ok,
                    Err(e) => {
                        if !matches!(e, StoreError::NotFound | StoreError::Full) {
                            tracing::warn!(error = %e, "offline append failed");
                        }
                        store_status(&e)
                    }
                };
                if let Some((reply, msg_id)) = reply {
                    // (A message, counted once stored: not when it was sent, to be
                    // refused past the queue's bound.)
                    if status == Status::Ok {
                        sh.counters.offline_stored += 1;
                    }
                    sh.answer_send(reply, msg_id, status);
                }
                if let Some(id) = origin {
                    sh.store_send_done(id);
                }
            },
        );
    }

    /// Sync durability: appends the message to `to_user`'s queue, then delivers it to
    /// the user's live sessions (with its store seq, so the ack removes it) and answers
    /// the sender. `msg` is held until the store answers, and queued for it: its small
    /// payload and names must be no slices of a read buffer (a slow store kept a read
    /// buffer for each small message: 90 -> 349 MiB under `--durability sync` in a
    /// hostile review): the callers copy them once a message ([`OwnedMsg::unpinned`]),
    /// not once a room member.
    pub(crate) fn journal(
        &mut self,
        to_user: Bytes,
        msg: OwnedMsg,
        reply: Answer,
        sender: SessionId,
        skip: Option<SessionId>,
    ) {
        if self.store_disk_full() {
            // Every message goes through the store first: none is taken (`store::disk`).
            self.counters.reject(Status::Unavailable);
            self.answer_send(reply, msg.msg_id, Status::Unavailable);
            return;
        }
        self.flush_requeues_of(&to_user);
        let user = String::from_utf8_lossy(&to_user).into_owned();
        // (A name is small: copied here, it keeps no read buffer while the store answers.)
        let to_user = crate::outbuf::unpinned(&to_user);
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

    /// What the session of generation `gen` (from `device`) gave back is in `user`'s
    /// queue from `first_seq` on. Sessions of the same device that logged in after that
    /// one started are "the next login" that gets it (a device that reconnected before
    /// the router saw its old connection end): one whose backlog is over loads it now,
    /// like a backlog, ahead of live messages. A session still loading gets it with its
    /// next page (store answers come in request order, so a page asked for before the
    /// append was answered already). The user's other devices had their own live copies:
    /// they get the queue at their next login, as before.
    pub(super) fn requeued_for_later_logins(
        &mut self,
        user: &[u8],
        device: &str,
        gen: u32,
        first_seq: u64,
    ) {
        let later: Vec<SessionKey> = self
            .user_session_keys(user)
            .iter()
            .copied()
            .filter(|&k| {
                let s = &self.sessions[k];
                (s.gen.wrapping_sub(gen) as i32) > 0
                    && s.device == device
                    && s.closing.is_none()
                    && !s.loading
                    && s.backlog_next <= first_seq
            })
            .collect();
        let name = String::from_utf8_lossy(user).into_owned();
        for key in later {
            let Some(id) = self.session_id(key) else {
                continue;
            };
            self.sessions[key].loading = true;
            self.load_page(id, name.clone(), first_seq);
        }
    }

    /// A session just logged in: records the user (open and jwt auth: a user exists from
    /// the first login) and starts delivering the offline queue. `login` (the
    /// LoginResult) is queued with the first page, ahead of it.
    pub(crate) fn start_backlog(&mut self, key: SessionKey, login: ServerFrame) {
        let Some(id) = self.session_id(key) else {
            return;
        };
        if self.store.is_none() {
            self.push_frame(key, &login);
            return;
        }
        self.sessions[key].login_frame = Some(Box::new(login));
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        if self.cfg.auth != AuthMode::Accounts {
            let u = user.clone();
            self.store_req(
                |st, cb| st.ensure_user(&u, cb),
                move |sh, r| match r {
                    // The name's account is still being deleted: the session does not
                    // start on what is left of it (its backlog page, answered after
                    // this, finds it closed).
                    Err(StoreError::Deleting) => {
                        if let Some(key) = sh.resolve(id) {
                            sh.sessions[key].discard_unacked = true;
                            sh.close(
                                key,
                                CloseReason::Kicked,
                                Some((
                                    Status::Unavailable,
                                    "the name is being deleted, try again shortly",
                                )),
                            );
                        }
                    }
                    r => crate::store::warn_unless_full(&r, "recording a user"),
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
        // Answered before the first page, which lets the session's reader start.
        self.load_contacts_at_login(key);
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

    pub(super) fn load_page(&mut self, id: SessionId, user: String, from: u64) {
        // What the user's ended sessions left unacked is in the queue before it is read:
        // the page is read once they are handed to the store.
        let Err(user) = self.load_behind_requeues(id, user, from) else {
            return;
        };
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
            if m.room_event != 0 {
                // A room event stored while the user was away (`shard::social`).
                s.push_frame(&super::social::stored_event(s.last_seq, m));
            } else if m.contact_event != 0 {
                // A contact event stored while the user was away (`shard::contacts`).
                s.push_frame(&super::contacts::stored_contact_event(s.last_seq, m));
            } else {
                s.out
                    .push_deliver(&stamp_of(s.last_seq, m), &m.payload, inline_max);
            }
            s.unacked.push_stored(s.last_seq, *store_seq);
            last = *store_seq;
            s.backlog_next = last + 1;
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
    pub(crate) fn continue_loading(&mut self, key: SessionKey) {
        let max_pending = self.cfg.max_pending_bytes / 2;
        let max_unacked = self.cfg.max_unacked_per_session / 2;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        // OwnedMsg-back live messages do not count: they only drain once the backlog is out.
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

    /// The backlog is out: what was deferred follows it, then live delivery resumes.
    fn finish_backlog(&mut self, key: SessionKey) {
        let inline_max = self.cfg.inline_payload_max;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.loading = false;
        s.load_next = None;
        let deferred = std::mem::take(&mut s.deferred);
        s.deferred_bytes = 0;
        for h in deferred {
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
        // by it and what was deferred was bounded when it was deferred.
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

/// Answering senders.
impl Shard {
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
        self.reply_send_why(reply, msg_id, status, reply::send_status_reason(status));
    }

    /// [`Self::reply_send`] with the reason given (a room's NOT_FOUND: "no such room").
    pub fn reply_send_why(
        &mut self,
        reply: Option<(SessionId, u64)>,
        msg_id: u64,
        status: Status,
        reason: &'static str,
    ) {
        let Some((to, request_id)) = reply else {
            return;
        };
        if to.shard as usize == self.id {
            if is_api(to) {
                self.answer_api(to, status, msg_id);
            } else if let Some(key) = self.resolve(to) {
                self.push_frame(key, &reply::send_result(request_id, status, reason, msg_id));
            }
        } else {
            self.post(
                to.shard as usize,
                Mail::Result {
                    to,
                    request_id,
                    msg_id,
                    status,
                    reason,
                },
            );
        }
    }
}

/// The members none of whose sessions took a room message: `missed` holds the indexes
/// (in the fan's `keys`, ascending) of the sessions that did not, `member` the member of
/// an index.
#[cold]
fn missed_members(
    missed: &[usize],
    spans: &[(u32, u32)],
    member: impl Fn(usize) -> usize,
) -> Vec<usize> {
    let mut out = Vec::new();
    let mut x = 0;
    while let Some(&j) = missed.get(x) {
        let i = member(j);
        let (a, b) = spans[i];
        let n = missed[x..].iter().take_while(|&&j| j < b as usize).count();
        if n == (b - a) as usize {
            out.push(i);
        }
        x += n;
    }
    out
}

/// What delivering one message to a user's sessions did (see [`deliver_keys`]).
struct Delivered {
    /// Sessions that got it.
    n: usize,
    /// The sending device, which counts as having it.
    skipped: usize,
    /// A session past one of its bounds.
    overflowed: Option<SessionKey>,
    /// A remote sender to pause, and by how much: the sessions that noted it in their
    /// `throttled` list (each one resumes it once when it drains).
    pause: Option<(SessionId, u32)>,
}

/// The bounds a delivery checks on each session, read from the config once, when the
/// shard is made (the config does not change), and the full store's, set on each tick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    max_unacked: usize,
    max_unacked_bytes: usize,
    /// While the store is full ([`FULL_UNACKED_BYTES`]; else `usize::MAX`): a session
    /// holding more than this unacked (and deferred) is not delivered to, as if offline.
    full_unacked_bytes: usize,
    max_pending: usize,
    hard_cap: usize,
    inline_max: usize,
}

/// While the store's disk is full (`store::disk`), the most a session may hold delivered
/// and not acked before messages to it are refused as to an offline user: what a
/// session leaves unacked when it ends is stored, which sessions that never ack and
/// disconnect could otherwise grow without bound.
pub(crate) const FULL_UNACKED_BYTES: usize = 1 << 20;

impl Bounds {
    /// Sets the bound of a full store (`full`) or lifts it.
    pub(crate) fn store_full(&mut self, full: bool) {
        self.full_unacked_bytes = if full { FULL_UNACKED_BYTES } else { usize::MAX };
    }

    /// Whether the store was full at the shard's last tick (the one reading every
    /// decision of the shard goes by: a session held back and an offline Send refused).
    pub(crate) fn full(&self) -> bool {
        self.full_unacked_bytes != usize::MAX
    }

    pub(crate) fn of(cfg: &crate::config::Config) -> Self {
        Bounds {
            max_unacked: cfg.max_unacked_per_session,
            max_unacked_bytes: cfg.max_unacked_bytes_per_session,
            full_unacked_bytes: usize::MAX,
            max_pending: cfg.max_pending_bytes,
            hard_cap: cfg.hard_pending_bytes(),
            inline_max: cfg.inline_payload_max,
        }
    }
}

/// One message's delivery to sessions (see [`deliver_keys`]): the bounds it checks (the
/// shard's, by reference: nothing copied per message), and what it did so far.
struct Sink<'b> {
    b: &'b Bounds,
    retain: bool,
    remote_sender: Option<SessionId>,
    skip_key: Option<(SessionKey, u32)>,
    blocked: &'b mut Vec<SessionKey>,
    d: Delivered,
}

impl<'b> Sink<'b> {
    fn new(
        b: &'b Bounds,
        retain: bool,
        remote_sender: Option<SessionId>,
        skip_key: Option<(SessionKey, u32)>,
        blocked: &'b mut Vec<SessionKey>,
    ) -> Self {
        Sink {
            b,
            retain,
            remote_sender,
            skip_key,
            blocked,
            d: Delivered {
                n: 0,
                skipped: 0,
                overflowed: None,
                pause: None,
            },
        }
    }

    /// The message to the session `k` (nothing if it is gone or closing). False when
    /// the session does not count as having it (gone or closing).
    #[inline(always)]
    fn one(
        &mut self,
        sessions: &mut slab::Slab<super::session::Session>,
        k: SessionKey,
        m: &Outgoing<'_>,
    ) -> bool {
        let Some(s) = sessions.get_mut(k) else {
            return false;
        };
        if s.closing.is_some() {
            return false;
        }
        if self.skip_key == Some((k, s.gen)) {
            // The sending device has it: it counts as a live session of the user.
            self.d.skipped += 1;
            return true;
        }
        if s.loading {
            // The backlog goes first. In sync mode this message is in the queue
            // behind it already; otherwise it waits here.
            if m.store_seq == 0 {
                // Counted with its bookkeeping, so that even empty payloads meet
                // the session's bounds (backpressure and the hard cap below).
                s.deferred_bytes += m.payload.len() + DEFERRED_OVERHEAD;
                // Copied (those of up to `COPY_MAX`): held until the backlog is out, a
                // slice of the sender's read buffer would keep it whole.
                s.deferred.push(OwnedMsg::unpinned_of(
                    m.from_user,
                    m.to_room,
                    m.payload,
                    m.msg_id,
                    m.ts_us,
                ));
                if s.deferred.len() > self.b.max_unacked
                    || s.deferred_bytes > self.b.max_unacked_bytes
                {
                    self.d.overflowed = Some(k);
                }
            }
        } else {
            s.last_seq += 1;
            if s.oldest_ts_us == 0 {
                s.oldest_ts_us = m.ts_us;
            }
            match m.fanned {
                Some(fm) => s.out.push_fanned(fm, s.last_seq, self.b.inline_max),
                None => {
                    let stamp = DeliverStamp {
                        seq: s.last_seq,
                        from_user: m.from_user,
                        to_room: m.to_room,
                        server_ts_us: m.ts_us,
                        msg_id: m.msg_id,
                    };
                    s.out.push_deliver(&stamp, m.payload, self.b.inline_max);
                }
            }
            s.wake_writer();
            if self.retain {
                s.unacked.push(s.last_seq, m);
                if s.unacked.len() > self.b.max_unacked
                    || s.unacked.bytes() > self.b.max_unacked_bytes
                {
                    self.d.overflowed = Some(k);
                }
            }
        }
        let pending = s.pending();
        if pending > self.b.max_pending {
            match self.remote_sender {
                // A sender on another shard: ask its shard to stop reading it
                // until this session drains (once per sender and episode).
                Some(id) => {
                    if !s.throttled.contains(&id) {
                        s.throttled.push(id);
                        let n = self.d.pause.map_or(0, |(_, n)| n);
                        self.d.pause = Some((id, n + 1));
                    }
                }
                None => {
                    if self.blocked.last() != Some(&k) {
                        self.blocked.push(k);
                    }
                }
            }
        }
        if pending > self.b.hard_cap {
            self.d.overflowed = Some(k);
        }
        self.d.n += 1;
        true
    }
}

/// The body of `Shard::deliver_user` over the sessions `keys` (the shard's
/// fields it needs passed apart, so `keys` may be borrowed from the shard's user map).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn deliver_keys(
    sessions: &mut slab::Slab<super::session::Session>,
    bounds: &Bounds,
    retain: bool,
    keys: &[SessionKey],
    m: Outgoing<'_>,
    remote_sender: Option<SessionId>,
    skip_key: Option<(SessionKey, u32)>,
    blocked: &mut Vec<SessionKey>,
) -> Delivered {
    let mut sink = Sink::new(bounds, retain, remote_sender, skip_key, blocked);
    for &k in keys {
        sink.one(sessions, k, &m);
    }
    sink.d
}

#[cfg(test)]
mod tests {
    use super::missed_members;

    /// A member is absent when every one of its sessions missed the message; members
    /// with some session that took it are not.
    #[test]
    fn missed_members_are_those_all_of_whose_sessions_missed() {
        // Members: 0 → keys 0..2, 1 → none, 2 → 2..3, 3 → 3..6, 4 → 6..7.
        let spans = [(0, 2), (2, 2), (2, 3), (3, 6), (6, 7)];
        let member = |j: usize| spans.partition_point(|&(_, b)| b as usize <= j);
        assert_eq!(
            (0..7).map(member).collect::<Vec<_>>(),
            [0, 0, 2, 3, 3, 3, 4]
        );
        assert_eq!(missed_members(&[], &spans, member), Vec::<usize>::new());
        assert_eq!(missed_members(&[1], &spans, member), Vec::<usize>::new());
        assert_eq!(missed_members(&[0, 1], &spans, member), [0]);
        assert_eq!(missed_members(&[1, 2, 3, 5, 6], &spans, member), [2, 4]);
        assert_eq!(missed_members(&[3, 4, 5], &spans, member), [3]);
        assert_eq!(
            missed_members(&[0, 1, 2, 3, 4, 5, 6], &spans, member),
            [0, 2, 3, 4]
        );
    }
}
