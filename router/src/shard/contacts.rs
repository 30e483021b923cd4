//! Contact lists on their users' home shards (issue 11, "Contacts").
//!
//! # Ownership
//! A user's list (`store::contacts::ContactRecord`) belongs to the user's home shard,
//! which keeps it in [`Shard::contacts`] (a `ContactCache`) while the user has a live
//! session or a change to it is under way; the store has the rest. Every change is
//! applied to that one copy and written back from it, so two changes never race.
//!
//! # An exchange between two users
//! A request, accept, decline or remove changes both lists: the actor's on its home
//! shard, the peer's on the peer's home shard (reached by `Mail::Call`).
//! - A request goes to the peer's side first (it is where a block, the pending-request
//!   limit, or an unknown user refuses it), and the actor's side and its answer follow.
//! - Accept, decline and remove change the actor's side, then the peer's side (which
//!   cannot refuse them), and are answered after both.
//!
//! # One op of a user at a time
//! A user's contact ops (and ListContacts) run in the order sent: one that comes while
//! another of the user's is in flight waits behind it in [`Shard::contact_turns`], and
//! runs when that one's [`Turn`] ends (it is answered). A REMOVE pipelined behind its
//! REQUEST used to run before the request's own side was applied (after the round trip
//! to the peer's home shard), got NOT_FOUND, and the request stood. What waits is
//! bounded by the sessions' `max_requests_in_flight`: each waiting op counts as one
//! request of its session until answered. Ops whose session ends meanwhile still run
//! in turn (their answers go nowhere), so the queue drains; past `CONTACT_WAITING_MIN`
//! waiting (or the user's sessions × in-flight, if more) they are dropped instead, and
//! all of them once the user's DeleteAccount has begun.
//!
//! Each side that changed tells its user: the peer's live sessions get a ContactEvent,
//! or (none live) its offline queue keeps one for the next login; the actor's other
//! live sessions get one too (never stored: its list has the change).
//!
//! # Blocks
//! Blocking is silent: the blocked user's visible list does not change, but its record
//! notes who blocks it (`blocked_by`), on its own home shard, so that its direct
//! messages and requests are refused (FORBIDDEN) where they start, from a list that is
//! loaded (at login, before the session's first frame is read) and without a round trip.
//! The direct-message path looks only while some list here has such a note or
//! `--dm-policy contacts` is on ([`Shard::dm_gate`]). At most `--max-loaded-blockers`
//! notes are loaded; a frame to a peer past them waits for a store read first
//! (`shard::blocks`).
//!
//! # The peer's list of an incoming op
//! The peer side of a request, accept, decline or remove needs the peer's whole list
//! (up to 5 000 entries and 1 000 tombstones); an offline peer's is seldom loaded (the
//! idle lists kept weigh at most 1 MiB, about 3 full ones). Such a list is read at the
//! page-read gate in a turn of the actor's own ([`Shard::with_contacts_in_turn`]) and
//! kept as if loaded, unless its store keys may have changed meanwhile
//! ([`ContactReads`]): then it is loaded again the usual way. Loaded outside the gate,
//! 128 users sending requests in a loop to 80 offline users with full lists held
//! others' ListRooms 19-28 ms (p50) and their logins up to 69 ms.

use ringrouter_proto::reply;
use ringrouter_proto::v1::{self as pb, ContactEventKind, ServerFrame};
use ringrouter_proto::Status;

use std::sync::Arc;

use super::mail::{AfterAll, InFlight, Mail, MailQueue};
use super::requeue::Behind;
use super::session::{SessionId, SessionKey};
use super::store_link::side_turn;
use super::Shard;
use crate::config::DmPolicy;
use crate::maps::NameMap;
use crate::store::contacts::{
    ContactError, ContactLimits, ContactOp, ContactRecord, ContactState, Outcome, Wait,
};
use crate::store::{StoreError, StoredMsg};

/// Blockers of a deleted user read from the store at a time (those its list did not
/// load: see [`Shard::forget_contacts_of`]).
const BLOCKERS_PAGE: usize = 512;

/// Work waiting for a user's list to be loaded; it runs with the shard borrowed and
/// finds the list in [`Shard::contacts`] (missing if the load failed).
pub type ContactWaiter = Box<dyn FnOnce(&mut Shard) + Send>;

/// The contact lists of the users homed on one shard.
pub type Contacts = crate::store::contacts::ContactCache<ContactWaiter>;

/// Who waits for the answer to a contact op or list: the session and its request id,
/// and the op's [`Turn`], which ends when this is dropped (answered).
#[derive(Debug)]
pub struct Asker {
    /// The session.
    pub id: SessionId,
    /// The request id to answer.
    pub request_id: u64,
    turn: Option<Turn>,
}

impl Asker {
    /// Session `id`'s request `request_id`, in no turn.
    pub fn new(id: SessionId, request_id: u64) -> Asker {
        Asker {
            id,
            request_id,
            turn: None,
        }
    }

    /// This request, holding `turn` until it is answered.
    pub fn in_turn(mut self, turn: Turn) -> Asker {
        self.turn = Some(turn);
        self
    }

    /// Takes the turn out: whoever holds it decides when the user's next op goes on.
    pub fn take_turn(&mut self) -> Option<Turn> {
        self.turn.take()
    }
}

/// A user's contact op from its start to its answer: dropped (answered, or lost with
/// the mail that carried it), the user's next op goes on, on the user's home shard
/// (posted there: it may be dropped on another). It holds the op's count against its
/// session's `max_requests_in_flight`.
pub struct Turn {
    user: String,
    /// The user's home shard's queue; `None` without a store (nothing waits).
    home: Option<Arc<MailQueue>>,
    _inflight: Option<InFlight>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Turn").field(&self.user).finish()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let user = std::mem::take(&mut self.user);
            home.push(Mail::Stored(Box::new(move |sh: &mut Shard| {
                sh.next_contact_turn(&user)
            })));
        }
    }
}

/// A user's contact op or list, run in its [`Turn`].
pub type ContactTask = Box<dyn FnOnce(&mut Shard, Turn) + Send>;

/// Waiting contact ops of one user past which those of ended sessions are dropped (at
/// least; the user's live sessions may have `max_sessions_per_user` ×
/// `max_requests_in_flight`).
const CONTACT_WAITING_MIN: usize = 1024;

/// Reads of one actor's incoming-op lists that may wait at the page-read gate of one
/// shard (each actor has one op at a time: more come from its ops of other shards' users
/// only in a race); past them, and past the gate's own bound, a list is loaded at once.
const CONTACT_READS_WAITING_MAX: usize = 4;

/// The lists read at the gate and not answered yet ([`Shard::with_contacts_in_turn`]),
/// by user: the ops waiting for the read, in arrival order (the first one's actor's turn
/// makes it; the others wait with it instead of reading the list again), and whether the
/// store's copy may have changed since the read was made (a block noted by key,
/// [`Shard::set_blocked_by`]; an account deletion). A read made before such a change may
/// be answered with the list as it was: it is then not kept, and the ops load the list
/// again behind the change (the store answers a shard's requests in order).
#[derive(Debug)]
pub struct ContactReads<W> {
    reads: NameMap<String, (Vec<W>, bool)>,
}

impl<W> Default for ContactReads<W> {
    fn default() -> Self {
        ContactReads {
            reads: NameMap::default(),
        }
    }
}

impl<W> ContactReads<W> {
    /// `w` waits for a read of `user`'s list: true if it is the first (the read must be
    /// made), false if it waits behind one in flight.
    pub fn wait(&mut self, user: &str, w: W) -> bool {
        match self.reads.get_mut(user) {
            Some((waiting, _)) => {
                waiting.push(w);
                false
            }
            None => {
                self.reads.insert(user.to_owned(), (vec![w], false));
                true
            }
        }
    }

    /// Whether a read of `user`'s list is in flight.
    pub fn reading(&self, user: &str) -> bool {
        self.reads.contains_key(user)
    }

    /// `user`'s list in the store may change now: a read in flight may not be kept.
    pub fn changed(&mut self, user: &str) {
        if let Some((_, dirty)) = self.reads.get_mut(user) {
            *dirty = true;
        }
    }

    /// The read of `user`'s list was answered: whether what it read may be kept, and the
    /// ops that waited for it.
    pub fn done(&mut self, user: &str) -> (bool, Vec<W>) {
        match self.reads.remove(user) {
            Some((waiting, dirty)) => (!dirty, waiting),
            None => (false, Vec::new()),
        }
    }
}

/// A task waiting for its turn in [`Shard::contact_turns`], counted as a request of its
/// session meanwhile.
pub struct Waiting {
    task: ContactTask,
    inflight: Option<InFlight>,
}

/// What the actor's side does once the peer's side of an exchange is done.
#[derive(Debug)]
pub enum Then {
    /// Nothing (a side effect of an account deletion).
    Nothing,
    /// Nothing, but the actor's next op waits until this side is done (a request taken
    /// back).
    Release(Turn),
    /// A request: apply the actor's side, then answer the asker.
    Request(Asker),
    /// Accept, decline, remove (the actor's side done): answer the asker, so that its
    /// answer comes once both lists agree.
    Answer(Asker),
}

/// The status and reason a refused change is answered with.
pub fn contact_status(e: ContactError) -> (Status, &'static str) {
    match e {
        ContactError::Forbidden => (Status::Forbidden, "forbidden"),
        ContactError::NotFound => (Status::NotFound, "no such contact or request"),
        ContactError::Full => (
            Status::RateLimited,
            "contact list full (--max-contacts-per-user) or too many pending requests (--max-contact-requests)",
        ),
        ContactError::Oneself => (Status::BadRequest, "user: cannot name oneself"),
    }
}

/// What a change tells the users concerned, from the op and the state it left.
pub fn event_kind(op: ContactOp, now: ContactState) -> ContactEventKind {
    match (op, now) {
        (_, ContactState::Accepted) => ContactEventKind::ContactEventAccepted,
        (_, ContactState::Incoming | ContactState::Outgoing) => {
            ContactEventKind::ContactEventRequest
        }
        (ContactOp::Block, _) => ContactEventKind::ContactEventBlocked,
        (ContactOp::Unblock, _) => ContactEventKind::ContactEventUnblocked,
        (ContactOp::DeclineOut | ContactOp::DeclineIn, _) => ContactEventKind::ContactEventDeclined,
        _ => ContactEventKind::ContactEventRemoved,
    }
}

/// A store entry on the wire.
pub fn wire_entry(e: crate::store::contacts::ContactEntry) -> pb::ContactEntry {
    pb::ContactEntry {
        user: e.user,
        state: e.state,
        version: e.version,
    }
}

/// The ContactEvent frame of a contact event kept in the offline queue, with this
/// session's `seq`.
pub(crate) fn stored_contact_event(seq: u64, m: &StoredMsg) -> ServerFrame {
    let state = match ContactEventKind::try_from(m.contact_event) {
        Ok(ContactEventKind::ContactEventRequest) => ContactState::Incoming,
        Ok(ContactEventKind::ContactEventAccepted) => ContactState::Accepted,
        _ => ContactState::None,
    };
    reply::contact_event(pb::ContactEvent {
        kind: m.contact_event,
        user: m.from_user.clone(),
        version: m.msg_id,
        seq,
        state: state as i32,
    })
}

impl Shard {
    /// The limits every list of this router is kept under.
    pub fn contact_limits(&self) -> ContactLimits {
        ContactLimits {
            max_contacts: self.cfg.max_contacts_per_user,
            max_tombstones: self.cfg.max_contact_tombstones,
            max_incoming: self.cfg.max_contact_requests,
        }
    }

    /// True when a direct message must be checked against its sender's list: some
    /// user here is blocked by someone, or `--dm-policy contacts`.
    #[inline]
    pub(crate) fn dm_gate(&self) -> bool {
        self.contacts.with_blocks() != 0 || self.cfg.dm_policy == DmPolicy::Contacts
    }

    /// Why a direct message from `from` (homed here, live) to `to` is refused, if it is.
    pub(crate) fn dm_refusal(&self, from: &[u8], to: &[u8]) -> Option<(Status, &'static str)> {
        if from == to {
            return None;
        }
        let (Ok(from), Ok(to)) = (std::str::from_utf8(from), std::str::from_utf8(to)) else {
            return None;
        };
        let Some(rec) = self.contacts.get(from) else {
            // Loaded at login; only a failed load leaves it missing.
            return Some((Status::Unavailable, "contact list not loaded"));
        };
        match self.known_blocker(from, to) {
            Some(true) => return Some((Status::Forbidden, "forbidden")),
            Some(false) => {}
            // Looked up before the frame was handled (`Shard::blockers_known`): only a
            // failed lookup leaves it unknown.
            None => return Some((Status::Unavailable, "blocks could not be read")),
        }
        if self.cfg.dm_policy == DmPolicy::Contacts && rec.state_of(to) != ContactState::Accepted {
            return Some((
                Status::Forbidden,
                "not an accepted contact (--dm-policy contacts)",
            ));
        }
        None
    }

    /// Runs `task`, a contact op or list of `user` (homed here) from session `from`, in
    /// its turn: now if no op of `user` is in flight, else after those before it.
    pub(crate) fn in_contact_turn(&mut self, user: &str, from: SessionId, task: ContactTask) {
        let Some(home) = self.store.as_ref().map(|l| l.done.clone()) else {
            let turn = Turn {
                user: String::new(),
                home: None,
                _inflight: None,
            };
            task(self, turn);
            return;
        };
        let inflight = self.request_in_flight(from);
        let max = CONTACT_WAITING_MIN.max(
            self.cfg
                .max_sessions_per_user
                .saturating_mul(self.cfg.max_requests_in_flight as usize),
        );
        if self.contact_turns.get(user).is_some_and(|w| w.len() >= max) {
            // Ops of sessions that ended can no longer be answered: they go, so sessions
            // that pipeline ops and leave, again and again, behind a slow op, do not grow
            // the queue (the live sessions' ops are bounded by their requests in flight).
            if let Some(mut w) = self.contact_turns.remove(user) {
                w.retain(|t| {
                    t.inflight
                        .as_ref()
                        .is_none_or(|f| self.resolve(f.id).is_some())
                });
                self.contact_turns.insert(user.to_owned(), w);
            }
        }
        if let Some(waiting) = self.contact_turns.get_mut(user) {
            waiting.push_back(Waiting { task, inflight });
            return;
        }
        self.contact_turns
            .insert(user.to_owned(), std::collections::VecDeque::new());
        let turn = Turn {
            user: user.to_owned(),
            home: Some(home),
            _inflight: inflight,
        };
        task(self, turn);
    }

    /// The turn of `user`'s op in flight ended: its next one runs, if any.
    pub(crate) fn next_contact_turn(&mut self, user: &str) {
        if self.deleting.contains(user) {
            // The deletion read the list when it began: ops queued before it would leave
            // entries and requests the next owner of the name inherits. Their sessions are
            // being closed with the account; unanswered, they hand their counts back.
            self.contact_turns.remove(user);
            return;
        }
        let next = match self.contact_turns.get_mut(user) {
            Some(waiting) => waiting.pop_front(),
            None => return,
        };
        let (Some(w), Some(link)) = (next, self.store.as_ref()) else {
            self.contact_turns.remove(user);
            return;
        };
        let turn = Turn {
            user: user.to_owned(),
            home: Some(link.done.clone()),
            _inflight: w.inflight,
        };
        (w.task)(self, turn);
    }

    /// Runs `then` once `user`'s list (homed here) is loaded: now, or after the load
    /// (after any other work already waiting for it). A failed load runs it too, and it
    /// finds the list missing.
    pub fn with_contacts(&mut self, user: &str, then: ContactWaiter) {
        match self.contacts.wait(user, then) {
            Wait::Ready(w) => {
                w(self);
                self.release_contacts(user);
            }
            Wait::Queued => {}
            Wait::Load => {
                let (u, load) = (user.to_owned(), user.to_owned());
                let max_blockers = self.cfg.max_loaded_blockers;
                self.store_req(
                    move |st, cb| st.get_contacts(&load, max_blockers, cb),
                    move |sh, r| {
                        let waiters = match r {
                            Ok(rec) => sh.contacts.loaded(&u, rec),
                            Err(e) => {
                                tracing::warn!(error = %e, user = %u, "loading a contact list failed");
                                sh.contacts.load_failed(&u)
                            }
                        };
                        for w in waiters {
                            w(sh);
                        }
                        sh.release_contacts(&u);
                    },
                );
            }
        }
    }

    /// [`Shard::with_contacts`] for an op of another user, `actor`, on `user`'s list: a
    /// list not loaded is read at the page-read gate in a turn of the actor's (charged to
    /// it), then kept as if loaded (see [`ContactReads`]).
    pub(crate) fn with_contacts_in_turn(&mut self, user: &str, actor: &str, then: ContactWaiter) {
        let turn = side_turn(b"\0c", actor);
        if self.contacts.present(user) {
            self.with_contacts(user, then);
            return;
        }
        if self.contact_reads.reading(user) {
            self.contact_reads.wait(user, then);
            return;
        }
        if !self.has_store() || !self.page_reads.may_wait(&turn, CONTACT_READS_WAITING_MAX) {
            self.with_contacts(user, then);
            return;
        }
        self.contact_reads.wait(user, then);
        let (u, load, max_blockers) = (
            user.to_owned(),
            user.to_owned(),
            self.cfg.max_loaded_blockers,
        );
        self.read_in_turn(
            turn,
            move |st, cb| st.get_contacts(&load, max_blockers, cb),
            move |sh: &mut Shard, r| {
                let (clean, waiting) = sh.contact_reads.done(&u);
                match r {
                    Ok(rec) if clean && !sh.deleting.contains(&u) => sh.contacts.install(&u, rec),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, user = %u, "reading a contact list failed")
                    }
                }
                // Kept (or loaded again now, or meanwhile by a login): the ops go on, in
                // the order they came.
                for then in waiting {
                    sh.with_contacts(&u, then);
                }
            },
        );
    }

    /// `user`'s list is done with for now: with no live session here it is idle, kept
    /// loaded for the next change (least recently used out first, see
    /// `ContactCache::release`; the store has it), else held.
    pub(crate) fn release_contacts(&mut self, user: &str) {
        if self.user_sessions(user.as_bytes()) == 0 {
            self.contacts.release(user);
        } else {
            self.contacts.hold(user);
        }
    }

    /// Writes what changed in `user`'s loaded list to the store (its fields and the
    /// entries changed since the last write: not the whole list).
    pub(crate) fn save_contacts(&mut self, user: &str) {
        let Some(save) = self.contacts.take_save(user) else {
            return;
        };
        let (u, name) = (user.to_owned(), user.to_owned());
        self.store_req(
            |st, cb| st.save_contacts(&name, save, cb),
            move |sh, r| {
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "writing a contact list failed");
                }
                // A failed write is repaired by a whole one; the list stays loaded until
                // its writes are stored, then goes if nobody here needs it.
                if sh.contacts.save_done(&u, r.is_ok()) {
                    sh.save_contacts(&u);
                }
                sh.release_contacts(&u);
            },
        );
    }

    /// Applies `op` to `user`'s list (loaded, homed here) about `peer`; a change is
    /// written back. `Err(UNAVAILABLE)` if the list could not be loaded.
    pub(crate) fn contact_apply(
        &mut self,
        user: &str,
        peer: &str,
        op: ContactOp,
    ) -> Result<Outcome, (Status, &'static str)> {
        let lim = self.contact_limits();
        match self.contacts.apply(user, peer, op, lim) {
            None => Err((Status::Unavailable, "contact list not available")),
            Some(Err(e)) => Err(contact_status(e)),
            Some(Ok(o)) => {
                if o != Outcome::Unchanged {
                    self.save_contacts(user);
                }
                Ok(o)
            }
        }
    }

    /// `peer`'s entry in `user`'s loaded list, and the list's version.
    pub(crate) fn contact_entry(&self, user: &str, peer: &str) -> (u64, pb::ContactEntry) {
        match self.contacts.get(user) {
            Some(rec) => (rec.version, wire_entry(rec.entry(peer))),
            None => (0, wire_entry(ContactRecord::default().entry(peer))),
        }
    }

    /// Answers a contact request with `user`'s list as it is now about `peer`.
    pub(crate) fn answer_contact(&mut self, to: Asker, user: &str, peer: &str) {
        let (version, entry) = self.contact_entry(user, peer);
        let f = reply::contact_result(to.request_id, Status::Ok, "", version, vec![entry], false);
        self.send_to_session(to.id, f);
    }

    /// Answers a contact request with a refusal.
    pub(crate) fn refuse_contact(&mut self, to: Asker, (status, reason): (Status, &str)) {
        self.counters.reject(status);
        let f = reply::contact_result(to.request_id, status, reason, 0, Vec::new(), false);
        self.send_to_session(to.id, f);
    }

    /// Tells `user` (homed here) that its list changed about `peer` (now at `version`):
    /// its live sessions but `skip`; with none live and `store`, its offline queue.
    pub(crate) fn tell_contact(
        &mut self,
        user: &str,
        peer: &str,
        op: ContactOp,
        version: u64,
        skip: Option<SessionId>,
        store: bool,
    ) {
        let state = self
            .contacts
            .get(user)
            .map_or(ContactState::None, |r| r.state_of(peer));
        let kind = event_kind(op, state);
        let frame = reply::contact_event(pb::ContactEvent {
            kind: kind as i32,
            user: peer.to_owned(),
            version,
            seq: 0,
            state: state as i32,
        });
        let n = self.push_live_to(user.as_bytes(), &frame, skip);
        if state == ContactState::Accepted {
            // New contacts see each other's presence: each side sends its own user's.
            self.share_presence(user, peer);
        }
        if n > 0 || !store || !self.has_store() || self.user_sessions(user.as_bytes()) > 0 {
            return;
        }
        if self.store_disk_full() {
            // A notice, not stored while the store is full (`store::disk`); the contact
            // list itself has the change.
            return;
        }
        let stored = StoredMsg {
            from_user: peer.to_owned(),
            server_ts_us: super::now_us(),
            msg_id: version,
            contact_event: kind as i32,
            ..Default::default()
        };
        let cap = self.notice_cap();
        let b = Behind {
            msg: stored,
            cap,
            reply: None,
            origin: None,
        };
        let Some(Behind { msg: stored, .. }) = self.behind_requeues(user.as_bytes(), b) else {
            return;
        };
        let u = user.to_owned();
        self.store_req_sized(
            0,
            |s, cb| s.enqueue(&u, vec![stored], cap, true, cb),
            |_, r| match r {
                Ok(_) | Err(StoreError::NotFound | StoreError::Full) => {}
                Err(e) => tracing::warn!(error = %e, "storing a contact event failed"),
            },
        );
    }

    /// Runs `then` on the home shard of `user` (this one or another).
    pub(crate) fn on_home_of(&mut self, user: &str, then: ContactWaiter) {
        let home = self.home(user.as_bytes());
        self.post(home, Mail::Call(then));
    }

    /// The peer side of an exchange: applies `op` (an `*In` op, or `Forget`) to `user`'s
    /// list about `peer` on `user`'s home shard (this one), tells `user`, then does
    /// `then` on the actor's (`peer`'s) home shard.
    pub(crate) fn contact_in(&mut self, user: String, peer: String, op: ContactOp, then: Then) {
        let (u, actor) = (user.clone(), peer.clone());
        // A client's op reads the list in the actor's turn; an account deletion's and a
        // request taken back load it as before (paced by their own machinery).
        let in_turn = matches!(then, Then::Request(_) | Then::Answer(_));
        let apply: ContactWaiter = Box::new(move |sh: &mut Shard| {
            let r = sh.contact_apply(&user, &peer, op);
            if let Ok(Outcome::Changed(v)) = r {
                sh.tell_contact(&user, &peer, op, v, None, true);
            }
            match then {
                Then::Nothing | Then::Release(_) => {}
                Then::Request(asker) => {
                    let done = r.map(drop);
                    sh.on_home_of(
                        &peer.clone(),
                        Box::new(move |sh: &mut Shard| {
                            sh.request_answered(peer, user, asker, done)
                        }),
                    );
                }
                Then::Answer(asker) => sh.on_home_of(
                    &peer.clone(),
                    Box::new(move |sh: &mut Shard| sh.answer_contact(asker, &peer, &user)),
                ),
            }
        });
        if in_turn {
            self.with_contacts_in_turn(&u, &actor, apply);
        } else {
            self.with_contacts(&u, apply);
        }
    }

    /// A request of `user` (homed here) to `peer` was taken (or refused) by the peer's
    /// side: the asker's side follows and the asker is answered.
    fn request_answered(
        &mut self,
        user: String,
        peer: String,
        asker: Asker,
        done: Result<(), (Status, &'static str)>,
    ) {
        if let Err(e) = done {
            self.refuse_contact(asker, e);
            return;
        }
        let u = user.clone();
        let mut asker = asker;
        self.with_contacts(
            &u,
            Box::new(move |sh: &mut Shard| {
                match sh.contact_apply(&user, &peer, ContactOp::RequestOut) {
                    Ok(Outcome::Changed(v)) => {
                        sh.tell_contact(
                            &user,
                            &peer,
                            ContactOp::RequestOut,
                            v,
                            Some(asker.id),
                            false,
                        );
                        sh.answer_contact(asker, &user, &peer);
                    }
                    Ok(Outcome::Unchanged) => sh.answer_contact(asker, &user, &peer),
                    Err(e) => {
                        // This side changed meanwhile (filled up): take the request back,
                        // the user's next op behind that.
                        let then = asker.take_turn().map_or(Then::Nothing, Then::Release);
                        sh.refuse_contact(asker, e);
                        sh.on_home_of(
                            &peer.clone(),
                            Box::new(move |sh: &mut Shard| {
                                sh.contact_in(peer, user, ContactOp::RemoveIn, then)
                            }),
                        );
                    }
                }
            }),
        );
    }

    /// Notes on `user`'s list (homed here) that `peer` blocks it (`on`) or not. A list
    /// loaded (or on its way) is changed there and written from it; one that is not is
    /// changed in the store by its one key: loading it would read every blocker's key,
    /// and a few clients blocking and unblocking a user blocked by 100 000 kept the
    /// storage thread ~10 ms per toggle (other users' logins 50× slower).
    pub(crate) fn set_blocked_by(&mut self, user: String, peer: String, on: bool) {
        if !self.contacts.present(&user) {
            self.contact_reads.changed(&user);
            self.store_req(
                |st, cb| st.note_blocker(&user, &peer, on, cb),
                |_, r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "noting a block failed");
                    }
                },
            );
            return;
        }
        let u = user.clone();
        self.with_contacts(
            &u,
            Box::new(move |sh: &mut Shard| {
                let max = sh.cfg.max_loaded_blockers;
                if sh.contacts.set_blocked_by(&user, &peer, on, max) == Some(true) {
                    sh.save_contacts(&user);
                }
            }),
        );
    }

    /// A user (homed here) is deleting its account: every peer its list names forgets it,
    /// and every user that blocks it, the ones its list did not load too (read a page at
    /// a time; `hold` is let go once all are told).
    pub(crate) fn forget_contacts_of(&mut self, user: &str, hold: Option<Arc<AfterAll>>) {
        let u = user.to_owned();
        self.with_contacts(
            user,
            Box::new(move |sh: &mut Shard| {
                let Some(rec) = sh.contacts.get(&u) else {
                    return;
                };
                let unloaded = rec.blockers_unloaded;
                for peer in rec.peers() {
                    sh.tell_forgotten(peer, u.clone(), None);
                }
                if let (true, Some(hold)) = (unloaded, hold) {
                    sh.tell_blockers_after(u, String::new(), hold);
                }
            }),
        );
    }

    /// On `peer`'s home shard, `gone` (deleted) neither blocks it nor is in its list.
    /// `hold` is let go once that is under way.
    fn tell_forgotten(&mut self, peer: String, gone: String, hold: Option<Arc<AfterAll>>) {
        self.on_home_of(
            &peer.clone(),
            Box::new(move |sh: &mut Shard| {
                sh.set_blocked_by(peer.clone(), gone.clone(), false);
                sh.contact_in(peer, gone, ContactOp::Forget, Then::Nothing);
                drop(hold);
            }),
        );
    }

    /// The users that block `user` (being deleted) after `after` by name, told a page
    /// at a time: the next page is read once the last one is under way, and `hold` is let
    /// go after the last.
    fn tell_blockers_after(&mut self, user: String, after: String, hold: Arc<AfterAll>) {
        let u = user.clone();
        self.store_req(
            move |st, cb| st.blockers_after(&u, &after, BLOCKERS_PAGE, cb),
            move |sh, r| {
                let page = match r {
                    Ok(page) => page,
                    Err(e) => {
                        // The deletion goes on; the blockers not told keep their entry.
                        tracing::warn!(error = %e, "reading the blockers of a deleted user failed");
                        drop(hold);
                        return;
                    }
                };
                let Some(done) = sh.store.as_ref().map(|l| l.done.clone()) else {
                    return;
                };
                let last = match page.last() {
                    Some(last) if page.len() == BLOCKERS_PAGE => Some(last.clone()),
                    _ => None,
                };
                let u = user.clone();
                let next = AfterAll::new(
                    Box::new(move |sh: &mut Shard| {
                        if let Some(last) = last {
                            sh.tell_blockers_after(u, last, hold);
                        }
                    }),
                    done,
                );
                for peer in page {
                    // (Those its list loaded were told with its other peers.)
                    if !sh
                        .contacts
                        .get(&user)
                        .is_some_and(|r| r.is_blocked_by(&peer))
                    {
                        sh.tell_forgotten(peer, user.clone(), Some(next.clone()));
                    }
                }
            },
        );
    }

    /// The user's session `key` is the first of a login: loads its list, ahead of the
    /// backlog page the session's reader waits for, so it is here before any frame.
    pub(crate) fn load_contacts_at_login(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&s.user).into_owned();
        self.with_contacts(&user, Box::new(|_| {}));
    }
}

#[cfg(test)]
mod tests {
    use super::ContactReads;

    #[test]
    fn a_read_is_kept_unless_the_list_changed_while_it_was_in_flight() {
        let mut r = ContactReads::default();
        assert!(r.wait("bob", 1), "the first makes the read");
        assert!(!r.wait("bob", 2), "the next waits with it");
        assert!(r.wait("carol", 3));
        assert_eq!(
            r.done("bob"),
            (true, vec![1, 2]),
            "nothing changed: kept, in order"
        );
        // A change with no read in flight concerns no read.
        r.changed("bob");
        assert!(r.wait("bob", 4));
        assert!(r.reading("bob"));
        r.changed("bob");
        assert!(!r.wait("bob", 5), "still one read in flight");
        assert_eq!(
            r.done("bob"),
            (false, vec![4, 5]),
            "changed meanwhile: not kept"
        );
        assert!(!r.reading("bob"));
        assert_eq!(
            r.done("carol"),
            (true, vec![3]),
            "another user's list is not concerned"
        );
        assert!(
            r.reads.is_empty(),
            "nothing kept once every read is answered"
        );
        assert!(r.wait("bob", 6), "a new read after the change");
        assert_eq!(r.done("bob"), (true, vec![6]));
        // An answer never asked for (cannot happen) is not kept.
        assert_eq!(r.done("dave"), (false, vec![]));
    }
}
