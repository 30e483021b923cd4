//! What the router sends that a caller may want to see: [`Event`], [`Message`].

use bytes::Bytes;
use ringrouter_proto::Status;

/// A message delivered to this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Authenticated sender (stamped by the router).
    pub sender: String,
    /// Room, or None for a direct message.
    pub room: Option<String>,
    /// The payload.
    pub payload: Bytes,
    /// Per-session sequence number.
    pub seq: u64,
    /// Message id (dedupe key).
    pub msg_id: u64,
    /// Router clock at acceptance, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// An ephemeral message (typing indicator and the like): live only, seq 0, not acked.
    pub ephemeral: bool,
    /// A copy of a direct message this user sent from another device (seq 0).
    pub outgoing: bool,
    /// The recipient of an outgoing copy; None otherwise.
    pub to_user: Option<String>,
}

/// Anything the router sends that a caller may want to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message.
    Message(Message),
    /// The answer to a Send that asked for one.
    SendResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// Message id.
        msg_id: u64,
    },
    /// An error frame.
    Error {
        /// Status code.
        code: Status,
        /// Reason.
        reason: String,
        /// Request id (0 if none).
        request_id: u64,
    },
    /// A Pong (answer to [`crate::Client::ping`]).
    Pong(u64),
    /// Something happened to a room this user is (or was) a member of (pushed
    /// by the router, unsolicited).
    Room {
        /// What happened.
        kind: RoomEventKind,
        /// The room.
        room: String,
        /// The user who joined, left or was removed; the owner for
        /// [`RoomEventKind::Deleted`].
        user: String,
        /// Not 0 when the event waited in the offline queue: acked like a message's seq
        /// once handed to the application.
        seq: u64,
    },
    /// A read receipt: someone read a conversation of this user (pushed by the router).
    Receipt(Receipt),
    /// This user's contact list changed (pushed by the router).
    Contact(crate::ContactEvent),
    /// An accepted contact's presence changed (pushed by the router).
    Presence(crate::Presence),
    /// The answer to a contact request ([`crate::Client::contacts`], ...).
    ContactResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// The list's version, and the entries the answer carries.
        changes: crate::ContactChanges,
    },
    /// The answer to SetPresence / GetPresence.
    PresenceResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// GetPresence: the presence.
        presence: Option<crate::Presence>,
    },
    /// The answer to a room request ([`crate::Client::create_room`], ...).
    RoomResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// The room's name (also when it was joined by join code).
        room: String,
        /// The join code (CreateRoom, JoinRoom).
        join_code: String,
        /// The rooms (ListRooms).
        rooms: Vec<String>,
        /// The room's details (RoomInfo).
        info: Option<RoomInfo>,
    },
    /// The answer to an account request ([`crate::Client::register`], ...).
    AccountResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// The user (Register).
        user: String,
        /// The users (ListUsers).
        users: Vec<String>,
    },
    /// The answer to a History request ([`crate::Client::history`]).
    HistoryResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// The messages, oldest first (`seq` 0).
        messages: Vec<Message>,
    },
    /// The answer to ListConversations ([`crate::Client::conversations`]).
    ConversationsResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// Newest last message first.
        conversations: Vec<crate::Conversation>,
    },
}

/// A read receipt ([`crate::Client::mark_read`]): `user` read up to `msg_id` of a room
/// (`room`) or of the direct conversation between `user` and `to_user`. This session's
/// user is the peer, or `user` itself (a receipt from one of its other devices).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// Who read.
    pub user: String,
    /// The room read, or None for a direct conversation.
    pub room: Option<String>,
    /// The other side of a direct conversation; None for a room.
    pub to_user: Option<String>,
    /// The message read up to.
    pub msg_id: u64,
}

/// A room's details ([`crate::Client::room_info`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomInfo {
    /// The room's name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// Its members, in byte order.
    pub members: Vec<String>,
    /// When it was created, µs since the Unix epoch (0 for rooms made before this was kept).
    pub created_us: u64,
    /// Its join code: only the owner is told.
    pub join_code: Option<String>,
}

/// What a [`Event::Room`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomEventKind {
    /// A user joined (or was added).
    Joined,
    /// A user left.
    Left,
    /// A user was removed by the owner.
    Removed,
    /// The owner deleted the room.
    Deleted,
    /// A kind this client does not know (a newer router): the wire value.
    Other(i32),
}

impl RoomEventKind {
    /// From the wire value of `RoomEvent.kind`.
    pub fn from_wire(v: i32) -> RoomEventKind {
        use ringrouter_proto::v1::RoomEventKind as K;
        match K::try_from(v) {
            Ok(K::RoomEventJoined) => RoomEventKind::Joined,
            Ok(K::RoomEventLeft) => RoomEventKind::Left,
            Ok(K::RoomEventRemoved) => RoomEventKind::Removed,
            Ok(K::RoomEventDeleted) => RoomEventKind::Deleted,
            Ok(K::RoomEventUnspecified) | Err(_) => RoomEventKind::Other(v),
        }
    }

    /// "joined", "left", "removed", "deleted" (or "unknown").
    pub fn name(self) -> &'static str {
        match self {
            RoomEventKind::Joined => "joined",
            RoomEventKind::Left => "left",
            RoomEventKind::Removed => "removed",
            RoomEventKind::Deleted => "deleted",
            RoomEventKind::Other(_) => "unknown",
        }
    }
}

impl std::fmt::Display for RoomEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
