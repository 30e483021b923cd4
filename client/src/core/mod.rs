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

use crate::{ClientError, Event, Message, RoomEventKind};

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
}

/// An OK answer to a room request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomReply {
    pub(crate) room: String,
    pub(crate) join_code: String,
    pub(crate) rooms: Vec<String>,
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
        })));
    }
    let Some(kind) = decode_server(body).map_err(protocol)?.kind else {
        return Ok(Inbound::Nothing);
    };
    Ok(Inbound::Event(match kind {
        server_frame::Kind::Ping(p) => return Ok(Inbound::Ping(p.nonce)),
        server_frame::Kind::LoginResult(r) => return Ok(Inbound::Login(r)),
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
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            room: r.room,
            join_code: r.join_code,
            rooms: r.rooms,
        },
        server_frame::Kind::RoomEvent(e) => Event::Room {
            kind: RoomEventKind::from_wire(e.kind),
            room: e.room,
            user: e.user,
        },
        server_frame::Kind::AccountResult(r) => Event::AccountResult {
            request_id: r.request_id,
            status: status(r.status),
            reason: r.reason,
            user: r.user,
            users: r.users,
        },
        // Taken by the fast parser above; decoded again only if it changes.
        server_frame::Kind::Deliver(d) => Event::Message(Message {
            sender: d.from_user,
            room: Some(d.to_room).filter(|r| !r.is_empty()),
            payload: d.payload,
            seq: d.seq,
            msg_id: d.msg_id,
            timestamp_us: d.server_ts_us,
        }),
    }))
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
        | Event::Error { request_id, .. } => Some(*request_id),
        Event::Pong(nonce) => Some(*nonce),
        Event::Message(_) | Event::Room { .. } => None,
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
        } => (
            request_id,
            status,
            reason,
            Reply::Room(RoomReply {
                room,
                join_code,
                rooms,
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
        Event::Message(_) | Event::Room { .. } => return None,
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
