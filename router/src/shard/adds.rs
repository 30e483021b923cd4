//! How fast one user may add others to rooms (`--max-member-adds-per-minute`), and change
//! its contact list (`--max-contact-ops-per-minute`, one token an op): a token bucket per
//! user, on the user's home shard, where its CreateRoom, AddMember and ContactOp frames
//! arrive. An initial member or an AddMember takes one token; a CreateRoom with more
//! initial members than the bucket holds is let through when the bucket is full and
//! leaves it in debt, so one big room is always possible and the long-run rate still
//! holds.
//!
//! Each add can store events in an offline target's queue (joined, then removed or
//! deleted): the bucket bounds what one account can put there, where CreateRoom with
//! members and DeleteRoom in a loop stored 7 763 events per target in 25 s.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::NameMap;
use crate::rate::Bucket;

/// Users below which the map is never swept for full buckets.
const SWEEP_MIN: usize = 1_024;

/// The buckets of the users homed on one shard that added someone lately (a full
/// bucket is the same as none, and is swept out as the map grows).
#[derive(Debug)]
pub struct AddRate {
    buckets: NameMap<Bytes, Bucket>,
    /// Size at which the next sweep runs.
    sweep_at: usize,
}

impl Default for AddRate {
    fn default() -> AddRate {
        AddRate {
            buckets: NameMap::default(),
            sweep_at: SWEEP_MIN,
        }
    }
}

/// `b`'s tokens at `now`, refilled at `per_minute` up to `per_minute`.
fn refilled(b: &Bucket, per_minute: u32, now: Instant) -> f64 {
    let cap = f64::from(per_minute);
    b.tokens_at(cap, cap / 60.0, now)
}

impl AddRate {
    /// Takes `n` adds from `user`'s allowance of `per_minute` (at least 1) at `now`, or
    /// says how long until it would have them (nothing taken).
    pub fn take(
        &mut self,
        user: &[u8],
        n: usize,
        per_minute: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        if n == 0 {
            return Ok(());
        }
        let per_minute = per_minute.max(1);
        let tokens = self.check(user, n, per_minute, now)?;
        let b = Bucket {
            tokens: tokens - n as f64,
            at: now,
        };
        match self.buckets.get_mut(user) {
            Some(slot) => *slot = b,
            None => {
                self.buckets.insert(Bytes::copy_from_slice(user), b);
                if self.buckets.len() >= self.sweep_at {
                    self.sweep(per_minute, now);
                }
            }
        }
        Ok(())
    }

    /// `user`'s tokens at `now` if they allow `n` adds (see [`AddRate::take`]), else how
    /// long until they would; nothing taken.
    pub fn check(
        &self,
        user: &[u8],
        n: usize,
        per_minute: u32,
        now: Instant,
    ) -> Result<f64, Duration> {
        let per_minute = per_minute.max(1);
        let cap = f64::from(per_minute);
        let tokens = self
            .buckets
            .get(user)
            .map_or(cap, |b| refilled(b, per_minute, now));
        // More than a full bucket: let through once full.
        let need = (n as f64).min(cap);
        if tokens < need {
            let wait = (need - tokens) * 60.0 / cap;
            return Err(Duration::from_secs_f64(wait));
        }
        Ok(tokens)
    }

    /// Drops the buckets that are full again; the next sweep runs at twice what is left.
    fn sweep(&mut self, per_minute: u32, now: Instant) {
        let cap = f64::from(per_minute);
        self.buckets
            .retain(|_, b| refilled(b, per_minute, now) < cap);
        self.sweep_at = (self.buckets.len() * 2).max(SWEEP_MIN);
    }

    /// Users with a bucket (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_past_the_rate_wait_and_a_big_room_goes_through_when_full() {
        let mut r = AddRate::default();
        let t0 = Instant::now();
        assert!(r.take(b"a", 4, 6, t0).is_ok());
        assert!(r.take(b"a", 2, 6, t0).is_ok());
        let wait = r.take(b"a", 1, 6, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10), "one token a 10 s");
        assert!(r.take(b"b", 1, 6, t0).is_ok(), "each user its own");
        assert!(r.take(b"a", 1, 6, t0 + Duration::from_secs(10)).is_ok());
        // 20 members when 6 fit: only from a full bucket, and it leaves a debt.
        let t1 = t0 + Duration::from_secs(30);
        assert!(r.take(b"a", 20, 6, t1).is_err());
        let t2 = t0 + Duration::from_secs(70);
        assert!(r.take(b"a", 20, 6, t2).is_ok());
        let wait = r.take(b"a", 1, 6, t2).unwrap_err();
        assert_eq!(wait, Duration::from_secs(150), "14 in debt and one more");
        assert!(r.take(b"a", 0, 6, t2).is_ok(), "nothing to add");
    }

    #[test]
    fn full_buckets_are_swept_as_users_come() {
        let mut r = AddRate::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_MIN - 1 {
            r.take(format!("u{i}").as_bytes(), 1, 60, t0).unwrap();
        }
        assert_eq!(r.len(), SWEEP_MIN - 1);
        // A second later every earlier bucket is full again: all but the new one go.
        r.take(b"late", 1, 60, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(r.len(), 1);
    }
}
