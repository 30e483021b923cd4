//! Client frames of a logged-in session: one module per frame kind (or small family),
//! each decoding, deciding and answering its frames, dispatched from the one match in
//! [`Shard::on_frame`]. Answers are built by `ringrouter_proto::reply`.
//!
//! | frame | module |
//! |---|---|
//! | Send | [`send`] |
//! | Ack | [`ack`] |
//! | Ping, Pong | [`ping`] |
//! | Login, Register, Logout (after login) | [`session`] |
//! | CreateRoom, JoinRoom, LeaveRoom, AddMember, RemoveMember, DeleteRoom, ListRooms, RoomInfo | [`rooms`] |
//! | DeleteAccount, ListUsers | [`accounts`] |
//! | MarkRead | [`receipts`] |
//! | History, ListConversations | [`history`] |
//! | ContactOp, ListContacts | [`contacts`] |
//! | SetPresence, GetPresence | [`presence`] |
//!
//! # Adding a client frame kind
//! 1. `proto/router.proto`: the message, its field in `ClientFrame.kind` (and its result
//!    in `ServerFrame.kind` if it has one; a builder for it in `proto/src/reply.rs`,
//!    and its line in `reply::request_id_of` and `reply::refusal`, which the compiler
//!    asks for).
//! 2. One module here, `frames/<kind>.rs`: `impl Shard { pub(crate) fn on_<kind>(..) }`,
//!    declared below. Work for another shard goes out as a `Mail` variant (a new one in
//!    `shard/mail.rs`, with its arm in `Shard::on_mail`, only if none fits).
//! 3. One arm in the match of [`Shard::on_frame`].
//!
//! Before login, frames are handled by `crate::prelogin` (Login, Register, Ping): a
//! frame a session may also send before login gets its arm there too.

use std::time::Instant;

use ringrouter_proto::fast::Inbound;
use ringrouter_proto::v1::client_frame::Kind;
use ringrouter_proto::{reply, Status};

use crate::shard::{Flow, SessionKey, Shard};

pub mod accounts;
pub mod ack;
pub mod contacts;
pub mod history;
pub mod ping;
pub mod presence;
pub mod receipts;
pub mod rooms;
pub mod send;
pub mod session;

impl Shard {
    /// Handles one decoded frame from session `key`. `blocked` collects local
    /// sessions pushed over their bound (the reader waits for them to drain).
    pub fn on_frame(
        &mut self,
        key: SessionKey,
        frame: Inbound,
        now: Instant,
        ts_us: u64,
        blocked: &mut Vec<SessionKey>,
    ) -> Flow {
        if let Some(s) = self.sessions.get_mut(key) {
            s.heard(now);
        }
        // A direct message to the user this session last sent to: its name was checked
        // and its home found then (`LastDest`).
        let known_home = match &frame {
            Inbound::Send(v) if v.to_room.is_empty() => self
                .sessions
                .get(key)
                .and_then(|s| s.last_dest.as_deref())
                .and_then(|d| d.home_of(&v.to_user)),
            Inbound::Send(_) => None,
            _ => {
                // (Its weight in the reader's turn: `shard::social::OTHER_FRAME_WORK`.)
                self.social.frames_work += crate::shard::social::OTHER_FRAME_WORK;
                None
            }
        };
        if known_home.is_none() {
            if let Err(e) = ringrouter_proto::names::check_inbound(&frame) {
                self.counters.reject(Status::BadRequest);
                let f = reply::refusal(&frame, Status::BadRequest, &e.to_string());
                self.push_frame(key, &f);
                return Flow::Continue;
            }
        }
        match frame {
            Inbound::Send(v) => {
                self.sender = Some(key);
                let flow = self.on_send(key, v, ts_us, known_home, blocked);
                self.sender = None;
                flow
            }
            Inbound::Other(Kind::Ack(a)) => self.on_ack(key, a),
            Inbound::Other(Kind::Ping(p)) => self.on_ping(key, p),
            Inbound::Other(Kind::Pong(_)) => Flow::Continue,
            other => {
                // The store requests it makes count against the session's
                // `max_requests_in_flight` (`shard::store_link`).
                self.requester = self.session_id(key);
                let flow = self.on_request(key, other, ts_us);
                self.requester = None;
                flow
            }
        }
    }

    /// A request that would leave state under the user's name (a room membership or
    /// room, a contact entry, a read mark), from a session whose user's DeleteAccount is
    /// under way: refused CONFLICT. The deletion read the user's rooms and list when it
    /// began; what such a request made after that outlived the account, and the next
    /// owner of the name inherited it (memberships with the rooms' history, rooms, a
    /// pending contact request).
    fn refused_while_deleting(&mut self, key: SessionKey, frame: &Inbound) -> bool {
        let creates = matches!(
            frame,
            Inbound::Other(
                Kind::CreateRoom(_)
                    | Kind::JoinRoom(_)
                    | Kind::AddMember(_)
                    | Kind::ContactOp(_)
                    | Kind::MarkRead(_)
            )
        );
        let Some(s) = self.sessions.get(key) else {
            return false;
        };
        if !creates
            || !self
                .deleting
                .contains(String::from_utf8_lossy(&s.user).as_ref())
        {
            return false;
        }
        self.counters.reject(Status::Conflict);
        let f = reply::refusal(
            frame,
            Status::Conflict,
            "a deletion of this account is under way",
        );
        self.push_frame(key, &f);
        true
    }

    /// A frame other than Send, Ack, Ping and Pong.
    fn on_request(&mut self, key: SessionKey, frame: Inbound, ts_us: u64) -> Flow {
        if !self.deleting.is_empty() && self.refused_while_deleting(key, &frame) {
            return Flow::Continue;
        }
        match frame {
            Inbound::Other(Kind::Logout(_)) => self.on_logout(key),
            Inbound::Other(Kind::Login(l)) => self.on_login_again(key, l),
            Inbound::Other(Kind::Register(r)) => self.on_register_after_login(key, r),
            Inbound::Other(
                k @ (Kind::CreateRoom(_)
                | Kind::JoinRoom(_)
                | Kind::LeaveRoom(_)
                | Kind::AddMember(_)
                | Kind::RemoveMember(_)
                | Kind::DeleteRoom(_)
                | Kind::ListRooms(_)
                | Kind::RoomInfo(_)),
            ) => {
                let flow = self.on_room_request(key, k);
                self.looked_up = None;
                flow
            }
            Inbound::Other(Kind::DeleteAccount(d)) => {
                self.on_delete_account(key, d.request_id);
                Flow::Continue
            }
            Inbound::Other(Kind::MarkRead(m)) => {
                if !m.to_user.is_empty()
                    && self.dm_gate()
                    && !self.blockers_known(key, std::iter::once(m.to_user.as_bytes()))
                {
                    return Flow::Again;
                }
                self.on_mark_read(key, m, ts_us);
                self.looked_up = None;
                Flow::Continue
            }
            Inbound::Other(Kind::ListUsers(l)) => {
                self.on_list_users(key, l);
                Flow::Continue
            }
            Inbound::Other(Kind::History(h)) => {
                self.on_history(key, h);
                Flow::Continue
            }
            Inbound::Other(Kind::ListConversations(l)) => {
                self.on_list_conversations(key, l);
                Flow::Continue
            }
            Inbound::Other(Kind::ContactOp(c)) => {
                self.on_contact_op(key, c);
                Flow::Continue
            }
            Inbound::Other(Kind::ListContacts(l)) => {
                self.on_list_contacts(key, l);
                Flow::Continue
            }
            Inbound::Other(Kind::SetPresence(p)) => {
                self.on_set_presence(key, p);
                Flow::Continue
            }
            Inbound::Other(Kind::GetPresence(g)) => {
                self.on_get_presence(key, g);
                Flow::Continue
            }
            // `parse_client` returns every Send as `Inbound::Send`; Ack, Ping and Pong
            // are handled by `on_frame`.
            Inbound::Send(_)
            | Inbound::Other(Kind::Send(_) | Kind::Ack(_) | Kind::Ping(_) | Kind::Pong(_))
            | Inbound::Empty => {
                self.push_error(key, Status::BadRequest, "empty or unknown frame kind", 0);
                Flow::Continue
            }
        }
    }
}
