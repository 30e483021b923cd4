//! The storage thread: owns the fjall database, drains the request queue, group-commits.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Slice};
use rustc_hash::FxHashMap;

use crate::shard::{NameMap, NameSet};

use super::codec::{
    self, decode, encode, encode_into, parse_queue_key, prefixed, queue_key, queue_prefix,
    record_len, set_queue_key_seq, validate_name, validate_password, AccountRecord, CODE_PREFIX,
    CONTACTS_PREFIX, CONTACT_BLOCKER_PREFIX, CONTACT_ENTRY_PREFIX, MEMBER_PREFIX,
    ROOM_MEMBER_PREFIX, ROOM_PREFIX,
};
use super::contacts::{ContactEntry, ContactRecord, ContactSave};
use super::hash::{Class, HashJob, HashOutcome, HashPool};
use super::histlog::{self, HistLog};
use super::history::{FILE_TAG, NEXT_FILE_TAG};

mod deletion;
mod history;
mod lanes;
use super::{
    Appended, Cb, Durability, MemberProblem, Msg, Overflow, QueueCap, RoomRecord, StatCells,
    StoreError, StoreOptions, StoreResult, StoredMsg,
};
#[cfg(test)]
pub(crate) use deletion::SLICE_KEYS_FOR_TESTS;

/// How long shutdown waits for outstanding password-hash answers before giving up on them
/// (they are then answered `Closed`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Memtable size of the offline queues' keyspace.
const OFFLINE_MEMTABLE_BYTES: u64 = 16 << 20;
/// Memtable size of the accounts' and rooms' keyspaces.
const SMALL_MEMTABLE_BYTES: u64 = 8 << 20;
/// The block cache shared by the keyspaces.
const STORE_CACHE_BYTES: u64 = 16 << 20;
/// Each keyspace's memtable size, in the order of `Dbs::keyspaces` (offline, accounts,
/// rooms, history): set at open, and [`Dbs::seal_memtables`] seals at half of it.
const MEMTABLE_BYTES: [u64; 4] = [
    OFFLINE_MEMTABLE_BYTES,
    SMALL_MEMTABLE_BYTES,
    SMALL_MEMTABLE_BYTES,
    OFFLINE_MEMTABLE_BYTES,
];

/// Sealed memtables of one keyspace past which the storage thread seals it no more (fjall
/// holds writes at 4).
const MAX_SEALED: usize = 4;

/// Bytes counted for each write besides its key and value (fjall's memtable keeps a
/// sequence number, a type and a skiplist node with each), so that `Dbs::since_seal`
/// does not fall short of what fjall measures.
const WRITE_OVERHEAD: usize = 64;

/// The database and its keyspaces.
pub(crate) struct Dbs {
    db: Database,
    offline: Keyspace,
    accounts: Keyspace,
    rooms: Keyspace,
    history: Keyspace,
    /// The records of history chunks (`store::histlog`).
    hlog: HistLog,
    /// Bytes the storage thread wrote to each keyspace (offline, accounts, rooms,
    /// history) since it last sealed its memtable: about what its memtable holds.
    since_seal: [u64; 4],
}

impl Dbs {
    /// Opens (creates) the database in `dir`, its keyspaces and the history log
    /// (`dir/history`, files closed at `log_file_bytes`; 0: `histlog::FILE_MAX`).
    pub(crate) fn open(dir: &std::path::Path, log_file_bytes: u64) -> StoreResult<Dbs> {
        // The store's memory is bounded by these (fjall's defaults, 64 MiB a memtable per
        // keyspace and a 32 MiB cache, made the router's RSS swing by ~100 MiB under a
        // soak's offline traffic): a memtable is sealed and flushed at its size, and fjall
        // holds writes while a keyspace has 4 sealed ones, so at most 5 are in memory.
        // No journal compression: lz4 over every history chunk was half of the storage
        // thread's instructions per message (callgrind, bench/ir.sh), for payloads that
        // seldom compress.
        //
        // One background worker: with two or more, fjall's worker 0 hands every compaction
        // request back to the pool and, while another worker compacts, receives its own
        // request again at once: it spins (a whole core during a requeue flood, on a 2-core
        // host half the CPU the storage thread could have had; perf: 62% of the process's
        // samples on the two fjall workers, 31% on the storage thread). One worker flushes
        // and compacts in turn.
        let db = Database::builder(dir)
            .cache_size(STORE_CACHE_BYTES)
            .journal_compression(fjall::CompressionType::None)
            .worker_threads(1)
            .open()?;
        let sized = |bytes: u64| move || KeyspaceCreateOptions::default().max_memtable_size(bytes);
        // Queues are only scanned (prefix and range reads), never looked up by key: no bloom
        // filters to build at every flush and compaction (taken at the keyspace's creation).
        let offline = db.keyspace("offline", || {
            sized(MEMTABLE_BYTES[0])().filter_policy(fjall::config::FilterPolicy::disabled())
        })?;
        let accounts = db.keyspace("accounts", sized(MEMTABLE_BYTES[1]))?;
        let rooms = db.keyspace("rooms", sized(MEMTABLE_BYTES[2]))?;
        // History chunks keep a 28-byte pointer here; their records are in the history
        // log (`store::histlog`). Chunks written inline before it (up to 64 KiB) still
        // live in blob files: compactions move their keys, not the messages (key-value
        // separation, values over 1 KiB).
        let history = db.keyspace("history", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES[3])
                .with_kv_separation(Some(
                    fjall::KvSeparationOptions::default().compression(fjall::CompressionType::None),
                ))
        })?;
        // The history log's files and their live bytes (`f` + id → live, u64 BE).
        let mut known = Vec::new();
        for g in history.prefix([FILE_TAG]) {
            let (k, v) = g.into_inner()?;
            let Ok(id) = k[1..].try_into() else {
                continue;
            };
            // An unreadable count keeps the whole file (it is never deleted blindly).
            let live = v[..].try_into().map_or(u64::MAX, u64::from_be_bytes);
            known.push((u32::from_be_bytes(id), live));
        }
        let next_hint = match history.get([NEXT_FILE_TAG])? {
            Some(v) => v[..].try_into().map_or(0, u32::from_be_bytes),
            None => 0,
        };
        let file_max = match log_file_bytes {
            0 => histlog::FILE_MAX,
            n => n,
        };
        let hlog = HistLog::open(&dir.join("history"), known, next_hint, file_max)
            .map_err(|e| StoreError::Io(format!("cannot open the history log: {e}")))?;
        // fjall fills the memtables again from the journal (up to 64 MB of it) without
        // sealing them: sealed now, while its worker's queue is empty, so that `since_seal`
        // starting at 0 says what they hold (see `seal_memtables`).
        for ks in [&offline, &accounts, &rooms, &history] {
            ks.rotate_memtable()?;
        }
        Ok(Dbs {
            db,
            offline,
            accounts,
            rooms,
            history,
            hlog,
            since_seal: [0; 4],
        })
    }

    /// The keyspaces, in the order of `since_seal`.
    fn keyspaces(&self) -> [&Keyspace; 4] {
        [&self.offline, &self.accounts, &self.rooms, &self.history]
    }

    /// Seals each keyspace's memtable once half its size was written to it, from the
    /// storage thread, so that fjall's one worker never has to.
    ///
    /// fjall asks its worker to seal a memtable past its size, through a bounded queue
    /// (1 000 messages), once at every write batch until it is done; the worker, when it
    /// seals, queues a flush on that same queue, waiting for room. Behind a long flush or
    /// compaction, 20 000 small commits a second filled the queue with those requests,
    /// and the worker then waited on its own queue for ever: every write stopped (a
    /// contact REQUEST/REMOVE loop hung the store, 1 run in 3; the last version of this
    /// sealing, every keyspace at every commit while more than 96 MiB was not flushed,
    /// queued flushes the same way). Sealed here before it is full, a memtable
    /// never makes fjall ask; each seal queues one flush (one per 4–8 MiB written), and
    /// a keyspace with [`MAX_SEALED`] waiting is not sealed more (fjall holds its writes).
    /// It also bounds memory while the worker is behind: a memtable no longer grows past
    /// its size, as the offline one did (776 MiB not flushed under a room's fan-out to
    /// offline members). Answers the memtable bytes not flushed (active and sealed) it
    /// found.
    fn seal_memtables(&mut self) -> u64 {
        for (i, size) in MEMTABLE_BYTES.into_iter().enumerate() {
            if self.since_seal[i] < size / 2 {
                continue;
            }
            let ks = self.keyspaces()[i];
            if ks.sealed_memtable_count() >= MAX_SEALED {
                continue;
            }
            if let Err(e) = ks.rotate_memtable() {
                tracing::warn!(error = %e, "sealing a memtable failed");
            }
            // (Counted as sealed even when it failed: fjall may have sealed it before
            // failing, and a failure is not retried at every commit.)
            self.since_seal[i] = 0;
        }
        self.db.write_buffer_size()
    }

    /// Notes `bytes` written to keyspace `ks` (see `since_seal`).
    fn wrote(&mut self, ks: usize, bytes: usize) {
        self.since_seal[ks] = self.since_seal[ks].saturating_add(bytes as u64);
    }

    fn ks(&self, ks: Ks) -> &Keyspace {
        match ks {
            Ks::Accounts => &self.accounts,
            Ks::Rooms => &self.rooms,
            Ks::History => &self.history,
        }
    }
}

/// A keyspace written by `Op::Put` and `Op::Del` (its value: its index in
/// `Dbs::since_seal`; the offline keyspace is 0).
#[derive(Clone, Copy)]
enum Ks {
    Accounts = 1,
    Rooms = 2,
    History = 3,
}

/// A write waiting for the next commit.
enum Op {
    Put(Ks, Vec<u8>, Vec<u8>),
    Del(Ks, Vec<u8>),
    /// An offline record (key, value), built as the store's slices (no `Vec` in between).
    Enqueued(Slice, Slice),
    /// An offline record's removal, by the key a scan gave.
    Dequeued(Slice),
}

/// Cached per-user queue position.
#[derive(Clone, Copy)]
struct QueueState {
    next_seq: u64,
    count: u64,
    /// Bytes of the queued records (encoded, as stored).
    bytes: u64,
    /// No message below this seq is left: scans start here, so they seek past the
    /// tombstones of acked messages instead of walking them (which made each removal
    /// and each backlog page cost O(messages removed so far)).
    head: u64,
}

/// A request waiting for the hashing pool (`Unknown`: a Verify for a user with no
/// account, answered NotFound after the dummy hash).
enum Waiting {
    Register { user: String, cb: Cb<()> },
    Verify { cb: Cb<bool> },
    Unknown { cb: Cb<bool> },
    Hash { cb: Cb<String> },
    Check { cb: Cb<bool> },
}

/// A completion to run at the end of the round; gets the round's commit error, if any.
type Deferred = Box<dyn FnOnce(Option<&StoreError>) + Send>;

pub(crate) struct Worker {
    /// Set while the thread naps between dense history appends (see [`NAP`]): a sender
    /// of any other request then unparks it.
    napping: Arc<AtomicBool>,
    /// When the last history append was handled, and whether the next wait is a nap.
    last_quiet: Option<Instant>,
    nap_due: bool,
    dbs: Dbs,
    durability: Durability,
    opts: StoreOptions,
    pool: HashPool,
    stats: Arc<StatCells>,
    /// Writes not yet committed.
    ops: Vec<Op>,
    /// Bytes of the offline records in `ops` (see [`ROUND_RECORD_BYTES`]).
    ops_bytes: usize,
    /// A request of this round wrote something.
    round_wrote: bool,
    /// A commit of this round failed: every writing request of the round gets it.
    round_err: Option<StoreError>,
    /// A `Flush` asked for an fsync this round.
    flush_requested: bool,
    deferred: Vec<Deferred>,
    queues: NameMap<String, QueueState>,
    waiting: FxHashMap<u64, Waiting>,
    registering: NameSet<String>,
    /// Accounts whose deletion has read their rooms and not yet deleted the record: no
    /// membership of theirs is written meanwhile ([`StoreHandle::rooms_of_leaving`]).
    leaving: NameSet<String>,
    /// Accounts known to exist (looked up or written by this thread, not deleted since):
    /// an offline append for one of them needs no commit-then-read.
    known: NameSet<String>,
    /// An account's deletion is in `ops`, not committed: a lookup on disk must commit
    /// first. (Of the writes to accounts only a deletion can change what a lookup of a
    /// name not in `known` answers: every account written is put in `known`.)
    accounts_dropped: bool,
    /// The highest `next_seq` of the queue states dropped from `queues` (see
    /// [`CACHE_MAX`]): a queue read again never reuses a seq.
    evicted_next_seq: u64,
    /// Where the idle-user sweep goes on (the next account key), mid-pass.
    sweep_cursor: Option<Vec<u8>>,
    /// When the next sweep step is due.
    next_sweep: Instant,
    next_job: u64,
    shutting_down: bool,
    /// Conversation history (`worker/history.rs`).
    hist: history::HistState,
    /// Account deletions under way, a slice at a time (`worker/deletion.rs`).
    deletions: deletion::Deletions,
    /// Appends to offline queues waiting behind the other requests (`worker::lanes`).
    lanes: lanes::Lanes,
    /// Looks at the disk (`store::disk`).
    disk: super::disk::DiskWatch,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How long the storage thread waits, unwoken by history appends, once they come closer
/// together than this (see [`Worker::nap`]). At 10 000 messages a second one pair's
/// appends each woke this thread (a futex) and its answer the shard (an eventfd): a
/// third of the router's CPU (`perf`). An append's answer (counts only) waits at most
/// this long; a request of any other kind wakes the thread, and is handled after the
/// appends queued before it, as always.
pub(crate) const NAP: Duration = Duration::from_millis(1);

/// The storage thread returns the memory it freed once it has handled no request for
/// this long (`alloc::collect_now`).
const IDLE_COLLECT_AFTER: Duration = Duration::from_secs(1);

/// Most entries in each of the storage thread's caches (queue states, accounts known to
/// exist): past it a cache is emptied after a commit and refilled from disk on demand, so
/// a storm of unique user names cannot grow the thread's memory.
const CACHE_MAX: usize = 100_000;

/// Queues of at least this many messages keep their state in the cache when it is emptied
/// past [`CACHE_MAX`] (see [`Worker::trim_caches`]).
const KEEP_QUEUE_STATE_FROM: u64 = 1024;

/// The queue states a cache of more than `max` keeps: those of queues of at least
/// [`KEEP_QUEUE_STATE_FROM`] messages, unless they are more than `max` / 2 (then none).
fn kept_queue_states(
    queues: NameMap<String, QueueState>,
    max: usize,
) -> NameMap<String, QueueState> {
    let big: NameMap<String, QueueState> = queues
        .into_iter()
        .filter(|(_, q)| q.count >= KEEP_QUEUE_STATE_FROM)
        .collect();
    if big.len() <= max / 2 {
        big
    } else {
        NameMap::default()
    }
}

/// A round ends (its writes committed, its requests answered) once it has this many
/// bytes of offline records to write. fjall checks a memtable's size after a whole batch
/// is applied: a round of a room message's records for 5 000 offline members (8 KiB each)
/// made memtables of hundreds of MiB, four of them sealed and waiting for their flush:
/// 30 such messages took the router to 1.2 GiB (linear in the messages sent). Half the
/// offline memtable's size: it is sealed at most this much past it.
const ROUND_RECORD_BYTES: usize = OFFLINE_MEMTABLE_BYTES as usize / 2;

/// Accounts one idle-user sweep step looks at (steps run between rounds) ...
const SWEEP_BATCH: usize = 1024;
/// ... and most it forgets: each is a commit of its own, and what memory holds of their
/// history is walked once for all of them.
const SWEEP_FORGET: usize = 64;
#[cfg(test)]
pub(crate) const SWEEP_FORGET_FOR_TESTS: usize = SWEEP_FORGET;

thread_local! {
    /// When the request [`Worker::handle`] runs began (none outside it).
    static HANDLING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Time spent committing during that handling (not the request's own cost).
    static COMMITTED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// While an answer's callback runs: how long its request's `handle` had run when
    /// the answer was made (see [`answer_cost`]).
    static ANSWER_COST: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Called from a store answer's callback (on the storage thread): the storage thread's
/// time its request took, from the start of its handling to its answer, less what it
/// spent committing the round's writes (zero for an answer made outside a request's
/// handling, such as a password hash's). What the shards' gates charge the user whose
/// read it was (`PageReads`).
pub fn answer_cost() -> Duration {
    ANSWER_COST.with(Cell::get)
}

/// Fewest account names a ListUsers request may scan (see `list_users`).
const LIST_SCAN_MIN: usize = 65_536;

/// `prefix` `a` 0x00 `b`: a key of a list `a` holds (names have no 0x00, so a prefix scan
/// of `prefix` `a` 0x00 reads `a`'s list, in name order, and no other).
fn list_key(prefix: &[u8], a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + a.len() + 1 + b.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// Key of the membership index entry "`user` is in `room`" (owner included):
/// `mem:` user 0x00 room, so a prefix scan lists one user's rooms in name order. Its
/// value is empty for a room the user created or joined, [`ADDED`] for one someone else
/// added it to (the two count against `max_rooms_per_user` separately).
fn member_key(user: &str, room: &str) -> Vec<u8> {
    list_key(MEMBER_PREFIX, user, room)
}

/// Value of a membership index entry for a room someone else added the user to (as an
/// initial member or by AddMember); entries written before it are counted as the
/// user's own.
const ADDED: &[u8] = b"a";

/// The value of `user`'s membership index entry for a room of `owner`, which `added_by`
/// added it to (itself: it created or joined the room).
fn membership(user: &str, added_by: &str) -> Vec<u8> {
    if user == added_by {
        Vec::new()
    } else {
        ADDED.to_vec()
    }
}

/// Key of the room member entry "`room` has member `user`": `rmem:` room 0x00 user.
fn room_member_key(room: &str, user: &str) -> Vec<u8> {
    list_key(ROOM_MEMBER_PREFIX, room, user)
}

/// Key of `user`'s contact list entry for `peer`: `cte:` user 0x00 peer (a scan reads a
/// list's entries in peer order, the order of [`ContactRecord::entries`]).
fn contact_entry_key(user: &str, peer: &str) -> Vec<u8> {
    list_key(CONTACT_ENTRY_PREFIX, user, peer)
}

/// Key noting that `blocker` blocks `user`: `ctb:` user 0x00 blocker.
fn contact_blocker_key(user: &str, blocker: &str) -> Vec<u8> {
    list_key(CONTACT_BLOCKER_PREFIX, user, blocker)
}

/// The write noting (`on`) or dropping that `blocker` blocks `user`.
fn blocker_op(user: &str, blocker: &str, on: bool) -> Op {
    let key = contact_blocker_key(user, blocker);
    if on {
        Op::Put(Ks::Rooms, key, Vec::new())
    } else {
        Op::Del(Ks::Rooms, key)
    }
}

/// Records whose inline lists one step of an open-time move rewrites.
const MIGRATE_BATCH: usize = 256;
#[cfg(test)]
pub(crate) const MIGRATE_BATCH_FOR_TESTS: usize = MIGRATE_BATCH;
#[cfg(test)]
pub(crate) use history::FLUSH_SLICE_FOR_TESTS;
/// Memtable bytes not flushed the store stays under: [`Dbs::seal_memtables`] seals each
/// keyspace's at half its size (8 + 4 + 4 + 8 MiB), and fjall holds writes at 4 sealed,
/// so at most 5 × 24 = 120 MiB (a request's records may pass half a memtable before the
/// seal; the test that writes 960 MiB of them measured 63 MiB).
#[cfg(test)]
pub(crate) const UNFLUSHED_MAX_FOR_TESTS: u64 = 120 << 20;

/// The owner and the members of a room.
fn people(r: &RoomRecord) -> std::collections::BTreeSet<&str> {
    std::iter::once(r.owner.as_str())
        .chain(r.members.iter().map(String::as_str))
        .collect()
}

fn validate_room(r: &RoomRecord) -> StoreResult<()> {
    validate_name("room name", &r.name)?;
    validate_name("room owner", &r.owner)?;
    validate_name("join code", &r.join_code)?;
    for m in &r.members {
        validate_name("member", m)?;
    }
    Ok(())
}

impl Worker {
    pub(crate) fn new(
        dbs: Dbs,
        durability: Durability,
        disk: super::disk::DiskWatch,
        opts: StoreOptions,
        pool: HashPool,
        stats: Arc<StatCells>,
        napping: Arc<AtomicBool>,
    ) -> Worker {
        let opts_history = opts.history;
        Worker {
            napping,
            last_quiet: None,
            nap_due: false,
            dbs,
            durability,
            disk,
            opts,
            pool,
            stats,
            ops: Vec::new(),
            ops_bytes: 0,
            round_wrote: false,
            round_err: None,
            flush_requested: false,
            deferred: Vec::new(),
            queues: NameMap::default(),
            waiting: FxHashMap::default(),
            registering: NameSet::default(),
            leaving: NameSet::default(),
            known: NameSet::default(),
            accounts_dropped: false,
            evicted_next_seq: 0,
            sweep_cursor: None,
            next_sweep: Instant::now(),
            next_job: 0,
            shutting_down: false,
            hist: history::HistState::new(opts_history, durability),
            deletions: deletion::Deletions::default(),
            lanes: lanes::Lanes::default(),
        }
    }

    /// The thread's body: rounds until shutdown, then a final fsync.
    pub(crate) fn run(&mut self, rx: Receiver<Msg>) -> StoreResult<()> {
        let max_round = self.opts.max_round.max(1);
        let mut idle = crate::alloc::IdleCollect::new(IDLE_COLLECT_AFTER, Instant::now());
        loop {
            self.deletion_round();
            let first = if !self.shutting_down {
                if let Some(forget) = self.opts.forget_idle_after {
                    self.maybe_sweep(forget);
                }
                self.hist_tick();
                self.look_at_disk();
                let sweep = self.opts.forget_idle_after.map(|_| self.next_sweep);
                let wake = [sweep, self.hist.next_flush(), self.next_deletion_retry()]
                    .into_iter()
                    .flatten()
                    .min();
                // Idle (the whole process): wake up once a second to return freed memory
                // (once per stretch).
                let work = self.stats.requests.load(Ordering::Relaxed);
                if idle.due_after(work, Instant::now()) {
                    crate::alloc::collect_now();
                }
                let idle_wake = Instant::now() + IDLE_COLLECT_AFTER;
                let at = wake.map_or(idle_wake, |w| w.min(idle_wake));
                if self.deletion_due(Instant::now()) || !self.lanes.is_empty() {
                    // A deletion under way, or appends waiting: what is queued is
                    // handled (none: no wait), then the deletion's next slice
                    // (`worker::deletion`) or the next appends (`worker::lanes`).
                    let got = if self.bulk_held() && !self.deletion_due(Instant::now()) {
                        // (The appends wait for fjall's flushes: not a spin meanwhile.)
                        rx.recv_timeout(lanes::BULK_HOLD_WAIT).map_err(|e| match e {
                            RecvTimeoutError::Timeout => TryRecvError::Empty,
                            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                        })
                    } else {
                        rx.try_recv()
                    };
                    match got {
                        Ok(m) => Some(m),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Disconnected) if !self.lanes.is_empty() => None,
                        Err(TryRecvError::Disconnected) => break,
                    }
                } else {
                    let napped = match std::mem::take(&mut self.nap_due) {
                        true => self.nap(&rx, at),
                        false => Err(TryRecvError::Empty),
                    };
                    match napped {
                        Ok(m) => Some(m),
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) => {
                            match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                                Ok(m) => Some(m),
                                Err(RecvTimeoutError::Timeout) => continue,
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    }
                }
            } else if self.waiting.is_empty() || !self.lanes.is_empty() {
                // Shutting down: finish what is queued (appends included), then stop.
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) if !self.lanes.is_empty() => None,
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(SHUTDOWN_GRACE) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => {
                        tracing::warn!(
                            "store shutdown: {} password jobs unanswered",
                            self.waiting.len()
                        );
                        break;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut n = 0usize;
            if let Some(first) = first {
                // Everything queued is looked at (appends wait in `lanes`: a request
                // behind them is found and handled now, `worker::lanes`).
                let mut taken = 1;
                n += self.take(first);
                while taken < max_round && self.ops_bytes < ROUND_RECORD_BYTES {
                    match rx.try_recv() {
                        Ok(m) => {
                            n += self.take(m);
                            taken += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            // Then a round's worth of the appends, unless they wait for fjall's flushes.
            let (mut appends, mut weight) = (0, 0);
            let held = self.bulk_held();
            while !held && weight < lanes::BULK_ROUND && self.ops_bytes < ROUND_RECORD_BYTES {
                let Some(m) = self.lanes.pop() else {
                    break;
                };
                weight += m.bulk_weight();
                self.handle(m);
                appends += 1;
            }
            n += appends;
            self.stats
                .bulk_waiting
                .store(self.lanes.len() as u64, Ordering::Relaxed);
            if n > 0 {
                self.finish_round(n);
            }
            // One slice of a deletion under way per turn, in a round of its own after
            // the requests' (answered first: a request waits for at most the slice
            // that was running when it came). Not while shutting down: finished at the
            // next open.
            if !self.shutting_down && self.deletion_step() {
                self.finish_round(0);
            }
        }
        // Anything still waiting for the pool is answered `Closed` (Cb's drop), and so
        // are the deletions under way (marked: finished at the next open).
        self.waiting.clear();
        self.drop_deletions();
        let commit = self.hist_flush().and_then(|()| self.commit());
        let persist = self
            .dbs
            .hlog
            .sync()
            .map_err(|e| StoreError::Io(format!("history log fsync failed: {e}")))
            .and_then(|()| {
                self.dbs
                    .db
                    .persist(PersistMode::SyncAll)
                    .map_err(Into::into)
            });
        if commit.is_ok() && persist.is_ok() {
            self.dbs.hlog.unlink_doomed();
        }
        // Requests that raced with shutdown are answered `Closed` here, on this thread.
        drop(rx);
        self.pool.join();
        commit.and(persist)
    }

    /// Waits up to [`NAP`] for the next request without being woken by history appends
    /// (other requests wake it: `StoreHandle::send`), so that appends that come every
    /// few hundred microseconds are handled a batch per nap, not each with a wake-up of
    /// this thread and then of the shard its answer goes to.
    fn nap(&self, rx: &Receiver<Msg>, until: Instant) -> Result<Msg, TryRecvError> {
        self.napping.store(true, Ordering::SeqCst);
        // (Pairs with the sender's fence: either it sees `napping` and unparks, or this
        // sees its request.)
        std::sync::atomic::fence(Ordering::SeqCst);
        match rx.try_recv() {
            Err(TryRecvError::Empty) => {}
            r => {
                self.napping.store(false, Ordering::Relaxed);
                return r;
            }
        }
        // Until a sender clears `napping` (spurious wake-ups do not end it) or the nap
        // is over.
        // (Not past the loop's own deadline: a flush, a sweep, a pinned payload's copy.)
        let now = Instant::now();
        let deadline = now.checked_add(self.opts.nap).unwrap_or(until).min(until);
        while self.napping.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        self.napping.store(false, Ordering::Relaxed);
        rx.try_recv()
    }

    /// Runs a sweep step if one is due, and schedules the next: soon while a pass is
    /// under way, else after a quarter of the expiry period (at most a minute).
    fn maybe_sweep(&mut self, forget: Duration) {
        let now = Instant::now();
        if now < self.next_sweep {
            return;
        }
        let finished = match self.sweep_step(forget) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "idle-user sweep failed");
                true
            }
        };
        self.next_sweep = now
            + if finished {
                (forget / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
            } else {
                Duration::from_millis(10)
            };
    }

    /// Queues `cb`'s answer for the end of the round. A request that wrote (`wrote`) gets
    /// the round's commit error instead of `r` if a commit fails. The answer is called
    /// with [`answer_cost`] telling how long the request's [`Worker::handle`] had run.
    fn done<T: Send + 'static>(&mut self, cb: Cb<T>, r: StoreResult<T>, wrote: bool) {
        let wrote = wrote && r.is_ok();
        if wrote {
            self.round_wrote = true;
        }
        let cost = HANDLING_SINCE.with(Cell::get).map_or(Duration::ZERO, |t| {
            t.elapsed().saturating_sub(COMMITTED.with(Cell::get))
        });
        self.deferred
            .push(Box::new(move |err: Option<&StoreError>| {
                ANSWER_COST.with(|c| c.set(cost));
                match err {
                    Some(e) if wrote => cb.call(Err(e.clone())),
                    _ => cb.call(r),
                }
                ANSWER_COST.with(|c| c.set(Duration::ZERO));
            }));
    }

    /// Commits pending writes as one batch (handed to the OS, no fsync). Inside a
    /// request's handling, its time is not the request's (see [`answer_cost`]): a
    /// read's commit first writes what others' requests left.
    fn commit(&mut self) -> StoreResult<()> {
        if HANDLING_SINCE.with(Cell::get).is_none() {
            return self.commit_now();
        }
        let t = Instant::now();
        let r = self.commit_now();
        COMMITTED.with(|c| c.set(c.get() + t.elapsed()));
        r
    }

    fn commit_now(&mut self) -> StoreResult<()> {
        // History log files' live bytes, in the batch of the pointers that changed them.
        for (id, live) in self.dbs.hlog.take_changed() {
            let mut k = vec![FILE_TAG];
            k.extend_from_slice(&id.to_be_bytes());
            self.ops.push(match live {
                Some(l) => Op::Put(Ks::History, k, l.to_be_bytes().to_vec()),
                None => Op::Del(Ks::History, k),
            });
        }
        if let Some(next) = self.dbs.hlog.take_next_id() {
            self.ops.push(Op::Put(
                Ks::History,
                vec![NEXT_FILE_TAG],
                next.to_be_bytes().to_vec(),
            ));
        }
        if self.ops.is_empty() {
            return Ok(());
        }
        // (Committed or lost with a failed batch: either way no longer pending.)
        self.accounts_dropped = false;
        self.ops_bytes = 0;
        let t = Instant::now();
        // As `Database::batch` (journal handed to the OS at commit), sized for the round's
        // writes at once instead of grown item by item (a requeue round is ~10^4 items).
        let mut batch = OwnedWriteBatch::with_capacity(self.dbs.db.clone(), self.ops.len())
            .durability(Some(PersistMode::Buffer));
        let mut written = [0usize; 4];
        for op in self.ops.drain(..) {
            match op {
                Op::Put(ks, k, v) => {
                    written[ks as usize] += k.len() + v.len() + WRITE_OVERHEAD;
                    batch.insert(self.dbs.ks(ks), k, v)
                }
                Op::Del(ks, k) => {
                    written[ks as usize] += k.len() + WRITE_OVERHEAD;
                    batch.remove(self.dbs.ks(ks), k)
                }
                Op::Enqueued(k, v) => {
                    written[0] += k.len() + v.len() + WRITE_OVERHEAD;
                    batch.insert(&self.dbs.offline, k, v)
                }
                Op::Dequeued(k) => {
                    written[0] += k.len() + WRITE_OVERHEAD;
                    batch.remove(&self.dbs.offline, k)
                }
            }
        }
        for (ks, bytes) in written.into_iter().enumerate() {
            self.dbs.wrote(ks, bytes);
        }
        let r = batch.commit();
        if r.is_ok() {
            self.dbs.hlog.committed();
            let unflushed = self.dbs.seal_memtables();
            self.stats
                .max_unflushed
                .fetch_max(unflushed, Ordering::Relaxed);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commit_us
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats
            .failed
            .store(u64::from(r.is_err()), Ordering::Relaxed);
        r.map_err(|e| {
            let e = StoreError::from(e);
            tracing::error!("store commit failed: {e}");
            // The history log files this batch would have emptied may still be pointed to.
            self.dbs.hlog.forget_doomed();
            // Accounts this batch would have written are not there: what the cache of
            // known accounts says is checked again.
            self.known = NameSet::default();
            // Nor are its queue writes: the queues' states are read again from the disk.
            // Kept, a big queue's (kept past the cache's trims) would count messages that
            // are not there until a restart.
            self.take_queue_states();
            self.round_err.get_or_insert_with(|| e.clone());
            e
        })
    }

    /// Empties the cache of queue states, handing back what it held: a queue read again
    /// never reuses a seq of theirs (`evicted_next_seq`).
    fn take_queue_states(&mut self) -> NameMap<String, QueueState> {
        let top = self.queues.values().map(|q| q.next_seq).max().unwrap_or(0);
        self.evicted_next_seq = self.evicted_next_seq.max(top);
        std::mem::take(&mut self.queues)
    }

    /// Looks at the disk when a look is due (`store::disk`), and publishes what it saw.
    fn look_at_disk(&mut self) {
        let (db, hlog) = (&self.dbs.db, &self.dbs.hlog);
        let used = || db.disk_space().unwrap_or(0).saturating_add(hlog.totals().0);
        if let Some(seen) = self.disk.look(Instant::now(), used) {
            let s = &self.stats;
            s.disk_free_bytes.store(seen.free, Ordering::Relaxed);
            s.disk_used_bytes.store(seen.used, Ordering::Relaxed);
            s.disk_full.store(u64::from(seen.full), Ordering::Relaxed);
        }
    }

    /// While the store is full (`store::disk`), the requests that only make it grow are
    /// answered [`StoreError::DiskFull`] here: new user records, accounts, rooms, room
    /// members, contact lists, notices for offline users (each small, but users are free
    /// to make: a room record cost ~550 B, 1.8 MB/s from one client). What removes,
    /// updates or keeps what was accepted goes on. `None`: answered.
    fn refused_when_full(&mut self, msg: Msg) -> Option<Msg> {
        if !self.disk_full() {
            return Some(msg);
        }
        match msg {
            Msg::EnsureUser { cb, .. } => self.done(cb, Err(StoreError::DiskFull), false),
            Msg::Register { cb, .. }
            | Msg::CreateRoom { cb, .. }
            | Msg::AddMember { cb, .. }
            | Msg::SaveContacts { cb, .. }
            | Msg::EnqueueEach { cb, .. } => self.done(cb, Err(StoreError::DiskFull), false),
            msg => return Some(msg),
        }
        None
    }

    /// Whether the store is full (as of the last look at the disk).
    pub(crate) fn disk_full(&self) -> bool {
        self.stats.disk_full.load(Ordering::Relaxed) != 0
    }

    /// Empties a cache that passed [`CACHE_MAX`]. Only with every write committed: a user
    /// without a cached queue state must have no uncommitted queue writes.
    fn trim_caches(&mut self) {
        if !self.ops.is_empty() {
            return;
        }
        if self.queues.len() > CACHE_MAX {
            // The states of big queues stay: one read again is a scan of the whole queue
            // (~18 ms per 100 000 messages), and a storm of messages to new names emptied
            // the cache every 100 000 of them, so that each big queue's next message paid
            // it. Past half the bound even so, all go.
            let all = self.take_queue_states();
            self.queues = kept_queue_states(all, CACHE_MAX);
        }
        if self.known.len() > CACHE_MAX {
            self.known = NameSet::default();
        }
        self.hist_trim_cache();
    }

    /// Commit, fsync if the mode (or a `Flush`) asks for it, then run the completions.
    fn finish_round(&mut self, n: usize) {
        if std::mem::take(&mut self.hist.round_flush) {
            // (A history write that fails fails no message: as when it was per request.)
            if let Err(e) = self.hist_flush() {
                tracing::warn!(error = %e, "history write failed");
            }
        }
        let _ = self.commit();
        self.trim_caches();
        let want_sync =
            self.flush_requested || (self.round_wrote && self.durability == Durability::Sync);
        if want_sync && self.round_err.is_none() {
            let mode = if self.flush_requested {
                PersistMode::SyncAll
            } else {
                PersistMode::SyncData
            };
            let t = Instant::now();
            // The history log's records first: the journal points into them.
            if let Err(e) = self.dbs.hlog.sync() {
                let e = StoreError::Io(format!("history log fsync failed: {e}"));
                tracing::error!("{e}");
                self.round_err = Some(e);
            } else if let Err(e) = self.dbs.db.persist(mode) {
                let e = StoreError::from(e);
                tracing::error!("store fsync failed: {e}");
                self.round_err = Some(e);
            }
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .fsync_us
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        // History log files with nothing live go once the commit that said so is as
        // durable as the mode promises.
        if self.round_err.is_none() && (want_sync || self.durability == Durability::Memory) {
            self.dbs.hlog.unlink_doomed();
        }
        let err = self.round_err.take();
        let mut deferred = std::mem::take(&mut self.deferred);
        // Each shard is woken once for the round's answers (see `with_rings_held`).
        crate::mailbox::with_rings_held(|| {
            for d in deferred.drain(..) {
                d(err.as_ref());
            }
        });
        self.deferred = deferred;
        self.round_wrote = false;
        self.flush_requested = false;
        if let Some(hook) = &self.opts.round_hook {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook())).is_err() {
                tracing::error!("store round hook panicked");
            }
        }
        let s = &self.stats;
        s.rounds.fetch_add(1, Ordering::Relaxed);
        s.requests.fetch_add(n as u64, Ordering::Relaxed);
        s.max_round.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// Whether the appends waiting are held back: fjall's flushes of the offline queues'
    /// memtables are behind (`lanes::BULK_SEALED_MAX`), and fjall would soon hold every
    /// write (`MAX_SEALED`), this thread with it, 100 ms at a time. Not while shutting
    /// down (then everything is handled).
    fn bulk_held(&self) -> bool {
        !self.shutting_down
            && !self.lanes.is_empty()
            && self.dbs.offline.sealed_memtable_count() >= lanes::BULK_SEALED_MAX
    }

    /// Handles `msg` now, after the appends it must follow, or (an append) queues it
    /// behind the other requests (`worker::lanes`). Returns how many were handled.
    fn take(&mut self, msg: Msg) -> usize {
        let lane = msg.lane();
        if matches!(lane, lanes::Lane::Bulk) {
            self.lanes.push(msg);
            return 0;
        }
        let mut n = 1;
        while self.lanes.must_wait(&lane) {
            let Some(before) = self.lanes.pop() else {
                break;
            };
            self.handle(before);
            n += 1;
            if self.ops_bytes >= ROUND_RECORD_BYTES {
                // (A commit, answers still at the round's end: the appends before a
                // request are never one batch of everything the lane held, which could be
                // the shards' whole store queues, 64 MiB each.)
                let _ = self.commit();
            }
        }
        self.handle(msg);
        n
    }

    fn handle(&mut self, msg: Msg) {
        struct Handling;
        impl Drop for Handling {
            fn drop(&mut self) {
                HANDLING_SINCE.with(|t| t.set(None));
            }
        }
        HANDLING_SINCE.with(|t| t.set(Some(Instant::now())));
        COMMITTED.with(|c| c.set(Duration::ZERO));
        let _handling = Handling;
        let Some(msg) = self.refused_when_full(msg) else {
            return;
        };
        match msg {
            Msg::Append {
                user,
                msgs,
                cap,
                cb,
            } => {
                let n = msgs.len();
                let r = self.append(&user, msgs, cap).map(|a| a.queued);
                let wrote = r.is_ok() && n > 0;
                self.done(cb, r, wrote);
            }
            Msg::Enqueue {
                user,
                msgs,
                cap,
                require_account,
                cb,
            } => {
                let n = msgs.len();
                let r = self.enqueue(&user, msgs, cap, require_account);
                let wrote = r.is_ok() && n > 0;
                self.done(cb, r, wrote);
            }
            Msg::EnqueueEach { items, cap, cb } => {
                let mut r = Ok(());
                let mut wrote = false;
                for (user, msg) in items {
                    match self.enqueue(&user, vec![msg], cap, true) {
                        Ok(_) => wrote = true,
                        Err(StoreError::NotFound | StoreError::Full) => {}
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                self.done(cb, r, wrote);
            }
            Msg::EnsureUser { user, cb } => {
                let r = self.ensure_user(&user);
                let wrote = matches!(r, Ok(true));
                self.done(cb, r, wrote);
            }
            Msg::Load {
                user,
                from_seq,
                limit,
                max_bytes,
                cb,
            } => {
                let r = self.load(&user, from_seq, limit, max_bytes);
                self.done(cb, r, false);
            }
            Msg::RemoveUpTo { user, seq, cb } => {
                let r = self.remove_range(&user, seq);
                let wrote = matches!(r, Ok((removed, _)) if removed > 0);
                self.done(cb, r.map(|(_, left)| left), wrote);
            }
            Msg::Count { user, cb } => {
                let r = validate_name("user", &user)
                    .and_then(|()| self.queue_state(&user, &queue_prefix(&user)))
                    .map(|st| st.count);
                self.done(cb, r, false);
            }
            Msg::Clear { user, cb } => {
                let r = self.remove_range(&user, u64::MAX);
                let wrote = matches!(r, Ok((removed, _)) if removed > 0);
                self.done(cb, r.map(|(removed, _)| removed), wrote);
            }
            Msg::Register { user, password, cb } => self.register(user, password, cb),
            Msg::Verify { user, password, cb } => {
                // No account, or one made by a first login under open or jwt auth (no
                // password, `phc` empty): the same Argon2id work against the pool's dummy
                // hash, so that the answer's timing does not tell which users exist.
                match self.account_phc(&user) {
                    Ok(phc) => self.submit(Waiting::Verify { cb }, |id| HashJob::Verify {
                        id,
                        password,
                        phc,
                    }),
                    Err(StoreError::NotFound) => {
                        self.submit(Waiting::Unknown { cb }, |id| HashJob::Verify {
                            id,
                            password,
                            phc: String::new(),
                        })
                    }
                    Err(e) => self.done(cb, Err(e), false),
                }
            }
            Msg::UserExists { user, cb } => {
                let r = validate_name("user", &user)
                    .and_then(|()| self.commit())
                    .and_then(|()| Ok(self.dbs.accounts.contains_key(user.as_bytes())?));
                self.done(cb, r, false);
            }
            Msg::DeleteAccount { user, cb } => self.delete_account(user, cb),
            Msg::ListUsers { pattern, limit, cb } => {
                let r = self.list_users(&pattern, limit);
                self.done(cb, r, false);
            }
            Msg::HashPassword { password, cb } => match validate_password(&password) {
                Ok(()) => self.submit(Waiting::Hash { cb }, |id| HashJob::Hash { id, password }),
                Err(e) => self.done(cb, Err(e), false),
            },
            Msg::CheckPassword { password, phc, cb } => {
                self.submit(Waiting::Check { cb }, |id| HashJob::Verify {
                    id,
                    password,
                    phc,
                });
            }
            Msg::CreateRoom { record, cb } => {
                let r = self.create_room(record);
                self.done(cb, r, true);
            }
            Msg::GetRoom { key, cb } => {
                let r = self.get_room(&key);
                self.done(cb, r, false);
            }
            Msg::PutRoom { record, cb } => {
                let r = self.put_room(record);
                self.done(cb, r, true);
            }
            Msg::GetContacts {
                user,
                max_blockers,
                cb,
            } => {
                let r = self.get_contacts(&user, max_blockers);
                self.done(cb, r, false);
            }
            Msg::BlockersAmong { user, peers, cb } => {
                let r = self.blockers_among(&user, &peers);
                self.done(cb, r, false);
            }
            Msg::BlockersAfter {
                user,
                after,
                limit,
                cb,
            } => {
                let r = self.blockers_after(&user, &after, limit);
                self.done(cb, r, false);
            }
            Msg::SaveContacts { user, save, cb } => {
                let r = self.save_contacts(&user, save);
                self.done(cb, r, true);
            }
            Msg::NoteBlocker {
                user,
                blocker,
                on,
                cb,
            } => {
                let r = self.note_blocker(&user, &blocker, on);
                self.done(cb, r, true);
            }
            Msg::DeleteRoom { name, cb } => {
                let r = self.delete_room(&name);
                self.done(cb, r, true);
            }
            Msg::RoomByCode { code, cb } => {
                let r = self.room_by_code(&code);
                self.done(cb, r, false);
            }
            Msg::AddMember { room, user, by, cb } => {
                let r = self.add_member(&room, &user, &by);
                self.done(cb, r, true);
            }
            Msg::RemoveMember { room, user, cb } => {
                let r = self.remove_member(&room, &user);
                self.done(cb, r, true);
            }
            Msg::RoomsOf { user, leaving, cb } => {
                let r = self.rooms_of(&user);
                if leaving && r.is_ok() {
                    self.leaving.insert(user);
                }
                self.done(cb, r, false);
            }
            Msg::OwnRooms { user, room, cb } => {
                let r = self.own_rooms(&user, &room);
                self.done(cb, r, false);
            }
            Msg::CheckMembers {
                users,
                max_rooms,
                cb,
            } => {
                let r = self.check_members(&users, max_rooms);
                self.done(cb, r, false);
            }
            Msg::HistoryAppend { chunks, cb } => {
                // Appends closer together than a nap: nap before the next wait.
                let now = Instant::now();
                let nap = self.opts.nap;
                self.nap_due |= self.last_quiet.is_some_and(|t| now.duration_since(t) < nap);
                self.last_quiet = Some(now);
                let r = self.hist_append(chunks);
                self.done(cb, r, true);
            }
            Msg::HistoryMark {
                user,
                peer,
                room,
                msg_id,
                cb,
            } => {
                let r = self.hist_mark(&user, peer.as_deref(), room.as_deref(), msg_id);
                self.done(cb, r, true);
            }
            Msg::HistoryQuery { query, cb } => {
                let r = self.hist_query(&query);
                self.done(cb, r, false);
            }
            Msg::Conversations {
                user,
                limit,
                before_ts_us,
                max_bytes,
                cb,
            } => {
                let r = self.hist_conversations(&user, limit, before_ts_us, max_bytes);
                self.done(cb, r, false);
            }
            Msg::Flush { cb } => {
                let r = self.hist_flush().and_then(|()| self.commit());
                self.flush_requested = true;
                self.done(cb, r, true);
            }
            Msg::Hashed { id, result } => self.hashed(id, result),
            Msg::Shutdown => {
                self.shutting_down = true;
                self.pool.cancel();
            }
        }
    }

    // ----- offline queues -----

    /// The cached queue position of `user`, read from disk on first use. Every write to a
    /// queue goes through this cache first, so a user without an entry has no pending
    /// (uncommitted) queue writes and the scan sees the whole queue.
    fn queue_state(&mut self, user: &str, prefix: &[u8]) -> StoreResult<QueueState> {
        if let Some(st) = self.queues.get(user) {
            return Ok(*st);
        }
        let mut count = 0u64;
        let mut bytes = 0u64;
        let mut last = 0u64;
        let mut first = None;
        for g in self.dbs.offline.prefix(prefix) {
            let (k, v) = g.into_inner()?;
            last = parse_queue_key(prefix, &k)?;
            first.get_or_insert(last);
            count += 1;
            bytes += v.len() as u64;
        }
        // Seqs never go back, even for a queue whose state was evicted from the cache
        // while empty (a session may still hold store seqs of it).
        let next_seq = last.saturating_add(1).max(self.evicted_next_seq);
        let st = QueueState {
            next_seq,
            count,
            bytes,
            head: first.unwrap_or(next_seq),
        };
        self.queues.insert(user.to_owned(), st);
        Ok(st)
    }

    /// Whether `user`'s offline queue holds a message (from its cached state, else one
    /// key read; a failed read counts as one).
    fn has_queued(&self, user: &str) -> bool {
        match self.queues.get(user) {
            Some(q) => q.count > 0,
            None => self.dbs.offline.prefix(queue_prefix(user)).next().is_some(),
        }
    }

    fn set_queue_state(&mut self, user: &str, st: QueueState) {
        if let Some(s) = self.queues.get_mut(user) {
            *s = st;
        } else {
            self.queues.insert(user.to_owned(), st);
        }
    }

    fn append(
        &mut self,
        user: &str,
        msgs: Vec<StoredMsg>,
        cap: Option<QueueCap>,
    ) -> StoreResult<Appended> {
        validate_name("user", user)?;
        // A queue being deleted takes nothing more: as to any name without an account
        // (`worker::deletion`).
        if self.deleting(user) {
            return Err(StoreError::NotFound);
        }
        let prefix = queue_prefix(user);
        let mut st = self.queue_state(user, &prefix)?;
        let mut msgs = msgs;
        if let Some(cap) = cap {
            let n = msgs.len() as u64;
            let new_bytes: u64 = msgs.iter().map(record_len).sum();
            if st.count.saturating_add(n) > cap.max_msgs
                || st.bytes.saturating_add(new_bytes) > cap.max_bytes
            {
                if cap.overflow == Overflow::Reject {
                    return Err(StoreError::Full);
                }
                if cap.overflow == Overflow::DropNewest {
                    // The first that fit beside what is queued (which stays whole).
                    let room = cap.max_msgs.saturating_sub(st.count);
                    let room_bytes = cap.max_bytes.saturating_sub(st.bytes);
                    let (mut keep, mut kept_bytes) = (0usize, 0u64);
                    for m in &msgs {
                        let b = kept_bytes + record_len(m);
                        if keep as u64 >= room || b > room_bytes {
                            break;
                        }
                        keep += 1;
                        kept_bytes = b;
                    }
                    msgs.truncate(keep);
                } else {
                    // The newest that fit on their own (at least none, at most all).
                    let mut keep = 0usize;
                    let mut kept_bytes = 0u64;
                    for m in msgs.iter().rev() {
                        let b = kept_bytes + record_len(m);
                        if keep as u64 >= cap.max_msgs || b > cap.max_bytes {
                            break;
                        }
                        keep += 1;
                        kept_bytes = b;
                    }
                    let excess = msgs.len() - keep;
                    msgs.drain(..excess);
                    self.drop_oldest(&prefix, &mut st, msgs.len() as u64, kept_bytes, cap)?;
                }
            }
        }
        let n = msgs.len() as u64;
        let first_seq = st.next_seq;
        // One key and one encoding buffer for the request, each record copied once from
        // them into the store's slices.
        let mut key = queue_key(&prefix, 0);
        let mut value = Vec::new();
        self.ops.reserve(msgs.len());
        for m in &msgs {
            set_queue_key_seq(&mut key, st.next_seq);
            encode_into(m, &mut value);
            st.bytes += value.len() as u64;
            self.ops_bytes += key.len() + value.len();
            self.ops
                .push(Op::Enqueued(Slice::from(&key[..]), Slice::from(&value[..])));
            st.next_seq += 1;
        }
        drop(msgs);
        st.count += n;
        self.set_queue_state(user, st);
        self.stats.appended.fetch_add(n, Ordering::Relaxed);
        Ok(Appended {
            first_seq,
            stored: n,
            queued: st.count,
        })
    }

    /// Removes the oldest messages of a queue until `n` more messages of `bytes` fit
    /// under `cap`.
    fn drop_oldest(
        &mut self,
        prefix: &[u8],
        st: &mut QueueState,
        n: u64,
        bytes: u64,
        cap: QueueCap,
    ) -> StoreResult<()> {
        let fits = |st: &QueueState| {
            st.count + n <= cap.max_msgs && st.bytes.saturating_add(bytes) <= cap.max_bytes
        };
        if fits(st) {
            return Ok(());
        }
        self.commit()?;
        let start = queue_key(prefix, st.head);
        let end = queue_key(prefix, u64::MAX);
        for g in self.dbs.offline.range(start..=end) {
            let (k, v) = g.into_inner()?;
            st.head = parse_queue_key(prefix, &k)?.saturating_add(1);
            self.ops.push(Op::Dequeued(k));
            st.count = st.count.saturating_sub(1);
            st.bytes = st.bytes.saturating_sub(v.len() as u64);
            if fits(st) {
                break;
            }
        }
        Ok(())
    }

    fn account_exists(&mut self, user: &str) -> StoreResult<bool> {
        if self.known.contains(user) {
            return Ok(true);
        }
        validate_name("user", user)?;
        // A storm of messages to new names committed a batch per message here (a
        // seventh of the storage thread's time).
        if self.accounts_dropped {
            self.commit()?;
        }
        let exists = self.dbs.accounts.contains_key(user.as_bytes())?;
        if exists {
            self.known.insert(user.to_owned());
        }
        Ok(exists)
    }

    fn load(
        &mut self,
        user: &str,
        from_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<(u64, StoredMsg)>> {
        validate_name("user", user)?;
        self.commit()?;
        let prefix = queue_prefix(user);
        let head = self.queue_state(user, &prefix)?.head;
        let start = queue_key(&prefix, from_seq.max(head));
        let end = queue_key(&prefix, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        for g in self.dbs.offline.range(start..=end).take(limit) {
            let (k, v) = g.into_inner()?;
            let seq = parse_queue_key(&prefix, &k)?;
            let m = decode::<StoredMsg>(&v, "offline message")?;
            bytes += m.payload.len();
            out.push((seq, m));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Removes seqs `..=up_to` of `user`'s queue: (removed, left).
    fn remove_range(&mut self, user: &str, up_to: u64) -> StoreResult<(u64, u64)> {
        validate_name("user", user)?;
        self.commit()?;
        let prefix = queue_prefix(user);
        let mut st = self.queue_state(user, &prefix)?;
        if up_to < st.head {
            return Ok((0, st.count));
        }
        let start = queue_key(&prefix, st.head);
        let end = queue_key(&prefix, up_to);
        let mut removed = 0u64;
        let mut removed_bytes = 0u64;
        for g in self.dbs.offline.range(start..=end) {
            let (k, v) = g.into_inner()?;
            parse_queue_key(&prefix, &k)?;
            self.ops.push(Op::Dequeued(k));
            removed += 1;
            removed_bytes += v.len() as u64;
        }
        st.count = st.count.saturating_sub(removed);
        st.bytes = st.bytes.saturating_sub(removed_bytes);
        st.head = st.head.max(up_to.saturating_add(1));
        if st.count == 0 {
            st.head = st.next_seq;
        }
        self.set_queue_state(user, st);
        Ok((removed, st.count))
    }

    // ----- accounts -----

    fn submit(&mut self, waiting: Waiting, job: impl FnOnce(u64) -> HashJob) {
        let id = self.next_job;
        self.next_job += 1;
        let class = match waiting {
            Waiting::Verify { .. } | Waiting::Unknown { .. } => Class::Login,
            Waiting::Register { .. } => Class::Register,
            Waiting::Hash { .. } | Waiting::Check { .. } => Class::Room,
        };
        if self.pool.submit(job(id), class) {
            self.waiting.insert(id, waiting);
            return;
        }
        // The pool is gone (shutting down).
        match waiting {
            Waiting::Register { user, cb } => {
                self.registering.remove(&user);
                self.done(cb, Err(StoreError::Closed), false);
            }
            Waiting::Verify { cb } | Waiting::Check { cb } | Waiting::Unknown { cb } => {
                self.done(cb, Err(StoreError::Closed), false)
            }
            Waiting::Hash { cb } => self.done(cb, Err(StoreError::Closed), false),
        }
    }

    fn register(&mut self, user: String, password: String, cb: Cb<()>) {
        let check = validate_name("user", &user)
            .and_then(|()| validate_password(&password))
            .and_then(|()| self.commit())
            .and_then(|()| {
                if self.deleting(&user) {
                    // Its old account's data is still being deleted (`worker::deletion`).
                    Err(StoreError::Deleting)
                } else if self.registering.contains(&user)
                    || self.dbs.accounts.contains_key(user.as_bytes())?
                {
                    Err(StoreError::Conflict)
                } else {
                    Ok(())
                }
            });
        match check {
            Ok(()) => {
                self.registering.insert(user.clone());
                self.submit(Waiting::Register { user, cb }, |id| HashJob::Hash {
                    id,
                    password,
                });
            }
            Err(e) => self.done(cb, Err(e), false),
        }
    }

    fn account_phc(&mut self, user: &str) -> StoreResult<String> {
        validate_name("user", user)?;
        self.commit()?;
        let v = self
            .dbs
            .accounts
            .get(user.as_bytes())?
            .ok_or(StoreError::NotFound)?;
        Ok(decode::<AccountRecord>(&v, "account")?.phc)
    }

    fn hashed(&mut self, id: u64, result: StoreResult<HashOutcome>) {
        let Some(waiting) = self.waiting.remove(&id) else {
            return;
        };
        let unexpected = || StoreError::Io("unexpected answer from the hashing pool".into());
        match waiting {
            Waiting::Register { user, cb } => {
                self.registering.remove(&user);
                let r = match result {
                    Ok(HashOutcome::Phc(phc)) => self.insert_account(&user, phc),
                    Ok(HashOutcome::Verified(_)) => Err(unexpected()),
                    Err(e) => Err(e),
                };
                self.done(cb, r, true);
            }
            Waiting::Verify { cb } | Waiting::Check { cb } => {
                let r = match result {
                    Ok(HashOutcome::Verified(ok)) => Ok(ok),
                    Ok(HashOutcome::Phc(_)) => Err(unexpected()),
                    Err(e) => Err(e),
                };
                self.done(cb, r, false);
            }
            Waiting::Unknown { cb } => {
                let r = result.and(Err(StoreError::NotFound));
                self.done(cb, r, false);
            }
            Waiting::Hash { cb } => {
                let r = match result {
                    Ok(HashOutcome::Phc(phc)) => Ok(phc),
                    Ok(HashOutcome::Verified(_)) => Err(unexpected()),
                    Err(e) => Err(e),
                };
                self.done(cb, r, false);
            }
        }
    }

    /// Makes `user` exist (a passwordless record, open/jwt auth) and marks it seen now;
    /// answers whether it was created.
    fn ensure_user(&mut self, user: &str) -> StoreResult<bool> {
        let Some(forget) = self.opts.forget_idle_after else {
            let exists = self.account_exists(user)?;
            if !exists {
                self.insert_account(user, String::new())?;
            }
            return Ok(!exists);
        };
        validate_name("user", user)?;
        self.commit()?;
        let Some(v) = self.dbs.accounts.get(user.as_bytes())? else {
            self.insert_account(user, String::new())?;
            return Ok(true);
        };
        let mut rec = decode::<AccountRecord>(&v, "account")?;
        let now = now_us();
        // Written at most a few times per expiry period, not at every login.
        let every = super::seen_refresh(forget).as_micros() as u64;
        if rec.phc.is_empty() && now.saturating_sub(rec.seen_us.max(rec.created_us)) >= every {
            rec.seen_us = now;
            self.ops.push(Op::Put(
                Ks::Accounts,
                user.as_bytes().to_vec(),
                encode(&rec),
            ));
        }
        self.known.insert(user.to_owned());
        Ok(false)
    }

    /// One step of the idle-user sweep: looks at up to [`SWEEP_BATCH`] accounts from the
    /// cursor and deletes the passwordless ones not seen for `forget_idle_after` that have
    /// nothing queued and no rooms, at most [`SWEEP_FORGET`] of them. Returns true when
    /// the pass reached the end.
    ///
    /// A forgotten user is deleted as by DeleteAccount (`worker::deletion`), its direct
    /// conversations' history with it: a slice at a time, and no step begins while
    /// deletions an earlier one began are under way. (Each user's history was deleted in
    /// one go, the storage thread held for all of it, and every history tail in memory
    /// was written first.)
    fn sweep_step(&mut self, forget: Duration) -> StoreResult<bool> {
        if self.sweep_deleting() {
            return Ok(false);
        }
        self.commit()?;
        let now = now_us();
        let cutoff = now.saturating_sub(forget.as_micros() as u64);
        let start = self.sweep_cursor.take().unwrap_or_default();
        let mut seen = 0usize;
        let mut last: Option<Vec<u8>> = None;
        let mut doomed: Vec<String> = Vec::new();
        for g in self.dbs.accounts.range(start..) {
            let (k, v) = g.into_inner()?;
            seen += 1;
            last = Some(k.to_vec());
            let Ok(rec) = decode::<AccountRecord>(&v, "account") else {
                continue;
            };
            if !rec.phc.is_empty() || rec.seen_us.max(rec.created_us) > cutoff {
                continue;
            }
            let Ok(user) = std::str::from_utf8(&k) else {
                continue;
            };
            // (Appends waiting in the lane count as queued: `worker::lanes`.)
            let queued = self.lanes.pending(user) || self.has_queued(user);
            let in_rooms = self.any_under(&member_key(user, ""));
            // Contacts (or blockers) are kept like rooms: other users' lists name them.
            let has_contacts = self.any_under(&contact_entry_key(user, ""))
                || self.any_under(&contact_blocker_key(user, ""));
            if !queued && !in_rooms && !has_contacts {
                doomed.push(user.to_owned());
            }
            if seen >= SWEEP_BATCH || doomed.len() >= SWEEP_FORGET {
                break;
            }
        }
        let full = doomed.len() >= SWEEP_FORGET;
        let began = self.forget_users(doomed);
        self.stats
            .forgotten
            .fetch_add(began as u64, Ordering::Relaxed);
        if seen >= SWEEP_BATCH || full {
            if let Some(mut k) = last {
                k.push(0);
                self.sweep_cursor = Some(k);
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn insert_account(&mut self, user: &str, phc: String) -> StoreResult<()> {
        // Not while the name's old account is being deleted (a Register whose hash was
        // under way when the deletion began, a first login under open or jwt auth):
        // `worker::deletion`.
        if self.deleting(user) {
            return Err(StoreError::Deleting);
        }
        self.commit()?;
        if self.dbs.accounts.contains_key(user.as_bytes())? {
            return Err(StoreError::Conflict);
        }
        let rec = AccountRecord {
            phc,
            created_us: now_us(),
            seen_us: 0,
        };
        self.ops.push(Op::Put(
            Ks::Accounts,
            user.as_bytes().to_vec(),
            encode(&rec),
        ));
        self.known.insert(user.to_owned());
        Ok(())
    }

    fn list_users(&mut self, pattern: &str, limit: usize) -> StoreResult<Vec<String>> {
        if pattern.len() > codec::MAX_NAME_BYTES {
            return Err(StoreError::Invalid("pattern too long".into()));
        }
        self.commit()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let prefix = codec::glob_literal_prefix(pattern);
        let glob = codec::Glob::new(pattern);
        // A pattern that matches little (`*zz`) must not hold the storage thread for a
        // scan of every account: at most this many names are looked at per request.
        let budget = limit.saturating_mul(64).max(LIST_SCAN_MIN);
        for g in self.dbs.accounts.prefix(prefix.as_bytes()).take(budget) {
            let k = g.key()?;
            let name = std::str::from_utf8(&k)
                .map_err(|_| StoreError::Io("corrupt account key (not UTF-8)".into()))?;
            if glob.matches(name) {
                out.push(name.to_owned());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    // ----- rooms -----

    /// A room's record, its members read from their keys (the open-time move leaves no
    /// record with members inside).
    fn room(&self, name: &str) -> StoreResult<Option<RoomRecord>> {
        let Some(mut r) = self.room_meta(name)? else {
            return Ok(None);
        };
        r.members = self.room_members(name)?;
        Ok(Some(r))
    }

    /// A room's record as stored (no member list), for changes that do not need one.
    fn room_meta(&self, name: &str) -> StoreResult<Option<RoomRecord>> {
        match self.dbs.rooms.get(prefixed(ROOM_PREFIX, name))? {
            Some(v) => Ok(Some(decode::<RoomRecord>(&v, "room")?)),
            None => Ok(None),
        }
    }

    /// The members of room `name`, in name order, from their `rmem:` keys.
    fn room_members(&self, name: &str) -> StoreResult<Vec<String>> {
        self.names_after(&room_member_key(name, ""), "room member")
    }

    /// Every `rooms` key that starts with `prefix`, in order.
    /// Appends `msgs` to `user`'s queue; with `require_account`, a user without an
    /// account gets [`StoreError::NotFound`] and nothing is stored.
    fn enqueue(
        &mut self,
        user: &str,
        msgs: Vec<StoredMsg>,
        cap: Option<QueueCap>,
        require_account: bool,
    ) -> StoreResult<Appended> {
        if require_account && !self.account_exists(user)? {
            return Err(StoreError::NotFound);
        }
        self.append(user, msgs, cap)
    }

    /// Whether any `rooms` key starts with `prefix` (a failed read counts as one: the
    /// caller then keeps what it would have deleted).
    fn any_under(&self, prefix: &[u8]) -> bool {
        self.dbs.rooms.prefix(prefix).next().is_some()
    }

    fn keys_under(&self, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for g in self.dbs.rooms.prefix(prefix) {
            out.push(g.key()?.to_vec());
        }
        Ok(out)
    }

    /// The rest of every `rooms` key that starts with `prefix` (a name), in key order.
    fn names_after(&self, prefix: &[u8], what: &str) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for g in self.dbs.rooms.prefix(prefix) {
            let k = g.key()?;
            let name = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StoreError::Io(format!("corrupt {what} key (not UTF-8)")))?;
            out.push(name.to_owned());
        }
        Ok(out)
    }

    /// Writes `record` without its members (those are keys of their own).
    fn put_room_meta(&mut self, record: &RoomRecord) {
        let meta = RoomRecord {
            name: record.name.clone(),
            owner: record.owner.clone(),
            password_hash: record.password_hash.clone(),
            join_code: record.join_code.clone(),
            members: Vec::new(),
            created_us: record.created_us,
        };
        self.ops.push(Op::Put(
            Ks::Rooms,
            prefixed(ROOM_PREFIX, &record.name),
            encode(&meta),
        ));
    }

    /// Moves the lists held inside records written by older versions to keys of their
    /// own: room members (`rmem:`), contact list entries (`cte:`) and blockers (`ctb:`).
    /// Once, when the store
    /// opens, before its thread starts (an error fails the open).
    pub(crate) fn move_inline_lists(&mut self) -> StoreResult<()> {
        let rooms = self.move_inline(
            ROOM_PREFIX,
            |name, v| match decode::<RoomRecord>(v, "room") {
                // The room's name is its key's.
                Ok(r) if !r.members.is_empty() => Ok(Some(RoomRecord {
                    name: name.to_owned(),
                    ..r
                })),
                Ok(_) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            |w, r| {
                w.put_room_meta(&r);
                for m in &r.members {
                    w.ops
                        .push(Op::Put(Ks::Rooms, room_member_key(&r.name, m), Vec::new()));
                }
                Ok(())
            },
        )?;
        let lists = self.move_inline(
            CONTACTS_PREFIX,
            |user, v| match decode::<ContactRecord>(v, "contact list") {
                Ok(r) if !r.entries.is_empty() || !r.blocked_by.is_empty() => {
                    Ok(Some((user.to_owned(), r)))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            // Entries inline (the oldest records): a whole write (entry keys an older
            // version left beside the record go; blockers already keys stay). Blockers
            // inline only (the entries are keys already): those move, nothing else is
            // touched. A name no longer valid is left as it is: no request can name it
            // either.
            |w, (user, r)| {
                let save = if r.entries.is_empty() {
                    ContactSave {
                        header: r.header(),
                        blocked_by: r.blocked_by.iter().map(|u| (u.clone(), true)).collect(),
                        ..ContactSave::default()
                    }
                } else {
                    let mut save = ContactSave::whole(&r);
                    let prefix = contact_blocker_key(&user, "");
                    for k in w.keys_under(&prefix)? {
                        if let Ok(b) = std::str::from_utf8(&k[prefix.len()..]) {
                            save.blocked_by.push((b.to_owned(), true));
                        }
                    }
                    save
                };
                match w.save_contacts(&user, save) {
                    Err(StoreError::Invalid(e)) => {
                        tracing::warn!("contact list of {user:?} left as it is: {e}");
                        Ok(())
                    }
                    other => other,
                }
            },
        )?;
        if rooms + lists > 0 {
            tracing::info!(rooms, lists, "lists moved to keys of their own");
        }
        Ok(())
    }

    /// One pass over the records under `prefix`, [`MIGRATE_BATCH`] of them per commit
    /// (each step goes on after the last key the previous one read): `pick` looks at a
    /// record (its key's name, its value) and `write` rewrites the ones it picked.
    /// Records that cannot be read are left as they are. Returns how many were rewritten.
    fn move_inline<T>(
        &mut self,
        prefix: &[u8],
        pick: impl Fn(&str, &[u8]) -> Result<Option<T>, String>,
        mut write: impl FnMut(&mut Self, T) -> StoreResult<()>,
    ) -> StoreResult<usize> {
        use std::ops::Bound;
        // The first key after every key under `prefix` (which ends in ':').
        let mut end = prefix.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut after: Option<Vec<u8>> = None;
        let mut moved = 0usize;
        loop {
            let from = match after.take() {
                Some(k) => Bound::Excluded(k),
                None => Bound::Included(prefix.to_vec()),
            };
            let mut batch = Vec::new();
            for g in self.dbs.rooms.range((from, Bound::Excluded(end.clone()))) {
                let (k, v) = g.into_inner()?;
                after = Some(k.to_vec());
                let picked = std::str::from_utf8(&k[prefix.len()..])
                    .map_err(|_| "the key is not UTF-8".to_owned())
                    .and_then(|name| pick(name, &v));
                match picked {
                    Ok(Some(t)) => batch.push(t),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("record {k:?} left as it is: {e}"),
                }
                if batch.len() == MIGRATE_BATCH {
                    break;
                }
            }
            let last_step = batch.len() < MIGRATE_BATCH;
            moved += batch.len();
            for t in batch {
                write(self, t)?;
            }
            self.commit()?;
            if last_step {
                break;
            }
        }
        Ok(moved)
    }

    fn create_room(&mut self, record: RoomRecord) -> StoreResult<()> {
        validate_room(&record)?;
        self.commit()?;
        let room_key = prefixed(ROOM_PREFIX, &record.name);
        let code_key = prefixed(CODE_PREFIX, &record.join_code);
        if self.dbs.rooms.contains_key(&room_key)? || self.dbs.rooms.contains_key(&code_key)? {
            return Err(StoreError::Conflict);
        }
        if people(&record).iter().any(|u| self.gone(u)) {
            return Err(StoreError::NotFound);
        }
        // A new room has no history: whatever its name's conversation still holds (left
        // by a version that kept a deleted room's history, or by an append that raced
        // the deletion) goes in this batch, before anyone can read it.
        let who: Vec<&str> = people(&record).into_iter().collect();
        self.hist_delete_room(record.name.as_bytes(), &who)?;
        self.ops.push(Op::Put(
            Ks::Rooms,
            code_key,
            record.name.as_bytes().to_vec(),
        ));
        self.put_room_meta(&record);
        for m in &record.members {
            self.ops.push(Op::Put(
                Ks::Rooms,
                room_member_key(&record.name, m),
                Vec::new(),
            ));
        }
        // The initial members were added by the owner.
        for u in people(&record) {
            self.ops.push(Op::Put(
                Ks::Rooms,
                member_key(u, &record.name),
                membership(u, &record.owner),
            ));
        }
        Ok(())
    }

    fn get_contacts(&mut self, user: &str, max_blockers: usize) -> StoreResult<ContactRecord> {
        validate_name("user", user)?;
        self.commit()?;
        let mut rec = match self.dbs.rooms.get(prefixed(CONTACTS_PREFIX, user))? {
            Some(v) => decode::<ContactRecord>(&v, "contact list")?,
            None => ContactRecord::default(),
        };
        // The entries are keys of their own (the open-time move leaves none inside).
        let prefix = contact_entry_key(user, "");
        for g in self.dbs.rooms.prefix(&prefix) {
            let (k, v) = g.into_inner()?;
            // A damaged entry is left out (and logged), not the whole list: a list that
            // cannot load can never be written again.
            let entry = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| "its key is not UTF-8".to_owned())
                .and_then(|peer| {
                    let e = decode::<ContactEntry>(&v, "contact entry");
                    e.map(|e| ContactEntry {
                        user: peer.to_owned(),
                        ..e
                    })
                    .map_err(|e| e.to_string())
                });
            match entry {
                Ok(e) => rec.entries.push(e),
                Err(e) => tracing::warn!("contact entry {k:?} left out: {e}"),
            }
        }
        // Blockers: keys of their own (an older record may still hold some inline, until
        // the open-time move), the first `max_blockers` by name: a user blocked by a
        // million loaded them all at every login.
        // (Those an older record holds inline, until the open-time move, are all kept:
        // they have no key to read when asked.)
        let (blockers, more) = self.blockers_page(user, "", max_blockers)?;
        rec.blocked_by.extend(blockers);
        rec.blocked_by.sort_unstable();
        rec.blocked_by.dedup();
        rec.blockers_unloaded = more;
        Ok(rec)
    }

    /// Up to `limit` users that block `user`, by name, after `after`, and whether
    /// there are more.
    fn blockers_page(
        &mut self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<(Vec<String>, bool)> {
        let prefix = contact_blocker_key(user, "");
        let from = contact_blocker_key(user, after);
        let mut out = Vec::new();
        let mut more = false;
        for g in self.dbs.rooms.range(from..) {
            let (k, _) = g.into_inner()?;
            let Some(name) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if name == after.as_bytes() {
                continue;
            }
            if out.len() >= limit {
                more = true;
                break;
            }
            match std::str::from_utf8(name) {
                Ok(blocker) => out.push(blocker.to_owned()),
                Err(_) => tracing::warn!("contact blocker {k:?} left out: not UTF-8"),
            }
        }
        Ok((out, more))
    }

    fn blockers_among(&mut self, user: &str, peers: &[String]) -> StoreResult<Vec<bool>> {
        validate_name("user", user)?;
        self.commit()?;
        let mut out = Vec::with_capacity(peers.len());
        for p in peers {
            out.push(self.dbs.rooms.contains_key(contact_blocker_key(user, p))?);
        }
        Ok(out)
    }

    fn blockers_after(
        &mut self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        validate_name("user", user)?;
        self.commit()?;
        Ok(self.blockers_page(user, after, limit)?.0)
    }

    /// Writes a change of `user`'s contact list: its fields, and the entries it names.
    fn save_contacts(&mut self, user: &str, save: ContactSave) -> StoreResult<()> {
        validate_name("user", user)?;
        // The list of an account being deleted: dropped, as if written just before the
        // deletion that removes it (`worker::deletion`).
        if self.deleting(user) {
            return Ok(());
        }
        // Everything checked and read before anything is queued.
        for e in &save.upserts {
            validate_name("contact", &e.user)?;
        }
        for peer in &save.removed {
            validate_name("contact", peer)?;
        }
        let mut header = save.header;
        // Blockers a caller left in the fields are written as keys like the others.
        let mut blocked_by = save.blocked_by;
        blocked_by.extend(header.blocked_by.drain(..).map(|u| (u, true)));
        // A blocker whose name no longer passes the rules (kept by an older version) is
        // left out, not a reason to refuse the user's list: it could never be written.
        blocked_by.retain(|(u, _)| match validate_name("blocker", u) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("blocker {u:?} of {user:?} left out: {e}");
                false
            }
        });
        if save.replace {
            self.commit()?;
            let kept: std::collections::HashSet<Vec<u8>> = save
                .upserts
                .iter()
                .map(|e| contact_entry_key(user, &e.user))
                .chain(
                    blocked_by
                        .iter()
                        .filter(|(_, on)| *on)
                        .map(|(u, _)| contact_blocker_key(user, u)),
                )
                .collect();
            let mut stored = self.keys_under(&contact_entry_key(user, ""))?;
            // A list with blockers it did not load cannot say which stored ones are
            // stale: they stay (the changes a failed write held come again in this one:
            // `ContactCache::take_save`).
            if !header.blockers_unloaded {
                stored.extend(self.keys_under(&contact_blocker_key(user, ""))?);
            }
            for k in stored {
                if !kept.contains(&k) {
                    self.ops.push(Op::Del(Ks::Rooms, k));
                }
            }
        }
        for (u, on) in blocked_by {
            self.ops.push(blocker_op(user, &u, on));
        }
        // Removals first: an entry pruned and set again since the last write stays.
        for peer in &save.removed {
            self.ops
                .push(Op::Del(Ks::Rooms, contact_entry_key(user, peer)));
        }
        for e in save.upserts {
            let key = contact_entry_key(user, &e.user);
            let value = encode(&ContactEntry {
                user: String::new(),
                ..e
            });
            self.ops.push(Op::Put(Ks::Rooms, key, value));
        }
        header.entries.clear();
        header.blockers_unloaded = false;
        self.ops.push(Op::Put(
            Ks::Rooms,
            prefixed(CONTACTS_PREFIX, user),
            encode(&header),
        ));
        Ok(())
    }

    /// One blocker key of `user`'s list, put or deleted (see `Store::note_blocker`).
    fn note_blocker(&mut self, user: &str, blocker: &str, on: bool) -> StoreResult<()> {
        validate_name("user", user)?;
        validate_name("blocker", blocker)?;
        // (Dropped for an account being deleted, as in `save_contacts`.)
        if self.deleting(user) {
            return Ok(());
        }
        self.ops.push(blocker_op(user, blocker, on));
        Ok(())
    }

    fn get_room(&mut self, key: &str) -> StoreResult<Option<RoomRecord>> {
        validate_name("room name or join code", key)?;
        self.commit()?;
        if let Some(r) = self.room(key)? {
            return Ok(Some(r));
        }
        match self.code_target(key)? {
            Some(name) => self.room(&name),
            None => Ok(None),
        }
    }

    fn room_by_code(&mut self, code: &str) -> StoreResult<Option<String>> {
        validate_name("join code", code)?;
        self.commit()?;
        self.code_target(code)
    }

    /// The room name the join code index holds for `code`.
    fn code_target(&self, code: &str) -> StoreResult<Option<String>> {
        match self.dbs.rooms.get(prefixed(CODE_PREFIX, code))? {
            Some(name) => std::str::from_utf8(&name)
                .map(|n| Some(n.to_owned()))
                .map_err(|_| StoreError::Io("corrupt join code index".into())),
            None => Ok(None),
        }
    }

    fn put_room(&mut self, record: RoomRecord) -> StoreResult<()> {
        validate_room(&record)?;
        self.commit()?;
        let old = self.room(&record.name)?.ok_or(StoreError::NotFound)?;
        let (was, now) = (people(&old), people(&record));
        if now.difference(&was).any(|u| self.gone(u)) {
            return Err(StoreError::NotFound);
        }
        if old.join_code != record.join_code {
            let new_code = prefixed(CODE_PREFIX, &record.join_code);
            if self.dbs.rooms.contains_key(&new_code)? {
                return Err(StoreError::Conflict);
            }
            self.ops
                .push(Op::Del(Ks::Rooms, prefixed(CODE_PREFIX, &old.join_code)));
            self.ops.push(Op::Put(
                Ks::Rooms,
                new_code,
                record.name.as_bytes().to_vec(),
            ));
        }
        self.put_room_meta(&record);
        let before: std::collections::BTreeSet<&str> =
            old.members.iter().map(String::as_str).collect();
        let after: std::collections::BTreeSet<&str> =
            record.members.iter().map(String::as_str).collect();
        for u in before.difference(&after) {
            self.ops
                .push(Op::Del(Ks::Rooms, room_member_key(&record.name, u)));
        }
        for u in after.difference(&before) {
            self.ops.push(Op::Put(
                Ks::Rooms,
                room_member_key(&record.name, u),
                Vec::new(),
            ));
        }
        let (before, after) = (was, now);
        for u in before.difference(&after) {
            self.ops
                .push(Op::Del(Ks::Rooms, member_key(u, &record.name)));
        }
        for u in after.difference(&before) {
            self.ops.push(Op::Put(
                Ks::Rooms,
                member_key(u, &record.name),
                membership(u, &record.owner),
            ));
        }
        Ok(())
    }

    /// One member in (added by `by`; itself for a join): its two index keys, whatever
    /// the room's size.
    fn add_member(&mut self, room: &str, user: &str, by: &str) -> StoreResult<()> {
        validate_name("room name", room)?;
        validate_name("member", user)?;
        validate_name("member", by)?;
        self.commit()?;
        if !self.dbs.rooms.contains_key(prefixed(ROOM_PREFIX, room))? || self.gone(user) {
            return Err(StoreError::NotFound);
        }
        self.ops
            .push(Op::Put(Ks::Rooms, room_member_key(room, user), Vec::new()));
        self.ops.push(Op::Put(
            Ks::Rooms,
            member_key(user, room),
            membership(user, by),
        ));
        Ok(())
    }

    /// One member out: its member key, and its membership index key unless it owns the
    /// room (an owner's rooms list it).
    fn remove_member(&mut self, room: &str, user: &str) -> StoreResult<()> {
        validate_name("room name", room)?;
        validate_name("member", user)?;
        self.commit()?;
        let meta = self.room_meta(room)?.ok_or(StoreError::NotFound)?;
        self.ops
            .push(Op::Del(Ks::Rooms, room_member_key(room, user)));
        if meta.owner != user {
            self.ops.push(Op::Del(Ks::Rooms, member_key(user, room)));
        }
        Ok(())
    }

    /// Deletes a room: its record, join code, member keys and membership index keys, and
    /// its conversation (`hist_delete_room`), in one batch.
    fn delete_room(&mut self, name: &str) -> StoreResult<()> {
        validate_name("room name", name)?;
        self.commit()?;
        let key = prefixed(ROOM_PREFIX, name);
        let v = self.dbs.rooms.get(&key)?.ok_or(StoreError::NotFound)?;
        // Everything read before anything is queued: a failed read leaves no deletion
        // half done. A corrupt record can still be deleted (its join code then stays
        // dangling and finds nothing).
        let members = self.room_members(name)?;
        let (owner, code_key) = match decode::<RoomRecord>(&v, "room") {
            Ok(old) => {
                let code_key = prefixed(CODE_PREFIX, &old.join_code);
                let ours = self.dbs.rooms.get(&code_key)?.as_deref() == Some(name.as_bytes());
                (Some(old.owner), ours.then_some(code_key))
            }
            Err(e) => {
                tracing::warn!("deleting room {name:?}: {e}");
                (None, None)
            }
        };
        // Its conversation goes with it: chunks, log records, entries, read marks, and
        // what is cached of it. (The room's home shard handed over the appends it
        // accepted before this request: `Shard::delete_room`.)
        let who: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .chain(owner.as_deref())
            .collect();
        self.hist_delete_room(name.as_bytes(), &who)?;
        if let Some(code_key) = code_key {
            self.ops.push(Op::Del(Ks::Rooms, code_key));
        }
        // The owner's index key (a member's goes below).
        if let Some(owner) = &owner {
            self.ops.push(Op::Del(Ks::Rooms, member_key(owner, name)));
        }
        // Member keys go whatever the record says, with their membership index keys.
        for u in members {
            self.ops.push(Op::Del(Ks::Rooms, room_member_key(name, &u)));
            self.ops.push(Op::Del(Ks::Rooms, member_key(&u, name)));
        }
        self.ops.push(Op::Del(Ks::Rooms, key));
        Ok(())
    }

    /// See [`StoreHandle::check_members`](super::StoreHandle::check_members).
    fn check_members(
        &mut self,
        users: &[String],
        max_rooms: usize,
    ) -> StoreResult<Option<MemberProblem>> {
        for u in users {
            validate_name("user", u)?;
        }
        self.commit()?;
        for u in users {
            if !self.account_exists(u)? {
                return Ok(Some(MemberProblem::NoAccount(u.clone())));
            }
            // Only the rooms others added it to count: its own are its own quota's.
            let mut rooms = 0;
            for g in self.dbs.rooms.prefix(member_key(u, "")) {
                let (_, v) = g.into_inner()?;
                if &v[..] != ADDED {
                    continue;
                }
                rooms += 1;
                if rooms >= max_rooms {
                    return Ok(Some(MemberProblem::Full(u.clone(), rooms)));
                }
            }
        }
        Ok(None)
    }

    /// See [`StoreHandle::own_rooms`](super::StoreHandle::own_rooms).
    fn own_rooms(&mut self, user: &str, room: &str) -> StoreResult<Option<usize>> {
        validate_name("user", user)?;
        self.commit()?;
        // (A join code is no room name: never found, as before.)
        if self.dbs.rooms.contains_key(member_key(user, room))? {
            return Ok(None);
        }
        let mut own = 0;
        for g in self.dbs.rooms.prefix(member_key(user, "")) {
            let (_, v) = g.into_inner()?;
            if &v[..] != ADDED {
                own += 1;
            }
        }
        Ok(Some(own))
    }

    /// No membership of `user` may be written: its account is being deleted (or about
    /// to be: [`StoreHandle::rooms_of_leaving`](super::StoreHandle::rooms_of_leaving)).
    fn gone(&self, user: &str) -> bool {
        self.leaving.contains(user) || self.deleting(user)
    }

    fn rooms_of(&mut self, user: &str) -> StoreResult<Vec<String>> {
        validate_name("user", user)?;
        self.commit()?;
        self.names_after(&member_key(user, ""), "membership")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_of_queue_states_keeps_the_big_queues_only_while_few() {
        let q = |count| QueueState {
            next_seq: count + 1,
            count,
            bytes: count * 100,
            head: 1,
        };
        let mut states: NameMap<String, QueueState> = NameMap::default();
        for (name, count) in [("a", 1), ("b", 5000), ("c", 1023), ("d", 1024), ("e", 0)] {
            states.insert(name.to_owned(), q(count));
        }
        let kept = kept_queue_states(states.clone(), 4);
        let mut names: Vec<&String> = kept.keys().collect();
        names.sort();
        assert_eq!(names, ["b", "d"]);
        // More big queues than half the bound: none kept.
        assert!(kept_queue_states(states, 3).is_empty());
    }

    /// fjall fills the memtables again from the journal at open, without sealing them; with
    /// `since_seal` at 0 the storage thread would not seal them until as much again was
    /// written, while fjall asked its worker at every batch (the hang below). Sealed at
    /// open, they are flushed at once.
    #[test]
    fn memtables_filled_from_the_journal_at_open_are_sealed() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let dbs = Dbs::open(dir.path(), 0).expect("open");
            let mut batch = dbs.db.batch();
            for i in 0..160u32 {
                batch.insert(&dbs.offline, i.to_be_bytes(), vec![3u8; 64 << 10]);
            }
            batch.commit().expect("commit");
            dbs.db
                .persist(fjall::PersistMode::SyncAll)
                .expect("persist");
        }
        let dbs = Dbs::open(dir.path(), 0).expect("open again");
        let flushed = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            dbs.db.write_buffer_size() < 1 << 20
        });
        assert!(
            flushed,
            "{} MiB still in memtables after open",
            dbs.db.write_buffer_size() >> 20
        );
        assert_eq!(dbs.offline.len().expect("len"), 160);
    }

    /// Before: fjall asked its worker to seal a full memtable at every write batch, and
    /// every commit sealed every keyspace while much was not flushed, each seal queueing
    /// a flush: behind a long flush the worker's bounded queue (1 000) filled and the
    /// worker waited on itself for ever (a contact-op loop hung the store). Now the
    /// storage thread seals each memtable at half its size: thousands of small commits
    /// leave a few flushes waiting, and no memtable reaches the size at which fjall asks.
    #[test]
    fn small_commits_while_much_is_unflushed_queue_few_flushes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut dbs = Dbs::open(dir.path(), 0).expect("open");
        // 120 MiB in one batch (fjall looks at a memtable's size only after a batch).
        let mut batch = dbs.db.batch();
        let value = vec![5u8; 64 << 10];
        for i in 0..1920u32 {
            batch.insert(&dbs.offline, i.to_be_bytes(), value.clone());
        }
        batch.commit().expect("commit");
        dbs.wrote(0, 1920 * (64 << 10));
        dbs.seal_memtables();
        assert_eq!(dbs.since_seal[0], 0, "the big memtable was not sealed");
        // 24 MiB in 60 000 small commits to every keyspace (the rooms' memtable is 8 MiB).
        let mut most = 0;
        let value = [1u8; 64];
        for i in 0..60_000u32 {
            let mut batch = dbs.db.batch();
            let k = (100_000 + i).to_be_bytes();
            for ks in dbs.keyspaces() {
                batch.insert(ks, k, value);
            }
            batch.commit().expect("commit");
            for n in 0..4 {
                dbs.wrote(n, k.len() + value.len() + WRITE_OVERHEAD);
            }
            dbs.seal_memtables();
            most = most.max(dbs.db.outstanding_flushes());
            // No keyspace's memtable nears its size (fjall would ask its worker).
            assert!(
                dbs.since_seal.iter().all(|&b| b < 8 << 20),
                "{:?}",
                dbs.since_seal
            );
        }
        assert!(
            most <= 4 * MAX_SEALED,
            "{most} flushes waited on fjall's worker"
        );
    }
}
