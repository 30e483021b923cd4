//! The shard's budget for client frames still arriving (`--max-input-bytes`).
//!
//! A frame is gathered in its session's read buffer (a bigger one than a read buffer,
//! 64 KiB, in a buffer of its own; a WebSocket message in its decoder) until its last
//! byte comes. One connection holds at most a frame that way, but every connection can:
//! 1 500 connections each sending all but the last byte of a 1 MiB frame held 1.5 GiB
//! until heartbeats cut them ~45 s later, and `--max-connections` of them would take
//! the machine's memory (100 000 holding 60 KB each, 6 GB).
//!
//! The bytes the shard's readers hold of such frames, each counted from 16 KiB
//! (`net::session::COUNTED_FROM`: under it a connection holds about what its socket's
//! receive buffer does), are counted here. Past the
//! budget, the connections whose big frame began longest ago are closed (an Error
//! UNAVAILABLE first, like Redis closing the clients over `maxmemory-clients`), until
//! the rest fit: an honest client's big frame arrives in milliseconds, so the oldest
//! are the ones trickling theirs. What is counted is bytes received (held in
//! memory), not a frame's announced length: a few bytes announcing big frames take
//! nothing from the budget.

use std::collections::{BTreeMap, HashMap};

use ringrouter_proto::Status;

use super::session::{CloseReason, SessionKey};
use super::Shard;

/// What the shard's connections hold of frames still arriving, and in which order
/// they began.
#[derive(Debug)]
pub struct InputBudget {
    limit: usize,
    held: usize,
    /// Holders by when their frame began (a counter), oldest first.
    by_age: BTreeMap<u64, SessionKey>,
    /// Each holder's (age, bytes held).
    charges: HashMap<SessionKey, (u64, usize)>,
    next_age: u64,
}

impl InputBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        InputBudget {
            limit,
            held: 0,
            by_age: BTreeMap::new(),
            charges: HashMap::new(),
            next_age: 0,
        }
    }

    /// Bytes held, over all holders.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Records that `key` holds `bytes` (0: none). Past the budget, the oldest holders
    /// (`key` among them) are let go until the rest fit, and returned, oldest first:
    /// the caller closes them.
    pub fn set(&mut self, key: SessionKey, bytes: usize) -> Vec<SessionKey> {
        if bytes == 0 {
            self.release(key);
            return Vec::new();
        }
        match self.charges.get_mut(&key) {
            Some((_, b)) => {
                self.held = self.held - *b + bytes;
                *b = bytes;
            }
            None => {
                let age = self.next_age;
                self.next_age += 1;
                self.charges.insert(key, (age, bytes));
                self.by_age.insert(age, key);
                self.held += bytes;
            }
        }
        let mut gone = Vec::new();
        while self.held > self.limit {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((_, b)) = self.charges.remove(&oldest) {
                self.held -= b;
            }
            gone.push(oldest);
        }
        gone
    }

    /// `key` holds nothing any more (its frame completed, or it is closed).
    pub fn release(&mut self, key: SessionKey) {
        if let Some((age, b)) = self.charges.remove(&key) {
            self.by_age.remove(&age);
            self.held -= b;
        }
    }
}

impl Shard {
    /// Records that session `key`'s reader holds `bytes` of a frame still arriving (0:
    /// none), and closes the sessions the budget lets go (see the module).
    /// Returns whether `key` is still open. A closing session holds nothing.
    pub fn hold_input(&mut self, key: SessionKey, bytes: usize) -> bool {
        if self.sessions.get(key).is_none_or(|s| s.closing.is_some()) {
            self.input.release(key);
            return false;
        }
        let gone = self.input.set(key, bytes);
        if !gone.is_empty() {
            let reason = format!(
                "the router holds --max-input-bytes ({}) of frames still arriving on this \
                 shard; this connection's began first",
                self.cfg.max_input_bytes
            );
            for k in gone {
                tracing::info!(shard = self.id, "closing a session past the input budget");
                self.counters.input_budget_closes += 1;
                self.close(
                    k,
                    CloseReason::InputBudget,
                    Some((Status::Unavailable, &reason)),
                );
                // Its reader, parked on the socket with the frame's bytes, ends now (a
                // read finds the end) and lets them go: not once the Error is written.
                if let Some(s) = self.sessions.get(k) {
                    // Safety: the session's socket is open until the session is removed.
                    unsafe { libc::shutdown(s.fd, libc::SHUT_RD) };
                }
            }
        }
        self.sessions.get(key).is_some_and(|s| s.closing.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_budget_nobody_goes_and_releases_give_it_back() {
        let mut b = InputBudget::new(100);
        assert!(b.set(1, 40).is_empty());
        assert!(b.set(2, 60).is_empty());
        assert_eq!(b.held(), 100);
        b.release(1);
        assert_eq!(b.held(), 60);
        assert!(b.set(2, 0).is_empty());
        assert_eq!(b.held(), 0);
        // Released twice, or never charged: nothing changes.
        b.release(2);
        b.release(7);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn past_the_budget_the_oldest_go_first_whoever_grew() {
        let mut b = InputBudget::new(100);
        assert!(b.set(1, 30).is_empty());
        assert!(b.set(2, 30).is_empty());
        assert!(b.set(3, 30).is_empty());
        // 1 grows: its age stays when its frame began, and it is the oldest.
        assert_eq!(b.set(1, 50), vec![1]);
        assert_eq!(b.held(), 60);
        // A newcomer over by far takes the next oldest, then itself if still over.
        assert_eq!(b.set(4, 90), vec![2, 3]);
        assert_eq!(b.held(), 90);
        assert_eq!(b.set(5, 200), vec![4, 5]);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_holder_let_go_and_back_counts_as_new() {
        let mut b = InputBudget::new(100);
        assert!(b.set(1, 50).is_empty());
        assert!(b.set(2, 50).is_empty());
        b.release(1);
        assert!(b.set(1, 50).is_empty());
        // 2 is older now.
        assert_eq!(b.set(3, 10), vec![2]);
    }
}
