//! What every shard thread shares (read-mostly), the connection slots, and the local
//! shutdown signal of one shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::address::address_key;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::mailbox::Doorbell;
use crate::maps::NameMap;
use crate::net::signup::{FailedChecks, RoomPasswords, SignupGate};
use crate::store::StoreHandle;

/// State shared by every shard thread (read-mostly).
pub(crate) struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) auth: Authenticator,
    /// `--max-connections` and `--max-connections-per-ip` (in an `Arc` of their own:
    /// the guards hold it, and tests make one without a router).
    pub(crate) conns: Arc<ConnSlots>,
    pub(crate) shutdown: AtomicBool,
    /// Shards whose sessions have all ended during shutdown.
    pub(crate) quiesced: AtomicUsize,
    /// Set by a shard whose shutdown drain ran past `--shutdown-timeout`: mail in
    /// flight between shards or to the store may not have been persisted.
    pub(crate) drain_cut: AtomicBool,
    /// Bumped by a shard whose shutdown drain made progress (its store answered, its
    /// requeues or mail moved): the wait for the shards goes on while it moves.
    pub(crate) drain_progress: std::sync::atomic::AtomicU64,
    pub(crate) bells: Vec<Arc<Doorbell>>,
    pub(crate) store: StoreHandle,
    /// TLS on every listener (`--tls-cert`).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Where TLS handshakes run (with `tls`).
    pub(crate) handshakes: Option<Arc<crate::transport::tls::Handshakes>>,
    /// Admission of Registers: in flight, per address, per second.
    pub(crate) signup: SignupGate,
    /// Password Logins per user name (`--max-failed-logins-per-user`).
    pub(crate) failed_logins: FailedChecks,
    /// Room passwords' share of the hashing pool and their wrong guesses per user and
    /// per room (each shard holds it too: `Shard::room_passwords`).
    pub(crate) room_passwords: Arc<RoomPasswords>,
    /// Resident memory is over `--max-memory` and not the sessions': logins are refused
    /// (`shard::memory`).
    pub(crate) memory: Arc<crate::shard::memory::MemoryGate>,
}

/// The connection slots: `--max-connections` in all, `--max-connections-per-ip` from
/// one address (TCP, HTTP and WebSocket connections alike).
pub(crate) struct ConnSlots {
    open: AtomicUsize,
    /// Connections refused at `max` and at `max_per_address` (for `/metrics`).
    refused: [AtomicU64; 2],
    max: usize,
    /// 0: no per-address limit, and `by_address` is never touched.
    max_per_address: usize,
    /// Open connections by [`address_key`]; an entry goes at zero, so there are never
    /// more entries than open connections. Behind a lock: accepts are rare next to
    /// messages. Seeded hashing: clients choose their IPv6 prefixes.
    by_address: Mutex<NameMap<IpAddr, usize>>,
}

impl ConnSlots {
    pub(crate) fn new(max: usize, max_per_address: usize) -> Self {
        ConnSlots {
            open: AtomicUsize::new(0),
            refused: [AtomicU64::new(0), AtomicU64::new(0)],
            max,
            max_per_address,
            by_address: Mutex::new(NameMap::default()),
        }
    }

    /// Open connections, and those refused so far (for `/metrics`).
    pub(crate) fn figures(&self) -> ConnStats {
        let [all, address] = &self.refused;
        ConnStats {
            open: self.open.load(Ordering::Relaxed) as u64,
            refused_all: all.load(Ordering::Relaxed),
            refused_address: address.load(Ordering::Relaxed),
        }
    }

    fn refuse(&self, why: Full) -> Full {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        why
    }

    fn by_address(&self) -> std::sync::MutexGuard<'_, NameMap<IpAddr, usize>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Addresses counted now (tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.by_address().len()
    }
}

/// The connection slots' figures ([`ConnSlots::figures`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnStats {
    /// Open connections (TCP, HTTP and WebSocket).
    pub open: u64,
    /// Refused at `--max-connections`.
    pub refused_all: u64,
    /// Refused at `--max-connections-per-ip`.
    pub refused_address: u64,
}

/// Which bound refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `--max-connections`.
    All = 0,
    /// `--max-connections-per-ip`.
    Address = 1,
}

impl Full {
    /// The reason given to the client.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Full::All => "too many connections",
            Full::Address => "too many connections from this address",
        }
    }
}

/// Counts one open connection; dropping it frees the slot.
pub(crate) struct ConnGuard {
    slots: Arc<ConnSlots>,
    /// The address key it counts under (`None`: no per-address limit).
    address: Option<IpAddr>,
}

impl ConnGuard {
    /// Takes a connection slot for a connection from `peer`, or says which bound is
    /// full (then nothing is taken).
    pub(crate) fn try_new(slots: &Arc<ConnSlots>, peer: IpAddr) -> Result<Self, Full> {
        let prev = slots.open.fetch_add(1, Ordering::AcqRel);
        if prev >= slots.max {
            slots.open.fetch_sub(1, Ordering::AcqRel);
            return Err(slots.refuse(Full::All));
        }
        // From here, dropping `guard` gives the slot back (and the address's, once set).
        let mut guard = ConnGuard {
            slots: slots.clone(),
            address: None,
        };
        if slots.max_per_address > 0 {
            let key = address_key(peer);
            let mut by_address = slots.by_address();
            let n = by_address.entry(key).or_insert(0);
            if *n >= slots.max_per_address {
                return Err(slots.refuse(Full::Address));
            }
            *n += 1;
            guard.address = Some(key);
        }
        Ok(guard)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(key) = self.address {
            let mut by_address = self.slots.by_address();
            if let Some(n) = by_address.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    by_address.remove(&key);
                }
            }
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A one-shot local event (shard shutdown), awaited by several tasks.
///
/// Each waiting future holds one slot for its waker, taken back when the future is
/// dropped: a wait that loses a `select!` (every accept, every pre-login read) leaves
/// nothing behind. (A `Vec` of wakers pushed on every poll kept each finished
/// connection's task allocated until shutdown: memory that grew with every
/// connection ever accepted.)
#[derive(Default)]
pub(crate) struct LocalSignal {
    fired: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl LocalSignal {
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Ready once [`LocalSignal::fire`] was called.
    pub(crate) fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            slot: None,
        }
    }

    /// Wakers registered now (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`LocalSignal::wait`].
pub(crate) struct SignalWait<'a> {
    signal: &'a LocalSignal,
    /// Its waker's slot, once polled.
    slot: Option<usize>,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.signal.fired.get() {
            // `fire` took every waker: the slot is gone.
            this.slot = None;
            return Poll::Ready(());
        }
        let mut waiters = this.signal.waiters.borrow_mut();
        match this.slot.and_then(|i| waiters.get_mut(i)) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => this.slot = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for SignalWait<'_> {
    fn drop(&mut self) {
        // After `fire` the slots are gone (and never reused: nothing registers once
        // fired).
        if let Some(i) = self.slot.take() {
            if !self.signal.fired.get() {
                self.signal.waiters.borrow_mut().try_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn open(slots: &ConnSlots) -> u64 {
        slots.figures().open
    }

    /// Which bound refuses one more connection from `from` (`None`: admitted, and let go).
    fn refused(slots: &Arc<ConnSlots>, from: &str) -> Option<Full> {
        ConnGuard::try_new(slots, ip(from)).err()
    }

    /// Two connections from one address, the third refused (its global slot given
    /// back); another address is still admitted; a dropped guard frees its slot and an
    /// address with none open is forgotten.
    #[test]
    fn an_address_gets_its_connections() {
        let slots = Arc::new(ConnSlots::new(100, 2));
        let a1 = ConnGuard::try_new(&slots, ip("10.0.0.1")).expect("1st");
        let a2 = ConnGuard::try_new(&slots, ip("10.0.0.1")).expect("2nd");
        assert_eq!(refused(&slots, "10.0.0.1"), Some(Full::Address));
        // An IPv4-mapped IPv6 address is the IPv4 one.
        assert_eq!(refused(&slots, "::ffff:10.0.0.1"), Some(Full::Address));
        assert_eq!(open(&slots), 2);
        let refusals = |s: &ConnSlots| (s.figures().refused_all, s.figures().refused_address);
        assert_eq!(refusals(&slots), (0, 2), "refusals counted by bound");
        let b = ConnGuard::try_new(&slots, ip("10.0.0.2")).expect("another address");
        assert_eq!((open(&slots), slots.addresses()), (3, 2));

        drop(a1);
        let a3 = ConnGuard::try_new(&slots, ip("10.0.0.1")).expect("a freed slot");
        drop(b);
        assert_eq!((open(&slots), slots.addresses()), (2, 1));
        drop((a2, a3));
        assert_eq!((open(&slots), slots.addresses()), (0, 0));
    }

    /// An IPv6 host's /64 is one address.
    #[test]
    fn an_ipv6_64_is_one_address() {
        let slots = Arc::new(ConnSlots::new(100, 2));
        let _a = ConnGuard::try_new(&slots, ip("2001:db8::1")).expect("1st");
        let _b = ConnGuard::try_new(&slots, ip("2001:db8::ffff:2")).expect("2nd");
        assert_eq!(refused(&slots, "2001:db8::3"), Some(Full::Address));
        let _c = ConnGuard::try_new(&slots, ip("2001:db8:0:1::1")).expect("another /64");
        assert_eq!(slots.addresses(), 2);
    }

    /// Past `--max-connections` nothing is counted for the address either.
    #[test]
    fn the_total_is_checked_first() {
        let slots = Arc::new(ConnSlots::new(2, 5));
        let _a = ConnGuard::try_new(&slots, ip("10.0.0.1")).expect("1st");
        let _b = ConnGuard::try_new(&slots, ip("10.0.0.2")).expect("2nd");
        assert_eq!(refused(&slots, "10.0.0.3"), Some(Full::All));
        assert_eq!((open(&slots), slots.addresses()), (2, 2));
        let f = slots.figures();
        assert_eq!((f.refused_all, f.refused_address), (1, 0));
    }

    /// 0: no per-address limit, and the table stays empty.
    #[test]
    fn no_per_address_limit_at_zero() {
        let slots = Arc::new(ConnSlots::new(1000, 0));
        let all: Vec<_> = (0..1000)
            .map(|_| ConnGuard::try_new(&slots, ip("127.0.0.1")).expect("admitted"))
            .collect();
        assert_eq!((open(&slots), slots.addresses()), (1000, 0));
        drop(all);
        assert_eq!(open(&slots), 0);
    }

    #[test]
    fn dropped_waits_leave_no_waker_and_fire_wakes_the_rest() {
        let sig = LocalSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // A wait polled many times (a select! re-polled each loop turn) holds one slot.
        let mut kept = Box::pin(sig.wait());
        for _ in 0..100 {
            assert!(kept.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(sig.waiting(), 1);
        // Waits that lose their select! take their slot back when dropped.
        for _ in 0..1000 {
            let mut lost = Box::pin(sig.wait());
            assert!(lost.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(sig.waiting(), 1);
        sig.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(sig.waiting(), 0);
        assert!(kept.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(sig.wait()).as_mut().poll(&mut cx).is_ready());
        assert_eq!(sig.waiting(), 0);
    }
}
