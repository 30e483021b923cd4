//! Every frame the router answers with, built in one place: pure functions from a
//! request's id, a [`Status`] and a reason to a [`ServerFrame`]. The router uses them;
//! clients and tests may use them to build the frames they expect.
//!
//! - [`error`], [`pong`], [`ping`]: frames without a request of their own.
//! - [`send_result`] (and [`send_status_reason`], the reason that goes with a status),
//!   [`login_result`], [`room_result`], [`account_result`]: the result of each request.
//! - [`refusal`]: the result a request gets when it is refused before it is handled
//!   (a name that breaks the name rule, a request before login).
//! - [`request_id_of`]: the request id a client frame carries.

use crate::fast::Inbound;
use crate::v1::{
    client_frame::Kind, server_frame, AccountResult, ContactEntry, ContactEvent, ContactResult,
    Conversation, ConversationsResult, Deliver, Error as ErrorFrame, HistoryResult, LoginResult,
    Ping, Pong, Presence, PresenceResult, RoomEvent, RoomResult, SendResult, ServerFrame,
};
use crate::Status;

fn frame(kind: server_frame::Kind) -> ServerFrame {
    ServerFrame { kind: Some(kind) }
}

/// An `Error{code, reason, request_id}` frame.
pub fn error(code: Status, reason: impl Into<String>, request_id: u64) -> ServerFrame {
    frame(server_frame::Kind::Error(ErrorFrame {
        code: code as i32,
        reason: reason.into(),
        request_id,
    }))
}

/// A `Pong` answering a client's `Ping{nonce}`.
pub fn pong(nonce: u64) -> ServerFrame {
    frame(server_frame::Kind::Pong(Pong { nonce }))
}

/// A `SendAck{up_to_client_seq}`: the router took every Send of the session numbered
/// up to it (resume).
pub fn send_ack(up_to_client_seq: u64) -> ServerFrame {
    frame(server_frame::Kind::SendAck(crate::v1::SendAck {
        up_to_client_seq,
    }))
}

/// A heartbeat `Ping` from the router.
pub fn ping(nonce: u64) -> ServerFrame {
    frame(server_frame::Kind::Ping(Ping { nonce }))
}

/// A `Deliver` frame built whole (not on the hot path): an unsequenced delivery
/// (seq 0, nothing to ack) such as an ephemeral message or a copy of one of the
/// user's own direct messages for its other devices.
pub fn deliver(d: crate::v1::Deliver) -> ServerFrame {
    frame(server_frame::Kind::Deliver(d))
}

/// A `Receipt` frame.
pub fn receipt(r: crate::v1::Receipt) -> ServerFrame {
    frame(server_frame::Kind::Receipt(r))
}

/// A `RoomEvent` frame.
pub fn room_event(event: RoomEvent) -> ServerFrame {
    frame(server_frame::Kind::RoomEvent(event))
}

/// A `SendResult` with an explicit reason.
pub fn send_result(request_id: u64, status: Status, reason: &str, msg_id: u64) -> ServerFrame {
    frame(server_frame::Kind::SendResult(SendResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        msg_id,
    }))
}

/// The reason that goes with a SendResult status when nothing more specific is known.
pub fn send_status_reason(status: Status) -> &'static str {
    match status {
        Status::Ok => "",
        // (A room's NOT_FOUND says "no such room" where it is decided.)
        Status::NotFound => "no such user",
        Status::RateLimited => "the recipient's offline queue is full",
        Status::Unavailable => "the store is shut down or its disk is full",
        Status::Forbidden => "not a member of the room",
        _ => "storage error",
    }
}

/// A `SendResult` whose reason is [`send_status_reason`]`(status)`.
pub fn send_status(request_id: u64, status: Status, msg_id: u64) -> ServerFrame {
    send_result(request_id, status, send_status_reason(status), msg_id)
}

/// A `LoginResult` without session details (a refused login); a successful one is
/// built by the router with every field.
pub fn login_result(request_id: u64, status: Status, reason: impl Into<String>) -> LoginResult {
    LoginResult {
        request_id,
        status: status as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

/// [`login_result`] as a frame.
pub fn login_result_frame(
    request_id: u64,
    status: Status,
    reason: impl Into<String>,
) -> ServerFrame {
    frame(server_frame::Kind::LoginResult(login_result(
        request_id, status, reason,
    )))
}

/// A `RoomResult` about one room (`join_code`: a created room's code, else empty).
pub fn room_result(
    request_id: u64,
    status: Status,
    reason: &str,
    room: &str,
    join_code: &str,
) -> ServerFrame {
    frame(server_frame::Kind::RoomResult(RoomResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        room: room.to_owned(),
        join_code: join_code.to_owned(),
        ..Default::default()
    }))
}

/// A successful `RoomResult` of RoomInfo (`join_code`: empty unless the owner asks).
pub fn room_info(
    request_id: u64,
    room: &str,
    owner: &str,
    members: Vec<String>,
    created_us: u64,
    join_code: &str,
) -> ServerFrame {
    frame(server_frame::Kind::RoomResult(RoomResult {
        request_id,
        status: Status::Ok as i32,
        room: room.to_owned(),
        join_code: join_code.to_owned(),
        owner: owner.to_owned(),
        members,
        created_us,
        ..Default::default()
    }))
}

/// A successful `RoomResult` of ListRooms.
pub fn room_list(request_id: u64, rooms: Vec<String>) -> ServerFrame {
    frame(server_frame::Kind::RoomResult(RoomResult {
        request_id,
        status: Status::Ok as i32,
        rooms,
        ..Default::default()
    }))
}

/// An `AccountResult` (`user`: the registered name, `users`: a ListUsers page).
pub fn account_result(
    request_id: u64,
    status: Status,
    reason: &str,
    user: String,
    users: Vec<String>,
) -> AccountResult {
    AccountResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        user,
        users,
    }
}

/// [`account_result`] as a frame.
pub fn account_frame(result: AccountResult) -> ServerFrame {
    frame(server_frame::Kind::AccountResult(result))
}

/// A `HistoryResult` (`messages` oldest first).
pub fn history_result(
    request_id: u64,
    status: Status,
    reason: &str,
    messages: Vec<Deliver>,
) -> ServerFrame {
    frame(server_frame::Kind::HistoryResult(HistoryResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        messages,
    }))
}

/// A `ConversationsResult` (newest first).
pub fn conversations_result(
    request_id: u64,
    status: Status,
    reason: &str,
    conversations: Vec<Conversation>,
) -> ServerFrame {
    frame(server_frame::Kind::ConversationsResult(
        ConversationsResult {
            request_id,
            status: status as i32,
            reason: reason.to_owned(),
            conversations,
        },
    ))
}

/// A `ContactResult` (`entries`: the changed entry, the whole list or the changes).
pub fn contact_result(
    request_id: u64,
    status: Status,
    reason: &str,
    version: u64,
    entries: Vec<ContactEntry>,
    full: bool,
) -> ServerFrame {
    frame(server_frame::Kind::ContactResult(ContactResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        version,
        entries,
        full,
    }))
}

/// A `ContactEvent` frame.
pub fn contact_event(event: ContactEvent) -> ServerFrame {
    frame(server_frame::Kind::ContactEvent(event))
}

/// A pushed `Presence` frame.
pub fn presence(p: Presence) -> ServerFrame {
    frame(server_frame::Kind::Presence(p))
}

/// A `PresenceResult` (`presence`: GetPresence's answer).
pub fn presence_result(
    request_id: u64,
    status: Status,
    reason: &str,
    presence: Option<Presence>,
) -> ServerFrame {
    frame(server_frame::Kind::PresenceResult(PresenceResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        presence,
    }))
}

/// The request id of a client request (0 for frames without one).
pub fn request_id_of(kind: &Kind) -> u64 {
    match kind {
        Kind::Login(f) => f.request_id,
        Kind::Send(f) => f.request_id,
        Kind::CreateRoom(f) => f.request_id,
        Kind::JoinRoom(f) => f.request_id,
        Kind::LeaveRoom(f) => f.request_id,
        Kind::AddMember(f) => f.request_id,
        Kind::RemoveMember(f) => f.request_id,
        Kind::DeleteRoom(f) => f.request_id,
        Kind::ListRooms(f) => f.request_id,
        Kind::RoomInfo(f) => f.request_id,
        Kind::MarkRead(f) => f.request_id,
        Kind::Register(f) => f.request_id,
        Kind::DeleteAccount(f) => f.request_id,
        Kind::ListUsers(f) => f.request_id,
        Kind::History(f) => f.request_id,
        Kind::ListConversations(f) => f.request_id,
        Kind::ContactOp(f) => f.request_id,
        Kind::ListContacts(f) => f.request_id,
        Kind::SetPresence(f) => f.request_id,
        Kind::GetPresence(f) => f.request_id,
        Kind::Ack(_) | Kind::Ping(_) | Kind::Pong(_) | Kind::Logout(_) => 0,
    }
}

/// The frame that refuses `frame` with `status` and `reason` before it is handled:
/// each request gets the result frame it would have got (LoginResult, SendResult when
/// asked for, RoomResult, AccountResult), echoing its request id; anything else gets an
/// Error frame.
pub fn refusal(frame: &Inbound, status: Status, reason: &str) -> ServerFrame {
    let code = status as i32;
    let reason = reason.to_owned();
    let room = |request_id: u64, room: &str| {
        server_frame::Kind::RoomResult(RoomResult {
            request_id,
            status: code,
            reason: reason.clone(),
            room: room.to_owned(),
            ..Default::default()
        })
    };
    let account = |request_id: u64| {
        server_frame::Kind::AccountResult(AccountResult {
            request_id,
            status: code,
            reason: reason.clone(),
            ..Default::default()
        })
    };
    let contact = |request_id: u64| {
        server_frame::Kind::ContactResult(ContactResult {
            request_id,
            status: code,
            reason: reason.clone(),
            ..Default::default()
        })
    };
    let presence = |request_id: u64| {
        server_frame::Kind::PresenceResult(PresenceResult {
            request_id,
            status: code,
            reason: reason.clone(),
            ..Default::default()
        })
    };
    let error = |request_id: u64| {
        server_frame::Kind::Error(ErrorFrame {
            code,
            reason: reason.clone(),
            request_id,
        })
    };
    let kind = match frame {
        Inbound::Send(s) if s.want_result => server_frame::Kind::SendResult(SendResult {
            request_id: s.request_id,
            status: code,
            reason: reason.clone(),
            msg_id: s.msg_id,
        }),
        Inbound::Send(s) => error(s.request_id),
        Inbound::Empty => error(0),
        Inbound::Other(k) => match k {
            Kind::Login(l) => server_frame::Kind::LoginResult(LoginResult {
                request_id: l.request_id,
                status: code,
                reason: reason.clone(),
                ..Default::default()
            }),
            Kind::Send(s) if s.want_result => server_frame::Kind::SendResult(SendResult {
                request_id: s.request_id,
                status: code,
                reason: reason.clone(),
                msg_id: s.msg_id,
            }),
            Kind::Send(s) => error(s.request_id),
            Kind::CreateRoom(c) => room(c.request_id, &c.name),
            Kind::JoinRoom(j) => room(j.request_id, &j.room),
            Kind::LeaveRoom(l) => room(l.request_id, &l.room),
            Kind::AddMember(a) => room(a.request_id, &a.room),
            Kind::RemoveMember(r) => room(r.request_id, &r.room),
            Kind::DeleteRoom(d) => room(d.request_id, &d.room),
            Kind::ListRooms(l) => room(l.request_id, ""),
            Kind::RoomInfo(i) => room(i.request_id, &i.room),
            Kind::MarkRead(m) => server_frame::Kind::SendResult(SendResult {
                request_id: m.request_id,
                status: code,
                reason: reason.clone(),
                msg_id: m.msg_id,
            }),
            Kind::Register(r) => account(r.request_id),
            Kind::DeleteAccount(d) => account(d.request_id),
            Kind::ListUsers(l) => account(l.request_id),
            Kind::History(h) => server_frame::Kind::HistoryResult(HistoryResult {
                request_id: h.request_id,
                status: code,
                reason: reason.clone(),
                ..Default::default()
            }),
            Kind::ListConversations(l) => {
                server_frame::Kind::ConversationsResult(ConversationsResult {
                    request_id: l.request_id,
                    status: code,
                    reason: reason.clone(),
                    ..Default::default()
                })
            }
            Kind::ContactOp(c) => contact(c.request_id),
            Kind::ListContacts(l) => contact(l.request_id),
            Kind::SetPresence(p) => presence(p.request_id),
            Kind::GetPresence(p) => presence(p.request_id),
            Kind::Ack(_) | Kind::Ping(_) | Kind::Pong(_) | Kind::Logout(_) => error(0),
        },
    };
    ServerFrame { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::SendView;
    use crate::v1::{AddMember, Login, Register};

    fn kind(f: ServerFrame) -> server_frame::Kind {
        f.kind.unwrap()
    }

    #[test]
    fn each_request_gets_its_own_result() {
        let bad = Status::BadRequest;
        let login = Inbound::Other(Kind::Login(Login {
            request_id: 4,
            ..Default::default()
        }));
        let server_frame::Kind::LoginResult(l) = kind(refusal(&login, bad, "user: is empty"))
        else {
            panic!()
        };
        assert_eq!(
            (l.request_id, l.status, l.reason.as_str()),
            (4, bad as i32, "user: is empty")
        );
        let reg = Inbound::Other(Kind::Register(Register {
            request_id: 5,
            ..Default::default()
        }));
        assert!(matches!(
            kind(refusal(&reg, bad, "x")),
            server_frame::Kind::AccountResult(a) if a.request_id == 5 && a.status == bad as i32
        ));
        let add = Inbound::Other(Kind::AddMember(AddMember {
            request_id: 6,
            room: "lobby".into(),
            user: "a b".into(),
        }));
        assert!(matches!(
            kind(refusal(&add, bad, "x")),
            server_frame::Kind::RoomResult(r) if r.request_id == 6 && r.room == "lobby"
        ));
        let send = |want_result| {
            Inbound::Send(SendView {
                request_id: 7,
                want_result,
                msg_id: 9,
                ..Default::default()
            })
        };
        assert!(matches!(
            kind(refusal(&send(true), bad, "x")),
            server_frame::Kind::SendResult(s) if s.request_id == 7 && s.msg_id == 9
        ));
        assert!(matches!(
            kind(refusal(&send(false), bad, "x")),
            server_frame::Kind::Error(e) if e.request_id == 7 && e.code == bad as i32
        ));
    }

    #[test]
    fn send_status_carries_the_reason_of_its_status() {
        let server_frame::Kind::SendResult(r) = kind(send_status(3, Status::NotFound, 8)) else {
            panic!()
        };
        assert_eq!(
            (r.request_id, r.msg_id, r.reason.as_str()),
            (3, 8, "no such user")
        );
    }
}
