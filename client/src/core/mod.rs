//! The session core: everything a client decides without a socket.
//!
//! - request ids ([`RequestIds`]) and the frame of every request
//!   ([`request`]: encoded once, for both clients);
//! - what an incoming frame is ([`decode`]: a message, an answer, an event, a
//!   ping to answer, the login result);
//! - which answer belongs to which waiting request ([`Pending`]);
//! - when to ack, and what ([`AckPolicy`], [`Acks`]): cumulatively, and only
//!   messages already handed to the application.
//!
//! [`crate::Client`] (blocking) and [`crate::threaded::ThreadedClient`] are I/O
//! drivers around these pieces: bytes in, events and answers out.

pub(crate) mod request;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use ringrouter_proto::codec::decode_server;
use ringrouter_proto::fast::{parse_server, ServerView};
use ringrouter_proto::v1::{client_frame, server_frame, Ack, LoginResult, Logout, Pong};
use ringrouter_proto::Status;

pub(crate) use request::{Frame, Request};

use crate::{ClientError, Event, Message, RoomEventKind, RoomInfo};

/// The router's status code from its wire value (unknown: `Unspecified`).
pub(crate) fn status(v: i32) -> Status {
    Status::try_from(v).unwrap_or(Status::Unspecified)
}

/// Request ids of one connection, from `first` upwards (also the nonces of pings).
#[derive(Debug)]
pub(crate) struct RequestIds(AtomicU64);

impl RequestIds {
    pub(crate) fn starting_at(first: u64) -> Self {
        RequestIds(AtomicU64::new(first))
    }

    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// An OK answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// SendResult.
    Sent {
        /// The message id.
        msg_id: u64,
    },
    /// RoomResult.
    Room(RoomReply),
    /// AccountResult.
    Account(AccountReply),
    /// Pong.
    Pong,
    /// HistoryResult.
    History(Vec<Message>),
    /// ConversationsResult.
    Conversations(Vec<crate::Conversation>),
    /// ContactResult.
    Contacts(crate::ContactChanges),
    /// PresenceResult.
    Presence(Option<crate::Presence>),
}

/// An OK answer to a room request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomReply {
    pub(crate) room: String,
    pub(crate) join_code: String,
    pub(crate) rooms: Vec<String>,
    pub(crate) info: Option<RoomInfo>,
}

/// An OK answer to an account request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccountReply {
    pub(crate) user: String,
    pub(crate) users: Vec<String>,
}

/// How a request ended: its OK answer, or the router's refusal
/// ([`ClientError::Router`]).
pub(crate) type Answer = Result<Reply, ClientError>;

/// The caller's value from how request `request_id` ended.
pub(crate) fn finish<R: Request>(
    req: R,
    request_id: u64,
    answer: Answer,
) -> Result<R::Output, ClientError> {
    req.output(answer?)
        .ok_or_else(|| ClientError::unexpected_answer(R::NAME, request_id))
}

/// What one frame from the router is.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Something for the application (or, if it answers one, for a waiting request).
    Event(Event),
    /// A heartbeat: answer with [`put_pong`].
    Ping(u64),
    /// The answer to Login.
    Login(LoginResult),
    /// Resume: the router took every Send numbered up to this client_seq.
    SendAck(u64),
    /// An empty frame (a newer router's frame kind).
    Nothing,
}

/// Decodes one frame body. Delivers (the hot path) are read in place by the
/// fast parser; the payload stays a slice of `body`.
pub(crate) fn decode(body: Bytes) -> Result<Inbound, ClientError> {
    let protocol = |e: ringrouter_proto::FrameError| ClientError::Protocol(e.to_string());
    if let ServerView::Deliver {
        seq,
        from_user,
        to_room,
        payload,
        server_ts_us,
        msg_id,
    } = parse_server(&body).map_err(protocol)?
    {
        return Ok(Inbound::Event(Event::Message(Message {
            sender: String::from_utf8_lossy(from_user).into_owned(),
            room: if to_room.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(to_room).into_owned())
            },
            payload: body.slice_ref(payload),
            seq,
            msg_id,
            timestamp_us: server_ts_us,
            ephemeral: false,
            outgoing: false,
            to_user: None,
        })));
    }
    let Some(kind) = decode_server(body).map_err(protocol)?.kind else {
        return Ok(Inbound::Nothing);
    };
    Ok(Inbound::Event(match kind {
        server_frame::Kind::Ping(p) => return Ok(Inbound::Ping(p.nonce)),
        server_frame::Kind::LoginResult(r) => return Ok(Inbound::Login(r)),
        server_frame::Kind::SendAck(a) => return Ok(Inbound::SendAck(a.up_to_client_seq)),
        server_frame::Kind::SendResult(r) => Event::SendResult {
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            msg_id: r.msg_id,
        },
        server_frame::Kind::Error(e) => Event::Error {
            code: status(e.code),
            reason: e.reason,
            request_id: e.request_id,
        },
        server_frame::Kind::Pong(p) => Event::Pong(p.nonce),
        server_frame::Kind::RoomResult(r) => Event::RoomResult {
            info: (!r.owner.is_empty()).then(|| RoomInfo {
                name: r.room.clone(),
                owner: r.owner,
                members: r.members,
                created_us: r.created_us,
                join_code: Some(r.join_code.clone()).filter(|c| !c.is_empty()),
            }),
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            room: r.room,
            join_code: r.join_code,
            rooms: r.rooms,
        },
        server_frame::Kind::Receipt(r) => Event::Receipt(crate::Receipt {
            user: r.user,
            room: Some(r.room).filter(|x| !x.is_empty()),
            to_user: Some(r.to_user).filter(|x| !x.is_empty()),
            msg_id: r.msg_id,
        }),
        server_frame::Kind::RoomEvent(e) => Event::Room {
            kind: RoomEventKind::from_wire(e.kind),
            room: e.room,
            user: e.user,
            seq: e.seq,
        },
        server_frame::Kind::AccountResult(r) => Event::AccountResult {
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            user: r.user,
            users: r.users,
        },
        // Taken by the fast parser above, unless it is ephemeral or an outgoing copy.
        server_frame::Kind::Deliver(d) => Event::Message(message(d)),
        server_frame::Kind::HistoryResult(r) => Event::HistoryResult {
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            messages: r.messages.into_iter().map(message).collect(),
        },
        server_frame::Kind::ContactResult(mut r) => Event::ContactResult {
            request_id: r.request_id,
            status: status(r.status),
            changes: crate::contacts::changes(&mut r),
            reason: r.reason,
        },
        server_frame::Kind::ContactEvent(e) => Event::Contact(e.into()),
        server_frame::Kind::Presence(p) => Event::Presence(p.into()),
        server_frame::Kind::PresenceResult(r) => Event::PresenceResult {
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            presence: r.presence.map(Into::into),
        },
        server_frame::Kind::ConversationsResult(r) => Event::ConversationsResult {
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            conversations: r
                .conversations
                .into_iter()
                .map(crate::history::conversation)
                .collect(),
        },
    }))
}

/// A decoded Deliver as a [`Message`].
pub(crate) fn message(d: ringrouter_proto::v1::Deliver) -> Message {
    Message {
        sender: d.from_user,
        room: Some(d.to_room).filter(|r| !r.is_empty()),
        payload: d.payload,
        seq: d.seq,
        msg_id: d.msg_id,
        timestamp_us: d.server_ts_us,
        ephemeral: d.ephemeral,
        outgoing: d.outgoing,
        to_user: Some(d.to_user).filter(|u| !u.is_empty()),
    }
}

/// The login's outcome from its LoginResult, or from an Error frame before it.
pub(crate) fn login_outcome(r: LoginResult) -> Result<LoginResult, ClientError> {
    match status(r.status) {
        Status::Ok => Ok(r),
        code => Err(ClientError::Auth {
            code,
            reason: r.reason,
        }),
    }
}

/// The request `ev` would answer (for a Pong, its nonce), if it is an answer.
fn answer_id(ev: &Event) -> Option<u64> {
    match ev {
        Event::SendResult { request_id, .. }
        | Event::RoomResult { request_id, .. }
        | Event::AccountResult { request_id, .. }
        | Event::HistoryResult { request_id, .. }
        | Event::ConversationsResult { request_id, .. }
        | Event::ContactResult { request_id, .. }
        | Event::PresenceResult { request_id, .. }
        | Event::Error { request_id, .. } => Some(*request_id),
        Event::Pong(nonce) => Some(*nonce),
        Event::Message(_)
        | Event::Room { .. }
        | Event::Receipt(_)
        | Event::Contact(_)
        | Event::Presence(_) => None,
    }
}

/// How the request that `ev` answers ended (None: `ev` is no answer).
pub(crate) fn into_answer(ev: Event) -> Option<Answer> {
    let (request_id, status, reason, reply) = match ev {
        Event::SendResult {
            request_id,
            status,
            reason,
            msg_id,
        } => (request_id, status, reason, Reply::Sent { msg_id }),
        Event::RoomResult {
            request_id,
            status,
            reason,
            room,
            join_code,
            rooms,
            info,
        } => (
            request_id,
            status,
            reason,
            Reply::Room(RoomReply {
                room,
                join_code,
                rooms,
                info,
            }),
        ),
        Event::AccountResult {
            request_id,
            status,
            reason,
            user,
            users,
        } => (
            request_id,
            status,
            reason,
            Reply::Account(AccountReply { user, users }),
        ),
        Event::HistoryResult {
            request_id,
            status,
            reason,
            messages,
        } => (request_id, status, reason, Reply::History(messages)),
        Event::ConversationsResult {
            request_id,
            status,
            reason,
            conversations,
        } => (
            request_id,
            status,
            reason,
            Reply::Conversations(conversations),
        ),
        Event::Error {
            code,
            reason,
            request_id,
        } => {
            // An Error frame reporting OK would be a router bug; still a failure.
            let code = if code == Status::Ok {
                Status::Unspecified
            } else {
                code
            };
            return Some(Err(ClientError::Router {
                code,
                reason,
                request_id,
            }));
        }
        Event::Pong(_) => return Some(Ok(Reply::Pong)),
        Event::ContactResult {
            request_id,
            status,
            reason,
            changes,
        } => (request_id, status, reason, Reply::Contacts(changes)),
        Event::PresenceResult {
            request_id,
            status,
            reason,
            presence,
        } => (request_id, status, reason, Reply::Presence(presence)),
        Event::Message(_)
        | Event::Room { .. }
        | Event::Receipt(_)
        | Event::Contact(_)
        | Event::Presence(_) => return None,
    };
    Some(if status == Status::Ok {
        Ok(reply)
    } else {
        Err(ClientError::Router {
            code: status,
            reason,
            request_id,
        })
    })
}

/// Requests waiting for their answers, matched by request id.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// request id -> its answer once it came.
    slots: HashMap<u64, Option<Answer>>,
    /// A request that an Error frame without a request id answers too.
    any_error: Option<u64>,
}

impl Pending {
    /// Starts waiting for `request_id`'s answer.
    pub(crate) fn insert(&mut self, request_id: u64, any_error: bool) {
        self.slots.insert(request_id, None);
        if any_error {
            self.any_error = Some(request_id);
        }
    }

    /// Stops waiting for `request_id` (answered, timed out or failed).
    pub(crate) fn remove(&mut self, request_id: u64) {
        self.slots.remove(&request_id);
        if self.any_error == Some(request_id) {
            self.any_error = None;
        }
    }

    /// `request_id`'s answer, if it came (taken: asked again, it is None).
    pub(crate) fn take(&mut self, request_id: u64) -> Option<Answer> {
        self.slots.get_mut(&request_id).and_then(Option::take)
    }

    /// Offers `ev` to the waiting requests: an answer to one of them is kept for
    /// it (None returned); anything else comes back for the application. An
    /// Error frame without a request id answers the request that accepts one.
    pub(crate) fn offer(&mut self, mut ev: Event) -> Option<Event> {
        if self.slots.is_empty() {
            return Some(ev);
        }
        let Some(mut id) = answer_id(&ev) else {
            return Some(ev);
        };
        if let (0, Event::Error { request_id, .. }) = (id, &mut ev) {
            id = self.any_error.unwrap_or(0);
            *request_id = id;
        }
        match self.slots.get_mut(&id) {
            Some(slot) if id != 0 => {
                *slot = into_answer(ev);
                None
            }
            _ => Some(ev),
        }
    }
}

/// When a session acks: cumulatively, every `every` messages handed to the
/// application (0: never by count) or once `interval` passed since the last ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckPolicy {
    pub(crate) every: u64,
    pub(crate) interval: Duration,
}

impl AckPolicy {
    /// Whether `handed` (highest seq handed to the application) is due by count
    /// alone, `acked` being acked already.
    #[inline]
    pub(crate) fn due_by_count(&self, handed: u64, acked: u64) -> bool {
        self.every > 0 && handed.saturating_sub(acked) >= self.every
    }

    /// The seq to ack now, if an ack is due: something is unacked and it is due
    /// by count, by time (`since_ack` since the last one), or `force`d.
    #[inline]
    pub(crate) fn due(
        &self,
        handed: u64,
        acked: u64,
        since_ack: Duration,
        force: bool,
    ) -> Option<u64> {
        (handed > acked
            && (force || self.due_by_count(handed, acked) || since_ack >= self.interval))
            .then_some(handed)
    }
}

/// The ack state of a single-threaded session (the blocking client, each
/// connection of the load engine).
#[derive(Debug, Clone)]
pub(crate) struct Acks {
    policy: AckPolicy,
    /// Highest seq handed to the application (what an ack may cover).
    handed: u64,
    acked: u64,
    last_ack: Instant,
}

impl Acks {
    pub(crate) fn new(policy: AckPolicy, now: Instant) -> Self {
        Acks {
            policy,
            handed: 0,
            acked: 0,
            last_ack: now,
        }
    }

    /// Records that the application got message `seq`.
    #[inline]
    pub(crate) fn handed(&mut self, seq: u64) {
        self.handed = self.handed.max(seq);
    }

    /// The seq to ack now, if due (see [`AckPolicy::due`]); it counts as acked.
    #[inline]
    pub(crate) fn poll(&mut self, now: Instant, force: bool) -> Option<u64> {
        let since = now.saturating_duration_since(self.last_ack);
        let seq = self.policy.due(self.handed, self.acked, since, force)?;
        self.acked = seq;
        self.last_ack = now;
        Some(seq)
    }
}

/// Appends `Ack{up_to_seq}`.
pub(crate) fn put_ack(out: &mut impl BufMut, up_to_seq: u64) {
    Frame::of(client_frame::Kind::Ack(Ack { up_to_seq })).put(out)
}

/// Appends `Pong{nonce}`.
pub(crate) fn put_pong(out: &mut impl BufMut, nonce: u64) {
    Frame::of(client_frame::Kind::Pong(Pong { nonce })).put(out)
}

/// Appends `Logout`.
pub(crate) fn put_logout(out: &mut impl BufMut) {
    Frame::of(client_frame::Kind::Logout(Logout {})).put(out)
}

#[cfg(test)]
mod tests {
    //! The core without sockets: frames in, events and answers out.

    use super::request::{self as req, PingRequest, Register, SendWait};
    use super::*;
    use bytes::BytesMut;
    use ringrouter_proto::codec::{decode_client, encode_frame, next_frame};
    use ringrouter_proto::send::Target;
    use ringrouter_proto::v1::{
        AccountResult, Deliver, Error, Ping, RoomEvent, RoomResult, SendResult, ServerFrame,
    };

    fn body(kind: server_frame::Kind) -> Bytes {
        let mut b = BytesMut::new();
        encode_frame(&ServerFrame { kind: Some(kind) }, &mut b);
        next_frame(&mut b, 1 << 20).unwrap().unwrap()
    }

    fn event(kind: server_frame::Kind) -> Event {
        match decode(body(kind)).expect("decodes") {
            Inbound::Event(ev) => ev,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn room_result(request_id: u64, status: Status, room: &str) -> Event {
        event(server_frame::Kind::RoomResult(RoomResult {
            request_id,
            status: status as i32,
            reason: "why".into(),
            room: room.into(),
            join_code: "CODE".into(),
            rooms: vec![],
            ..Default::default()
        }))
    }

    /// The frame `req` sends with request id 7, decoded; checks its length.
    fn sent<R: Request>(req: &R) -> client_frame::Kind {
        let f = req.frame(7);
        let mut b = BytesMut::new();
        f.put(&mut b);
        assert_eq!(b.len(), f.len());
        let body = next_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert!(b.is_empty());
        decode_client(body).unwrap().kind.unwrap()
    }

    #[test]
    fn frames_decode_into_messages_events_pings_and_login_results() {
        let b = body(server_frame::Kind::Deliver(Deliver {
            seq: 4,
            from_user: "bob".into(),
            to_room: "lobby".into(),
            payload: Bytes::from_static(b"hi"),
            server_ts_us: 9,
            msg_id: 11,
            ..Default::default()
        }));
        let Inbound::Event(Event::Message(m)) = decode(b.clone()).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(
            (m.sender.as_str(), m.room.as_deref(), &m.payload[..]),
            ("bob", Some("lobby"), &b"hi"[..])
        );
        assert_eq!((m.seq, m.msg_id, m.timestamp_us), (4, 11, 9));
        // No copy: the payload is a slice of the frame.
        let p = m.payload.as_ptr() as usize;
        assert!(p >= b.as_ptr() as usize && p + 2 <= b.as_ptr() as usize + b.len());
        assert!(matches!(
            decode(body(server_frame::Kind::Ping(Ping { nonce: 5 }))).unwrap(),
            Inbound::Ping(5)
        ));
        assert!(matches!(
            decode(body(
                server_frame::Kind::LoginResult(LoginResult::default())
            ))
            .unwrap(),
            Inbound::Login(_)
        ));
        assert!(matches!(decode(Bytes::new()).unwrap(), Inbound::Nothing));
        assert_eq!(
            event(server_frame::Kind::RoomEvent(RoomEvent {
                kind: 2,
                room: "r".into(),
                user: "u".into(),
                seq: 0,
            })),
            Event::Room {
                kind: RoomEventKind::Left,
                room: "r".into(),
                user: "u".into(),
                seq: 0,
            }
        );
        assert!(matches!(
            decode(Bytes::from_static(&[0x1a, 0x05, 0x08])),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn answers_go_to_their_waiting_request_and_everything_else_to_the_application() {
        let mut p = Pending::default();
        // Nothing waits: everything is for the application.
        let stray = room_result(3, Status::Ok, "x");
        assert_eq!(p.offer(stray.clone()), Some(stray));
        p.insert(3, false);
        p.insert(4, false);
        assert!(p.take(3).is_none(), "not answered yet");
        assert_eq!(
            p.offer(room_result(9, Status::Ok, "x")),
            Some(room_result(9, Status::Ok, "x"))
        );
        let room = event(server_frame::Kind::RoomEvent(RoomEvent::default()));
        assert_eq!(p.offer(room.clone()), Some(room));
        assert_eq!(p.offer(room_result(3, Status::Ok, "lobby")), None);
        assert_eq!(p.offer(room_result(4, Status::Forbidden, "")), None);
        match p.take(3) {
            Some(Ok(Reply::Room(r))) => {
                assert_eq!((r.room.as_str(), r.join_code.as_str()), ("lobby", "CODE"))
            }
            other => panic!("{other:?}"),
        }
        assert!(p.take(3).is_none(), "taken once");
        match p.take(4) {
            Some(Err(ClientError::Router {
                code: Status::Forbidden,
                reason,
                request_id: 4,
            })) => {
                assert_eq!(reason, "why")
            }
            other => panic!("{other:?}"),
        }
        // An Error frame naming a request answers it; a removed request gets nothing.
        p.insert(5, false);
        let err = |request_id| {
            event(server_frame::Kind::Error(Error {
                code: Status::NotFound as i32,
                reason: "gone".into(),
                request_id,
            }))
        };
        assert_eq!(p.offer(err(5)), None);
        assert!(matches!(
            p.take(5),
            Some(Err(ClientError::Router {
                code: Status::NotFound,
                ..
            }))
        ));
        p.remove(5);
        assert_eq!(p.offer(err(5)), Some(err(5)));
        // Without a request id, an Error answers only a request that accepts one.
        assert_eq!(p.offer(err(0)), Some(err(0)));
        p.insert(6, true);
        assert_eq!(p.offer(err(0)), None);
        assert!(matches!(
            p.take(6),
            Some(Err(ClientError::Router {
                code: Status::NotFound,
                request_id: 6,
                ..
            }))
        ));
        // Pongs answer the ping of their nonce.
        p.insert(8, false);
        assert_eq!(p.offer(Event::Pong(1)), Some(Event::Pong(1)));
        assert_eq!(p.offer(Event::Pong(8)), None);
        assert_eq!(p.take(8).map(|a| a.ok()), Some(Some(Reply::Pong)));
        // An Error frame that says OK is still a failure.
        p.insert(10, false);
        let ok_error = event(server_frame::Kind::Error(Error {
            code: Status::Ok as i32,
            reason: String::new(),
            request_id: 10,
        }));
        assert_eq!(p.offer(ok_error), None);
        assert!(matches!(
            p.take(10),
            Some(Err(ClientError::Router {
                code: Status::Unspecified,
                ..
            }))
        ));
    }

    #[test]
    fn acks_are_cumulative_and_cover_only_what_was_handed_out() {
        let policy = AckPolicy {
            every: 3,
            interval: Duration::from_millis(100),
        };
        let t0 = Instant::now();
        let mut a = Acks::new(policy, t0);
        assert_eq!(a.poll(t0, true), None, "nothing handed out, nothing to ack");
        a.handed(1);
        a.handed(2);
        assert_eq!(a.poll(t0, false), None, "not due yet");
        a.handed(3);
        assert_eq!(a.poll(t0, false), Some(3), "due by count");
        a.handed(2);
        assert_eq!(a.poll(t0, true), None, "an older seq acks nothing");
        a.handed(4);
        assert_eq!(a.poll(t0 + Duration::from_millis(50), false), None);
        assert_eq!(
            a.poll(t0 + Duration::from_millis(100), false),
            Some(4),
            "due by time"
        );
        a.handed(5);
        assert_eq!(
            a.poll(t0 + Duration::from_millis(101), true),
            Some(5),
            "forced"
        );
        // every = 0: never by count.
        let p0 = AckPolicy { every: 0, ..policy };
        assert!(!p0.due_by_count(1000, 0));
        assert_eq!(p0.due(1000, 0, Duration::ZERO, false), None);
        assert_eq!(p0.due(1000, 0, Duration::from_secs(1), false), Some(1000));
    }

    #[test]
    fn every_request_sends_its_fields_and_reads_its_answer() {
        use client_frame::Kind as K;
        let room = |room: &str, join_code: &str, rooms: &[&str]| {
            Reply::Room(RoomReply {
                room: room.into(),
                join_code: join_code.into(),
                rooms: rooms.iter().map(|s| s.to_string()).collect(),
                info: None,
            })
        };
        let account = |user: &str, users: &[&str]| {
            Reply::Account(AccountReply {
                user: user.into(),
                users: users.iter().map(|s| s.to_string()).collect(),
            })
        };
        let r = req::CreateRoom {
            name: "lobby",
            password: Some("pw"),
            members: &["m"],
        };
        assert!(
            matches!(sent(&r), K::CreateRoom(c) if (c.request_id, c.name.as_str(), c.password.as_str(), &c.members[..]) == (7, "lobby", "pw", &["m".to_owned()][..]))
        );
        assert_eq!(r.output(room("lobby", "AB12", &[])), Some("AB12".into()));
        let r = req::JoinRoom {
            name_or_code: "AB12",
            password: None,
        };
        assert!(
            matches!(sent(&r), K::JoinRoom(j) if (j.room.as_str(), j.password.as_str()) == ("AB12", ""))
        );
        assert_eq!(r.output(room("lobby", "", &[])), Some("lobby".into()));
        let r = req::JoinRoom {
            name_or_code: "lobby",
            password: None,
        };
        assert_eq!(
            r.output(room("", "", &[])),
            Some("lobby".into()),
            "an empty name: the one asked for"
        );
        assert!(matches!(sent(&req::LeaveRoom { room: "r" }), K::LeaveRoom(l) if l.room == "r"));
        assert!(
            matches!(sent(&req::AddMember { room: "r", user: "u" }), K::AddMember(a) if (a.room.as_str(), a.user.as_str()) == ("r", "u"))
        );
        assert!(
            matches!(sent(&req::RemoveMember { room: "r", user: "u" }), K::RemoveMember(a) if (a.room.as_str(), a.user.as_str()) == ("r", "u"))
        );
        assert!(
            matches!(sent(&req::DeleteRoom { room: "r" }), K::DeleteRoom(d) if d.room == "r" && d.request_id == 7)
        );
        assert!(matches!(sent(&req::ListRooms), K::ListRooms(l) if l.request_id == 7));
        assert_eq!(
            req::ListRooms.output(room("", "", &["a", "b"])),
            Some(vec!["a".into(), "b".into()])
        );
        let r = req::ListUsers {
            pattern: "a*",
            limit: 2,
        };
        assert!(matches!(sent(&r), K::ListUsers(l) if (l.pattern.as_str(), l.limit) == ("a*", 2)));
        assert_eq!(r.output(account("", &["ann"])), Some(vec!["ann".into()]));
        assert!(matches!(sent(&req::DeleteAccount), K::DeleteAccount(d) if d.request_id == 7));
        let r = Register {
            user: "dora",
            password: "s3cret",
        };
        assert!(
            matches!(sent(&r), K::Register(g) if (g.user.as_str(), g.password.as_str()) == ("dora", "s3cret"))
        );
        assert_eq!(r.output(account("", &[])), Some("dora".into()));
        assert!(matches!(sent(&PingRequest), K::Ping(p) if p.nonce == 7));
        let r = SendWait {
            to: Target::Room("lobby"),
            payload: b"x",
            ephemeral: false,
        };
        assert!(
            matches!(sent(&r), K::Send(s) if s.want_result && s.request_id == 7 && s.to_room == "lobby" && &s.payload[..] == b"x")
        );
        assert_eq!(r.output(Reply::Sent { msg_id: 5 }), Some(5));
        // The wrong kind of answer is a protocol error naming the request.
        let e = finish(req::ListRooms, 7, Ok(account("", &[]))).unwrap_err();
        assert!(
            matches!(&e, ClientError::Protocol(m) if m.contains("ListRooms") && m.contains("request 7")),
            "{e}"
        );
        // A refusal is passed through.
        let refused = Err(ClientError::Router {
            code: Status::Conflict,
            reason: String::new(),
            request_id: 7,
        });
        assert!(matches!(
            finish(req::DeleteAccount, 7, refused),
            Err(ClientError::Router {
                code: Status::Conflict,
                ..
            })
        ));
    }

    #[test]
    fn answers_decode_from_the_wire() {
        let mut p = Pending::default();
        p.insert(1, false);
        p.insert(2, false);
        let send_ok = event(server_frame::Kind::SendResult(SendResult {
            request_id: 1,
            status: Status::Ok as i32,
            reason: String::new(),
            msg_id: 42,
        }));
        assert_eq!(p.offer(send_ok), None);
        assert_eq!(
            p.take(1).map(|a| a.ok()),
            Some(Some(Reply::Sent { msg_id: 42 }))
        );
        let acct = event(server_frame::Kind::AccountResult(AccountResult {
            request_id: 2,
            status: Status::Unauthorized as i32,
            ..Default::default()
        }));
        assert_eq!(p.offer(acct), None);
        assert!(matches!(
            p.take(2),
            Some(Err(ClientError::Router {
                code: Status::Unauthorized,
                ..
            }))
        ));
    }

    #[test]
    fn request_ids_count_up_from_where_they_start() {
        let ids = RequestIds::starting_at(1 << 32);
        assert_eq!((ids.next(), ids.next()), (1 << 32, (1 << 32) + 1));
        let mut b = BytesMut::new();
        put_ack(&mut b, 9);
        put_pong(&mut b, 3);
        put_logout(&mut b);
        let kinds: Vec<_> = std::iter::from_fn(|| next_frame(&mut b, 1 << 20).unwrap())
            .map(|f| decode_client(f).unwrap().kind.unwrap())
            .collect();
        assert!(matches!(
            kinds.as_slice(),
            [
                client_frame::Kind::Ack(Ack { up_to_seq: 9 }),
                client_frame::Kind::Pong(Pong { nonce: 3 }),
                client_frame::Kind::Logout(_)
            ]
        ));
    }
}
