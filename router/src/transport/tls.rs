//! TLS settings (`--tls-cert`, `--tls-key`): the rustls server configuration shared by
//! the TCP listener and the HTTP port.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Loads a PEM certificate chain and private key into a server configuration
/// (TLS 1.2 and 1.3, ring, no client certificates; ALPN `http/1.1` for browsers).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The threads TLS handshakes run on (`--tls-handshake-threads`), and their bounds
/// (`--max-tls-handshakes`, `--max-tls-handshakes-per-ip`).
///
/// A handshake's first flight costs the server its key exchange and a signature
/// (~0.6 ms with an RSA-2048 key), and a client can ask for it with one ClientHello
/// that costs it nothing. On a shard thread every such step delayed the sessions of
/// that shard; here the steps of a handshake (the bytes read while rustls is
/// handshaking) run on threads of their own, at a lower priority than the shards
/// (ten nice steps below), so a flood of new connections takes what CPU the shards leave
/// and waits in a bounded queue. Past the bound a connection's first step (its
/// ClientHello) is refused and the connection closed; a handshake once admitted is not
/// (see [`Admit`]).
///
/// One address (`crate::address::address_key`: an IPv4 address, or an IPv6 /64) may
/// hold at most `per_addr` of the steps: one client replaying ClientHellos filled the
/// whole queue and honest handshakes from elsewhere were refused (p50 7 tries). And
/// the queue is served an address at a time, in turn (each address's own steps in
/// order): a step from an address with one queued waits for at most one of each other
/// address's, not for a flood's whole backlog.
pub(crate) struct Handshakes {
    q: Arc<Queue>,
    max: usize,
    /// Most steps queued or running from one address (`usize::MAX`: no bound).
    per_addr: usize,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Which bound a handshake step is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A connection's first step (its ClientHello) on the chat port:
    /// `--max-tls-handshakes`.
    New,
    /// The same on the HTTP port: an eighth more.
    NewHttp,
    /// A later step of a handshake already admitted: never refused (refusing it would
    /// throw away the first step's work and an honest client).
    Started,
}

/// Puts the calling thread ten steps of nice below where it is (on Linux, where the
/// nice value is per thread), so the shards come first.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: nice(2) takes an integer and changes only this thread's scheduling
        // priority (glibc: setpriority on the calling thread's id).
        let r = unsafe {
            *libc::__errno_location() = 0;
            libc::nice(10)
        };
        // SAFETY: reads this thread's errno.
        if r == -1 && unsafe { *libc::__errno_location() } != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lower the TLS threads' priority"
            );
        }
    }
}

/// One address's steps.
#[derive(Default)]
struct AddrSteps {
    /// Queued or running (what `per_addr` bounds).
    steps: usize,
    /// Queued, oldest first.
    queued: std::collections::VecDeque<Job>,
}

/// The queue: per address, served in turn. An address has an entry while it has a step
/// queued or running (at most one entry a step, so no more than the steps).
#[derive(Default)]
struct Jobs {
    by_addr: std::collections::HashMap<IpAddr, AddrSteps>,
    /// The addresses with a step queued, each once: a thread takes the first one's
    /// oldest step and puts the address back at the end if it has more.
    turns: std::collections::VecDeque<IpAddr>,
    stopped: bool,
}

impl Jobs {
    /// Steps queued or running from `addr`.
    fn steps(&self, addr: IpAddr) -> usize {
        self.by_addr.get(&addr).map_or(0, |a| a.steps)
    }

    /// Queues `job` (counted already) for `addr`.
    fn push(&mut self, addr: IpAddr, job: Job) {
        let a = self.by_addr.entry(addr).or_default();
        a.queued.push_back(job);
        if a.queued.len() == 1 {
            self.turns.push_back(addr);
        }
    }

    /// The next step: the oldest of the address whose turn it is.
    fn pop(&mut self) -> Option<Job> {
        while let Some(addr) = self.turns.pop_front() {
            let Some(a) = self.by_addr.get_mut(&addr) else {
                continue;
            };
            let Some(job) = a.queued.pop_front() else {
                continue;
            };
            if !a.queued.is_empty() {
                self.turns.push_back(addr);
            }
            return Some(job);
        }
        None
    }

    /// A step of `addr` is counted (queued).
    fn count(&mut self, addr: IpAddr) {
        self.by_addr.entry(addr).or_default().steps += 1;
    }

    /// A step of `addr` is done (answered, or dropped unrun); an address with none
    /// left is forgotten.
    fn done(&mut self, addr: IpAddr) {
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.by_addr.entry(addr) {
            let a = e.get_mut();
            a.steps = a.steps.saturating_sub(1);
            if a.steps == 0 && a.queued.is_empty() {
                e.remove();
            }
        }
    }

    /// Takes every queued step out (to be dropped once the lock is let go: dropping one
    /// takes it).
    fn take_all(&mut self) -> Vec<Job> {
        self.turns.clear();
        self.by_addr
            .values_mut()
            .flat_map(|a| std::mem::take(&mut a.queued))
            .collect()
    }
}

#[derive(Default)]
struct Queue {
    jobs: std::sync::Mutex<Jobs>,
    ready: std::sync::Condvar,
    /// Steps queued or running.
    in_progress: std::sync::atomic::AtomicUsize,
    /// Steps refused at the bound.
    refused: std::sync::atomic::AtomicU64,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a step (for its address too) until it is answered (or dropped unrun at
/// shutdown). Never dropped with the queue's lock held.
struct InProgress(Arc<Queue>, IpAddr);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.lock().done(self.1);
        self.0
            .in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Handshakes {
    /// Starts `threads` (0: one per two cores, at least one) threads, with at most
    /// `max` steps queued or running, at most `per_addr` (0: no bound) of them from one
    /// address.
    pub(crate) fn start(
        threads: usize,
        max: usize,
        per_addr: usize,
    ) -> std::io::Result<Handshakes> {
        let n = match threads {
            0 => std::thread::available_parallelism().map_or(1, |c| (c.get() / 2).max(1)),
            n => n,
        };
        let h = Handshakes {
            q: Arc::new(Queue::default()),
            max: max.max(1),
            per_addr: match per_addr {
                0 => usize::MAX,
                n => n,
            },
            threads: std::sync::Mutex::new(Vec::with_capacity(n)),
        };
        for i in 0..n {
            let q = Arc::clone(&h.q);
            let t = std::thread::Builder::new()
                .name(format!("rr-tls-{i}"))
                .spawn(move || {
                    lower_priority();
                    worker(&q);
                });
            match t {
                Ok(t) => h.lock_threads().push(t),
                Err(e) => {
                    h.stop();
                    return Err(e);
                }
            }
        }
        Ok(h)
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<std::thread::JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a handshake thread and gives its result; `None` when a bound for
    /// `admit` is reached (the total, or `from`'s share; counted as refused) or the
    /// threads have stopped. `from` is the peer's address (as `address_key` keys it).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        admit: Admit,
        from: IpAddr,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        use std::sync::atomic::Ordering;
        let (limit, addr_limit) = match admit {
            Admit::New => (self.max, self.per_addr),
            // The HTTP port's own eighth on top: a flood on the chat port leaves it
            // health checks and scrapes.
            Admit::NewHttp => (self.max + self.max.div_ceil(8), self.per_addr),
            Admit::Started => (usize::MAX, usize::MAX),
        };
        // Taken in while the shard is busy too (`turns::answer`).
        let (tx, rx) = crate::turns::answer();
        {
            let mut g = self.q.lock();
            if g.stopped {
                return None;
            }
            let addr_full = g.steps(from) >= addr_limit;
            if addr_full || self.q.in_progress.fetch_add(1, Ordering::AcqRel) >= limit {
                if !addr_full {
                    self.q.in_progress.fetch_sub(1, Ordering::AcqRel);
                }
                self.q.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            g.count(from);
            let counted = InProgress(Arc::clone(&self.q), from);
            let job: Job = Box::new(move || {
                // A connection that gave up (its read dropped) costs no crypto.
                if tx.is_closed() {
                    return;
                }
                let r = f();
                drop(counted);
                // The receiver is gone only when the connection's task was dropped.
                let _ = tx.send(r);
            });
            g.push(from, job);
        }
        self.q.ready.notify_one();
        rx.await.ok()
    }

    /// Whether a new chat-port connection from `from` would have its first step
    /// refused now; if so it is counted as refused (the accept loop closes such a
    /// connection at once).
    pub(crate) fn refuse_new(&self, from: IpAddr) -> bool {
        use std::sync::atomic::Ordering;
        let full = self.q.in_progress.load(Ordering::Acquire) >= self.max
            || (self.per_addr != usize::MAX && self.q.lock().steps(from) >= self.per_addr);
        if full {
            self.q.refused.fetch_add(1, Ordering::Relaxed);
        }
        full
    }

    /// Steps queued or running now.
    pub(crate) fn in_progress(&self) -> usize {
        self.q
            .in_progress
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Steps refused at the bound so far.
    pub(crate) fn refused(&self) -> u64 {
        self.q.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Addresses with a step queued or running now.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.q.lock().by_addr.len()
    }

    /// Drops the queued steps (their connections see the end of their read) and waits
    /// for the threads (at most one step each).
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut g = self.q.lock();
            g.stopped = true;
            g.take_all()
        };
        drop(dropped);
        self.q.ready.notify_all();
        for t in std::mem::take(&mut *self.lock_threads()) {
            let _ = t.join();
        }
    }
}

impl Drop for Handshakes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(q: &Queue) {
    loop {
        let job = {
            let mut g = q.lock();
            loop {
                if let Some(j) = g.pop() {
                    break j;
                }
                if g.stopped {
                    return;
                }
                g = q.ready.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A step that panics (rustls should not) answers nothing: its connection sees the
        // end of its read. The thread goes on with the next.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a TLS handshake step panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));

    fn job(log: &Arc<std::sync::Mutex<Vec<u32>>>, n: u32) -> Job {
        let log = log.clone();
        Box::new(move || log.lock().expect("log").push(n))
    }

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime")
    }

    /// Steps held on the handshake thread until `release` lets them go, one each.
    struct Holds {
        go: std::sync::mpsc::Sender<()>,
        rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    impl Holds {
        fn new() -> Holds {
            let (go, rx) = std::sync::mpsc::channel();
            Holds {
                go,
                rx: Arc::new(std::sync::Mutex::new(rx)),
            }
        }

        /// A step of `from` admitted as `admit`, held until released; it answers 7.
        fn step(
            &self,
            h: &Arc<Handshakes>,
            admit: Admit,
            from: IpAddr,
        ) -> monoio::task::JoinHandle<Option<i32>> {
            let (h, rx) = (h.clone(), self.rx.clone());
            monoio::spawn(async move {
                h.run(admit, from, move || {
                    let _ = rx.lock().map(|r| r.recv());
                    7
                })
                .await
            })
        }

        fn release(&self, n: usize) {
            for _ in 0..n {
                self.go.send(()).expect("held");
            }
        }
    }

    /// Waits until `n` steps are queued or running.
    async fn until(h: &Handshakes, n: usize) {
        while h.in_progress() < n {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// The queue serves the addresses in turn, each one's steps in order; an address
    /// is forgotten once its last step is done.
    #[test]
    fn addresses_take_turns_and_are_forgotten() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut j = Jobs::default();
        for (addr, n) in [(A, 1), (A, 2), (A, 3), (A, 4), (B, 10), (C, 20), (B, 11)] {
            j.count(addr);
            j.push(addr, job(&log, n));
        }
        assert_eq!((j.steps(A), j.steps(B), j.steps(C)), (4, 2, 1));
        while let Some(f) = j.pop() {
            f();
        }
        assert_eq!(*log.lock().expect("log"), [1, 10, 20, 2, 11, 3, 4]);
        // Run but not done yet: still counted.
        assert_eq!((j.steps(A), j.by_addr.len()), (4, 3));
        for _ in 0..4 {
            j.done(A);
        }
        j.done(C);
        assert_eq!((j.steps(A), j.steps(B), j.by_addr.len()), (0, 2, 1));
        j.done(B);
        j.done(B);
        j.done(B);
        assert!(j.by_addr.is_empty() && j.turns.is_empty());
        // A new step after a turn was used up takes a turn again.
        j.count(C);
        j.push(C, job(&log, 30));
        assert!(j.pop().is_some() && j.pop().is_none());
    }

    /// One address holds at most its share of the steps: past it its new steps (and
    /// new connections) are refused while another address is admitted; a started
    /// handshake is never refused; the share frees as its steps are done.
    #[test]
    fn an_address_holds_at_most_its_share() {
        let h = Arc::new(Handshakes::start(1, 10, 2).expect("threads"));
        runtime().block_on(async {
            let holds = Holds::new();
            let held = |admit, from| holds.step(&h, admit, from);
            let (a1, a2) = (held(Admit::New, A), held(Admit::New, A));
            until(&h, 2).await;
            assert_eq!(h.run(Admit::New, A, || 1).await, None, "past A's share");
            assert_eq!(h.run(Admit::NewHttp, A, || 1).await, None, "on either port");
            assert!(h.refuse_new(A), "and at accept");
            assert_eq!(h.refused(), 3);
            // The same /64 is the same address (the caller keys it).
            let v6 = crate::address::address_key("2001:db8::1".parse().expect("ip"));
            assert_eq!(
                v6,
                crate::address::address_key("2001:db8::2".parse().expect("ip"))
            );
            assert!(!h.refuse_new(B), "another address is not");
            assert!(!h.refuse_new(v6));
            let b = held(Admit::New, B);
            let a3 = held(Admit::Started, A);
            until(&h, 4).await;
            assert_eq!(h.addresses(), 2);
            assert_eq!(h.refused(), 3);
            holds.release(4);
            for t in [a1, a2, b, a3] {
                assert_eq!(t.await, Some(7));
            }
            assert_eq!((h.in_progress(), h.addresses()), (0, 0), "forgotten");
            assert!(!h.refuse_new(A));
            assert_eq!(h.run(Admit::New, A, || 2).await, Some(2), "room again");
        });
        h.stop();
    }

    /// Steps run off the calling thread; past the bound a step is refused (and
    /// counted) until one in progress is done.
    #[test]
    fn steps_run_on_the_threads_and_the_bound_refuses_more() {
        let h = Arc::new(Handshakes::start(1, 2, 0).expect("threads"));
        runtime().block_on(async {
            let me = std::thread::current().id();
            let there = h.run(Admit::New, A, || std::thread::current().id()).await;
            assert!(there.is_some_and(|t| t != me));
            // Two steps held on the thread: a third is refused.
            let holds = Holds::new();
            let held = |admit| holds.step(&h, admit, A);
            let (a, b) = (held(Admit::New), held(Admit::New));
            until(&h, 2).await;
            assert_eq!(h.run(Admit::New, A, || 1).await, None, "past the bound");
            assert_eq!(h.refused(), 1);
            assert!(h.refuse_new(A), "and a new connection at accept");
            assert_eq!(h.refused(), 2);
            // The HTTP port has an eighth more (here one), a started handshake no bound.
            let c = held(Admit::NewHttp);
            until(&h, 3).await;
            assert_eq!(
                h.run(Admit::NewHttp, A, || 1).await,
                None,
                "past the HTTP bound"
            );
            let d = held(Admit::Started);
            until(&h, 4).await;
            assert_eq!(h.refused(), 3);
            holds.release(4);
            assert_eq!(a.await, Some(7));
            assert_eq!(b.await, Some(7));
            assert_eq!(c.await, Some(7));
            assert_eq!(d.await, Some(7));
            assert_eq!(h.in_progress(), 0);
            assert!(!h.refuse_new(A));
            assert_eq!(h.run(Admit::New, A, || 2).await, Some(2), "room again");
        });
        h.stop();
    }
}
