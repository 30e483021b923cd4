//! SetPresence{status, text} and GetPresence{user} (the rules are in `shard::presence`).
//!
//! Statuses: BAD_REQUEST (an unknown status, a text over `--max-presence-text-bytes`),
//! FORBIDDEN (GetPresence of a user who is not an accepted contact: strangers learn
//! nothing, not even whether the user exists), UNAVAILABLE (the store failed),
//! RATE_LIMITED (past [`PRESENCE_READS_WAITING_MAX`] reads of the asker's waiting).

use bytes::Bytes;
use ringrouter_proto::reply;
use ringrouter_proto::v1::{GetPresence, PresenceStatus, SetPresence};
use ringrouter_proto::Status;

use crate::shard::{SessionKey, Shard};
use crate::store::contacts::{ContactRecord, ContactState};

/// GetPresence reads of offline contacts' lists one asker may have waiting at the
/// page-read gate of one shard; past it, or past
/// [`crate::shard::store_link::PAGE_READS_WAITING_MAX`] reads waiting there in all,
/// RATE_LIMITED. A session that ends leaves its reads waiting there (they belong to no
/// session of that shard); its user's live sessions keep at most 16 each in flight.
pub const PRESENCE_READS_WAITING_MAX: usize = 256;

impl Shard {
    /// A SetPresence from session `key`.
    pub(crate) fn on_set_presence(&mut self, key: SessionKey, p: SetPresence) {
        let max = self.cfg.max_presence_text_bytes;
        let bad = match PresenceStatus::try_from(p.status) {
            Err(_) => Some("status: unknown presence status".to_owned()),
            Ok(_) if p.text.len() > max => Some(format!(
                "text: is {} bytes, longer than --max-presence-text-bytes {max}",
                p.text.len()
            )),
            Ok(_) => None,
        };
        if let Some(reason) = bad {
            self.counters.reject(Status::BadRequest);
            let f = reply::presence_result(p.request_id, Status::BadRequest, &reason, None);
            self.push_frame(key, &f);
            return;
        }
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&s.user).into_owned();
        let status = PresenceStatus::try_from(p.status).unwrap_or(PresenceStatus::Online);
        self.set_device_presence(&user, key, status, p.text);
        if p.request_id != 0 {
            let f = reply::presence_result(p.request_id, Status::Ok, "", None);
            self.push_frame(key, &f);
        }
    }

    /// A GetPresence from session `key`: answered by the target's home shard.
    pub(crate) fn on_get_presence(&mut self, key: SessionKey, g: GetPresence) {
        let Some(id) = self.session_id(key) else {
            return;
        };
        let asker = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        let target = g.user;
        let request_id = g.request_id;
        // Checked here first, from the asker's own list (loaded at login; an accepted
        // contact is accepted on both lists): a stranger's GetPresence costs no mail and
        // no load of the target's list on its home shard, so a client cannot make
        // another shard load list after list for names it picks.
        if target != asker {
            let refusal = match self.contacts.get(&asker) {
                None => Some((Status::Unavailable, "contact list not available")),
                Some(rec)
                    if rec.state_of(&target) != ContactState::Accepted
                        || rec.is_blocked_by(&target) =>
                {
                    Some((Status::Forbidden, "not an accepted contact"))
                }
                Some(_) => None,
            };
            if let Some((status, reason)) = refusal {
                self.counters.reject(status);
                let f = reply::presence_result(request_id, status, reason, None);
                self.push_frame(key, &f);
                return;
            }
        }
        // Counts against the asker's --max-requests-in-flight until answered.
        let inflight = self.request_in_flight(id);
        self.on_home_of(
            &target.clone(),
            Box::new(move |sh: &mut Shard| {
                if target == asker || sh.contacts.get(&target).is_some() {
                    let t = target.clone();
                    sh.with_contacts(
                        &t,
                        Box::new(move |sh: &mut Shard| {
                            let f = sh.presence_answer(request_id, &asker, &target, None);
                            sh.send_answer(id, f, inflight);
                        }),
                    );
                    return;
                }
                // The target's list is not loaded (an offline user's): read for this
                // answer alone, at the page-read gate in the asker's turn, and not kept.
                // Loaded like a login's, 48 sessions asking in a loop about 300 offline
                // contacts with lists of 5 000 held others' logins 183 ms (p50) and
                // their ListRooms 310-370 ms: no gate held them, and the loads evicted
                // each other from the cache of idle lists.
                // Waiting here, the read belongs to no session of this shard: an asker
                // reconnecting in a loop could queue them without bound.
                let turn = Bytes::from(asker.clone().into_bytes());
                if !sh.page_reads.may_wait(&turn, PRESENCE_READS_WAITING_MAX) {
                    sh.counters.reject(Status::RateLimited);
                    let f = reply::presence_result(
                        request_id,
                        Status::RateLimited,
                        "too many presence requests of offline contacts waiting",
                        None,
                    );
                    sh.send_answer(id, f, inflight);
                    return;
                }
                let (t, max_blockers) = (target.clone(), sh.cfg.max_loaded_blockers);
                sh.read_in_turn(
                    turn,
                    move |st, cb| st.get_contacts(&t, max_blockers, cb),
                    move |sh: &mut Shard, r| {
                        let f = match r {
                            // (Loaded meanwhile: the list in memory is the newer.)
                            Ok(rec) if sh.contacts.get(&target).is_none() => {
                                sh.presence_answer(request_id, &asker, &target, Some(&rec))
                            }
                            Ok(_) => sh.presence_answer(request_id, &asker, &target, None),
                            Err(e) => {
                                tracing::warn!(error = %e, user = %target, "reading a contact list failed");
                                reply::presence_result(
                                    request_id,
                                    Status::Unavailable,
                                    "contact list not available",
                                    None,
                                )
                            }
                        };
                        sh.send_answer(id, f, inflight);
                    },
                );
            }),
        );
    }

    /// The answer to `asker`'s GetPresence of `target`, from `target`'s list: `read` if
    /// given, else the one loaded here.
    fn presence_answer(
        &mut self,
        request_id: u64,
        asker: &str,
        target: &str,
        read: Option<&ContactRecord>,
    ) -> ringrouter_proto::v1::ServerFrame {
        if target == asker {
            return reply::presence_result(
                request_id,
                Status::Ok,
                "",
                Some(self.presence_of(target)),
            );
        }
        match read.or_else(|| self.contacts.get(target)) {
            None => reply::presence_result(
                request_id,
                Status::Unavailable,
                "contact list not available",
                None,
            ),
            Some(rec) if rec.state_of(asker) != ContactState::Accepted => {
                self.counters.reject(Status::Forbidden);
                reply::presence_result(
                    request_id,
                    Status::Forbidden,
                    "not an accepted contact",
                    None,
                )
            }
            Some(rec) => {
                let p = self.presence_with(target, Some(rec));
                reply::presence_result(request_id, Status::Ok, "", Some(p))
            }
        }
    }
}
