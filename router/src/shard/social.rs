//! The social layer's deliveries: what goes to live sessions only and is never stored,
//! retained or acked (ephemeral messages, copies of a user's own direct messages for
//! its other devices), and the state it keeps per user homed here.
//!
//! # Rules
//! - An ephemeral Send (`Send.ephemeral`, typing indicators) reaches the live sessions of
//!   the recipient (every member of a room, the sending device excepted) as a Deliver with
//!   seq 0 and `ephemeral` set. Nothing is stored: a recipient without a live session
//!   misses it, and the sender's SendResult says OK once it is routed (a room still
//!   checks membership: FORBIDDEN, NOT_FOUND).
//! - A direct (not ephemeral) message sent from one device of a user who has other live
//!   sessions reaches those too, as a Deliver with seq 0, `outgoing` set and `to_user`
//!   the recipient (a message to oneself already reaches every device and gets no copy).
//! - A room event for a member without a live session is appended to the member's
//!   offline queue (a `StoredMsg` with `room_event` set) and delivered at its next login,
//!   in order with its messages, as a RoomEvent with a seq, acked like a Deliver.
//! - A live-only frame is dropped for a session over `max_pending_bytes` (it never makes
//!   a queue grow past its bound).

use bytes::Bytes;
use ringrouter_proto::fast::SendView;
use ringrouter_proto::reply;
use ringrouter_proto::v1::{Deliver, Receipt, RoomEvent, ServerFrame};
use ringrouter_proto::Status;

use super::mail::{Live, LiveFrame, Mail, RoomFan};
use super::requeue::Behind;
use super::session::{SessionId, SessionKey};
use super::Shard;
use crate::store::StoredMsg;

/// Per-shard state of the social layer.
#[derive(Debug, Default)]
pub struct Social {
    /// Users homed here with two or more live sessions (copies of sent direct messages
    /// are only looked for when there are some).
    pub multi_device: usize,
    /// Live-only frames queued on sessions (see [`Shard::fan_work`]).
    pub live_pushed: u64,
    /// Frames other than Sends handled, each as [`OTHER_FRAME_WORK`] deliveries (see
    /// [`Shard::fan_work`]).
    pub frames_work: u64,
}

/// What a frame other than a Send (a Ping, an ack, a request: each handled and answered
/// on its own) weighs in a reader's turn, in deliveries: 128, so a chunk hands the shard
/// at most 512 of them before the rest waits for the shard's other ready tasks. A 64 KiB
/// chunk of Pings is ~6 500 of them, ~8 ms of the shard: 20 sessions pinging in a loop
/// held another session's Ping p50 226 ms on their shard (a round of their chunks); now
/// 2.7 ms (`bench/hostile/ping_flood.py`).
pub const OTHER_FRAME_WORK: u64 = 128;

/// Bytes a live frame counts for besides its payload.
const LIVE_OVERHEAD: usize = 64;

/// Bytes of a live-only frame's payload that count as one delivery for the users' and
/// rooms' live budgets (a frame counts once a session or member, once more per KiB past
/// the first). Counted by sessions alone, one sender's loop of 1 MB ephemeral messages
/// to a user with 32 devices was 3 GB a second for the shard to write (others' Pings
/// p50 16-22 ms, max 0.3 s; to WebSocket JSON devices, 133 ms and 0.36 s).
pub(crate) const LIVE_UNIT_BYTES: usize = 1024;

/// What a live-only frame of `payload` bytes costs a budget per session it reaches.
pub(crate) fn live_units(payload: usize) -> usize {
    payload.div_ceil(LIVE_UNIT_BYTES).max(1)
}

impl Shard {
    /// An ephemeral Send from session `key` (validated by `on_send`).
    pub(crate) fn send_ephemeral(&mut self, key: SessionKey, v: SendView, msg_id: u64, ts_us: u64) {
        if !v.to_room.is_empty() {
            self.send_to_room(key, v, msg_id, ts_us, Live::Ephemeral);
            return;
        }
        let Some(sender) = self.session_id(key) else {
            return;
        };
        let from = self.sessions[key].user.clone();
        let d = Deliver {
            from_user: String::from_utf8_lossy(&from).into_owned(),
            payload: v.payload,
            server_ts_us: ts_us,
            msg_id,
            ephemeral: true,
            ..Default::default()
        };
        let weight = d.payload.len() + LIVE_OVERHEAD;
        let live = LiveFrame {
            users: vec![v.to_user.to_bytes()],
            frame: reply::deliver(d),
            skip: Some(sender),
            weight,
            from: Some(from),
        };
        self.route_live(live);
        if v.want_result {
            self.push_frame(key, &reply::send_status(v.request_id, Status::Ok, msg_id));
        }
    }

    /// Sends `live` to the home shard of its users (all homed on one shard).
    pub(crate) fn route_live(&mut self, live: LiveFrame) {
        let Some(first) = live.users.first() else {
            return;
        };
        let home = self.home(first);
        if home == self.id {
            self.push_live(&live);
        } else {
            self.post(home, Mail::Live(Box::new(live)));
        }
    }

    /// Queues a live-only frame on every live session of its users homed here: none if
    /// it is a user's and that user's direct live deliveries here are spent.
    pub fn push_live(&mut self, live: &LiveFrame) {
        if let Some(from) = live
            .from
            .as_ref()
            .filter(|_| self.direct_live_rate.is_some())
        {
            let all: usize = live
                .users
                .iter()
                .map(|u| self.users.get(&u[..]).map_or(0, |k| k.len()))
                .sum();
            // (Not the sending device, when it is among them: an ephemeral to oneself.)
            let skipped = live
                .skip
                .and_then(|id| self.resolve(id))
                .and_then(|k| self.sessions.get(k))
                .is_some_and(|s| live.users.iter().any(|u| u[..] == s.user[..]));
            let cost = (all - usize::from(skipped))
                * live_units(live.weight.saturating_sub(LIVE_OVERHEAD));
            if !self.take_direct_live(from, cost) {
                self.counters.direct_live_refused += 1;
                return;
            }
        }
        for u in &live.users {
            self.push_live_to(u, &live.frame, live.skip);
        }
    }

    /// Takes `cost` (sessions to reach here) of `from`'s direct live deliveries
    /// (`direct_live_per_user_per_second`); false, taking nothing, when it holds too
    /// few. One client's typing loop to a user with 63 devices made 63 pushes a frame on
    /// the recipient's shard, unpaced (the frames are dropped for sessions over their
    /// pending bound, so nothing pauses the sender): everyone there waited 1-2.7 s.
    fn take_direct_live(&mut self, from: &Bytes, cost: usize) -> bool {
        let Some(rate) = self.direct_live_rate.as_mut().filter(|_| cost > 0) else {
            return true;
        };
        let now = std::time::Instant::now();
        if !rate.holds(from, cost as f64, now) {
            return false;
        }
        rate.take(from.clone(), cost as f64, now);
        true
    }

    /// Queues `frame` on every live session of `user` homed here but `skip`, unless
    /// the session is over its pending bound. Returns how many got it.
    pub(crate) fn push_live_to(
        &mut self,
        user: &[u8],
        frame: &ServerFrame,
        skip: Option<SessionId>,
    ) -> usize {
        let max_pending = self.cfg.max_pending_bytes;
        let mut n = 0;
        let keys = match self.users.get(user) {
            Some(k) => k.clone(),
            None => return 0,
        };
        for k in keys {
            if skip.is_some() && self.session_id(k) == skip {
                continue;
            }
            let Some(s) = self.sessions.get_mut(k) else {
                continue;
            };
            if s.closing.is_some() || s.pending() > max_pending {
                continue;
            }
            s.push_frame(frame);
            n += 1;
        }
        self.social.live_pushed += n as u64;
        n
    }

    /// Frames queued on sessions for others so far (deliveries and live-only frames), and
    /// frames other than Sends handled ([`OTHER_FRAME_WORK`] each): a reader's share of
    /// the shard's turn is measured with it.
    pub(crate) fn fan_work(&self) -> u64 {
        self.counters
            .delivered
            .wrapping_add(self.social.live_pushed)
            .wrapping_add(self.social.frames_work)
    }

    /// A room's ephemeral message or read receipt for its members homed here.
    pub(crate) fn fan_live(&mut self, f: RoomFan) {
        let (from_user, room) = (
            String::from_utf8_lossy(&f.from_user).into_owned(),
            String::from_utf8_lossy(&f.room).into_owned(),
        );
        let frame = if f.live == Live::Receipt {
            reply::receipt(Receipt {
                user: from_user,
                room,
                msg_id: f.msg_id,
                ..Default::default()
            })
        } else {
            reply::deliver(Deliver {
                from_user,
                to_room: room,
                payload: f.payload,
                server_ts_us: f.ts_us,
                msg_id: f.msg_id,
                ephemeral: true,
                ..Default::default()
            })
        };
        for u in f.users.iter() {
            self.push_live_to(u, &frame, Some(f.sender));
        }
    }

    /// Takes the copies of one of `user`'s frames, of `payload` bytes, for its other live
    /// sessions (one each, per KiB: see [`live_units`]) from its direct live deliveries;
    /// false, counted, when it holds too few. 8 of 64 devices writing DMs in a loop made
    /// 63 copies each, unpaced, and held everyone on their shard 0.3-0.5 s.
    pub(crate) fn take_own_copies(&mut self, user: &Bytes, payload: usize) -> bool {
        let others = self
            .users
            .get(&user[..])
            .map_or(0, |k| k.len().saturating_sub(1));
        if others == 0 {
            return true;
        }
        if self.take_direct_live(user, others * live_units(payload)) {
            return true;
        }
        self.counters.direct_live_refused += 1;
        false
    }

    /// A direct message from session `key` to `to_user`: a copy for the sender's
    /// other live sessions, if it has any (see the module doc).
    pub(crate) fn copy_to_own_devices(
        &mut self,
        key: SessionKey,
        to_user: &[u8],
        payload: &Bytes,
        msg_id: u64,
        ts_us: u64,
    ) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if s.user == to_user || self.users.get(&s.user[..]).is_none_or(|k| k.len() < 2) {
            return;
        }
        let user = s.user.clone();
        if !self.take_own_copies(&user, payload.len()) {
            return;
        }
        let d = Deliver {
            from_user: String::from_utf8_lossy(&user).into_owned(),
            payload: payload.clone(),
            server_ts_us: ts_us,
            msg_id,
            outgoing: true,
            to_user: String::from_utf8_lossy(to_user).into_owned(),
            ..Default::default()
        };
        let sender = self.session_id(key);
        self.push_live_to(&user, &reply::deliver(d), sender);
    }
}

/// The RoomEvent frame of a stored room event, with this session's `seq`.
pub(crate) fn stored_event(seq: u64, m: &StoredMsg) -> ServerFrame {
    reply::room_event(RoomEvent {
        kind: m.room_event,
        room: m.to_room.clone(),
        user: m.from_user.clone(),
        seq,
    })
}

impl Shard {
    /// Appends room events to the offline queues of their users (homed here, no live
    /// session), in one store request counted by its size. Nothing waits for it; an
    /// unknown user or a full queue gets nothing.
    pub(crate) fn store_room_events(&mut self, events: Vec<(Bytes, RoomEvent)>) {
        if events.is_empty() || !self.has_store() {
            return;
        }
        let ts = super::now_us();
        let cap = self.notice_cap();
        let mut bytes = 0;
        let mut items: Vec<(String, StoredMsg)> = Vec::with_capacity(events.len());
        for (user, ev) in events {
            let stored = StoredMsg {
                from_user: ev.user,
                to_room: ev.room,
                server_ts_us: ts,
                room_event: ev.kind,
                ..Default::default()
            };
            // Behind what the user's ended sessions left, if any waits (stored then,
            // with the notice cap).
            let b = Behind {
                msg: stored,
                cap,
                reply: None,
                origin: None,
            };
            if let Some(b) = self.behind_requeues(&user, b) {
                let stored = b.msg;
                bytes += user.len() + stored.from_user.len() + stored.to_room.len() + 64;
                items.push((String::from_utf8_lossy(&user).into_owned(), stored));
            }
        }
        if items.is_empty() {
            return;
        }
        self.store_req_sized(
            bytes,
            |s, cb| s.enqueue_each(items, cap, cb),
            |_, r| crate::store::warn_unless_full(&r, "storing a room event"),
        );
    }
}
