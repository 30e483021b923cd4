//! Everything that travels between shards, in one type ([`Mail`]), and the one match
//! that handles it on the receiving shard ([`Shard::on_mail`]).
//!
//! Mail arrives three ways, all handled by the same match in the shard's consumer
//! (`run.rs`): the SPSC rings from the other shards (batches, see `mailbox`), this
//! shard's own `local_mail` (work for a room or user homed here), and the [`MailQueue`]
//! that threads outside the mesh (the storage thread) post to (store answers,
//! [`Mail::Stored`]).
//!
//! Pause bookkeeping: a recipient over its bound pauses a remote sender by adding to
//! the sender shard's pause table directly (`pause.rs`: an atomic, so the sender's
//! reader sees it before its next read); taking the pause back is [`Mail::Resume`],
//! which also wakes the reader.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use ringrouter_proto::reply;
use ringrouter_proto::v1::{RoomEvent, ServerFrame};
use ringrouter_proto::Status;

use super::answer::RoomAck;
use super::api::is_api;
use super::retention::{Outgoing, OwnedMsg, NO_ROOM};
use super::session::{SessionId, SessionKey};
use super::Shard;
use crate::mailbox::Doorbell;
use crate::shared::ConnGuard;

/// A direct message on its way to the recipient's home shard.
#[derive(Debug)]
pub struct Routed {
    /// Recipient user (a slice of the sender's read buffer); `None`: the same as
    /// the previous Deliver of this batch.
    pub to_user: Option<Bytes>,
    /// Authenticated sender; `None`: the same as the previous Deliver of this
    /// batch. Eliding repeats saves two reference-count updates per message on a
    /// counter both shards would otherwise keep pulling across cores.
    pub from_user: Option<Bytes>,
    /// The payload (a slice of the sender's read buffer).
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance, µs since the epoch.
    pub ts_us: u64,
    /// Sender session and request id, when the sender asked for a SendResult.
    pub reply: Option<(SessionId, u64)>,
    /// The sending session, so the recipient's shard can pause it (backpressure).
    pub sender: SessionId,
}

/// A connection logged in on a shard that is not its user's home, moving there.
pub struct Handover {
    /// The socket.
    pub fd: OwnedFd,
    /// Authenticated user.
    pub user: String,
    /// Device name.
    pub device: String,
    /// Login request id, echoed in LoginResult.
    pub request_id: u64,
    /// What the Login asks about resuming.
    pub resume: super::resume::ResumeAsk,
    /// Bytes read after the Login frame (pipelined frames).
    pub leftover: BytesMut,
    /// TLS / WebSocket state (`None`: plain TCP).
    pub(crate) layers: Option<Box<crate::transport::Layers>>,
    /// Keeps the connection counted.
    pub(crate) guard: ConnGuard,
}

/// What travels between shards.
pub enum Mail {
    /// A direct message for a user homed on the receiving shard.
    Deliver(Routed),
    /// The outcome of a routed message, for a sender who asked.
    Result {
        /// The sender's session.
        to: SessionId,
        /// The Send's request id.
        request_id: u64,
        /// The message id.
        msg_id: u64,
        /// OK or NOT_FOUND.
        status: Status,
        /// The SendResult's reason (a room's NOT_FOUND: "no such room").
        reason: &'static str,
    },
    /// A connection moving to its user's home shard.
    Handover(Box<Handover>),
    /// The recipient that paused this sender drained (or closed): read again.
    Resume {
        /// The sending session.
        sender: SessionId,
    },
    /// A request about a room homed on the receiving shard.
    Room(Box<RoomReq>),
    /// A message to a room homed on the receiving shard.
    RoomSend(RoomSend),
    /// A room message for members homed on the receiving shard.
    RoomDeliver(RoomFan),
    /// A room event for users homed on the receiving shard.
    RoomNotice(Box<RoomNotice>),
    /// A user's own Create or Join homed on the receiving shard was answered.
    RoomQuota {
        /// The user.
        user: Bytes,
    },
    /// A store request of the receiving shard was answered (through its [`MailQueue`]).
    Stored(StoreDone),
    /// Work for the receiving shard, run there with the shard borrowed (the HTTP API's
    /// questions about a user homed there).
    Call(StoreDone),
    /// A frame for the live sessions of users homed on the receiving shard, never
    /// stored (ephemeral messages and other social notices, see `shard::social`).
    Live(Box<LiveFrame>),
    /// A frame for a session of the receiving shard (answers to room requests).
    Reply {
        /// The session.
        to: SessionId,
        /// The frame.
        frame: Box<ServerFrame>,
        /// The request's count against the session's `max_requests_in_flight`, handed
        /// back once the answer is queued.
        inflight: Option<InFlight>,
    },
}

/// Join codes start with this character, which room names may not start with: a room
/// can never be named like another room's code (see [`ringrouter_proto::names`]).
pub const CODE_MARK: char = ringrouter_proto::names::CODE_MARK;

/// A request about one room, on its way to the room's home shard.
#[derive(Debug)]
pub struct RoomReq {
    /// The authenticated user asking.
    pub user: String,
    /// The session asking (answers go there).
    pub from: SessionId,
    /// Echoed in the RoomResult (0 with `Purge`: nobody to answer).
    pub request_id: u64,
    /// What to do.
    pub op: RoomOp,
    /// The user's own Create or Join, admitted by the user's home shard against
    /// `max_rooms_per_user`; its answer lets the user's next one through.
    pub quota: bool,
    /// The asking session had ended when its home shard sent the request on (it waited
    /// there behind the user's earlier Create or Join): a room password is then not
    /// checked for it (`Shard::check_room_password`).
    pub session_gone: bool,
    /// Counts against the asking session's `max_requests_in_flight` until the request
    /// is done with (answered or dropped), wherever that is. Its answer takes it along
    /// (see [`Shard::send_answer`]); a `Cell`, so an answer given from a borrowed request
    /// can.
    pub inflight: InFlightSlot,
}

/// One request of a session counted against its `max_requests_in_flight` (see
/// `store_link`) while it is away on another shard or parked: dropped, wherever it is, it
/// hands the count back on the session's shard (through that shard's [`MailQueue`]).
pub struct InFlight {
    pub(crate) id: SessionId,
    pub(crate) done: Arc<MailQueue>,
    /// A big-answer request (RoomInfo, ListContacts): dropped after its answer was queued
    /// (or with the request, unanswered), it lets the session's reader go on once what is
    /// queued then is written ([`Shard::big_answer_queued`]).
    pub(crate) big: bool,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InFlight").field(&self.id).finish()
    }
}

/// A request's [`InFlight`], taken by whoever answers it (from a borrowed request too).
#[derive(Default)]
pub struct InFlightSlot(std::cell::Cell<Option<InFlight>>);

impl InFlightSlot {
    /// A slot holding `inflight`.
    pub fn new(inflight: Option<InFlight>) -> Self {
        InFlightSlot(std::cell::Cell::new(inflight))
    }

    /// The count, if nobody took it yet.
    pub fn take(&self) -> Option<InFlight> {
        self.0.take()
    }
}

impl std::fmt::Debug for InFlightSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.take();
        let r = f.debug_tuple("InFlightSlot").field(&held).finish();
        self.0.set(held);
        r
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (id, big) = (self.id, self.big);
        self.done.push(Mail::Stored(Box::new(move |sh: &mut Shard| {
            sh.request_done(id);
            if big {
                sh.big_answer_queued(id);
            }
        })));
    }
}

/// Work for one shard that waits for requests on other shards: each holds a clone, and
/// when the last is dropped (wherever that is) `then` runs on the shard, through its
/// [`MailQueue`]. A DeleteAccount deletes the account record once every room it purges
/// is done (`frames::accounts`).
pub struct AfterAll {
    /// (In a mutex only to be `Sync`: it is taken once, by the drop.)
    then: Mutex<Option<StoreDone>>,
    done: Arc<MailQueue>,
}

impl AfterAll {
    /// `then`, to run on the shard whose queue `done` is.
    pub fn new(then: StoreDone, done: Arc<MailQueue>) -> Arc<AfterAll> {
        Arc::new(AfterAll {
            then: Mutex::new(Some(then)),
            done,
        })
    }
}

impl std::fmt::Debug for AfterAll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterAll")
    }
}

impl Drop for AfterAll {
    fn drop(&mut self) {
        let then = self.then.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(then) = then.take() {
            self.done.push(Mail::Stored(then));
        }
    }
}

/// What a request waiting in a room's queue or behind its user's Create/Join counts for
/// in the shard's `parked_bytes` (besides its initial members: [`RoomReq::weight`]).
pub(crate) const PARKED_REQ: usize = 256;

impl RoomReq {
    /// What it counts for while it waits (parked behind a room or its user's Create or
    /// Join, or in the pipeline to another shard): a fixed part and its initial members'
    /// names (a CreateRoom may carry thousands).
    pub fn weight(&self) -> usize {
        let members = match &self.op {
            RoomOp::Create { members, .. } => members.iter().map(|m| m.len() + 24).sum(),
            _ => 0,
        };
        PARKED_REQ + members
    }
}

/// The room operations.
#[derive(Debug)]
pub enum RoomOp {
    /// Create a room owned by the user.
    Create {
        /// Room name.
        name: String,
        /// Optional password (empty: none).
        password: String,
        /// Initial members besides the owner.
        members: Vec<String>,
    },
    /// Join by name or join code.
    Join {
        /// Name or code.
        key: String,
        /// The room's password, if it has one.
        password: String,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: String,
    },
    /// Owner only: add a user.
    Add {
        /// Room name.
        room: String,
        /// The user to add.
        user: String,
    },
    /// Owner only: remove a member.
    Remove {
        /// Room name.
        room: String,
        /// The member to remove.
        user: String,
    },
    /// Owner only: delete the room.
    Delete {
        /// Room name.
        room: String,
    },
    /// Members only: the room's owner, members, creation time (and code, for the owner).
    Info {
        /// Room name.
        room: String,
    },
    /// The user's account is being deleted: leave the room, or delete it if owned.
    Purge {
        /// Room name.
        room: String,
        /// Held until the room is done with it (the deletion goes on once every purge
        /// dropped its own).
        after: Arc<AfterAll>,
    },
}

impl RoomOp {
    pub(crate) fn key(&self) -> &str {
        match self {
            RoomOp::Create { name, .. } => name,
            RoomOp::Join { key, .. } => key,
            RoomOp::Leave { room }
            | RoomOp::Add { room, .. }
            | RoomOp::Remove { room, .. }
            | RoomOp::Delete { room }
            | RoomOp::Info { room }
            | RoomOp::Purge { room, .. } => room,
        }
    }

    pub(crate) fn rename(&mut self, name: &str) {
        match self {
            RoomOp::Create { name: n, .. } => *n = name.to_owned(),
            RoomOp::Join { key, .. } => *key = name.to_owned(),
            RoomOp::Leave { room }
            | RoomOp::Add { room, .. }
            | RoomOp::Remove { room, .. }
            | RoomOp::Delete { room }
            | RoomOp::Info { room }
            | RoomOp::Purge { room, .. } => *room = name.to_owned(),
        }
    }
}

/// A message to a room, on its way to the room's home shard.
#[derive(Debug)]
pub struct RoomSend {
    /// Room name or join code, as the sender gave it.
    pub room: Bytes,
    /// Authenticated sender.
    pub from_user: Bytes,
    /// Payload (a slice of the sender's read buffer).
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
    /// Sender session and request id, when the sender asked for a SendResult.
    pub reply: Option<(SessionId, u64)>,
    /// The sending session (not echoed to; paused if members read too slowly).
    pub sender: SessionId,
    /// Live sessions only, never stored (an ephemeral send or a read receipt).
    pub live: Live,
}

/// What a room "message" is: stored and acked, or for live sessions only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// An ordinary message.
    No,
    /// An ephemeral message (`Send.ephemeral`).
    Ephemeral,
    /// A read receipt (MarkRead): `msg_id` is the message read up to; no payload.
    Receipt,
}

/// A room message for the members homed on one shard.
#[derive(Debug)]
pub struct RoomFan {
    /// Room name.
    pub room: Bytes,
    /// Authenticated sender.
    pub from_user: Bytes,
    /// Payload, shared by every delivery.
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
    /// The members homed on the receiving shard.
    pub users: Arc<[Bytes]>,
    /// The sending session.
    pub sender: SessionId,
    /// Set when the sender waits for a SendResult.
    pub ack: Option<Arc<RoomAck>>,
    /// Live sessions only, never stored (an ephemeral send or a read receipt).
    pub live: Live,
}

/// A frame for the live sessions of some users homed on one shard (`Mail::Live`, see `shard::social`).
#[derive(Debug)]
pub struct LiveFrame {
    /// Who gets it.
    pub users: Vec<Bytes>,
    /// The frame.
    pub frame: ServerFrame,
    /// A session that does not get it (the sending device).
    pub skip: Option<SessionId>,
    /// What it counts for in the cross-shard pipeline bound.
    pub weight: usize,
    /// The user whose typing indicator or read receipt it is: each session it reaches
    /// takes one from that user's direct live deliveries on the recipients' shard
    /// (`direct_live_per_user_per_second`). None: the router's own notices (presence).
    pub from: Option<Bytes>,
}

/// A room event for the live sessions of some users homed on one shard.
#[derive(Debug)]
pub struct RoomNotice {
    /// Who gets it.
    pub users: Vec<Bytes>,
    /// The event.
    pub event: RoomEvent,
    /// Each user is the event's subject (`event.user` is theirs): a new room's initial
    /// members each learn they are in, in one notice per shard.
    pub each: bool,
}

impl RoomNotice {
    /// What it counts for in the cross-shard pipeline: a fixed part and its users.
    pub fn weight(&self) -> usize {
        64 + self.users.iter().map(|u| u.len() + 24).sum::<usize>()
    }
}

/// A store answer: the continuation of a store request, run on the shard that made it.
pub type StoreDone = Box<dyn FnOnce(&mut Shard) + Send>;

/// Mail for one shard from threads outside the shard mesh (the storage thread), which
/// have no ring of their own.
pub struct MailQueue {
    q: Mutex<Vec<Mail>>,
    /// Set with every push: the consumer looks here, not at the lock, on every turn.
    queued: AtomicBool,
    bell: Arc<Doorbell>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MailQueue {
    /// A queue that rings `bell` (the shard's mailbox doorbell) on every push.
    pub fn new(bell: Arc<Doorbell>) -> Self {
        MailQueue {
            q: Mutex::new(Vec::new()),
            queued: AtomicBool::new(false),
            bell,
        }
    }

    /// Queues mail and wakes the shard's consumer if it is parked.
    pub fn push(&self, m: Mail) {
        lock(&self.q).push(m);
        self.queued.store(true, Ordering::Release);
        self.bell.ring_or_hold();
    }

    /// Moves everything queued into `out` (in order).
    pub fn take_into(&self, out: &mut Vec<Mail>) {
        if self.queued.swap(false, Ordering::AcqRel) {
            out.append(&mut lock(&self.q));
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        !self.queued.load(Ordering::Acquire)
    }
}

impl Mail {
    /// What this item counts for in the cross-shard pipeline bound: payload bytes
    /// plus a fixed overhead.
    pub fn weight(&self) -> usize {
        match self {
            Mail::Deliver(r) => r.payload.len() + 64,
            Mail::RoomSend(r) => r.payload.len() + 64,
            Mail::RoomDeliver(r) => r.payload.len() + 64,
            Mail::Live(l) => l.weight,
            Mail::Room(r) => r.weight(),
            Mail::RoomNotice(n) => n.weight(),
            _ => 64,
        }
    }
}

impl Shard {
    /// Handles one item that arrived from another shard (or this one).
    ///
    /// Inlined into the consumer's loops: called, it took each mail (168 bytes) by a
    /// copy into its argument, 30 instructions a cross-shard message in `memcpy` alone
    /// (`SHARDS=2 bench/ir.sh BIN --pairs 16 --size 64 --messages 200000`).
    #[inline(always)]
    pub fn on_mail(&mut self, mail: Mail, blocked: &mut Vec<SessionKey>) -> Option<Box<Handover>> {
        match mail {
            Mail::Deliver(r) => {
                if let Some(t) = r.to_user {
                    self.batch_to = t;
                }
                if let Some(f) = r.from_user {
                    self.batch_from = f;
                }
                let (from, to) = (
                    std::mem::take(&mut self.batch_from),
                    std::mem::take(&mut self.batch_to),
                );
                self.history_dm(&from, &to, &r.payload, r.msg_id, r.ts_us);
                (self.batch_from, self.batch_to) = (from, to);
                if self.journaled() {
                    let msg = OwnedMsg {
                        from_user: self.batch_from.clone(),
                        to_room: Bytes::new(),
                        payload: r.payload,
                        msg_id: r.msg_id,
                        ts_us: r.ts_us,
                    }
                    .unpinned();
                    self.journal(self.batch_to.clone(), msg, r.reply.into(), r.sender, None);
                    return None;
                }
                // Moved out and back: no reference-count update per message.
                let to_user = std::mem::take(&mut self.batch_to);
                let from_user = std::mem::take(&mut self.batch_from);
                let m = Outgoing {
                    from_user: &from_user,
                    to_room: &NO_ROOM,
                    payload: &r.payload,
                    msg_id: r.msg_id,
                    ts_us: r.ts_us,
                    store_seq: 0,
                    fanned: None,
                };
                let (n, overflowed) = self.deliver_local(&to_user, m, Some(r.sender), blocked);
                let offline = n == 0 && self.has_store();
                if offline {
                    self.store_offline(&to_user, m, r.reply.into());
                }
                self.batch_to = to_user;
                self.batch_from = from_user;
                self.close_overflowed(overflowed);
                if !offline {
                    let status = if n > 0 { Status::Ok } else { Status::NotFound };
                    self.reply_send(r.reply, r.msg_id, status);
                }
                None
            }
            Mail::Result {
                to,
                request_id,
                msg_id,
                status,
                reason,
            } => {
                if is_api(to) {
                    self.answer_api(to, status, msg_id);
                } else if let Some(key) = self.resolve(to) {
                    let reason = match status {
                        Status::NotFound if !self.has_store() => "user has no session",
                        _ => reason,
                    };
                    self.push_frame(key, &reply::send_result(request_id, status, reason, msg_id));
                }
                None
            }
            Mail::Handover(h) => Some(h),
            Mail::Resume { sender } => {
                self.resume_sender(sender);
                None
            }
            Mail::Room(req) => {
                self.on_room_req(req);
                None
            }
            Mail::RoomSend(s) => {
                self.on_room_send(s);
                None
            }
            Mail::RoomDeliver(f) => {
                self.on_room_fan(f);
                None
            }
            Mail::RoomNotice(n) => {
                self.on_room_notice(&n);
                None
            }
            Mail::RoomQuota { user } => {
                self.next_own(&user);
                None
            }
            Mail::Live(l) => {
                self.push_live(&l);
                None
            }
            Mail::Reply {
                to,
                frame,
                inflight,
            } => {
                if let Some(k) = self.resolve(to) {
                    self.push_frame(k, &frame);
                }
                // After the answer: the session's reader may go on.
                drop(inflight);
                None
            }
            Mail::Stored(then) | Mail::Call(then) => {
                then(self);
                None
            }
        }
    }

    /// Starts handling a batch from another shard (elided names refer back only
    /// within one batch).
    pub fn begin_batch(&mut self) {
        self.batch_to = Bytes::new();
        self.batch_from = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: RoomOp) -> RoomReq {
        RoomReq {
            user: "owner".into(),
            from: SessionId {
                shard: 0,
                key: 0,
                gen: 0,
            },
            request_id: 1,
            op,
            quota: true,
            session_gone: false,
            inflight: InFlightSlot::default(),
        }
    }

    #[test]
    fn a_create_with_members_weighs_their_names() {
        let plain = req(RoomOp::Leave { room: "r".into() });
        let members: Vec<String> = (0..9_999).map(|i| format!("member-{i:05}")).collect();
        let names: usize = members.iter().map(String::len).sum();
        let create = req(RoomOp::Create {
            name: "r".into(),
            password: String::new(),
            members,
        });
        assert_eq!(plain.weight(), PARKED_REQ);
        assert!(
            create.weight() >= names + plain.weight(),
            "{}",
            create.weight()
        );
        // In the pipeline between shards it weighs the same.
        let w = create.weight();
        assert_eq!(Mail::Room(Box::new(create)).weight(), w);
    }
}
