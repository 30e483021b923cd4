//! The embedded store: accounts, rooms and offline queues in one fjall database, written by
//! one storage thread so that a shard thread never blocks on disk.
//!
//! # Model
//! - [`Store::open`] opens (creates) the database in a directory, with the keyspaces
//!   `offline`, `accounts` and `rooms`, and starts the storage thread that owns it (plus a
//!   1–2 thread pool for Argon2id). It returns a [`StoreHandle`] (`Clone + Send + Sync`).
//! - Every [`StoreHandle`] method only queues a request and returns. Its completion callback
//!   runs later, **always on the storage thread** (never on the caller's thread, never on a
//!   hashing thread), exactly once — unless the method returns `Err(StoreError::Closed)`,
//!   in which case the callback is dropped without being called. So a callback may push into
//!   an SPSC ring whose producer is the storage thread.
//! - Group commit: the storage thread takes every queued request (up to
//!   [`StoreOptions::max_round`]), applies their writes as few fjall write batches as
//!   read-your-writes allows (a request that reads first commits what is pending, without
//!   fsync), persists once — `fdatasync` in [`Durability::Sync`] — and only then runs the
//!   round's completions, in the order the requests were handled. A callback therefore
//!   never sees a write that is not yet as durable as the mode promises.
//!   [`StoreHandle::stats`] counts rounds and fsyncs.
//! - Handled in the order they came, except appends to offline queues: those wait behind
//!   requests that concern none of their users (`worker::lanes`), at most a slice of them
//!   a round. A user's own requests never pass its appends.
//! - A completion callback must be quick: it holds up every other completion of the round.
//!   [`StoreOptions::round_hook`] runs once after each round's completions (ring doorbells
//!   there, once, instead of in every callback).
//!
//! # Layout
//! See [`codec`] for keys and record encodings. Offline seqs start at 1 and increase per user
//! for the life of the process; after a restart they continue after the highest stored seq
//! (a queue emptied before the restart starts again at 1).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

pub mod codec;
pub mod contacts;
mod direct;
pub mod disk;
mod hash;
mod histlog;
pub mod history;
mod worker;
pub use worker::answer_cost;

#[cfg(test)]
mod deletion_tests;
#[cfg(test)]
mod tests;

pub use codec::{glob_match, RoomRecord, StoredMsg, MAX_NAME_BYTES, MAX_PASSWORD_BYTES};
pub use history::{
    ConvSummary, HistChunk, HistMsg, HistPage, HistQuery, HistoryOptions, LOOKUP_CHUNKS_DEFAULT,
};

/// Logs a failed store request that nothing waits on (`what` failed), unless it failed
/// for the store being full (expected, and said by the shard's `store_disk_full`) or for
/// the user's account being deleted (its own live sessions' "seen" marks meanwhile).
pub(crate) fn warn_unless_full<T>(r: &Result<T, StoreError>, what: &str) {
    match r {
        Ok(_) | Err(StoreError::DiskFull | StoreError::Deleting) => {}
        Err(e) => tracing::warn!(error = %e, "{what} failed"),
    }
}

/// Why a store request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The user, account or room does not exist.
    #[error("not found")]
    NotFound,
    /// The name (or join code) is already taken.
    #[error("already exists")]
    Conflict,
    /// The request itself is invalid (bad name, bad pattern, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The user's offline queue is at the limit given to [`StoreHandle::append_capped`].
    #[error("offline queue full")]
    Full,
    /// Disk, engine or hashing failure, or a corrupt record read from disk.
    #[error("storage error: {0}")]
    Io(String),
    /// The store is shut down (or its storage thread is gone).
    #[error("store closed")]
    Closed,
    /// The store's disk is under its floor (`store::disk`): nothing new is written.
    #[error("the store's disk is full")]
    DiskFull,
    /// The name's account is being deleted (its data is removed a slice at a time): no
    /// new account is made under it until that is done (`Worker::delete_account`).
    #[error("the name is being deleted, try again shortly")]
    Deleting,
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        match e {
            // (At open: fjall's lock file is held.)
            fjall::Error::Locked => StoreError::Io(
                "the data directory is in use by another process (another router?)".into(),
            ),
            e => StoreError::Io(e.to_string()),
        }
    }
}

/// Result of a store request.
pub type StoreResult<T> = Result<T, StoreError>;

/// A completion callback, run on the storage thread.
pub type Callback<T> = Box<dyn FnOnce(StoreResult<T>) + Send + 'static>;

/// How durable a write is when its completion runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written to the journal and handed to the OS (survives a router crash, not a power
    /// loss or kernel crash); no fsync.
    #[default]
    Memory,
    /// Every round of writes is persisted with `fdatasync` before its completions run
    /// (group commit: one fsync per round, however many requests it holds).
    Sync,
}

/// Runs after every round's completions, on the storage thread.
pub type RoundHook = Arc<dyn Fn() + Send + Sync + 'static>;

/// Tuning for [`Store::open_with`].
#[derive(Clone)]
pub struct StoreOptions {
    /// Use the smallest legal Argon2id parameters (for tests): ≈0.1 ms instead of ≈35 ms a
    /// hash. Default `false` (Argon2id, m = 19 MiB, t = 2, p = 1). Existing hashes keep
    /// verifying either way (the PHC string carries its parameters).
    pub argon2_cheap: bool,
    /// Hashing threads; 0 = automatic (1 on machines with fewer than 4 cores, else 2).
    pub hash_threads: usize,
    /// Most requests handled in one round before it is committed (a bound on latency
    /// under a flood). Default 65 536.
    pub max_round: usize,
    /// Called once after each round's completions, on the storage thread.
    pub round_hook: Option<RoundHook>,
    /// Passwordless users (open/jwt auth) not seen for this long, with nothing queued and
    /// no rooms, are deleted by a sweep of the storage thread. `None`: never.
    pub forget_idle_after: Option<std::time::Duration>,
    /// Conversation history retention (default: off).
    pub history: HistoryOptions,
    /// How long the storage thread waits unwoken by history appends that come closer
    /// together than this (default 1 ms; see `worker::NAP`).
    pub nap: std::time::Duration,
    /// Free bytes the data directory's filesystem must keep (default 0: none; see
    /// `store::disk`).
    pub min_free_disk: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            argon2_cheap: false,
            hash_threads: 0,
            max_round: 65_536,
            round_hook: None,
            forget_idle_after: None,
            history: HistoryOptions::default(),
            nap: worker::NAP,
            min_free_disk: 0,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("argon2_cheap", &self.argon2_cheap)
            .field("hash_threads", &self.hash_threads)
            .field("max_round", &self.max_round)
            .field("round_hook", &self.round_hook.is_some())
            .field("forget_idle_after", &self.forget_idle_after)
            .field("min_free_disk", &self.min_free_disk)
            .finish()
    }
}

/// How often a passwordless user's `seen` mark is refreshed (by its logins, and by the
/// shards for users who stay logged in), given `forget_idle_after`: a quarter of it, from
/// 50 ms (tests) to an hour. The idle sweep runs at the same pace (at most every minute).
pub fn seen_refresh(forget_idle_after: std::time::Duration) -> std::time::Duration {
    (forget_idle_after / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(3600),
    )
}

/// What [`StoreHandle::enqueue`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Seq of the first stored message (the stored ones have consecutive seqs).
    pub first_seq: u64,
    /// How many of the given messages were stored: all of them, or with
    /// [`Overflow::DropOldest`] and more messages than the cap, the last `stored`; with
    /// [`Overflow::DropNewest`] past the cap, the first `stored`.
    pub stored: u64,
    /// Queue length after the append.
    pub queued: u64,
}

/// The bound of one offline queue: most messages and most bytes (encoded records, as
/// stored), and what an append past either does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCap {
    /// Most messages.
    pub max_msgs: u64,
    /// Most bytes (the stored records' encoded size).
    pub max_bytes: u64,
    /// What an append past the cap does.
    pub overflow: Overflow,
}

impl QueueCap {
    /// A cap on the message count only.
    pub fn msgs(max_msgs: u64, overflow: Overflow) -> Self {
        QueueCap {
            max_msgs,
            max_bytes: u64::MAX,
            overflow,
        }
    }
}

/// What to do when [`StoreHandle::append_capped`] would pass the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Store nothing; the callback gets [`StoreError::Full`].
    Reject,
    /// Drop the oldest queued messages to make room.
    DropOldest,
    /// Store the oldest of the given messages that fit and drop the rest of them: never
    /// removes anything queued (a requeue: what a queue holds may never have been
    /// delivered, and pushing it out lost it). [`Appended::stored`] tells how many went.
    DropNewest,
}

/// Why a user cannot become a member of a new room ([`StoreHandle::check_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberProblem {
    /// No account by that name.
    NoAccount(String),
    /// In this many rooms already (the limit).
    Full(String, usize),
}

/// Counters published by the storage thread (monotonic unless noted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Rounds (drain → commit → persist → completions).
    pub rounds: u64,
    /// Requests handled (password-hash answers included).
    pub requests: u64,
    /// Messages appended to offline queues.
    pub appended: u64,
    /// fjall write batches committed.
    pub commits: u64,
    /// fsyncs (one per round with writes, in `Sync` mode).
    pub fsyncs: u64,
    /// Largest number of requests in one round.
    pub max_round: u64,
    /// Most memtable bytes not flushed (active and sealed) after a commit (each
    /// keyspace's is sealed at half its size, see `Dbs::seal_memtables`).
    pub max_unflushed: u64,
    /// Time spent committing batches, µs.
    pub commit_us: u64,
    /// Time spent in fsync, µs.
    pub fsync_us: u64,
    /// Password hashing jobs queued or running (a gauge).
    pub hash_jobs: u64,
    /// Idle passwordless users forgotten (see [`StoreOptions::forget_idle_after`]).
    pub forgotten: u64,
    /// Times the history held in memory was written (see [`HistoryOptions::memory_bytes`]).
    pub history_writes: u64,
    /// History log files compacted (see `store::histlog`).
    pub history_compactions: u64,
    /// Stored history chunks read for queries (History, MarkRead, ListConversations).
    pub history_chunk_reads: u64,
    /// Chunk pointers (and segments in memory) looked at by lookups of a msg_id (a
    /// History `before` no recent page ended at, a MarkRead).
    pub history_lookup_pointers: u64,
    /// Lookups of a msg_id stopped by their bound (`HistoryOptions::lookup_chunks`): a
    /// History answered NOT_FOUND, a MarkRead that marks nothing.
    pub history_lookups_cut: u64,
    /// Bytes in the history log's files, and the live ones among them (gauges, as of
    /// the last history write).
    pub history_log_bytes: u64,
    /// See `history_log_bytes`.
    pub history_log_live_bytes: u64,
    /// History messages not written because the store was full (`store::disk`).
    pub history_dropped: u64,
    /// Whether the store is full (a gauge: 0 or 1; `store::disk`).
    pub disk_full: u64,
    /// Free bytes of the data directory's filesystem, and the store's own files' bytes
    /// (gauges, as of the last look).
    pub disk_free_bytes: u64,
    /// See `disk_free_bytes`.
    pub disk_used_bytes: u64,
    /// Whether the last commit failed (a gauge: 0 or 1).
    pub failed: u64,
    /// Slices of account deletions run (see [`StoreHandle::delete_account`]).
    pub deletion_slices: u64,
    /// Steps that wrote conversation entries and read marks after a history flush, a
    /// bounded slice at a time (`worker::history`).
    pub history_entry_slices: u64,
    /// Account deletions under way (a gauge).
    pub deletions_pending: u64,
    /// Appends to offline queues waiting behind other requests (a gauge, as of the
    /// last round; `worker::lanes`).
    pub bulk_waiting: u64,
}

#[derive(Default)]
pub(crate) struct StatCells {
    rounds: AtomicU64,
    requests: AtomicU64,
    appended: AtomicU64,
    commits: AtomicU64,
    fsyncs: AtomicU64,
    max_round: AtomicU64,
    pub(crate) max_unflushed: AtomicU64,
    commit_us: AtomicU64,
    fsync_us: AtomicU64,
    forgotten: AtomicU64,
    history_writes: AtomicU64,
    history_compactions: AtomicU64,
    history_chunk_reads: AtomicU64,
    history_lookup_pointers: AtomicU64,
    history_lookups_cut: AtomicU64,
    history_log_bytes: AtomicU64,
    history_log_live_bytes: AtomicU64,
    pub(crate) history_dropped: AtomicU64,
    pub(crate) disk_full: AtomicU64,
    pub(crate) disk_free_bytes: AtomicU64,
    pub(crate) disk_used_bytes: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) deletion_slices: AtomicU64,
    pub(crate) history_entry_slices: AtomicU64,
    pub(crate) deletions_pending: AtomicU64,
    pub(crate) bulk_waiting: AtomicU64,
}

thread_local! {
    /// Set while a request that could not be queued is dropped on its caller's thread:
    /// its callback must then be dropped without being called.
    static DISARMED: Cell<bool> = const { Cell::new(false) };
}

/// A callback that answers [`StoreError::Closed`] if it is dropped unanswered (a request
/// left in the queue at shutdown, a storage-thread panic), so no request is ever lost
/// silently.
pub(crate) struct Cb<T: 'static>(Option<Callback<T>>);

impl<T: 'static> Cb<T> {
    fn new(f: impl FnOnce(StoreResult<T>) + Send + 'static) -> Self {
        Cb(Some(Box::new(f)))
    }

    /// Runs the callback with `r`; a panicking callback is logged, not propagated.
    pub(crate) fn call(mut self, r: StoreResult<T>) {
        if let Some(f) = self.0.take() {
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(r)));
            if res.is_err() {
                tracing::error!("a store completion callback panicked");
            }
        }
    }
}

impl<T: 'static> Drop for Cb<T> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            if !DISARMED.with(Cell::get) {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    f(Err(StoreError::Closed))
                }));
            }
        }
    }
}

/// Drops `v` without calling any callback inside it.
fn drop_disarmed<V>(v: V) {
    DISARMED.with(|d| d.set(true));
    drop(v);
    DISARMED.with(|d| d.set(false));
}

/// A request to the storage thread.
pub(crate) enum Msg {
    Append {
        user: String,
        msgs: Vec<StoredMsg>,
        cap: Option<QueueCap>,
        cb: Cb<u64>,
    },
    Enqueue {
        user: String,
        msgs: Vec<StoredMsg>,
        cap: Option<QueueCap>,
        require_account: bool,
        cb: Cb<Appended>,
    },
    EnqueueEach {
        items: Vec<(String, StoredMsg)>,
        cap: Option<QueueCap>,
        cb: Cb<()>,
    },
    EnsureUser {
        user: String,
        cb: Cb<bool>,
    },
    Load {
        user: String,
        from_seq: u64,
        limit: usize,
        max_bytes: usize,
        cb: Cb<Vec<(u64, StoredMsg)>>,
    },
    RemoveUpTo {
        user: String,
        seq: u64,
        cb: Cb<u64>,
    },
    Count {
        user: String,
        cb: Cb<u64>,
    },
    Clear {
        user: String,
        cb: Cb<u64>,
    },
    Register {
        user: String,
        password: String,
        cb: Cb<()>,
    },
    Verify {
        user: String,
        password: String,
        cb: Cb<bool>,
    },
    UserExists {
        user: String,
        cb: Cb<bool>,
    },
    DeleteAccount {
        user: String,
        cb: Cb<()>,
    },
    ListUsers {
        pattern: String,
        limit: usize,
        cb: Cb<Vec<String>>,
    },
    HashPassword {
        password: String,
        cb: Cb<String>,
    },
    CheckPassword {
        password: String,
        phc: String,
        cb: Cb<bool>,
    },
    CreateRoom {
        record: RoomRecord,
        cb: Cb<()>,
    },
    GetRoom {
        key: String,
        cb: Cb<Option<RoomRecord>>,
    },
    PutRoom {
        record: RoomRecord,
        cb: Cb<()>,
    },
    DeleteRoom {
        name: String,
        cb: Cb<()>,
    },
    RoomByCode {
        code: String,
        cb: Cb<Option<String>>,
    },
    AddMember {
        room: String,
        user: String,
        by: String,
        cb: Cb<()>,
    },
    RemoveMember {
        room: String,
        user: String,
        cb: Cb<()>,
    },
    GetContacts {
        user: String,
        max_blockers: usize,
        cb: Cb<contacts::ContactRecord>,
    },
    BlockersAmong {
        user: String,
        peers: Vec<String>,
        cb: Cb<Vec<bool>>,
    },
    BlockersAfter {
        user: String,
        after: String,
        limit: usize,
        cb: Cb<Vec<String>>,
    },
    SaveContacts {
        user: String,
        save: contacts::ContactSave,
        cb: Cb<()>,
    },
    NoteBlocker {
        user: String,
        blocker: String,
        on: bool,
        cb: Cb<()>,
    },
    RoomsOf {
        user: String,
        /// The account is being deleted (see [`StoreHandle::rooms_of_leaving`]).
        leaving: bool,
        cb: Cb<Vec<String>>,
    },
    OwnRooms {
        user: String,
        room: String,
        cb: Cb<Option<usize>>,
    },
    CheckMembers {
        users: Vec<String>,
        max_rooms: usize,
        cb: Cb<Option<MemberProblem>>,
    },
    HistoryAppend {
        chunks: Vec<HistChunk>,
        cb: Cb<()>,
    },
    HistoryQuery {
        query: HistQuery,
        cb: Cb<HistPage>,
    },
    HistoryMark {
        user: String,
        peer: Option<String>,
        room: Option<String>,
        msg_id: u64,
        cb: Cb<()>,
    },
    Conversations {
        user: String,
        limit: usize,
        before_ts_us: u64,
        max_bytes: usize,
        cb: Cb<Vec<ConvSummary>>,
    },
    Flush {
        cb: Cb<()>,
    },
    /// An answer from the hashing pool.
    Hashed {
        id: u64,
        result: StoreResult<hash::HashOutcome>,
    },
    Shutdown,
}

/// Opens stores.
#[derive(Debug)]
pub struct Store;

impl Store {
    /// Opens (creates) the database in `dir` with default [`StoreOptions`] and starts its
    /// storage thread.
    pub fn open(dir: &Path, durability: Durability) -> StoreResult<StoreHandle> {
        Store::open_with(dir, durability, StoreOptions::default())
    }

    /// Opens (creates) the database in `dir` and starts its storage thread and hashing pool.
    /// Fails with [`StoreError::Io`] if the directory cannot be created, is locked by
    /// another process, or holds an unreadable database.
    pub fn open_with(
        dir: &Path,
        durability: Durability,
        options: StoreOptions,
    ) -> StoreResult<StoreHandle> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let dbs = worker::Dbs::open(dir, options.history.log_file_bytes)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let nap = NapEnd::default();
        let stats = Arc::new(StatCells::default());
        let hash_queued = Arc::new(AtomicUsize::new(0));
        let threads = match options.hash_threads {
            0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if cores >= 4 {
                    2
                } else {
                    1
                }
            }
            n => n,
        };
        let pool = hash::HashPool::start(
            threads,
            options.argon2_cheap,
            tx.clone(),
            nap.clone(),
            Arc::clone(&hash_queued),
        )
        .map_err(|e| StoreError::Io(format!("cannot start hashing threads: {e}")))?;
        let disk = disk::DiskWatch::new(dir, options.min_free_disk);
        let mut w = worker::Worker::new(
            dbs,
            durability,
            disk,
            options,
            pool,
            Arc::clone(&stats),
            Arc::clone(&nap.napping),
        );
        // First: the names of deletions a restart cut short are refused from now on
        // (the moves below write contact lists).
        w.resume_deletions()?;
        w.move_inline_lists()?;
        if let Err(e) = w.hist_sweep_deleted_rooms() {
            // Tried again at the next open; a room made with such a name still starts
            // empty (`create_room` removes what its conversation holds).
            tracing::warn!(error = %e, "cleaning the history of deleted rooms failed");
        }
        let thread = std::thread::Builder::new()
            .name("rr-store".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Io(format!("cannot start the storage thread: {e}")))?;
        let thread_id = thread.thread().id();
        let _ = nap.thread.set(thread.thread().clone());
        Ok(StoreHandle {
            inner: Arc::new(Inner {
                tx,
                nap,
                closed: AtomicBool::new(false),
                thread: Mutex::new(Some(thread)),
                thread_id,
                stats,
                hash_queued,
                dir: dir.to_path_buf(),
                durability,
            }),
        })
    }
}

/// Ends the storage thread's nap (`worker::NAP`): what a request other than a history
/// append does once it is queued, and the hashing threads once their answer is.
#[derive(Clone, Default)]
pub(crate) struct NapEnd {
    napping: Arc<AtomicBool>,
    /// Set once the thread is started (nothing is queued for it before).
    thread: Arc<std::sync::OnceLock<std::thread::Thread>>,
}

impl NapEnd {
    pub(crate) fn end(&self) {
        // (Pairs with the nap's fence: either this sees `napping` and unparks, or the
        // thread sees the message queued before.)
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.napping.load(Ordering::Relaxed) && self.napping.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

struct Inner {
    tx: Sender<Msg>,
    /// The storage thread naps (see `worker::NAP`): requests other than history appends
    /// end the nap.
    nap: NapEnd,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<StoreResult<()>>>>,
    thread_id: ThreadId,
    stats: Arc<StatCells>,
    hash_queued: Arc<AtomicUsize>,
    dir: PathBuf,
    durability: Durability,
}

impl Inner {
    fn shutdown(&self) -> StoreResult<()> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Shutdown);
            self.nap.end();
        }
        if std::thread::current().id() == self.thread_id {
            // Called from a completion callback: the thread exits after this round.
            return Ok(());
        }
        let handle = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match handle {
            Some(h) => match h.join() {
                Ok(r) => r,
                Err(_) => Err(StoreError::Io("the storage thread panicked".into())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("store shutdown: {e}");
        }
    }
}

/// The way to the storage thread: cheap to clone, usable from any thread.
///
/// Every request method returns at once. `Ok(())` means the request was queued and its
/// callback will run exactly once, on the storage thread. `Err(StoreError::Closed)` means
/// the store is shut down; the callback is then dropped without being called. Names are
/// checked on the storage thread (the callback gets [`StoreError::Invalid`]).
///
/// When the last handle is dropped the store shuts down as [`StoreHandle::shutdown`] does.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.durability)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl StoreHandle {
    fn send(&self, msg: Msg) -> StoreResult<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            drop_disarmed(msg);
            return Err(StoreError::Closed);
        }
        // History appends do not end the storage thread's nap (`worker::NAP`).
        let quiet = matches!(msg, Msg::HistoryAppend { .. });
        self.inner.tx.send(msg).map_err(|mpsc::SendError(msg)| {
            drop_disarmed(msg);
            StoreError::Closed
        })?;
        if !quiet {
            self.inner.nap.end();
        }
        Ok(())
    }

    /// The directory the store was opened in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The durability mode the store was opened with.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Whether [`StoreHandle::shutdown`] has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Whether the store is full (`store::disk`): new offline messages are refused.
    pub fn disk_full(&self) -> bool {
        self.inner.stats.disk_full.load(Ordering::Relaxed) != 0
    }

    /// Whether the store's last commit failed (a poisoned engine: a full disk).
    pub fn failed(&self) -> bool {
        self.inner.stats.failed.load(Ordering::Relaxed) != 0
    }

    /// A snapshot of the storage thread's counters.
    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            rounds: l(&s.rounds),
            requests: l(&s.requests),
            appended: l(&s.appended),
            commits: l(&s.commits),
            fsyncs: l(&s.fsyncs),
            max_round: l(&s.max_round),
            max_unflushed: l(&s.max_unflushed),
            commit_us: l(&s.commit_us),
            fsync_us: l(&s.fsync_us),
            forgotten: l(&s.forgotten),
            history_writes: l(&s.history_writes),
            history_compactions: l(&s.history_compactions),
            history_chunk_reads: l(&s.history_chunk_reads),
            history_lookup_pointers: l(&s.history_lookup_pointers),
            history_lookups_cut: l(&s.history_lookups_cut),
            history_log_bytes: l(&s.history_log_bytes),
            history_log_live_bytes: l(&s.history_log_live_bytes),
            history_dropped: l(&s.history_dropped),
            disk_full: l(&s.disk_full),
            disk_free_bytes: l(&s.disk_free_bytes),
            disk_used_bytes: l(&s.disk_used_bytes),
            failed: l(&s.failed),
            deletion_slices: l(&s.deletion_slices),
            history_entry_slices: l(&s.history_entry_slices),
            deletions_pending: l(&s.deletions_pending),
            bulk_waiting: l(&s.bulk_waiting),
            hash_jobs: self.inner.hash_queued.load(Ordering::Relaxed) as u64,
        }
    }

    // ----- offline queues -----

    /// Appends `msgs` to `user`'s offline queue, assigning each the next per-user seq.
    /// Answers the queue length after the append.
    pub fn append(
        &self,
        user: &str,
        msgs: Vec<StoredMsg>,
        cb: impl FnOnce(StoreResult<u64>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Append {
            user: user.to_owned(),
            msgs,
            cap: None,
            cb: Cb::new(cb),
        })
    }

    /// Like [`StoreHandle::append`], but keeps the queue at most `max` long: past it,
    /// either nothing is stored and the callback gets [`StoreError::Full`]
    /// ([`Overflow::Reject`]), or the oldest messages are removed ([`Overflow::DropOldest`];
    /// if `msgs` alone is longer than `max`, only its last `max` are kept), or only the
    /// first of `msgs` that fit are stored ([`Overflow::DropNewest`]).
    pub fn append_capped(
        &self,
        user: &str,
        msgs: Vec<StoredMsg>,
        max: u64,
        overflow: Overflow,
        cb: impl FnOnce(StoreResult<u64>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Append {
            user: user.to_owned(),
            msgs,
            cap: Some(QueueCap::msgs(max, overflow)),
            cb: Cb::new(cb),
        })
    }

    /// Appends `msgs` to `user`'s queue like [`StoreHandle::append_capped`] (no cap when
    /// `cap` is `None`) and answers the seqs they got. With `require_account`, a user
    /// without an account record gets [`StoreError::NotFound`] and nothing is stored.
    pub fn enqueue(
        &self,
        user: &str,
        msgs: Vec<StoredMsg>,
        cap: Option<QueueCap>,
        require_account: bool,
        cb: impl FnOnce(StoreResult<Appended>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Enqueue {
            user: user.to_owned(),
            msgs,
            cap,
            require_account,
            cb: Cb::new(cb),
        })
    }

    /// Appends each message to its user's queue (`cap` applies to each queue), in one
    /// request: a user without an account or with a full queue gets nothing, and the
    /// others still get theirs (room events for the offline members of a room).
    pub fn enqueue_each(
        &self,
        items: Vec<(String, StoredMsg)>,
        cap: Option<QueueCap>,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::EnqueueEach {
            items,
            cap,
            cb: Cb::new(cb),
        })
    }

    /// Records that `user` exists (an account without a password, for `open` and `jwt`
    /// auth, where a user exists from their first login). Answers whether it was created;
    /// an existing account is left as it is.
    pub fn ensure_user(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<bool>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::EnsureUser {
            user: user.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// The first `limit` messages of `user`'s queue, in order, with their seqs.
    pub fn load(
        &self,
        user: &str,
        limit: usize,
        cb: impl FnOnce(StoreResult<Vec<(u64, StoredMsg)>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.load_from(user, 0, limit, cb)
    }

    /// Up to `limit` messages of `user`'s queue with seq ≥ `from_seq`, in order (paging
    /// through a long queue before the earlier pages are removed).
    pub fn load_from(
        &self,
        user: &str,
        from_seq: u64,
        limit: usize,
        cb: impl FnOnce(StoreResult<Vec<(u64, StoredMsg)>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.load_page(user, from_seq, limit, usize::MAX, cb)
    }

    /// Like [`StoreHandle::load_from`], but the page also stops once its payloads reach
    /// `max_bytes` (it holds at least one message when the queue has one).
    pub fn load_page(
        &self,
        user: &str,
        from_seq: u64,
        limit: usize,
        max_bytes: usize,
        cb: impl FnOnce(StoreResult<Vec<(u64, StoredMsg)>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Load {
            user: user.to_owned(),
            from_seq,
            limit,
            max_bytes,
            cb: Cb::new(cb),
        })
    }

    /// Removes every message of `user`'s queue with seq ≤ `seq` (acked). Answers the queue
    /// length after the removal.
    pub fn remove_up_to(
        &self,
        user: &str,
        seq: u64,
        cb: impl FnOnce(StoreResult<u64>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::RemoveUpTo {
            user: user.to_owned(),
            seq,
            cb: Cb::new(cb),
        })
    }

    /// The length of `user`'s queue (0 for an unknown user).
    pub fn count(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<u64>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Count {
            user: user.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Empties `user`'s queue. Answers how many messages were removed.
    pub fn clear(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<u64>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Clear {
            user: user.to_owned(),
            cb: Cb::new(cb),
        })
    }

    // ----- accounts -----

    /// Creates an account: the password is hashed with Argon2id on the hashing pool and its
    /// PHC string stored. [`StoreError::Conflict`] if the user exists (or is being
    /// registered right now), [`StoreError::Invalid`] for a bad name or an over-long password.
    pub fn register(
        &self,
        user: &str,
        password: &str,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Register {
            user: user.to_owned(),
            password: password.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Checks `password` against `user`'s account (on the hashing pool): `Ok(true)` if it
    /// matches, `Ok(false)` if not, [`StoreError::NotFound`] if there is no such account.
    pub fn verify(
        &self,
        user: &str,
        password: &str,
        cb: impl FnOnce(StoreResult<bool>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Verify {
            user: user.to_owned(),
            password: password.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Whether `user` has an account.
    pub fn user_exists(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<bool>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::UserExists {
            user: user.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Removes `user`'s account, offline queue, direct conversations, history entries and
    /// read marks, and contact list (room memberships are the caller's, through
    /// [`StoreHandle::remove_member`] and [`StoreHandle::delete_room`]), and answers once
    /// all of it is gone. [`StoreError::NotFound`] if there was neither an account nor a
    /// queued message; an error if its first batch (the account record, the mark) was not
    /// written, in which case nothing was deleted. A later slice that fails is tried
    /// again until it is done (answered then, or [`StoreError::Closed`] if the store
    /// closes first: the next open finishes it).
    ///
    /// The account record (what makes the name exist) goes in the first batch; the rest
    /// goes a bounded slice at a time, the storage thread handling the requests queued
    /// meanwhile between slices (a user with 100 000 queued messages or 50 000 direct
    /// conversations no longer holds it for the whole deletion). Until the deletion is
    /// done, nothing new is written under the name: a Register (or a first login under
    /// open or jwt auth) gets [`StoreError::Deleting`], appends to its queue
    /// [`StoreError::NotFound`], and history and contact writes under it are dropped. A
    /// deletion a restart cut short is finished after the store opens again.
    pub fn delete_account(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::DeleteAccount {
            user: user.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Account names matching the glob `pattern` (`*` any run, `?` one character), in byte
    /// order, at most `limit` of them. The literal part before the first wildcard is a
    /// prefix scan, so `al*` reads only names starting with `al`. At most
    /// `max(64 × limit, 65 536)` names are examined per request, so a pattern that matches
    /// little answers a partial page instead of holding the storage thread.
    pub fn list_users(
        &self,
        pattern: &str,
        limit: usize,
        cb: impl FnOnce(StoreResult<Vec<String>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::ListUsers {
            pattern: pattern.to_owned(),
            limit,
            cb: Cb::new(cb),
        })
    }

    /// Hashes `password` on the hashing pool (for room passwords): answers a PHC string.
    pub fn hash_password(
        &self,
        password: &str,
        cb: impl FnOnce(StoreResult<String>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::HashPassword {
            password: password.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Checks `password` against a PHC string on the hashing pool (for room passwords).
    pub fn check_password(
        &self,
        password: &str,
        phc: &str,
        cb: impl FnOnce(StoreResult<bool>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::CheckPassword {
            password: password.to_owned(),
            phc: phc.to_owned(),
            cb: Cb::new(cb),
        })
    }

    // ----- rooms -----

    /// Creates a room. [`StoreError::Conflict`] if the name or the join code is taken.
    pub fn create_room(
        &self,
        record: RoomRecord,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::CreateRoom {
            record,
            cb: Cb::new(cb),
        })
    }

    /// Finds a room by name, or else by join code.
    pub fn get_room(
        &self,
        name_or_code: &str,
        cb: impl FnOnce(StoreResult<Option<RoomRecord>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::GetRoom {
            key: name_or_code.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Replaces an existing room's record (members, owner, password, join code).
    /// [`StoreError::NotFound`] if there is no room of that name, [`StoreError::Conflict`]
    /// if a new join code belongs to another room.
    pub fn put_room(
        &self,
        record: RoomRecord,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::PutRoom {
            record,
            cb: Cb::new(cb),
        })
    }

    /// The name of the room whose join code is `code` (one index read: the room's member
    /// list is not loaded for a join by code).
    pub fn room_by_code(
        &self,
        code: &str,
        cb: impl FnOnce(StoreResult<Option<String>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::RoomByCode {
            code: code.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Makes `user` a member of `room`, added by `by` (`user` itself for a join: the
    /// room then counts in its own quota, see [`StoreHandle::own_rooms`]; otherwise in
    /// [`StoreHandle::check_members`]'s). One key written, whatever the room's size; a
    /// member already is one. [`StoreError::NotFound`] if there is no room of that name.
    pub fn add_member(
        &self,
        room: &str,
        user: &str,
        by: &str,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::AddMember {
            room: room.to_owned(),
            user: user.to_owned(),
            by: by.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Takes `user` out of `room`'s members (the owner still owns it). Not a member: no
    /// change. [`StoreError::NotFound`] if there is no room of that name.
    pub fn remove_member(
        &self,
        room: &str,
        user: &str,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::RemoveMember {
            room: room.to_owned(),
            user: user.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// `user`'s contact list (an empty record, version 0, if it has none), with at
    /// most `max_blockers` of the users that block it, the first by name (more stored:
    /// [`ContactRecord::blockers_unloaded`](contacts::ContactRecord::blockers_unloaded)).
    pub fn get_contacts(
        &self,
        user: &str,
        max_blockers: usize,
        cb: impl FnOnce(StoreResult<contacts::ContactRecord>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::GetContacts {
            user: user.to_owned(),
            max_blockers,
            cb: Cb::new(cb),
        })
    }

    /// For each of `peers`, whether it blocks `user` (one read a peer): for a list whose
    /// blockers are not all loaded.
    pub fn blockers_among(
        &self,
        user: &str,
        peers: Vec<String>,
        cb: impl FnOnce(StoreResult<Vec<bool>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::BlockersAmong {
            user: user.to_owned(),
            peers,
            cb: Cb::new(cb),
        })
    }

    /// The users that block `user`, by name, after `after` (`""`: from the first), at
    /// most `limit`: a page at a time, for a deletion that must tell them all.
    pub fn blockers_after(
        &self,
        user: &str,
        after: &str,
        limit: usize,
        cb: impl FnOnce(StoreResult<Vec<String>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::BlockersAfter {
            user: user.to_owned(),
            after: after.to_owned(),
            limit,
            cb: Cb::new(cb),
        })
    }

    /// Replaces `user`'s contact list (every entry written).
    pub fn put_contacts(
        &self,
        user: &str,
        record: contacts::ContactRecord,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.save_contacts(user, contacts::ContactSave::whole(&record), cb)
    }

    /// Writes a change of `user`'s contact list: its fields, and only the entries the
    /// change names (each entry is a key of its own). Only the user's home shard writes
    /// it, from its cache, so a write never races another for the same user.
    pub fn save_contacts(
        &self,
        user: &str,
        save: contacts::ContactSave,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::SaveContacts {
            user: user.to_owned(),
            save,
            cb: Cb::new(cb),
        })
    }

    /// Notes (`on`) or drops that `blocker` blocks `user`, one key, without reading or
    /// writing the rest of `user`'s list: for a list that is not loaded, so that a block
    /// costs the same however many others block the user.
    pub fn note_blocker(
        &self,
        user: &str,
        blocker: &str,
        on: bool,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::NoteBlocker {
            user: user.to_owned(),
            blocker: blocker.to_owned(),
            on,
            cb: Cb::new(cb),
        })
    }

    /// Deletes a room and its join code. [`StoreError::NotFound`] if there is none.
    pub fn delete_room(
        &self,
        name: &str,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::DeleteRoom {
            name: name.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// The first of `users` (in order) that cannot be added to a room by someone else: no
    /// account, or already added by others to `max_rooms` rooms (its own, created or
    /// joined, do not count: [`StoreHandle::own_rooms`]; each user's are counted up to
    /// `max_rooms`, not listed). `None`: all of them can.
    pub fn check_members(
        &self,
        users: Vec<String>,
        max_rooms: usize,
        cb: impl FnOnce(StoreResult<Option<MemberProblem>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::CheckMembers {
            users,
            max_rooms,
            cb: Cb::new(cb),
        })
    }

    /// How many rooms `user` created or joined itself (rooms others added it to not
    /// counted: a stranger cannot use up its quota), or `None` if it is in `room`
    /// already (either way). A full scan of its membership index.
    pub fn own_rooms(
        &self,
        user: &str,
        room: &str,
        cb: impl FnOnce(StoreResult<Option<usize>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::OwnRooms {
            user: user.to_owned(),
            room: room.to_owned(),
            cb: Cb::new(cb),
        })
    }

    /// Names of the rooms `user` owns or is a member of, in name order (a full scan).
    pub fn rooms_of(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<Vec<String>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.rooms_of_msg(user, false, cb)
    }

    /// [`StoreHandle::rooms_of`] for a DeleteAccount of `user`: from this read until its
    /// [`StoreHandle::delete_account`], no new membership of `user` is written (an
    /// AddMember, or a CreateRoom or PutRoom that names it, is NOT_FOUND), so none can
    /// be left, unpurged, to whoever registers the name next (another user's AddMember
    /// checked before the deletion and written after this read would be).
    pub fn rooms_of_leaving(
        &self,
        user: &str,
        cb: impl FnOnce(StoreResult<Vec<String>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.rooms_of_msg(user, true, cb)
    }

    fn rooms_of_msg(
        &self,
        user: &str,
        leaving: bool,
        cb: impl FnOnce(StoreResult<Vec<String>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::RoomsOf {
            user: user.to_owned(),
            leaving,
            cb: Cb::new(cb),
        })
    }

    // ----- history (see [`history`]) -----

    /// Appends chunks of messages to their conversations (nothing when history is off).
    pub fn history_append(
        &self,
        chunks: Vec<HistChunk>,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::HistoryAppend {
            chunks,
            cb: Cb::new(cb),
        })
    }

    /// A page of a conversation's history, oldest first (see [`HistQuery`]).
    pub fn history_query(
        &self,
        query: HistQuery,
        cb: impl FnOnce(StoreResult<HistPage>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::HistoryQuery {
            query,
            cb: Cb::new(cb),
        })
    }

    /// Records that `user` read the direct conversation with `peer` (or `room`, of which
    /// it must be a member) up to `msg_id` (MarkRead): the unread counts of
    /// [`Self::conversations`] start after it. Nothing if the message is not in the
    /// history kept.
    pub fn history_mark(
        &self,
        user: &str,
        peer: Option<String>,
        room: Option<String>,
        msg_id: u64,
        cb: impl FnOnce(StoreResult<()>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::HistoryMark {
            user: user.to_owned(),
            peer,
            room,
            msg_id,
            cb: Cb::new(cb),
        })
    }

    /// `user`'s conversations (direct ones, and the rooms it is a member of) with a
    /// message kept, newest last message first, at most `limit`, only those whose last
    /// message is older than `before_ts_us` (0: all).
    /// `user`'s conversations, newest first: at most `limit`, and their last messages
    /// within `max_bytes` (as [`HistQuery::max_bytes`]; at least one conversation).
    pub fn conversations(
        &self,
        user: &str,
        limit: usize,
        before_ts_us: u64,
        max_bytes: usize,
        cb: impl FnOnce(StoreResult<Vec<ConvSummary>>) + Send + 'static,
    ) -> StoreResult<()> {
        self.send(Msg::Conversations {
            user: user.to_owned(),
            limit,
            before_ts_us,
            max_bytes,
            cb: Cb::new(cb),
        })
    }

    // ----- lifecycle -----

    /// Persists everything written so far with fsync (whatever the durability mode), then
    /// answers.
    pub fn flush(&self, cb: impl FnOnce(StoreResult<()>) + Send + 'static) -> StoreResult<()> {
        self.send(Msg::Flush { cb: Cb::new(cb) })
    }

    /// Stops the store: new requests get `Err(Closed)`; requests already queued are done,
    /// queued password hashes are answered `Closed`, everything is persisted with fsync, and
    /// the storage thread is joined. Idempotent; the first call reports a failure of the
    /// final persist. Called from a completion callback, it returns at once and the thread
    /// stops after the current round.
    pub fn shutdown(&self) -> StoreResult<()> {
        self.inner.shutdown()
    }
}
