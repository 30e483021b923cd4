//! What every shard thread shares (read-mostly), the connection count, and the local
//! shutdown signal of one shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::mailbox::Doorbell;
use crate::net::signup::SignupGate;
use crate::store::StoreHandle;

/// State shared by every shard thread (read-mostly).
pub(crate) struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) auth: Authenticator,
    pub(crate) connections: AtomicUsize,
    pub(crate) shutdown: AtomicBool,
    /// Shards whose sessions have all ended during shutdown.
    pub(crate) quiesced: AtomicUsize,
    /// Set by a shard whose shutdown drain ran past `--shutdown-timeout`: mail in
    /// flight between shards or to the store may not have been persisted.
    pub(crate) drain_cut: AtomicBool,
    pub(crate) bells: Vec<Arc<Doorbell>>,
    pub(crate) store: StoreHandle,
    /// TLS on every listener (`--tls-cert`).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Where TLS handshakes run (with `tls`).
    pub(crate) handshakes: Option<Arc<crate::transport::tls::Handshakes>>,
    /// Admission of Registers: in flight, per address, per second.
    pub(crate) signup: SignupGate,
}

/// Counts one open connection; dropping it frees the slot.
pub(crate) struct ConnGuard(Arc<Shared>);

impl ConnGuard {
    /// Takes a connection slot, or `None` when `max_connections` are open.
    pub(crate) fn try_new(shared: &Arc<Shared>) -> Option<Self> {
        let prev = shared.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= shared.cfg.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(ConnGuard(shared.clone()))
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
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
