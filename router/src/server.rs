//! Starting and stopping the router: one pinned thread per shard, each running
//! its own monoio runtime (io_uring, or epoll where io_uring is missing), its own
//! SO_REUSEPORT listener, and four kinds of task: the accept loop, the connection
//! tasks (`conn`), the mailbox consumer and flusher, and a ticker.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::config::{Config, DurabilityMode};
use crate::delivery::{Done, DoneQueue, StoreLink};
use crate::mailbox::{mesh, Doorbell, Inbox, Outboxes};
use crate::shard::{Mail, Shard};
use crate::stats::{ShardStats, StatsSnapshot};
use crate::store::{Durability, Store, StoreHandle, StoreOptions};

/// Batches per cross-shard ring.
const RING_CAPACITY: usize = 512;

/// Why the router did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is refused (e.g. open auth on a public address).
    #[error("{0}")]
    Config(String),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A shard thread failed to start.
    #[error("shard {0} failed to start: {1}")]
    Shard(usize, String),
    /// The embedded store could not be opened.
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        source: crate::store::StoreError,
    },
}

/// State shared by every shard thread (read-mostly).
pub struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) auth: Authenticator,
    connections: AtomicUsize,
    pub(crate) shutdown: AtomicBool,
    /// Shards whose sessions have all ended during shutdown.
    quiesced: AtomicUsize,
    bells: Vec<Arc<Doorbell>>,
    pub(crate) store: StoreHandle,
    /// Per shard: where store completions for it land.
    pub(crate) done: Vec<Arc<DoneQueue>>,
}

/// Counts one open connection; dropping it frees the slot.
pub struct ConnGuard(Arc<Shared>);

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

/// Entry point of the router as a library.
pub struct Router;

/// A running router.
pub struct RouterHandle {
    addr: SocketAddr,
    shards: usize,
    driver: &'static str,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    stats: Vec<Arc<ShardStats>>,
    store: StoreHandle,
}

/// Name of the I/O driver monoio will use on this machine: `io_uring` or `epoll`.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

fn bind_listeners(
    addr: SocketAddr,
    n: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| StartError::Bind { addr, source };
    // SO_REUSEPORT would let a second router silently share a port already in
    // use; a plain bind first finds out.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        probe.set_reuse_address(true).map_err(err)?;
        probe.bind(&addr.into()).map_err(err)?;
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(err)?;
        s.set_reuse_address(true).map_err(err)?;
        s.set_reuse_port(true).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        s.set_nodelay(true).map_err(err)?;
        s.bind(&bound.into()).map_err(err)?;
        s.listen(4096).map_err(err)?;
        if i == 0 {
            bound = s
                .local_addr()
                .map_err(err)?
                .as_socket()
                .ok_or_else(|| err(std::io::Error::other("listener has no IP address")))?;
        }
        out.push(s.into());
    }
    Ok((bound, out))
}

impl Router {
    /// Validates `cfg`, binds the listeners, starts every shard, and returns once
    /// all of them accept connections.
    pub fn start(cfg: Config) -> Result<RouterHandle, StartError> {
        if cfg.auth == crate::config::AuthMode::Open
            && !cfg.listen.ip().is_loopback()
            && !cfg.allow_open_auth_on_public
        {
            return Err(StartError::Config(format!(
                "refusing to listen on non-loopback address {} with --auth open (anyone could log in as anyone); \
                 use --auth jwt, or pass --allow-open-auth-on-public",
                cfg.listen
            )));
        }
        if cfg.max_payload_bytes >= cfg.max_frame_bytes {
            return Err(StartError::Config(
                "max_payload_bytes must be smaller than max_frame_bytes".into(),
            ));
        }
        let auth = Authenticator::from_config(&cfg).map_err(StartError::Config)?;
        let n = cfg.effective_shards();
        if n > 256 {
            return Err(StartError::Config("at most 256 shards".into()));
        }
        let (addr, listeners) = bind_listeners(cfg.listen, n)?;
        let durability = match cfg.durability {
            DurabilityMode::Memory => Durability::Memory,
            DurabilityMode::Sync => Durability::Sync,
        };
        let store = Store::open_with(
            &cfg.data_dir,
            durability,
            StoreOptions {
                argon2_cheap: cfg.argon2_cheap,
                // Accounts mode has no passwordless records to forget.
                forget_idle_after: (cfg.auth != crate::config::AuthMode::Accounts)
                    .then_some(cfg.forget_idle_users_after),
                ..StoreOptions::default()
            },
        )
        .map_err(|source| StartError::Store {
            dir: cfg.data_dir.clone(),
            source,
        })?;
        let meshes = mesh::<Vec<Mail>>(n, RING_CAPACITY);
        let bells = meshes
            .first()
            .map(|(o, _)| o.bells().to_vec())
            .unwrap_or_default();
        let cfg = Arc::new(cfg);
        let done = bells
            .iter()
            .map(|b| Arc::new(DoneQueue::new(b.clone())))
            .collect();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            auth,
            connections: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            quiesced: AtomicUsize::new(0),
            bells,
            store: store.clone(),
            done,
        });
        let stats: Vec<Arc<ShardStats>> = (0..n).map(|_| Arc::new(ShardStats::default())).collect();
        let flights: Arc<Vec<Vec<Arc<AtomicUsize>>>> = Arc::new(
            (0..n)
                .map(|_| (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect())
                .collect(),
        );
        let pause = crate::shard::pause_tables(n, cfg.max_connections);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, (usize, String)>>();
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut threads = Vec::with_capacity(n);
        for (id, ((outs, inbox), listener)) in meshes.into_iter().zip(listeners).enumerate() {
            let shared = shared.clone();
            let st = stats[id].clone();
            let ready = ready_tx.clone();
            let flights = flights.clone();
            let pause = pause.clone();
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    if shared.cfg.pin_threads {
                        let _ = monoio::utils::bind_to_cpu_set([id % cores]);
                    }
                    if let Err(e) = run_shard(
                        id,
                        n,
                        shared.clone(),
                        st,
                        listener,
                        outs,
                        inbox,
                        flights,
                        pause,
                        &ready,
                    ) {
                        let _ = ready.send(Err((id, e)));
                    }
                })
                .map_err(|e| StartError::Shard(id, e.to_string()))?;
            threads.push(t);
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err((id, e))) => {
                    shared.shutdown.store(true, Ordering::SeqCst);
                    shared.bells.iter().for_each(|b| b.force());
                    let _ = store.shutdown();
                    return Err(StartError::Shard(id, e));
                }
                Err(_) => {
                    return Err(StartError::Shard(
                        usize::MAX,
                        "a shard thread exited".into(),
                    ))
                }
            }
        }
        Ok(RouterHandle {
            addr,
            shards: n,
            driver: driver_name(),
            threads,
            shared,
            stats,
            store,
        })
    }
}

impl RouterHandle {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// `io_uring` or `epoll`.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// Counters summed over shards (published every tick, at most ~100 ms old).
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = StatsSnapshot::default();
        for st in &self.stats {
            st.add_to(&mut s);
        }
        s
    }

    /// Asks every shard to stop: no new connections, sessions told UNAVAILABLE,
    /// queues flushed. Returns at once; see [`RouterHandle::join`].
    pub fn trigger_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for b in &self.shared.bells {
            b.force();
        }
    }

    /// True once every shard thread has finished.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the shard threads; returns true if all finished.
    pub fn join(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads {
            let _ = t.join();
        }
        // The shards queued the unacked messages of their sessions: persist them.
        if let Err(e) = self.store.shutdown() {
            tracing::error!(error = %e, "store shutdown failed");
        }
        true
    }

    /// The embedded store (for tests and tools).
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// Graceful shutdown: trigger, then wait up to `shutdown_timeout` plus a margin.
    pub fn shutdown(self) -> bool {
        self.trigger_shutdown();
        let t = self.shared.cfg.shutdown_timeout + Duration::from_secs(1);
        self.join(t)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_shard(
    id: usize,
    n: usize,
    shared: Arc<Shared>,
    stats: Arc<ShardStats>,
    listener: std::net::TcpListener,
    outs: Outboxes<Vec<Mail>>,
    inbox: Inbox<Vec<Mail>>,
    flights: Arc<Vec<Vec<Arc<AtomicUsize>>>>,
    pause: crate::shard::PauseTables,
    ready: &std::sync::mpsc::Sender<Result<usize, (usize, String)>>,
) -> Result<(), String> {
    // flights[from][to]: weight in the pipeline from shard `from` to shard `to`.
    let flight_out: Vec<Arc<AtomicUsize>> = (0..n).map(|to| flights[id][to].clone()).collect();
    let flight_in: Vec<Arc<AtomicUsize>> = (0..inbox.len())
        .map(|i| flights[inbox.source(i)][id].clone())
        .collect();
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(4096)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let listener =
            monoio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let mut sh = Shard::with_pipeline(
            id,
            n,
            shared.cfg.clone(),
            stats,
            flight_out,
            flight_in,
            pause,
        );
        sh.store = Some(StoreLink {
            handle: shared.store.clone(),
            done: shared.done[id].clone(),
        });
        sh.bell = Some(inbox.bell().clone());
        let shard = Rc::new(RefCell::new(sh));
        let local = Rc::new(LocalSignal::default());
        monoio::spawn(flusher(shard.clone(), outs));
        monoio::spawn(consumer(
            shard.clone(),
            shared.clone(),
            inbox,
            local.clone(),
        ));
        monoio::spawn(ticker(shard.clone(), local.clone()));
        monoio::spawn(crate::conn::accept_loop(
            shard.clone(),
            shared.clone(),
            listener,
            local.clone(),
        ));
        let _ = ready.send(Ok(id));
        local.wait().await;
        let timeout = shared.cfg.shutdown_timeout;
        let _ = monoio::time::timeout(timeout, async {
            wait_idle(&shard).await;
            drain_in_flight(&shard, &shared, n).await;
        })
        .await;
        shard.borrow_mut().publish();
        tracing::debug!(shard = id, "shard stopped");
        Ok::<(), String>(())
    })
}

async fn wait_idle(shard: &Rc<RefCell<Shard>>) {
    poll_fn(|cx| {
        let mut sh = shard.borrow_mut();
        if sh.idle() {
            Poll::Ready(())
        } else {
            sh.idle_waiters.push(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Shutdown, after this shard's sessions ended: other shards may still be handing it
/// mail (messages in flight, room fan-outs, their sessions' last sends). It keeps
/// running its consumer, flusher and store completions until every shard is idle and
/// nothing is in flight to or from it, so those messages are stored, not dropped.
async fn drain_in_flight(shard: &Rc<RefCell<Shard>>, shared: &Shared, n: usize) {
    shared.quiesced.fetch_add(1, Ordering::SeqCst);
    let mut calm = 0;
    while calm < 3 {
        monoio::time::sleep(Duration::from_millis(2)).await;
        let sh = shard.borrow();
        let quiet = shared.quiesced.load(Ordering::SeqCst) == n
            && sh.outbox_len == 0
            && sh.local_mail.is_empty()
            && sh.store_inflight == 0
            && sh.flight_in.iter().all(|f| f.load(Ordering::Acquire) == 0)
            && sh.flight_out.iter().all(|f| f.load(Ordering::Acquire) == 0);
        calm = if quiet { calm + 1 } else { 0 };
    }
}

/// Yields once to the other ready tasks of this shard.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Moves the shard's outgoing batches into the rings. Woken by `Shard::post`;
/// runs after the readers of the current loop turn, so one batch carries what
/// every reader produced in that turn.
async fn flusher(shard: Rc<RefCell<Shard>>, mut outs: Outboxes<Vec<Mail>>) {
    loop {
        poll_fn(|cx| {
            let mut sh = shard.borrow_mut();
            if sh.outbox_len > 0 || !sh.outbox_waiters.is_empty() {
                Poll::Ready(())
            } else {
                sh.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let stuck = {
            let mut sh = shard.borrow_mut();
            let mut stuck = false;
            for to in 0..sh.n {
                if sh.outbox[to].is_empty() {
                    continue;
                }
                // The next batch reuses a Vec the target shard emptied and gave
                // back: no allocation (and no fresh pages) per batch.
                let next = outs
                    .reuse(to)
                    .unwrap_or_else(|| Vec::with_capacity(sh.outbox[to].len()));
                let batch = std::mem::replace(&mut sh.outbox[to], next);
                let len = batch.len();
                match outs.push(to, batch) {
                    Ok(()) => {
                        sh.outbox_len -= len;
                        sh.outbox_last[to] = None;
                        let w = std::mem::take(&mut sh.outbox_bytes[to]);
                        sh.flight_out[to].fetch_add(w, Ordering::AcqRel);
                        outs.ring(to);
                    }
                    Err(back) => {
                        // Nothing was appended meanwhile (no await since the take).
                        sh.outbox[to] = back;
                        stuck = true;
                    }
                }
            }
            let full = sh.pipeline_full();
            if !full {
                for w in sh.outbox_waiters.drain(..) {
                    w.wake();
                }
            }
            // Readers wait on a full pipeline: look again shortly.
            stuck || (full && !sh.outbox_waiters.is_empty())
        };
        if stuck {
            // The target shard is behind (or stalled on a slow consumer): back off briefly.
            monoio::time::sleep(Duration::from_micros(100)).await;
        }
    }
}

/// Drains the inbound rings, delivers, adopts handed-over connections, and
/// sleeps on the doorbell when there is nothing to do.
async fn consumer(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    mut inbox: Inbox<Vec<Mail>>,
    local: Rc<LocalSignal>,
) {
    let rings = inbox.len();
    // Sessions pushed over their bound by cross-shard traffic are not waited for:
    // stalling a ring would hold up every other user behind one slow reader. The
    // session's hard cap and the slow-consumer timeout bound what it can pile up.
    let mut blocked = Vec::new();
    let mut handovers = Vec::new();
    let mut dones: Vec<Done> = Vec::new();
    let mut local_mail = Vec::new();
    let done_q = shared.done[shard.borrow().id].clone();
    loop {
        if shared.shutdown.load(Ordering::Acquire) && !local.fired() {
            shard.borrow_mut().begin_shutdown();
            local.fire();
        }
        let mut got = 0usize;
        {
            let mut sh = shard.borrow_mut();
            // While this shard's store requests are over their mark, mail from other
            // shards waits in the rings: their pipeline fills and their readers pause,
            // so senders on any shard are held back by a store that cannot keep up.
            let rings = if sh.store_full() { 0 } else { rings };
            for i in 0..rings {
                for _ in 0..64 {
                    let Some(mut batch) = inbox.pop(i) else { break };
                    got += 1;
                    let weight: usize = batch.iter().map(Mail::weight).sum();
                    sh.begin_batch();
                    for mail in batch.drain(..) {
                        if let Some(h) = sh.on_mail(mail, &mut blocked) {
                            handovers.push(h);
                        }
                    }
                    inbox.give_back(i, batch);
                    sh.flight_in[i].fetch_sub(weight, Ordering::AcqRel);
                    blocked.clear();
                }
            }
            done_q.take_into(&mut dones);
            if !dones.is_empty() {
                got += 1;
                let was_full = sh.store_full();
                for d in dones.drain(..) {
                    d(&mut sh);
                }
                if was_full && !sh.store_full() {
                    for w in sh.store_waiters.drain(..) {
                        w.wake();
                    }
                }
            }
            std::mem::swap(&mut local_mail, &mut sh.local_mail);
            if !local_mail.is_empty() {
                got += 1;
                sh.begin_batch();
                for mail in local_mail.drain(..) {
                    if let Some(h) = sh.on_mail(mail, &mut blocked) {
                        handovers.push(h);
                    }
                }
                blocked.clear();
            }
            if got > 0 {
                sh.release_parked();
            }
        }
        for h in handovers.drain(..) {
            monoio::spawn(crate::conn::adopt(shard.clone(), h));
        }
        if got > 0 {
            yield_now().await;
            continue;
        }
        poll_fn(|cx| {
            if shared.shutdown.load(Ordering::Acquire) && !local.fired() {
                return Poll::Ready(());
            }
            // Rings are not work while the store is over its mark (see above): the
            // completions ring the doorbell.
            let store_full = shard.borrow().store_full();
            if inbox.park(cx.waker(), |_| !store_full) {
                if (shared.shutdown.load(Ordering::Acquire) && !local.fired())
                    || !done_q.is_empty()
                    || !shard.borrow().local_mail.is_empty()
                {
                    inbox.unpark();
                    return Poll::Ready(());
                }
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        inbox.unpark();
    }
}

/// Heartbeats, slow consumers, counters.
async fn ticker(shard: Rc<RefCell<Shard>>, local: Rc<LocalSignal>) {
    let period = {
        let sh = shard.borrow();
        let c = &sh.cfg;
        (c.heartbeat_interval.min(c.slow_consumer_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(100))
    };
    let mut shutdown_seen: Option<Instant> = None;
    loop {
        monoio::time::sleep(period).await;
        let now = Instant::now();
        let mut sh = shard.borrow_mut();
        sh.tick(now);
        if local.fired() {
            let since = *shutdown_seen.get_or_insert(now);
            // Sessions that cannot flush within the timeout are cut.
            if now.duration_since(since)
                >= sh
                    .cfg
                    .shutdown_timeout
                    .saturating_sub(Duration::from_millis(200))
            {
                for (_, s) in sh.sessions.iter() {
                    // Safety: fd belongs to a live session.
                    unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
                }
            }
        }
    }
}
