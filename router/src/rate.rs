//! A token bucket, for the rates that bound what one client may ask for: Registers per
//! address and in all (`net::signup`), adds of others to rooms per user (`shard::adds`).

use std::time::Instant;

/// Holds up to `cap` tokens and gains `per_sec` a second (both kept by its owner);
/// `tokens` may go below 0 (a debt its owner allows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    /// Tokens at `at`.
    pub(crate) tokens: f64,
    /// When it was last used (and refilled).
    pub(crate) at: Instant,
}

impl Bucket {
    /// A bucket of `cap` tokens at `now`.
    pub(crate) fn full(cap: f64, now: Instant) -> Self {
        Bucket {
            tokens: cap,
            at: now,
        }
    }

    /// The tokens it holds at `now` (never more than `cap`; `cap` at an infinite rate).
    pub(crate) fn tokens_at(&self, cap: f64, per_sec: f64, now: Instant) -> f64 {
        if per_sec.is_infinite() {
            return cap;
        }
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        (self.tokens + gained).min(cap)
    }

    /// Brings it to `now`.
    pub(crate) fn refill(&mut self, cap: f64, per_sec: f64, now: Instant) {
        self.tokens = self.tokens_at(cap, per_sec, now);
        self.at = now;
    }
}
