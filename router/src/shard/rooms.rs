//! Rooms: owners, members, join codes, events, and room messages fanned out to every
//! member's sessions with the payload shared, not copied.
//!
//! # Ownership
//! A room lives on its home shard (`home_shard(name)`), which keeps it in memory once
//! loaded from the store and is the only writer of its record. Every request about a
//! room (and every message to it) is mailed there and handled in arrival order: while a
//! request waits for the store (loading the record, checking a password, writing), later
//! work for the same room queues behind it, so a message sent after a Join is checked
//! against the new member list.
//!
//! A JoinRoom by join code (`#…`) goes to the home of the code string first; that shard
//! looks the code up in the store and forwards the request, by name, to the room's home.
//! Every other request, and every message, names the room.
//!
//! A user's own CreateRoom and JoinRoom run one at a time: the user's home shard admits
//! each against `max_rooms_per_user` and holds the user's later room requests and
//! messages until it is answered, so they keep their order. The user's DeleteAccount
//! waits there too (see [`OwnItem::Delete`]): it reads the user's rooms only once no
//! Create or Join of the user is anywhere on its way.
//!
//! # Adding others
//! Only the rooms a user created or joined count against its `max_rooms_per_user`;
//! those others added it to (initial members, AddMember) count apart, against the same
//! number, and past it the adder is refused, so that nobody can use up someone else's
//! quota. The adder's home shard refuses an add to a user who blocks the adder (or,
//! under `--dm-policy contacts`, has not accepted it) and paces each user's adds
//! (`--max-member-adds-per-minute`, [`adds`](super::adds)): see
//! `Shard::add_refusal`.
//!
//! # Fan-out
//! The room keeps its members grouped by their home shard; each group's `Arc<[Bytes]>`
//! is built at the first message after a change of that group (a join or leave costs
//! one key in the store and a push to one group, not a rewrite of the member list). A
//! message becomes one `Mail::RoomDeliver` per shard with members (and a direct call for
//! this shard). There it becomes one [`FanMsg`](crate::outbuf::FanMsg): the payload
//! (never copied) and a Deliver header encoded once; every session of every member on that
//! shard (the sending device excepted) copies the header with its own seq and takes a
//! plain `Rc` reference to the record, for its write queue and its unacked queue. Members
//! with no session get it in their offline queue; the sender's SendResult waits for those
//! appends (one [`RoomAck`] step per shard).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringrouter_proto::fast::SendView;
use ringrouter_proto::reply;
use ringrouter_proto::v1::{RoomEvent, RoomEventKind, ServerFrame};
use ringrouter_proto::Status;

use super::answer::{Answer, FanPart, RoomAck};
use super::api::is_api;
use super::mail::{
    InFlight, Live, Mail, RoomFan, RoomNotice, RoomOp, RoomReq, RoomSend, CODE_MARK,
};
use super::retention::{Outgoing, OwnedMsg};
use super::session::{SessionId, SessionKey};
use super::store_link::store_status;
use super::{NameSet, Shard};
use crate::config::{Config, RoomAddPolicy};
use crate::store::{MemberProblem, RoomRecord, StoreError, StoreResult};

/// A room request or message of a user, waiting behind the user's Create or Join.
#[derive(Debug)]
pub enum OwnItem {
    /// A request.
    Req(RoomReq),
    /// A message.
    Send(RoomSend),
    /// The user's DeleteAccount (`frames::accounts`), begun once the Create or Join ahead
    /// of it is answered: that answer comes after the room's home wrote the room or the
    /// membership, so the deletion's read of the user's rooms finds it (and the purge
    /// mailed then reaches the room's home after it). Begun at once, the deletion read
    /// them while a Create or Join was still at the room's home (hashing or checking a
    /// password, waiting on the store): the room or membership written after that
    /// outlived the account, and whoever took the name next owned or was in it.
    Delete {
        /// The session that asked (the answer goes there).
        from: SessionId,
        /// Echoed in the AccountResult.
        request_id: u64,
        /// Counts against the session's `max_requests_in_flight` while it waits.
        inflight: Option<InFlight>,
    },
}

/// Work queued on a room.
#[derive(Debug)]
pub enum RoomWork {
    /// A request.
    Req(Box<RoomReq>),
    /// A message.
    Send(RoomSend),
}

/// Most rooms kept loaded on one shard (see `Shard::trim_room_cache`).
pub const ROOM_CACHE_MAX: usize = 100_000;

pub(crate) use super::mail::PARKED_REQ;

impl OwnItem {
    /// What it counts for in the shard's `parked_bytes` while it waits.
    pub(crate) fn weight(&self) -> usize {
        match self {
            OwnItem::Req(r) => r.weight(),
            OwnItem::Send(s) => s.payload.len() + PARKED_REQ,
            OwnItem::Delete { .. } => PARKED_REQ,
        }
    }
}

impl RoomWork {
    /// What it counts for in the shard's `parked_bytes` while it waits.
    fn weight(&self) -> usize {
        match self {
            RoomWork::Req(r) => r.weight(),
            RoomWork::Send(s) => s.payload.len() + PARKED_REQ,
        }
    }

    fn key(&self) -> Bytes {
        match self {
            RoomWork::Req(r) => Bytes::copy_from_slice(r.op.key().as_bytes()),
            RoomWork::Send(s) => s.room.clone(),
        }
    }
}

/// A room member list (one shard's part of a room's `fan`) resolved to the members'
/// sessions on this shard: a room message then costs no user-map lookup per member.
/// Valid while the shard's `users_gen` is the one it was resolved at.
pub(crate) struct FanResolved {
    /// The list (its allocation is the cache key; held, so the address is not reused).
    users: Arc<[Bytes]>,
    gen: u64,
    /// Per member, its range in `keys`.
    spans: Vec<(u32, u32)>,
    keys: Vec<SessionKey>,
    /// The members with no session here (an empty span), in order.
    empty: Vec<u32>,
}

/// Resolved member lists, by the address of the list.
#[derive(Default)]
pub(crate) struct FanCache {
    map: rustc_hash::FxHashMap<usize, FanResolved>,
    /// Members and keys held by `map` (what [`FAN_CACHE_MAX`] bounds).
    held: usize,
}

/// Most members and sessions the fan cache holds, an entry counting for
/// [`FAN_ENTRY_UNITS`] more (past it, it is emptied).
const FAN_CACHE_MAX: usize = 1 << 18;
/// What an entry counts for against [`FAN_CACHE_MAX`] besides its members and keys (its
/// map slot, vectors and the list it holds): many one-member rooms are bounded too.
const FAN_ENTRY_UNITS: usize = 8;

/// Initial members of a new room checked per store request (a 9 999-member room takes
/// 157, not 20 000 round trips). Each member's room index is read (up to twice
/// `max_rooms_per_user` keys): 64 members in ~400 rooms each hold the storage thread
/// ~4.5 ms a request (256 held it ~18 ms, and a user's page read waited behind one of
/// each creator's).
const MEMBER_CHECK_BATCH: usize = 64;

fn list_id(users: &Arc<[Bytes]>) -> usize {
    Arc::as_ptr(users) as *const Bytes as usize
}

impl FanResolved {
    fn units(&self) -> usize {
        self.spans.len() + self.keys.len() + FAN_ENTRY_UNITS
    }
}

impl FanCache {
    /// Takes the entry of `users` out (put it back with [`FanCache::keep`]).
    fn take(&mut self, users: &Arc<[Bytes]>) -> Option<FanResolved> {
        let f = self.map.remove(&list_id(users))?;
        self.held -= f.units();
        Arc::ptr_eq(&f.users, users).then_some(f)
    }

    /// How many members of `users` had no session here when its entry was resolved, and
    /// how many times sessions came or went here since (each may have made one more).
    fn absent(&self, users: &Arc<[Bytes]>, gen: u64) -> Option<(usize, usize)> {
        let f = self.map.get(&list_id(users))?;
        let changes = usize::try_from(gen.wrapping_sub(f.gen)).unwrap_or(usize::MAX);
        Arc::ptr_eq(&f.users, users).then_some((f.empty.len(), changes))
    }

    fn keep(&mut self, f: FanResolved) {
        let size = f.units();
        if self.held + size > FAN_CACHE_MAX {
            self.map.clear();
            self.held = 0;
            if size > FAN_CACHE_MAX {
                return;
            }
        }
        self.held += size;
        self.map.insert(list_id(&f.users), f);
    }
}

/// Users whose live-only room frames one shard tracks at most (past it, those whose
/// bucket is full again are forgotten first: see [`crate::rate::Buckets`]).
const LIVE_RATE_USERS: usize = 16_384;
/// Seconds of a user's live-only deliveries saved up.
const LIVE_RATE_BURST_SECS: u64 = 10;

/// The buckets of `room_live_per_user_per_second` (None when 0: no limit but a room's),
/// or of `direct_live_per_user_per_second` (`direct`; None when 0: no limit).
pub(super) fn live_rate(cfg: &Config, direct: bool) -> Option<crate::rate::Buckets<Bytes>> {
    let rate = if direct {
        cfg.direct_live_per_user_per_second
    } else {
        cfg.room_live_per_user_per_second
    };
    (rate > 0).then(|| {
        let cap = rate.saturating_mul(LIVE_RATE_BURST_SECS) as f64;
        crate::rate::Buckets::new(cap, rate as f64, LIVE_RATE_USERS)
    })
}

/// A loaded room.
#[derive(Debug)]
pub struct Room {
    /// The record without its member list (that is `members`).
    rec: RoomRecord,
    members: NameSet<Bytes>,
    /// Members grouped by home shard (in no order).
    groups: Vec<Vec<Bytes>>,
    /// Per shard, its group as sent with a message: built at the first message after the
    /// group changed (the list's address keys the members' shard's resolved sessions).
    fan: Vec<std::cell::OnceCell<Arc<[Bytes]>>>,
    /// Live-only deliveries this room may still make, in millionths, and when that was
    /// counted (router µs): see [`Room::take_live`].
    live: std::cell::Cell<(u64, u64)>,
    /// The members sorted, as RoomInfo lists them: made at the first RoomInfo after the
    /// members changed (sorting 10 000 names of 64 bytes took ~3 ms of the shard per
    /// answer: 32 sessions asking in a loop took a core and held other users' messages
    /// 23 ms). A name each, shared with `members` (32 B a member).
    sorted: std::cell::OnceCell<Arc<[Bytes]>>,
}

impl Room {
    fn new(mut rec: RoomRecord, shards: usize) -> Box<Room> {
        let mut room = Room {
            members: NameSet::default(),
            groups: (0..shards).map(|_| Vec::new()).collect(),
            fan: (0..shards).map(|_| std::cell::OnceCell::new()).collect(),
            rec: RoomRecord::default(),
            live: std::cell::Cell::new((u64::MAX, 0)),
            sorted: std::cell::OnceCell::new(),
        };
        for m in std::mem::take(&mut rec.members) {
            room.add(m.as_bytes());
        }
        room.rec = rec;
        Box::new(room)
    }

    /// Takes a live-only frame's deliveries (`cost`, its member count) from the room's
    /// budget of `rate` a second, of which a second's worth can be saved up (a frame
    /// costing more than that takes all of it); false, taking nothing, when too little is
    /// left. `rate` 0: no limit. A typing indicator or read receipt goes to every member:
    /// unpaced, one client's loop of them into a room of 500 took the shards' cores and
    /// held other users' messages 0.5–5.7 s.
    fn take_live(&self, cost: u64, rate: u64, now_us: u64) -> bool {
        if rate == 0 {
            return true;
        }
        const MICRO: u64 = 1_000_000;
        let full = rate.saturating_mul(MICRO);
        let (left, at) = self.live.get();
        let left = left
            .saturating_add(now_us.saturating_sub(at).saturating_mul(rate))
            .min(full);
        let cost = cost.min(rate).saturating_mul(MICRO);
        let ok = left >= cost;
        self.live
            .set((if ok { left - cost } else { left }, now_us.max(at)));
        ok
    }

    fn is_member(&self, user: &str) -> bool {
        self.members.contains(user.as_bytes())
    }

    /// `user` is a member now (its shard's group changes; the others keep their lists).
    fn add(&mut self, user: &[u8]) {
        let user = Bytes::copy_from_slice(user);
        if self.members.insert(user.clone()) {
            let shard = super::home_shard(&user, self.groups.len());
            self.groups[shard].push(user);
            self.fan[shard].take();
            self.sorted.take();
        }
    }

    /// `user` is no longer a member.
    fn remove(&mut self, user: &[u8]) {
        if self.members.remove(user) {
            let shard = super::home_shard(user, self.groups.len());
            let g = &mut self.groups[shard];
            if let Some(i) = g.iter().position(|m| &m[..] == user) {
                g.swap_remove(i);
            }
            self.fan[shard].take();
            self.sorted.take();
        }
    }

    /// The shards with members and each one's list.
    fn fan(&self) -> impl Iterator<Item = (usize, Arc<[Bytes]>)> + '_ {
        self.groups
            .iter()
            .zip(&self.fan)
            .enumerate()
            .filter(|(_, (g, _))| !g.is_empty())
            .map(|(i, (g, f))| (i, f.get_or_init(|| Arc::from(g.as_slice())).clone()))
    }

    /// How many shards have members.
    fn fan_len(&self) -> usize {
        self.groups.iter().filter(|g| !g.is_empty()).count()
    }

    /// Member names, sorted (names are UTF-8: their bytes sort as their strings do).
    fn member_names(&self) -> Vec<String> {
        let sorted = self.sorted.get_or_init(|| {
            let mut v: Vec<Bytes> = self.members.iter().cloned().collect();
            v.sort_unstable();
            v.into()
        });
        sorted
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    }
}

/// What the store had for a name or join code.
enum Found {
    /// The room of that name.
    Record(RoomRecord),
    /// The join code of the room of this name (homed elsewhere, perhaps).
    Elsewhere(String),
}

#[derive(Debug)]
enum RoomState {
    Loading,
    Missing,
    Ready(Box<Room>),
}

/// A room (or a name being looked up) on its home shard.
#[derive(Debug)]
pub struct RoomSlot {
    state: RoomState,
    /// A request is waiting for the store: queue the rest.
    busy: bool,
    queue: VecDeque<RoomWork>,
    /// Work came since the ticker last trimmed the loaded rooms: dropped last.
    used: bool,
    /// The message first in its queue waits for room in the store's queue: the room is
    /// in `Shard::rooms_waiting`.
    waiting_store: bool,
}

impl RoomSlot {
    /// Members held in memory (0 while loading or for a missing room).
    pub(crate) fn members(&self) -> usize {
        match &self.state {
            RoomState::Ready(r) => r.members.len(),
            RoomState::Loading | RoomState::Missing => 0,
        }
    }

    /// A loaded room that `user` is not a member of: a message of theirs is refused
    /// FORBIDDEN without a store request, so it need not wait for room in the store's
    /// queue (a Join of theirs still queued is ahead of it there, and that queue waits).
    pub(crate) fn refuses(&self, user: &[u8]) -> bool {
        matches!(&self.state, RoomState::Ready(r) if !r.members.contains(user))
    }

    /// A loaded room with `members` (for the shard's tests).
    #[cfg(test)]
    pub(crate) fn ready_with(members: &[&str], shards: usize) -> RoomSlot {
        let rec = RoomRecord {
            name: "r".into(),
            owner: members.first().map_or("o", |m| m).into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            ..RoomRecord::default()
        };
        RoomSlot {
            state: RoomState::Ready(Room::new(rec, shards)),
            busy: false,
            queue: VecDeque::new(),
            used: false,
            waiting_store: false,
        }
    }

    /// Nothing queued and no store request in flight: it may be dropped from memory.
    fn idle(&self) -> bool {
        !self.busy && self.queue.is_empty()
    }
}

/// What a finished room operation leaves behind.
enum After {
    /// The room is unchanged.
    Same,
    /// The room now has this record.
    Record(RoomRecord),
    /// The room is gone.
    Gone,
}

/// Checks a join code (`JoinRoom.room` starting with [`CODE_MARK`]): the mark and 1 to
/// 32 ASCII letters or digits. (Room and user names follow the name rule, checked where
/// frames are decoded: [`ringrouter_proto::names`].)
pub fn check_join_code(code: &str) -> Result<(), String> {
    let body = code.strip_prefix(CODE_MARK).unwrap_or("");
    if body.is_empty() || body.len() > 32 || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "room: {code:?} is not a join code ({CODE_MARK} and up to 32 letters or digits)"
        ));
    }
    Ok(())
}

/// A fresh join code: [`CODE_MARK`] and 8 characters (40 bits) from the OS CSPRNG
/// (`getrandom`). Fails rather than make a guessable code.
pub fn new_join_code() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 32] = b"23456789abcdefghjkmnpqrstuvwxyzA";
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw)?;
    let mut code = String::with_capacity(9);
    code.push(CODE_MARK);
    for b in raw {
        code.push(ALPHABET[(b & 31) as usize] as char);
    }
    Ok(code)
}

/// What a request to a loaded room needs.
enum Plan {
    /// Nothing more.
    Done,
    /// An answer right away: (request, status, reason, join code).
    Answer(Box<RoomReq>, Status, String, String),
    /// Check the password and the joiner's room count, then write.
    Join(Box<RoomReq>, Option<String>, String),
    /// Check that the user exists and its room count, then write.
    Add(Box<RoomReq>, String),
    /// Take this member out and send the event.
    Remove(Box<RoomReq>, String, RoomEventKind),
    /// Delete the room.
    Delete(Box<RoomReq>),
    /// Send this answer (RoomInfo).
    Reply(Box<RoomReq>, ServerFrame),
}

/// Decides a request against a loaded room (no side effects).
fn plan_for(room: &Room, req: Box<RoomReq>, cfg: &crate::config::Config) -> Plan {
    let owner = room.rec.owner == req.user;
    let code = room.rec.join_code.clone();
    let answer = |req, status, reason: &str, code: &str| {
        Plan::Answer(req, status, reason.to_owned(), code.to_owned())
    };
    match &req.op {
        RoomOp::Create { .. } => answer(req, Status::Conflict, "room already exists", ""),
        RoomOp::Join { password, .. } => {
            if room.is_member(&req.user) {
                answer(req, Status::Ok, "", &code)
            } else if room.members.len() >= cfg.max_members_per_room {
                answer(req, Status::RateLimited, "the room is full", "")
            } else {
                let (phc, password) = (room.rec.password_hash.clone(), password.clone());
                Plan::Join(req, phc, password)
            }
        }
        RoomOp::Leave { .. } => {
            if !room.is_member(&req.user) {
                answer(req, Status::NotFound, "not a member of the room", "")
            } else if owner {
                answer(
                    req,
                    Status::BadRequest,
                    "the owner cannot leave the room; delete it instead",
                    "",
                )
            } else {
                let user = req.user.clone();
                Plan::Remove(req, user, RoomEventKind::RoomEventLeft)
            }
        }
        RoomOp::Info { .. } => {
            if !room.is_member(&req.user) {
                answer(req, Status::Forbidden, "not a member of the room", "")
            } else {
                let members = room.member_names();
                // The join code lets anyone in: the owner's to hand out.
                let code = if owner {
                    room.rec.join_code.as_str()
                } else {
                    ""
                };
                let r = &room.rec;
                let frame = reply::room_info(
                    req.request_id,
                    &r.name,
                    &r.owner,
                    members,
                    r.created_us,
                    code,
                );
                Plan::Reply(req, frame)
            }
        }
        RoomOp::Add { user, .. } => {
            let may_add = owner
                || (cfg.room_add_policy == RoomAddPolicy::Members && room.is_member(&req.user));
            if !may_add {
                let reason = match cfg.room_add_policy {
                    RoomAddPolicy::Owner => "only the owner may add members",
                    RoomAddPolicy::Members => "only members may add members",
                };
                answer(req, Status::Forbidden, reason, "")
            } else if room.is_member(user) {
                answer(req, Status::Ok, "", &code)
            } else if room.members.len() >= cfg.max_members_per_room {
                answer(req, Status::RateLimited, "the room is full", "")
            } else {
                let target = user.clone();
                Plan::Add(req, target)
            }
        }
        RoomOp::Remove { user, .. } => {
            if !owner {
                answer(
                    req,
                    Status::Forbidden,
                    "only the owner may remove members",
                    "",
                )
            } else if *user == req.user {
                answer(
                    req,
                    Status::BadRequest,
                    "the owner cannot be removed; delete the room instead",
                    "",
                )
            } else if !room.is_member(user) {
                answer(req, Status::NotFound, "not a member of the room", "")
            } else {
                let user = user.clone();
                Plan::Remove(req, user, RoomEventKind::RoomEventRemoved)
            }
        }
        RoomOp::Delete { .. } => {
            if owner {
                Plan::Delete(req)
            } else {
                answer(
                    req,
                    Status::Forbidden,
                    "only the owner may delete the room",
                    "",
                )
            }
        }
        RoomOp::Purge { .. } => {
            if owner {
                Plan::Delete(req)
            } else if room.is_member(&req.user) {
                let user = req.user.clone();
                Plan::Remove(req, user, RoomEventKind::RoomEventRemoved)
            } else {
                Plan::Done
            }
        }
    }
}

const BUSY_HASHING: &str = "too many password operations in progress";

/// Who hears that `subject` joined, left or was removed from a room of `members` (as it
/// is after the change) owned by `owner`: every member and the subject, or, in a room of
/// more than `max` members with the subject counted in, the subject and the owner only
/// (each join telling everyone would cost n²/2 events to fill a room of n).
fn told_of_member_change(
    members: &NameSet<Bytes>,
    owner: &str,
    subject: &str,
    max: usize,
) -> Vec<Bytes> {
    let name = |m: &str| Bytes::copy_from_slice(m.as_bytes());
    let is_member = members.contains(subject.as_bytes());
    // A leave or removal is judged at the room's size before it, a join after it.
    if members.len() + usize::from(!is_member) > max {
        let mut told = vec![name(subject)];
        if owner != subject && members.contains(owner.as_bytes()) {
            told.push(name(owner));
        }
        return told;
    }
    let mut told: Vec<Bytes> = members.iter().cloned().collect();
    if !is_member {
        told.push(name(subject));
    }
    told
}

impl Shard {
    /// A Create or Join of a user whose DeleteAccount is under way, queued (behind the
    /// user's earlier room requests) or admitted before it began: refused CONFLICT (the
    /// caller goes on with the user's next queued request). The deletion read the user's
    /// rooms when it began; a membership made after that outlived the account, and the
    /// next owner of the name was in the room (its messages and history).
    fn room_refused_while_deleting(&mut self, req: &mut RoomReq) -> bool {
        if self.deleting.is_empty() || !self.deleting.contains(req.user.as_str()) {
            return false;
        }
        let frame = reply::room_result(
            req.request_id,
            Status::Conflict,
            "a deletion of this account is under way",
            req.op.key(),
            "",
        );
        self.send_answer(req.from, frame, req.inflight.take());
        true
    }

    /// True when the password hashing pool has as much queued as it should take
    /// (Argon2id is slow on purpose: a flood of guesses must not queue without bound).
    fn hashing_busy(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|l| l.handle.stats().hash_jobs >= self.cfg.max_password_jobs)
    }

    /// Admits the user's own Create or Join against `max_rooms_per_user` (the rooms it
    /// created or joined; those others added it to count apart, at AddMember), then mails
    /// it to the room's home shard.
    pub(crate) fn admit_own(&mut self, mut req: RoomReq) {
        let max = self.cfg.max_rooms_per_user;
        let (user, room) = (req.user.clone(), req.op.key().to_owned());
        // The count scans every membership of the user (up to 2 000 keys): at the
        // page-read gate, in a turn of the user's own for it (its room messages queued
        // behind the op do not wait for its page reads). As plain store requests, 128
        // users in 1 000 rooms each looping JoinRooms held others' ListRooms 17-19 ms.
        let turn = super::store_link::side_turn(b"\0q", &user);
        self.read_in_turn(
            turn,
            move |st, cb| st.own_rooms(&user, &room, cb),
            move |sh, r| match r {
                // Joining a room one is in already is answered by the room (OK): `None`.
                Ok(Some(own)) if own >= max => {
                    let reason = format!("{} is in {own} rooms, the limit is {max}", req.user);
                    let frame = reply::room_result(
                        req.request_id,
                        Status::RateLimited,
                        &reason,
                        req.op.key(),
                        "",
                    );
                    sh.send_answer(req.from, frame, req.inflight.take());
                    sh.next_own(req.user.as_bytes());
                }
                Ok(_) if sh.room_refused_while_deleting(&mut req) => {
                    sh.next_own(req.user.as_bytes());
                }
                Ok(_) => {
                    req.quota = true;
                    // Ended while it waited behind the user's earlier ones: its room
                    // password, if any, is not checked (a client that reconnects and
                    // leaves 16 joins each time kept the hashing pool busy 25-30 s
                    // after it stopped).
                    req.session_gone = sh.session_ended(req.from);
                    let home = sh.home(req.op.key().as_bytes());
                    sh.post(home, Mail::Room(Box::new(req)));
                }
                Err(e) => {
                    let frame = reply::room_result(
                        req.request_id,
                        store_status(&e),
                        &e.to_string(),
                        req.op.key(),
                        "",
                    );
                    sh.send_answer(req.from, frame, req.inflight.take());
                    sh.next_own(req.user.as_bytes());
                }
            },
        );
    }

    /// The user's Create or Join was answered: what the user sent after it goes on, in
    /// order, up to the next Create or Join (admitted in turn).
    pub fn next_own(&mut self, user: &[u8]) {
        loop {
            let next = match self.room_quota.get_mut(user) {
                Some(waiting) => waiting.pop_front(),
                None => return,
            };
            if let Some(item) = &next {
                self.parked_bytes -= item.weight();
            }
            match next {
                Some(OwnItem::Req(mut req))
                    if matches!(req.op, RoomOp::Create { .. } | RoomOp::Join { .. }) =>
                {
                    if self.room_refused_while_deleting(&mut req) {
                        continue;
                    }
                    self.admit_own(req);
                    return;
                }
                Some(OwnItem::Req(req)) => {
                    let home = self.home(req.op.key().as_bytes());
                    self.post(home, Mail::Room(Box::new(req)));
                }
                Some(OwnItem::Send(work)) => {
                    let home = self.home(&work.room);
                    if home == self.id {
                        self.on_room_work(RoomWork::Send(work));
                    } else {
                        self.post(home, Mail::RoomSend(work));
                    }
                }
                Some(OwnItem::Delete {
                    from,
                    request_id,
                    inflight,
                }) => {
                    // Counted from here as if asked now (`store_req`).
                    drop(inflight);
                    let outer = self.requester.replace(from);
                    let user = String::from_utf8_lossy(user).into_owned();
                    self.begin_delete_account(from, request_id, user);
                    self.requester = outer;
                }
                None => {
                    self.room_quota.remove(user);
                    return;
                }
            }
        }
    }

    /// A message to a room from session `key` (already validated by `on_send`).
    pub fn send_to_room(
        &mut self,
        key: SessionKey,
        v: SendView,
        msg_id: u64,
        ts_us: u64,
        live: Live,
    ) {
        let Some(sender) = self.session_id(key) else {
            return;
        };
        let want = v.want_result.then_some(v.request_id);
        let (room, payload) = (v.to_room, v.payload);
        let home = self.home(&room);
        let work = RoomSend {
            room,
            from_user: self.sessions[key].user.clone(),
            payload,
            msg_id,
            ts_us,
            reply: want.map(|rid| (sender, rid)),
            sender,
            live,
        };
        if !self.room_quota.is_empty() {
            if let Some(waiting) = self.room_quota.get_mut(&work.from_user[..]) {
                // Sent after a Create or Join still in flight: checked after it.
                let item = OwnItem::Send(work);
                self.parked_bytes += item.weight();
                waiting.push_back(item);
                return;
            }
        }
        if home == self.id {
            self.on_room_work(RoomWork::Send(work));
        } else {
            self.post(home, Mail::RoomSend(work));
        }
    }

    /// A request about a room homed here ([`Mail::Room`]).
    pub fn on_room_req(&mut self, req: Box<RoomReq>) {
        self.on_room_work(RoomWork::Req(req));
    }

    /// A message to a room homed here ([`Mail::RoomSend`]).
    pub fn on_room_send(&mut self, s: RoomSend) {
        self.on_room_work(RoomWork::Send(s));
    }

    /// Work for a room homed here.
    pub fn on_room_work(&mut self, work: RoomWork) {
        let key = work.key();
        // The map's own copy of the name: one pointer for every message of the room
        // (members' shards recognise it without comparing bytes).
        let key = match self.rooms.get_key_value(&key[..]) {
            Some((k, _)) => k.clone(),
            None => key,
        };
        // A message that finds the room free waits, first in its queue, while its store
        // requests do not fit (see `Shard::rooms_waiting`). (Nothing is looked up while
        // the store's queue is under a quarter of its bound.)
        let waits = self.room_work_waits(&key, &work);
        match self.rooms.get_mut(&key[..]) {
            Some(slot) => {
                slot.used = true;
                let free = !slot.busy && slot.queue.is_empty();
                if free && !waits {
                    self.process_room_work(&key, work);
                    self.pump_room(&key);
                } else {
                    self.parked_bytes += work.weight();
                    let sender = match &work {
                        RoomWork::Send(s) => Some(s.sender),
                        RoomWork::Req(_) => None,
                    };
                    slot.queue.push_back(work);
                    if free {
                        self.wait_for_store_room(&key);
                    }
                    if let Some(sender) = sender {
                        self.throttle_parked(sender);
                    }
                }
            }
            None => {
                let mut queue = VecDeque::new();
                self.parked_bytes += work.weight();
                queue.push_back(work);
                self.rooms.insert(
                    key.clone(),
                    RoomSlot {
                        state: RoomState::Loading,
                        busy: true,
                        queue,
                        used: true,
                        waiting_store: false,
                    },
                );
                let k = String::from_utf8_lossy(&key).into_owned();
                if k.starts_with(CODE_MARK) {
                    // A join code: only the name is needed here (the room's home loads it).
                    self.store_req(
                        |st, cb| st.room_by_code(&k, cb),
                        move |sh, r| sh.on_room_loaded(key, r.map(|n| n.map(Found::Elsewhere))),
                    );
                } else {
                    self.store_req(
                        |st, cb| st.get_room(&k, cb),
                        move |sh, r| sh.on_room_loaded(key, r.map(|r| r.map(Found::Record))),
                    );
                }
            }
        }
    }

    fn on_room_loaded(&mut self, key: Bytes, r: StoreResult<Option<Found>>) {
        let r = r.map(|found| match found {
            Some(Found::Record(rec)) if rec.name.as_bytes() != &key[..] => {
                Some(Found::Elsewhere(rec.name))
            }
            other => other,
        });
        match r {
            Ok(Some(Found::Elsewhere(room))) => {
                // Found by join code: the work goes to the room's own home, by name.
                let Some(slot) = self.rooms.remove(&key[..]) else {
                    return;
                };
                let home = self.home(room.as_bytes());
                let name = Bytes::copy_from_slice(room.as_bytes());
                for w in slot.queue {
                    self.parked_bytes -= w.weight();
                    match w {
                        RoomWork::Req(mut req) => {
                            req.op.rename(&room);
                            self.post(home, Mail::Room(req));
                        }
                        RoomWork::Send(mut s) => {
                            s.room = name.clone();
                            self.post(home, Mail::RoomSend(s));
                        }
                    }
                }
            }
            Ok(found) => {
                let n = self.n;
                if let Some(slot) = self.rooms.get_mut(&key[..]) {
                    slot.state = match found {
                        Some(Found::Record(rec)) => RoomState::Ready(Room::new(rec, n)),
                        // (Records of another name were turned into `Elsewhere` above.)
                        Some(Found::Elsewhere(_)) | None => RoomState::Missing,
                    };
                    slot.busy = false;
                }
                self.pump_room(&key);
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading a room failed");
                let Some(slot) = self.rooms.remove(&key[..]) else {
                    return;
                };
                let status = store_status(&e);
                for w in slot.queue {
                    self.parked_bytes -= w.weight();
                    self.fail_room_work(w, status, "cannot load the room now");
                }
            }
        }
    }

    fn fail_room_work(&mut self, w: RoomWork, status: Status, reason: &'static str) {
        match w {
            RoomWork::Req(req) => self.answer(&req, status, reason, ""),
            RoomWork::Send(s) => self.reply_send_why(s.reply, s.msg_id, status, reason),
        }
    }

    /// Keeps the rooms loaded on this shard at most [`ROOM_CACHE_MAX`] and their members
    /// at most `max_loaded_room_members`: past either, idle rooms (nothing queued, no
    /// store request in flight) are dropped from memory, first those no work came to
    /// since the last trim, then any, until both hold again. A dropped room's record is
    /// in the store and is loaded again by the next request. Called by the ticker.
    pub(crate) fn trim_room_cache(&mut self) {
        let max_members = self.cfg.max_loaded_room_members;
        let mut members = 0;
        let mut over = self.rooms.len() > ROOM_CACHE_MAX;
        for slot in self.rooms.values() {
            members += slot.members();
        }
        over |= members > max_members;
        let mut rooms = self.rooms.len();
        // First pass: rooms unused since the last trim; second: any idle room.
        for pass in 0..2 {
            if !over {
                break;
            }
            self.rooms.retain(|_, slot| {
                if !over || !slot.idle() || (pass == 0 && slot.used) {
                    return true;
                }
                rooms -= 1;
                members -= slot.members();
                over = rooms > ROOM_CACHE_MAX || members > max_members;
                false
            });
        }
        for slot in self.rooms.values_mut() {
            slot.used = false;
        }
        self.room_members_loaded = members;
    }

    /// What every parked room work item weighs, summed (must equal `parked_bytes`;
    /// checked by the ticker in debug builds).
    pub(crate) fn parked_total(&self) -> usize {
        let rooms: usize = self
            .rooms
            .values()
            .flat_map(|slot| slot.queue.iter())
            .map(RoomWork::weight)
            .sum();
        let own: usize = self
            .room_quota
            .values()
            .flat_map(|q| q.iter())
            .map(OwnItem::weight)
            .sum();
        rooms + own
    }

    /// Runs queued work until the room is busy again or its queue is empty. Others'
    /// work: whatever it asks of the store does not count against the
    /// `max_requests_in_flight` of a session whose request happens to run this.
    fn pump_room(&mut self, key: &Bytes) {
        let (outer, sender) = (self.requester.take(), self.sender.take());
        self.pump_room_queue(key);
        (self.requester, self.sender) = (outer, sender);
    }

    fn pump_room_queue(&mut self, key: &Bytes) {
        loop {
            let Some(slot) = self.rooms.get_mut(&key[..]) else {
                return;
            };
            if slot.busy || slot.waiting_store {
                return;
            }
            let Some(w) = slot.queue.pop_front() else {
                // Unknown names are not cached: probing names costs no memory.
                if matches!(slot.state, RoomState::Missing) {
                    self.rooms.remove(&key[..]);
                } else if slot.queue.capacity() > 0 {
                    // A loaded room keeps no queue it is not using (its first request
                    // left one of four entries: a third of an idle room's memory).
                    slot.queue = VecDeque::new();
                }
                return;
            };
            if self.room_work_waits(key, &w) {
                // First in its queue again, until its requests fit.
                if let Some(slot) = self.rooms.get_mut(&key[..]) {
                    slot.queue.push_front(w);
                }
                self.wait_for_store_room(key);
                return;
            }
            self.parked_bytes -= w.weight();
            self.process_room_work(key, w);
        }
    }

    /// Whether `work` for room `key`, free, waits for room in the store's queue: a stored
    /// message whose requests do not fit ([`Shard::room_send_fits`]), but a non-member's
    /// (refused FORBIDDEN with no store request: waiting, it held the room's queue and
    /// started the readers' yield).
    fn room_work_waits(&mut self, key: &Bytes, work: &RoomWork) -> bool {
        let RoomWork::Send(s) = work else {
            return false;
        };
        s.live == Live::No
            && !self.room_send_fits(key)
            && (is_api(s.sender)
                || !self
                    .rooms
                    .get(&key[..])
                    .is_some_and(|r| r.refuses(&s.from_user)))
    }

    /// The message first in room `key`'s queue waits for room in the store's queue: the
    /// room is pumped again as store answers come in ([`Shard::rooms_answered`]).
    fn wait_for_store_room(&mut self, key: &Bytes) {
        let Some(slot) = self.rooms.get_mut(&key[..]) else {
            return;
        };
        if !std::mem::replace(&mut slot.waiting_store, true) {
            self.rooms_waiting.push(key.clone());
            self.rooms_waiting_since
                .get_or_insert_with(std::time::Instant::now);
        }
    }

    /// Store answers came in: the rooms whose first message waited for room in the store's
    /// queue are pumped again. While none of them makes progress, the readers yield to
    /// them past `LOCAL_WAIT_MAX` (`Shard::local_yield`).
    pub(crate) fn rooms_answered(&mut self) {
        let made = self.store_made;
        for key in std::mem::take(&mut self.rooms_waiting) {
            if let Some(slot) = self.rooms.get_mut(&key[..]) {
                slot.waiting_store = false;
                self.pump_room(&key);
            }
        }
        if self.rooms_waiting.is_empty() {
            self.rooms_waiting_since = None;
        } else if self.store_made != made {
            self.rooms_waiting_since = Some(std::time::Instant::now());
        }
        self.local_waits_changed();
    }

    /// Answers a room request (nobody to answer for a purge).
    fn answer(&mut self, req: &RoomReq, status: Status, reason: &str, code: &str) {
        if req.request_id == 0 && matches!(req.op, RoomOp::Purge { .. }) {
            return;
        }
        let frame = reply::room_result(req.request_id, status, reason, req.op.key(), code);
        self.send_answer(req.from, frame, req.inflight.take());
        if req.quota {
            let user = Bytes::copy_from_slice(req.user.as_bytes());
            if req.from.shard as usize == self.id {
                self.next_own(&user);
            } else {
                self.post(req.from.shard as usize, Mail::RoomQuota { user });
            }
        }
    }

    fn process_room_work(&mut self, key: &Bytes, w: RoomWork) {
        let Some(slot) = self.rooms.get_mut(&key[..]) else {
            return;
        };
        let room = match std::mem::replace(&mut slot.state, RoomState::Loading) {
            RoomState::Ready(room) => room,
            RoomState::Missing => {
                slot.state = RoomState::Missing;
                match w {
                    RoomWork::Req(req) if matches!(req.op, RoomOp::Create { .. }) => {
                        slot.busy = true;
                        self.create_room(key.clone(), req);
                    }
                    RoomWork::Req(req) if matches!(req.op, RoomOp::Purge { .. }) => {}
                    other => self.fail_room_work(other, Status::NotFound, "no such room"),
                }
                return;
            }
            RoomState::Loading => {
                self.parked_bytes += w.weight();
                slot.queue.push_front(w);
                return;
            }
        };
        // The room is out of its slot (owned here) while this work is decided.
        let plan = match w {
            RoomWork::Send(s) => {
                self.room_message(key, &room, s);
                Plan::Done
            }
            RoomWork::Req(req) => plan_for(&room, req, &self.cfg),
        };
        let Some(slot) = self.rooms.get_mut(&key[..]) else {
            return;
        };
        let members: Vec<Bytes> = match &plan {
            Plan::Delete(_) => room.members.iter().cloned().collect(),
            _ => Vec::new(),
        };
        slot.state = RoomState::Ready(room);
        let key = key.clone();
        match plan {
            Plan::Done => {}
            Plan::Answer(req, status, reason, code) => self.answer(&req, status, &reason, &code),
            Plan::Join(req, phc, password) => {
                slot.busy = true;
                self.check_room_password(password, phc, req, move |sh, req| {
                    let user = req.user.clone();
                    if req.quota {
                        // The joiner's room count was checked on its home shard.
                        sh.write_member(key, req, user, RoomEventKind::RoomEventJoined);
                    } else {
                        sh.check_room_limit(user.clone(), req, move |sh, req| {
                            sh.write_member(key, req, user, RoomEventKind::RoomEventJoined);
                        });
                    }
                });
            }
            Plan::Add(req, target) => {
                slot.busy = true;
                // One store request checks the account and its room count.
                let checked = VecDeque::from([target.clone()]);
                self.check_members(checked, req, move |sh, req| {
                    sh.write_member(key, req, target, RoomEventKind::RoomEventJoined);
                });
            }
            Plan::Remove(req, user, kind) => {
                slot.busy = true;
                self.write_member(key, req, user, kind);
            }
            Plan::Delete(req) => {
                slot.busy = true;
                self.delete_room(key, req, members);
            }
            Plan::Reply(req, frame) => self.send_answer(req.from, frame, req.inflight.take()),
        }
    }

    /// A message to a loaded room: members only; one fan-out per shard with members.
    fn room_message(&mut self, key: &Bytes, room: &Room, s: RoomSend) {
        // The HTTP API (a backend with the key) may publish to any room; its members
        // get the message as from any member.
        if !is_api(s.sender) && !room.members.contains(&s.from_user[..]) {
            self.reply_send(s.reply, s.msg_id, Status::Forbidden);
            return;
        }
        let live = s.live != Live::No;
        if live && !self.take_live(room, &s) {
            self.counters.reject(Status::RateLimited);
            let why = "live-only frames (typing, receipts) over the room's or the sender's budget";
            self.reply_send_why(s.reply, s.msg_id, Status::RateLimited, why);
            return;
        }
        self.counters.room_msgs += 1;
        if !live {
            // Kept in the room's history (never an ephemeral message or a receipt).
            self.history_room(key, &s.from_user, &s.payload, s.msg_id, s.ts_us);
        }
        let shards = room.fan_len();
        if shards == 0 || live {
            // Ephemeral: live sessions only, nothing to wait for.
            self.reply_send(s.reply, s.msg_id, Status::Ok);
        }
        if shards == 0 {
            return;
        }
        let ack = s
            .reply
            .filter(|_| !live)
            .map(|reply| RoomAck::new(shards, reply, s.msg_id));
        for (shard, users) in room.fan() {
            let f = RoomFan {
                room: key.clone(),
                from_user: s.from_user.clone(),
                payload: s.payload.clone(),
                msg_id: s.msg_id,
                ts_us: s.ts_us,
                users,
                sender: s.sender,
                ack: ack.clone(),
                live: s.live,
            };
            if shard == self.id {
                self.on_room_fan(f);
            } else {
                self.post(shard, Mail::RoomDeliver(f));
            }
        }
    }

    /// Takes a live-only frame's deliveries (one per member) from the room's budget and
    /// its sender's (the HTTP API publishes no live-only frames); false, taking
    /// nothing, when either holds too little.
    fn take_live(&mut self, room: &Room, s: &RoomSend) -> bool {
        let units = super::social::live_units(s.payload.len());
        let cost = (room.members.len() * units) as u64;
        let now = Instant::now();
        if let Some(rate) = &self.live_rate {
            if !rate.holds(&s.from_user, cost as f64, now) {
                return false;
            }
        }
        if !room.take_live(cost, self.cfg.room_live_per_second, s.ts_us) {
            return false;
        }
        if let Some(rate) = &mut self.live_rate {
            rate.take(s.from_user.clone(), cost as f64, now);
        }
        true
    }

    /// Ends a busy room operation: applies its outcome and runs the queued work.
    fn room_done(&mut self, key: &Bytes, after: After) {
        let n = self.n;
        if let Some(slot) = self.rooms.get_mut(&key[..]) {
            match after {
                After::Same => {}
                After::Record(rec) => slot.state = RoomState::Ready(Room::new(rec, n)),
                After::Gone => slot.state = RoomState::Missing,
            }
            slot.busy = false;
        }
        self.pump_room(key);
    }

    /// A failed step: answers the request and frees the room.
    fn room_failed(&mut self, key: &Bytes, req: &RoomReq, e: &StoreError) {
        let (status, reason) = match e {
            StoreError::Conflict => (Status::Conflict, "room already exists".to_owned()),
            StoreError::NotFound => (Status::NotFound, "no such room".to_owned()),
            StoreError::DiskFull => (Status::Unavailable, e.to_string()),
            other => {
                tracing::warn!(error = %other, "room operation failed");
                (store_status(other), other.to_string())
            }
        };
        self.answer(req, status, &reason, "");
        self.room_done(key, After::Same);
    }

    /// Whether session `id`, homed here, has ended (or is closing). An API request's
    /// pseudo sender and a session of another shard are never taken for ended.
    fn session_ended(&self, id: SessionId) -> bool {
        id.shard as usize == self.id && !is_api(id) && self.resolve(id).is_none()
    }

    /// Checks a JoinRoom's password against the room's hash (none: `then` at once). Not
    /// for a session that has ended (answered UNAVAILABLE, to nobody), and refused
    /// RATE_LIMITED without a hash past the joiner's or the room's wrong passwords a
    /// minute, or while room passwords hold their quarter of the hashing pool
    /// ([`RoomPasswords`](crate::net::signup::RoomPasswords)); a wrong one takes a token
    /// of both buckets.
    fn check_room_password(
        &mut self,
        password: String,
        phc: Option<String>,
        req: Box<RoomReq>,
        then: impl FnOnce(&mut Shard, Box<RoomReq>) + Send + 'static,
    ) {
        let Some(phc) = phc else {
            then(self, req);
            return;
        };
        let key = Bytes::copy_from_slice(req.op.key().as_bytes());
        if req.session_gone || self.session_ended(req.from) {
            self.counters.room_password_checks_dropped += 1;
            self.answer(&req, Status::Unavailable, "the session has ended", "");
            self.room_done(&key, After::Same);
            return;
        }
        if self.hashing_busy() {
            self.answer(&req, Status::RateLimited, BUSY_HASHING, "");
            self.room_done(&key, After::Same);
            return;
        }
        let admitted = match self
            .room_passwords
            .check(&req.user, req.op.key(), Instant::now())
        {
            Ok(a) => a,
            Err(why) => {
                self.answer(&req, Status::RateLimited, why.reason(), "");
                self.room_done(&key, After::Same);
                return;
            }
        };
        self.store_req(
            |st, cb| st.check_password(&password, &phc, cb),
            move |sh, r| {
                drop(admitted);
                match r {
                    Ok(true) => then(sh, req),
                    Ok(false) => {
                        sh.room_passwords
                            .failed(&req.user, req.op.key(), Instant::now());
                        sh.answer(&req, Status::Forbidden, "wrong room password", "");
                        sh.room_done(&key, After::Same);
                    }
                    Err(e) => sh.room_failed(&key, &req, &e),
                }
            },
        );
    }

    /// Refuses (RATE_LIMITED) when `user` created or joined `max_rooms_per_user` rooms
    /// already.
    fn check_room_limit(
        &mut self,
        user: String,
        req: Box<RoomReq>,
        then: impl FnOnce(&mut Shard, Box<RoomReq>) + Send + 'static,
    ) {
        let key = Bytes::copy_from_slice(req.op.key().as_bytes());
        let max = self.cfg.max_rooms_per_user;
        let (u, room) = (user.clone(), req.op.key().to_owned());
        self.store_req(
            |st, cb| st.own_rooms(&u, &room, cb),
            move |sh, r| match r {
                Ok(Some(own)) if own >= max => {
                    let reason = format!("{user} is in {own} rooms, the limit is {max}");
                    sh.answer(&req, Status::RateLimited, &reason, "");
                    sh.room_done(&key, After::Same);
                }
                Ok(_) => then(sh, req),
                Err(e) => sh.room_failed(&key, &req, &e),
            },
        );
    }

    fn create_room(&mut self, key: Bytes, req: Box<RoomReq>) {
        let RoomOp::Create {
            name,
            password,
            members,
        } = &req.op
        else {
            return;
        };
        let (name, password) = (name.clone(), password.clone());
        let owner = req.user.clone();
        let owner_for_check = owner.clone();
        // Without the owner, each once (`frames::rooms`).
        let initial = members.clone();
        let checked: VecDeque<String> = initial.iter().cloned().collect();
        // Admitted on the owner's home shard (quota), or checked here; then every
        // initial member is checked as AddMember checks its one.
        let admitted = move |sh: &mut Shard, req: Box<RoomReq>| {
            sh.check_members(checked, req, move |sh, req| {
                sh.create_checked(key, req, name, password, owner, initial)
            })
        };
        if req.quota {
            admitted(self, req);
        } else {
            self.check_room_limit(owner_for_check, req, admitted);
        }
    }

    /// Each of `members` exists and is under its room limit (AddMember: one member),
    /// [`MEMBER_CHECK_BATCH`] of them a store request; then `then`.
    fn check_members(
        &mut self,
        mut members: VecDeque<String>,
        req: Box<RoomReq>,
        then: impl FnOnce(&mut Shard, Box<RoomReq>) + Send + 'static,
    ) {
        if members.is_empty() {
            return then(self, req);
        }
        let batch: Vec<String> = members
            .drain(..members.len().min(MEMBER_CHECK_BATCH))
            .collect();
        let key = Bytes::copy_from_slice(req.op.key().as_bytes());
        let max = self.cfg.max_rooms_per_user;
        let one = batch.len() == 1 && members.is_empty();
        // Each member's room index is read: batches take turns with users' page reads,
        // as their adder's member checks (a turn of their own: not behind the adder's
        // page reads, while the room waits). One member (an AddMember) is one short
        // read: made at once.
        let turn = (!one).then(|| super::store_link::side_turn(b"\0m", &req.user));
        let submit = move |st: &crate::store::StoreHandle, cb| st.check_members(batch, max, cb);
        let done =
            move |sh: &mut Shard, r: crate::store::StoreResult<Option<MemberProblem>>| match r {
                Ok(None) => sh.check_members(members, req, then),
                Ok(Some(MemberProblem::NoAccount(user))) => {
                    sh.answer(&req, Status::NotFound, &format!("no such user: {user}"), "");
                    sh.room_done(&key, After::Same);
                }
                Ok(Some(MemberProblem::Full(user, rooms))) => {
                    let reason =
                        format!("{user} was added to {rooms} rooms by others, the limit is {max}");
                    sh.answer(&req, Status::RateLimited, &reason, "");
                    sh.room_done(&key, After::Same);
                }
                Err(e) => sh.room_failed(&key, &req, &e),
            };
        match turn {
            Some(turn) => self.read_in_turn(turn, submit, done),
            None => self.store_req(submit, done),
        }
    }

    /// A room checked for creation: draws its code, hashes its password, writes it.
    fn create_checked(
        &mut self,
        key: Bytes,
        req: Box<RoomReq>,
        name: String,
        password: String,
        owner: String,
        initial: Vec<String>,
    ) {
        let admitted = move |sh: &mut Shard, req: Box<RoomReq>| {
            let join_code = match new_join_code() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "no randomness for a join code");
                    sh.answer(&req, Status::Internal, "cannot draw a join code", "");
                    sh.room_done(&key, After::Same);
                    return;
                }
            };
            let rec = RoomRecord {
                name,
                owner: owner.clone(),
                password_hash: None,
                join_code,
                members: std::iter::once(owner).chain(initial).collect(),
                created_us: super::now_us(),
            };
            if password.is_empty() {
                sh.insert_room(key, req, rec, 3);
                return;
            }
            if sh.hashing_busy() {
                sh.answer(&req, Status::RateLimited, BUSY_HASHING, "");
                sh.room_done(&key, After::Same);
                return;
            }
            // Within room passwords' share of the pool, with the joins' checks.
            let admitted = match sh.room_passwords.hash() {
                Ok(a) => a,
                Err(why) => {
                    sh.answer(&req, Status::RateLimited, why.reason(), "");
                    sh.room_done(&key, After::Same);
                    return;
                }
            };
            sh.store_req(
                |st, cb| st.hash_password(&password, cb),
                move |sh, r| {
                    drop(admitted);
                    match r {
                        Ok(phc) => {
                            let rec = RoomRecord {
                                password_hash: Some(phc),
                                ..rec
                            };
                            sh.insert_room(key, req, rec, 3);
                        }
                        Err(e) => sh.room_failed(&key, &req, &e),
                    }
                },
            );
        };
        admitted(self, req);
    }

    /// Writes a new room; a join code already taken gets a fresh one (`tries` times).
    fn insert_room(&mut self, key: Bytes, req: Box<RoomReq>, rec: RoomRecord, tries: u32) {
        let record = rec.clone();
        self.store_req(
            |st, cb| st.create_room(record, cb),
            move |sh, r| match r {
                Ok(()) => {
                    sh.answer(&req, Status::Ok, "", &rec.join_code);
                    // Each initial member learns it is in (the owner from the answer):
                    // one notice per shard, each member the subject of its own event.
                    let members: Vec<Bytes> = rec
                        .members
                        .iter()
                        .skip(1)
                        .map(|m| Bytes::copy_from_slice(m.as_bytes()))
                        .collect();
                    sh.room_event_to(members, RoomEventKind::RoomEventJoined, &rec.name, None);
                    sh.room_done(&key, After::Record(rec));
                }
                // The name is known to be free here (the room was Missing): the code clashed.
                Err(StoreError::Conflict) if tries > 1 => match new_join_code() {
                    Ok(join_code) => {
                        let rec = RoomRecord { join_code, ..rec };
                        sh.insert_room(key, req, rec, tries - 1);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "no randomness for a join code");
                        sh.answer(&req, Status::Internal, "cannot draw a join code", "");
                        sh.room_done(&key, After::Same);
                    }
                },
                Err(e) => sh.room_failed(&key, &req, &e),
            },
        );
    }

    /// Writes one member in or out (one key, whatever the room's size), then tells the
    /// members (old and new) what happened.
    fn write_member(&mut self, key: Bytes, req: Box<RoomReq>, user: String, kind: RoomEventKind) {
        let joined = kind == RoomEventKind::RoomEventJoined;
        let room = String::from_utf8_lossy(&key).into_owned();
        let (u, by) = (user.clone(), req.user.clone());
        self.store_req(
            |st, cb| {
                if joined {
                    // A join (`by` is `user`) counts in the user's own quota, an add not.
                    st.add_member(&room, &u, &by, cb)
                } else {
                    st.remove_member(&room, &u, cb)
                }
            },
            move |sh, r| match r {
                Ok(()) => {
                    let max = sh.cfg.room_events_max_members;
                    // (A busy room stays loaded: `trim_room_cache`.)
                    let changed = match sh.rooms.get_mut(&key[..]).map(|slot| &mut slot.state) {
                        Some(RoomState::Ready(room)) => {
                            if joined {
                                room.add(user.as_bytes());
                            } else {
                                room.remove(user.as_bytes());
                            }
                            let r = &room.rec;
                            let told = told_of_member_change(&room.members, &r.owner, &user, max);
                            Some((told, r.name.clone(), r.join_code.clone()))
                        }
                        _ => None,
                    };
                    match changed {
                        Some((told, name, code)) => {
                            sh.answer(&req, Status::Ok, "", &code);
                            sh.room_event(told, kind, &name, &user);
                        }
                        None => sh.answer(&req, Status::Ok, "", ""),
                    }
                    sh.room_done(&key, After::Same);
                }
                Err(e) => sh.room_failed(&key, &req, &e),
            },
        );
    }

    fn delete_room(&mut self, key: Bytes, req: Box<RoomReq>, members: Vec<Bytes>) {
        // The room's messages accepted so far (this is its home shard: all of them are
        // here) go to the store before the deletion, which removes them with the rest of
        // its history: the store takes one shard's requests in order. Held back until
        // the flusher's turn, they would land after it and start the deleted room's
        // history again (readable by whoever made a room with its name). A message
        // accepted after this finds the room gone, or belongs to a room made later.
        self.flush_history();
        let name = String::from_utf8_lossy(&key).into_owned();
        let n = name.clone();
        self.deletion_req(
            key.clone(),
            move |st, cb| st.delete_room(&n, cb),
            move |sh, r| match r {
                Ok(()) => {
                    sh.answer(&req, Status::Ok, "", "");
                    sh.room_event(members, RoomEventKind::RoomEventDeleted, &name, &req.user);
                    sh.room_done(&key, After::Gone);
                }
                Err(e) => sh.room_failed(&key, &req, &e),
            },
        );
    }

    /// Sends a room event to the live sessions of `users`, wherever they are homed (and
    /// to the offline queues of those without one).
    fn room_event(&mut self, users: Vec<Bytes>, kind: RoomEventKind, room: &str, user: &str) {
        self.room_event_to(users, kind, room, Some(user));
    }

    /// [`Shard::room_event`] about `subject`, or (`None`) each user about themself.
    fn room_event_to(
        &mut self,
        users: Vec<Bytes>,
        kind: RoomEventKind,
        room: &str,
        subject: Option<&str>,
    ) {
        let event = RoomEvent {
            kind: kind as i32,
            room: room.to_owned(),
            user: subject.unwrap_or_default().to_owned(),
            seq: 0,
        };
        let mut groups: Vec<Vec<Bytes>> = (0..self.n).map(|_| Vec::new()).collect();
        for u in users {
            let h = self.home(&u);
            groups[h].push(u);
        }
        for (shard, users) in groups.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let notice = RoomNotice {
                users,
                event: event.clone(),
                each: subject.is_none(),
            };
            if shard == self.id {
                self.on_room_notice(&notice);
            } else {
                self.post(shard, Mail::RoomNotice(Box::new(notice)));
            }
        }
    }

    /// True when `user` has a live session here other than `except`.
    fn has_other_session(&self, user: &[u8], except: SessionId) -> bool {
        self.user_session_keys(user)
            .iter()
            .any(|&k| self.session_id(k) != Some(except))
    }

    /// A room event for users homed here: to their live sessions, or, when it concerns
    /// the user (it joined, left or was removed, or the room was deleted), to the offline
    /// queue of those without one (all of them in one store request). Another member's
    /// join, leave or removal reaches live sessions only: stored, every join and leave
    /// wrote a record for every offline member (a pair of accounts joining and leaving
    /// in a loop wrote 8.2 M records, 776 MiB, in 40 s into a room of 998 offline
    /// members); `RoomInfo` is the authority on who is in a room.
    pub fn on_room_notice(&mut self, n: &RoomNotice) {
        let deleted = n.event.kind == RoomEventKind::RoomEventDeleted as i32;
        let shared = (!n.each).then(|| reply::room_event(n.event.clone()));
        let mut offline = Vec::new();
        for u in &n.users {
            let own;
            let (frame, event) = match &shared {
                Some(f) => (f, &n.event),
                None => {
                    let ev = RoomEvent {
                        user: String::from_utf8_lossy(u).into_owned(),
                        ..n.event.clone()
                    };
                    own = (reply::room_event(ev.clone()), ev);
                    (&own.0, &own.1)
                }
            };
            let keys = self.live_sessions(u);
            if keys.is_empty() && (n.each || deleted || event.user.as_bytes() == &u[..]) {
                offline.push((u.clone(), event.clone()));
            }
            for k in keys {
                self.push_frame(k, frame);
            }
        }
        self.store_room_events(offline);
    }

    /// This shard's member list of `room` (homed here), if it is loaded and has members
    /// here.
    pub(crate) fn local_fan_of(&self, room: &[u8]) -> Option<Arc<[Bytes]>> {
        match &self.rooms.get(room)?.state {
            RoomState::Ready(r) => r.fan().find(|&(i, _)| i == self.id).map(|(_, l)| l),
            RoomState::Loading | RoomState::Missing => None,
        }
    }

    /// Whether the store requests a room message to `users` (one list of a room's `fan`)
    /// makes here pass `fits`: one per member with no session here, or one per member
    /// when journaled. Told from the fan cache's entry when its count, give or take the
    /// sessions that came and went here since, is enough (a held message is looked at
    /// every turn of the shard: a list of 5 000 was resolved again after every login);
    /// else resolved, and kept in the cache for the delivery.
    pub(crate) fn fan_store_fits(
        &mut self,
        users: &Arc<[Bytes]>,
        fits: impl Fn(usize) -> bool,
    ) -> bool {
        if self.journaled() {
            return fits(users.len());
        }
        if let Some((n, changes)) = self.fan_cache.absent(users, self.users_gen) {
            // Each change made at most one member more or one fewer with no session.
            if fits(n.saturating_add(changes)) {
                return true;
            }
            if !fits(n.saturating_sub(changes)) {
                return false;
            }
        }
        let fan = self.fan_resolved(users);
        let n = fan.empty.len();
        self.fan_cache.keep(fan);
        fits(n)
    }

    /// The sessions here of each member of `users` (one list of a room's `fan`), from
    /// the cache if no session registered or ended here since it was resolved.
    fn fan_resolved(&mut self, users: &Arc<[Bytes]>) -> FanResolved {
        // A stale entry's vectors are refilled: sessions coming and going cost no
        // allocation per room message.
        let (mut spans, mut keys, mut empty) = match self.fan_cache.take(users) {
            Some(f) if f.gen == self.users_gen => return f,
            Some(f) => (f.spans, f.keys, f.empty),
            None => (Vec::with_capacity(users.len()), Vec::new(), Vec::new()),
        };
        spans.clear();
        keys.clear();
        empty.clear();
        for (i, u) in users.iter().enumerate() {
            let start = keys.len() as u32;
            keys.extend_from_slice(self.user_session_keys(u));
            if keys.len() as u32 == start {
                empty.push(i as u32);
            }
            spans.push((start, keys.len() as u32));
        }
        FanResolved {
            users: users.clone(),
            gen: self.users_gen,
            spans,
            keys,
            empty,
        }
    }

    /// A room message for members homed here: every session of every member (not the
    /// sending device), or the member's offline queue.
    pub fn on_room_fan(&mut self, f: RoomFan) {
        if f.live != Live::No {
            self.fan_live(f);
            return;
        }
        let part = f.ack.clone().map(FanPart::new);
        let answer = |part: &Option<Arc<FanPart>>| match part {
            Some(p) => {
                p.add();
                Answer::Part(p.clone())
            }
            None => Answer::Nobody,
        };
        if self.journaled() {
            // One copy of the small payload and names for every member's record.
            let msg = OwnedMsg::unpinned_of(&f.from_user, &f.room, &f.payload, f.msg_id, f.ts_us);
            for user in f.users.iter() {
                // The sender's own copy is only for the sender's other devices: with
                // none online it is not stored (it would come back at the next login).
                if *user == f.from_user && !self.has_other_session(user, f.sender) {
                    continue;
                }
                let msg = msg.clone();
                self.journal(user.clone(), msg, answer(&part), f.sender, Some(f.sender));
            }
        } else {
            let RoomFan {
                room,
                from_user,
                payload,
                msg_id,
                ts_us,
                users,
                sender,
                ack: _,
                live: _,
            } = f;
            // One record for this shard (moved in, not cloned); each session then takes
            // a non-atomic reference to it.
            let fanned = std::rc::Rc::new(crate::outbuf::FanMsg::new(
                payload, from_user, room, msg_id, ts_us,
            ));
            let mut blocked = Vec::new();
            // The members' sessions, looked up once per member list and change of the
            // sessions here, not once per message and member.
            let fan = self.fan_resolved(&users);
            let m = Outgoing {
                from_user: &fanned.from_user,
                to_room: &fanned.to_room,
                payload: &fanned.payload,
                msg_id,
                ts_us,
                store_seq: 0,
                fanned: Some(&fanned),
            };
            let (mut absent, mut overflowed) = (Vec::new(), Vec::new());
            self.deliver_fan(
                &fan.keys,
                &fan.spans,
                &fan.empty,
                m,
                Some(sender),
                Some(sender),
                &mut blocked,
                &mut absent,
                &mut overflowed,
            );
            if !absent.is_empty() {
                // One record (one copy of its small payload) for every offline member.
                let stored = m.to_stored();
                for i in absent {
                    if let Some(user) = users.get(i) {
                        self.store_offline_record(user, stored.clone(), answer(&part));
                    }
                }
            }
            // Closed after the pass: a close bumps `users_gen`, and the list is then
            // not reused.
            for k in overflowed {
                self.close_overflowed(Some(k));
            }
            self.fan_cache.keep(fan);
        }
        if let Some(p) = part {
            p.finish(self, Status::Ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_budget_refills_at_its_rate_and_saves_up_a_second() {
        let room = Room::new(RoomRecord::default(), 1);
        assert!(room.take_live(1, 0, 0), "rate 0: no limit");
        // A second's worth at first (100), then nothing left at the same instant.
        assert!(room.take_live(60, 100, 5_000_000));
        assert!(room.take_live(40, 100, 5_000_000));
        assert!(!room.take_live(1, 100, 5_000_000));
        // 10 ms at 100 a second: one more; refused frames take nothing.
        assert!(!room.take_live(2, 100, 5_010_000));
        assert!(room.take_live(1, 100, 5_010_000));
        assert!(!room.take_live(1, 100, 5_010_000));
        // Fractions add up across calls (never rounded away).
        for t in 1..=9 {
            assert!(!room.take_live(1, 100, 5_010_000 + t * 1_000));
        }
        assert!(room.take_live(1, 100, 5_020_000));
        // Saved up for a second at most; a frame costing more takes all of it.
        assert!(room.take_live(100, 100, 60_000_000));
        assert!(!room.take_live(1, 100, 60_000_000));
        assert!(room.take_live(5_000, 100, 61_000_000));
        assert!(!room.take_live(1, 100, 61_000_000));
        // A clock behind the last one (another shard's) adds nothing.
        assert!(!room.take_live(1, 100, 60_500_000));
    }

    fn set(members: &[&str]) -> NameSet<Bytes> {
        members
            .iter()
            .map(|m| Bytes::copy_from_slice(m.as_bytes()))
            .collect()
    }

    /// Sorted (a member set has no order).
    fn names(v: Vec<Bytes>) -> Vec<String> {
        let mut v: Vec<String> = v
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_member_change_rebuilds_only_its_shards_list() {
        let rec = RoomRecord {
            name: "r".into(),
            owner: "o".into(),
            members: (0..40).map(|i| format!("u{i}")).collect(),
            ..RoomRecord::default()
        };
        let mut room = Room::new(rec, 2);
        assert!(room.rec.members.is_empty(), "kept once, in the set");
        let lists = |room: &Room| room.fan().collect::<Vec<_>>();
        let before = lists(&room);
        assert_eq!(before.len(), 2, "40 members fill both shards");
        assert_eq!(before.iter().map(|(_, l)| l.len()).sum::<usize>(), 40);
        // Built once per change: a second message gets the same lists.
        for ((_, a), (_, b)) in before.iter().zip(lists(&room)) {
            assert!(Arc::ptr_eq(a, &b));
        }
        let new = "newcomer";
        let home = super::super::home_shard(new.as_bytes(), 2);
        room.add(new.as_bytes());
        room.add(new.as_bytes());
        assert_eq!(room.members.len(), 41);
        let after = lists(&room);
        for ((s, a), (_, b)) in before.iter().zip(&after) {
            assert_eq!(Arc::ptr_eq(a, b), *s != home, "shard {s}");
        }
        assert!(after[home].1.iter().any(|m| &m[..] == new.as_bytes()));
        // RoomInfo's sorted list is made again after a change, and only then.
        let names = room.member_names();
        assert!(names.windows(2).all(|w| w[0] < w[1]) && names.len() == 41);
        assert!(names.iter().any(|n| n == new));
        let kept = room.sorted.get().cloned();
        room.member_names();
        assert!(kept.is_some_and(|k| Arc::ptr_eq(&k, room.sorted.get().unwrap())));
        room.remove(new.as_bytes());
        room.remove(b"not-a-member");
        assert!(!room.is_member(new));
        let total: usize = lists(&room).iter().map(|(_, l)| l.len()).sum();
        assert_eq!(total, 40);
        let names = room.member_names();
        assert!(names.len() == 40 && !names.iter().any(|n| n == new));
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        // The last member of a shard out: that shard gets no message.
        let mut room = Room::new(RoomRecord::default(), 2);
        room.add(b"solo");
        assert_eq!(room.fan_len(), 1);
        room.remove(b"solo");
        assert_eq!((room.fan_len(), lists(&room).len()), (0, 0));
    }

    #[test]
    fn member_changes_are_told_to_everyone_up_to_the_bound_then_to_subject_and_owner() {
        // Joined: the subject is a member now.
        let r = set(&["o", "a", "b"]);
        assert_eq!(
            names(told_of_member_change(&r, "o", "b", 3)),
            ["a", "b", "o"]
        );
        assert_eq!(names(told_of_member_change(&r, "o", "b", 2)), ["b", "o"]);
        // Left or removed: the subject is told although no longer a member, and the
        // room is judged at its size before (three members here).
        let r = set(&["o", "a"]);
        assert_eq!(
            names(told_of_member_change(&r, "o", "b", 3)),
            ["a", "b", "o"]
        );
        assert_eq!(names(told_of_member_change(&r, "o", "b", 2)), ["b", "o"]);
        // The owner as the subject is told once; an owner who left is not told.
        assert_eq!(names(told_of_member_change(&r, "o", "o", 1)), ["o"]);
        let r = set(&["a", "b", "c"]);
        assert_eq!(names(told_of_member_change(&r, "o", "c", 2)), ["c"]);
        assert_eq!(names(told_of_member_change(&r, "o", "d", 3)), ["d"]);
    }
}
