//! The room family of client frames: CreateRoom, JoinRoom, LeaveRoom, AddMember,
//! RemoveMember, DeleteRoom, RoomInfo (decoded into a `RoomReq` mailed to the room's home
//! shard, see `shard::rooms`) and ListRooms (answered from the store).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use ringrouter_proto::reply;
use ringrouter_proto::v1::client_frame;
use ringrouter_proto::Status;

use crate::shard::mail::{RoomOp, RoomReq, CODE_MARK};
use crate::shard::rooms::{check_join_code, OwnItem};
use crate::shard::store_link::store_status;
use crate::shard::{Flow, Mail, SessionId, SessionKey, Shard};
use crate::store::MAX_PASSWORD_BYTES;

impl Shard {
    /// A room request from session `key` (CreateRoom .. ListRooms).
    pub fn on_room_request(&mut self, key: SessionKey, kind: client_frame::Kind) -> Flow {
        use client_frame::Kind;
        let Some(from) = self.session_id(key) else {
            return Flow::Continue;
        };
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        let (request_id, mut op) = match kind {
            Kind::CreateRoom(c) => (
                c.request_id,
                RoomOp::Create {
                    name: c.name,
                    password: c.password,
                    members: c.members,
                },
            ),
            Kind::JoinRoom(j) => (
                j.request_id,
                RoomOp::Join {
                    key: j.room,
                    password: j.password,
                },
            ),
            Kind::LeaveRoom(l) => (l.request_id, RoomOp::Leave { room: l.room }),
            Kind::AddMember(a) => (
                a.request_id,
                RoomOp::Add {
                    room: a.room,
                    user: a.user,
                },
            ),
            Kind::RemoveMember(r) => (
                r.request_id,
                RoomOp::Remove {
                    room: r.room,
                    user: r.user,
                },
            ),
            Kind::DeleteRoom(d) => (d.request_id, RoomOp::Delete { room: d.room }),
            Kind::RoomInfo(i) => (i.request_id, RoomOp::Info { room: i.room }),
            Kind::ListRooms(l) => {
                // Up to every room of the user, each with its name: a big answer, and a
                // page read (a scan of up to --max-rooms-per-user keys).
                self.list_rooms(key, from, l.request_id, user);
                return Flow::Continue;
            }
            _ => return Flow::Continue,
        };
        // More names than a room holds are refused as they came, not sorted first:
        // 120 000 names in a frame under --max-frame-bytes took the shard ~10 ms each.
        let max_members = self.cfg.max_members_per_room;
        let over = matches!(&op, RoomOp::Create { members, .. } if members.len() > max_members);
        if let RoomOp::Create { members, .. } = &mut op {
            if !over {
                // The owner is a member anyway; each name once.
                members.retain(|m| *m != user);
                members.sort_unstable();
                members.dedup();
            }
        }
        // Names were checked where the frame was decoded (`names::check_frame`).
        let bad = match &op {
            RoomOp::Create { password, .. } | RoomOp::Join { password, .. }
                if password.len() > MAX_PASSWORD_BYTES =>
            {
                Some(format!("password longer than {MAX_PASSWORD_BYTES} bytes"))
            }
            RoomOp::Join { key, .. } if key.starts_with(CODE_MARK) => check_join_code(key).err(),
            RoomOp::Create { members, .. } if over || members.len() >= max_members => {
                Some(format!(
                    "members: {} initial members and the owner exceed --max-members-per-room {}",
                    members.len(),
                    max_members
                ))
            }
            _ => None,
        };
        let refused = match bad {
            Some(reason) => Some((Status::BadRequest, reason)),
            None => match self.add_refusal(key, &user, &op) {
                Ok(refused) => refused,
                Err(()) => return Flow::Again,
            },
        };
        if let Some((status, reason)) = refused {
            self.counters.reject(status);
            self.push_frame(
                key,
                &reply::room_result(request_id, status, &reason, op.key(), ""),
            );
            return Flow::Continue;
        }
        let mut inflight = self.request_in_flight(from);
        if let (RoomOp::Info { .. }, Some(f)) = (&op, &mut inflight) {
            // A big room's member list is a big answer: nothing more is read from this
            // session until it is written.
            f.big = true;
            self.big_answer_begun(key);
        }
        let req = RoomReq {
            user,
            from,
            request_id,
            op,
            quota: false,
            session_gone: false,
            inflight: crate::shard::mail::InFlightSlot::new(inflight),
        };
        let user = Bytes::copy_from_slice(req.user.as_bytes());
        if let Some(waiting) = self.room_quota.get_mut(&user) {
            // Behind the user's Create or Join in flight, in order.
            self.parked_bytes += req.weight();
            waiting.push_back(OwnItem::Req(req));
        } else if matches!(req.op, RoomOp::Create { .. } | RoomOp::Join { .. }) {
            self.room_quota.insert(user, VecDeque::new());
            self.admit_own(req);
        } else {
            let home = self.home(req.op.key().as_bytes());
            self.post(home, Mail::Room(Box::new(req)));
        }
        Flow::Continue
    }

    /// Why `user` (homed here, live) may not add the users `op` adds (a CreateRoom's
    /// initial members, an AddMember's user), if so; otherwise takes them from its
    /// allowance (`max_member_adds_per_minute`, [`AddRate`](crate::shard::adds::AddRate)).
    ///
    /// A user who blocks `user`, or under `--dm-policy contacts` one that is not its
    /// accepted contact, refuses it FORBIDDEN, named (as a direct message is refused:
    /// `Shard::dm_refusal`, from `user`'s loaded list, no store read); before, a blocked
    /// user put its blocker into rooms and wrote to it there.
    ///
    /// The allowance is looked at first, and taken once the blocks are known: a frame it
    /// refuses reads no blocks from the store; one refused FORBIDDEN takes it too.
    /// `Err(())` when the blocks of users it adds must be read from the store first
    /// (`shard::blocks`): the frame waits and is handled again.
    fn add_refusal(
        &mut self,
        key: SessionKey,
        user: &str,
        op: &RoomOp,
    ) -> Result<Option<(Status, String)>, ()> {
        let added: &[String] = match op {
            RoomOp::Create { members, .. } => members,
            RoomOp::Add { user: target, .. } => std::slice::from_ref(target),
            _ => return Ok(None),
        };
        let per_minute = self.cfg.max_member_adds_per_minute;
        let now = Instant::now();
        if let Err(wait) = self
            .add_rate
            .check(user.as_bytes(), added.len(), per_minute, now)
        {
            return Ok(Some((
                Status::RateLimited,
                format!(
                    "adding members too fast: {per_minute} a minute \
                     (--max-member-adds-per-minute), {} more in {} ms",
                    added.len(),
                    wait.as_millis()
                ),
            )));
        }
        if self.dm_gate() && !self.blockers_known(key, added.iter().map(|m| m.as_bytes())) {
            return Err(());
        }
        // Taken whatever the blocks say (checked above: it has them): the checks cost
        // as much for a frame refused FORBIDDEN, which a client could send again and
        // again (10 000 members a frame held its shard 25 ms each).
        let _ = self
            .add_rate
            .take(user.as_bytes(), added.len(), per_minute, now);
        if self.dm_gate() {
            for m in added {
                if let Some((status, reason)) = self.dm_refusal(user.as_bytes(), m.as_bytes()) {
                    return Ok(Some((status, format!("{reason}: {m}"))));
                }
            }
        }
        Ok(None)
    }

    /// ListRooms: the rooms the user is in.
    fn list_rooms(&mut self, key: SessionKey, from: SessionId, request_id: u64, user: String) {
        self.page_read(
            key,
            move |st, cb| st.rooms_of(&user, cb),
            move |sh, r| {
                let frame = match r {
                    Ok(rooms) => reply::room_list(request_id, rooms),
                    Err(e) => {
                        reply::room_result(request_id, store_status(&e), &e.to_string(), "", "")
                    }
                };
                sh.push_big_answer(from, &frame);
            },
        );
    }
}
