//! Send{to_user | to_room, payload}: the hot path. A direct message to a user homed
//! here goes straight into the recipient's sessions (`shard::delivery`); one homed on
//! another shard is appended to the outgoing batch for that shard (`Mail::Deliver`,
//! moved into the ring by the flusher); a room message goes to the room's home
//! (`shard::rooms`). Ephemeral sends and copies for the sender's other devices are
//! live-only frames (`shard::social`).

use bytes::Bytes;
use ringrouter_proto::fast::SendView;
use ringrouter_proto::names::name_eq;
use ringrouter_proto::reply;
use ringrouter_proto::Status;

use crate::shard::mail::Live;
use crate::shard::retention::{Outgoing, OwnedMsg, NO_ROOM};
use crate::shard::{Flow, LastDest, Mail, Routed, SessionKey, Shard, MSG_ID_SHARD_SHIFT};

impl Shard {
    /// A new message id: the shard + 1 in the top bits, then a counter that each start
    /// of the router seeds from the clock ([`crate::shard::msg_id_clock`]).
    pub(crate) fn next_msg_id(&mut self) -> u64 {
        let id = ((self.id as u64 + 1) << MSG_ID_SHARD_SHIFT)
            | (self.next_msg_id & ((1 << MSG_ID_SHARD_SHIFT) - 1));
        self.next_msg_id += 1;
        id
    }

    /// Send: routes one message (see the module doc).
    #[inline]
    pub(crate) fn on_send(
        &mut self,
        key: SessionKey,
        v: SendView,
        ts_us: u64,
        known_home: Option<usize>,
        blocked: &mut Vec<SessionKey>,
    ) -> Flow {
        if v.client_seq != 0 {
            let Some(s) = self.sessions.get_mut(key) else {
                return Flow::Continue;
            };
            if s.closing.is_some() {
                // Its resume point is taken already: the client sends it again.
                return Flow::Continue;
            }
            // (Given back if the Send waits for a lookup of blockers.)
            self.seq_taken_before = s.client_seq_taken;
            if !Shard::take_client_seq(s, v.client_seq) {
                self.counters.duplicate_sends += 1;
                if v.want_result {
                    let f = reply::send_result(v.request_id, Status::Ok, "duplicate", v.msg_id);
                    self.push_frame(key, &f);
                }
                return Flow::Continue;
            }
        }
        self.route_send(key, v, ts_us, known_home, blocked)
    }

    /// A stored message to a room, validated (see `route_send`): it waits while the room
    /// is homed here and its store requests do not fit (`Shard::room_send_waits`).
    #[inline(never)]
    fn route_room_send(&mut self, key: SessionKey, v: SendView, msg_id: u64, ts_us: u64) -> Flow {
        if self.room_send_waits(key, &v.to_room) {
            // Handled again once the store's queue has room for it, counted then, its
            // client_seq taken then (`Shard::room_send_may_go`).
            self.counters.msgs_in -= 1;
            if v.client_seq != 0 {
                self.sessions[key].client_seq_taken = self.seq_taken_before;
            }
            return Flow::Again;
        }
        self.chunk_payload += v.payload.len();
        self.send_to_room(key, v, msg_id, ts_us, Live::No);
        Flow::Continue
    }

    fn route_send(
        &mut self,
        key: SessionKey,
        v: SendView,
        ts_us: u64,
        known_home: Option<usize>,
        blocked: &mut Vec<SessionKey>,
    ) -> Flow {
        self.counters.msgs_in += 1;
        let reject = if !v.to_room.is_empty() && !v.to_user.is_empty() {
            Some((
                Status::BadRequest,
                "set to_user or to_room, not both".to_owned(),
            ))
        } else if v.payload.len() > self.cfg.max_payload_bytes {
            Some((
                Status::TooLarge,
                format!(
                    "payload of {} bytes exceeds --max-payload-bytes {}",
                    v.payload.len(),
                    self.cfg.max_payload_bytes
                ),
            ))
        } else {
            None
        };
        if let Some((status, reason)) = reject {
            self.counters.reject(status);
            let f = if v.want_result {
                reply::send_result(v.request_id, status, &reason, v.msg_id)
            } else {
                reply::error(status, reason, v.request_id)
            };
            self.push_frame(key, &f);
            return Flow::Continue;
        }
        if !self.sessions.contains(key) {
            return Flow::Continue;
        }
        let msg_id = if v.msg_id != 0 {
            v.msg_id
        } else {
            self.next_msg_id()
        };
        if self.dm_gate() && !v.to_user.is_empty() {
            if !self.blockers_known(key, std::iter::once(&v.to_user[..])) {
                // Handled again once looked up, counted then, its client_seq taken then
                // (`shard::blocks`).
                self.counters.msgs_in -= 1;
                if v.client_seq != 0 {
                    self.sessions[key].client_seq_taken = self.seq_taken_before;
                }
                return Flow::Again;
            }
            let refusal = self.dm_refusal(&self.sessions[key].user, &v.to_user);
            self.looked_up = None;
            if let Some((status, reason)) = refusal {
                self.counters.reject(status);
                let f = if v.want_result {
                    reply::send_result(v.request_id, status, reason, msg_id)
                } else {
                    reply::error(status, reason, v.request_id)
                };
                self.push_frame(key, &f);
                return Flow::Continue;
            }
        }
        // `chunk_payload` counts the payloads that stay slices of their read chunk
        // beyond it (held until acked, written or kept in history), so that a chunk
        // mostly of bytes nobody keeps makes this session's payloads copied (see
        // `read_loop`): a 300-byte message held unacked kept its whole 64 KiB chunk
        // alive while the rest of the chunk (ephemeral or stored sends, refused ones)
        // made it look dense. An ephemeral payload is encoded into its frames; a stored
        // one is held only until the storage thread writes it (history, when on, keeps
        // its payloads: those count).
        if v.ephemeral {
            self.send_ephemeral(key, v, msg_id, ts_us);
            return Flow::Continue;
        }
        if !v.to_room.is_empty() {
            return self.route_room_send(key, v, msg_id, ts_us);
        }
        if self.social.multi_device > 0 {
            self.copy_to_own_devices(key, &v.to_user, &v.payload, msg_id, ts_us);
        }
        let home = match known_home {
            Some(h) => h,
            None => {
                let h = self.home(&v.to_user);
                LastDest::remember(&mut self.sessions[key].last_dest, &v.to_user, h);
                h
            }
        };
        if home == self.id {
            // The sender's name is lent by move, not cloned: no refcount per message
            // (taken out once for the history and the delivery).
            let from_user = std::mem::take(&mut self.sessions[key].user);
            self.history_dm(&from_user, &v.to_user, &v.payload, msg_id, ts_us);
            if self.journaled() {
                self.sessions[key].user = from_user;
                let Some(sender) = self.session_id(key) else {
                    return Flow::Continue;
                };
                let msg = OwnedMsg {
                    from_user: self.sessions[key].user.clone(),
                    to_room: Bytes::new(),
                    payload: crate::outbuf::unpinned(&v.payload),
                    msg_id,
                    ts_us,
                };
                let reply = v.want_result.then_some((sender, v.request_id));
                self.journal(v.to_user.to_bytes(), msg, reply.into(), sender, None);
                return Flow::Continue;
            }
            let m = Outgoing {
                from_user: &from_user,
                to_room: &NO_ROOM,
                payload: &v.payload,
                msg_id,
                ts_us,
                store_seq: 0,
                fanned: None,
            };
            let named = known_home.is_some();
            let (n, overflowed) = self.deliver_dm(key, &v.to_user, named, m, blocked);
            if n > 0 || self.history_on() {
                self.chunk_payload += v.payload.len();
            }
            if n == 0 && self.has_store() {
                let reply = self
                    .session_id(key)
                    .filter(|_| v.want_result)
                    .map(|id| (id, v.request_id));
                self.store_offline(&v.to_user, m, reply.into());
            }
            self.sessions[key].user = from_user;
            self.close_overflowed(overflowed);
            if v.want_result && (n > 0 || !self.has_store()) {
                let status = if n > 0 { Status::Ok } else { Status::NotFound };
                let reason = if n > 0 { "" } else { "user has no session" };
                self.push_frame(
                    key,
                    &reply::send_result(v.request_id, status, reason, msg_id),
                );
            }
        } else {
            let Some(sender) = self.session_id(key) else {
                return Flow::Continue;
            };
            let reply = v.want_result.then_some((sender, v.request_id));
            // (Kept by the home shard if its user has a session or history is on.)
            self.chunk_payload += v.payload.len();
            let (same_from, same_to) = match &self.outbox_last[home] {
                Some((id, to)) => (*id == sender, name_eq(to, &v.to_user)),
                None => (false, false),
            };
            let to_user = if same_to {
                None
            } else {
                let to = v.to_user.to_bytes();
                self.outbox_last[home] = Some((sender, to.clone()));
                Some(to)
            };
            if !same_from {
                if let Some((id, _)) = &mut self.outbox_last[home] {
                    *id = sender;
                }
            }
            self.post(
                home,
                Mail::Deliver(Routed {
                    to_user,
                    from_user: (!same_from).then(|| self.sessions[key].user.clone()),
                    payload: v.payload,
                    msg_id,
                    ts_us,
                    reply,
                    sender,
                }),
            );
        }
        Flow::Continue
    }
}
