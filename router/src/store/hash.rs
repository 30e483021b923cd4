//! The password-hashing pool: 1–2 threads that run Argon2id (≈35 ms a hash with the real
//! parameters) so that neither the shards nor the storage thread ever do.
//!
//! Jobs carry only an id and the data; the completion callbacks stay on the storage thread,
//! which gets every answer back as a [`Msg::Hashed`] on its own queue. Every job is answered,
//! also during shutdown (then with [`StoreError::Closed`], without hashing).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use super::{Msg, StoreError};

/// Work for the pool.
pub(crate) enum HashJob {
    /// Hash a new password into a PHC string.
    Hash {
        /// Answer id.
        id: u64,
        /// The password.
        password: String,
    },
    /// Check a password against a stored PHC string.
    Verify {
        /// Answer id.
        id: u64,
        /// The password.
        password: String,
        /// The stored hash; empty: the pool's dummy hash (same work, never a match).
        phc: String,
    },
}

/// What a job produced.
pub(crate) enum HashOutcome {
    /// A PHC string.
    Phc(String),
    /// Whether the password matched.
    Verified(bool),
}

/// The argon2 context for new hashes: OWASP-recommended defaults (Argon2id, m = 19 MiB,
/// t = 2, p = 1) or, for tests, the smallest legal parameters.
fn hasher(cheap: bool) -> Argon2<'static> {
    if cheap {
        match Params::new(
            Params::MIN_M_COST,
            Params::MIN_T_COST,
            Params::MIN_P_COST,
            None,
        ) {
            Ok(params) => Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            Err(_) => Argon2::default(),
        }
    } else {
        Argon2::default()
    }
}

/// Hashes `password` with a fresh random salt.
pub(crate) fn hash_password(argon: &Argon2<'_>, password: &str) -> Result<String, StoreError> {
    let hash: PasswordHash = argon
        .hash_password(password.as_bytes())
        .map_err(|e| StoreError::Io(format!("argon2 hash failed: {e}")))?;
    Ok(hash.to_string())
}

/// Checks `password` against a PHC string (the string's own parameters are used).
pub(crate) fn verify_password(
    argon: &Argon2<'_>,
    password: &str,
    phc: &str,
) -> Result<bool, StoreError> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| StoreError::Io(format!("corrupt password hash: {e}")))?;
    match argon.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(StoreError::Io(format!("argon2 verify failed: {e}"))),
    }
}

/// The running pool.
pub(crate) struct HashPool {
    /// Job queue; dropping it lets the threads exit.
    pub tx: Option<Sender<HashJob>>,
    /// Set at shutdown: queued jobs are answered `Closed` without hashing.
    pub cancel: Arc<AtomicBool>,
    /// Jobs queued or running.
    pub queued: Arc<AtomicUsize>,
    /// The threads.
    pub threads: Vec<JoinHandle<()>>,
}

impl HashPool {
    /// Starts `n` (at least 1) threads answering to `reply`.
    pub(crate) fn start(
        n: usize,
        cheap: bool,
        reply: Sender<Msg>,
        queued: Arc<AtomicUsize>,
    ) -> std::io::Result<HashPool> {
        let (tx, rx) = mpsc::channel::<HashJob>();
        let rx = Arc::new(Mutex::new(rx));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx = Arc::clone(&rx);
            let reply = reply.clone();
            let cancel = Arc::clone(&cancel);
            let queued = Arc::clone(&queued);
            let t = std::thread::Builder::new()
                .name(format!("rr-hash-{i}"))
                .spawn(move || worker(&rx, &reply, &cancel, &queued, cheap))?;
            threads.push(t);
        }
        Ok(HashPool {
            tx: Some(tx),
            cancel,
            queued,
            threads,
        })
    }

    /// Queues a job; `false` if the pool is gone.
    pub(crate) fn submit(&self, job: HashJob) -> bool {
        match &self.tx {
            Some(tx) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                if tx.send(job).is_ok() {
                    true
                } else {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    false
                }
            }
            None => false,
        }
    }

    /// Cancels queued jobs (they are answered `Closed`) and closes the queue.
    pub(crate) fn cancel(&mut self) {
        self.cancel.store(true, Ordering::Release);
        self.tx = None;
    }

    /// Waits for the threads (after [`HashPool::cancel`], at most one hash each).
    pub(crate) fn join(&mut self) {
        self.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(
    rx: &Mutex<Receiver<HashJob>>,
    reply: &Sender<Msg>,
    cancel: &AtomicBool,
    queued: &AtomicUsize,
    cheap: bool,
) {
    let argon = hasher(cheap);
    // Made once, with the parameters of every new hash: a login for a user without a
    // password hash is checked against it, so it costs what a wrong password costs.
    // Made before this thread's first job of any kind (not at start: a router that
    // never hashes, e.g. with open auth, never pays for it).
    let mut dummy: Option<Option<String>> = None;
    loop {
        let job = {
            let guard = match rx.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.recv()
        };
        let Ok(job) = job else { return };
        let dummy =
            dummy.get_or_insert_with(|| hash_password(&argon, "ringrouter: no such account").ok());
        let cancelled = cancel.load(Ordering::Acquire);
        let (id, result) = match job {
            HashJob::Hash { id, .. } | HashJob::Verify { id, .. } if cancelled => {
                (id, Err(StoreError::Closed))
            }
            HashJob::Hash { id, password } => {
                (id, hash_password(&argon, &password).map(HashOutcome::Phc))
            }
            HashJob::Verify { id, password, phc } if phc.is_empty() => {
                if let Some(d) = dummy.as_deref() {
                    let _ = verify_password(&argon, &password, d);
                }
                (id, Ok(HashOutcome::Verified(false)))
            }
            HashJob::Verify { id, password, phc } => (
                id,
                verify_password(&argon, &password, &phc).map(HashOutcome::Verified),
            ),
        };
        queued.fetch_sub(1, Ordering::Relaxed);
        if reply.send(Msg::Hashed { id, result }).is_err() {
            return;
        }
    }
}
