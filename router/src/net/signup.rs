//! Admission of Registers (`--auth accounts`) before they reach the hashing pool, shared by
//! every shard: at most a quarter of `--max-password-jobs` Registers at once (password
//! Logins keep the rest), at most `--max-registrations-per-ip` per
//! `--registration-window` from one address, and at most `--max-registrations-per-second`
//! in all. Past any of them a Register is answered RATE_LIMITED without touching the store.
//!
//! The per-connection bound (`--max-registrations-per-connection`, in `crate::prelogin`)
//! did not stop a client that reconnects: 200 connections registering 3 accounts each
//! and reconnecting kept 256 hashes queued, made ~30 accounts a second and held an honest
//! password login 7 s, then had it refused RATE_LIMITED.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::address::address_key;
use crate::config::Config;
use crate::maps::NameMap;
use crate::rate::Bucket;

/// Most addresses whose Registers are counted. Past it, addresses whose bucket is full
/// again are forgotten first (that changes nothing), then the least recently seen half;
/// an address forgotten starts over with a full bucket, so a client with more addresses
/// than this is bounded by the total rate only. ≈ 64 B an entry: ≈ 1 MiB.
pub(crate) const MAX_TRACKED_ADDRESSES: usize = 16_384;

/// Why a Register was refused (each is RATE_LIMITED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A quarter of `--max-password-jobs` Registers are being hashed already.
    Busy,
    /// The address is over `--max-registrations-per-ip` in its window.
    Address,
    /// Over `--max-registrations-per-second` for everyone.
    Total,
}

impl Refused {
    /// The reason given to the client.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refused::Busy => "too many registrations in progress, try again later",
            Refused::Address => "too many registrations from this address, try again later",
            Refused::Total => "too many registrations right now, try again later",
        }
    }
}

/// The rates, behind one lock (Registers are rare next to everything else).
struct Rates {
    /// Registers per address, by [`address_key`].
    by_address: NameMap<IpAddr, Bucket>,
    /// Registers of everyone.
    total: Bucket,
}

/// The shared admission state of Registers.
pub(crate) struct SignupGate {
    /// Registers admitted and not answered yet.
    in_flight: Arc<AtomicU64>,
    /// Most of them: a quarter of `--max-password-jobs`, rounded up.
    max_in_flight: u64,
    /// `--max-registrations-per-ip` (the bucket's size).
    per_address: f64,
    /// Tokens an address gains a second (`per_address` per `--registration-window`);
    /// infinite for a zero window (no per-address limit).
    address_refill: f64,
    /// `--max-registrations-per-second` (the bucket's size and its refill).
    per_second: f64,
    /// Most addresses tracked.
    max_addresses: usize,
    rates: Mutex<Rates>,
}

/// One admitted Register: counts in the in-flight bound until dropped (answered, or its
/// connection gave up).
pub(crate) struct Admitted(Arc<AtomicU64>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SignupGate {
    /// The gate for `cfg`'s limits.
    pub(crate) fn new(cfg: &Config) -> Self {
        Self::with(
            cfg.max_password_jobs.div_ceil(4),
            cfg.max_registrations_per_ip,
            cfg.registration_window,
            cfg.max_registrations_per_second,
            MAX_TRACKED_ADDRESSES,
        )
    }

    fn with(
        max_in_flight: u64,
        per_address: u32,
        window: Duration,
        per_second: u32,
        max_addresses: usize,
    ) -> Self {
        let now = Instant::now();
        let per_address = f64::from(per_address);
        let address_refill = if window.is_zero() {
            f64::INFINITY
        } else {
            per_address / window.as_secs_f64()
        };
        SignupGate {
            in_flight: Arc::new(AtomicU64::new(0)),
            max_in_flight,
            per_address,
            address_refill,
            per_second: f64::from(per_second),
            max_addresses: max_addresses.max(1),
            rates: Mutex::new(Rates {
                by_address: NameMap::default(),
                total: Bucket::full(f64::from(per_second), now),
            }),
        }
    }

    /// Admits a Register from `peer` (`None`: the address is unknown; all such count as
    /// one) at `now`, or says why not. A refused Register uses up nothing.
    pub(crate) fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Result<Admitted, Refused> {
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(Arc::clone(&self.in_flight));
        if prev >= self.max_in_flight {
            return Err(Refused::Busy);
        }
        let ip = address_key(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
        let mut rates = match self.rates.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Rates { by_address, total } = &mut *rates;
        total.refill(self.per_second, self.per_second, now);
        if by_address.len() >= self.max_addresses && !by_address.contains_key(&ip) {
            self.forget_some(by_address, now);
        }
        let bucket = by_address
            .entry(ip)
            .or_insert_with(|| Bucket::full(self.per_address, now));
        bucket.refill(self.per_address, self.address_refill, now);
        if bucket.tokens < 1.0 {
            return Err(Refused::Address);
        }
        if total.tokens < 1.0 {
            return Err(Refused::Total);
        }
        bucket.tokens -= 1.0;
        total.tokens -= 1.0;
        Ok(admitted)
    }

    /// Makes room in a full table: forgets the addresses whose bucket is full again, and
    /// if that frees less than a quarter, the least recently seen half (amortised O(1) an
    /// insert).
    fn forget_some(&self, by_address: &mut NameMap<IpAddr, Bucket>, now: Instant) {
        let (cap, refill) = (self.per_address, self.address_refill);
        by_address.retain(|_, b| b.tokens_at(cap, refill, now) < cap);
        if by_address.len() > self.max_addresses - self.max_addresses / 4 {
            let mut seen: Vec<Instant> = by_address.values().map(|b| b.at).collect();
            let mid = seen.len() / 2;
            let (_, &mut cut, _) = seen.select_nth_unstable(mid);
            by_address.retain(|_, b| b.at > cut);
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.rates.lock().map_or(0, |r| r.by_address.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("address"))
    }

    /// One address gets its bucket, then RATE_LIMITED until the window refills it; another
    /// address is not affected.
    #[test]
    fn an_address_gets_its_registrations_per_window() {
        let g = SignupGate::with(100, 3, Duration::from_secs(60), 1000, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(g.admit(ip("10.0.0.1"), t0).is_ok());
        }
        assert_eq!(g.admit(ip("10.0.0.1"), t0).err(), Some(Refused::Address));
        assert!(g.admit(ip("10.0.0.2"), t0).is_ok());
        // One more every 20 s (3 a minute).
        let t1 = t0 + Duration::from_secs(21);
        assert!(g.admit(ip("10.0.0.1"), t1).is_ok());
        assert_eq!(g.admit(ip("10.0.0.1"), t1).err(), Some(Refused::Address));
        // An IPv6 host's /64 is one address; an IPv4-mapped address is the IPv4 one.
        for _ in 0..3 {
            assert!(g.admit(ip("2001:db8::1"), t0).is_ok());
        }
        assert_eq!(
            g.admit(ip("2001:db8::ffff:1"), t0).err(),
            Some(Refused::Address)
        );
        assert!(g.admit(ip("2001:db8:0:1::1"), t0).is_ok());
        assert_eq!(
            g.admit(ip("::ffff:10.0.0.2"), t0).map(drop),
            Ok(()),
            "second of three"
        );
    }

    /// All addresses together get `--max-registrations-per-second`.
    #[test]
    fn all_addresses_share_the_total_rate() {
        let g = SignupGate::with(100, 10, Duration::from_secs(60), 5, 100);
        let t0 = Instant::now();
        let ok = (0..20)
            .filter(|i| g.admit(ip(&format!("10.0.1.{i}")), t0).is_ok())
            .count();
        assert_eq!(ok, 5);
        assert_eq!(g.admit(ip("10.0.2.1"), t0).err(), Some(Refused::Total));
        let t1 = t0 + Duration::from_secs(1);
        let ok = (0..20)
            .filter(|i| g.admit(ip(&format!("10.0.3.{i}")), t1).is_ok())
            .count();
        assert_eq!(ok, 5);
    }

    /// Registers being hashed count until answered; a refused one counts for nothing.
    #[test]
    fn registrations_in_flight_are_bounded() {
        let g = SignupGate::with(2, 100, Duration::from_secs(60), 100, 100);
        let t0 = Instant::now();
        let a = g.admit(ip("10.0.0.1"), t0).expect("first");
        let b = g.admit(ip("10.0.0.2"), t0).expect("second");
        assert_eq!(g.admit(ip("10.0.0.3"), t0).err(), Some(Refused::Busy));
        drop(a);
        let c = g.admit(ip("10.0.0.3"), t0).expect("after one was answered");
        drop((b, c));
        assert_eq!(g.in_flight.load(Ordering::Relaxed), 0);
        // None at all with no password jobs.
        let g = SignupGate::with(0, 100, Duration::from_secs(60), 100, 100);
        assert_eq!(g.admit(ip("10.0.0.1"), t0).err(), Some(Refused::Busy));
    }

    /// The table of addresses stays bounded; an address forgotten starts over.
    #[test]
    fn the_address_table_is_bounded() {
        let g = SignupGate::with(u64::MAX, 2, Duration::from_secs(3600), 1_000_000, 64);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let a = IpAddr::V4(i.into());
            let t = t0 + Duration::from_millis(u64::from(i));
            assert!(g.admit(Some(a), t).is_ok(), "{a}");
            assert!(g.tracked() <= 64, "{}", g.tracked());
        }
        // The most recent addresses are still counted.
        let last = IpAddr::V4(9_999u32.into());
        let t = t0 + Duration::from_secs(10);
        assert!(g.admit(Some(last), t).is_ok());
        assert_eq!(g.admit(Some(last), t).err(), Some(Refused::Address));
    }

    /// A zero window turns the per-address limit off.
    #[test]
    fn a_zero_window_has_no_per_address_limit() {
        let g = SignupGate::with(u64::MAX, 1, Duration::ZERO, 1_000_000, 64);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(g.admit(ip("10.0.0.1"), t0).is_ok());
        }
    }
}
