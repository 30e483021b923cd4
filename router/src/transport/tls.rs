//! TLS settings (`--tls-cert`, `--tls-key`): the rustls server configuration shared by
//! the TCP listener and the HTTP port.

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

/// The threads TLS handshakes run on (`--tls-handshake-threads`), and their bound
/// (`--max-tls-handshakes`).
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
pub(crate) struct Handshakes {
    q: Arc<Queue>,
    max: usize,
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

#[derive(Default)]
struct Queue {
    jobs: std::sync::Mutex<(std::collections::VecDeque<Job>, bool)>,
    ready: std::sync::Condvar,
    /// Steps queued or running.
    in_progress: std::sync::atomic::AtomicUsize,
    /// Steps refused at the bound.
    refused: std::sync::atomic::AtomicU64,
}

/// Counts a step until it is answered (or dropped unrun at shutdown).
struct InProgress(Arc<Queue>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0
            .in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Handshakes {
    /// Starts `threads` (0: one per two cores, at least one) threads, with at most
    /// `max` steps queued or running.
    pub(crate) fn start(threads: usize, max: usize) -> std::io::Result<Handshakes> {
        let n = match threads {
            0 => std::thread::available_parallelism().map_or(1, |c| (c.get() / 2).max(1)),
            n => n,
        };
        let h = Handshakes {
            q: Arc::new(Queue::default()),
            max: max.max(1),
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

    /// Runs `f` on a handshake thread and gives its result; `None` when the bound
    /// for `admit` is reached (counted as refused) or the threads have stopped.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        admit: Admit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        use std::sync::atomic::Ordering;
        let limit = match admit {
            Admit::New => self.max,
            // The HTTP port's own eighth on top: a flood on the chat port leaves it
            // health checks and scrapes.
            Admit::NewHttp => self.max + self.max.div_ceil(8),
            Admit::Started => usize::MAX,
        };
        if self.q.in_progress.fetch_add(1, Ordering::AcqRel) >= limit {
            self.q.in_progress.fetch_sub(1, Ordering::AcqRel);
            self.q.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let counted = InProgress(Arc::clone(&self.q));
        // Taken in while the shard is busy too (`turns::answer`).
        let (tx, rx) = crate::turns::answer();
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
        {
            let mut g = self.q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if g.1 {
                return None;
            }
            g.0.push_back(job);
        }
        self.q.ready.notify_one();
        rx.await.ok()
    }

    /// Whether a new chat-port connection's first step would be refused now; if so it
    /// is counted as refused (the accept loop closes such a connection at once).
    pub(crate) fn refuse_new(&self) -> bool {
        use std::sync::atomic::Ordering;
        let full = self.q.in_progress.load(Ordering::Acquire) >= self.max;
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

    /// Drops the queued steps (their connections see the end of their read) and waits
    /// for the threads (at most one step each).
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut g = self.q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            g.1 = true;
            std::mem::take(&mut g.0)
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
            let mut g = q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(j) = g.0.pop_front() {
                    break j;
                }
                if g.1 {
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

    /// Steps run off the calling thread; past the bound a step is refused (and
    /// counted) until one in progress is done.
    #[test]
    fn steps_run_on_the_threads_and_the_bound_refuses_more() {
        let h = Arc::new(Handshakes::start(1, 2).expect("threads"));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let me = std::thread::current().id();
            let there = h.run(Admit::New, || std::thread::current().id()).await;
            assert!(there.is_some_and(|t| t != me));
            // Two steps held on the thread: a third is refused.
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let go_rx = Arc::new(std::sync::Mutex::new(go_rx));
            // A step held on the thread until `go_tx` sends.
            let held = |admit: Admit| {
                let h = h.clone();
                let rx = go_rx.clone();
                monoio::spawn(async move {
                    h.run(admit, move || {
                        let _ = rx.lock().map(|r| r.recv());
                        7
                    })
                    .await
                })
            };
            let until = |n: usize| {
                let h = h.clone();
                async move {
                    while h.in_progress() < n {
                        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
            };
            let (a, b) = (held(Admit::New), held(Admit::New));
            until(2).await;
            assert_eq!(h.run(Admit::New, || 1).await, None, "past the bound");
            assert_eq!(h.refused(), 1);
            assert!(h.refuse_new(), "and a new connection at accept");
            assert_eq!(h.refused(), 2);
            // The HTTP port has an eighth more (here one), a started handshake no bound.
            let c = held(Admit::NewHttp);
            until(3).await;
            assert_eq!(
                h.run(Admit::NewHttp, || 1).await,
                None,
                "past the HTTP bound"
            );
            let d = held(Admit::Started);
            until(4).await;
            assert_eq!(h.refused(), 3);
            for _ in 0..4 {
                go_tx.send(()).expect("held");
            }
            assert_eq!(a.await, Some(7));
            assert_eq!(b.await, Some(7));
            assert_eq!(c.await, Some(7));
            assert_eq!(d.await, Some(7));
            assert_eq!(h.in_progress(), 0);
            assert!(!h.refuse_new());
            assert_eq!(h.run(Admit::New, || 2).await, Some(2), "room again");
        });
        h.stop();
    }
}
