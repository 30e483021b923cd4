//! History and the conversation list: [`Client::history`], [`Client::conversations`]
//! (and the same on [`ThreadedClient`]).

use ringrouter_proto::v1::{self as pb, client_frame};

use crate::core::{Frame, Reply, Request};
use crate::threaded::ThreadedClient;
use crate::{Client, ClientError, Message};

/// One conversation of [`Client::conversations`]: a direct one (`user`) or a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other user of a direct conversation.
    pub user: Option<String>,
    /// The room.
    pub room: Option<String>,
    /// Its newest message kept.
    pub last: Message,
    /// Messages after this user's read mark in it (MarkRead); without one, after the last
    /// one it sent there (all kept ones if it never did).
    pub unread: u64,
}

pub(crate) fn conversation(c: pb::Conversation) -> Conversation {
    Conversation {
        user: Some(c.user).filter(|u| !u.is_empty()),
        room: Some(c.room).filter(|r| !r.is_empty()),
        last: crate::core::message(c.last.unwrap_or_default()),
        unread: c.unread,
    }
}

/// Which conversation a [`History`] request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum With<'a> {
    User(&'a str),
    Room(&'a str),
}

/// History: a page of messages, oldest first.
pub(crate) struct History<'a> {
    pub(crate) with: With<'a>,
    pub(crate) before: u64,
    pub(crate) limit: u32,
}

impl Request for History<'_> {
    type Output = Vec<Message>;
    const NAME: &'static str = "History";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        let (user, room) = match self.with {
            With::User(u) => (u, ""),
            With::Room(r) => ("", r),
        };
        Frame::of(client_frame::Kind::History(pb::History {
            request_id,
            user: user.to_owned(),
            room: room.to_owned(),
            before: self.before,
            limit: self.limit,
        }))
    }
    fn output(self, reply: Reply) -> Option<Vec<Message>> {
        match reply {
            Reply::History(m) => Some(m),
            _ => None,
        }
    }
}

/// ListConversations.
pub(crate) struct ListConversations {
    pub(crate) limit: u32,
    pub(crate) before_ts_us: u64,
}

impl Request for ListConversations {
    type Output = Vec<Conversation>;
    const NAME: &'static str = "ListConversations";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::ListConversations(
            pb::ListConversations {
                request_id,
                limit: self.limit,
                before_ts_us: self.before_ts_us,
            },
        ))
    }
    fn output(self, reply: Reply) -> Option<Vec<Conversation>> {
        match reply {
            Reply::Conversations(c) => Some(c),
            _ => None,
        }
    }
}

impl Client {
    /// Up to `limit` messages (0: 50; at most the router's `--history-page-max`, 500)
    /// of the direct conversation with `user`, oldest first, just before the message
    /// `before` (a msg_id; 0: the newest). Pass the first message's id back as `before`
    /// to page further back; an empty page is the start.
    pub fn history_with(
        &mut self,
        user: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        self.call(History {
            with: With::User(user),
            before,
            limit,
        })
    }

    /// [`Client::history_with`] for a room this user is a member of (else the router
    /// answers FORBIDDEN).
    pub fn room_history(
        &mut self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        self.call(History {
            with: With::Room(room),
            before,
            limit,
        })
    }

    /// This user's conversations (direct ones, and rooms it is a member of) that have a
    /// message kept, newest last message first, at most `limit` (0: 50), only those whose
    /// last message is older than `before_ts_us` (0: from the newest).
    pub fn conversations(
        &mut self,
        limit: u32,
        before_ts_us: u64,
    ) -> Result<Vec<Conversation>, ClientError> {
        self.call(ListConversations {
            limit,
            before_ts_us,
        })
    }
}

impl ThreadedClient {
    /// See [`Client::history_with`].
    pub fn history_with(
        &self,
        user: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        self.call(History {
            with: With::User(user),
            before,
            limit,
        })
    }

    /// See [`Client::room_history`].
    pub fn room_history(
        &self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        self.call(History {
            with: With::Room(room),
            before,
            limit,
        })
    }

    /// See [`Client::conversations`].
    pub fn conversations(
        &self,
        limit: u32,
        before_ts_us: u64,
    ) -> Result<Vec<Conversation>, ClientError> {
        self.call(ListConversations {
            limit,
            before_ts_us,
        })
    }
}
