//! The HTTP API's side of a shard (`crate::http::api`): a message published through the
//! API travels the normal routing with a pseudo sender id, and its outcome (what a
//! SendResult would say) comes back here to the request waiting for it.
//!
//! A pseudo sender has generation [`API_GEN`] (0, which no session ever has) and a key
//! with the top bit set (past every pause table slot), so every session-facing path
//! (pausing it, resuming it, skipping its device, resolving it) finds no session.

use rustc_hash::FxHashMap;

use ringrouter_proto::Status;

use super::session::SessionId;
use super::Shard;

/// The generation of every pseudo sender id (sessions start at 1).
pub const API_GEN: u32 = 0;

/// Set in the key of every pseudo sender id.
const API_KEY_BIT: u32 = 1 << 31;

/// Where the outcome of a published message goes: its status and message id.
pub(crate) type ApiTx = crate::turns::AnswerTx<(Status, u64)>;

/// The API requests of one shard waiting for the outcome of a message.
#[derive(Default)]
pub struct ApiWaiters {
    next: u32,
    map: FxHashMap<u32, ApiTx>,
}

impl std::fmt::Debug for ApiWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiWaiters({})", self.map.len())
    }
}

/// True when `id` is an API request's pseudo sender, not a session.
#[inline]
pub fn is_api(id: SessionId) -> bool {
    id.gen == API_GEN
}

impl Shard {
    /// A pseudo sender id for a message published through the API; its outcome is sent
    /// to `tx` (see [`Shard::api_forget`] for a request that stops waiting).
    pub(crate) fn api_sender(&mut self, tx: ApiTx) -> SessionId {
        let w = &mut self.api_waiters;
        // Keys wrap after 2^31 requests; one still waiting then is long timed out.
        let key = API_KEY_BIT | (w.next & !API_KEY_BIT);
        w.next = w.next.wrapping_add(1);
        w.map.insert(key, tx);
        SessionId {
            shard: self.id as u16,
            gen: API_GEN,
            key,
        }
    }

    /// The request behind `id` stopped waiting (timed out): a late outcome is dropped.
    pub fn api_forget(&mut self, id: SessionId) {
        self.api_waiters.map.remove(&id.key);
    }

    /// Requests waiting for an outcome.
    pub fn api_waiting(&self) -> usize {
        self.api_waiters.map.len()
    }

    /// The outcome of a message published by the API request `id` (on this shard).
    pub(crate) fn answer_api(&mut self, id: SessionId, status: Status, msg_id: u64) {
        if let Some(tx) = self.api_waiters.map.remove(&id.key) {
            // The receiver is gone only when the HTTP connection ended meanwhile.
            let _ = tx.send((status, msg_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::stats::ShardStats;

    #[test]
    fn pseudo_senders_are_no_session_and_get_their_outcome_once() {
        let mut sh = Shard::new(
            0,
            2,
            Arc::new(Config::default()),
            Arc::new(ShardStats::default()),
        );
        let (tx, rx) = crate::turns::answer();
        let id = sh.api_sender(tx);
        assert!(is_api(id));
        assert_eq!(sh.resolve(id), None);
        assert_eq!(sh.api_waiting(), 1);
        sh.reply_send(Some((id, 0)), 7, Status::NotFound);
        assert_eq!(rx.try_recv().ok(), Some((Status::NotFound, 7)));
        assert_eq!(sh.api_waiting(), 0);
        // A forgotten request's late outcome goes nowhere.
        let (tx, rx) = crate::turns::answer();
        let id = sh.api_sender(tx);
        sh.api_forget(id);
        sh.reply_send(Some((id, 0)), 8, Status::Ok);
        assert!(rx.try_recv().is_err());
    }
}
