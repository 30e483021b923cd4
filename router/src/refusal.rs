//! The answer to a request refused before it is handled (a name that breaks the name
//! rule, a request before login): each request gets the result frame it would have got
//! (LoginResult, SendResult when asked for, RoomResult, AccountResult), echoing its
//! request id; anything else gets an Error frame.

use ringrouter_proto::fast::Inbound;
use ringrouter_proto::v1::{
    client_frame::Kind, server_frame, AccountResult, Error as ErrorFrame, LoginResult, RoomResult,
    SendResult, ServerFrame,
};
use ringrouter_proto::Status;

/// The frame that refuses `frame` with `status` and `reason`.
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
            Kind::Register(r) => account(r.request_id),
            Kind::DeleteAccount(d) => account(d.request_id),
            Kind::ListUsers(l) => account(l.request_id),
            Kind::Ack(_) | Kind::Ping(_) | Kind::Pong(_) | Kind::Logout(_) => error(0),
        },
    };
    ServerFrame { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringrouter_proto::fast::SendView;
    use ringrouter_proto::v1::{AddMember, Login, Register};

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
}
