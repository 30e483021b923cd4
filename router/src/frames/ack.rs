//! Ack{up_to_seq}: a cumulative ack of a session's deliveries; what it covers is
//! forgotten, and removed from the store when it was stored.

use bytes::Bytes;
use ringrouter_proto::v1::Ack;
use ringrouter_proto::Status;

use crate::shard::{Flow, SessionKey, Shard};

impl Shard {
    /// Ack{up_to_seq}: forgets the session's deliveries up to it and removes from the
    /// user's offline queue what it covers there; refused beyond the last delivered seq.
    pub(crate) fn on_ack(&mut self, key: SessionKey, a: Ack) -> Flow {
        let Some(s) = self.sessions.get_mut(key) else {
            return Flow::Stop;
        };
        if a.up_to_seq > s.last_seq {
            let reason = format!(
                "ack of seq {} beyond the last delivered seq {}",
                a.up_to_seq, s.last_seq
            );
            self.push_error(key, Status::BadRequest, reason, 0);
        } else {
            self.take_ack(key, a.up_to_seq);
        }
        Flow::Continue
    }

    /// An Ack read ahead of the frames before it (its reader waits on a recipient, see
    /// `net::session`): taken now if it is valid, else left for its turn (in order,
    /// where an invalid one is answered). Acks are cumulative: taking it again in its
    /// turn changes nothing.
    pub(crate) fn ack_ahead(&mut self, key: SessionKey, up_to_seq: u64) {
        if self
            .sessions
            .get(key)
            .is_some_and(|s| up_to_seq <= s.last_seq && s.closing.is_none())
        {
            self.take_ack(key, up_to_seq);
        }
    }

    /// Forgets session `key`'s deliveries up to `up_to_seq` (at most its last seq).
    fn take_ack(&mut self, key: SessionKey, up_to_seq: u64) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if up_to_seq <= s.acked {
            return;
        }
        s.acked = up_to_seq;
        let top = s.unacked.ack(up_to_seq);
        if top > 0 {
            let user = s.user.clone();
            let top = self.removable_up_to(&user, key, top);
            if top > 0 {
                self.remove_stored(&user, top);
            }
        }
        self.continue_loading(key);
    }

    /// How far an ack of session `key` that covers store seqs up to `top` may remove
    /// from `user`'s queue: not what another device of the user still holds unacked
    /// (its close must find it there, as a memory-mode close requeues it), nor what a
    /// closed device left unacked while others stayed ([`Shard::stored_floor`]); and
    /// nothing while another device is paging through the queue (acks are cumulative:
    /// a later one removes these as well). 0: nothing.
    fn removable_up_to(&self, user: &Bytes, key: SessionKey, top: u64) -> u64 {
        let mut limit = top;
        if let Some(&floor) = self.stored_floor.get(user) {
            limit = limit.min(floor.saturating_sub(1));
        }
        for &k in self.user_session_keys(user) {
            let Some(o) = self.sessions.get(k).filter(|_| k != key) else {
                continue;
            };
            if o.loading {
                return 0;
            }
            let low = o.unacked.lowest_store_seq();
            if low > 0 {
                limit = limit.min(low - 1);
            }
        }
        limit
    }
}
