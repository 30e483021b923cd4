//! The social layer's client calls (ephemeral sends, ...), for both the blocking
//! [`Client`] and the [`ThreadedClient`]. The frames are built in `core::request`
//! (and `core::social` for the social requests), as for every request.

use ringrouter_proto::send::Target;
use ringrouter_proto::send::{put_send, send_frame_len, SendHeader};

use crate::core::request::{self as req, Frame, SendWait};
use crate::core::{Reply, Request};
use crate::threaded::ThreadedClient;
use crate::{Client, ClientError, RoomInfo};
use ringrouter_proto::v1::{self as pb, client_frame};

fn ephemeral(to: Target<'_>) -> SendHeader<'_> {
    SendHeader {
        ephemeral: true,
        ..SendHeader::to(to)
    }
}

/// MarkRead: answered by a SendResult.
struct MarkRead<'a> {
    to: Target<'a>,
    msg_id: u64,
}

impl Request for MarkRead<'_> {
    type Output = ();
    const NAME: &'static str = "MarkRead";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        let (to_user, room) = match self.to {
            Target::User(u) => (u, ""),
            Target::Room(r) => ("", r),
        };
        Frame::of(client_frame::Kind::MarkRead(pb::MarkRead {
            request_id,
            to_user: to_user.to_owned(),
            room: room.to_owned(),
            msg_id: self.msg_id,
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        matches!(reply, Reply::Sent { .. }).then_some(())
    }
}

impl Client {
    /// Marks the conversation with `to` (a user or a room) read up to message `msg_id`:
    /// the peer's live devices (every member's, for a room) and this user's other live
    /// devices get a [`crate::Receipt`]. FORBIDDEN for a room this user is not in.
    pub fn mark_read(&mut self, to: Target<'_>, msg_id: u64) -> Result<(), ClientError> {
        self.call(MarkRead { to, msg_id })
    }

    /// Creates room `name` (optionally with a password) with `members` besides this
    /// user, its owner. Returns the join code. Each member must exist and be under its
    /// room limit (NOT_FOUND, RATE_LIMITED), and gets a Joined event naming itself.
    pub fn create_room_with(
        &mut self,
        name: &str,
        password: Option<&str>,
        members: &[&str],
    ) -> Result<String, ClientError> {
        self.call(req::CreateRoom {
            name,
            password,
            members,
        })
    }

    /// The owner, members and creation time of `room` (members only, else FORBIDDEN),
    /// and its join code when this user owns it.
    pub fn room_info(&mut self, room: &str) -> Result<RoomInfo, ClientError> {
        self.call(req::RoomInfo { room })
    }

    /// Sends an ephemeral message (a typing indicator, ...) to `to`: delivered to the
    /// live sessions of `to` only, never stored or acked (fire and forget).
    pub fn send_ephemeral(&mut self, to: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.queue_send_with(Target::User(to), payload, false, 0, true);
        self.flush()
    }

    /// [`Client::send_ephemeral`] to every member of `room` (their live sessions).
    pub fn send_room_ephemeral(&mut self, room: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.queue_send_with(Target::Room(room), payload, false, 0, true);
        self.flush()
    }

    /// An ephemeral send that waits for the router's SendResult (OK once routed;
    /// NOT_FOUND / FORBIDDEN for a room). Returns the message id.
    pub fn send_ephemeral_wait(
        &mut self,
        to: Target<'_>,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        self.call(SendWait {
            to,
            payload,
            ephemeral: true,
        })
    }
}

impl ThreadedClient {
    /// [`Client::mark_read`].
    pub fn mark_read(&self, to: Target<'_>, msg_id: u64) -> Result<(), ClientError> {
        self.call(MarkRead { to, msg_id })
    }

    /// [`Client::create_room_with`].
    pub fn create_room_with(
        &self,
        name: &str,
        password: Option<&str>,
        members: &[&str],
    ) -> Result<String, ClientError> {
        self.call(req::CreateRoom {
            name,
            password,
            members,
        })
    }

    /// [`Client::room_info`].
    pub fn room_info(&self, room: &str) -> Result<RoomInfo, ClientError> {
        self.call(req::RoomInfo { room })
    }

    /// Queues an ephemeral message (a typing indicator, ...) for `to` (a user or a
    /// room): delivered to live sessions only, never stored or acked. Waits for room in
    /// the send buffer if needed.
    pub fn send_ephemeral(&self, to: Target<'_>, payload: &[u8]) -> Result<(), ClientError> {
        let h = ephemeral(to);
        let len = send_frame_len(&h, payload.len());
        self.queue_blocking(len, |b| put_send(b, &h, payload), None)
            .map(drop)
    }

    /// An ephemeral send that waits for the router's SendResult (OK once routed;
    /// NOT_FOUND / FORBIDDEN for a room). Returns the message id.
    pub fn send_ephemeral_wait(&self, to: Target<'_>, payload: &[u8]) -> Result<u64, ClientError> {
        self.call(SendWait {
            to,
            payload,
            ephemeral: true,
        })
    }
}
