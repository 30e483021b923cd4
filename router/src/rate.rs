//! A token bucket, for the rates that bound what one client may ask for: Registers per
//! address and in all, refused Logins per user name (`net::signup`), adds of others to
//! rooms per user (`shard::adds`), live-only room deliveries per user (`shard::rooms`).

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

/// Token buckets by key (an address, a user name), all of one size and rate, in a table of
/// at most `max` keys. A key not in the table has a full bucket. When the table is full,
/// the keys whose bucket is full again are forgotten first (that changes nothing), then,
/// if that freed less than a quarter, the least recently used half: a key forgotten
/// starts over full, so a client with more keys than `max` is bounded by what else
/// bounds it (amortised O(1) an insert).
pub(crate) struct Buckets<K> {
    map: crate::maps::NameMap<K, Bucket>,
    /// Tokens a bucket holds at most.
    cap: f64,
    /// Tokens it gains a second (infinite: always full).
    per_sec: f64,
    max: usize,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    /// Buckets of `cap` tokens that gain `per_sec` a second, at most `max` keys tracked.
    pub(crate) fn new(cap: f64, per_sec: f64, max: usize) -> Self {
        Buckets {
            map: crate::maps::NameMap::default(),
            cap,
            per_sec,
            max: max.max(1),
        }
    }

    /// The tokens `key` holds at `now`.
    pub(crate) fn tokens(&self, key: &K, now: Instant) -> f64 {
        self.map
            .get(key)
            .map_or(self.cap, |b| b.tokens_at(self.cap, self.per_sec, now))
    }

    /// Whether `key` holds `cost` tokens at `now` (a full bucket when `cost` is more).
    pub(crate) fn holds(&self, key: &K, cost: f64, now: Instant) -> bool {
        self.tokens(key, now) >= cost.min(self.cap)
    }

    /// Takes `cost` tokens from `key` at `now` (a full bucket's worth at most; see
    /// [`Buckets::holds`]).
    pub(crate) fn take(&mut self, key: K, cost: f64, now: Instant) {
        let cost = cost.min(self.cap);
        let b = self.at(key, now);
        b.tokens -= cost;
    }

    /// `key`'s bucket brought to `now` (tracked from now on; room made first when the
    /// table is full).
    pub(crate) fn at(&mut self, key: K, now: Instant) -> &mut Bucket {
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            self.forget_some(now);
        }
        let (cap, per_sec) = (self.cap, self.per_sec);
        let b = self
            .map
            .entry(key)
            .or_insert_with(|| Bucket::full(cap, now));
        b.refill(cap, per_sec, now);
        b
    }

    fn forget_some(&mut self, now: Instant) {
        let (cap, per_sec) = (self.cap, self.per_sec);
        self.map.retain(|_, b| b.tokens_at(cap, per_sec, now) < cap);
        if self.map.len() > self.max - self.max / 4 {
            let mut seen: Vec<Instant> = self.map.values().map(|b| b.at).collect();
            let mid = seen.len() / 2;
            let (_, &mut cut, _) = seen.select_nth_unstable(mid);
            self.map.retain(|_, b| b.at > cut);
        }
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cost_is_taken_only_while_held_and_never_more_than_a_full_bucket() {
        let t0 = Instant::now();
        let mut b: Buckets<&str> = Buckets::new(10.0, 1.0, 4);
        assert!(b.holds(&"a", 10.0, t0));
        b.take("a", 6.0, t0);
        assert!(!b.holds(&"a", 6.0, t0), "4 left");
        assert!(b.holds(&"a", 4.0, t0));
        // Others are untouched; a cost past a full bucket needs (and takes) a full one.
        assert!(b.holds(&"b", 1_000.0, t0));
        b.take("b", 1_000.0, t0);
        assert_eq!(b.tokens(&"b", t0), 0.0);
        // Refilled at 1 a second, up to the cap.
        assert!(b.holds(&"a", 6.0, t0 + Duration::from_secs(2)));
        assert_eq!(b.tokens(&"a", t0 + Duration::from_secs(60)), 10.0);
    }

    #[test]
    fn the_table_stays_within_its_bound() {
        let t0 = Instant::now();
        let mut b: Buckets<u32> = Buckets::new(10.0, 1.0, 8);
        for k in 0..100u32 {
            b.take(k, 5.0, t0 + Duration::from_millis(u64::from(k)));
            assert!(b.len() <= 8, "{} keys", b.len());
        }
        // The newest key is still tracked.
        assert!(!b.holds(&99, 6.0, t0 + Duration::from_millis(99)));
    }
}
