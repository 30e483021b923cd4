//! Contacts and presence: the types the router reports them with ([`Contacts`],
//! [`ContactEvent`], [`Presence`], ...) and the calls on [`Client`] and
//! [`ThreadedClient`] (`contact_request`, `contacts`, `set_presence`, ...).

use ringrouter_proto::v1::{self as pb, client_frame, ContactAction};

use crate::core::{Frame, Reply, Request};
use crate::threaded::ThreadedClient;
use crate::{Client, ClientError};

/// Where a peer stands in this user's contact list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContactState {
    /// Not in the list (a removal, in a list of changes).
    None,
    /// Both users accepted each other.
    Accepted,
    /// The peer asked this user.
    Incoming,
    /// This user asked the peer.
    Outgoing,
    /// This user blocked the peer.
    Blocked,
}

impl ContactState {
    /// From the wire value (unknown values read as `None`).
    pub fn from_wire(v: i32) -> ContactState {
        use pb::ContactState as W;
        match W::try_from(v) {
            Ok(W::Accepted) => ContactState::Accepted,
            Ok(W::Incoming) => ContactState::Incoming,
            Ok(W::Outgoing) => ContactState::Outgoing,
            Ok(W::Blocked) => ContactState::Blocked,
            Ok(W::None) | Err(_) => ContactState::None,
        }
    }

    /// "none", "accepted", "incoming", "outgoing", "blocked".
    pub fn name(self) -> &'static str {
        match self {
            ContactState::None => "none",
            ContactState::Accepted => "accepted",
            ContactState::Incoming => "incoming",
            ContactState::Outgoing => "outgoing",
            ContactState::Blocked => "blocked",
        }
    }
}

/// One peer of a contact list, as of list version `version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactEntry {
    /// The peer.
    pub user: String,
    /// Where it stands.
    pub state: ContactState,
    /// The list version of its last change.
    pub version: u64,
}

/// An answer about a contact list: the whole list (`full`), or the entries changed
/// after a version (removals as [`ContactState::None`]), or one changed entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactChanges {
    /// The list's version.
    pub version: u64,
    /// True when `entries` is the whole list.
    pub full: bool,
    /// The entries, in byte order of their names.
    pub entries: Vec<ContactEntry>,
}

/// This user's contact list ([`Client::contacts`]), grouped by state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contacts {
    /// The list's version (grows with every change).
    pub version: u64,
    /// Accepted contacts.
    pub accepted: Vec<String>,
    /// Requests waiting for this user's answer.
    pub incoming: Vec<String>,
    /// This user's requests waiting for the peer.
    pub outgoing: Vec<String>,
    /// Users this user blocked.
    pub blocked: Vec<String>,
}

impl From<ContactChanges> for Contacts {
    fn from(c: ContactChanges) -> Contacts {
        let mut out = Contacts {
            version: c.version,
            ..Default::default()
        };
        for e in c.entries {
            match e.state {
                ContactState::Accepted => out.accepted.push(e.user),
                ContactState::Incoming => out.incoming.push(e.user),
                ContactState::Outgoing => out.outgoing.push(e.user),
                ContactState::Blocked => out.blocked.push(e.user),
                ContactState::None => {}
            }
        }
        out
    }
}

/// What a [`ContactEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContactEventKind {
    /// A request: from `user` (state incoming), or, on this user's other devices,
    /// to `user` (state outgoing).
    Request,
    /// `user` and this user are contacts now.
    Accepted,
    /// A request was declined.
    Declined,
    /// A contact was removed or a request withdrawn.
    Removed,
    /// This user blocked `user` (told to its other devices only).
    Blocked,
    /// This user unblocked `user` (told to its other devices only).
    Unblocked,
    /// A kind this client does not know: the wire value.
    Other(i32),
}

impl ContactEventKind {
    /// From the wire value.
    pub fn from_wire(v: i32) -> ContactEventKind {
        use pb::ContactEventKind as K;
        match K::try_from(v) {
            Ok(K::ContactEventRequest) => ContactEventKind::Request,
            Ok(K::ContactEventAccepted) => ContactEventKind::Accepted,
            Ok(K::ContactEventDeclined) => ContactEventKind::Declined,
            Ok(K::ContactEventRemoved) => ContactEventKind::Removed,
            Ok(K::ContactEventBlocked) => ContactEventKind::Blocked,
            Ok(K::ContactEventUnblocked) => ContactEventKind::Unblocked,
            Ok(K::ContactEventUnspecified) | Err(_) => ContactEventKind::Other(v),
        }
    }

    /// "request", "accepted", "declined", "removed", "blocked", "unblocked" (or "unknown").
    pub fn name(self) -> &'static str {
        match self {
            ContactEventKind::Request => "request",
            ContactEventKind::Accepted => "accepted",
            ContactEventKind::Declined => "declined",
            ContactEventKind::Removed => "removed",
            ContactEventKind::Blocked => "blocked",
            ContactEventKind::Unblocked => "unblocked",
            ContactEventKind::Other(_) => "unknown",
        }
    }
}

/// This user's contact list changed about `user` (pushed by the router).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactEvent {
    /// What happened.
    pub kind: ContactEventKind,
    /// The peer.
    pub user: String,
    /// This user's list version after the change.
    pub version: u64,
    /// Where `user` stands now.
    pub state: ContactState,
    /// Not 0 when it waited in the offline queue: acked like a message's seq once
    /// handed to the application.
    pub seq: u64,
}

impl From<pb::ContactEvent> for ContactEvent {
    fn from(e: pb::ContactEvent) -> Self {
        ContactEvent {
            kind: ContactEventKind::from_wire(e.kind),
            user: e.user,
            version: e.version,
            state: ContactState::from_wire(e.state),
            seq: e.seq,
        }
    }
}

/// A presence status, most present first: online, dnd, away, offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceStatus {
    /// Not connected (or a device that chose to look so).
    Offline,
    /// Here.
    Online,
    /// Away from the keyboard.
    Away,
    /// Do not disturb.
    Dnd,
}

impl PresenceStatus {
    /// From the wire value (unknown values read as offline).
    pub fn from_wire(v: i32) -> PresenceStatus {
        use pb::PresenceStatus as W;
        match W::try_from(v) {
            Ok(W::Online) => PresenceStatus::Online,
            Ok(W::Away) => PresenceStatus::Away,
            Ok(W::Dnd) => PresenceStatus::Dnd,
            Ok(W::Offline) | Err(_) => PresenceStatus::Offline,
        }
    }

    /// The wire value.
    pub fn to_wire(self) -> pb::PresenceStatus {
        match self {
            PresenceStatus::Offline => pb::PresenceStatus::Offline,
            PresenceStatus::Online => pb::PresenceStatus::Online,
            PresenceStatus::Away => pb::PresenceStatus::Away,
            PresenceStatus::Dnd => pb::PresenceStatus::Dnd,
        }
    }

    /// "offline", "online", "away", "dnd".
    pub fn name(self) -> &'static str {
        match self {
            PresenceStatus::Offline => "offline",
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Dnd => "dnd",
        }
    }

    /// From [`PresenceStatus::name`].
    pub fn parse(s: &str) -> Option<PresenceStatus> {
        Some(match s {
            "offline" => PresenceStatus::Offline,
            "online" => PresenceStatus::Online,
            "away" => PresenceStatus::Away,
            "dnd" => PresenceStatus::Dnd,
            _ => return None,
        })
    }
}

/// A user's presence: pushed to its accepted contacts when it changes, or the answer
/// of [`Client::presence`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Presence {
    /// The user.
    pub user: String,
    /// Its status (the most present of its devices').
    pub status: PresenceStatus,
    /// Its status text.
    pub text: String,
    /// When its last device went away, µs since the Unix epoch; 0 while online or
    /// never seen.
    pub last_seen_us: u64,
}

impl From<pb::Presence> for Presence {
    fn from(p: pb::Presence) -> Self {
        Presence {
            user: p.user,
            status: PresenceStatus::from_wire(p.status),
            text: p.text,
            last_seen_us: p.last_seen_us,
        }
    }
}

/// A ContactResult's entries and version.
pub(crate) fn changes(r: &mut pb::ContactResult) -> ContactChanges {
    ContactChanges {
        version: r.version,
        full: r.full,
        entries: std::mem::take(&mut r.entries)
            .into_iter()
            .map(|e| ContactEntry {
                user: e.user,
                state: ContactState::from_wire(e.state),
                version: e.version,
            })
            .collect(),
    }
}

/// ContactOp: answered by a ContactResult with the changed entry.
pub(crate) struct ContactOpReq<'a> {
    pub(crate) user: &'a str,
    pub(crate) op: ContactAction,
}

impl Request for ContactOpReq<'_> {
    type Output = ContactChanges;
    const NAME: &'static str = "ContactOp";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::ContactOp(pb::ContactOp {
            request_id,
            user: self.user.to_owned(),
            op: self.op as i32,
        }))
    }
    fn output(self, reply: Reply) -> Option<ContactChanges> {
        match reply {
            Reply::Contacts(c) => Some(c),
            _ => None,
        }
    }
}

/// ListContacts.
pub(crate) struct ListContactsReq {
    pub(crate) since_version: u64,
}

impl Request for ListContactsReq {
    type Output = ContactChanges;
    const NAME: &'static str = "ListContacts";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::ListContacts(pb::ListContacts {
            request_id,
            since_version: self.since_version,
        }))
    }
    fn output(self, reply: Reply) -> Option<ContactChanges> {
        match reply {
            Reply::Contacts(c) => Some(c),
            _ => None,
        }
    }
}

/// SetPresence.
pub(crate) struct SetPresenceReq<'a> {
    pub(crate) status: PresenceStatus,
    pub(crate) text: &'a str,
}

impl Request for SetPresenceReq<'_> {
    type Output = ();
    const NAME: &'static str = "SetPresence";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::SetPresence(pb::SetPresence {
            request_id,
            status: self.status.to_wire() as i32,
            text: self.text.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<()> {
        matches!(reply, Reply::Presence(_)).then_some(())
    }
}

/// GetPresence.
pub(crate) struct GetPresenceReq<'a> {
    pub(crate) user: &'a str,
}

impl Request for GetPresenceReq<'_> {
    type Output = Presence;
    const NAME: &'static str = "GetPresence";
    fn frame(&self, request_id: u64) -> Frame<'_> {
        Frame::of(client_frame::Kind::GetPresence(pb::GetPresence {
            request_id,
            user: self.user.to_owned(),
        }))
    }
    fn output(self, reply: Reply) -> Option<Presence> {
        match reply {
            Reply::Presence(p) => p,
            _ => None,
        }
    }
}

/// The calls, written once for both clients.
macro_rules! contact_calls {
    ($ty:ty, $self_:ty) => {
        impl $ty {
            /// Asks `user` to become a contact (accepts a pending request from `user`).
            /// Errors: FORBIDDEN if `user` blocked this user, NOT_FOUND for an unknown
            /// user, RATE_LIMITED past the router's list or pending-request limits.
            pub fn contact_request(
                self: $self_,
                user: &str,
            ) -> Result<ContactChanges, ClientError> {
                self.call(ContactOpReq {
                    user,
                    op: ContactAction::Request,
                })
            }

            /// Accepts `user`'s request (NOT_FOUND without one).
            pub fn contact_accept(self: $self_, user: &str) -> Result<ContactChanges, ClientError> {
                self.call(ContactOpReq {
                    user,
                    op: ContactAction::Accept,
                })
            }

            /// Declines `user`'s request (NOT_FOUND without one).
            pub fn contact_decline(
                self: $self_,
                user: &str,
            ) -> Result<ContactChanges, ClientError> {
                self.call(ContactOpReq {
                    user,
                    op: ContactAction::Decline,
                })
            }

            /// Removes the contact `user`, or withdraws this user's request to it
            /// (NOT_FOUND otherwise).
            pub fn contact_remove(self: $self_, user: &str) -> Result<ContactChanges, ClientError> {
                self.call(ContactOpReq {
                    user,
                    op: ContactAction::Remove,
                })
            }

            /// Blocks `user`: its direct messages and contact requests get FORBIDDEN
            /// (and nothing else tells it).
            pub fn block(self: $self_, user: &str) -> Result<ContactChanges, ClientError> {
                self.call(ContactOpReq {
                    user,
                    op: ContactAction::Block,
                })
            }

            /// Unblocks `user` (NOT_FOUND if it was not blocked).
            pub fn unblock(self: $self_, user: &str) -> Result<ContactChanges, ClientError> {
                self.call(ContactOpReq {
                    user,
                    op: ContactAction::Unblock,
                })
            }

            /// This user's whole contact list.
            pub fn contacts(self: $self_) -> Result<Contacts, ClientError> {
                self.call(ListContactsReq { since_version: 0 })
                    .map(Contacts::from)
            }

            /// The entries of this user's list changed after `version` (removals as
            /// [`ContactState::None`]); the whole list (`full`) when `version` is too old.
            pub fn contacts_since(
                self: $self_,
                version: u64,
            ) -> Result<ContactChanges, ClientError> {
                self.call(ListContactsReq {
                    since_version: version,
                })
            }

            /// Sets this device's presence; `text` is the status text (bounded by the
            /// router's `--max-presence-text-bytes`, else BAD_REQUEST).
            pub fn set_presence(
                self: $self_,
                status: PresenceStatus,
                text: &str,
            ) -> Result<(), ClientError> {
                self.call(SetPresenceReq { status, text })
            }

            /// The presence of `user`, an accepted contact (FORBIDDEN otherwise).
            pub fn presence(self: $self_, user: &str) -> Result<Presence, ClientError> {
                self.call(GetPresenceReq { user })
            }
        }
    };
}

contact_calls!(Client, &mut Self);
contact_calls!(ThreadedClient, &Self);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{decode, into_answer, Inbound};
    use crate::Event;
    use bytes::BytesMut;
    use ringrouter_proto::codec::{encode_frame, next_frame};
    use ringrouter_proto::v1::{server_frame, ServerFrame};
    use ringrouter_proto::Status;

    fn event(kind: server_frame::Kind) -> Event {
        let mut b = BytesMut::new();
        encode_frame(&ServerFrame { kind: Some(kind) }, &mut b);
        match decode(next_frame(&mut b, 1 << 20).unwrap().unwrap()).unwrap() {
            Inbound::Event(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_contact_result_answers_with_the_list_grouped_by_state() {
        let entry = |user: &str, state: pb::ContactState| pb::ContactEntry {
            user: user.into(),
            state: state as i32,
            version: 3,
        };
        let ev = event(server_frame::Kind::ContactResult(pb::ContactResult {
            request_id: 4,
            status: Status::Ok as i32,
            version: 9,
            full: true,
            entries: vec![
                entry("a", pb::ContactState::Accepted),
                entry("b", pb::ContactState::Incoming),
                entry("c", pb::ContactState::Outgoing),
                entry("d", pb::ContactState::Blocked),
                entry("e", pb::ContactState::None),
            ],
            ..Default::default()
        }));
        let Some(Ok(Reply::Contacts(ch))) = into_answer(ev) else {
            panic!("not a contacts answer")
        };
        assert!(ch.full && ch.entries.len() == 5);
        let c = Contacts::from(ch);
        assert_eq!(
            (c.version, c.accepted, c.incoming, c.outgoing, c.blocked),
            (
                9,
                vec!["a".into()],
                vec!["b".into()],
                vec!["c".into()],
                vec!["d".into()]
            )
        );
    }

    #[test]
    fn contact_events_and_presence_are_events_not_answers() {
        let ev = event(server_frame::Kind::ContactEvent(pb::ContactEvent {
            kind: pb::ContactEventKind::ContactEventRequest as i32,
            user: "bob".into(),
            version: 2,
            seq: 7,
            state: pb::ContactState::Incoming as i32,
        }));
        let Event::Contact(e) = &ev else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (
                e.kind.name(),
                e.user.as_str(),
                e.version,
                e.seq,
                e.state.name()
            ),
            ("request", "bob", 2, 7, "incoming")
        );
        assert!(into_answer(ev).is_none());
        assert_eq!(ContactEventKind::from_wire(99), ContactEventKind::Other(99));
        let ev = event(server_frame::Kind::Presence(pb::Presence {
            user: "bob".into(),
            status: pb::PresenceStatus::Dnd as i32,
            text: "call".into(),
            last_seen_us: 0,
        }));
        let Event::Presence(p) = &ev else {
            panic!("{ev:?}")
        };
        assert_eq!((p.status, p.text.as_str()), (PresenceStatus::Dnd, "call"));
        for s in ["online", "away", "dnd", "offline"] {
            assert_eq!(PresenceStatus::parse(s).map(|p| p.name()), Some(s));
        }
        assert_eq!(PresenceStatus::parse("busy"), None);
    }
}
