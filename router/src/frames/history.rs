//! History{user | room, before, limit} and ListConversations{limit, before_ts_us}:
//! answered from the store (`store::history`), which also checks that the asking user is
//! a member of the room now (FORBIDDEN otherwise). A limit of 0 means 50; one over
//! `--history-page-max` (500) is BAD_REQUEST (not clamped: a client asking for more than
//! it can get should know).

use ringrouter_proto::v1::{Conversation, Deliver, History, ListConversations};
use ringrouter_proto::{reply, Status};

use crate::shard::store_link::store_status;
use crate::shard::{SessionKey, Shard};
use crate::store::{HistMsg, HistPage, HistQuery};

/// Page size when a request says 0.
pub const DEFAULT_PAGE: u32 = 50;

fn deliver(m: HistMsg, room: &str) -> Deliver {
    Deliver {
        seq: 0,
        from_user: m.from_user,
        to_room: room.to_owned(),
        payload: m.payload,
        server_ts_us: m.ts_us,
        msg_id: m.msg_id,
        ..Deliver::default()
    }
}

impl Shard {
    /// Most bytes of messages in one History or ListConversations answer: its frame
    /// within the frame limit (its own header aside), so a page of big messages is one
    /// frame clients can read and a bounded allocation.
    fn page_bytes(&self) -> usize {
        self.cfg.max_frame_bytes.saturating_sub(1024)
    }

    fn page_limit(&self, limit: u32) -> Result<usize, String> {
        let max = self.cfg.history_page_max;
        match limit {
            0 => Ok(DEFAULT_PAGE.min(max) as usize),
            n if n > max => Err(format!("limit {n} exceeds history-page-max {max}")),
            n => Ok(n as usize),
        }
    }

    /// History: a page of a direct conversation or a room, oldest first.
    pub fn on_history(&mut self, key: SessionKey, h: History) {
        let rid = h.request_id;
        let bad = |sh: &mut Shard, reason: &str| {
            sh.counters.reject(Status::BadRequest);
            sh.push_frame(
                key,
                &reply::history_result(rid, Status::BadRequest, reason, vec![]),
            );
        };
        match (h.user.is_empty(), h.room.is_empty()) {
            (true, true) => return bad(self, "set user or room"),
            (false, false) => return bad(self, "set user or room, not both"),
            _ => {}
        }
        let limit = match self.page_limit(h.limit) {
            Ok(l) => l,
            Err(reason) => return bad(self, &reason),
        };
        let Some(sid) = self.session_id(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        let room = h.room.clone();
        let query = HistQuery {
            user,
            peer: (!h.user.is_empty()).then_some(h.user),
            room: (!h.room.is_empty()).then_some(h.room),
            before: h.before,
            limit,
            max_bytes: self.page_bytes(),
        };
        self.page_read(
            key,
            move |s, cb| s.history_query(query, cb),
            move |sh, r| {
                let f = match r {
                    Ok(HistPage::Messages(ms)) => reply::history_result(
                        rid,
                        Status::Ok,
                        "",
                        ms.into_iter().map(|m| deliver(m, &room)).collect(),
                    ),
                    Ok(HistPage::Forbidden) => {
                        reply::history_result(rid, Status::Forbidden, "not a member", vec![])
                    }
                    Ok(HistPage::BeforeNotFound) => reply::history_result(
                        rid,
                        Status::NotFound,
                        "before: no such message in the history kept",
                        vec![],
                    ),
                    Ok(HistPage::BeforeBeyondLookup) => reply::history_result(
                        rid,
                        Status::NotFound,
                        "before: not found within --history-lookup-chunks of the newest \
                         chunks; page back with the oldest msg_id of the previous page",
                        vec![],
                    ),
                    Err(e) => reply::history_result(rid, store_status(&e), &e.to_string(), vec![]),
                };
                sh.push_big_answer(sid, &f);
            },
        );
    }

    /// ListConversations: the user's conversations, newest last message first.
    pub fn on_list_conversations(&mut self, key: SessionKey, l: ListConversations) {
        let rid = l.request_id;
        let limit = match self.page_limit(l.limit) {
            Ok(n) => n,
            Err(reason) => {
                self.counters.reject(Status::BadRequest);
                let f = reply::conversations_result(rid, Status::BadRequest, &reason, vec![]);
                self.push_frame(key, &f);
                return;
            }
        };
        let Some(sid) = self.session_id(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        let max_bytes = self.page_bytes();
        self.page_read(
            key,
            move |s, cb| s.conversations(&user, limit, l.before_ts_us, max_bytes, cb),
            move |sh, r| {
                let f = match r {
                    Ok(cs) => reply::conversations_result(
                        rid,
                        Status::Ok,
                        "",
                        cs.into_iter()
                            .map(|c| {
                                let room = c.room.clone().unwrap_or_default();
                                Conversation {
                                    user: c.peer.unwrap_or_default(),
                                    last: Some(deliver(c.last, &room)),
                                    room,
                                    unread: c.unread,
                                }
                            })
                            .collect(),
                    ),
                    Err(e) => {
                        reply::conversations_result(rid, store_status(&e), &e.to_string(), vec![])
                    }
                };
                sh.push_big_answer(sid, &f);
            },
        );
    }
}
