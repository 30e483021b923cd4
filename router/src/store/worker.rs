//! The storage thread: owns the fjall database, drains the request queue, group-commits.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rustc_hash::{FxHashMap, FxHashSet};

use super::codec::{
    self, decode, encode, parse_queue_key, prefixed, queue_key, queue_prefix, validate_name,
    validate_password, AccountRecord, CODE_PREFIX, MEMBER_PREFIX, ROOM_PREFIX,
};
use super::hash::{HashJob, HashOutcome, HashPool};
use super::{
    Appended, Cb, Durability, Msg, Overflow, RoomRecord, StatCells, StoreError, StoreOptions,
    StoreResult, StoredMsg,
};

/// How long shutdown waits for outstanding password-hash answers before giving up on them
/// (they are then answered `Closed`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The database and its keyspaces.
pub(crate) struct Dbs {
    db: Database,
    offline: Keyspace,
    accounts: Keyspace,
    rooms: Keyspace,
}

impl Dbs {
    /// Opens (creates) the database in `dir` and its three keyspaces.
    pub fn open(dir: &std::path::Path) -> StoreResult<Dbs> {
        let db = Database::builder(dir).open()?;
        let offline = db.keyspace("offline", KeyspaceCreateOptions::default)?;
        let accounts = db.keyspace("accounts", KeyspaceCreateOptions::default)?;
        let rooms = db.keyspace("rooms", KeyspaceCreateOptions::default)?;
        Ok(Dbs {
            db,
            offline,
            accounts,
            rooms,
        })
    }

    fn ks(&self, ks: Ks) -> &Keyspace {
        match ks {
            Ks::Offline => &self.offline,
            Ks::Accounts => &self.accounts,
            Ks::Rooms => &self.rooms,
        }
    }
}

#[derive(Clone, Copy)]
enum Ks {
    Offline,
    Accounts,
    Rooms,
}

/// A write waiting for the next commit.
enum Op {
    Put(Ks, Vec<u8>, Vec<u8>),
    Del(Ks, Vec<u8>),
}

/// Cached per-user queue position.
#[derive(Clone, Copy)]
struct QueueState {
    next_seq: u64,
    count: u64,
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
    dbs: Dbs,
    durability: Durability,
    opts: StoreOptions,
    pool: HashPool,
    stats: Arc<StatCells>,
    /// Writes not yet committed.
    ops: Vec<Op>,
    /// A request of this round wrote something.
    round_wrote: bool,
    /// A commit of this round failed: every writing request of the round gets it.
    round_err: Option<StoreError>,
    /// A `Flush` asked for an fsync this round.
    flush_requested: bool,
    deferred: Vec<Deferred>,
    queues: FxHashMap<String, QueueState>,
    waiting: FxHashMap<u64, Waiting>,
    registering: FxHashSet<String>,
    /// Accounts known to exist (looked up or written by this thread, not deleted since):
    /// an offline append for one of them needs no commit-then-read.
    known: FxHashSet<String>,
    next_job: u64,
    shutting_down: bool,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Fewest account names a ListUsers request may scan (see `list_users`).
const LIST_SCAN_MIN: usize = 65_536;

/// Key of the membership index entry "`user` is in `room`" (owner included):
/// `mem:` user 0x00 room, so a prefix scan lists one user's rooms in name order.
fn member_key(user: &str, room: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(MEMBER_PREFIX.len() + user.len() + 1 + room.len());
    k.extend_from_slice(MEMBER_PREFIX);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(room.as_bytes());
    k
}

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
    pub fn new(
        dbs: Dbs,
        durability: Durability,
        opts: StoreOptions,
        pool: HashPool,
        stats: Arc<StatCells>,
    ) -> Worker {
        Worker {
            dbs,
            durability,
            opts,
            pool,
            stats,
            ops: Vec::new(),
            round_wrote: false,
            round_err: None,
            flush_requested: false,
            deferred: Vec::new(),
            queues: FxHashMap::default(),
            waiting: FxHashMap::default(),
            registering: FxHashSet::default(),
            known: FxHashSet::default(),
            next_job: 0,
            shutting_down: false,
        }
    }

    /// The thread's body: rounds until shutdown, then a final fsync.
    pub fn run(&mut self, rx: Receiver<Msg>) -> StoreResult<()> {
        let max_round = self.opts.max_round.max(1);
        loop {
            let first = if !self.shutting_down {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else if self.waiting.is_empty() {
                // Shutting down: finish what is queued, then stop.
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(SHUTDOWN_GRACE) {
                    Ok(m) => m,
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
            self.handle(first);
            let mut n = 1usize;
            while n < max_round {
                match rx.try_recv() {
                    Ok(m) => {
                        self.handle(m);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            self.finish_round(n);
        }
        // Anything still waiting for the pool is answered `Closed` (Cb's drop).
        self.waiting.clear();
        let commit = self.commit();
        let persist = self
            .dbs
            .db
            .persist(PersistMode::SyncAll)
            .map_err(Into::into);
        // Requests that raced with shutdown are answered `Closed` here, on this thread.
        drop(rx);
        self.pool.join();
        commit.and(persist)
    }

    /// Queues `cb`'s answer for the end of the round. A request that wrote (`wrote`) gets
    /// the round's commit error instead of `r` if a commit fails.
    fn done<T: Send + 'static>(&mut self, cb: Cb<T>, r: StoreResult<T>, wrote: bool) {
        let wrote = wrote && r.is_ok();
        if wrote {
            self.round_wrote = true;
        }
        self.deferred
            .push(Box::new(move |err: Option<&StoreError>| match err {
                Some(e) if wrote => cb.call(Err(e.clone())),
                _ => cb.call(r),
            }));
    }

    /// Commits pending writes as one batch (handed to the OS, no fsync).
    fn commit(&mut self) -> StoreResult<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let mut batch = self.dbs.db.batch();
        for op in self.ops.drain(..) {
            match op {
                Op::Put(ks, k, v) => batch.insert(self.dbs.ks(ks), k, v),
                Op::Del(ks, k) => batch.remove(self.dbs.ks(ks), k),
            }
        }
        let r = batch.commit();
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commit_us
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r.map_err(|e| {
            let e = StoreError::from(e);
            tracing::error!("store commit failed: {e}");
            self.round_err.get_or_insert_with(|| e.clone());
            e
        })
    }

    /// Commit, fsync if the mode (or a `Flush`) asks for it, then run the completions.
    fn finish_round(&mut self, n: usize) {
        let _ = self.commit();
        let want_sync =
            self.flush_requested || (self.round_wrote && self.durability == Durability::Sync);
        if want_sync && self.round_err.is_none() {
            let mode = if self.flush_requested {
                PersistMode::SyncAll
            } else {
                PersistMode::SyncData
            };
            let t = Instant::now();
            if let Err(e) = self.dbs.db.persist(mode) {
                let e = StoreError::from(e);
                tracing::error!("store fsync failed: {e}");
                self.round_err = Some(e);
            }
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .fsync_us
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let err = self.round_err.take();
        let mut deferred = std::mem::take(&mut self.deferred);
        for d in deferred.drain(..) {
            d(err.as_ref());
        }
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

    fn handle(&mut self, msg: Msg) {
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
                let r = if require_account {
                    self.account_exists(&user).and_then(|exists| {
                        if exists {
                            Ok(())
                        } else {
                            Err(StoreError::NotFound)
                        }
                    })
                } else {
                    Ok(())
                };
                let r = r.and_then(|()| self.append(&user, msgs, cap));
                let wrote = r.is_ok() && n > 0;
                self.done(cb, r, wrote);
            }
            Msg::EnsureUser { user, cb } => {
                let r = self.account_exists(&user).and_then(|exists| {
                    if exists {
                        Ok(false)
                    } else {
                        self.insert_account(&user, String::new()).map(|()| true)
                    }
                });
                let wrote = matches!(r, Ok(true));
                self.done(cb, r, wrote);
            }
            Msg::Load {
                user,
                from_seq,
                limit,
                cb,
            } => {
                let r = self.load(&user, from_seq, limit);
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
            Msg::DeleteAccount { user, cb } => {
                let r = self.delete_account(&user);
                self.done(cb, r, true);
            }
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
            Msg::DeleteRoom { name, cb } => {
                let r = self.delete_room(&name);
                self.done(cb, r, true);
            }
            Msg::RoomsOf { user, cb } => {
                let r = self.rooms_of(&user);
                self.done(cb, r, false);
            }
            Msg::Flush { cb } => {
                let r = self.commit();
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
        let mut last = 0u64;
        let mut first = None;
        for g in self.dbs.offline.prefix(prefix) {
            last = parse_queue_key(prefix, &g.key()?)?;
            first.get_or_insert(last);
            count += 1;
        }
        let next_seq = last.saturating_add(1);
        let st = QueueState {
            next_seq,
            count,
            head: first.unwrap_or(next_seq),
        };
        self.queues.insert(user.to_owned(), st);
        Ok(st)
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
        mut msgs: Vec<StoredMsg>,
        cap: Option<(u64, Overflow)>,
    ) -> StoreResult<Appended> {
        validate_name("user", user)?;
        let prefix = queue_prefix(user);
        let mut st = self.queue_state(user, &prefix)?;
        if let Some((max, overflow)) = cap {
            let n = msgs.len() as u64;
            if st.count.saturating_add(n) > max {
                if overflow == Overflow::Reject {
                    return Err(StoreError::Full);
                }
                if n > max {
                    msgs.drain(..(n - max) as usize);
                }
                let excess = (st.count + msgs.len() as u64).saturating_sub(max);
                if excess > 0 {
                    self.commit()?;
                    let mut dropped = 0u64;
                    let start = queue_key(&prefix, st.head);
                    let end = queue_key(&prefix, u64::MAX);
                    for g in self.dbs.offline.range(start..=end).take(excess as usize) {
                        let k = g.key()?;
                        st.head = parse_queue_key(&prefix, &k)?.saturating_add(1);
                        self.ops.push(Op::Del(Ks::Offline, k.to_vec()));
                        dropped += 1;
                    }
                    st.count -= dropped.min(st.count);
                }
            }
        }
        let n = msgs.len() as u64;
        let first_seq = st.next_seq;
        for m in &msgs {
            self.ops.push(Op::Put(
                Ks::Offline,
                queue_key(&prefix, st.next_seq),
                encode(m),
            ));
            st.next_seq += 1;
        }
        st.count += n;
        self.set_queue_state(user, st);
        self.stats.appended.fetch_add(n, Ordering::Relaxed);
        Ok(Appended {
            first_seq,
            stored: n,
            queued: st.count,
        })
    }

    fn account_exists(&mut self, user: &str) -> StoreResult<bool> {
        if self.known.contains(user) {
            return Ok(true);
        }
        validate_name("user", user)?;
        self.commit()?;
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
    ) -> StoreResult<Vec<(u64, StoredMsg)>> {
        validate_name("user", user)?;
        self.commit()?;
        let prefix = queue_prefix(user);
        let head = self.queue_state(user, &prefix)?.head;
        let start = queue_key(&prefix, from_seq.max(head));
        let end = queue_key(&prefix, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        for g in self.dbs.offline.range(start..=end).take(limit) {
            let (k, v) = g.into_inner()?;
            let seq = parse_queue_key(&prefix, &k)?;
            out.push((seq, decode::<StoredMsg>(&v, "offline message")?));
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
        for g in self.dbs.offline.range(start..=end) {
            let k = g.key()?;
            parse_queue_key(&prefix, &k)?;
            self.ops.push(Op::Del(Ks::Offline, k.to_vec()));
            removed += 1;
        }
        st.count = st.count.saturating_sub(removed);
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
        if self.pool.submit(job(id)) {
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
                if self.registering.contains(&user)
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

    fn insert_account(&mut self, user: &str, phc: String) -> StoreResult<()> {
        self.commit()?;
        if self.dbs.accounts.contains_key(user.as_bytes())? {
            return Err(StoreError::Conflict);
        }
        let rec = AccountRecord {
            phc,
            created_us: now_us(),
        };
        self.ops.push(Op::Put(
            Ks::Accounts,
            user.as_bytes().to_vec(),
            encode(&rec),
        ));
        self.known.insert(user.to_owned());
        Ok(())
    }

    fn delete_account(&mut self, user: &str) -> StoreResult<()> {
        validate_name("user", user)?;
        self.known.remove(user);
        self.commit()?;
        let had_account = self.dbs.accounts.contains_key(user.as_bytes())?;
        let (removed, _) = self.remove_range(user, u64::MAX)?;
        if !had_account && removed == 0 {
            return Err(StoreError::NotFound);
        }
        if had_account {
            self.ops
                .push(Op::Del(Ks::Accounts, user.as_bytes().to_vec()));
        }
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
        // A pattern that matches little (`*zz`) must not hold the storage thread for a
        // scan of every account: at most this many names are looked at per request.
        let budget = limit.saturating_mul(64).max(LIST_SCAN_MIN);
        for g in self.dbs.accounts.prefix(prefix.as_bytes()).take(budget) {
            let k = g.key()?;
            let name = std::str::from_utf8(&k)
                .map_err(|_| StoreError::Io("corrupt account key (not UTF-8)".into()))?;
            if codec::glob_match(pattern, name) {
                out.push(name.to_owned());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    // ----- rooms -----

    fn room(&self, name: &str) -> StoreResult<Option<RoomRecord>> {
        match self.dbs.rooms.get(prefixed(ROOM_PREFIX, name))? {
            Some(v) => Ok(Some(decode::<RoomRecord>(&v, "room")?)),
            None => Ok(None),
        }
    }

    fn create_room(&mut self, record: RoomRecord) -> StoreResult<()> {
        validate_room(&record)?;
        self.commit()?;
        let room_key = prefixed(ROOM_PREFIX, &record.name);
        let code_key = prefixed(CODE_PREFIX, &record.join_code);
        if self.dbs.rooms.contains_key(&room_key)? || self.dbs.rooms.contains_key(&code_key)? {
            return Err(StoreError::Conflict);
        }
        self.ops.push(Op::Put(
            Ks::Rooms,
            code_key,
            record.name.as_bytes().to_vec(),
        ));
        self.ops.push(Op::Put(Ks::Rooms, room_key, encode(&record)));
        for u in people(&record) {
            self.ops
                .push(Op::Put(Ks::Rooms, member_key(u, &record.name), Vec::new()));
        }
        Ok(())
    }

    fn get_room(&mut self, key: &str) -> StoreResult<Option<RoomRecord>> {
        validate_name("room name or join code", key)?;
        self.commit()?;
        if let Some(r) = self.room(key)? {
            return Ok(Some(r));
        }
        match self.dbs.rooms.get(prefixed(CODE_PREFIX, key))? {
            Some(name) => {
                let name = std::str::from_utf8(&name)
                    .map_err(|_| StoreError::Io("corrupt join code index".into()))?;
                self.room(name)
            }
            None => Ok(None),
        }
    }

    fn put_room(&mut self, record: RoomRecord) -> StoreResult<()> {
        validate_room(&record)?;
        self.commit()?;
        let old = self.room(&record.name)?.ok_or(StoreError::NotFound)?;
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
        self.ops.push(Op::Put(
            Ks::Rooms,
            prefixed(ROOM_PREFIX, &record.name),
            encode(&record),
        ));
        let (before, after) = (people(&old), people(&record));
        for u in before.difference(&after) {
            self.ops
                .push(Op::Del(Ks::Rooms, member_key(u, &record.name)));
        }
        for u in after.difference(&before) {
            self.ops
                .push(Op::Put(Ks::Rooms, member_key(u, &record.name), Vec::new()));
        }
        Ok(())
    }

    fn delete_room(&mut self, name: &str) -> StoreResult<()> {
        validate_name("room name", name)?;
        self.commit()?;
        let key = prefixed(ROOM_PREFIX, name);
        let v = self.dbs.rooms.get(&key)?.ok_or(StoreError::NotFound)?;
        // A corrupt record can still be deleted (its join code then stays dangling and
        // finds nothing).
        match decode::<RoomRecord>(&v, "room") {
            Ok(old) => {
                let code_key = prefixed(CODE_PREFIX, &old.join_code);
                if self.dbs.rooms.get(&code_key)?.as_deref() == Some(name.as_bytes()) {
                    self.ops.push(Op::Del(Ks::Rooms, code_key));
                }
                for u in people(&old) {
                    self.ops.push(Op::Del(Ks::Rooms, member_key(u, name)));
                }
            }
            Err(e) => tracing::warn!("deleting room {name:?}: {e}"),
        }
        self.ops.push(Op::Del(Ks::Rooms, key));
        Ok(())
    }

    fn rooms_of(&mut self, user: &str) -> StoreResult<Vec<String>> {
        validate_name("user", user)?;
        self.commit()?;
        let prefix = member_key(user, "");
        let mut out = Vec::new();
        for g in self.dbs.rooms.prefix(&prefix) {
            let k = g.key()?;
            let name = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StoreError::Io("corrupt membership key (not UTF-8)".into()))?;
            out.push(name.to_owned());
        }
        Ok(out)
    }
}
