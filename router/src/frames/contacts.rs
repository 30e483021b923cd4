//! ContactOp{user, op} and ListContacts{since_version}: a user's contact list (the
//! exchange between the two users' home shards is in `shard::contacts`). A request,
//! accept, decline or remove is answered once both users' lists have changed. A user's
//! ops and lists run one at a time, in the order sent (`Shard::in_contact_turn`).
//!
//! Statuses: BAD_REQUEST (no op, oneself), FORBIDDEN (a request to a user who blocked
//! the sender), NOT_FOUND (nothing to accept, decline, remove or unblock; a request to,
//! or a block of, an unknown user), RATE_LIMITED (a list at `--max-contacts-per-user`, the peer at
//! `--max-contact-requests` pending requests, or the user past
//! `--max-contact-ops-per-minute`), UNAVAILABLE (the store failed).

use ringrouter_proto::reply;
use ringrouter_proto::v1::{ContactAction, ContactOp as ContactOpFrame, ListContacts};
use ringrouter_proto::Status;

use crate::shard::contacts::{wire_entry, Asker, Then, Turn};
use crate::shard::{SessionKey, Shard};
use crate::store::contacts::{ContactOp, ContactState, Outcome};

/// The reason of a contact op past `--max-contact-ops-per-minute`.
const TOO_MANY_CONTACT_OPS: &str =
    "changing contacts too fast, try again later (--max-contact-ops-per-minute)";

/// A step of a contact op that needs its asker (and so its turn).
type AskerStep = Box<dyn FnOnce(&mut Shard, Asker) + Send>;

impl Shard {
    /// A ContactOp from session `key`.
    pub(crate) fn on_contact_op(&mut self, key: SessionKey, c: ContactOpFrame) {
        let Some(id) = self.session_id(key) else {
            return;
        };
        let asker = Asker::new(id, c.request_id);
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        let op = match ContactAction::try_from(c.op) {
            Ok(ContactAction::Request) => ContactOp::RequestOut,
            Ok(ContactAction::Accept) => ContactOp::AcceptOut,
            Ok(ContactAction::Decline) => ContactOp::DeclineOut,
            Ok(ContactAction::Remove) => ContactOp::RemoveOut,
            Ok(ContactAction::Block) => ContactOp::Block,
            Ok(ContactAction::Unblock) => ContactOp::Unblock,
            Ok(ContactAction::Unspecified) | Err(_) => {
                self.refuse_contact(asker, (Status::BadRequest, "op: unknown contact action"));
                return;
            }
        };
        if c.user == user {
            self.refuse_contact(asker, (Status::BadRequest, "user: cannot name oneself"));
            return;
        }
        let per_minute = self.cfg.max_contact_ops_per_minute;
        if self
            .contact_rate
            .take(user.as_bytes(), 1, per_minute, std::time::Instant::now())
            .is_err()
        {
            self.refuse_contact(asker, (Status::RateLimited, TOO_MANY_CONTACT_OPS));
            return;
        }
        let peer = c.user;
        let actor = user.clone();
        self.in_contact_turn(
            &actor,
            id,
            Box::new(move |sh: &mut Shard, turn: Turn| {
                let asker = asker.in_turn(turn);
                let named = peer.clone();
                let then: AskerStep = Box::new(move |sh: &mut Shard, asker: Asker| {
                    let u = user.clone();
                    sh.with_contacts(
                        &u,
                        Box::new(move |sh: &mut Shard| sh.contact_op(user, peer, op, asker)),
                    )
                });
                if op == ContactOp::Block {
                    // A block names a user that exists: no list is written for a made-up
                    // name.
                    sh.if_user_exists(&named, asker, then);
                } else {
                    then(sh, asker);
                }
            }),
        );
    }

    /// Runs `then` with `asker` if `user` exists (an account, or a user seen at login);
    /// else answers `asker` NOT_FOUND.
    fn if_user_exists(&mut self, user: &str, asker: Asker, then: AskerStep) {
        let u = user.to_owned();
        self.store_req(
            move |st, cb| st.user_exists(&u, cb),
            move |sh, r| match r {
                Ok(true) => then(sh, asker),
                Ok(false) => sh.refuse_contact(asker, (Status::NotFound, "no such user")),
                Err(e) => {
                    let status = crate::shard::store_link::store_status(&e);
                    sh.refuse_contact(asker, (status, "store error"));
                }
            },
        );
    }

    /// The actor's side of `op` (its list loaded).
    fn contact_op(&mut self, user: String, peer: String, op: ContactOp, asker: Asker) {
        let lim = self.contact_limits();
        if op == ContactOp::RequestOut {
            // The peer's side goes first; see what this side would do before asking.
            let Some(rec) = self.contacts.get(&user) else {
                self.refuse_contact(asker, (Status::Unavailable, "contact list not available"));
                return;
            };
            match rec.plan(&user, &peer, op, lim) {
                Err(e) => self.refuse_contact(asker, crate::shard::contacts::contact_status(e)),
                Ok(None) => self.answer_contact(asker, &user, &peer),
                Ok(Some(_)) => self.request_peer(user, peer, asker),
            }
            return;
        }
        match self.contact_apply(&user, &peer, op) {
            Err(e) => self.refuse_contact(asker, e),
            Ok(Outcome::Unchanged) => self.answer_contact(asker, &user, &peer),
            Ok(Outcome::Changed(v)) => {
                self.tell_contact(&user, &peer, op, v, Some(asker.id), false);
                let home_op = match op {
                    ContactOp::AcceptOut => Some(ContactOp::AcceptIn),
                    ContactOp::DeclineOut => Some(ContactOp::DeclineIn),
                    ContactOp::RemoveOut => Some(ContactOp::RemoveIn),
                    _ => None,
                };
                if let Some(in_op) = home_op {
                    self.on_home_of(
                        &peer.clone(),
                        Box::new(move |sh: &mut Shard| {
                            sh.contact_in(peer, user, in_op, Then::Answer(asker))
                        }),
                    );
                } else {
                    // Answered once the blocked user's home shard has the note (its DMs
                    // are refused there): answered before, a DM sent right after the OK
                    // still got through (27 of 50 across two shards).
                    let on = op == ContactOp::Block;
                    self.on_home_of(
                        &peer.clone(),
                        Box::new(move |sh: &mut Shard| {
                            sh.set_blocked_by(peer.clone(), user.clone(), on);
                            sh.on_home_of(
                                &user.clone(),
                                Box::new(move |sh: &mut Shard| {
                                    sh.answer_contact(asker, &user, &peer)
                                }),
                            );
                        }),
                    );
                }
            }
        }
    }

    /// Takes `user`'s request to `peer`'s home shard: the peer must exist (an account,
    /// or a user seen at login), then its side is applied there.
    fn request_peer(&mut self, user: String, peer: String, asker: Asker) {
        let p = peer.clone();
        let then: AskerStep = Box::new(move |sh: &mut Shard, asker: Asker| {
            sh.on_home_of(
                &peer.clone(),
                Box::new(move |sh: &mut Shard| {
                    sh.contact_in(peer, user, ContactOp::RequestIn, Then::Request(asker))
                }),
            )
        });
        self.if_user_exists(&p, asker, then);
    }

    /// A ListContacts from session `key`.
    pub(crate) fn on_list_contacts(&mut self, key: SessionKey, l: ListContacts) {
        let Some(id) = self.session_id(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        let u = user.clone();
        // A full list is a big answer: the session's reader waits for it to be written.
        // The guard goes with the request; dropped (answered, or dropped unanswered
        // anywhere), it lets the reader go on once what is queued is written.
        let mut big = self.request_in_flight(id);
        if let Some(g) = &mut big {
            g.big = true;
            self.big_answer_begun(key);
        }
        // In turn: a list asked for after an op shows it.
        self.in_contact_turn(
            &u,
            id,
            Box::new(move |sh: &mut Shard, turn: Turn| {
                let asker = Asker::new(id, l.request_id).in_turn(turn);
                let u = user.clone();
                sh.with_contacts(
                    &u,
                    Box::new(move |sh: &mut Shard| {
                        sh.list_contacts(&user, l, asker);
                        drop(big);
                    }),
                )
            }),
        );
    }

    /// Answers ListContacts `l` of `asker` from `user`'s list (loaded).
    fn list_contacts(&mut self, user: &str, l: ListContacts, asker: Asker) {
        let Some(rec) = self.contacts.get(user) else {
            self.refuse_contact(asker, (Status::Unavailable, "contact list not available"));
            return;
        };
        let changes = match l.since_version {
            0 => None,
            v => rec.changes_since(v),
        };
        let full = changes.is_none();
        let entries = changes.unwrap_or_else(|| {
            rec.entries
                .iter()
                .filter(|e| e.state() != ContactState::None)
                .cloned()
                .collect()
        });
        let f = reply::contact_result(
            l.request_id,
            Status::Ok,
            "",
            rec.version,
            entries.into_iter().map(wire_entry).collect(),
            full,
        );
        self.send_to_session(asker.id, f);
    }
}
