//! The router's memory ceiling (`--max-memory`): what sessions hold together.
//!
//! Every session's holdings have bounds of their own (`--max-pending-bytes` queued for
//! its socket, `--max-unacked-bytes-per-session` delivered and not acked, a login's
//! backlog page), but those multiply by the sessions: 64 devices of four users that
//! never read held 1.1 GB of backlog pages, and a thousand sessions at their queue
//! bound hold 8 GB. Like Redis closing the clients over `maxmemory-clients`, when the
//! process's resident memory is over the ceiling, each shard closes the sessions that
//! hold the most (queued plus unacked bytes, at least [`MIN_VICTIM_BYTES`] each) until
//! they account for its share of the excess, as slow consumers: what they held unacked
//! goes to their offline queues, as when any session ends. Then it waits
//! [`SETTLE`] for the memory to come back before it looks again, and what it is still
//! handing to the store is not counted as over.
//!
//! Resident memory, not the sessions' counts, decides whether to act: a room message's
//! payload is one copy that every member's count includes, so counts add up to far more
//! than is held under a big room's fan-out. The counts only choose whom to close.
//!
//! When the sessions do not hold the excess (loaded contact lists and rooms, history
//! held for its write), closing them would not help, and each new session brings more:
//! new logins are then refused UNAVAILABLE ([`MemoryGate`], read before a Login's
//! credentials are checked) until a shard measures memory under the ceiling, or finds
//! sessions holding the excess to close. Like Redis refusing writes past
//! `maxmemory`. (While closed sessions' holdings move to the store, their users may log
//! in again at once: what they held is on its way out.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringrouter_proto::Status;

use super::session::{CloseReason, SessionKey};
use super::Shard;

/// A session holding less is never closed for the ceiling: it is not what fills memory
/// (with 100 000 sessions, 1 MiB each is 100 GB).
pub const MIN_VICTIM_BYTES: usize = 1 << 20;

/// How long a shard waits after closing sessions for the ceiling before it looks again:
/// what they held is let go (the store takes what was unacked) over a few ticks.
pub const SETTLE: Duration = Duration::from_millis(500);

/// For how long what the sessions closed for the ceiling held is taken off the excess
/// (the store's memtables take what they left unacked before it is written, and the
/// allocator gives freed memory back later): without it a shard closed twice as many
/// as needed, the memory not yet down when it looked again.
pub const RECENT: Duration = Duration::from_secs(3);

/// The process's resident memory in bytes (`/proc/self/statm`), if it can be read.
pub fn resident_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = s.split_whitespace().nth(1)?.parse().ok()?;
    // Safety: sysconf only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(usize::try_from(page).ok()?))
}

/// Whom to close: of `held` (session, bytes), the biggest holders of at least
/// [`MIN_VICTIM_BYTES`], biggest first, until they hold `share` bytes (all of them if
/// they hold less), with what each holds.
pub fn victims(mut held: Vec<(SessionKey, usize)>, share: usize) -> Vec<(SessionKey, usize)> {
    held.retain(|&(_, b)| b >= MIN_VICTIM_BYTES);
    held.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut freed = 0;
    held.into_iter()
        .take_while(|&(_, b)| {
            let more = freed < share;
            freed += b;
            more
        })
        .collect()
}

/// Whether logins are refused for memory: every shard found resident memory over the
/// ceiling at its last look and its own sessions not holding the excess. (One shard's
/// word is not enough: when another shard's sessions hold the excess, that shard is
/// closing them, and what it hands to the store counts as leaving only there.)
#[derive(Debug)]
pub struct MemoryGate {
    /// Shards that say so.
    full: AtomicUsize,
    shards: usize,
}

impl MemoryGate {
    /// The gate of a router of `shards` shards.
    pub fn new(shards: usize) -> Self {
        MemoryGate {
            full: AtomicUsize::new(0),
            shards: shards.max(1),
        }
    }

    /// True while logins are refused.
    pub fn refuses(&self) -> bool {
        self.full.load(Ordering::Relaxed) >= self.shards
    }
}

impl Default for MemoryGate {
    fn default() -> Self {
        MemoryGate::new(1)
    }
}

impl MemoryWatch {
    /// This shard's word in the gate.
    fn set_full(&mut self, full: bool) {
        if full != self.full {
            self.full = full;
            if full {
                self.gate.full.fetch_add(1, Ordering::Relaxed);
            } else {
                self.gate.full.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// A shard's state of the ceiling.
#[derive(Debug, Default)]
pub struct MemoryWatch {
    /// The router's [`MemoryGate`] (each shard has one of its own until the router
    /// gives it the shared one).
    pub gate: std::sync::Arc<MemoryGate>,
    /// This shard counts in `gate` as finding memory over the ceiling and not the
    /// sessions'.
    full: bool,
    /// When it last gave memory back to measure (at most once per [`SETTLE`]).
    looked: Option<Instant>,
    /// When it last closed sessions, and what those closed within [`RECENT`] held.
    closed: Option<(Instant, usize)>,
    /// It said that the excess is not the sessions' (once until it closes some).
    warned: bool,
}

impl Shard {
    /// Called by the ticker: over the ceiling, closes this shard's share of the sessions
    /// that hold the most (see the module).
    pub(crate) fn keep_under_max_memory(&mut self, now: Instant) {
        let limit = self.cfg.max_memory;
        if limit == 0
            || self
                .memory
                .looked
                .is_some_and(|at| now.duration_since(at) < SETTLE)
        {
            return;
        }
        // What sessions closed within RECENT held is on its way out.
        let recent = match self.memory.closed {
            Some((at, bytes)) if now.duration_since(at) < RECENT => bytes,
            _ => 0,
        };
        let Some(mut rss) = resident_bytes() else {
            return;
        };
        // What this shard is handing to the store (sessions closed before left it
        // unacked) is on its way out: not a reason to close more. Nor are frames still
        // arriving: `--max-input-bytes` bounds them.
        let leaving = self.requeue_bytes + self.store_bytes + self.input.held();
        if rss.saturating_sub(leaving) > limit {
            // Read buffers kept whole by a few payload bytes each (see
            // `retention::PIN_MAX_US`) are let go first: the payloads are copied.
            self.unpin_payloads(true);
            // Memory freed (by sessions closed before, say) is purged a second later:
            // given back first (at most once per SETTLE: milliseconds), then measured
            // again.
            self.memory.looked = Some(now);
            crate::alloc::collect_now();
            rss = resident_bytes().unwrap_or(rss);
        }
        let staying = rss.saturating_sub(leaving);
        if staying <= limit {
            self.memory.set_full(false);
            return;
        }
        let share = (staying - limit)
            .div_ceil(self.n.max(1))
            .saturating_sub(recent);
        if share == 0 {
            return;
        }
        // What a session holds of its own: a room payload is one copy for all the
        // members (closing one frees nothing of it, and puts a copy of it in the
        // member's offline queue). Counted with a pass over its queues, so only for the
        // sessions whose counts could make them candidates.
        let held: Vec<(SessionKey, usize)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.closing.is_none())
            .filter_map(|(k, s)| {
                let counted = s.pending() + s.unacked.bytes();
                (counted >= MIN_VICTIM_BYTES).then(|| {
                    let shared = s.out.shared_bytes() + s.unacked.shared_bytes();
                    (k, counted.saturating_sub(shared))
                })
            })
            .collect();
        let gone = victims(held, share);
        let closed: usize = gone.iter().map(|&(_, b)| b).sum();
        if closed < share / 2 {
            // Most of the excess is not the sessions' (caches, buffers the bounds
            // above cover): closing them would not bring it down. No new session
            // adds to it meanwhile.
            self.memory.set_full(true);
            if !self.memory.warned {
                self.memory.warned = true;
                tracing::warn!(
                    shard = self.id,
                    rss,
                    limit,
                    sessions_hold = closed,
                    "resident memory over --max-memory, but not held by sessions: none closed"
                );
            }
            return;
        }
        tracing::warn!(
            shard = self.id,
            rss,
            limit,
            sessions = gone.len(),
            "resident memory over --max-memory: closing the sessions holding the most"
        );
        let reason = format!(
            "the router's memory is over --max-memory ({limit} bytes); this session held \
             more than the others"
        );
        // Closing these brings it down: logins go on.
        self.memory.set_full(false);
        for (k, _) in gone {
            self.counters.memory_closes += 1;
            self.close(
                k,
                CloseReason::SlowConsumer,
                Some((Status::SlowConsumer, &reason)),
            );
        }
        self.memory.closed = Some((now, recent + closed));
        self.memory.warned = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: usize = MIN_VICTIM_BYTES;

    fn keys(v: Vec<(SessionKey, usize)>) -> Vec<SessionKey> {
        v.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn the_biggest_holders_go_until_they_make_the_share() {
        let held = vec![(1, 2 * M), (2, 8 * M), (3, 5 * M), (4, M / 2)];
        assert_eq!(victims(held.clone(), 1), vec![(2, 8 * M)]);
        let victims = |h, s| keys(victims(h, s));
        assert_eq!(victims(held.clone(), 1), vec![2]);
        assert_eq!(victims(held.clone(), 8 * M), vec![2]);
        assert_eq!(victims(held.clone(), 8 * M + 1), vec![2, 3]);
        // Small holders are never closed, even if the share is not made.
        assert_eq!(victims(held, 100 * M), vec![2, 3, 1]);
    }

    /// Logins are refused only while every shard says the excess is not its sessions'.
    #[test]
    fn the_gate_refuses_when_every_shard_says_so() {
        let gate = std::sync::Arc::new(MemoryGate::new(2));
        let mut a = MemoryWatch {
            gate: gate.clone(),
            ..Default::default()
        };
        let mut b = MemoryWatch {
            gate: gate.clone(),
            ..Default::default()
        };
        a.set_full(true);
        a.set_full(true);
        assert!(!gate.refuses(), "one shard of two");
        b.set_full(true);
        assert!(gate.refuses());
        a.set_full(false);
        assert!(!gate.refuses());
        a.set_full(false);
        b.set_full(false);
        assert_eq!(gate.full.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn nobody_holding_much_means_nobody_goes() {
        assert!(victims(vec![(1, M - 1), (2, 0)], 10 * M).is_empty());
        assert!(victims(Vec::new(), 10 * M).is_empty());
    }

    #[test]
    fn resident_memory_and_the_default_ceiling_are_read() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 0);
        let auto = crate::config::auto_max_memory().expect("/proc/meminfo");
        assert!(auto > rss, "{auto} against {rss}");
    }
}
