//! Account requests of a logged-in session: DeleteAccount and ListUsers. (Register and
//! password Login happen before a session exists: `prelogin`, driven by `net::accept`.)

use ringrouter_proto::names::MAX_NAME_BYTES;
use ringrouter_proto::reply;
use ringrouter_proto::v1::{ListUsers, ServerFrame};
use ringrouter_proto::Status;

use crate::shard::mail::{AfterAll, Mail, RoomOp, RoomReq};
use crate::shard::rooms::OwnItem;
use crate::shard::store_link::store_status;
use crate::shard::{CloseReason, SessionId, SessionKey, Shard};

fn account_result(
    request_id: u64,
    status: Status,
    reason: &str,
    users: Vec<String>,
) -> ServerFrame {
    reply::account_frame(reply::account_result(
        request_id,
        status,
        reason,
        String::new(),
        users,
    ))
}

impl Shard {
    /// ListUsers: names matching a glob, at most `list_users_page` of them.
    pub fn on_list_users(&mut self, key: SessionKey, l: ListUsers) {
        let Some(from) = self.session_id(key) else {
            return;
        };
        let page = self.cfg.list_users_page;
        let limit = match l.limit as usize {
            0 => page,
            n => n.min(page),
        };
        if l.pattern.len() > MAX_NAME_BYTES {
            // A pattern matches names, so it is no longer than one: refused here, with
            // the bound, before it costs the storage thread anything.
            let reason = format!("pattern is longer than {MAX_NAME_BYTES} bytes");
            self.counters.reject(Status::BadRequest);
            let frame = account_result(l.request_id, Status::BadRequest, &reason, Vec::new());
            self.send_to_session(from, frame);
            return;
        }
        let pattern = if l.pattern.is_empty() {
            "*".to_owned()
        } else {
            l.pattern
        };
        let request_id = l.request_id;
        // A page of names: a big answer, and a page read (a scan of up to 64 keys a name
        // asked for).
        self.page_read(
            key,
            move |st, cb| st.list_users(&pattern, limit, cb),
            move |sh, r| {
                let frame = match r {
                    Ok(users) => account_result(request_id, Status::Ok, "", users),
                    Err(e) => {
                        account_result(request_id, store_status(&e), &e.to_string(), Vec::new())
                    }
                };
                sh.push_big_answer(from, &frame);
            },
        );
    }

    /// DeleteAccount: leaves every room (deleting the ones the user owns), removes the
    /// account and its offline queue, answers, then ends every session of the user (what
    /// they had not acked is dropped with the account). Behind a Create or Join of the
    /// user in flight, it begins once that is answered ([`OwnItem::Delete`]); the user's
    /// Create and Join after it are refused CONFLICT (`Shard::refused_while_deleting`,
    /// and the room module's own check for those queued behind that one).
    pub fn on_delete_account(&mut self, key: SessionKey, request_id: u64) {
        let Some(from) = self.session_id(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&self.sessions[key].user).into_owned();
        // (A read of the list made before the deletion is not kept: `ContactReads`.)
        self.contact_reads.changed(&user);
        if !self.deleting.insert(user.clone()) {
            // Pipelined again (by this device or another): each would repeat the whole
            // fan-out to rooms and contacts.
            self.counters.reject(Status::Conflict);
            let frame = account_result(
                request_id,
                Status::Conflict,
                "a deletion of this account is under way",
                Vec::new(),
            );
            self.push_frame(key, &frame);
            return;
        }
        if self.room_quota.contains_key(user.as_bytes()) {
            let item = OwnItem::Delete {
                from,
                request_id,
                inflight: self.request_in_flight(from),
            };
            if let Some(waiting) = self.room_quota.get_mut(user.as_bytes()) {
                self.parked_bytes += item.weight();
                waiting.push_back(item);
            }
            return;
        }
        self.begin_delete_account(from, request_id, user);
    }

    /// DeleteAccount once no Create or Join of `user` is on its way: reads the user's
    /// rooms, mails a purge to each room's home, then deletes the account record.
    pub(crate) fn begin_delete_account(&mut self, from: SessionId, request_id: u64, user: String) {
        let u = user.clone();
        self.store_req(
            |st, cb| st.rooms_of_leaving(&u, cb),
            move |sh, r| match r {
                Ok(rooms) => {
                    let Some(done) = sh.store.as_ref().map(|l| l.done.clone()) else {
                        sh.forget_contacts_of(&user, None);
                        sh.delete_account_record(from, request_id, user);
                        return;
                    };
                    // The account record goes (and the deletion is answered) once every
                    // room is done with its purge: before, whoever took the name at once
                    // could still find the rooms listed as its own, and read their history
                    // (the store's membership keys), until the purges landed.
                    let u = user.clone();
                    let after = AfterAll::new(
                        Box::new(move |sh: &mut Shard| {
                            sh.delete_account_record(from, request_id, u)
                        }),
                        done,
                    );
                    // (And once the users that block it, which its list may not all
                    // hold, are told: before the record, and the keys that name them,
                    // go.)
                    sh.forget_contacts_of(&user, Some(after.clone()));
                    for room in rooms {
                        let home = sh.home(room.as_bytes());
                        let req = RoomReq {
                            user: user.clone(),
                            from,
                            request_id: 0,
                            op: RoomOp::Purge {
                                room,
                                after: after.clone(),
                            },
                            quota: false,
                            session_gone: false,
                            inflight: Default::default(),
                        };
                        sh.post(home, Mail::Room(Box::new(req)));
                    }
                }
                Err(e) => {
                    sh.deleting.remove(&user);
                    let frame =
                        account_result(request_id, store_status(&e), &e.to_string(), Vec::new());
                    sh.send_to_session(from, frame);
                }
            },
        );
    }

    fn delete_account_record(&mut self, from: SessionId, request_id: u64, user: String) {
        // What its ended sessions left unacked and the store has not got yet goes with it
        // (what it has got goes with the queue).
        self.drop_requeues_of(user.as_bytes());
        let u = user.clone();
        self.deletion_req(
            bytes::Bytes::from(user.clone().into_bytes()),
            move |st, cb| st.delete_account(&u, cb),
            move |sh, r| {
                sh.deleting.remove(&user);
                let status = match &r {
                    // Nothing stored (no account record, no queue) is still "deleted".
                    Ok(()) | Err(crate::store::StoreError::NotFound) => Status::Ok,
                    Err(e) => store_status(e),
                };
                let reason = match &r {
                    Err(e) if status != Status::Ok => e.to_string(),
                    _ => String::new(),
                };
                if status == Status::Ok {
                    // Gone with the account: nothing may write the list back (the last
                    // session's last-seen time would), nor requeue what its sessions
                    // hold, even if the answer below closes the asking one (a slow
                    // consumer past its hard cap).
                    sh.contacts.forget(&user);
                    // (Sessions that ended while the deletion was on its way.)
                    sh.drop_requeues_of(user.as_bytes());
                    for k in sh.live_sessions(user.as_bytes()) {
                        if let Some(s) = sh.sessions.get_mut(k) {
                            s.discard_unacked = true;
                        }
                    }
                }
                sh.send_to_session(
                    from,
                    account_result(request_id, status, &reason, Vec::new()),
                );
                if status != Status::Ok {
                    return;
                }
                for k in sh.live_sessions(user.as_bytes()) {
                    sh.close(
                        k,
                        CloseReason::Kicked,
                        Some((Status::Unauthorized, "account deleted")),
                    );
                }
            },
        );
    }
}
