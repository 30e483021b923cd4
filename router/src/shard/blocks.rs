//! Blockers past those loaded (`--max-loaded-blockers`).
//!
//! A user's list notes who blocks it, so that its direct messages, receipts and room
//! adds are refused where they start ([`Shard::dm_refusal`]). Those notes grow with the
//! users that block one user (a spammer blocked by a million), and were all loaded with
//! its list at every login. Now at most `--max-loaded-blockers` are, the first by name;
//! a list with more is marked
//! ([`ContactRecord::blockers_unloaded`](crate::store::contacts::ContactRecord::blockers_unloaded)).
//!
//! For such a user a frame that writes to a peer the loaded notes cannot answer for
//! waits, before it is checked ([`Shard::blockers_known`], where the DM, receipt and
//! room-add paths look for blocks): the
//! store is asked about every peer it names past those loaded (one key each; kept
//! answers too, which the answer's own may push out), the session's reader waits
//! for the answer (as for a big answer: acks are still read ahead), and the frame is
//! handled again with the answer (`Flow::Again`). The answers are kept with the list
//! ([`CHECKS_PER_LIST`](crate::store::contacts::CHECKS_PER_LIST), the latest), so a
//! conversation reads the store once; a block or unblock of a peer replaces its
//! answer, and an answer asked before a block was noted is not kept. A frame waits at
//! most once: handled again, what is still unknown (a failed read) is refused
//! UNAVAILABLE.
//!
//! Checks that the peer's own list makes again on its home shard (a contact request, a
//! presence query) use the loaded notes only.

use super::session::SessionKey;
use super::Shard;

/// What a lookup found: `(peer, blocks)`, sorted by peer.
pub type Found = Vec<(String, bool)>;

impl Shard {
    /// Before session `key`'s next frame is handled: what the lookup it waited for found
    /// becomes the frame's (see [`Shard::blockers_known`]).
    pub(crate) fn take_blocker_answer(&mut self, key: SessionKey) {
        if self.blocker_answers.is_empty() {
            return;
        }
        let Some(id) = self.session_id(key) else {
            return;
        };
        let Some(i) = self.blocker_answers.iter().position(|(s, ..)| *s == id) else {
            return;
        };
        let (_, mark, found) = self.blocker_answers.swap_remove(i);
        // A blocker noted since it was asked (the answer may be older than the note): the
        // frame looks again.
        let user = std::str::from_utf8(&self.sessions[key].user).unwrap_or_default();
        if self.contacts.blocker_mark(user) == mark {
            self.looked_up = Some(found);
        }
    }

    /// Whether `peer` blocks `user` (homed here, list loaded), as far as this shard
    /// knows without the store: the blockers loaded, the lookups kept with the list,
    /// and what the frame being handled waited for.
    pub(crate) fn known_blocker(&self, user: &str, peer: &str) -> Option<bool> {
        self.contacts.known_blocker(user, peer).or_else(|| {
            let found = self.looked_up.as_ref()?;
            let i = found.binary_search_by(|(p, _)| p.as_str().cmp(peer)).ok()?;
            Some(found[i].1)
        })
    }

    /// Before session `key`'s frame that writes to `peers` is checked for blocks
    /// (`dm_refusal`, where the DM, receipt and room-add paths already look while
    /// [`Shard::dm_gate`]): true if it may be handled now, with what the lookup it
    /// waited for found, if it did (in [`Shard::looked_up`](Shard), which the caller
    /// clears once it checked). False if its user's list cannot say whether some of them
    /// block it: those are read from the store, the session's reader waits for the
    /// answer, and the frame is to be handled again then (`Flow::Again`; see the
    /// module's notes).
    pub(crate) fn blockers_known<'a>(
        &mut self,
        key: SessionKey,
        peers: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> bool {
        self.take_blocker_answer(key);
        if self.looked_up.is_some() {
            // Handled again after its lookup.
            return true;
        }
        let (Some(id), Some(s)) = (self.session_id(key), self.sessions.get(key)) else {
            return true;
        };
        let Ok(user) = std::str::from_utf8(&s.user) else {
            return true;
        };
        let Some(rec) = self.contacts.get(user).filter(|r| r.blockers_unloaded) else {
            return true;
        };
        // The peers the loaded blockers cannot answer for.
        let past_loaded = peers
            .filter_map(|p| std::str::from_utf8(p).ok())
            .filter(|&p| p != user && rec.blocked_by_state(p).is_none());
        // Nothing is read (nor allocated: a conversation's every DM asks) while the kept
        // lookups answer for them all.
        if past_loaded
            .clone()
            .all(|p| self.contacts.known_blocker(user, p).is_some())
        {
            return true;
        }
        // Else every one of them is asked, kept ones too: kept ones may go while the
        // lookup is under way (the answer's own are kept, the latest 256), and the frame
        // handled again must find each peer it names (a CreateRoom of 300 members was
        // refused UNAVAILABLE at every retry).
        let mut unknown: Vec<String> = past_loaded.map(str::to_owned).collect();
        unknown.sort_unstable();
        unknown.dedup();
        let user = user.to_owned();
        let mark = self.contacts.blocker_mark(&user);
        self.counters.blocker_lookups += unknown.len() as u64;
        self.big_answer_begun(key);
        let asked = unknown.clone();
        let u = user.clone();
        self.store_req(
            move |st, cb| st.blockers_among(&u, asked, cb),
            move |sh, r| {
                let found: Found = match r {
                    Ok(blocks) => unknown.into_iter().zip(blocks).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a user's blockers failed");
                        Vec::new()
                    }
                };
                if let Some(mark) = mark {
                    sh.contacts.checked(&user, mark, &found);
                }
                let mut answers = std::mem::take(&mut sh.blocker_answers);
                answers.retain(|(s, ..)| sh.resolve(*s).is_some());
                if sh.resolve(id).is_some() {
                    answers.push((id, mark, found));
                }
                sh.blocker_answers = answers;
                sh.big_answer_queued(id);
            },
        );
        false
    }
}
