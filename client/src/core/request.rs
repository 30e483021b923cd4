//! Every request a client makes, once: the frame it is sent as, and what its
//! OK answer means to the caller. Both clients run these through their own
//! I/O (`Client::call`, `ThreadedClient::call`).

use bytes::BufMut;
use prost::Message as _;
use ringrouter_proto::codec::{put_varint, varint_len};
use ringrouter_proto::send::{put_send, send_frame_len, SendHeader, Target};
use ringrouter_proto::v1::{self as pb, client_frame, ClientFrame};

use super::Reply;

/// One frame to write: a prost message, or a Send encoded by hand (so that its
/// payload is copied once, into the write buffer).
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// Any frame but Send.
    Proto(ClientFrame),
    /// A Send and its payload.
    Send(SendHeader<'a>, &'a [u8]),
}

impl Frame<'_> {
    /// A frame of this kind.
    pub(crate) fn of(kind: client_frame::Kind) -> Frame<'static> {
        Frame::Proto(ClientFrame { kind: Some(kind) })
    }

    /// Bytes [`Frame::put`] writes (length prefix included).
    pub(crate) fn len(&self) -> usize {
        match self {
            Frame::Proto(f) => {
                let n = f.encoded_len();
                varint_len(n as u64) + n
            }
            Frame::Send(h, payload) => send_frame_len(h, payload.len()),
        }
    }

    /// Appends the length-delimited frame.
    pub(crate) fn put(&self, out: &mut impl BufMut) {
        match self {
            Frame::Proto(f) => {
                put_varint(out, f.encoded_len() as u64);
                // Cannot fail: a BufMut grows (BytesMut) or the caller sized it.
                let _ = f.encode(out);
            }
            Frame::Send(h, payload) => put_send(out, h, payload),
        }
    }
}

/// A request that the router answers (matched by request id).
pub(crate) trait Request {
    /// What the caller gets from an OK answer.
    type Output;
    /// The frame's name, for errors.
    const NAME: &'static str;
    /// Whether an Error frame without a request id answers it (before Login the
    /// router does not say which request it refuses).
    const ANY_ERROR: bool = false;
    /// The frame that carries it with `request_id`.
    fn frame(&self, request_id: u64) -> Frame<'_>;
    /// The caller's value from the OK answer; None: an answer of the wrong kind.
    fn output(self, reply: Reply) -> Option<Self::Output>;
}

/// `Send{want_result}`: returns the message id.
pub(crate) struct SendWait<'a> {
    pub(crate) to: Target<'a>,
    pub(crate) payload: &'a [u8],
    pub(crate) ephemeral: bool,
}

impl Request for SendWait<'_> {
    type Output = u64;
    const NAME: &'static str = "Send";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        let h = SendHeader {
            to: self.to,
            request_id,
            want_result: true,
            msg_id: 0,
            ephemeral: self.ephemeral,
            client_seq: 0,
        };
        Frame::Send(h, self.payload)
    }
    fn output(self, reply: Reply) -> Option<u64> {
        match reply {
            Reply::Sent { msg_id } => Some(msg_id),
            _ => None,
        }
    }
}

/// CreateRoom: returns the join code.
pub(crate) struct CreateRoom<'a> {
    pub(crate) name: &'a str,
    pub(crate) password: Option<&'a str>,
    /// Initial members besides the owner.
    pub(crate) members: &'a [&'a str],
}

impl Request for CreateRoom<'_> {
    type Output = String;
    const NAME: &'static str = "CreateRoom";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::CreateRoom(pb::CreateRoom {
            request_id,
            name: self.name.to_owned(),
            password: self.password.unwrap_or_default().to_owned(),
            members: self.members.iter().map(|m| (*m).to_owned()).collect(),
        }))
    }
    fn output(self, reply: Reply) -> Option<String> {
        match reply {
            Reply::Room(r) => Some(r.join_code),
            _ => None,
        }
    }
}

/// JoinRoom (by name or join code): returns the room's name.
pub(crate) struct JoinRoom<'a> {
    pub(crate) name_or_code: &'a str,
    pub(crate) password: Option<&'a str>,
}

impl Request for JoinRoom<'_> {
    type Output = String;
    const NAME: &'static str = "JoinRoom";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::JoinRoom(pb::JoinRoom {
            request_id,
            room: self.name_or_code.to_owned(),
            password: self.password.unwrap_or_default().to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<String> {
        match reply {
            Reply::Room(r) => Some(if r.room.is_empty() {
                self.name_or_code.to_owned()
            } else {
                r.room
            }),
            _ => None,
        }
    }
}

/// The answer of a room request that returns nothing but its status.
fn room_done(reply: Reply) -> Option<()> {
    matches!(reply, Reply::Room(_)).then_some(())
}

/// LeaveRoom.
pub(crate) struct LeaveRoom<'a> {
    pub(crate) room: &'a str,
}

impl Request for LeaveRoom<'_> {
    type Output = ();
    const NAME: &'static str = "LeaveRoom";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::LeaveRoom(pb::LeaveRoom {
            request_id,
            room: self.room.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        room_done(reply)
    }
}

/// AddMember (owner only).
pub(crate) struct AddMember<'a> {
    pub(crate) room: &'a str,
    pub(crate) user: &'a str,
}

impl Request for AddMember<'_> {
    type Output = ();
    const NAME: &'static str = "AddMember";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::AddMember(pb::AddMember {
            request_id,
            room: self.room.to_owned(),
            user: self.user.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        room_done(reply)
    }
}

/// RemoveMember (owner only).
pub(crate) struct RemoveMember<'a> {
    pub(crate) room: &'a str,
    pub(crate) user: &'a str,
}

impl Request for RemoveMember<'_> {
    type Output = ();
    const NAME: &'static str = "RemoveMember";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::RemoveMember(pb::RemoveMember {
            request_id,
            room: self.room.to_owned(),
            user: self.user.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        room_done(reply)
    }
}

/// DeleteRoom (owner only).
pub(crate) struct DeleteRoom<'a> {
    pub(crate) room: &'a str,
}

impl Request for DeleteRoom<'_> {
    type Output = ();
    const NAME: &'static str = "DeleteRoom";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::DeleteRoom(pb::DeleteRoom {
            request_id,
            room: self.room.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        room_done(reply)
    }
}

/// ListRooms: the rooms this user is a member of.
pub(crate) struct ListRooms;

impl Request for ListRooms {
    type Output = Vec<String>;
    const NAME: &'static str = "ListRooms";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::ListRooms(pb::ListRooms { request_id }))
    }
    fn output(self, reply: Reply) -> Option<Vec<String>> {
        match reply {
            Reply::Room(r) => Some(r.rooms),
            _ => None,
        }
    }
}

/// ListUsers: user names matching a glob, at most `limit` (0: the router's page).
pub(crate) struct ListUsers<'a> {
    pub(crate) pattern: &'a str,
    pub(crate) limit: u32,
}

impl Request for ListUsers<'_> {
    type Output = Vec<String>;
    const NAME: &'static str = "ListUsers";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::ListUsers(pb::ListUsers {
            request_id,
            pattern: self.pattern.to_owned(),
            limit: self.limit,
        }))
    }
    fn output(self, reply: Reply) -> Option<Vec<String>> {
        match reply {
            Reply::Account(r) => Some(r.users),
            _ => None,
        }
    }
}

/// DeleteAccount: this session's user.
pub(crate) struct DeleteAccount;

impl Request for DeleteAccount {
    type Output = ();
    const NAME: &'static str = "DeleteAccount";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::DeleteAccount(pb::DeleteAccount {
            request_id,
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        match reply {
            Reply::Account(_) => Some(()),
            _ => None,
        }
    }
}

/// Register, on a connection that is not logged in: returns the user name as
/// registered.
pub(crate) struct Register<'a> {
    pub(crate) user: &'a str,
    pub(crate) password: &'a str,
}

impl Request for Register<'_> {
    type Output = String;
    const NAME: &'static str = "Register";
    const ANY_ERROR: bool = true;
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::Register(pb::Register {
            request_id,
            user: self.user.to_owned(),
            password: self.password.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<String> {
        match reply {
            Reply::Account(r) if r.user.is_empty() => Some(self.user.to_owned()),
            Reply::Account(r) => Some(r.user),
            _ => None,
        }
    }
}

/// Ping, answered by the Pong with the same nonce (the request id).
pub(crate) struct PingRequest;

impl Request for PingRequest {
    type Output = ();
    const NAME: &'static str = "Ping";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::Ping(pb::Ping { nonce: request_id }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        matches!(reply, Reply::Pong).then_some(())
    }
}

/// RoomInfo: the room's details.
pub(crate) struct RoomInfo<'a> {
    pub(crate) room: &'a str,
}

impl Request for RoomInfo<'_> {
    type Output = crate::RoomInfo;
    const NAME: &'static str = "RoomInfo";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::RoomInfo(pb::RoomInfo {
            request_id,
            room: self.room.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<crate::RoomInfo> {
        match reply {
            Reply::Room(r) => r.info,
            _ => None,
        }
    }
}
