//! The password-hashing pool: 1–2 threads that run Argon2id (≈35 ms a hash with the real
//! parameters) so that neither the shards nor the storage thread ever do.
//!
//! Jobs carry only an id and the data; the completion callbacks stay on the storage thread,
//! which gets every answer back as a [`Msg::Hashed`] on its own queue. Every job is answered,
//! also during shutdown (then with [`StoreError::Closed`], without hashing).
//!
//! Three queues, by [`Class`]: password Logins are served first; Registers and room
//! passwords (a JoinRoom's check, a CreateRoom's hash) after them, taking turns; each
//! queue in order. Someone waiting to log in therefore waits for the logins ahead of it
//! and at most one job per thread, never behind a flood of Registers (before: one FIFO,
//! 256 queued Registers held a login ≈ 9 s) nor of wrong room passwords (when room checks
//! shared the logins' queue, 80 users guessing room passwords held an honest login
//! p50 0.9 s, `bench/hostile/room_pw.py`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

/// Who a job is for: the order the pool serves them in (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A password Login's check: first.
    Login,
    /// A Register's hash.
    Register,
    /// A room's password: a JoinRoom's check or a CreateRoom's hash.
    Room,
}

/// The pool's queues (see the module doc).
#[derive(Default)]
struct Queues {
    /// Password Logins' checks, served first.
    login: VecDeque<HashJob>,
    /// Registers' hashes.
    register: VecDeque<HashJob>,
    /// Room passwords' checks and hashes.
    room: VecDeque<HashJob>,
    /// The next job that is not a login's goes to a room's if both wait.
    room_next: bool,
    /// No more jobs will come (set by [`HashPool::cancel`]).
    closed: bool,
    /// Logins served in a row while other jobs waited (see [`LOGINS_PER_OTHER`]).
    logins_in_a_row: u32,
}

/// While other jobs wait, one goes after this many logins: a steady stream of logins (or
/// of guesses at a user's password) would otherwise keep every Register and room join
/// waiting, holding its admission slot, and so refusing every later one.
const LOGINS_PER_OTHER: u32 = 8;

impl Queues {
    fn push(&mut self, job: HashJob, class: Class) {
        match class {
            Class::Login => self.login.push_back(job),
            Class::Register => self.register.push_back(job),
            Class::Room => self.room.push_back(job),
        }
    }

    /// The next job: the oldest login's, else a Register's or a room's, those two taking
    /// turns; one of them after [`LOGINS_PER_OTHER`] logins in a row while they wait.
    fn pop(&mut self) -> Option<HashJob> {
        let others = !self.register.is_empty() || !self.room.is_empty();
        if !others || self.logins_in_a_row < LOGINS_PER_OTHER {
            if let Some(job) = self.login.pop_front() {
                self.logins_in_a_row += u32::from(others);
                return Some(job);
            }
        }
        self.logins_in_a_row = 0;
        let room = (self.room_next && !self.room.is_empty()) || self.register.is_empty();
        if room {
            self.room_next = false;
            self.room.pop_front()
        } else {
            self.room_next = true;
            self.register.pop_front()
        }
    }
}

/// The queues and the signal the idle threads wait on.
#[derive(Default)]
struct Jobs {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl Jobs {
    /// The queues; a thread that panicked while holding them left them consistent (each
    /// change is one push or pop).
    fn lock(&self) -> MutexGuard<'_, Queues> {
        match self.queues.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Waits for the next job; `None` once the pool is closed and both queues are empty.
    fn next(&self) -> Option<HashJob> {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.pop() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = match self.ready.wait(q) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

/// The running pool.
pub(crate) struct HashPool {
    /// The queues the threads take jobs from.
    jobs: Arc<Jobs>,
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
        nap: super::NapEnd,
        queued: Arc<AtomicUsize>,
    ) -> std::io::Result<HashPool> {
        let jobs = Arc::new(Jobs::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let mut pool = HashPool {
            jobs,
            cancel,
            queued,
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let jobs = Arc::clone(&pool.jobs);
            let reply = reply.clone();
            let nap = nap.clone();
            let cancel = Arc::clone(&pool.cancel);
            let queued = Arc::clone(&pool.queued);
            let spawned = std::thread::Builder::new()
                .name(format!("rr-hash-{i}"))
                .spawn(move || worker(&jobs, &reply, &nap, &cancel, &queued, cheap));
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    // The threads started already end with the queues closed.
                    pool.join();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Queues a job of `class`; `false` if the pool is closed.
    pub(crate) fn submit(&self, job: HashJob, class: Class) -> bool {
        let mut q = self.jobs.lock();
        if q.closed {
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        q.push(job, class);
        drop(q);
        self.jobs.ready.notify_one();
        true
    }

    /// Cancels queued jobs (they are answered `Closed`) and closes the queues.
    pub(crate) fn cancel(&mut self) {
        self.cancel.store(true, Ordering::Release);
        self.jobs.lock().closed = true;
        self.jobs.ready.notify_all();
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
    jobs: &Jobs,
    reply: &Sender<Msg>,
    nap: &super::NapEnd,
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
        let Some(job) = jobs.next() else { return };
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
        // The answer is due at once, not after the storage thread's nap.
        nap.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(q: &mut Queues) -> Vec<u64> {
        std::iter::from_fn(|| q.pop())
            .map(|j| match j {
                HashJob::Hash { id, .. } | HashJob::Verify { id, .. } => id,
            })
            .collect()
    }

    /// Logins go first, each class in order; Registers and room jobs take turns after
    /// them: a login queued behind Registers and wrong room passwords is served next.
    #[test]
    fn logins_are_served_first_then_registers_and_rooms_take_turns() {
        let mut q = Queues::default();
        let hash = |id| HashJob::Hash {
            id,
            password: "p".into(),
        };
        let verify = |id| HashJob::Verify {
            id,
            password: "p".into(),
            phc: String::new(),
        };
        q.push(hash(1), Class::Register);
        q.push(hash(2), Class::Register);
        q.push(verify(3), Class::Room);
        q.push(verify(4), Class::Room);
        q.push(verify(5), Class::Room);
        q.push(verify(6), Class::Login);
        q.push(hash(7), Class::Room);
        q.push(verify(8), Class::Login);
        assert_eq!(ids(&mut q), [6, 8, 1, 3, 2, 4, 5, 7]);
        // A stream of logins lets a waiting job through every LOGINS_PER_OTHER.
        q.push(verify(100), Class::Room);
        for id in 0..20 {
            q.push(verify(id), Class::Login);
        }
        let order = ids(&mut q);
        let at = order.iter().position(|&i| i == 100);
        assert_eq!(at, Some(LOGINS_PER_OTHER as usize), "{order:?}");
    }

    /// Every job queued before the pool is cancelled is answered (hashed, or `Closed`),
    /// and the threads end; a job submitted after is refused.
    #[test]
    fn queued_jobs_are_answered_at_cancel() {
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let nap = super::super::NapEnd::default();
        let mut pool = HashPool::start(1, true, tx, nap, Arc::clone(&queued)).expect("pool");
        for id in 0..5 {
            assert!(pool.submit(
                HashJob::Hash {
                    id,
                    password: "p".into(),
                },
                Class::Register
            ));
        }
        pool.join();
        assert!(!pool.submit(
            HashJob::Hash {
                id: 9,
                password: "p".into(),
            },
            Class::Register
        ));
        let mut answered: Vec<u64> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Hashed { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        answered.sort_unstable();
        assert_eq!(answered, [0, 1, 2, 3, 4]);
        assert_eq!(queued.load(Ordering::Relaxed), 0);
    }

    /// A hash's answer ends the storage thread's nap (it is due at once: a login waits
    /// for it), where a history append would not.
    #[test]
    fn an_answer_ends_the_storage_threads_nap() {
        let (tx, rx) = std::sync::mpsc::channel();
        let nap = super::super::NapEnd::default();
        let _ = nap.thread.set(std::thread::current());
        nap.napping.store(true, Ordering::SeqCst);
        let queued = Arc::new(AtomicUsize::new(0));
        let mut pool =
            HashPool::start(1, true, tx, nap.clone(), Arc::clone(&queued)).expect("pool");
        assert!(pool.submit(
            HashJob::Hash {
                id: 1,
                password: "p".into(),
            },
            Class::Room
        ));
        assert!(matches!(
            rx.recv_timeout(std::time::Duration::from_secs(30)),
            Ok(Msg::Hashed { id: 1, .. })
        ));
        pool.join();
        assert!(!nap.napping.load(Ordering::SeqCst), "the nap is over");
    }
}
