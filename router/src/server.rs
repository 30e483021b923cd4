//! Starting and stopping the router: binds the SO_REUSEPORT listeners, opens the
//! store, builds the mailbox mesh, and starts one pinned thread per shard, each
//! running `shard::run` (its own monoio runtime: io_uring, or epoll where io_uring
//! is missing). [`RouterHandle`] stops them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::config::{Config, DurabilityMode};
use crate::http::HttpCtx;
use crate::mailbox::mesh;
use crate::net::signup::{FailedChecks, RoomPasswords, SignupGate};
use crate::shard::mail::{Mail, MailQueue};
use crate::shard::run::{run_shard, ShardThread};
use crate::shared::{ConnSlots, Shared};
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

/// Entry point of the router as a library.
pub struct Router;

/// A running router.
pub struct RouterHandle {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
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
        cfg.check().map_err(StartError::Config)?;
        let auth = Authenticator::from_config(&cfg).map_err(StartError::Config)?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::transport::tls::server_config(cert, key).map_err(StartError::Config)?)
            }
            // One without the other: refused by `Config::check`.
            _ => None,
        };
        let handshakes = match &tls {
            Some(_) => Some(Arc::new(
                crate::transport::tls::Handshakes::start(
                    cfg.tls_handshake_threads,
                    cfg.max_tls_handshakes,
                    cfg.max_tls_handshakes_per_ip,
                )
                .map_err(|e| StartError::Config(format!("cannot start TLS threads: {e}")))?,
            )),
            None => None,
        };
        let n = cfg.effective_shards();
        let stats: Vec<Arc<ShardStats>> = (0..n).map(|_| Arc::new(ShardStats::default())).collect();
        let http_ctx = Arc::new(HttpCtx::new(&cfg, stats.clone()).map_err(StartError::Config)?);
        let (addr, listeners) = bind_listeners(cfg.listen, n)?;
        // The HTTP port like the TCP one: the first shard's listener resolves port 0,
        // the others bind the port it got.
        let (http_addr, http_listeners) = match cfg.http_listen {
            Some(a) => {
                let (a, ls) = bind_listeners(a, n)?;
                (Some(a), ls.into_iter().map(Some).collect())
            }
            None => (None, (0..n).map(|_| None).collect::<Vec<_>>()),
        };
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
                history: crate::store::HistoryOptions {
                    per_conversation: cfg.history_per_conversation,
                    max_age: cfg.history_max_age,
                    max_bytes: cfg.history_max_bytes_per_conversation,
                    memory_bytes: cfg.history_memory_bytes,
                    flush_every: cfg.history_flush_every,
                    hot_bytes: cfg.history_hot_memory_bytes,
                    log_file_bytes: 0,
                    lookup_chunks: cfg.history_lookup_chunks,
                },
                min_free_disk: cfg.min_free_disk_bytes,
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
        let done: Vec<Arc<MailQueue>> = bells
            .iter()
            .map(|b| Arc::new(MailQueue::new(b.clone())))
            .collect();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            auth,
            conns: Arc::new(ConnSlots::new(
                cfg.max_connections,
                cfg.max_connections_per_ip,
            )),
            shutdown: AtomicBool::new(false),
            quiesced: AtomicUsize::new(0),
            drain_cut: AtomicBool::new(false),
            drain_progress: std::sync::atomic::AtomicU64::new(0),
            bells,
            store: store.clone(),
            tls,
            handshakes,
            signup: SignupGate::new(&cfg),
            failed_logins: FailedChecks::logins(&cfg),
            room_passwords: Arc::new(RoomPasswords::new(&cfg)),
            memory: Arc::new(crate::shard::memory::MemoryGate::new(n)),
        });
        let flights: Arc<Vec<Vec<Arc<AtomicUsize>>>> = Arc::new(
            (0..n)
                .map(|_| (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect())
                .collect(),
        );
        let pause = crate::shard::pause_tables(n, cfg.max_connections);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, (usize, String)>>();
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut threads = Vec::with_capacity(n);
        let shard_listeners = listeners.into_iter().zip(http_listeners);
        for (id, ((outs, inbox), (listener, http))) in
            meshes.into_iter().zip(shard_listeners).enumerate()
        {
            let http = http.map(|l| (l, http_ctx.clone()));
            let shared = shared.clone();
            let st = stats[id].clone();
            let ready = ready_tx.clone();
            let flights = flights.clone();
            let pause = pause.clone();
            let queues = done.clone();
            let done = done[id].clone();
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    if shared.cfg.pin_threads {
                        let _ = monoio::utils::bind_to_cpu_set([id % cores]);
                    }
                    let setup = ShardThread {
                        id,
                        n,
                        shared: shared.clone(),
                        stats: st,
                        listener,
                        outs,
                        inbox,
                        flights,
                        pause,
                        store_answers: done,
                        answer_queues: queues,
                        http,
                    };
                    if let Err(e) = run_shard(setup, &ready) {
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
        http_ctx.ready.store(true, Ordering::Release);
        Ok(RouterHandle {
            addr,
            http_addr,
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

    /// The bound address of the HTTP port (`None`: `--http-listen off`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
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

    /// Waits up to `timeout` for the shard threads (longer while their shutdown drains
    /// progress: `shard::run::drain_stall`, up to `drain_max`), then closes the store. True when
    /// the stop was clean: every thread finished, no shard's drain was cut by
    /// `--shutdown-timeout`, and the store persisted what the shards handed it.
    pub fn join(self, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut deadline = start + timeout;
        let most = start + timeout + crate::shard::run::drain_max(&self.shared.cfg);
        let mut progress = self.shared.drain_progress.load(Ordering::SeqCst);
        while !self.is_finished() {
            // A shard still storing what its sessions left (their unacked messages) is
            // waited for while it makes progress: cut, they would be lost.
            let now_progress = self.shared.drain_progress.load(Ordering::SeqCst);
            if now_progress != progress {
                progress = now_progress;
                let stall = crate::shard::run::drain_stall(&self.shared.cfg);
                deadline = deadline
                    .max(Instant::now() + stall + Duration::from_secs(1))
                    .min(most + Duration::from_secs(2));
            }
            if Instant::now() >= deadline {
                if let Some(h) = &self.shared.handshakes {
                    h.stop();
                }
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(h) = &self.shared.handshakes {
            h.stop();
        }
        // The shards queued the unacked messages of their sessions: persist them.
        let stored = match self.store.shutdown() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "store shutdown failed");
                false
            }
        };
        stored && !self.shared.drain_cut.load(Ordering::SeqCst)
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
