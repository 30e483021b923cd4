//! MarkRead{to_user | room, msg_id}: read receipts. A direct conversation's receipt
//! goes to the peer's live sessions (on the peer's home shard) and to the reader's own
//! other live sessions (here); the peer's is refused as a direct message would be (a
//! block, `--dm-policy contacts`); a room's goes through the room's home shard, which checks
//! membership and fans it out to every member's live sessions (the reading device
//! excepted) like an ephemeral message (`shard::social`). With history on, the store
//! keeps the reader's mark (`shard::history`): ListConversations counts unread after it.

use bytes::Bytes;
use ringrouter_proto::fast::SendView;
use ringrouter_proto::v1::{MarkRead, Receipt};
use ringrouter_proto::{reply, Status};

use crate::shard::mail::{Live, LiveFrame};
use crate::shard::{SessionKey, Shard};

impl Shard {
    /// A MarkRead from session `key`.
    pub(crate) fn on_mark_read(&mut self, key: SessionKey, m: MarkRead, ts_us: u64) {
        let bad = if m.to_user.is_empty() == m.room.is_empty() {
            Some("set to_user or room, not both")
        } else if m.msg_id == 0 {
            Some("msg_id: is 0")
        } else {
            None
        };
        if let Some(reason) = bad {
            self.counters.frames_rejected += 1;
            let f = reply::send_result(m.request_id, Status::BadRequest, reason, m.msg_id);
            self.push_frame(key, &f);
            return;
        }
        self.history_mark(key, &m.to_user, &m.room, m.msg_id);
        if !m.room.is_empty() {
            let v = SendView {
                request_id: m.request_id,
                to_room: Bytes::from(m.room),
                want_result: m.request_id != 0,
                ..Default::default()
            };
            self.send_to_room(key, v, m.msg_id, ts_us, Live::Receipt);
            return;
        }
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let reader_bytes = s.user.clone();
        let reader = String::from_utf8_lossy(&reader_bytes).into_owned();
        let frame = reply::receipt(Receipt {
            user: reader.clone(),
            to_user: m.to_user.clone(),
            msg_id: m.msg_id,
            ..Default::default()
        });
        let me = self.session_id(key);
        // The reader's other devices (here), then the peer's (at its home), unless the
        // peer blocks the reader or (--dm-policy contacts) is not a contact: a receipt
        // is refused like a direct message.
        if self.take_own_copies(&reader_bytes, 0) {
            self.push_live_to(reader.as_bytes(), &frame, me);
        }
        if self.dm_gate() {
            if let Some((status, reason)) = self.dm_refusal(reader.as_bytes(), m.to_user.as_bytes())
            {
                self.counters.reject(status);
                let f = if m.request_id != 0 {
                    reply::send_result(m.request_id, status, reason, m.msg_id)
                } else {
                    reply::error(status, reason, 0)
                };
                self.push_frame(key, &f);
                return;
            }
        }
        if m.to_user != reader {
            self.route_live(LiveFrame {
                users: vec![Bytes::from(m.to_user)],
                frame,
                skip: None,
                weight: 128,
                from: Some(Bytes::from(reader)),
            });
        }
        if m.request_id != 0 {
            let f = reply::send_status(m.request_id, Status::Ok, m.msg_id);
            self.push_frame(key, &f);
        }
    }
}
