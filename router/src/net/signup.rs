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
//!
//! Password Logins have the same kind of gate per user name ([`FailedChecks`],
//! `--max-failed-logins-per-user` a minute): `--max-failed-logins` closes a connection
//! after its third wrong password, but a client that reconnected could guess one
//! account's password as fast as the hashing pool went.
//!
//! Room passwords have theirs too ([`RoomPasswords`]): at most a quarter of
//! `--max-password-jobs` at once, and wrong ones bounded per user
//! (`--max-failed-room-joins-per-user`) and per room (`--max-failed-room-joins-per-room`).
//! Unbounded, 80 accounts each pipelining wrong-password JoinRooms kept the pool full
//! of guesses (~60 a second): an honest password Login took p50 0.9 s instead of 20 ms,
//! and some were refused RATE_LIMITED at the pool's bound.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::address::address_key;
use crate::config::Config;
use crate::rate::{Bucket, Buckets};

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
    by_address: Buckets<IpAddr>,
    /// Registers of everyone.
    total: Bucket,
}

/// A share of the hashing pool: at most `max` jobs of one kind admitted and not
/// answered, each counted by the [`Admitted`] it holds until then.
pub(crate) struct JobShare {
    in_flight: Arc<AtomicU64>,
    max: u64,
}

impl JobShare {
    /// A share of `max` jobs at once.
    pub(crate) fn new(max: u64) -> Self {
        JobShare {
            in_flight: Arc::new(AtomicU64::new(0)),
            max,
        }
    }

    /// A quarter of `--max-password-jobs`, rounded up.
    pub(crate) fn quarter(cfg: &Config) -> Self {
        Self::new(cfg.max_password_jobs.div_ceil(4))
    }

    /// One job's place, or `None` when the share is taken.
    pub(crate) fn take(&self) -> Option<Admitted> {
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(Arc::clone(&self.in_flight));
        (prev < self.max).then_some(admitted)
    }

    /// Jobs admitted now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The shared admission state of Registers.
pub(crate) struct SignupGate {
    /// Registers admitted and not answered yet: a quarter of `--max-password-jobs`.
    share: JobShare,
    /// `--max-registrations-per-second` (the bucket's size and its refill).
    per_second: f64,
    rates: Mutex<Rates>,
}

/// One admitted job (a Register, a room password's check or hash): counts in its
/// [`JobShare`] until dropped (answered, or its connection gave up).
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
            share: JobShare::new(max_in_flight),
            per_second: f64::from(per_second),
            rates: Mutex::new(Rates {
                // Each address gains `per_address` per `--registration-window` (always full
                // for a zero window: no per-address limit).
                by_address: Buckets::new(per_address, address_refill, max_addresses),
                total: Bucket::full(f64::from(per_second), now),
            }),
        }
    }

    /// Admits a Register from `peer` (`None`: the address is unknown; all such count as
    /// one) at `now`, or says why not. A refused Register uses up nothing.
    pub(crate) fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Result<Admitted, Refused> {
        let Some(admitted) = self.share.take() else {
            return Err(Refused::Busy);
        };
        let ip = address_key(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
        let mut rates = match self.rates.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Rates { by_address, total } = &mut *rates;
        total.refill(self.per_second, self.per_second, now);
        let bucket = by_address.at(ip, now);
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

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.rates.lock().map_or(0, |r| r.by_address.len())
    }
}

/// Most names whose failures are counted, by each [`FailedChecks`]; past it, as for
/// addresses (`rate::Buckets`). ≈ 100 B an entry: ≈ 1.6 MiB.
pub(crate) const MAX_TRACKED_NAMES: usize = 16_384;

/// The reason of a Login refused by [`FailedChecks`] (RATE_LIMITED).
pub(crate) const TOO_MANY_FAILED_LOGINS: &str =
    "too many failed logins for this user, try again later";

/// Failed password checks per name (a user's, a room's), shared by every shard: each
/// failure takes a token of the name's bucket (`per_minute` at once, then as many a
/// minute), and a check for a name with no token left is refused RATE_LIMITED without
/// a hash. So a name gets at most that many wrong passwords a minute, from any
/// connection or address. Checks already under way when the bucket empties may take it
/// into debt, at most one bucket deep (they are bounded by `--max-password-jobs`). Right
/// passwords take nothing: a user's many devices logging in at once are never refused
/// for it.
///
/// For Logins (`--max-failed-logins-per-user`) names without an account count the same
/// (a refusal must not tell who has one). What it costs: while someone keeps guessing a
/// name's password, that name's own password Logins are refused too (as with Matrix's
/// per-account limit on failed logins); and while many guess a room's password, the
/// room's own password joins are.
pub(crate) struct FailedChecks {
    /// 0: no limit.
    per_minute: u32,
    names: Mutex<Buckets<String>>,
}

impl FailedChecks {
    /// The gate of Logins (`--max-failed-logins-per-user`).
    pub(crate) fn logins(cfg: &Config) -> Self {
        Self::with(cfg.max_failed_logins_per_user, MAX_TRACKED_NAMES)
    }

    fn with(per_minute: u32, max_names: usize) -> Self {
        let cap = f64::from(per_minute);
        FailedChecks {
            per_minute,
            names: Mutex::new(Buckets::new(cap, cap / 60.0, max_names)),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Buckets<String>> {
        match self.names.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a password of `name` may be checked at `now` (a token left).
    pub(crate) fn allowed(&self, name: &str, now: Instant) -> bool {
        self.per_minute == 0 || self.names().tokens(&name.to_owned(), now) >= 1.0
    }

    /// A password of `name` was wrong at `now`: one token goes.
    pub(crate) fn failed(&self, name: &str, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let cap = f64::from(self.per_minute);
        let mut names = self.names();
        let b = names.at(name.to_owned(), now);
        b.tokens = (b.tokens - 1.0).max(-cap);
    }
}

/// Why a room password was not checked (each RATE_LIMITED, without a hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomRefused {
    /// The joiner is out of `--max-failed-room-joins-per-user`.
    User,
    /// The room is out of `--max-failed-room-joins-per-room`.
    Room,
    /// A quarter of `--max-password-jobs` are room passwords already.
    Busy,
}

impl RoomRefused {
    /// The reason given to the client.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            RoomRefused::User => "too many wrong room passwords from this user, try again later",
            RoomRefused::Room => "too many wrong passwords for this room, try again later",
            RoomRefused::Busy => "too many room password checks in progress, try again later",
        }
    }
}

/// Room passwords' share of the hashing pool, shared by every shard (see the module
/// doc): a JoinRoom's check and a CreateRoom's hash each hold a place of a quarter of
/// `--max-password-jobs` until answered, so password Logins always have three quarters
/// (with the Registers' quarter, half) of the bound; a wrong password takes a token of
/// the joiner's and of the room's bucket, and a check with either empty is refused.
pub(crate) struct RoomPasswords {
    share: JobShare,
    users: FailedChecks,
    rooms: FailedChecks,
}

impl RoomPasswords {
    /// The gate for `cfg`'s limits.
    pub(crate) fn new(cfg: &Config) -> Self {
        RoomPasswords {
            share: JobShare::quarter(cfg),
            users: FailedChecks::with(cfg.max_failed_room_joins_per_user, MAX_TRACKED_NAMES),
            rooms: FailedChecks::with(cfg.max_failed_room_joins_per_room, MAX_TRACKED_NAMES),
        }
    }

    /// Admits a check of `user`'s password for `room` at `now`, or says why not.
    pub(crate) fn check(
        &self,
        user: &str,
        room: &str,
        now: Instant,
    ) -> Result<Admitted, RoomRefused> {
        if !self.users.allowed(user, now) {
            return Err(RoomRefused::User);
        }
        if !self.rooms.allowed(room, now) {
            return Err(RoomRefused::Room);
        }
        self.share.take().ok_or(RoomRefused::Busy)
    }

    /// Admits the hash of a new room's password (no bucket: only a room's owner sets it,
    /// at most `--max-rooms-per-user` of them).
    pub(crate) fn hash(&self) -> Result<Admitted, RoomRefused> {
        self.share.take().ok_or(RoomRefused::Busy)
    }

    /// `user`'s password for `room` was wrong at `now`.
    pub(crate) fn failed(&self, user: &str, room: &str, now: Instant) {
        self.users.failed(user, now);
        self.rooms.failed(room, now);
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
        assert_eq!(g.share.in_flight(), 0);
        // None at all with no password jobs.
        let g = SignupGate::with(0, 100, Duration::from_secs(60), 100, 100);
        assert_eq!(g.admit(ip("10.0.0.1"), t0).err(), Some(Refused::Busy));
    }

    /// A name gets `--max-failed-logins-per-user` refused Logins at once and as many a
    /// minute, whatever the connection; other names are not affected; 0 is no limit; the
    /// table of names stays bounded.
    #[test]
    fn a_name_gets_its_failed_logins_per_minute() {
        let g = FailedChecks::with(3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(g.allowed("alice", t0));
            g.failed("alice", t0);
        }
        assert!(!g.allowed("alice", t0), "the fourth in the minute");
        assert!(g.allowed("bob", t0), "each name its own");
        // One more every 20 s.
        let t1 = t0 + Duration::from_secs(21);
        assert!(g.allowed("alice", t1));
        g.failed("alice", t1);
        assert!(!g.allowed("alice", t1));
        // Checks under way when it emptied take it into debt, one bucket deep at most.
        for _ in 0..100 {
            g.failed("alice", t1);
        }
        assert!(!g.allowed("alice", t1 + Duration::from_secs(61)));
        assert!(g.allowed("alice", t1 + Duration::from_secs(81)));
        let off = FailedChecks::with(0, 100);
        off.failed("alice", t0);
        assert!(off.allowed("alice", t0));
        let g = FailedChecks::with(2, 64);
        for i in 0..10_000u64 {
            let t = t0 + Duration::from_millis(i);
            g.failed(&format!("u{i}"), t);
        }
        let n = g.names().len();
        assert!((1..=64).contains(&n), "{n} names tracked");
    }

    /// A user gets its wrong room passwords a minute across rooms, a room its wrong
    /// passwords from all users; past either a check is refused before any hashing;
    /// checks and hashes in flight hold a quarter of `--max-password-jobs`.
    #[test]
    fn room_passwords_are_bounded_per_user_per_room_and_in_flight() {
        let cfg = Config {
            max_failed_room_joins_per_user: 3,
            max_failed_room_joins_per_room: 5,
            max_password_jobs: 8,
            ..Config::default()
        };
        let g = RoomPasswords::new(&cfg);
        let t0 = Instant::now();
        // Three wrong guesses of one user, in three rooms: its fourth is refused.
        for room in ["r1", "r2", "r3"] {
            drop(g.check("mallory", room, t0).expect("a token left"));
            g.failed("mallory", room, t0);
        }
        assert_eq!(g.check("mallory", "r4", t0).err(), Some(RoomRefused::User));
        // One more every 20 s.
        let t1 = t0 + Duration::from_secs(21);
        assert!(g.check("mallory", "r4", t1).is_ok());
        // Five users guessing one room: the sixth user is refused for the room.
        for u in 0..5 {
            let user = format!("u{u}");
            drop(g.check(&user, "target", t0).expect("a token left"));
            g.failed(&user, "target", t0);
        }
        assert_eq!(g.check("u9", "target", t0).err(), Some(RoomRefused::Room));
        assert!(
            g.check("u9", "other", t0).is_ok(),
            "other rooms are not affected"
        );
        // A quarter of 8 in flight: checks and new rooms' hashes together.
        let a = g.check("alice", "x", t0).expect("first");
        let b = g.hash().expect("second");
        assert_eq!(g.check("bob", "y", t0).err(), Some(RoomRefused::Busy));
        assert_eq!(g.hash().err(), Some(RoomRefused::Busy));
        drop(a);
        let c = g.check("bob", "y", t0).expect("after one was answered");
        drop((b, c));
        assert_eq!(g.share.in_flight(), 0);
        // 0: no limit on guesses (the share still holds).
        let off = RoomPasswords::new(&Config {
            max_failed_room_joins_per_user: 0,
            max_failed_room_joins_per_room: 0,
            ..Config::default()
        });
        for _ in 0..100 {
            off.failed("mallory", "target", t0);
        }
        assert!(off.check("mallory", "target", t0).is_ok());
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
