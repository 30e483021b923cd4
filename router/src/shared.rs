//! What every shard thread shares (read-mostly), the connection count, and the local
//! shutdown signal of one shard.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::mailbox::Doorbell;
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
#[derive(Default)]
pub(crate) struct LocalSignal {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalSignal {
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
